"""Held-out table of a testbed prior, and export of its weights into the repo.

  # a finished run's weights, or the newest checkpoint of a run (training may still go on):
  python -m experiments.eval_prior --weights=RUN/testbed_prior.safetensors --out=OUT.json
  python -m experiments.eval_prior --run_dir=RUN --out=OUT.json
  # also write weights/testbed_prior.safetensors + .json (the card: command, steps, data,
  # held-out figures) from the evaluated weights:
  python -m experiments.eval_prior --run_dir=RUN --out=OUT.json \
      --export=weights/testbed_prior.safetensors

Protocol (evaluation.py): every catalog.HELD_OUT object at its catalog front, the 14 novel
views of dataset.EVAL_VIEWS, one DDIM sample per view and seed; beside the `reference` and
`mirrored` baselines, and the prior's one-step posterior-mean estimate (evaluation.py says
why both; with three or more seeds also the median and the vote of the samples, and the
vote's mask with the posterior mean's colour; the vote's grid as OUT_vote.png beside seed 0's
samples in OUT.png). Prints the markdown table that docs/RESULTS.md carries, and each prior
row's paired difference from each baseline with a 95% interval that resamples objects
(eval/stats.py).
"""

import json
import shlex
import sys
from pathlib import Path

from absl import app, flags, logging

_WEIGHTS = flags.DEFINE_string("weights", "", "a testbed .safetensors file")
_RUN_DIR = flags.DEFINE_string("run_dir", "", "a train_prior run dir: its newest checkpoint")
_OUT = flags.DEFINE_string("out", "", "write the result JSON here")
_EXPORT = flags.DEFINE_string("export", "", "write the evaluated weights + card here")
_CACHE = flags.DEFINE_string("cache_dir", "", "held-out renders cache (default: run's)")
_STEPS = flags.DEFINE_integer("ddim_steps", 50, "DDIM steps")
_SEEDS = flags.DEFINE_list("seeds", ["0", "1"], "sampling seeds")
_SCALE = flags.DEFINE_float("guidance_scale", 3.0, "classifier-free guidance scale")
_OBJECTS = flags.DEFINE_list(
    "objects", [], "score these testbed objects instead of catalog.HELD_OUT, e.g. generated "
    "ones a run never trained on (proc-0400,...) as a validation set for choosing settings")


def checkpoint_weights(run_dir: Path):
  """(arch, EMA params, step, config dict) of a run's newest checkpoint."""
  import ml_collections
  from dc3d_jax.stages.checkpoints import CheckpointStore
  from dc3d_jax.testbed import training
  cfg = ml_collections.ConfigDict(json.loads((run_dir / "config.json").read_text()))
  settings = training.Settings.from_config(cfg)
  store = CheckpointStore(run_dir / "checkpoints")
  step = store.latest_step()
  if step is None:
    raise SystemExit(f"{run_dir}/checkpoints: no checkpoint yet")
  import jax
  state = store.restore(step, training.init_state(settings, jax.random.key(0)))
  store.close()
  return settings.arch, training.params_tree(state.buffers["ema"], settings.arch), step, cfg


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)
  import jax
  from dc3d_jax.core import rng
  from dc3d_jax.io import writers
  from dc3d_jax.priors import testbed
  from dc3d_jax.testbed import catalog, dataset, evaluation
  if bool(_WEIGHTS.value) == bool(_RUN_DIR.value):
    raise app.UsageError("give exactly one of --weights and --run_dir")
  if _RUN_DIR.value:
    arch, params, step, cfg = checkpoint_weights(Path(_RUN_DIR.value))
    card = {"steps": step, "config": cfg.to_dict()}
    cache = Path(_CACHE.value or cfg.cache_dir or Path(_RUN_DIR.value) / "cache")
    settings, _ = dataset.from_config(cfg.data)
  else:
    model = testbed.load_model(_WEIGHTS.value)
    arch, params, card = model.arch, model.params, dict(model.card)
    cache = Path(_CACHE.value or Path(_WEIGHTS.value).parent / "cache")
    data_cfg = card.get("config", {}).get("data", {"resolution": arch.resolution})
    settings, _ = dataset.from_config(data_cfg)
  names = tuple(_OBJECTS.value) or catalog.HELD_OUT
  heldout = dataset.cached_npz(cache / f"heldout-{settings.key(names)}.npz",
                               lambda: dataset.build_heldout_set(settings, names))
  result, samples = evaluation.evaluate(
      params, arch, heldout, rng.root_key(0), ddim_steps=_STEPS.value,
      guidance_scale=_SCALE.value, seeds=tuple(int(s) for s in _SEEDS.value), progress=True)
  result["weights"] = {"steps": card.get("steps"), "source": _WEIGHTS.value or _RUN_DIR.value}
  result["command"] = " ".join(shlex.quote(a) for a in
                               ["python", "-m", "experiments.eval_prior"] + sys.argv[1:])
  table = evaluation.markdown(result, f"{card.get('steps')} steps")
  print(table)
  if _OUT.value:
    out = Path(_OUT.value)
    writers.save_json(out, result)
    writers.save_png(out.with_suffix(".png"), evaluation.sample_grid(heldout, samples[0]))
    if "prior_vote" in result:          # the read-out of all seeds, beside seed 0's samples
      writers.save_png(out.with_name(out.stem + "_vote.png"),
                       evaluation.sample_grid(heldout, evaluation.vote_readout(samples)))
  if _EXPORT.value:
    card["heldout"] = evaluation.card_figures(result)
    card["eval_command"] = result["command"]
    testbed.save_model(_EXPORT.value, arch, jax.device_get(params), card)
    writers.save_json(Path(_EXPORT.value).with_suffix(".json"), card)


if __name__ == "__main__":
  app.run(main)
