"""Runs the configured stages in order with explicit hand-offs, then evaluates the result.

Work dir (DESIGN.md): <workdir>/config.json, reference/, <stage>/{checkpoints, metrics.jsonl,
samples/, turntable.mp4}, metrics.json. Re-running the same command resumes each stage from
its newest checkpoint.
"""

import dataclasses
import json
import time
from pathlib import Path

import jax
from tqdm.auto import tqdm

from dc3d_jax import cameras, reference
from dc3d_jax.core import devices, rng
from dc3d_jax.eval import report
from dc3d_jax.guidance import registry
from dc3d_jax.io import writers
from dc3d_jax.priors import oracle
from dc3d_jax.stages import coarse_nerf_run, coarse_neus_run

STAGES = {"coarse_nerf": coarse_nerf_run, "coarse_neus": coarse_neus_run}


@dataclasses.dataclass
class RunContext:
  """What every stage runner receives."""
  cfg: object
  workdir: Path
  root_key: jax.Array
  reference: dict
  ground_truth: object      # primitives.Mesh when the oracle knows the object, else None
  parallel: devices.DataParallel
  priors: registry.PriorStore
  progress: bool = True


def _config_diff(old: dict, new: dict, prefix: str = "") -> list:
  keys = sorted(set(old) | set(new))
  out = []
  for k in keys:
    a, b = old.get(k), new.get(k)
    if isinstance(a, dict) and isinstance(b, dict):
      out += _config_diff(a, b, f"{prefix}{k}.")
    elif a != b:
      out.append(f"{prefix}{k}: {a!r} -> {b!r}")
  return out


def prepare_workdir(cfg) -> Path:
  """Creates the work dir and writes config.json, warning when it differs from a previous run."""
  workdir = Path(cfg.workdir)
  path = workdir / "config.json"
  new = json.loads(cfg.to_json())
  if path.exists():
    diff = _config_diff(json.loads(path.read_text()), new)
    if diff:
      tqdm.write(f"warning: {path} differs from this run's config; resuming with the new one:\n  "
                 + "\n  ".join(diff[:20]))
  writers.save_json(path, new)
  return workdir


def _check_stages(cfg) -> None:
  unknown = [s for s in cfg.stages if s not in STAGES]
  if unknown or not cfg.stages:
    raise ValueError(f"config stages={tuple(cfg.stages)}: unknown {unknown}; available "
                     f"{sorted(STAGES)}")


def _ground_truth(cfg):
  """The oracle's mesh, when an oracle prior is configured (then the reference is its render)."""
  uses_oracle = "oracle" in (cfg.guidance.prior_2d, cfg.guidance.prior_3d)
  if uses_oracle and cfg.data.image:
    raise ValueError("the oracle prior knows only its built-in object "
                     f"('{cfg.guidance.oracle_object}'), not data.image={cfg.data.image!r}; "
                     "use a learned prior for a real image, or leave data.image empty")
  return oracle.ground_truth_mesh(cfg.guidance.oracle_object) if uses_oracle else None


def make_context(cfg, *, progress: bool = True) -> RunContext:
  _check_stages(cfg)
  registry.check_kinds(cfg.guidance)
  workdir = prepare_workdir(cfg)
  gt = _ground_truth(cfg)
  store = registry.PriorStore(cfg.guidance, cache_dir=workdir / "cache")
  return RunContext(cfg=cfg, workdir=workdir, root_key=rng.root_key(cfg.seed),
                    reference=reference.prepare(cfg, workdir, gt, store), ground_truth=gt,
                    parallel=devices.data_parallel(), priors=store, progress=progress)


def evaluate(ctx: RunContext, stage: str, render_fn) -> dict:
  """Turntable video and metrics of the final stage's result."""
  cfg, e = ctx.cfg, ctx.cfg.eval
  views = cameras.ViewSettings.from_config(cfg.data)
  frames = report.turntable(render_fn, views, e.turntable_views, e.resolution)
  writers.save_video(ctx.workdir / stage / "turntable.mp4", frames, fps=e.fps)
  ref_batch = reference.at_resolution(ctx.reference, e.resolution)
  out = report.reference_view_metrics(render_fn, ref_batch, views)
  if ctx.ground_truth is not None:
    out.update(report.novel_view_metrics(render_fn, ctx.ground_truth, views, e, e.resolution))
  return out


def run(cfg, *, progress: bool = True) -> dict:
  """Runs cfg.stages; returns (and writes to <workdir>/metrics.json) the final metrics."""
  t0 = time.perf_counter()
  ctx = make_context(cfg, progress=progress)
  handoff = None
  for stage in cfg.stages:
    handoff = STAGES[stage].run(ctx, handoff)
  results = evaluate(ctx, cfg.stages[-1], handoff.render_fn)
  results.update(stage=cfg.stages[-1], steps=int(handoff.state.step),
                 reference=ctx.reference["source"], devices=ctx.parallel.n_devices,
                 device_kind=jax.devices()[0].device_kind,
                 wall_time_s=round(time.perf_counter() - t0, 1))
  writers.save_json(ctx.workdir / "metrics.json", results)
  return results
