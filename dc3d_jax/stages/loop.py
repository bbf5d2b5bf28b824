"""The loop every stage runs: compiled steps, JSON-lines metrics, progress bar, samples,
checkpoints with resume, and a clear stop on non-finite values."""

import dataclasses
import time
from pathlib import Path
from typing import Any, Callable

import jax
import numpy as np
from tqdm.auto import tqdm

from dc3d_jax.io import writers
from dc3d_jax.stages.checkpoints import CheckpointStore
from dc3d_jax.stages.common import TrainState


class NonFiniteError(FloatingPointError):
  """Training produced NaN/Inf; the message says where and what to try."""


@dataclasses.dataclass
class StagePlan:
  """name: stage name; steps: total steps; init_state(): a fresh state;
  step_inputs(step) -> (compiled fn(state, batch) -> (state, metrics), batch);
  samples(state, step) -> image [H, W, 3] or None."""
  name: str
  steps: int
  init_state: Callable[[], TrainState]
  step_inputs: Callable[[int], tuple[Callable, Any]]
  samples: Callable[[TrainState, int], np.ndarray] | None = None


def _resume(store: CheckpointStore, plan: StagePlan, metrics_path: Path):
  state = plan.init_state()
  start = store.latest_step()
  if start is None:
    return state, 0
  state = store.restore(start, state)
  writers.truncate_jsonl(metrics_path, start)
  tqdm.write(f"[{plan.name}] resumed from the checkpoint at step {start}")
  return state, start


def _check_finite(name: str, step: int, metrics: dict, skipped: int, ckpt: int | None):
  bad = sorted(k for k, v in metrics.items() if not np.all(np.isfinite(v)))
  if bad or skipped:
    where = f"last checkpoint: step {ckpt}" if ckpt is not None else "no checkpoint yet"
    raise NonFiniteError(
        f"[{name}] step {step}: non-finite values in {bad or 'the gradients'} "
        f"({skipped} update(s) dropped; {where}). Try a lower learning rate or loss weight, "
        "or check the inputs.")


def _log(plan, step, metrics, state, metrics_path, t0, bar, store):
  """metrics: the latest metrics of each kind of step (ref, guidance...), merged."""
  record = {k: float(np.asarray(v)) for k, v in jax.device_get(metrics).items()}
  _check_finite(plan.name, step, record, int(state.skipped), store.latest_step())
  record.update(step=step, wall_s=round(time.perf_counter() - t0, 3))
  writers.append_jsonl(metrics_path, record)
  bar.set_postfix(loss=f"{record['loss']:.4g}", refresh=False)


def run(plan: StagePlan, stage_dir: Path, train_cfg, *, progress: bool = True) -> TrainState:
  """Trains `plan` to `plan.steps`, resuming from `stage_dir/checkpoints` if present."""
  stage_dir = Path(stage_dir)
  metrics_path = stage_dir / "metrics.jsonl"
  store = CheckpointStore(stage_dir / "checkpoints", train_cfg.keep_checkpoints)
  state, start = _resume(store, plan, metrics_path)
  t0 = time.perf_counter()
  bar = tqdm(total=plan.steps, initial=start, desc=plan.name, disable=not progress,
             dynamic_ncols=True)
  latest = {}  # step function -> its newest metrics (alternating steps log different terms)
  try:
    for step in range(start, plan.steps):
      step_fn, batch = plan.step_inputs(step)
      state, latest[step_fn] = step_fn(state, batch)
      done = step + 1
      if done % train_cfg.log_every == 0 or done == plan.steps:
        merged = {k: v for m in latest.values() for k, v in m.items()}
        merged["loss"] = latest[step_fn]["loss"]
        _log(plan, done, merged, state, metrics_path, t0, bar, store)
        latest = {}
      if plan.samples is not None and (done % train_cfg.sample_every == 0):
        writers.save_png(stage_dir / "samples" / f"step_{done:06d}.png",
                         plan.samples(state, done))
      if done % train_cfg.checkpoint_every == 0 or done == plan.steps:
        store.save(done, state)
      bar.update(1)
  finally:
    bar.close()
    store.close()
  return state
