"""Functional LoRA (priors/lora.py), the camera class embedding (priors/camera_embedding.py)
and a LoRA-mode trained copy (priors/trainable.py) on the tiny random SD UNet.

Third-party references: the same tiny UNet in PyTorch diffusers, with diffusers'
LoRALinearLayer added to every attention projection (forward hooks), and with diffusers'
TimestepEmbedding installed as `unet.class_embedding` (what DS does) fed `class_labels`.
Closed forms: b = 0 is the base bit for bit; AdamW's first step on an adapter whose
gradient is 0 (a, since b = 0) is the weight decay alone, a' = (1 - lr·wd)·a.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from dc3d_jax.priors import camera_embedding, lora
from dc3d_jax.priors.denoiser_base import LatentUNet
from dc3d_jax.priors.loading import build_unet
from dc3d_jax.priors.torch_semantics import quiet_libraries
from dc3d_jax.priors.trainable import JaxTrainablePrior

TOL = 1e-4
CONTEXT = (1, 7, 32)       # [N, L, D]: the tiny UNet's cross_attention_dim is 32


def tiny_torch_unet():
  """The project's tiny random SD UNet (the one place this file builds tiny models)."""
  from experiments import tiny_models as tiny
  return tiny.tiny_unet(4, use_linear_projection=True, seed=0)


@pytest.fixture(scope="module")
def unets():
  """(torch UNet, LatentUNet base, Flax params) with the same weights."""
  torch_unet = tiny_torch_unet()
  state = {k: v.numpy() for k, v in torch_unet.state_dict().items()}
  with quiet_libraries():
    unet, params = build_unet(dict(torch_unet.config), state, jnp.float32)
  return torch_unet, LatentUNet(unet=unet, vae=None), params


@pytest.fixture(scope="module")
def inputs():
  rng = np.random.default_rng(1)
  return (jnp.asarray(rng.standard_normal((1, 8, 8, 4)), jnp.float32),
          jnp.array([700], jnp.int32), jnp.asarray(rng.standard_normal(CONTEXT), jnp.float32))


@pytest.fixture(scope="module")
def apply(unets):
  base = unets[1]
  return jax.jit(lambda p, x, t, c: base.apply(p, x, t, c))


def random_adapters(params, seed: int, rank: int = 4):
  """Adapters with both factors random (b = 0 would hide every mistake)."""
  adapters = lora.init(params, jax.random.key(seed), rank)
  return jax.tree_util.tree_map_with_path(
      lambda path, x: (jax.random.normal(jax.random.key(seed + 1), x.shape) * 0.05
                       if path[-1].key == "b" else x), adapters)


def torch_eps(torch_unet, x, t, context, class_labels=None):
  with torch.no_grad():
    out = torch_unet(torch.tensor(np.asarray(x)).permute(0, 3, 1, 2),
                     torch.tensor(np.asarray(t)), torch.tensor(np.asarray(context)),
                     class_labels=class_labels).sample
  return out.permute(0, 2, 3, 1).numpy()


def test_targets_are_every_attention_projection(unets):
  torch_unet, _, params = unets
  ours = {_torch_name(p) for p in lora.target_modules(params)}
  theirs = {n for n, _ in torch_unet.named_modules()
            if n.rsplit(".", 1)[-1] in ("to_q", "to_k", "to_v") or n.endswith("to_out.0")}
  assert len(ours) == len(theirs) == 32 and ours == theirs


def test_zero_b_is_the_base_exactly(unets, inputs, apply):
  _, _, params = unets
  adapters = lora.init(params, jax.random.key(0), rank=4)
  merged = lora.merge(params, adapters, scale=1.0)
  np.testing.assert_array_equal(apply(merged, *inputs), apply(params, *inputs))


@pytest.mark.filterwarnings("ignore:`LoRALinearLayer` is deprecated:FutureWarning")
def test_merged_equals_unmerged_and_diffusers_lora_layers(unets, inputs, apply):
  from diffusers.models.lora import LoRALinearLayer
  torch_unet, base, params = unets
  rank, alpha = 4, 8.0
  adapters = random_adapters(params, 5, rank)
  merged = apply(lora.merge(params, adapters, alpha / rank), *inputs)
  with lora.unmerged(adapters, alpha / rank):
    unmerged = jax.jit(lambda p, x, t, c: base.apply(p, x, t, c))(params, *inputs)
  np.testing.assert_allclose(merged, unmerged, atol=1e-5)

  hooks = []
  for path, adapter in lora._adapters_by_module(adapters).items():
    module = torch_unet.get_submodule(_torch_name(path))
    layer = LoRALinearLayer(module.in_features, module.out_features, rank, alpha)
    layer.down.weight.data = torch.tensor(np.asarray(adapter["a"]).T)
    layer.up.weight.data = torch.tensor(np.asarray(adapter["b"]).T)
    hooks.append(module.register_forward_hook(lambda m, i, o, layer=layer: o + layer(i[0])))
  try:
    theirs = torch_eps(torch_unet, *inputs)
  finally:
    for h in hooks:
      h.remove()
  err = np.max(np.abs(np.asarray(merged) - theirs))
  print(f"merged LoRA vs diffusers LoRALinearLayer: max abs {err:.1e}")
  assert err < TOL and np.max(np.abs(np.asarray(merged) - apply(params, *inputs))) > 1e-3


def _torch_name(path: tuple) -> str:
  """Flax module path -> the PyTorch module name (down_blocks_0 -> down_blocks.0, ...)."""
  parts = []
  for p in path:
    head, _, tail = p.rpartition("_")
    parts.append(f"{head}.{tail}" if tail.isdigit() and head else p)
  return ".".join(parts)


def test_camera_embedding_matches_diffusers_class_embedding(unets, inputs, apply):
  """A camera-conditioned trained copy (LoRA, b = 0) against the PyTorch UNet with the same
  MLP as diffusers' TimestepEmbedding in `unet.class_embedding` (DS's setup)."""
  from diffusers.models.embeddings import TimestepEmbedding
  torch_unet, base, params = unets
  prior = JaxTrainablePrior(base=base, mode="lora", camera_condition=True)
  copy = prior.init(params, jax.random.key(2))
  c2w = np.asarray(jax.random.normal(jax.random.key(3), (1, 4, 4)))
  ours = jax.jit(lambda p, x, t, c, cam: prior.eps_fn(p, params)(x, t, c, cam))(
      copy.params, *inputs, camera_embedding.flat_c2w(c2w))
  cam = copy.params["camera"]
  module = TimestepEmbedding(16, base.class_embed_dim)
  for name in ("linear_1", "linear_2"):
    getattr(module, name).weight.data = torch.tensor(np.asarray(cam[name]["kernel"]).T)
    getattr(module, name).bias.data = torch.tensor(np.asarray(cam[name]["bias"]))
  torch_unet.class_embedding = module
  try:   # DS: train_unet(..., class_labels=c2w.view(B, -1))
    theirs = torch_eps(torch_unet, *inputs, class_labels=torch.tensor(c2w).view(1, -1))
  finally:
    torch_unet.class_embedding = None
  err = np.max(np.abs(np.asarray(ours) - theirs))
  change = np.max(np.abs(np.asarray(ours) - apply(params, *inputs)))
  print(f"camera class embedding vs diffusers: max abs {err:.1e}; effect on ε {change:.2f}")
  assert err < TOL and change > 1e-2


def test_lora_update_trains_only_the_adapters(unets, inputs, apply):
  """The copy holds only adapters; after one ε-MSE step a moved by weight decay alone (its
  gradient is 0 while b = 0), b moved by at most lr, and the ε-MSE at that (x_0, t, ε) fell."""
  _, base, params = unets
  prior = JaxTrainablePrior(base=base, mode="lora", lr=1e-3, weight_decay=0.01)
  copy = prior.init(params, jax.random.key(4))
  leaves = jax.tree_util.tree_flatten_with_path(copy.params)[0]
  assert {p[-1].key for p, _ in leaves} == {"a", "b"} and len(leaves) == 64
  x0, t, context = inputs
  noise = jnp.asarray(np.random.default_rng(7).standard_normal(x0.shape), jnp.float32)
  new, metrics = jax.jit(prior.mse_update)(copy, params, x0, t, noise, context)
  a0, a1 = (lora._adapters_by_module(c.params["net"]) for c in (copy, new))
  for path in a0:
    np.testing.assert_allclose(a1[path]["a"], (1 - 1e-3 * 0.01) * a0[path]["a"], rtol=1e-6)
  moved = np.concatenate([np.ravel(a1[p]["b"]) for p in a0])
  assert 0 < np.max(np.abs(moved)) <= 1e-3 and int(new.updates) == 1

  def mse(p):
    a = base.alphas_cumprod()[np.asarray(t)].reshape(-1, 1, 1, 1)
    x_t = np.sqrt(a) * x0 + np.sqrt(1 - a) * noise
    return float(np.mean((np.asarray(apply(p, x_t, t, context)) - noise) ** 2))
  before, after = mse(params), mse(lora.merge(params, new.params["net"], 1.0))
  assert abs(before - float(metrics["mse"])) < 1e-5 and after < before
