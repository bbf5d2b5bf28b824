"""stages/loop.py on a plan of plain Python steps (no JIT): resume truncation of metrics.jsonl,
Ctrl-C (a real SIGINT to this process) and the merge of alternating step kinds."""

import contextlib
import json
import os
import signal
import types

import jax.numpy as jnp
import optax
import pytest

from dc3d_jax import errors
from dc3d_jax.stages import common, loop


def _train_cfg(**kw):
  base = dict(log_every=1, sample_every=1000, checkpoint_every=1000, keep_checkpoints=3)
  return types.SimpleNamespace(**{**base, **kw})


def _plan(steps, on_step=lambda step: None, kinds=("a",)):
  """Each step adds 1 to w and reports loss = the step index (and its kind's own term)."""
  def init():
    return common.new_state({"w": jnp.zeros(2)}, optax.sgd(0.1), {"b": jnp.zeros(1)})

  def step_inputs(step):
    kind = kinds[step % len(kinds)]
    def fn(state, batch):
      on_step(step)
      new = state.replace(step=state.step + 1, params={"w": state.params["w"] + 1})
      return new, {"loss": jnp.float32(step), f"loss/{kind}": jnp.float32(10 * step)}
    return kind, fn, None
  return loop.StagePlan(name="toy", steps=steps, init_state=init, step_inputs=step_inputs)


def _rows(stage_dir):
  return [json.loads(line) for line in (stage_dir / "metrics.jsonl").read_text().splitlines()]


def test_rows_past_the_start_are_dropped_even_without_a_checkpoint(tmp_path):
  stale = "".join(json.dumps({"step": s, "loss": -1.0}) + "\n" for s in range(1, 6))
  tmp_path.joinpath("metrics.jsonl").write_text(stale)   # a crashed run that never checkpointed
  loop.run(_plan(3), tmp_path, _train_cfg(), progress=False)
  assert [(r["step"], r["loss"]) for r in _rows(tmp_path)] == [(1, 0.0), (2, 1.0), (3, 2.0)]


def test_resume_from_a_checkpoint_keeps_rows_up_to_it(tmp_path):
  loop.run(_plan(4), tmp_path, _train_cfg(checkpoint_every=2), progress=False)
  with open(tmp_path / "metrics.jsonl", "a") as f:   # steps 5, 6 logged, never checkpointed
    f.write(json.dumps({"step": 5, "loss": -1.0}) + "\n" + json.dumps({"step": 6}) + "\n")
  state = loop.run(_plan(6), tmp_path, _train_cfg(checkpoint_every=2), progress=False)
  assert [r["step"] for r in _rows(tmp_path)] == [1, 2, 3, 4, 5, 6]
  assert [r["loss"] for r in _rows(tmp_path)] == [0.0, 1.0, 2.0, 3.0, 4.0, 5.0]
  assert float(state.params["w"][0]) == 6.0   # 4 restored + 2 new steps


@contextlib.contextmanager
def default_sigint():
  """SIGINT at Python's default inside, whatever the suite inherited (a background job of a
  non-interactive shell starts with it ignored), and put back afterwards."""
  inherited = signal.signal(signal.SIGINT, signal.default_int_handler)
  try:
    yield
  finally:
    signal.signal(signal.SIGINT, inherited)


@pytest.fixture
def sigint_default():
  with default_sigint():
    yield


def test_first_ctrl_c_finishes_the_step_checkpoints_it_and_says_how_to_resume(tmp_path,
                                                                             sigint_default):
  ran = []
  def on_step(step):
    ran.append(step)
    if step == 2:   # mid-step: the signal arrives while the step is being computed
      os.kill(os.getpid(), signal.SIGINT)
  with pytest.raises(errors.Interrupted) as info:
    loop.run(_plan(10, on_step), tmp_path, _train_cfg(), progress=False)
  assert str(info.value) == ("[toy] interrupted at step 3 of 10; re-run the same command to "
                             "resume from step 3")
  assert ran == [0, 1, 2] and (tmp_path / "checkpoints" / "3").is_dir()
  assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
  state = loop.run(_plan(4), tmp_path, _train_cfg(), progress=False)
  assert float(state.params["w"][0]) == 4.0 and [r["step"] for r in _rows(tmp_path)] == [1, 2, 3, 4]


def test_second_ctrl_c_aborts_at_once(tmp_path, sigint_default):
  def on_step(step):
    if step == 1:
      os.kill(os.getpid(), signal.SIGINT)
      os.kill(os.getpid(), signal.SIGINT)
      raise AssertionError("the second SIGINT should have stopped the step")
  with pytest.raises(KeyboardInterrupt):
    loop.run(_plan(10, on_step), tmp_path, _train_cfg(), progress=False)
  assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_an_ignored_sigint_stays_ignored(tmp_path, sigint_default):
  signal.signal(signal.SIGINT, signal.SIG_IGN)   # as under nohup or in a script's `cmd &`
  def on_step(step):
    if step == 1:
      os.kill(os.getpid(), signal.SIGINT)
  state = loop.run(_plan(4, on_step), tmp_path, _train_cfg(), progress=False)
  assert float(state.params["w"][0]) == 4.0   # ran to the end
  assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN


def test_a_log_row_merges_the_newest_metrics_of_each_step_kind(tmp_path):
  loop.run(_plan(6, kinds=("ref", "guidance")), tmp_path, _train_cfg(log_every=2),
           progress=False)
  rows = _rows(tmp_path)
  assert [r["step"] for r in rows] == [2, 4, 6]
  for r in rows:   # the last step is a "guidance" one (odd index), the one before a "ref" one
    s = r["step"]
    assert (r["loss"], r["loss/guidance"], r["loss/ref"]) == (s - 1, 10 * (s - 1), 10 * (s - 2))
