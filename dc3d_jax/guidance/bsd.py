"""Bootstrapped score distillation (BSD, reference §4 and §10): the pieces a texture stage holds.

Symbols: z the render's latent (the base's x); t an integer timestep; ᾱ_t; ε ~ N(0, I);
z_t = √ᾱ_t z + √(1-ᾱ_t) ε; φ_DB the DreamBooth prior, φ_est the score estimator (both
TrainedCopy over one frozen base); c_vd the current view's condition (a prompt embedding on
SD; the reference image and relative camera on the testbed base, priors/testbed_base.py), c_vi
the view-independent one, u the unconditional one; CFG(ε_c, ε_u, s) = ε_u + s(ε_c - ε_u).
Every ᾱ and T below is the base's (`base.alphas_cumprod()`): SD's DDPM or the testbed's cosine.

Per 1000-step cycle (`what_happens`):
  DreamBooth phase (first 200 steps; no gradient reaches the 3D model)
    augment (every 25 steps): the render's latent is noised to t' = ⌊1000·t_max(step)⌋ and
      denoised by DPM-Solver++ (25-step grid, CFG 7.5, prompt c_vd / u), decoded and pushed
      into a FIFO of 10 images. The first augmentation ever samples the frozen base; every
      later one samples φ_DB (`BSDState.augmentations > 0`: the bootstrapping).
    dreambooth update (every step): ε-MSE of φ_DB on a random cached image re-encoded,
      t ~ U[0, 1000), prompt c_vd zeroed with p = 0.1, weight 0.1.
  then even steps: reference L1 (the stage's); odd steps: BSD
    g = (1 - ᾱ_t)(CFG(ε_DB(z_t, c_vd), ε_DB(z_t, u), 2) - ε_est(z_t, c_vi)),
      t ~ U{⌊1000·t_min⌋ .. ⌊1000·t_max(step)⌋}; loss ½‖z - sg(z - g)‖² / B (weight 0.01)
    estimator update: ε-MSE of φ_est on sg(z), t ~ U[0, 1000), prompt c_vi (weight 0.1).
DS's variant (flags): camera class embedding of the flattened c2w on both copies (φ_DB
[c2w, c2w] under CFG, φ_est [c2w, 0]; both updates get c2w; augmentation sampling runs
without it, as DS's `_sample`), augmentation masked by the front-visibility mask
(dpm_solver.sample's mask), and the silhouette-band gradient detach (`detach_silhouette_band`).
"""

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
from flax import struct

from dc3d_jax.core import schedules
from dc3d_jax.errors import ConfigError
from dc3d_jax.guidance.bsd_cache import AugmentationCache, draw, empty_cache, push
from dc3d_jax.guidance.sds import sample_timesteps
from dc3d_jax.priors import dpm_solver
from dc3d_jax.priors.denoiser_base import DenoiserBase
from dc3d_jax.priors.trainable import TrainablePrior, TrainedCopy


@dataclasses.dataclass(frozen=True)
class BSDSettings:
  """Static BSD settings (config `texture.bsd`; defaults are the reference's numbers)."""
  cycle_steps: int = 1000            # only_pretrain_step
  dreambooth_steps: int = 200        # only_pretrain_step // 5
  augment_every: int = 25            # per_update_pretrain_step
  ref_every: int = 2                 # n_ref: outside the DreamBooth phase, ref on step % 2 == 0
  cache_size: int = 10
  sampler_steps: int = 25
  augment_guidance_scale: float = 7.5
  bsd_guidance_scale: float = 2.0
  estimator_guidance_scale: float = 1.0
  prompt_dropout: float = 0.1        # DS: 0
  dreambooth_weight: float = 0.1     # lambda_pretrain (AdamW's eps makes the scale matter)
  estimator_weight: float = 0.1      # lambda_lora
  t_min: Any = (0.05,)
  t_max: Any = (0, 0.5, 0.2, 5000)
  camera_condition: bool = False     # DS: class embedding of the flattened c2w
  masked_augmentation: bool = False  # DS: keep the reference-visible region in augmentations
  silhouette_band: int = 0           # DS: 11 (an 11x11 band around the silhouette); 0 = off


def settings_from_config(texture) -> BSDSettings:
  """BSDSettings from the config's `texture` section (configs/texture_section.py): every key
  of texture.bsd, and the ε-MSE weights texture.loss.dreambooth / estimator (constants)."""
  keys = {k: texture.bsd[k] for k in texture.bsd.keys()}
  keys.update(t_min=tuple(keys["t_min"]), t_max=tuple(keys["t_max"]))
  weights = {}
  for name in ("dreambooth", "estimator"):
    value = texture.loss[name]
    schedules.check_schedule(value, f"texture.loss.{name}")
    if len(value) != 1:
      raise ConfigError(f"config texture.loss.{name}={value!r}: the ε-MSE weights are "
                        "constants, (v,)")
    weights[f"{name}_weight"] = float(value[0])
  return BSDSettings(**keys, **weights)


def what_happens(step: int, s: BSDSettings) -> dict:
  """What the texture stage does at `step` (Python int): {"dreambooth", "augment", "ref",
  "bsd"}; the estimator update runs with "bsd", the DreamBooth update with "dreambooth"."""
  dreambooth = step % s.cycle_steps < s.dreambooth_steps
  ref = not dreambooth and step % s.ref_every == 0
  return {"dreambooth": dreambooth, "augment": dreambooth and step % s.augment_every == 0,
          "ref": ref, "bsd": not dreambooth and not ref}


def max_timestep(step, s: BSDSettings, num_steps: int = 1000):
  """t' = ⌊T·t_max(step)⌋ (int32): the BSD range's top and the augmentation's noise level."""
  return jnp.floor(num_steps * schedules.scalar(s.t_max, step)).astype(jnp.int32)


# --------------------------------------------------------------------------- state

@struct.dataclass
class BSDState:
  """dreambooth, estimator: the trained copies; cache: the augmentations; augmentations:
  how many were made (the sampler uses φ_DB once it is > 0)."""
  dreambooth: TrainedCopy
  estimator: TrainedCopy
  cache: AugmentationCache
  augmentations: jax.Array


def zero_rows(cond, drop: jax.Array):
  """cond with the rows where drop [N] is True set to 0 (the reference's prompt dropout
  zeroes the embedding; it does not use the negative prompt's)."""
  def leaf(x):
    return jnp.where(drop.reshape((-1,) + (1,) * (x.ndim - 1)), jnp.zeros_like(x), x)
  return jax.tree_util.tree_map(leaf, cond)


def prompt_dropout(key: jax.Array, p: float, rows: int) -> jax.Array:
  """[rows] bool: which prompts to zero (each with probability p; the reference draws once
  per step for its batch of 1)."""
  return jax.random.bernoulli(key, p, (rows,))


def concat_rows(a, b):
  return jax.tree_util.tree_map(lambda x, y: jnp.concatenate([x, y], 0), a, b)


def guided(eps_fn, x_t, t, cond, uncond, scale: float, camera=None, uncond_camera=None):
  """CFG(ε(x_t, cond, camera), ε(x_t, uncond, uncond_camera), scale); scale 1 runs the
  conditional branch only (CFG 1 is the conditional prediction)."""
  if scale == 1.0:
    return eps_fn(x_t, t, cond, camera)
  cams = None if camera is None else jnp.concatenate([camera, uncond_camera], 0)
  both = eps_fn(jnp.concatenate([x_t, x_t], 0), jnp.concatenate([t, t], 0),
                concat_rows(cond, uncond), cams)
  eps_c, eps_u = jnp.split(both, 2)
  return eps_u + scale * (eps_c - eps_u)


def detach_silhouette_band(images: jax.Array, opacity: jax.Array, size: int = 11):
  """[B, H, W, C] images whose pixels within a size×size window of a pixel with opacity
  < 0.5 carry no gradient (DS: max-pool of 1 - opacity > 0.5; opacity [B, H, W, 1])."""
  pooled = jax.lax.reduce_window(1.0 - opacity, -jnp.inf, jax.lax.max, (1, size, size, 1),
                                 (1, 1, 1, 1), "SAME")
  return jnp.where(pooled > 0.5, jax.lax.stop_gradient(images), images)


def stop_gradient_target_loss(x: jax.Array, grad: jax.Array) -> jax.Array:
  """½‖x - sg(x - g)‖²_sum / B: its gradient w.r.t. x is g / B exactly."""
  target = jax.lax.stop_gradient(x - grad)
  return 0.5 * jnp.sum((x - target) ** 2) / x.shape[0]


@dataclasses.dataclass(frozen=True)
class BSD:
  """The BSD machinery on one frozen base: static (hashable under jit); every method is a
  pure function of its array arguments. base_params: the base network's params (frozen,
  shared by both copies in lora mode); codec_params: the VAE's ({} in pixel space)."""
  base: DenoiserBase
  dreambooth: TrainablePrior
  estimator: TrainablePrior
  settings: BSDSettings = BSDSettings()

  def init_state(self, base_params, key: jax.Array, image_hw: tuple) -> BSDState:
    """image_hw: the decoded augmentations' (H, W) (512² for SD 2.1-base)."""
    k_db, k_est = jax.random.split(key)
    return BSDState(dreambooth=self.dreambooth.init(base_params, k_db),
                    estimator=self.estimator.init(base_params, k_est),
                    cache=empty_cache(self.settings.cache_size, *image_hw),
                    augmentations=jnp.zeros((), jnp.int32))

  def alphas(self) -> jax.Array:
    return jnp.asarray(self.base.alphas_cumprod())

  def grid(self) -> dpm_solver.SolverGrid:
    return dpm_solver.grid(self.base.alphas_cumprod(), self.settings.sampler_steps)

  def guidance_input(self, images: jax.Array, opacity: jax.Array) -> jax.Array:
    """The render BSD sees: [B, H, W, 3] images, with DS's silhouette band detached when
    settings.silhouette_band > 0 (opacity [B, H, W, 1])."""
    band = self.settings.silhouette_band
    return detach_silhouette_band(images, opacity, band) if band > 0 else images

  # ------------------------------------------------------------------ DreamBooth phase

  def sample_augmentation(self, state: BSDState, base_params, codec_params, z, cond, uncond,
                          key, step, visibility=None) -> jax.Array:
    """[B, h, w, c] latent z of the current render -> [B, H, W, 3] augmented images.

    z is noised to grid index dpm_solver.start_index(t') with t' = max_timestep(step) and
    denoised with CFG(c_vd = cond, u = uncond, 7.5) by the frozen base if
    state.augmentations == 0, else by φ_DB. visibility [B, H_r, W_r, 1] (1 = not seen from
    the reference view) masks the sampling when settings.masked_augmentation."""
    s = self.settings
    g = self.grid()
    n_train = self.alphas().shape[0]
    start = dpm_solver.start_index(max_timestep(step, s, n_train), s.sampler_steps, n_train)
    z = jax.lax.stop_gradient(z).astype(jnp.float32)
    noise = jax.random.normal(key, z.shape, jnp.float32)
    use_db = state.augmentations > 0
    eps_fn = self.dreambooth.eps_fn(state.dreambooth.params, base_params, use_db)
    # No camera here: DS's `_sample` disables the class embedding when sampling.
    guided_eps = lambda x, t: guided(eps_fn, x, t, cond, uncond, s.augment_guidance_scale)
    mask = None
    if s.masked_augmentation:
      if visibility is None:
        raise ValueError("texture.bsd.masked_augmentation needs the front-visibility mask")
      b, h, w, _ = z.shape
      mask = jax.image.resize(visibility.astype(jnp.float32), (b, h, w, 1), "linear",
                              antialias=True)
    x0 = dpm_solver.sample(guided_eps, g, dpm_solver.add_noise(g, z, noise, start), start,
                           mask=mask, noise=None if mask is None else noise)
    return self.base.decode(codec_params, x0)

  def augment(self, state: BSDState, base_params, codec_params, z, cond, uncond, key, step,
              visibility=None) -> tuple:
    """sample_augmentation, then push every image into the cache -> (state, images)."""
    images = self.sample_augmentation(state, base_params, codec_params, z, cond, uncond, key,
                                      step, visibility)
    cache = state.cache
    for i in range(images.shape[0]):
      cache = push(cache, images[i])
    return state.replace(cache=cache, augmentations=state.augmentations + 1), images

  def dreambooth_update(self, state: BSDState, base_params, codec_params, cond, key,
                        camera=None) -> tuple:
    """ε-MSE step of φ_DB on a random cached image (re-encoded, no gradient), t ~ U[0, T),
    the current view's prompt `cond` [1 row] zeroed with p = prompt_dropout, and the
    current camera [1, 16] when camera conditioning is on -> (state, metrics)."""
    k_draw, k_enc, k_t, k_noise, k_drop = jax.random.split(key, 5)
    image = draw(state.cache, k_draw)
    x0 = jax.lax.stop_gradient(self.base.encode(codec_params, image, k_enc))
    drop = prompt_dropout(k_drop, self.settings.prompt_dropout, x0.shape[0])
    copy, metrics = self._mse_step(self.dreambooth, state.dreambooth, base_params, x0,
                                   zero_rows(cond, drop), camera, k_t, k_noise,
                                   self.settings.dreambooth_weight)
    return state.replace(dreambooth=copy), dict(metrics, dropped=jnp.mean(drop * 1.0))

  # ------------------------------------------------------------------ BSD steps

  def bsd_gradient(self, state: BSDState, base_params, z, cond, uncond, cond_vi, key, step,
                   camera=None) -> tuple:
    """t ~ U{⌊T·t_min⌋ .. ⌊T·t_max(step)⌋}, ε ~ N(0, I), z_t = √ᾱ_t sg(z) + √(1-ᾱ_t) ε ->
    (g [B, h, w, c] of `gradient_at`, metrics). Apply g with stop_gradient_target_loss(z, g)
    on the differentiable z."""
    s = self.settings
    alphas = self.alphas()
    k_t, k_noise = jax.random.split(key)
    z = jax.lax.stop_gradient(z).astype(jnp.float32)
    t = sample_timesteps(k_t, z.shape[0], schedules.scalar(s.t_min, step),
                         schedules.scalar(s.t_max, step), alphas.shape[0])
    noise = jax.random.normal(k_noise, z.shape, jnp.float32)
    a = alphas[t].reshape((-1, 1, 1, 1))
    grad = self.gradient_at(state, base_params, jnp.sqrt(a) * z + jnp.sqrt(1.0 - a) * noise, t,
                            cond, uncond, cond_vi, camera)
    return grad, {"t": jnp.mean(t.astype(jnp.float32)),
                  "grad_norm": jnp.sqrt(jnp.sum(grad ** 2) / z.shape[0])}

  def gradient_at(self, state: BSDState, base_params, z_t, t, cond, uncond, cond_vi,
                  camera=None) -> jax.Array:
    """g = (1 - ᾱ_t)(CFG(ε_DB(z_t, c_vd), ε_DB(z_t, u), s_bsd)
                     - CFG(ε_est(z_t, c_vi, c2w), ε_est(z_t, c_vi, 0), s_est)), no gradient.
    The camera labels [B, 16] are used only with settings.camera_condition."""
    s = self.settings
    a = self.alphas()[t].reshape((-1, 1, 1, 1))
    cam = camera if s.camera_condition else None
    zeros = None if cam is None else jnp.zeros_like(cam)
    eps_db = guided(self.dreambooth.eps_fn(state.dreambooth.params, base_params), z_t, t,
                    cond, uncond, s.bsd_guidance_scale, cam, cam)
    eps_est = guided(self.estimator.eps_fn(state.estimator.params, base_params), z_t, t,
                     cond_vi, cond_vi, s.estimator_guidance_scale, cam, zeros)
    return jax.lax.stop_gradient((1.0 - a) * (eps_db - eps_est))

  def estimator_update(self, state: BSDState, base_params, z, cond_vi, key,
                       camera=None) -> tuple:
    """ε-MSE step of φ_est on sg(z), t ~ U[0, T), the view-independent prompt -> (state,
    metrics)."""
    k_t, k_noise = jax.random.split(key)
    x0 = jax.lax.stop_gradient(z).astype(jnp.float32)
    copy, metrics = self._mse_step(self.estimator, state.estimator, base_params, x0, cond_vi,
                                   camera, k_t, k_noise, self.settings.estimator_weight)
    return state.replace(estimator=copy), metrics

  def _mse_step(self, prior, copy, base_params, x0, cond, camera, k_t, k_noise, weight):
    t = jax.random.randint(k_t, (x0.shape[0],), 0, self.alphas().shape[0])
    noise = jax.random.normal(k_noise, x0.shape, jnp.float32)
    cam = camera if self.settings.camera_condition else None
    return prior.mse_update(copy, base_params, x0, t, noise, cond, cam, weight=weight)
