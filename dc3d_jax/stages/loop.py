"""The loop every stage runs: compiled steps, JSON-lines metrics, progress bar, samples,
checkpoints with resume, a clear stop on non-finite values, and a clean stop on Ctrl-C.

Resume: from the newest checkpoint at step N (or from scratch, N = 0), `metrics.jsonl` keeps
only its rows up to N, so no step is ever logged twice.
Finished: a stage that reached its last step writes `<stage>/final.json` ({"step": N}), the
mark a later stage (or a later run, `<stage>.init_from`) starts from (stages/runner.load_final).
Ctrl-C: the first SIGINT only sets a flag. The step being dispatched finishes (its input state
was donated to the jitted step, so it cannot be abandoned halfway), the completed step is
checkpointed, and `errors.Interrupted` says the step reached and how to resume. A second
Ctrl-C raises KeyboardInterrupt at once.
"""

import contextlib
import dataclasses
import json
import signal
import threading
import time
from pathlib import Path
from typing import Any, Callable

import jax
import numpy as np
from tqdm.auto import tqdm

from dc3d_jax import errors
from dc3d_jax.io import writers
from dc3d_jax.stages.checkpoints import CheckpointStore
from dc3d_jax.stages.common import TrainState

NonFiniteError = errors.NonFiniteError   # its historical home


@dataclasses.dataclass
class StagePlan:
  """name: stage name; steps: total steps; init_state(): a fresh state;
  step_inputs(step) -> (kind, compiled fn(state, batch) -> (state, metrics), batch), where
  `kind` names the step's variant (e.g. its substeps "ref" / "guidance"): steps of different
  kinds log different terms, and a log row merges the newest metrics of each kind;
  samples(state, step) -> image [H, W, 3] or None."""
  name: str
  steps: int
  init_state: Callable[[], TrainState]
  step_inputs: Callable[[int], tuple[str, Callable, Any]]
  samples: Callable[[TrainState, int], np.ndarray] | None = None


def _resume(store: CheckpointStore, plan: StagePlan, metrics_path: Path):
  state = plan.init_state()
  start = store.latest_step() or 0
  writers.truncate_jsonl(metrics_path, start)   # also rows of a run that never checkpointed
  if start:
    state = store.restore(start, state)
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


class _StopFlag:
  """Set by the first SIGINT while installed; the second SIGINT raises KeyboardInterrupt."""

  def __init__(self):
    self.requested = False

  def _handle(self, signum, frame):
    self.requested = True
    signal.signal(signal.SIGINT, signal.default_int_handler)
    tqdm.write("stopping after this step (Ctrl-C again to abort at once)")

  @contextlib.contextmanager
  def installed(self):
    # Signal handlers belong to the main thread; elsewhere Ctrl-C keeps its default. An
    # ignored SIGINT (nohup, a background job of a script) stays ignored, as Python leaves it.
    if (threading.current_thread() is not threading.main_thread()
        or signal.getsignal(signal.SIGINT) is signal.SIG_IGN):
      yield self
      return
    previous = signal.signal(signal.SIGINT, self._handle)
    try:
      yield self
    finally:
      signal.signal(signal.SIGINT, previous)


def _interrupted(plan: StagePlan, done: int, store: CheckpointStore, state):
  """Checkpoints the completed step and says how to resume."""
  if done > 0:
    store.save(done, state)
  resume = store.latest_step() or 0
  then = f"resume from step {resume}" if resume < plan.steps else "finish the run"
  return errors.Interrupted(f"[{plan.name}] interrupted at step {done} of {plan.steps}; "
                            f"re-run the same command to {then}")


def run(plan: StagePlan, stage_dir: Path, train_cfg, *, progress: bool = True) -> TrainState:
  """Trains `plan` to `plan.steps`, resuming from `stage_dir/checkpoints` if present."""
  stage_dir = Path(stage_dir)
  metrics_path = stage_dir / "metrics.jsonl"
  store = CheckpointStore(stage_dir / "checkpoints", train_cfg.keep_checkpoints)
  state, start = _resume(store, plan, metrics_path)
  t0 = time.perf_counter()
  bar = tqdm(total=plan.steps, initial=start, desc=plan.name, disable=not progress,
             dynamic_ncols=True)
  latest = {}  # step kind -> its newest metrics (alternating steps log different terms)
  stop = _StopFlag()
  try:
    with stop.installed():
      for step in range(start, plan.steps):
        kind, step_fn, batch = plan.step_inputs(step)
        state, latest[kind] = step_fn(state, batch)
        done = step + 1
        if done % train_cfg.log_every == 0 or done == plan.steps:
          merged = {k: v for m in latest.values() for k, v in m.items()}
          merged["loss"] = latest[kind]["loss"]
          _log(plan, done, merged, state, metrics_path, t0, bar, store)
          latest = {}
        if plan.samples is not None and (done % train_cfg.sample_every == 0):
          writers.save_png(stage_dir / "samples" / f"step_{done:06d}.png",
                           plan.samples(state, done))
        if done % train_cfg.checkpoint_every == 0 or done == plan.steps:
          store.save(done, state)
        bar.update(1)
        if stop.requested:
          raise _interrupted(plan, done, store, state)
  finally:
    bar.close()
    store.close()
  writers.save_json(stage_dir / FINAL, {"step": plan.steps})
  return state


FINAL = "final.json"


def final_step(stage_dir: Path) -> int | None:
  """The step a finished stage ended at (its final.json), or None if it has not finished."""
  path = Path(stage_dir) / FINAL
  if not path.is_file():
    return None
  try:
    return int(json.loads(path.read_text())["step"])
  except (ValueError, KeyError, TypeError):
    return None
