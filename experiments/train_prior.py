"""Trains the testbed prior (issue 10) on renders of the training meshes.

  python -m experiments.train_prior --config=configs/testbed.py --config.run_dir=RUN_DIR
Running the same command again resumes from the newest checkpoint in RUN_DIR/checkpoints.
See configs/testbed.py for what it writes.
"""

import functools
import shlex
import sys
from pathlib import Path

import numpy as np
from absl import app, flags, logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "configs/testbed.py[:quick]",
                                          lock_config=True)
WEIGHTS_NAME = "testbed_prior.safetensors"


def load_data(cfg):
  """(training set, held-out set), rendered once into the cache dir."""
  from dc3d_jax.testbed import catalog, dataset
  settings, names = dataset.from_config(cfg.data)
  cache = Path(cfg.cache_dir or Path(cfg.run_dir) / "cache")
  root = cfg.assets_dir or None
  train = dataset.load_or_build(cache, settings, names, root=root,
                                progress=lambda n: logging.info("rendered %s", n))
  heldout = dataset.cached_npz(cache / f"heldout-{settings.key(catalog.HELD_OUT)}.npz",
                    lambda: dataset.build_heldout_set(settings, root=root))
  return train, heldout


def _eval_hook(cfg, settings, heldout, root_key, run_dir: Path):
  """The loop's `samples` callback: held-out scores of the EMA weights + a sample grid."""
  from dc3d_jax.io import writers
  from dc3d_jax.testbed import evaluation, training

  def hook(state, step):
    ema = training.params_tree(state.buffers["ema"], settings.arch)
    result, samples = evaluation.evaluate(
        ema, settings.arch, heldout, root_key,
        ddim_steps=cfg.eval.ddim_steps, guidance_scale=cfg.eval.guidance_scale,
        views=cfg.eval.views)
    writers.append_jsonl(run_dir / "heldout.jsonl", {
        "step": step, **{f"{k}/{m}": result[k][m] for k in evaluation.ROWS
                         for m in ("psnr", "mask_iou")}})
    return evaluation.sample_grid(heldout, samples[0], cfg.eval.views)
  return hook


def final_evaluation(cfg, arch, params, heldout, root_key, run_dir: Path) -> dict:
  from dc3d_jax.io import writers
  from dc3d_jax.testbed import evaluation
  result, samples = evaluation.evaluate(
      params, arch, heldout, root_key, ddim_steps=cfg.eval.final_ddim_steps,
      guidance_scale=cfg.eval.guidance_scale, seeds=tuple(cfg.eval.final_seeds), progress=True)
  writers.save_json(run_dir / "heldout_final.json", result)
  writers.save_png(run_dir / "samples" / "final.png",
                   evaluation.sample_grid(heldout, samples[0]))
  return result


def run(cfg, train_data=None, heldout=None, command: str = "") -> dict:
  """Trains to cfg.train.steps (resuming), evaluates, exports; returns the card."""
  import jax
  from dc3d_jax.core import rng
  from dc3d_jax.io import writers
  from dc3d_jax.priors import testbed
  from dc3d_jax.stages import loop
  from dc3d_jax.testbed import evaluation, training

  run_dir = Path(cfg.run_dir)
  writers.save_json(run_dir / "config.json", cfg.to_dict())
  settings = training.Settings.from_config(cfg)
  if settings.arch.resolution != cfg.data.resolution:
    raise ValueError(f"config model.resolution={settings.arch.resolution} must equal "
                     f"data.resolution={cfg.data.resolution}")
  if train_data is None:
    train_data, heldout = load_data(cfg)
  root = rng.root_key(cfg.seed)
  data = training.device_data(train_data)
  step_fn = functools.partial(training.train_step, root_key=root, settings=settings)
  latest = _latest_step(run_dir)
  writers.truncate_jsonl(run_dir / "heldout.jsonl", latest)
  plan = loop.StagePlan(
      name="testbed_prior", steps=settings.steps,
      init_state=lambda: _init_state(cfg, settings, rng.key_for(root, "testbed/init", 0),
                                     resuming=latest > 0),
      step_inputs=lambda step: ("train", step_fn, data),
      samples=_eval_hook(cfg, settings, heldout, root, run_dir))
  state = loop.run(plan, run_dir, cfg.train)
  ema = jax.device_get(training.params_tree(state.buffers["ema"], settings.arch))
  figures = final_evaluation(cfg, settings.arch, ema, heldout, root, run_dir)
  card = {"command": command, "steps": int(state.step), "config": cfg.to_dict(),
          "train_objects": [str(n) for n in train_data["names"]],
          "train_pairs": int(np.prod(train_data["elevation"].shape)),
          "heldout": evaluation.card_figures(figures)}
  testbed.save_model(run_dir / WEIGHTS_NAME, settings.arch, ema, card)
  writers.save_json(run_dir / "testbed_prior.json", card)
  return card


def _init_state(cfg, settings, key, resuming: bool = False):
  """A fresh state, or one starting from cfg.init_weights (training.widen: the same
  architecture, or one with more input channels). A resumed run restores a checkpoint over
  this state, so then it is only a template of the right shapes, and init_weights (which may
  have been moved since) is not read."""
  from dc3d_jax.priors import testbed
  from dc3d_jax.testbed import training
  if not cfg.get("init_weights") or resuming:
    return training.init_state(settings, key)
  start = testbed.load_model(cfg.init_weights)
  return training.init_state(settings, key, training.widen(start.params, settings.arch))


def _latest_step(run_dir: Path) -> int:
  steps = [int(p.name) for p in (run_dir / "checkpoints").glob("*") if p.name.isdigit()]
  return max(steps, default=0)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  logging.set_verbosity(logging.WARNING)
  command = " ".join(shlex.quote(a) for a in ["python", "-m", "experiments.train_prior"] +
                     sys.argv[1:])
  card = run(_CONFIG.value, command=command)
  print({k: card["heldout"][k] for k in ("prior", "reference", "mirrored")})


if __name__ == "__main__":
  flags.mark_flags_as_required(["config"])
  app.run(main)
