"""Guided against unguided on ground-truth objects: the method measured where it can be.

  python -m experiments.compare_guidance --config=configs/demo.py:nerf \
      --objects=cow,bunny00,duck --seeds=0,1 --out=benchmarks/results/heldout_guidance_mirrorref.json

For every object and seed it runs the config twice through `pipeline.run`, with
`data.object=<object>` and `seed=<seed>`:
  guided     the config as it is (e.g. the testbed prior in the 3D slot);
  unguided   the same with every stage's sds_2d / sds_3d weight 0 and both prior slots "none"
             (reference-view losses only, no prior loaded: the same seeds, steps, views and
             schedules, so the difference is the guidance).
Each run has its own work dir under --root (<object>-s<seed>-<arm>); re-running the command
resumes unfinished runs and skips finished ones, so a long sweep can be stopped and continued.
--set KEY=VALUE (repeatable) overrides config keys in both arms. --arms=unguided runs one arm
only (it needs no prior weights, so it can run while the prior still trains); the table then
has that arm alone, and the full command later skips its finished runs.

Writes --out (JSON): per run the headline metrics (novel-view PSNR, SSIM, LPIPS and mask IoU,
Chamfer, F-score at 2% and 5%, volume IoU, reference-view PSNR, wall time) and per arm their mean ± std over
runs, and prints the table as Markdown (the form docs/RESULTS.md keeps). Beside it, --out with .png:
per object and seed, the reference, then the unguided and the guided run's last training
samples (RGB at azimuths 0°, 90°, 180°, 270°), to show what the guidance did.
"""

import argparse
from pathlib import Path

import numpy as np
from PIL import Image

from dc3d_jax import cli, config_overrides, pipeline
from dc3d_jax.io import writers
from dc3d_jax.stages import runner

ARMS = ("guided", "unguided")
HEADLINE = ("novel_psnr", "novel_ssim", "novel_lpips", "novel_mask_iou", "chamfer",
            "fscore@0.02", "fscore@0.05", "volume_iou", "ref_psnr", "wall_time_s")
# Kept per run beside the headline, not averaged: whether evaluation renders ran out of budget.
DIAGNOSTICS = ("eval_kept_frac_min", "eval_truncated_renders")


def arm_overrides(cfg, arm: str) -> dict:
  """The unguided arm: every stage's guidance weights 0 (their terms then leave the step), no
  prior in either slot, and a texture stage that would run BSD (whose base model is not a
  slot) runs the SDS kind instead, so its zero weights leave it reference losses only."""
  if arm == "guided":
    return {}
  weights = {f"{stage}.loss.{slot}": (0.0,) for stage in cfg.stages
             for slot in ("sds_2d", "sds_3d") if slot in cfg[stage].get("loss", {})}
  if "texture" in cfg.stages and cfg.texture.guidance.kind == "bsd":
    weights["texture.guidance.kind"] = "sds"
  return {**weights, "guidance.prior_2d": "none", "guidance.prior_3d": "none"}


def run_config(args, obj: str, seed: int, arm: str):
  argv = [f"--config={args.config}", f"--config.data.object={obj}", f"--config.seed={seed}",
          f"--config.workdir={Path(args.root) / f'{obj}-s{seed}-{arm}'}",
          *(f"--config.{kv}" for kv in args.set)]
  cfg = cli.load_config(cli.parse_args(argv))
  config_overrides.apply_overrides(cfg, {k: v if isinstance(v, str) else repr(v)
                                         for k, v in arm_overrides(cfg, arm).items()})
  return cfg


def _read(path: Path, mode: str = "RGB") -> np.ndarray:
  return np.asarray(Image.open(path).convert(mode), np.float32) / 255.0


def last_sample_views(workdir: Path, stage: str) -> list:
  """The RGB cells of the stage's newest samples/step_*.png (runner.visual_row's layout: one
  row per sample azimuth, rgb | normal | depth | opacity); white cells if it has none."""
  rows = len(runner.SAMPLE_AZIMUTHS_DEG)
  paths = sorted((Path(workdir) / stage / "samples").glob("step_*.png"))
  if not paths:
    return [np.ones((8, 8, 3), np.float32)] * rows
  grid = _read(paths[-1])
  cell = (grid.shape[0] - (rows - 1) * writers.GRID_GAP) // rows
  return [grid[r * (cell + writers.GRID_GAP):][:cell, :cell] for r in range(rows)]


def sample_grid(rows: list, stage: str) -> np.ndarray:
  """One line per (object, seed): reference (resized to a sample's size) | unguided views |
  guided views."""
  workdirs = {(r["object"], r["seed"], r["arm"]): Path(r["workdir"]) for r in rows}
  cells = []
  for obj, seed in dict.fromkeys((r["object"], r["seed"]) for r in rows):
    runs = [workdirs.get((obj, seed, arm)) for arm in ("unguided", "guided")]
    views = [last_sample_views(w or Path("/nonexistent"), stage) for w in runs]
    size = views[0][0].shape[:2]
    ref = next(w for w in runs if w) / "reference" / "rgba.png"
    cells.append(np.asarray(Image.open(ref).convert("RGBA").resize(size[::-1], Image.LANCZOS),
                            np.float32) / 255.0 if ref.is_file() else np.ones(size + (3,)))
    cells += [cell for arm in views for cell in arm]
  return writers.image_grid(cells, 1 + 2 * len(runner.SAMPLE_AZIMUTHS_DEG))


def summarize(rows: list) -> dict:
  """arm -> metric -> {"mean", "std", "n"} over the runs that have the metric."""
  out = {}
  for arm in ARMS:
    runs = [r for r in rows if r["arm"] == arm]
    if not runs:
      continue
    out[arm] = {}
    for name in HEADLINE:
      values = [r["metrics"][name] for r in runs if name in r["metrics"]]
      if values:
        out[arm][name] = {"mean": float(np.mean(values)), "std": float(np.std(values)),
                          "n": len(values)}
  return out


def markdown(summary: dict) -> str:
  names = [n for n in HEADLINE if any(n in arm for arm in summary.values())]
  lines = ["| arm | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
  for arm in (a for a in ARMS if a in summary):
    cells = [f"{summary[arm][n]['mean']:.4g} ± {summary[arm][n]['std']:.2g}"
             if n in summary[arm] else "—" for n in names]
    lines.append(f"| {arm} | " + " | ".join(cells) + " |")
  return "\n".join(lines)


def main(argv=None) -> dict:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--config", required=True)
  parser.add_argument("--objects", required=True, help="comma-separated catalog names")
  parser.add_argument("--seeds", default="0,1")
  parser.add_argument("--root", default="outputs/compare_guidance")
  parser.add_argument("--out", required=True)
  parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
  parser.add_argument("--arms", default=",".join(ARMS), help="comma-separated subset of "
                      + ",".join(ARMS))
  args = parser.parse_args(argv)
  arms = args.arms.split(",")
  if not arms or set(arms) - set(ARMS):
    parser.error(f"--arms: expected names from {ARMS}, got {args.arms!r}")
  rows = []
  for obj in args.objects.split(","):
    for seed in (int(s) for s in args.seeds.split(",")):
      for arm in (a for a in ARMS if a in arms):
        cfg = run_config(args, obj, seed, arm)
        results = pipeline.run(cfg, progress=False)
        rows.append({"object": obj, "seed": seed, "arm": arm, "workdir": cfg.workdir,
                     "metrics": {k: results[k] for k in HEADLINE + DIAGNOSTICS
                                 if k in results}})
  summary = summarize(rows)
  record = {"config": args.config, "overrides": args.set, "runs": rows, "summary": summary}
  writers.save_json(Path(args.out), record)
  writers.save_png(Path(args.out).with_suffix(".png"), sample_grid(rows, cfg.stages[-1]))
  print(markdown(summary))
  return record


if __name__ == "__main__":
  main()
