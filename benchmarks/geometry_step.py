"""Speed and memory of one training step of the geometry (DMTet) stage.

  python -m benchmarks.geometry_step --out benchmarks/results/geometry_step_1024_cpu.json
  python -m benchmarks.geometry_step --config configs.oracle --res 128 --warmup 8 --repeats 4 \
      --out benchmarks/results/geometry_step_demo128_cpu.json

Builds the stage from a config (default: the reference settings, configs/dreamcraft3d.py:
128 tet grid, 1024² renders, both substeps every step) at the given render resolution. The
state is the stage's own init_state: NeuS's initial radius-0.5 sphere on its fitted box (what
a warm start from an untrained NeuS gives), with a fresh texture field. The oracle prior stands
in for the diffusion models, so the guidance time excludes any UNet (it includes the oracle's
ground-truth render at guidance.oracle_resolution).

A step extracts the mesh (marching tets), renders the reference view and one random view with
the rasterizer, and backpropagates through both to the SDF, deformation, hash grid and colour
MLP. The two compiled variants are timed: the RGB step (step % n_rgb == 0: reference losses,
the 2D prior on RGB) and the normal step (no reference-view render, the 2D prior on the normal
map). Each variant's first (compiling) call is reported apart, then `--warmup` steps in the
stage's order, then the median of `--repeats` calls of each variant, in wall seconds and
process CPU seconds per call (user + system, all threads: on a shared machine the steadier
figure). Peak memory: the device's where reported (GPU), and the process's peak RSS.
"""

import argparse
import resource
import time

import jax

from benchmarks import coarse_nerf_step, common
from dc3d_jax.core import rng
from dc3d_jax.stages import geometry


def _cpu_seconds() -> float:
  usage = resource.getrusage(resource.RUSAGE_SELF)
  return usage.ru_utime + usage.ru_stime


def _timed(fn, state, batch, prior_params, root):
  wall, cpu = time.perf_counter(), _cpu_seconds()
  state, metrics = jax.block_until_ready(fn(state, batch, prior_params, root))
  return state, metrics, time.perf_counter() - wall, _cpu_seconds() - cpu


def time_variants(settings, batch, prior_params, par, warmup: int, repeats: int,
                  variants=(geometry.RGB, geometry.NORMAL)) -> dict:
  """First call of each variant, `warmup` steps, then `repeats` timed calls of each."""
  pattern = "accumulate"
  root = par.replicate(rng.root_key(0))
  state = par.replicate(geometry.init_state(settings, rng.key_for(root, "init", 0),
                                            jax.device_get(batch["constants"])))
  compiled = {parts: fn for parts, fn in geometry.compile_steps(settings, pattern).items()
              if parts[-1] in variants}
  out = {}
  for parts, fn in compiled.items():
    state, _, wall, _ = _timed(fn, state, batch, prior_params, root)
    out[f"{parts[-1]}_first_call_s"] = wall
  for step in range(warmup):
    parts = geometry.parts_at(step, pattern, settings)
    if parts in compiled:
      state, _ = compiled[parts](state, batch, prior_params, root)
  for parts, fn in compiled.items():
    walls, cpus = [], []
    for _ in range(repeats):
      state, metrics, wall, cpu = _timed(fn, state, batch, prior_params, root)
      walls.append(wall)
      cpus.append(cpu)
    m = jax.device_get(metrics)
    out[parts[-1]] = dict(common.summary(walls), cpu_s_per_call=sorted(cpus)[len(cpus) // 2],
                          mesh_faces=int(m["mesh_faces"]),
                          mesh_overflow=int(m["mesh_overflow"]),
                          raster_overflow=int(m["raster_overflow/guidance"]))
  return out


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--out", required=True)
  p.add_argument("--config", default="configs.dreamcraft3d")
  p.add_argument("--res", type=int, default=1024)
  p.add_argument("--warmup", type=int, default=0)
  p.add_argument("--repeats", type=int, default=1)
  p.add_argument("--variants", default="rgb,normal",
                 help="which compiled steps to time (warm-up steps of the others are skipped)")
  p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                 help="config override, e.g. geometry.tets.resolution=64")
  return p.parse_args(argv)


def main(argv=None) -> dict:
  args = parse_args(argv)
  overrides = dict(s.split("=", 1) for s in args.set)
  cfg, settings, batch, prior_params, par = coarse_nerf_step.build(geometry, args.config,
                                                                   args.res, overrides)
  batch = {**batch, "constants": par.replicate(geometry.constants(settings))}
  record = {"benchmark": "geometry_step", "config": args.config, "resolution": args.res,
            "tet_resolution": settings.tet_resolution, "overrides": overrides,
            "batch_size": settings.batch_size, "warmup_steps": args.warmup,
            "rasterizer": settings.render.backend, **common.environment()}
  variants = tuple(args.variants.split(","))
  record.update(time_variants(settings, batch, prior_params, par, args.warmup, args.repeats,
                              variants))
  record.update(common.peak_memory_bytes())
  common.write(args.out, record)
  steps = ", ".join(f"{v} step {record[v]['median_s']:.3f} s (cpu "
                    f"{record[v]['cpu_s_per_call']:.3f}, {record[v]['mesh_faces']:,} faces)"
                    for v in variants)
  print(f"geometry_step {args.res}² (tets {settings.tet_resolution}) on "
        f"{record['device_kind']}: {steps}")
  return record


if __name__ == "__main__":
  main()
