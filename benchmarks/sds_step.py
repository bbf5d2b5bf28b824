"""One score-distillation step of a full-size diffusion prior: time and peak memory.

  python -m benchmarks.sds_step --out benchmarks/results/sds_step_sd_fp32_cpu.json --model sd
  python -m benchmarks.sds_step --out ... --model zero123 --precision bf16 --torch

A step is what a guidance substep costs beyond rendering: the render (B = 1) goes through the
VAE encoder with its backward pass, and the UNet runs once on the CFG batch (2B, no gradient):
  sd:      Stable Diffusion 2.1-base architecture, 512² render -> 64×64 latent, CFG
  zero123: the Zero123 / Stable-Zero123 UNet (8 input channels), 256² render -> 32×32 latent
Weights are random (the architecture decides speed). The project's own prior classes
(priors/stable_diffusion.py, priors/zero123.py) and SDSGuidance run under jax.jit. With
--torch the same step runs in PyTorch diffusers on the same device (CUDA if available),
and the JSON records the ratio.
"""

import argparse
import functools
import time

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import common
from dc3d_jax import cameras
from dc3d_jax.guidance.sds import SDSGuidance
from dc3d_jax.priors.models import NoiseScheduleConfig
from dc3d_jax.priors.stable_diffusion import StableDiffusionPrior
from dc3d_jax.priors.torch_semantics import quiet_libraries
from dc3d_jax.priors.zero123 import Zero123Prior

# Architectures (diffusers config fields): SD 2.1-base and the SD-1 UNet Zero123 fine-tunes.
SD21_UNET = dict(sample_size=64, in_channels=4, out_channels=4, layers_per_block=2,
                 block_out_channels=(320, 640, 1280, 1280), attention_head_dim=(5, 10, 20, 20),
                 cross_attention_dim=1024, use_linear_projection=True,
                 down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
                 up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3)
ZERO123_UNET = dict(SD21_UNET, sample_size=32, in_channels=8, attention_head_dim=8,
                    cross_attention_dim=768, use_linear_projection=False)
SD_VAE = dict(in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2,
              block_out_channels=(128, 256, 512, 512),
              down_block_types=("DownEncoderBlock2D",) * 4,
              up_block_types=("UpDecoderBlock2D",) * 4)
SETUPS = {"sd": dict(unet=SD21_UNET, render=512, context=(77, 1024)),
          "zero123": dict(unet=ZERO123_UNET, render=256, context=(1, 768))}


def random_params(module, dtype, seed: int = 0):
  """Random weights of `module`'s shapes, drawn in NumPy (compiling the initialiser of an
  865M-parameter UNet on CPU costs minutes and changes nothing about speed)."""
  shapes = jax.eval_shape(module.init_weights, jax.random.key(0))
  rng = np.random.default_rng(seed)
  def draw(leaf):
    scale = 1.0 / np.sqrt(max(leaf.shape[0] if leaf.ndim == 1 else np.prod(leaf.shape[:-1]), 1))
    return jnp.asarray(rng.standard_normal(leaf.shape, np.float32) * scale, dtype)
  return jax.tree_util.tree_map(draw, shapes)


def jax_step(model: str, dtype):
  """-> step() -> (loss, image grad): the jitted SDS step on fixed images and weights."""
  from diffusers import FlaxAutoencoderKL, FlaxUNet2DConditionModel
  setup = SETUPS[model]
  with quiet_libraries():
    unet = FlaxUNet2DConditionModel(**setup["unet"], dtype=dtype)
    vae = FlaxAutoencoderKL(**SD_VAE, dtype=dtype)
    params = {"unet": random_params(unet, dtype), "vae": random_params(vae, dtype, 1)}
  schedule = NoiseScheduleConfig()
  latent = setup["render"] // 8              # the SD VAE downsamples by 8
  if model == "sd":
    prior = StableDiffusionPrior(unet=unet, vae=vae, schedule=schedule, perp_neg=False,
                                 guidance_scale=100.0, render_size=setup["render"])
    params["embeddings"] = jnp.asarray(np.random.default_rng(2).standard_normal(
        (5,) + setup["context"], np.float32), dtype)
  else:
    prior = Zero123Prior(unet=unet, vae=vae, schedule=schedule, render_size=setup["render"])
    d = setup["context"][1]
    params["cc_projection"] = {"kernel": jnp.zeros((d + 4, d), dtype), "bias": jnp.zeros(d, dtype)}
    params["clip_embedding"] = jnp.zeros((1, 1, d), dtype)
    params["ref_latent"] = jnp.zeros((1, latent, latent, 4), dtype)
  guidance = SDSGuidance(prior=prior, t_min=(0.02,), t_max=(0.98,))
  camera = cameras.make_camera(jnp.zeros(1), jnp.zeros(1) + 30.0, 3.8, 20.0, 8, 8)
  # Weights are an argument, as in training (closed over, XLA would bake in GBs of constants).
  loss = lambda img, p: guidance.loss(p, img, camera, 0, jax.random.key(3))[0]
  step = jax.jit(jax.value_and_grad(loss))
  images = jnp.full((1, setup["render"], setup["render"], 3), 0.5, jnp.float32)
  return functools.partial(step, images, params)


def torch_step(model: str, dtype_name: str):
  """The same step in PyTorch diffusers: VAE encode with grad, UNet on the CFG batch."""
  import torch
  from diffusers import AutoencoderKL, UNet2DConditionModel
  device = "cuda" if torch.cuda.is_available() else "cpu"
  dtype = torch.bfloat16 if dtype_name == "bf16" else torch.float32
  setup = SETUPS[model]
  unet = UNet2DConditionModel(**setup["unet"]).to(device, dtype).eval().requires_grad_(False)
  vae = AutoencoderKL(**SD_VAE).to(device, dtype).eval().requires_grad_(False)
  images = torch.full((1, 3, setup["render"], setup["render"]), 0.5, device=device,
                      dtype=dtype, requires_grad=True)
  context = torch.randn((2,) + setup["context"], device=device, dtype=dtype)
  latent = setup["render"] // 8
  concat = torch.zeros(2, 4, latent, latent, device=device, dtype=dtype)

  def step():
    latents = vae.encode(images * 2 - 1).latent_dist.sample() * 0.18215
    t = torch.tensor([500, 500], device=device)
    noise = torch.randn_like(latents)
    with torch.no_grad():
      x_t = torch.cat([latents.detach() + noise] * 2)
      if model == "zero123":
        x_t = torch.cat([x_t, concat], 1)
      eps_u, eps_c = unet(x_t, t, context).sample.chunk(2)
      grad = 0.5 * (eps_u + 100.0 * (eps_c - eps_u) - noise)
    (latents * grad).sum().backward()
    if device == "cuda":
      torch.cuda.synchronize()
    return images.grad
  return step, device


def time_torch(model: str, precision: str, repeats: int) -> dict:
  import torch
  step, device = torch_step(model, precision)
  step()
  if device == "cuda":
    torch.cuda.reset_peak_memory_stats()
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    step()
    times.append(time.perf_counter() - t0)
  out = dict(common.summary(times), device=device)
  if device == "cuda":
    out["device_peak_bytes"] = torch.cuda.max_memory_allocated()
  return out


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--out", required=True)
  p.add_argument("--model", choices=sorted(SETUPS), default="sd")
  p.add_argument("--precision", choices=("fp32", "bf16"), default="fp32")
  p.add_argument("--repeats", type=int, default=3)
  p.add_argument("--torch", action="store_true", help="also time PyTorch diffusers")
  return p.parse_args(argv)


def main(argv=None) -> dict:
  args = parse_args(argv)
  dtype = jnp.bfloat16 if args.precision == "bf16" else jnp.float32
  record = {"benchmark": "sds_step", "model": args.model, "precision": args.precision,
            **common.environment()}
  step = jax_step(args.model, dtype)
  t0 = time.perf_counter()
  jax.block_until_ready(step())
  record["first_call_s"] = time.perf_counter() - t0
  record["jax"] = common.summary(common.wall_times(step, args.repeats))
  record.update(common.peak_memory_bytes())
  if args.torch:
    record["torch"] = time_torch(args.model, args.precision, args.repeats)
    record["torch_over_jax"] = record["torch"]["median_s"] / record["jax"]["median_s"]
  common.write(args.out, record)
  extra = (f", torch {record['torch']['median_s']:.3f} s (x{record['torch_over_jax']:.2f})"
           if args.torch else "")
  print(f"sds_step {args.model} {args.precision} on {record['device_kind']}: "
        f"jax {record['jax']['median_s']:.3f} s{extra}")
  return record


if __name__ == "__main__":
  main()
