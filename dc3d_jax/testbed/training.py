"""Training the testbed prior: v-prediction on (reference, relative camera, target) triples.

Per step, B pairs are drawn uniformly: a placement i of a training object and one of its
views k (k = 0 is the reference view itself, T = [0, 0, 1, θ_ref]). Loss ‖v̂ − v‖² (mean),
v = √ᾱ_t ε − √(1−ᾱ_t) x_0, with x_t = √ᾱ_t x_0 + √(1−ᾱ_t) ε, t ~ U{0..T−1}, cosine schedule
(priors/testbed.py says why v and not ε). With
probability `mirror` a pair is mirrored: both images flipped left-right and the target's
azimuth negated. That is the same pair for the object's mirror image about the plane through
the up axis and the reference camera (exact for this camera model: tests/test_testbed_prior.py
renders it), so it doubles the shapes seen and shows the prior the left-right symmetry the
mirrored-reference baseline exploits. With
probability `cond_drop` a pair's conditioning (reference image and T together) is zeroed,
which trains the unconditional branch for classifier-free guidance (Zero123 and Stable-
Zero123 train CFG the same way). AdamW with linear warm-up then cosine decay, global-norm
clipping, and an EMA of the weights (buffers["ema"], the weights that are exported).

Keys: key_for(root, "testbed/<stream>", step), so a resumed run draws what an uninterrupted
one would. State: stages.common.TrainState, so stages/loop.py runs it (resume, progress bar,
metrics.jsonl, samples, checkpoints). Its params and EMA are ONE flat float32 vector
(ravel_pytree of the UNet's pytree; `params_tree` turns it back): the optimizer, the finite
check and the EMA then compile to a handful of kernels instead of a few per parameter leaf,
which cut the train step's XLA compile time ~4× on CPU.
"""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import traverse_util
from jax.flatten_util import ravel_pytree

from dc3d_jax.core import rng
from dc3d_jax.priors import testbed
from dc3d_jax.priors.testbed_unet import Architecture
from dc3d_jax.stages.common import TrainState, apply_gradients


@dataclasses.dataclass(frozen=True)
class Settings:
  arch: Architecture
  steps: int
  batch_size: int = 32
  lr: float = 5e-4
  warmup_steps: int = 200
  final_lr_fraction: float = 0.1
  weight_decay: float = 0.0
  grad_clip: float = 1.0
  ema_decay: float = 0.999
  cond_drop: float = 0.1
  mirror: float = 0.0           # probability of mirroring a pair (0: off, as runs before it)

  @classmethod
  def from_config(cls, cfg) -> "Settings":
    arch = Architecture(**{k: tuple(v) if isinstance(v, (list, tuple)) else v
                           for k, v in cfg.model.items()})
    t = cfg.train
    return cls(arch=arch, steps=t.steps, batch_size=t.batch_size, lr=t.lr,
               warmup_steps=t.warmup_steps, final_lr_fraction=t.final_lr_fraction,
               weight_decay=t.weight_decay, grad_clip=t.grad_clip, ema_decay=t.ema_decay,
               cond_drop=t.cond_drop, mirror=t.get("mirror", 0.0))


def learning_rate(settings: Settings):
  """Linear warm-up to lr, then cosine to final_lr_fraction·lr at the last step."""
  decay = max(settings.steps - settings.warmup_steps, 1)
  return optax.warmup_cosine_decay_schedule(
      0.0, settings.lr, max(settings.warmup_steps, 1), settings.warmup_steps + decay,
      end_value=settings.lr * settings.final_lr_fraction)


def make_optimizer(settings: Settings) -> optax.GradientTransformation:
  return optax.chain(optax.clip_by_global_norm(settings.grad_clip),
                     optax.adamw(learning_rate(settings), b1=0.9, b2=0.999,
                                 weight_decay=settings.weight_decay))


@functools.lru_cache(maxsize=8)
def _param_shapes(arch: Architecture) -> dict:
  """The UNet's parameter pytree as jax.ShapeDtypeStruct leaves (no values computed)."""
  return jax.eval_shape(lambda: testbed.init_params(arch, jax.random.key(0)))


@functools.lru_cache(maxsize=8)
def _unravel(arch: Architecture):
  """Flat [P] vector -> the UNet's parameter pytree (shapes only; no values kept)."""
  shapes = _param_shapes(arch)
  return ravel_pytree(jax.tree_util.tree_map(lambda s: np.zeros(s.shape, s.dtype), shapes))[1]


def params_tree(flat: jax.Array, arch: Architecture) -> dict:
  return _unravel(arch)(flat)


def widen(old: dict, arch: Architecture) -> dict:
  """Fine-tuning start: the parameters of `arch` (e.g. with Architecture.mirror_ref) from
  `old`, those of a model with fewer input channels. Every tensor is taken from `old`; a conv
  kernel [kh, kw, c_in, c_out] that gained input channels keeps the old ones first and zeros
  in the added ones, so the widened model computes exactly what the old one did until
  training moves the new weights."""
  old_flat = traverse_util.flatten_dict(old)
  shapes = traverse_util.flatten_dict(_param_shapes(arch))

  def take(path, n):
    o = old_flat.get(path)
    name = "/".join(path)
    if o is None:
      raise ValueError(f"init weights lack {name}: not a narrower copy of this architecture")
    if o.shape == n.shape:
      return jnp.asarray(o, n.dtype)
    if o.ndim == 4 and o.shape[:2] + o.shape[3:] == n.shape[:2] + n.shape[3:] \
        and o.shape[2] < n.shape[2]:
      return jnp.zeros(n.shape, n.dtype).at[:, :, :o.shape[2]].set(o)
    raise ValueError(f"init weights' {name} has shape {o.shape}; this architecture's is "
                     f"{n.shape} (only a conv's input channels may grow)")
  extra = sorted("/".join(k) for k in set(old_flat) - set(shapes))
  if extra:
    raise ValueError(f"init weights have tensors this architecture lacks: {extra[:3]}")
  return traverse_util.unflatten_dict({k: take(k, n) for k, n in shapes.items()})


def init_state(settings: Settings, key, params: dict | None = None) -> TrainState:
  """Fresh weights from `key`, or `params` (a pytree of this architecture) as the start."""
  if params is None:
    params = testbed.init_params(settings.arch, key)
  params = ravel_pytree(params)[0]
  tx = make_optimizer(settings)
  return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
                    buffers={"ema": jnp.copy(params)},
                    skipped=jnp.zeros((), jnp.int32))


def device_data(data: dict) -> dict:
  """The arrays a step samples from (dataset.load_or_build's), on the device."""
  keys = ("rgba", "elevation", "azimuth", "ref_elevation")
  return {k: jnp.asarray(data[k], jnp.uint8 if k == "rgba" else jnp.float32) for k in keys}


def to_signed(rgba_uint8: jax.Array) -> jax.Array:
  """uint8 RGBA (RGB on white) -> float RGB in [-1, 1]."""
  return rgba_uint8[..., :3].astype(jnp.float32) / 127.5 - 1.0


def sample_batch(data: dict, key, batch_size: int, mirror: float = 0.0, mirror_key=None):
  """-> x0 [B, R, R, 3], ref [B, R, R, 3] in [-1, 1], pose [B, 4]; each pair mirrored with
  probability `mirror` (drawn from mirror_key; module docstring)."""
  n, v = data["elevation"].shape
  k_i, k_v = jax.random.split(key)
  i = jax.random.randint(k_i, (batch_size,), 0, n)
  k = jax.random.randint(k_v, (batch_size,), 0, v)
  x0, ref = to_signed(data["rgba"][i, k]), to_signed(data["rgba"][i, 0])
  azimuth = data["azimuth"][i, k]
  if mirror > 0.0:
    flip = jax.random.bernoulli(mirror_key, mirror, (batch_size,))
    azimuth = jnp.where(flip, -azimuth, azimuth)
    x0, ref = (jnp.where(flip[:, None, None, None], a[:, :, ::-1], a) for a in (x0, ref))
  pose = testbed.relative_pose(data["elevation"][i, k], azimuth, data["ref_elevation"][i], 0.0)
  return x0, ref, pose


def _loss(flat, x0, cond, t, noise, arch):
  a = jnp.asarray(testbed.alphas_cumprod())[t][:, None, None, None]
  x_t = jnp.sqrt(a) * x0 + jnp.sqrt(1.0 - a) * noise
  v = jnp.sqrt(a) * noise - jnp.sqrt(1.0 - a) * x0
  return jnp.mean((testbed.apply_v(params_tree(flat, arch), x_t, t, cond, arch) - v) ** 2)


@functools.partial(jax.jit, static_argnames=("settings",), donate_argnums=(0,))
def train_step(state: TrainState, data: dict, root_key, *, settings: Settings):
  """One optimizer step on a fresh batch; returns (state, {"loss", "grad_norm", "lr"})."""
  step = state.step
  x0, ref, pose = sample_batch(data, rng.key_for(root_key, "testbed/batch", step),
                               settings.batch_size, settings.mirror,
                               rng.key_for(root_key, "testbed/mirror", step))
  b = x0.shape[0]
  keep = jax.random.bernoulli(rng.key_for(root_key, "testbed/drop", step),
                              1.0 - settings.cond_drop, (b,)).astype(jnp.float32)
  cond = testbed.conditioning(ref * keep[:, None, None, None], pose * keep[:, None])
  t = jax.random.randint(rng.key_for(root_key, "testbed/t", step), (b,), 0,
                         testbed.SCHEDULE[-1])
  noise = jax.random.normal(rng.key_for(root_key, "testbed/noise", step), x0.shape)
  loss, grads = jax.value_and_grad(_loss)(state.params, x0, cond, t, noise, settings.arch)
  tx = make_optimizer(settings)
  new = apply_gradients(state, grads, tx, state.buffers)
  # EMA with a warm-up (decay (1+s)/(10+s) early on), so early samples are not all init.
  decay = jnp.minimum(settings.ema_decay, (1.0 + step) / (10.0 + step))
  ema = decay * state.buffers["ema"] + (1.0 - decay) * new.params
  metrics = {"loss": loss, "grad_norm": optax.tree.norm(grads),
             "lr": learning_rate(settings)(step)}
  return new.replace(buffers={"ema": ema}), metrics
