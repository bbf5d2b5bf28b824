"""Speed and memory of one training step of a volume stage (reference view and guidance view):
the coarse NeRF (default) or, with --stage coarse_neus, the NeuS stage.

  python -m benchmarks.coarse_nerf_step --out benchmarks/out/coarse_nerf_128.json --res 128
  python -m benchmarks.coarse_nerf_step --out benchmarks/out/coarse_nerf_384.json --res 384
  python -m benchmarks.coarse_nerf_step --stage coarse_neus --out benchmarks/out/neus_256.json \
      --res 256

Builds the stage from a config (default: the reference settings, configs/dreamcraft3d.py, at
the given render resolution), runs `--warmup` real training steps so the occupancy grid and
band reflect training, then times each compiled substep (median over --repeats; the first,
compiling call is reported apart). The NeuS stage starts from its own fresh state (the sphere
SDF; the occupancy grid follows it from the first update), not from a trained NeRF. The oracle prior stands in for the diffusion models, so the
guidance time excludes any UNet. Peak memory: the device's peak bytes where the backend
reports them (GPU), and the process's peak RSS.
"""

import argparse
import importlib
import time

import jax

from benchmarks import common
from dc3d_jax import config_overrides, reference
from dc3d_jax.core import devices, rng
from dc3d_jax.guidance import registry
from dc3d_jax.priors import oracle
from dc3d_jax.stages import coarse_nerf, coarse_neus

STAGES = {m.NAME: m for m in (coarse_nerf, coarse_neus)}


def build(stage, config_module: str, res: int, overrides: dict):
  cfg = importlib.import_module(config_module).get_config()
  # The oracle stands in for the diffusion priors: this measures the stage's step itself.
  stand_in = {"guidance.prior_2d": "oracle", "guidance.prior_3d": "none"}
  config_overrides.apply_overrides(cfg, {**stand_in, **overrides})
  par = devices.data_parallel()
  guidance, prior_params = registry.build(cfg, stage.NAME)
  batch_size = devices.views_per_step(cfg.data.batch_size, par.n_devices)
  settings = stage.settings_from_config(cfg, guidance, batch_size, par.data)
  views = settings.views
  gt = oracle.ground_truth_mesh(cfg.guidance.oracle_object)
  rgba, depth = reference.render_ground_truth(gt, views, res)
  ref = reference.at_resolution({"rgba": rgba, "depth": depth}, res)
  return cfg, settings, par.replicate({"ref": ref}), par.replicate(prior_params), par


def time_substeps(stage, settings, batch, prior_params, par, warmup: int, repeats: int) -> dict:
  """First call of each substep (compile + run), `warmup` training steps, then `repeats`
  timed calls of each substep on the evolving state."""
  root = par.replicate(rng.root_key(0))
  state = par.replicate(stage.init_state(settings, rng.key_for(root, "init", 0)))
  compiled = stage.compile_steps(settings, "alternate")
  out = {}
  for parts, fn in compiled.items():
    t0 = time.perf_counter()
    state, _ = jax.block_until_ready(fn(state, batch, prior_params, root))
    out[f"{parts[0]}_first_call_s"] = time.perf_counter() - t0
  for step in range(warmup):
    state, _ = compiled[stage.parts_at(step, "alternate")](state, batch, prior_params, root)
  for parts, fn in compiled.items():
    times = []
    for _ in range(repeats):
      t0 = time.perf_counter()
      state, metrics = jax.block_until_ready(fn(state, batch, prior_params, root))
      times.append(time.perf_counter() - t0)
    metrics = jax.device_get(metrics)
    out[parts[0]] = dict(common.summary(times),
                         samples_per_ray=float(metrics[f"samples_per_ray/{parts[0]}"]),
                         kept_frac=float(metrics[f"kept_frac/{parts[0]}"]))
  return out


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--out", required=True)
  p.add_argument("--stage", default="coarse_nerf", choices=sorted(STAGES))
  p.add_argument("--config", default="configs.dreamcraft3d")
  p.add_argument("--res", type=int, default=128)
  p.add_argument("--warmup", type=int, default=20)
  p.add_argument("--repeats", type=int, default=5)
  p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                 help="config override, e.g. coarse_neus.render.samples_per_ray=24")
  return p.parse_args(argv)


def main(argv=None) -> dict:
  args = parse_args(argv)
  overrides = dict(s.split("=", 1) for s in args.set)
  stage = STAGES[args.stage]
  cfg, settings, batch, prior_params, par = build(stage, args.config, args.res, overrides)
  record = {"benchmark": f"{stage.NAME}_step", "config": args.config, "resolution": args.res,
            "overrides": overrides, "batch_size": settings.batch_size,
            "warmup_steps": args.warmup, **common.environment()}
  record.update(time_substeps(stage, settings, batch, prior_params, par, args.warmup,
                              args.repeats))
  record.update(common.peak_memory_bytes())
  common.write(args.out, record)
  print(f"{stage.NAME}_step {args.res}² on {record['device_kind']}: ref "
        f"{record['ref']['median_s']:.3f} s, guidance {record['guidance']['median_s']:.3f} s "
        f"(samples/ray {record['ref']['samples_per_ray']:.1f} / "
        f"{record['guidance']['samples_per_ray']:.1f})")
  return record


if __name__ == "__main__":
  main()
