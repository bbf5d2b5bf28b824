"""Parity: dc3d-jax's loaded priors against PyTorch diffusers / transformers, tiny models.

Tiny random models are built with the PyTorch classes and saved in their native formats
(diffusers folders; the Zero123 one also as an LDM `.ckpt`). The same files are loaded by
dc3d_jax.priors.loading and by the PyTorch `from_pretrained` of each component; outputs
must agree within 1e-4 max abs error:
  UNet ε̂(x_t, t, c): SD with text embeddings; Zero123 with [x_t, c_concat] (8 channels)
  and the projected image embedding; VAE posterior mean and decoder; CLIP text
  last_hidden_state; CLIP image_embeds (pooled, projected); cc_projection.
The stock Flax UNet differs from PyTorch in two constants (transformer GroupNorm eps 1e-5 vs
1e-6, tanh GELU in GEGLU; dependencies.md); the priors call it inside
`torch_semantics()`, which removes that gap, and so do these tests.
"""

import functools
import socket

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dc3d_jax.priors import stable_diffusion
from dc3d_jax.priors.loading import load_stable_diffusion, load_zero123
from dc3d_jax.priors.torch_semantics import torch_semantics
from experiments import tiny_models

TOL = 1e-4
TIMESTEPS = np.array([20, 700], np.int32)


@pytest.fixture(scope="module", autouse=True)
def no_network():
  """Connection attempts raise and are recorded; any attempt fails the module."""
  attempts = []

  def refuse(*args, **kwargs):
    attempts.append(args)
    raise ConnectionRefusedError("network access during a parity test")

  with pytest.MonkeyPatch.context() as mp:
    for owner, name in ((socket.socket, "connect"), (socket.socket, "connect_ex"),
                        (socket, "create_connection"), (socket, "getaddrinfo")):
      mp.setattr(owner, name, refuse)
    yield
  assert not attempts, f"tried to use the network: {attempts}"


@pytest.fixture(scope="module")
def paths(tmp_path_factory):
  root = tmp_path_factory.mktemp("parity")
  return {"sd": tiny_models.write_tiny_stable_diffusion(root / "sd"),
          "sd_v": tiny_models.write_tiny_stable_diffusion(root / "sd_v",
                                                          prediction_type="v_prediction"),
          "zero123": tiny_models.write_tiny_zero123(root / "zero123", fmt="diffusers"),
          "zero123_ldm": tiny_models.write_tiny_zero123(root / "zero123.ckpt",
                                                        fmt="ldm_ckpt")}


@pytest.fixture(scope="module")
def sd(paths):
  return load_stable_diffusion(str(paths["sd"]))


@pytest.fixture(scope="module", params=["zero123", "zero123_ldm"])
def zero123(paths, request):
  return load_zero123(str(paths[request.param]))


def torch_component(cls, folder):
  model = cls.from_pretrained(str(folder), low_cpu_mem_usage=False)
  return model.eval()


def inputs(seed: int, *shape):
  return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def report(name: str, ours, ref) -> float:
  ours, ref = np.asarray(ours, np.float32), np.asarray(ref, np.float32)
  assert ours.shape == ref.shape
  err = float(np.max(np.abs(ours - ref)))
  print(f"parity {name}: max abs {err:.2e} (output max {np.max(np.abs(ref)):.2f})")
  assert np.max(np.abs(ref)) > 0.1   # a vanishing output would make the check empty
  return err


@functools.partial(jax.jit, static_argnums=(0, 5))
def unet_eps(unet, params, x, t, context, stock=False):
  """ε̂ of the Flax UNet; x: [B, C, H, W] (diffusers' layout at this boundary). stock=True
  skips torch_semantics (the diffusers Flax numerics as shipped)."""
  if stock:
    return unet.apply({"params": params}, x, t, context).sample
  with torch_semantics():
    return unet.apply({"params": params}, x, t, context).sample


@functools.partial(jax.jit, static_argnums=0)
def vae_mean(vae, params, image):
  """Posterior mean; image: [B, 3, H, W] in [-1, 1] -> [B, h, w, 4] (Flax returns NHWC)."""
  return vae.apply({"params": params}, image, method=vae.encode).latent_dist.mean


@functools.partial(jax.jit, static_argnums=0)
def vae_decode(vae, params, latent):
  """latent: [B, h, w, 4] -> image [B, 3, H, W]."""
  return vae.apply({"params": params}, latent, method=vae.decode).sample


def torch_unet_eps(folder, x, context):
  import torch
  from diffusers import UNet2DConditionModel
  unet = torch_component(UNet2DConditionModel, folder)
  with torch.no_grad():
    return unet(torch.from_numpy(x), torch.from_numpy(TIMESTEPS).long(),
                encoder_hidden_states=torch.from_numpy(context)).sample.numpy()


def test_sd_unet_eps_with_text_conditioning(sd, paths):
  x, context = inputs(0, 2, 4, 8, 8), inputs(1, 2, 77, 32)
  ours = unet_eps(sd.unet, sd.params["unet"], x, jnp.asarray(TIMESTEPS), context)
  assert report("sd unet", ours, torch_unet_eps(paths["sd"] / "unet", x, context)) < TOL


def test_sd_unet_torch_semantics_close_the_flax_gap(sd, paths):
  """As shipped, diffusers' Flax UNet is ~5e-5 off PyTorch; under torch_semantics() it agrees
  to float32 round-off, so the interceptor is what makes the parity."""
  x, context = inputs(0, 2, 4, 8, 8), inputs(1, 2, 77, 32)
  ref = torch_unet_eps(paths["sd"] / "unet", x, context)
  t = jnp.asarray(TIMESTEPS)
  stock = report("sd unet, stock Flax", unet_eps(sd.unet, sd.params["unet"], x, t, context,
                                                 True), ref)
  fixed = report("sd unet, torch semantics", unet_eps(sd.unet, sd.params["unet"], x, t,
                                                      context), ref)
  assert fixed < 1e-5 < stock


def test_v_prediction_sd_eps_is_converted_from_the_pytorch_v(paths):
  """SD 2.1-768 style: the saved scheduler says v_prediction, so the UNet's output is v. The
  prior's ε must be √ᾱ·v + √(1-ᾱ)·x_t of the PyTorch UNet's v, with ᾱ from diffusers' own
  scheduler loaded from the same folder."""
  from diffusers import DDPMScheduler
  models = load_stable_diffusion(str(paths["sd_v"]))
  assert models.schedule.prediction_type == "v_prediction"
  prior = stable_diffusion.StableDiffusionPrior(unet=models.unet, vae=models.vae,
                                                schedule=models.schedule)
  x, context = inputs(0, 2, 4, 8, 8), inputs(1, 2, 77, 32)
  raw = jax.jit(lambda p, x_t, t, c: prior.raw_noise(p, x_t, t, c))
  ours = raw({"unet": models.params["unet"]}, jnp.transpose(x, (0, 2, 3, 1)),
             jnp.asarray(TIMESTEPS), context)
  v = torch_unet_eps(paths["sd_v"] / "unet", x, context)   # the UNet's raw output: v
  scheduler = DDPMScheduler.from_pretrained(str(paths["sd_v"] / "scheduler"))
  assert scheduler.config.prediction_type == "v_prediction"
  a = scheduler.alphas_cumprod.numpy()[TIMESTEPS].reshape(-1, 1, 1, 1).astype(np.float64)
  want = np.sqrt(a) * v + np.sqrt(1.0 - a) * x
  assert report("v-prediction sd ε", np.transpose(ours, (0, 3, 1, 2)), want) < TOL
  assert np.abs(want - v).max() > 0.1          # the conversion is not the identity here


def test_sd_vae_posterior_mean_and_decoder(sd, paths):
  import torch
  from diffusers import AutoencoderKL
  vae = torch_component(AutoencoderKL, paths["sd"] / "vae")
  image = np.tanh(inputs(2, 1, 3, 64, 64))   # NCHW in [-1, 1]
  latent = inputs(3, 1, 4, 8, 8)
  with torch.no_grad():
    ref_mean = vae.encode(torch.from_numpy(image)).latent_dist.mean.numpy()
    ref_image = vae.decode(torch.from_numpy(latent)).sample.numpy()
  ours_mean = jnp.transpose(vae_mean(sd.vae, sd.params["vae"], image), (0, 3, 1, 2))
  ours_image = vae_decode(sd.vae, sd.params["vae"], jnp.transpose(latent, (0, 2, 3, 1)))
  assert report("vae posterior mean", ours_mean, ref_mean) < TOL
  assert report("vae decoder", ours_image, ref_image) < TOL


def test_sd_clip_text_embeddings(sd, paths):
  import torch
  from transformers import CLIPTextModel
  text = torch_component(CLIPTextModel, paths["sd"] / "text_encoder")
  ids = sd.tokenizer(["a photo of a red toy, front view", ""], padding="max_length",
                     max_length=77, return_tensors="np").input_ids
  with torch.no_grad():
    ref = text(torch.from_numpy(ids)).last_hidden_state.numpy()
  ours = sd.text_encoder(ids, params=sd.params["text_encoder"]).last_hidden_state
  assert report("clip text", ours, ref) < TOL


def test_zero123_unet_eps_with_image_conditioning(zero123, paths):
  """8 input channels ([x_t, reference latent]); context = cc_projection([CLIP, T])."""
  x = inputs(4, 2, 8, 8, 8)
  context = inputs(5, 2, 1, 32)
  ours = unet_eps(zero123.unet, zero123.params["unet"], x, jnp.asarray(TIMESTEPS), context)
  ref = torch_unet_eps(paths["zero123"] / "unet", x, context)
  assert report(f"zero123 unet ({zero123.source.rsplit('/', 1)[-1]})", ours, ref) < TOL


def test_zero123_clip_image_embeddings(zero123, paths):
  import torch
  from transformers import CLIPVisionModelWithProjection
  encoder = torch_component(CLIPVisionModelWithProjection, paths["zero123"] / "image_encoder")
  pixels = inputs(6, 2, 3, zero123.clip_size, zero123.clip_size)   # normalised, NCHW
  with torch.no_grad():
    ref = encoder(torch.from_numpy(pixels)).image_embeds.numpy()
  pooled = zero123.image_encoder(pixels, params=zero123.params["image_encoder"]).pooler_output
  ours = pooled @ zero123.params["visual_projection"]["kernel"]
  assert report("clip image_embeds", ours, ref) < TOL


def test_zero123_cc_projection(zero123, paths):
  import safetensors.numpy
  state = safetensors.numpy.load_file(
      str(paths["zero123"] / "cc_projection" / "diffusion_pytorch_model.safetensors"))
  features = inputs(7, 2, 1, 36)
  ref = features @ state["projection.weight"].T + state["projection.bias"]
  cc = zero123.params["cc_projection"]
  assert report("cc_projection", features @ cc["kernel"] + cc["bias"], ref) < 1e-6
