"""DeepFloyd IF stage I in JAX (priors/deepfloyd_unet.py, t5_encoder.py, deepfloyd.py) and in
the 2D guidance slot (guidance.prior_2d = "deepfloyd").

A tiny random IF folder (experiments/tiny_models.write_tiny_deepfloyd: TINY_IF_UNET, IF-I's
block types and options at tiny widths, built with diffusers' PyTorch UNet2DConditionModel; a
T5 v1.1 encoder from transformers saved in shards with an index; a SentencePiece tokenizer
trained here; IF's scheduler config) is loaded by the port, which must give the PyTorch
models' outputs on the same inputs to 1e-4: the UNet's 6 channels, the T5 states of padded
77-token prompts. Loading errors name the file; prompts are encoded once and cached. The
prior's ε̂ is Perp-Neg of the UNet's per-branch ε (the SD prior's check), its SDS gradient
reaches the render as 2·Bᵀ(w(t)(ε̂ - ε))/B through the 64² resize, and the config drives one
guidance step of the coarse NeRF through it.
"""

import json
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dc3d_jax import cameras, pipeline
from dc3d_jax.core.types import Camera
from dc3d_jax.errors import ModelError
from dc3d_jax.guidance import registry, sds
from dc3d_jax.priors import deepfloyd, loading, noise_schedule, state_dicts, t5_encoder
from dc3d_jax.priors.models import NoiseScheduleConfig
from dc3d_jax.priors.text_cache import TextEmbeddingCache
from dc3d_jax.priors.resolve import ModelNotFoundError
from experiments import tiny_models

TOL = 1e-4
TIMESTEPS = np.array([20, 700], np.int32)
T5_WIDTH = tiny_models.TINY_IF_UNET["encoder_hid_dim"]
IF_SCHEDULE = NoiseScheduleConfig(beta_schedule="squaredcos_cap_v2")   # IF's, 1000 steps


def inputs(seed: int, *shape):
  return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def max_error(ours, ref) -> float:
  ours, ref = np.asarray(ours, np.float32), np.asarray(ref, np.float32)
  assert ours.shape == ref.shape
  assert np.abs(ref).max() > 0.1          # a vanishing output would make the check empty
  err = float(np.abs(ours - ref).max())
  print(f"max abs {err:.2e} (output max {np.abs(ref).max():.2f})")
  return err


@pytest.fixture(scope="module")
def if_dir(tmp_path_factory):
  return tiny_models.write_tiny_deepfloyd(tmp_path_factory.mktemp("if") / "IF-I-tiny",
                                          text_shard_size="20KB")


@pytest.fixture(scope="module")
def unet_dir(if_dir):
  return if_dir / "unet"


@pytest.fixture(scope="module")
def models(if_dir):
  return loading.load_deepfloyd(str(if_dir))


@pytest.fixture(scope="module")
def loaded_unet(unet_dir):
  return loading.load_deepfloyd_unet(unet_dir)


def test_if_unet_matches_pytorch_diffusers(unet_dir, loaded_unet):
  """ε and the variance channels of the loaded UNet against diffusers' PyTorch forward
  (T5-style states of 77 tokens, two timesteps, NCHW on the PyTorch side)."""
  import torch
  from diffusers import UNet2DConditionModel
  unet, params = loaded_unet
  x, states = inputs(0, 2, 3, 16, 16), inputs(1, 2, 77, T5_WIDTH)
  ours = jax.jit(unet.apply)({"params": params}, jnp.transpose(x, (0, 2, 3, 1)),
                             TIMESTEPS, states)
  torch_unet = UNet2DConditionModel.from_pretrained(str(unet_dir)).eval()
  with torch.no_grad():
    ref = torch_unet(torch.from_numpy(x), torch.from_numpy(TIMESTEPS).long(),
                     encoder_hidden_states=torch.from_numpy(states)).sample.numpy()
  assert ref.shape == (2, 6, 16, 16)
  assert max_error(np.transpose(ours, (0, 3, 1, 2)), ref) < TOL
  # The text conditioning acts (through the added keys/values and the text-time embedding).
  other = jax.jit(unet.apply)({"params": params}, jnp.transpose(x, (0, 2, 3, 1)), TIMESTEPS,
                              inputs(2, 2, 77, T5_WIDTH))
  assert float(jnp.abs(other - ours).max()) > 1e-3


def test_if_unet_loads_the_fp16_variant(loaded_unet, unet_dir, tmp_path):
  """diffusion_pytorch_model.fp16.safetensors alone (what variant="fp16" downloads leave):
  half-precision storage, computed in float32."""
  import safetensors.numpy
  _, params = loaded_unet
  folder = tmp_path / "unet"
  folder.mkdir()
  shutil.copy(unet_dir / "config.json", folder)
  state = safetensors.numpy.load_file(str(unet_dir / "diffusion_pytorch_model.safetensors"))
  safetensors.numpy.save_file({k: v.astype(np.float16) for k, v in state.items()},
                              str(folder / "diffusion_pytorch_model.fp16.safetensors"))
  _, from_fp16 = loading.load_deepfloyd_unet(folder)
  leaves = jax.tree_util.tree_leaves
  for a, b in zip(leaves(params), leaves(from_fp16)):
    assert b.dtype == jnp.float32
    np.testing.assert_array_equal(np.asarray(a).astype(np.float16), b)


def _rewrite_weights(src, dst, change):
  import safetensors.numpy
  shutil.copytree(src, dst)
  path = dst / "diffusion_pytorch_model.safetensors"
  state = safetensors.numpy.load_file(str(path))
  change(state)
  safetensors.numpy.save_file(state, str(path))
  return path


def test_if_unet_loading_errors_name_the_file(unet_dir, tmp_path):
  missing = _rewrite_weights(unet_dir, tmp_path / "missing",
                             lambda s: s.pop("add_embedding.pool.positional_embedding"))
  with pytest.raises(ModelError, match=f"{missing}.*1 missing.*positional_embedding"):
    loading.load_deepfloyd_unet(missing.parent)
  extra = _rewrite_weights(unet_dir, tmp_path / "extra",
                           lambda s: s.update(class_embedding=np.zeros(3, np.float32)))
  with pytest.raises(ModelError, match=f"{extra}.*1 unexpected.*class_embedding"):
    loading.load_deepfloyd_unet(extra.parent)
  shape = _rewrite_weights(unet_dir, tmp_path / "shape",
                           lambda s: s.update({"conv_in.weight": np.zeros((32, 3, 1, 1),
                                                                          np.float32)}))
  with pytest.raises(ModelError, match=f"{shape}.*conv_in.weight"):
    loading.load_deepfloyd_unet(shape.parent)
  stage2 = tmp_path / "stage2"
  shutil.copytree(unet_dir, stage2)
  config = json.loads((stage2 / "config.json").read_text())
  (stage2 / "config.json").write_text(json.dumps(dict(config, class_embed_type="timestep")))
  with pytest.raises(state_dicts.UnsupportedModelError,
                     match=f"{stage2 / 'config.json'}: class_embed_type='timestep'"):
    loading.load_deepfloyd_unet(stage2)
  (tmp_path / "empty").mkdir()
  with pytest.raises(ModelNotFoundError, match="diffusion_pytorch_model.safetensors"):
    loading.load_deepfloyd_unet(tmp_path / "empty")


# ------------------------------------------------------------------------- T5 text encoder

PROMPTS = ["a photo of a red toy, front view", ""]


def test_t5_states_match_transformers(if_dir, models):
  """The T5 states IF's UNet gets: padded to 77 with the attention mask (the reference's
  prompt processor), against transformers' PyTorch T5EncoderModel on the sharded weights."""
  import torch
  from transformers import T5EncoderModel, T5Tokenizer
  assert models.text_encoder["weights_path"].name == "model.safetensors.index.json"
  ours = deepfloyd.encode_prompts(models, PROMPTS)
  tokenizer = T5Tokenizer.from_pretrained(str(if_dir / "tokenizer"))
  tokens = tokenizer(PROMPTS, padding="max_length", max_length=77, truncation=True,
                     return_tensors="pt")
  assert tokens.attention_mask[1].sum() == 1          # "": only </s>, 76 padding tokens
  encoder = T5EncoderModel.from_pretrained(str(if_dir / "text_encoder")).eval()
  with torch.no_grad():
    ref = encoder(tokens.input_ids, attention_mask=tokens.attention_mask)[0].numpy()
  assert ours.shape == (2, 77, T5_WIDTH)
  assert max_error(ours, ref) < TOL
  with torch.no_grad():                               # the mask matters at padded positions
    unmasked = encoder(tokens.input_ids)[0].numpy()
  assert np.abs(unmasked - ref).max() > 1e-3


def test_t5_embeddings_are_encoded_once_and_cached_on_disk(models, tmp_path, monkeypatch):
  cache = TextEmbeddingCache()
  first = deepfloyd.text_embeddings(models, ["a cat", "a cat, side view"], cache_dir=tmp_path,
                                    cache=cache)
  assert cache.encoded == 2 and first.shape == (2, 77, T5_WIDTH)
  assert len(list(tmp_path.glob("*.npy"))) == 2

  def no_encoder(*args, **kwargs):
    raise AssertionError("the T5 encoder was loaded although every prompt is cached")

  monkeypatch.setattr(t5_encoder, "load_t5", no_encoder)
  fresh = TextEmbeddingCache()
  again = deepfloyd.text_embeddings(models, ["a cat, side view", "a cat"], cache_dir=tmp_path,
                                    cache=fresh)
  assert fresh.encoded == 0
  np.testing.assert_array_equal(again, first[::-1])


def test_text_encoder_errors_name_the_file(if_dir, tmp_path):
  broken = tmp_path / "IF"
  shutil.copytree(if_dir, broken)
  shard = sorted((broken / "text_encoder").glob("model-*.safetensors"))[-1]
  shard.unlink()
  with pytest.raises(ModelError, match=f"model.safetensors.index.json.*{shard.name}"):
    state_dicts.check_weights_file(broken / "text_encoder" / "model.safetensors.index.json")
  config = json.loads((if_dir / "text_encoder" / "config.json").read_text())
  (broken / "text_encoder" / "config.json").write_text(json.dumps(dict(config, d_kv=4)))
  index = if_dir / "text_encoder" / "model.safetensors.index.json"
  with pytest.raises(ModelError, match=f"{index}: .*SelfAttention.k.kernel.*shapes"):
    t5_encoder.load_t5(broken / "text_encoder" / "config.json", index, if_dir / "tokenizer")


# ------------------------------------------------------------------ the prior and the slot

class _StandInUNet:
  """Stands in for IF's UNet (NHWC): channels 0-2 are ε = x·(1 + mean of the row's context) +
  t/1000, so each row's text and step show; channels 3-5 (the variance) are 1e3."""
  dtype = jnp.float32

  def apply(self, variables, x, t, context):
    eps = x * (1.0 + jnp.mean(context, axis=(1, 2))[:, None, None, None])
    eps = eps + t[:, None, None, None] / 1000.0
    return jnp.concatenate([eps, jnp.full_like(eps, 1e3)], -1)


def test_guided_noise_and_sds_gradient_through_the_64px_input():
  """One view (azimuth 30°, the front half) of a 128² render: x is its 2×2 block average
  (the ×2 bilinear downsample without antialiasing) scaled to [-1, 1]; ε̂ is Perp-Neg (CFG
  20) of ε of the four hand-built rows (the first 3 UNet channels); the gradient reaching
  the render is 2·Bᵀg/B with g = (1-ᾱ_t)(ε̂ - ε), Bᵀ spreading each 64² value over its block
  divided by 4."""
  from test_sd_guidance import _branch_table, _expected_terms, _perp_neg_numpy
  prior = deepfloyd.DeepFloydPrior(unet=_StandInUNet(), schedule=IF_SCHEDULE)
  table = np.random.default_rng(3).normal(size=(5, 77, T5_WIDTH)).astype(np.float32)
  params = {"unet": {}, "embeddings": jnp.asarray(table)}
  cams = Camera(c2w=np.eye(4, dtype=np.float32)[None], fovy=np.array([0.35], np.float32),
                elevation_deg=np.array([0.0], np.float32),
                azimuth_deg=np.array([30.0], np.float32), distance=np.array([3.8], np.float32),
                height=128, width=128)
  alphas, t = prior.alphas_cumprod(), np.array([600])
  images = np.random.default_rng(4).uniform(size=(1, 128, 128, 3)).astype(np.float32)
  noise = np.random.default_rng(5).normal(size=(1, 64, 64, 3)).astype(np.float32)

  @jax.jit
  def run(params, images):
    cond = prior.condition(params, cams)
    eps_fn = lambda x_t, tt: prior.predict_noise(params, x_t, tt, cond)
    loss = lambda im: sds.score_distillation(prior.encode(params, im, None), eps_fn, t, noise,
                                             jnp.asarray(alphas))
    (_, g), g_images = jax.value_and_grad(loss, has_aux=True)(images)
    return prior.encode(params, images, None), g, g_images

  x, g, g_images = map(np.asarray, run(params, images))
  blocks = images.reshape(1, 64, 2, 64, 2, 3).mean(axis=(2, 4))
  np.testing.assert_allclose(x, 2.0 * blocks - 1.0, atol=1e-6)
  a = float(alphas[600])
  x_t = np.sqrt(a) * x + np.sqrt(1 - a) * noise
  eps = [x_t * (1.0 + row.mean()) + 0.6 for row in _branch_table(table, 30.0)]
  want = _perp_neg_numpy(eps[1], eps[0], np.stack(eps[2:], 1),
                         np.array([_expected_terms(30.0)[2]]), 20.0)
  # float32 round-off of x_t, amplified by CFG 20: 1e-4 of the largest value
  np.testing.assert_allclose(g, (1 - a) * (want - noise), rtol=1e-4,
                             atol=1e-4 * np.abs(g).max())
  spread = np.repeat(np.repeat(g, 2, axis=1), 2, axis=2) / 4.0
  np.testing.assert_allclose(g_images, 2.0 * spread, rtol=1e-5, atol=1e-6 * np.abs(g).max())


def _cfg(if_dir, workdir, image):
  """The tiny stage config (conftest) with IF in the 2D slot and a user image."""
  from conftest import tiny_config
  cfg = tiny_config(workdir, steps=2)
  with cfg.unlocked():
    cfg.guidance.update(prior_2d="deepfloyd", prior_3d="none", if_model=str(if_dir))
    cfg.prompt, cfg.data.image = "a red toy", str(image)
  return cfg


def test_scheduler_matches_diffusers(if_dir, models):
  from diffusers import DDPMScheduler
  scheduler = DDPMScheduler.from_pretrained(str(if_dir / "scheduler"))
  np.testing.assert_allclose(deepfloyd.DeepFloydPrior(models.unet, models.schedule)
                             .alphas_cumprod(), scheduler.alphas_cumprod.numpy(), rtol=1e-4)


def test_config_drives_the_2d_slot_through_deepfloyd(if_dir, tmp_path):
  """guidance.prior_2d = "deepfloyd": the run's checks pass, the registry builds IF once with
  the reference's settings and caches its five T5 embeddings, and the slot's loss (what a
  stage's step calls) runs through it at IF's t range, unmapped."""
  from configs import dreamcraft3d
  from dc3d_jax.io import writers
  from dc3d_jax.stages import coarse_nerf as cn
  assert dreamcraft3d.get_config().guidance.if_render_size == 64      # IF-I's input size
  yy, xx = np.mgrid[:64, :64]
  disk = ((yy - 31.5) ** 2 + (xx - 31.5) ** 2 < 400).astype(np.float32)[..., None]
  writers.save_png(tmp_path / "toy.png",
                   np.concatenate([np.full((64, 64, 3), 0.5, np.float32), disk], -1))
  cfg = _cfg(if_dir, tmp_path / "run", tmp_path / "toy.png")
  with cfg.unlocked():
    cfg.guidance.if_render_size = 16        # IF's 64² shrunk to the tiny renders, for time
  inputs = pipeline.preflight(cfg)          # every key's rule, the folder's files and headers
  assert inputs.models == {"deepfloyd": str(if_dir)}
  store = registry.PriorStore(cfg.guidance, cache_dir=tmp_path / "cache")
  terms, prior_params = registry.build(cfg, cn.NAME, store)
  prior = terms["sds_2d"].prior
  assert isinstance(prior, deepfloyd.DeepFloydPrior) and terms["sds_2d"].timestep_map is None
  assert prior.guidance_scale == 20.0 and prior.perp_neg and prior.resolution == 16
  np.testing.assert_allclose(prior.alphas_cumprod(), noise_schedule.deepfloyd_if_alphas_cumprod())
  assert prior_params["sds_2d"]["embeddings"].shape == (5, 77, T5_WIDTH)
  assert store.text_cache.encoded == 5 and len(list((tmp_path / "cache").glob("*.npy"))) == 5
  assert store.deepfloyd() is store.deepfloyd()
  # The slot's loss as a stage's step calls it (the stages reach priors only through it), on
  # a batch of grey renders at step 0: IF's NeRF t range, unmapped, and a nonzero gradient.
  cams = cameras.make_camera(jnp.array([0.0, 30.0]), jnp.array([0.0, 90.0]), 3.8, 20.0, 16, 16)
  renders = jnp.full((2, 16, 16, 3), 0.5)
  loss_fn = lambda r: terms["sds_2d"].loss(prior_params["sds_2d"], r, cams, 0,
                                           jax.random.key(1))
  (loss, metrics), grad = jax.jit(jax.value_and_grad(loss_fn, has_aux=True))(renders)
  assert np.isfinite(float(loss)) and float(loss) > 0
  assert 700 <= float(metrics["t"]) <= 850                # IF's NeRF range at step 0, unmapped
  assert np.isfinite(np.asarray(grad)).all() and float(jnp.abs(grad).max()) > 0
  with cfg.unlocked():
    cfg.guidance.if_model = ""
  with pytest.raises(ValueError, match="guidance.if_model"):
    pipeline.preflight(cfg)


