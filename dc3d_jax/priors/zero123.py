"""Zero123 (Stable-Zero123 / zero123-xl) as a 3D-aware SDS prior (reference §3.2).

Symbols: x = s·z, the VAE posterior sample z of a render (bilinear to 256², in [-1, 1]) scaled
by s = 0.18215; x_t its noisy version; t the integer timestep; ε̂ the guided noise prediction.
Per view the UNet is conditioned on
  c_crossattn = cc_projection([c_img, T])   c_img: projected CLIP ViT-L/14 image embedding of
                                            the reference image (768), T: relative pose (4)
  c_concat    = z_ref                       VAE posterior *mode* of the reference image,
                                            unscaled (LDM's encode_first_stage(...).mode())
and sees concat([x_t, c_concat]) on its channels (8). The unconditional branch replaces both
the *projected* embedding and z_ref by zeros; ε̂ = ε_u + s_cfg(ε_c − ε_u), s_cfg = 5.

The reference image is composited on white, area-resized to 256², mapped to [-1, 1]. The
CLIP embedder maps it back to [0, 1] after a bicubic (a = -0.75, align_corners=True, no
antialiasing: LDM's FrozenCLIPImageEmbedder through kornia) resize to 224² and normalises it
with OpenAI CLIP's mean/std.

Layouts: latents NHWC inside dc3d_jax; latents.py converts for the NCHW Flax UNet and VAE.
"""

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from dc3d_jax.core.types import Camera
from dc3d_jax.io.images import resize_area
from dc3d_jax.priors import latents, noise_schedule
from dc3d_jax.priors.models import NoiseScheduleConfig, Zero123Models
from dc3d_jax.priors.torch_semantics import torch_semantics

VARIANTS = ("stable", "xl")
_CUBIC_A = -0.75            # torch's (and kornia's) bicubic coefficient


def relative_camera(cameras: Camera, ref_elevation_deg, ref_azimuth_deg, ref_distance,
                    variant: str = "stable") -> jax.Array:
  """[B] cameras -> [B, 4] Zero123's relative pose T.

  With polar angle θ = 90° − e: T = [rad(θ − θ_ref), sin(rad(a − a_ref)), cos(rad(a − a_ref)),
  last], last = rad(θ_ref) for Stable-Zero123 (it takes the reference view's absolute polar
  angle there) and d − d_ref for zero123-xl. Angles in degrees in, radians out.
  """
  _check_variant(variant)
  polar, ref_polar = 90.0 - cameras.elevation_deg, 90.0 - jnp.asarray(ref_elevation_deg)
  d_azimuth = jnp.deg2rad(cameras.azimuth_deg - ref_azimuth_deg)
  if variant == "stable":
    last = jnp.broadcast_to(jnp.deg2rad(ref_polar), polar.shape)
  else:
    last = cameras.distance - ref_distance
  return jnp.stack([jnp.deg2rad(polar - ref_polar), jnp.sin(d_azimuth), jnp.cos(d_azimuth),
                    last], axis=-1).astype(jnp.float32)


def _check_variant(variant: str) -> None:
  if variant not in VARIANTS:
    raise ValueError(f"zero123 variant {variant!r}; expected one of {VARIANTS}")


def bicubic_weights(n_in: int, n_out: int) -> np.ndarray:
  """[n_out, n_in] weights of torch's bicubic interpolation with align_corners=True.

  Source position i·(n_in − 1)/(n_out − 1); four taps around it with the cubic convolution
  kernel (a = -0.75); taps past the border are clamped to the edge pixel.
  """
  # float32 positions, as torch computes them (float64 ones drift by ~1e-5 at 256 -> 224).
  scale = np.float32(n_in - 1) / np.float32(n_out - 1) if n_out > 1 else np.float32(0)
  src = np.arange(n_out, dtype=np.float32) * scale
  base = np.floor(src).astype(int)
  frac = src - base
  w = np.zeros((n_out, n_in))
  for offset in (-1, 0, 1, 2):
    taps = np.clip(base + offset, 0, n_in - 1)
    np.add.at(w, (np.arange(n_out), taps), _cubic_kernel(np.abs(frac - offset)))
  return w.astype(np.float32)


def _cubic_kernel(x: np.ndarray) -> np.ndarray:
  """Keys' cubic convolution kernel at distances |x| <= 2."""
  a = _CUBIC_A
  near = ((a + 2) * x - (a + 3)) * x * x + 1
  far = ((a * x - 5 * a) * x + 8 * a) * x - 4 * a
  return np.where(x <= 1, near, np.where(x < 2, far, 0.0))


def resize_bicubic(images: jax.Array, size: int) -> jax.Array:
  """[B, H, W, C] -> [B, size, size, C] with `bicubic_weights` along each axis."""
  wy = jnp.asarray(bicubic_weights(images.shape[1], size))
  wx = jnp.asarray(bicubic_weights(images.shape[2], size))
  return jnp.einsum("yh,xw,bhwc->byxc", wy, wx, images)


def clip_pixels(models: Zero123Models, images_pm1: jax.Array) -> jax.Array:
  """[B, H, W, 3] in [-1, 1] -> [B, S, S, 3] normalised CLIP input (S = models.clip_size)."""
  x = (resize_bicubic(images_pm1, models.clip_size) + 1.0) / 2.0
  return (x - jnp.asarray(models.clip_mean)) / jnp.asarray(models.clip_std)


def clip_image_embedding(models: Zero123Models, params, pixels: jax.Array) -> jax.Array:
  """[B, S, S, 3] CLIP input -> [B, D] projected image embedding (pooled CLS, no L2 norm).

  params: {"image_encoder", "visual_projection"}. Calls the Flax module itself, which takes
  NHWC (the FlaxCLIPVisionModel wrapper would transpose from NCHW).
  """
  with torch_semantics():
    out = models.image_encoder.module.apply({"params": params["image_encoder"]}, pixels)
  return out.pooler_output @ params["visual_projection"]["kernel"]


def reference_image(ref_rgba: np.ndarray, size: int) -> np.ndarray:
  """[H, W, 4] straight RGBA in [0, 1] -> [1, size, size, 3] on white, in [-1, 1].

  Compositing before the (linear) area resize equals resizing premultiplied RGBA first.
  """
  rgba = np.asarray(ref_rgba, np.float32)
  if rgba.ndim != 3 or rgba.shape[-1] != 4:
    raise ValueError(f"zero123 reference image must be [H, W, 4] RGBA; got {rgba.shape}")
  alpha = rgba[..., 3:]
  rgb = resize_area(rgba[..., :3] * alpha + (1.0 - alpha), (size, size))
  return (2.0 * rgb - 1.0)[None]


def reference_conditioning(models: Zero123Models, ref_rgba: np.ndarray,
                           size: int = 256) -> dict:
  """Once per run: clip_embedding [1, 1, D] (projected) and ref_latent [1, size/f, size/f, 4]
  (NHWC, VAE posterior mode, unscaled) of the reference RGBA."""

  # One program: op by op, each of CLIP's and the VAE's ops would be compiled on its own.
  @jax.jit
  def encode(params, image):
    embedding = clip_image_embedding(models, params, clip_pixels(models, image))
    ref_latent = latents.posterior(models.vae, params["vae"], image).mode()
    return {"clip_embedding": embedding[:, None, :], "ref_latent": ref_latent}

  params = {k: models.params[k] for k in ("image_encoder", "visual_projection", "vae")}
  return encode(params, jnp.asarray(reference_image(ref_rgba, size)))


@dataclasses.dataclass(frozen=True)
class Zero123Prior:
  """The Prior protocol (guidance/sds.py) for Zero123; weights in `params` (make_zero123_prior).

  params: {"unet", "vae", "cc_projection" {"kernel" [D+4, D], "bias" [D]}, "clip_embedding"
  [1, 1, D], "ref_latent" [1, h, w, 4]}.
  """
  unet: Any                   # diffusers.FlaxUNet2DConditionModel, 8 input channels
  vae: Any                    # diffusers.FlaxAutoencoderKL
  schedule: NoiseScheduleConfig
  vae_scaling_factor: float = 0.18215
  guidance_scale: float = 5.0
  variant: str = "stable"
  ref_elevation_deg: float = 0.0
  ref_azimuth_deg: float = 0.0
  ref_distance: float = 3.8
  render_size: int = 256

  def __post_init__(self):
    _check_variant(self.variant)

  def alphas_cumprod(self) -> np.ndarray:
    return noise_schedule.of_config(self.schedule)

  def encode(self, params, images: jax.Array, key: jax.Array) -> jax.Array:
    """[B, H, W, 3] renders in [0, 1] -> [B, h, w, 4] scaled posterior sample x."""
    return latents.encode_renders(self.vae, params["vae"], images, key, size=self.render_size,
                                  scaling=self.vae_scaling_factor)

  def condition(self, params, cameras: Camera) -> dict:
    """[B] cameras -> {"context": [B, 1, D] c_crossattn, "concat": [B, h, w, 4] c_concat}."""
    pose = relative_camera(cameras, self.ref_elevation_deg, self.ref_azimuth_deg,
                           self.ref_distance, self.variant)
    b = pose.shape[0]
    # float32 features: T's angles would lose two digits in a bf16 embedding's dtype.
    embedding = jnp.broadcast_to(params["clip_embedding"].astype(jnp.float32),
                                 (b,) + params["clip_embedding"].shape[1:])
    features = jnp.concatenate([embedding, pose[:, None, :]], -1)
    proj = params["cc_projection"]
    context = features @ proj["kernel"] + proj["bias"]
    ref = params["ref_latent"]
    return {"context": context, "concat": jnp.broadcast_to(ref, (b,) + ref.shape[1:])}

  def predict_noise(self, params, x_t: jax.Array, t: jax.Array, cond: dict) -> jax.Array:
    """[B, h, w, 4] x_t, [B] t -> guided ε̂; one UNet call on the batch [uncond, cond]."""
    b = x_t.shape[0]
    context, concat = cond["context"], cond["concat"].astype(x_t.dtype)
    inputs = jnp.concatenate([jnp.concatenate([x_t, jnp.zeros_like(concat)], -1),
                              jnp.concatenate([x_t, concat], -1)], 0)
    contexts = jnp.concatenate([jnp.zeros_like(context), context], 0)
    steps = jnp.tile(jnp.broadcast_to(jnp.asarray(t), (b,)), 2)
    eps_u, eps_c = jnp.split(latents.unet_noise(self.unet, params["unet"], inputs, steps,
                                                contexts), 2)
    return eps_u + self.guidance_scale * (eps_c - eps_u)


def make_zero123_prior(models: Zero123Models, ref_rgba: np.ndarray, *,
                       guidance_scale: float = 5.0, variant: str = "stable",
                       ref_elevation_deg: float = 0.0, ref_azimuth_deg: float = 0.0,
                       ref_distance: float = 3.8, render_size: int = 256):
  """Loaded Zero123 + the reference RGBA -> (Zero123Prior, params). The reference camera
  (e_ref, a_ref, d_ref) defines the frame of T (reference §9: 0°, 0°, 3.8)."""
  prior = Zero123Prior(unet=models.unet, vae=models.vae, schedule=models.schedule,
                       vae_scaling_factor=models.vae_scaling_factor,
                       guidance_scale=guidance_scale, variant=variant,
                       ref_elevation_deg=ref_elevation_deg, ref_azimuth_deg=ref_azimuth_deg,
                       ref_distance=ref_distance, render_size=render_size)
  ref = reference_conditioning(models, ref_rgba, render_size)
  params = {"unet": models.params["unet"], "vae": models.params["vae"],
            "cc_projection": models.params["cc_projection"], **ref}
  return prior, params
