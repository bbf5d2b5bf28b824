"""One BSD step and one DreamBooth step of the texture stage on the full-size SD 2.1-base UNet.

  python -m benchmarks.bsd_step --out benchmarks/results/bsd_step_lora_bsd_cpu.json \
      --mode lora --step bsd
  python -m benchmarks.bsd_step --out ... --mode full --step dreambooth --precision bf16 --torch

Steps (guidance/bsd.py, what the stage runs beyond rendering; B = 1; random weights):
  bsd         a 1024² render (the stand-in texture input) -> bilinear 512² -> VAE encode with
              its backward pass; g from φ_DB (CFG 2: UNet on 2 rows) and φ_est (1 row), no
              gradient; the stop-gradient-target loss backpropagated to the render; then one
              ε-MSE + AdamW update of φ_est (UNet forward and backward on 1 row).
  dreambooth  a cached 512² augmentation re-encoded (no gradient); one ε-MSE + AdamW update of
              φ_DB.
  augment     12 DPM-Solver++ steps (t' = 500) with CFG 7.5 (UNet on 2 rows each) from φ_DB and
              a VAE decode (once every 25 steps of a DreamBooth phase).
Modes: "full" (two full trainable UNets: float32 masters + AdamW moments) and "lora"
(rank-4 adapters on the attention projections over one frozen base). The JSON holds the
expected bytes of the resident state, the compiled step's memory analysis, host peak RSS
and, on a GPU, device peak bytes; with --torch the same step in PyTorch diffusers (fp32
weights, bf16 autocast for --precision bf16, gradient checkpointing as the reference).
"""

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import common
from benchmarks.sds_step import SD21_UNET, SD_VAE, random_params
from dc3d_jax.guidance import bsd, bsd_cache
from dc3d_jax.priors.denoiser_base import LatentUNet
from dc3d_jax.priors.torch_semantics import quiet_libraries
from dc3d_jax.priors.trainable import JaxTrainablePrior, TrainedCopy

# The SD 2.1-base architecture (a test swaps in a tiny one).
# render: the rendered view; vae_size: what the VAE sees (512² -> 64x64 latents).
SETUP = dict(unet=SD21_UNET, vae=SD_VAE, render=1024, vae_size=512, context=(77, 1024))
STEP_AT = {"bsd": 201, "dreambooth": 1, "augment": 0}   # a step of the cycle that runs it


def build_model(args):
  """-> (BSD on an SD 2.1-base architecture, compute dtype)."""
  from diffusers import FlaxAutoencoderKL, FlaxUNet2DConditionModel
  dtype = jnp.bfloat16 if args.precision == "bf16" else jnp.float32
  with quiet_libraries():
    unet = FlaxUNet2DConditionModel(**SETUP["unet"], dtype=dtype,
                                    use_memory_efficient_attention=args.mem_efficient_attention)
    vae = FlaxAutoencoderKL(**SETUP["vae"], dtype=dtype)
  base = LatentUNet(unet=unet, vae=vae, render_size=SETUP["vae_size"])
  prior = JaxTrainablePrior(base=base, mode=args.mode, lr=1e-5 if args.mode == "full" else 1e-4,
                            lora_rank=args.lora_rank, lora_alpha=float(args.lora_rank),
                            remat=args.remat)
  return bsd.BSD(base=base, dreambooth=prior, estimator=prior), dtype


def zero_params(module, dtype, seed: int = 0):
  """Zeros of `module`'s parameter shapes (under jax.eval_shape: shapes only, no memory)."""
  shapes = jax.eval_shape(module.init_weights, jax.random.key(seed))
  return jax.tree_util.tree_map(lambda x: jnp.zeros(x.shape, dtype), shapes)


def build_arrays(args, model: bsd.BSD, dtype, draw=random_params):
  """-> (base_params, vae_params, state) with weights from draw(module, dtype, seed). In "full"
  mode only what the step reads is held unless --full-state (all of it does not fit a 24 GB
  host: `expected_bytes`)."""
  with quiet_libraries():
    vae_params = draw(model.base.vae, dtype, 1)
    master = draw(model.base.unet, jnp.float32, 0)     # masters start from fp32 weights
  size = SETUP["vae_size"]
  if args.mode == "lora" or args.full_state:
    state = model.init_state(master, jax.random.key(0), (size, size))
    base_params = jax.tree_util.tree_map(lambda w: jnp.array(w, dtype, copy=True), master)
  else:
    state, base_params = full_mode_state(model.dreambooth, master, args.step, dtype)
  cache = bsd_cache.push(bsd_cache.empty_cache(10, size, size), jnp.full((size, size, 3), 0.5))
  return base_params, vae_params, state.replace(cache=cache,
                                                augmentations=jnp.ones((), jnp.int32))


def full_mode_state(prior, master, which: str, dtype):
  """The "full"-mode BSDState with only the parts `which` reads: φ_DB (with its AdamW moments
  for the dreambooth step), φ_est with moments for the bsd step, the frozen base only for
  augment. The master weights are used in place (no copy) to save host memory."""
  def copy(with_moments, net):
    params = {"net": net, "camera": {}}
    opt_state = prior.optimizer().init(params) if with_moments else ()
    return TrainedCopy(params=params, opt_state=opt_state, updates=jnp.zeros((), jnp.int32),
                       skipped=jnp.zeros((), jnp.int32))
  empty = TrainedCopy(params={}, opt_state=(), updates=jnp.zeros((), jnp.int32),
                      skipped=jnp.zeros((), jnp.int32))
  db = copy(which == "dreambooth", master)
  # A donated state cannot hold one buffer twice: φ_est gets its own copy.
  est = copy(True, jax.tree_util.tree_map(jnp.copy, master)) if which == "bsd" else empty
  base = ({} if which != "augment" else   # a copy: the base is not donated, φ_DB's masters are
          jax.tree_util.tree_map(lambda w: jnp.array(w, dtype, copy=True), master))
  state = bsd.BSDState(dreambooth=db, estimator=est, cache=bsd_cache.empty_cache(1, 1, 1),
                       augmentations=jnp.ones((), jnp.int32))
  return state, base


def step_fn(model: bsd.BSD, which: str):
  """The jitted step (state donated): (state, base, vae, render, conds, key) -> (state, out)."""
  at = STEP_AT[which]

  def bsd_step(state, base, vae, render, conds, key):
    cond, uncond, cond_vi = conds

    def texture_loss(img):
      z = model.base.encode(vae, img, jax.random.fold_in(key, 1))
      g, _ = model.bsd_gradient(state, base, z, cond, uncond, cond_vi, key, at)
      return 0.01 * bsd.stop_gradient_target_loss(z, g), z
    (_, z), render_grad = jax.value_and_grad(texture_loss, has_aux=True)(render)
    state, _ = model.estimator_update(state, base, z, cond_vi, jax.random.fold_in(key, 2))
    return state, render_grad

  def dreambooth_step(state, base, vae, render, conds, key):
    return model.dreambooth_update(state, base, vae, conds[0], key)[0], render[0, 0, 0]

  def augment_step(state, base, vae, render, conds, key):
    z = model.base.encode(vae, render, key)
    return model.augment(state, base, vae, z, conds[0], conds[1], key, at)
  fn = {"bsd": bsd_step, "dreambooth": dreambooth_step, "augment": augment_step}[which]
  return jax.jit(fn, donate_argnums=(0,))


def expected_bytes(model: bsd.BSD, mode: str, precision: str) -> dict:
  """Bytes the texture stage holds for the two trained copies, the frozen base and the VAE
  (from the shapes; nothing allocated): float32 masters and AdamW's two float32 moments per
  trained parameter; the base and the VAE in the compute dtype."""
  unet, vae = model.base.unet, model.base.vae
  shapes = jax.eval_shape(unet.init_weights, jax.random.key(0))
  count = lambda tree: int(sum(np.prod(x.shape) for x in jax.tree_util.tree_leaves(tree)))
  n_unet = count(shapes)
  n_vae = count(jax.eval_shape(vae.init_weights, jax.random.key(0)))
  if mode == "full":
    n_trained = n_unet
  else:
    from dc3d_jax.priors import lora
    n_trained = count(jax.eval_shape(lambda p: lora.init(p, jax.random.key(0), 4), shapes))
  item = 2 if precision == "bf16" else 4
  out = {"unet_parameters": n_unet, "trained_parameters_per_copy": n_trained,
         "trained_copies": 2 * 3 * 4 * n_trained, "frozen_base": item * n_unet,
         "vae": item * n_vae}
  out["total"] = out["trained_copies"] + out["frozen_base"] + out["vae"]
  return out


def resident_bytes(tree) -> int:
  return int(sum(np.prod(x.shape) * x.dtype.itemsize for x in jax.tree_util.tree_leaves(tree)))


def host_memory_short(record: dict):
  """On a CPU backend: why the step cannot run here (resident + compiled temporaries above
  the host's available memory), or None."""
  if jax.devices()[0].platform != "cpu" or "compiled" not in record:
    return None
  try:
    with open("/proc/meminfo") as f:
      info = {line.split(":")[0]: int(line.split()[1]) * 1024 for line in f}
  except OSError:
    return None
  need = record["compiled"]["temp_size_in_bytes"] + record["compiled"]["argument_size_in_bytes"]
  # Margin: XLA's own memory, allocator slack and the NumPy draws of the weights.
  if need + 3 * 2**30 < 0.85 * info.get("MemAvailable", 2 * need):
    return None
  return (f"needs {need / 2**30:.1f} GiB (arguments + compiled temporaries), host has "
          f"{info['MemAvailable'] / 2**30:.1f} GiB available")


def inputs(seed: int = 2):
  """The 1024² render and the three text embeddings [1, 77, 1024] (c_vd, u, c_vi)."""
  rng = np.random.default_rng(seed)
  render = jnp.full((1, SETUP["render"], SETUP["render"], 3), 0.5, jnp.float32)
  conds = tuple(jnp.asarray(rng.standard_normal((1,) + SETUP["context"]), jnp.float32)
                for _ in range(3))
  return render, conds


def time_jax(args, out_path=None) -> dict:
  """Compiles from shapes alone, checks that the step fits this host, then allocates and runs.
  The compile-time record is written to out_path first, so it survives a killed run."""
  model, dtype = build_model(args)
  shapes = jax.eval_shape(lambda: build_arrays(args, model, dtype, draw=zero_params))
  record = {"expected_bytes": expected_bytes(model, args.mode, args.precision),
            "resident_bytes": resident_bytes(shapes)}
  render, conds = inputs()
  t0 = time.perf_counter()
  compiled = step_fn(model, args.step).lower(*shapes[2:], *shapes[:2], render, conds,
                                             jax.random.key(3)).compile()
  record["compile_s"] = time.perf_counter() - t0
  mem = compiled.memory_analysis()
  if mem is not None:
    record["compiled"] = {k: int(getattr(mem, k)) for k in (
        "temp_size_in_bytes", "argument_size_in_bytes", "output_size_in_bytes")}
  short = None if args.compile_only else host_memory_short(record)
  if args.compile_only or short:
    return dict(record, not_run=short) if short else record
  if out_path:
    common.write(out_path, dict(record, not_run="killed before it finished (out of memory?)"))
  base, vae, state = build_arrays(args, model, dtype)
  times = []
  for i in range(args.repeats + 1):        # the first call is a warm-up
    t0 = time.perf_counter()
    state, out = compiled(state, base, vae, render, conds, jax.random.key(4 + i))
    jax.block_until_ready((state, out))
    times.append(time.perf_counter() - t0)
  record["warmup_call_s"] = times[0]
  record["jax"] = common.summary(times[1:])
  record.update(common.peak_memory_bytes())
  return record


def torch_step(args):
  """The same step in PyTorch diffusers -> (step(), device)."""
  from benchmarks import bsd_step_torch
  return bsd_step_torch.make_step(args.mode, args.step, args.precision, args.lora_rank, SETUP)


def time_torch(args) -> dict:
  import torch
  step, device = torch_step(args)
  step()
  if device == "cuda":
    torch.cuda.reset_peak_memory_stats()
  times = []
  for _ in range(args.repeats):
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
  p.add_argument("--mode", choices=("full", "lora"), default="lora")
  p.add_argument("--step", choices=sorted(STEP_AT), default="bsd")
  p.add_argument("--precision", choices=("fp32", "bf16"), default="fp32")
  p.add_argument("--repeats", type=int, default=2)
  p.add_argument("--lora-rank", type=int, default=4)
  p.add_argument("--remat", action="store_true", help="per-block gradient checkpointing")
  p.add_argument("--mem-efficient-attention", type=int, choices=(0, 1), default=1,
                 help="diffusers' chunked Flax attention (default on)")
  p.add_argument("--full-state", action="store_true",
                 help="full mode: hold the whole stage state (both copies, moments, base)")
  p.add_argument("--compile-only", action="store_true",
                 help="record the compiled memory analysis, do not run")
  p.add_argument("--torch", action="store_true", help="also time PyTorch diffusers")
  return p.parse_args(argv)


def main(argv=None) -> dict:
  args = parse_args(argv)
  record = {"benchmark": "bsd_step", "mode": args.mode, "step": args.step,
            "precision": args.precision, "remat": args.remat, "lora_rank": args.lora_rank,
            "full_state": args.mode == "lora" or args.full_state,
            "mem_efficient_attention": bool(args.mem_efficient_attention),
            "render": SETUP["render"], **common.environment()}
  record.update(time_jax(args, out_path=args.out))
  if args.torch and "jax" in record:
    record["torch"] = time_torch(args)
    record["torch_over_jax"] = record["torch"]["median_s"] / record["jax"]["median_s"]
  common.write(args.out, record)
  temp = record.get("compiled", {}).get("temp_size_in_bytes", 0) / 2**30
  summary = (f"jax {record['jax']['median_s']:.3f} s" if "jax" in record else
             record.get("not_run", f"compiled temporaries {temp:.2f} GiB"))
  print(f"bsd_step {args.mode} {args.step} {args.precision} on {record['device_kind']}: "
        f"{summary}")
  return record


if __name__ == "__main__":
  main()
