"""Zero123 guidance prior (priors/zero123.py) on tiny random parts, against PyTorch.

Tiny PyTorch parts (experiments/tiny_models: diffusers 8-channel UNet and VAE, a transformers
CLIP vision tower with projection, a Linear cc_projection) are converted to Flax by the
library's builder and assembled into a Zero123Models. The PyTorch side recomputes everything itself from the same reference RGBA:
white compositing, area resize, bicubic (align_corners) resize to the CLIP size, CLIP image
embedding, VAE posterior mode, cc_projection of [embedding, T], UNet on cat([x_t, c_concat])
with zeros for the unconditional half, CFG.
"""

import dataclasses
import functools

import diffusers
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn.functional as F
import transformers

from dc3d_jax import cameras as cams
from dc3d_jax.guidance import sds
from dc3d_jax.priors import loading, zero123
from dc3d_jax.priors.models import Zero123Models
from dc3d_jax.priors.torch_semantics import torch_semantics
from experiments import tiny_models

diffusers.utils.logging.set_verbosity_error()
transformers.logging.set_verbosity_error()

RENDER = 48                 # render_size: 6² latents with the tiny VAE (F = 8)
F_VAE = 8                   # the tiny VAE's downsampling (4 blocks)
CLIP = tiny_models.TINY_CLIP_VISION["image_size"]
CONTEXT = tiny_models.TINY_UNET["cross_attention_dim"]   # = CLIP projection_dim
MEAN, STD = Zero123Models.clip_mean, Zero123Models.clip_std


def _torch_parts() -> dict:
  """The tiny Zero123's PyTorch modules (experiments/tiny_models): unet, vae, clip, cc."""
  m = tiny_models.tiny_zero123_modules(seed=0)
  return dict(unet=m["unet"], vae=m["vae"], clip=m["image_encoder"], cc=m["cc_projection"])


def _to_flax(parts: dict) -> Zero123Models:
  """The library's own builder (what loading a file runs after reading it)."""
  modules = dict(unet=parts["unet"], vae=parts["vae"], image_encoder=parts["clip"],
                 cc_projection=parts["cc"])
  return loading.build_zero123(tiny_models.zero123_source(modules), jnp.float32, "tiny")


def _reference_rgba() -> np.ndarray:
  """[96, 96, 4] random colours inside a disc, alpha soft at its rim (96 -> 48: 2×2 boxes)."""
  rng = np.random.default_rng(0)
  yy, xx = np.mgrid[:96, :96]
  alpha = np.clip(30.0 - np.hypot(yy - 47.5, xx - 47.5), 0.0, 1.0)[..., None]
  return np.concatenate([rng.uniform(size=(96, 96, 3)), alpha], -1).astype(np.float32)


@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread():
  """The tiny PyTorch models run several times faster on one thread next to XLA's pool."""
  threads = torch.get_num_threads()
  torch.set_num_threads(1)
  yield
  torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def setup():
  parts = _torch_parts()
  models = _to_flax(parts)
  rgba = _reference_rgba()
  prior, params = zero123.make_zero123_prior(models, rgba, render_size=RENDER)

  @jax.jit
  def guided(params, scale, camera, x_t, t):
    """ε̂ at a traced CFG scale: one compiled program for every scale the tests use."""
    scaled = dataclasses.replace(prior, guidance_scale=scale)
    return scaled.predict_noise(params, x_t, t, scaled.condition(params, camera))

  return dict(parts=parts, models=models, rgba=rgba, prior=prior, params=params, guided=guided)


def _views(n: int = 3):
  """The reference view and two others (e, a in degrees), 16² renders."""
  return cams.make_camera(jnp.array([0.0, 30.0, -10.0][:n]), jnp.array([0.0, 90.0, -135.0][:n]),
                          3.8, 20.0, 16, 16)


def _inputs(n: int = 3):
  rng = np.random.default_rng(1)
  x_t = rng.normal(size=(n, RENDER // F_VAE, RENDER // F_VAE, 4)).astype(np.float32)
  return x_t, np.array([20, 500, 980][:n])


# ---- relative pose -------------------------------------------------------------------------

def _pose(e, a, d, **ref):
  camera = cams.make_camera(jnp.array([e]), jnp.array([a]), jnp.array([d]), 20.0, 8, 8)
  return np.asarray(zero123.relative_camera(camera, **ref))[0]


def test_relative_camera_stable_zero123():
  ref = dict(ref_elevation_deg=0.0, ref_azimuth_deg=0.0, ref_distance=3.8, variant="stable")
  np.testing.assert_allclose(_pose(0, 0, 3.8, **ref), [0, 0, 1, np.pi / 2], atol=1e-6)
  np.testing.assert_allclose(_pose(30, 90, 3.8, **ref), [-np.pi / 6, 1, 0, np.pi / 2],
                             atol=1e-6)
  # θ = 90 − e: (60 − 80)° and rad(θ_ref) = rad(80); the azimuth offset is a − a_ref = 90°.
  off = dict(ref, ref_elevation_deg=10.0, ref_azimuth_deg=20.0)
  np.testing.assert_allclose(_pose(30, 110, 2.0, **off),
                             [np.deg2rad(-20), 1, 0, np.deg2rad(80)], atol=1e-6)
  np.testing.assert_allclose(_pose(-10, -135, 3.8, **ref),
                             [np.deg2rad(10), -np.sqrt(.5), -np.sqrt(.5), np.pi / 2], atol=1e-6)


def test_relative_camera_zero123_xl_uses_distance_offset():
  ref = dict(ref_elevation_deg=0.0, ref_azimuth_deg=0.0, ref_distance=3.8, variant="xl")
  np.testing.assert_allclose(_pose(0, 0, 3.8, **ref), [0, 0, 1, 0], atol=1e-6)
  np.testing.assert_allclose(_pose(30, 90, 3.0, **ref), [-np.pi / 6, 1, 0, -0.8], atol=1e-6)
  with pytest.raises(ValueError, match="variant"):
    _pose(0, 0, 3.8, **dict(ref, variant="zero123"))


# ---- preprocessing ---------------------------------------------------------------------------

@pytest.mark.parametrize("n_in, n_out", [(48, 32), (256, 224), (20, 33)])
def test_bicubic_resize_matches_torch_align_corners(n_in, n_out):
  """LDM's CLIP embedder resizes with kornia = F.interpolate(bicubic, align_corners=True)."""
  x = np.random.default_rng(2).uniform(-1, 1, size=(1, n_in, n_in, 3)).astype(np.float32)
  got = np.asarray(zero123.resize_bicubic(jnp.asarray(x), n_out))
  want = F.interpolate(torch.from_numpy(x).permute(0, 3, 1, 2), (n_out, n_out),
                       mode="bicubic", align_corners=True).permute(0, 2, 3, 1).numpy()
  np.testing.assert_allclose(got, want, atol=1e-5)


# ---- the PyTorch composition -----------------------------------------------------------------

def _torch_reference_image(rgba: np.ndarray) -> torch.Tensor:
  """[H, W, 4] -> [1, 3, RENDER, RENDER] on white, area-resized, in [-1, 1]."""
  img = torch.from_numpy(rgba).permute(2, 0, 1)[None]
  rgb = img[:, :3] * img[:, 3:] + (1.0 - img[:, 3:])
  return 2.0 * F.interpolate(rgb, (RENDER, RENDER), mode="area") - 1.0


def _torch_pose(camera) -> torch.Tensor:
  e, a = (torch.from_numpy(np.asarray(v, np.float64)) for v in
          (camera.elevation_deg, camera.azimuth_deg))
  pose = [torch.deg2rad((90 - e) - 90.0), torch.sin(torch.deg2rad(a)),
          torch.cos(torch.deg2rad(a)), torch.full_like(e, np.pi / 2)]
  return torch.stack(pose, -1).float()


@torch.no_grad()
def _torch_reference_conditioning(parts, rgba):
  """-> CLIP image embedding [1, 1, D] and unscaled VAE mode latent [1, 4, h, w]."""
  image = _torch_reference_image(rgba)
  clip_in = (F.interpolate(image, (CLIP, CLIP), mode="bicubic", align_corners=True) + 1) / 2
  clip_in = (clip_in - torch.tensor(MEAN)[:, None, None]) / torch.tensor(STD)[:, None, None]
  embedding = parts["clip"](pixel_values=clip_in).image_embeds[:, None]
  return embedding, parts["vae"].encode(image).latent_dist.mode()


@torch.no_grad()
def _torch_guided_noise(parts, rgba, camera, x_t, t, scale):
  embedding, ref_latent = _torch_reference_conditioning(parts, rgba)
  b = x_t.shape[0]
  context = parts["cc"](torch.cat([embedding.repeat(b, 1, 1), _torch_pose(camera)[:, None]], -1))
  concat = ref_latent.repeat(b, 1, 1, 1)
  x = torch.from_numpy(x_t).permute(0, 3, 1, 2)
  sample = torch.cat([torch.cat([x, torch.zeros_like(concat)], 1), torch.cat([x, concat], 1)])
  steps = torch.from_numpy(np.concatenate([t, t]))
  eps = parts["unet"](sample, steps, torch.cat([torch.zeros_like(context), context])).sample
  eps_u, eps_c = eps.chunk(2)
  return (eps_u + scale * (eps_c - eps_u)).permute(0, 2, 3, 1).numpy()


def _flax_guided_noise(setup, scale, camera, x_t, t):
  return np.asarray(setup["guided"](setup["params"], scale, camera, jnp.asarray(x_t),
                                    jnp.asarray(t)))


def test_guided_noise_matches_pytorch_composition(setup):
  """The issue's acceptance test: same x_t, t, cameras and reference image, CFG 5."""
  camera, (x_t, t) = _views(), _inputs()
  got = _flax_guided_noise(setup, 5.0, camera, x_t, t)
  want = _torch_guided_noise(setup["parts"], setup["rgba"], camera, x_t, t, 5.0)
  err = np.abs(got - want).max()
  print(f"zero123 parity max|Δε̂| against the stock PyTorch parts: {err:.2e}")
  assert err < 1e-4
  assert np.abs(got).max() > 0.1  # a real prediction, not a degenerate zero


def test_reference_conditioning_matches_pytorch(setup):
  ref = zero123.reference_conditioning(setup["models"], setup["rgba"], RENDER)
  embedding, latent = _torch_reference_conditioning(setup["parts"], setup["rgba"])
  assert ref["clip_embedding"].shape == (1, 1, CONTEXT)
  assert ref["ref_latent"].shape == (1, RENDER // F_VAE, RENDER // F_VAE, 4)
  np.testing.assert_allclose(np.asarray(ref["clip_embedding"]), embedding.numpy(), atol=1e-5)
  np.testing.assert_allclose(np.asarray(ref["ref_latent"]),
                             latent.permute(0, 2, 3, 1).numpy(), atol=1e-5)
  with pytest.raises(ValueError, match="RGBA"):
    zero123.reference_conditioning(setup["models"], setup["rgba"][..., :3], RENDER)


# ---- encode and SDS --------------------------------------------------------------------------

def test_encode_is_the_scaled_posterior_sample_and_differentiable(setup):
  prior, params, vae = setup["prior"], setup["params"], setup["parts"]["vae"]
  images = np.random.default_rng(3).uniform(size=(2, 64, 64, 3)).astype(np.float32)
  key = jax.random.key(4)

  @jax.jit
  def encode_and_grad(images):
    """x and ∂Σx²/∂images in one program."""
    x, pullback = jax.vjp(lambda im: prior.encode(params, im, key), images)
    return x, pullback(2.0 * x)[0]

  x, grad = encode_and_grad(jnp.asarray(images))
  assert x.shape == (2, RENDER // F_VAE, RENDER // F_VAE, 4)
  with torch.no_grad():
    small = F.interpolate(torch.from_numpy(images).permute(0, 3, 1, 2), (RENDER, RENDER),
                          mode="bilinear", align_corners=False)
    dist = vae.encode(2 * small - 1).latent_dist
  noise = np.asarray(jax.random.normal(key, x.shape))          # Flax's posterior draw
  want = 0.18215 * (dist.mean.permute(0, 2, 3, 1).numpy()
                    + dist.std.permute(0, 2, 3, 1).numpy() * noise)
  np.testing.assert_allclose(np.asarray(x), want, atol=1e-5)
  assert np.all(np.isfinite(grad)) and np.abs(grad).max() > 0


def test_sds_loss_under_jit_has_finite_nonzero_gradients(setup):
  guidance = sds.SDSGuidance(prior=setup["prior"], t_min=0.2, t_max=0.5)
  params, camera = setup["params"], _views(2)
  images = jnp.asarray(np.random.default_rng(5).uniform(size=(2, 32, 32, 3)), jnp.float32)

  @jax.jit
  def loss_and_grad(imgs):
    fn = lambda im: guidance.loss(params, im, camera, 0, jax.random.key(6))
    return jax.value_and_grad(fn, has_aux=True)(imgs)

  (loss, metrics), grad = loss_and_grad(images)
  assert np.isfinite(float(loss)) and float(loss) > 0
  assert 200 <= float(metrics["t"]) <= 500
  assert np.all(np.isfinite(grad)) and np.abs(grad).max() > 0


# ---- the unconditional branch ------------------------------------------------------------------

@functools.partial(jax.jit, static_argnums=0)
def _unet_on_both_branches(unet, params, x_t, t, cond):
  """The UNet called directly on [x_t, 0] with zero context and on [x_t, c_concat] with the
  projected context, as one batch: the references for CFG scales 0 and 1."""
  zeros = jax.tree_util.tree_map(jnp.zeros_like, cond)
  both = jax.tree_util.tree_map(lambda u, c: jnp.concatenate([u, c]), zeros, cond)
  sample = jnp.concatenate([jnp.concatenate([x_t, x_t]), both["concat"]], -1)
  with torch_semantics():
    eps = unet.apply({"params": params["unet"]}, jnp.transpose(sample, (0, 3, 1, 2)),
                     jnp.concatenate([t, t]), both["context"], train=False).sample
  return jnp.split(jnp.transpose(eps, (0, 2, 3, 1)), 2)


def test_unconditional_branch_is_zero_embedding_and_zero_concat(setup):
  prior, params, camera = setup["prior"], setup["params"], _views()
  x_t, t = map(jnp.asarray, _inputs())
  cond = prior.condition(params, camera)
  unconditional, conditional = map(np.asarray, _unet_on_both_branches(
      prior.unet, params, x_t, t, cond))
  np.testing.assert_allclose(_flax_guided_noise(setup, 1.0, camera, x_t, t), conditional,
                             atol=1e-5)
  np.testing.assert_allclose(_flax_guided_noise(setup, 0.0, camera, x_t, t), unconditional,
                             atol=1e-5)
  assert np.abs(conditional - unconditional).max() > 1e-2   # the two branches differ
