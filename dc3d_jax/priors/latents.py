"""The two calls every latent diffusion prior makes, in dc3d_jax's NHWC layout.

  posterior(vae, params, pixels)        [B, H, W, 3] in [-1, 1] -> the VAE's Gaussian posterior
  encode_renders(vae, params, images, key, size=, scaling=)
                                        [B, H, W, 3] renders in [0, 1] -> scaled latent sample
  unet_noise(unet, params, x, t, context)
                                        [N, h, w, c] -> [N, h, w, 4] raw UNet output

The diffusers Flax VAE encoder and UNet take NCHW; the transposes live here only. Every call
runs under torch_semantics (PyTorch's numerics), in the module's own dtype.
"""

import jax
import jax.numpy as jnp

from dc3d_jax.priors.torch_semantics import torch_semantics


def posterior(vae, vae_params, pixels: jax.Array):
  """[B, H, W, 3] pixels in [-1, 1] -> FlaxDiagonalGaussianDistribution over NHWC latents."""
  x = jnp.transpose(pixels, (0, 3, 1, 2)).astype(vae.dtype)
  with torch_semantics():
    return vae.apply({"params": vae_params}, x, method=vae.encode).latent_dist


def encode_renders(vae, vae_params, images: jax.Array, key: jax.Array, *, size: int,
                   scaling: float) -> jax.Array:
  """[B, H, W, 3] renders in [0, 1] -> [B, size/f, size/f, 4] scaling · posterior sample, in
  the renders' dtype. The resize to size² is bilinear without antialiasing, as the
  reference's F.interpolate(bilinear, align_corners=False)."""
  b, _, _, c = images.shape
  x = 2.0 * jax.image.resize(images, (b, size, size, c), "bilinear", antialias=False) - 1.0
  return (scaling * posterior(vae, vae_params, x).sample(key)).astype(images.dtype)


def unet_noise(unet, unet_params, x: jax.Array, t: jax.Array, context: jax.Array) -> jax.Array:
  """[N, h, w, c] latents, [N] t, [N, L, D] context -> [N, h, w, out] UNet output in x's
  dtype (ε for an ε-prediction model)."""
  sample = jnp.transpose(x, (0, 3, 1, 2)).astype(unet.dtype)
  with torch_semantics():
    out = unet.apply({"params": unet_params}, sample, t, context.astype(unet.dtype),
                     train=False).sample
  return jnp.transpose(out, (0, 2, 3, 1)).astype(x.dtype)
