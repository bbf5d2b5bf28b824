"""Priors loaded in bf16 (the GPU setting) against the same priors in fp32.

Tiny random SD and Zero123 models, written by experiments/tiny_models.py in the diffusers
format, are loaded twice: fp32 and bf16. One SDS step (encode, guided ε̂, w(t)(ε̂ − ε)) on the same
renders, cameras, t and keys must give a render gradient that stays float32, is finite, and
points the same way as fp32 (the step trains fp32 fields, only the prior runs in bf16).
bf16 keeps 8 mantissa bits, so ~0.4% relative error per op, and classifier-free guidance
multiplies the error of ε_c − ε_u by the guidance scale. Measured here: rel L2 0.113 and
cosine 0.9937 for SD (CFG 7.5, Perp-Neg), 0.055 and 0.9986 for Zero123 (CFG 5). The bounds
leave about a factor 2 on the error.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dc3d_jax import cameras
from dc3d_jax.guidance.sds import SDSGuidance
from dc3d_jax.priors import loading, precision, stable_diffusion, zero123
from experiments import tiny_models

RENDER = 64          # the tiny VAE downsamples by 8: 8×8 latents, the tiny UNet's sample size


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
  root = tmp_path_factory.mktemp("tiny_models")
  return {"sd": tiny_models.write_tiny_stable_diffusion(root / "sd"),
          "zero123": tiny_models.write_tiny_zero123(root / "zero123")}


def _sd_prior(folder, dtype):
  models = loading.load_stable_diffusion(str(folder), dtype=dtype)
  return stable_diffusion.make_stable_diffusion_prior(
      models, "a red toy car", guidance_scale=7.5, perp_neg=True, render_size=RENDER)


def _zero123_prior(folder, dtype):
  models = loading.load_zero123(str(folder), dtype=dtype)
  ref = np.random.default_rng(0).uniform(size=(RENDER, RENDER, 4)).astype(np.float32)
  return zero123.make_zero123_prior(models, ref, guidance_scale=5.0, render_size=RENDER)


BUILDERS = {"sd": _sd_prior, "zero123": _zero123_prior}


def _render_grad(prior, params):
  images = jnp.asarray(np.random.default_rng(1).uniform(size=(2, RENDER, RENDER, 3)),
                       jnp.float32)
  views = cameras.make_camera(jnp.array([10.0, 20.0]), jnp.array([30.0, 150.0]), 3.8, 40.0,
                              8, 8)
  guidance = SDSGuidance(prior=prior, t_min=(0.5,), t_max=(0.5,))
  loss = lambda img: guidance.loss(params, img, views, 0, jax.random.key(7))[0]
  return jax.jit(jax.grad(loss))(images)


@pytest.fixture(scope="module", params=sorted(BUILDERS))
def grads(request, folders):
  build = BUILDERS[request.param]
  out = {}
  for name, dtype in (("fp32", jnp.float32), ("bf16", jnp.bfloat16)):
    prior, params = build(folders[request.param], dtype)
    out[name] = _render_grad(prior, params)
  out["kind"] = request.param
  return out


def test_bf16_render_gradient_is_float32_and_finite(grads):
  assert grads["bf16"].dtype == jnp.float32
  assert np.isfinite(np.asarray(grads["bf16"])).all()
  assert float(jnp.abs(grads["bf16"]).max()) > 0.0


def test_bf16_render_gradient_agrees_with_fp32(grads):
  a = np.asarray(grads["fp32"], np.float64).ravel()
  b = np.asarray(grads["bf16"], np.float64).ravel()
  rel = np.linalg.norm(b - a) / np.linalg.norm(a)
  cosine = a @ b / (np.linalg.norm(a) * np.linalg.norm(b))
  print(f"{grads['kind']}: bf16 vs fp32 render gradient rel L2 {rel:.3g}, cosine {cosine:.5f}")
  assert rel < 0.25 and cosine > 0.98


def test_auto_precision_is_fp32_on_this_cpu():
  if any(d.platform in ("gpu", "tpu") for d in jax.devices()):
    pytest.skip("an accelerator is present: auto means bf16 there")
  assert precision.prior_dtype("auto") == jnp.float32
  assert precision.prior_dtype("bf16") == jnp.bfloat16
  with pytest.raises(ValueError, match="guidance.precision='fp16'"):
    precision.prior_dtype("fp16")
