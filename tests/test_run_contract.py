"""The run's contract (issue 8), through the CLI's own entry point `experiments.run.main`.

The table: every bad input (config, image, depth, weights, work dir, resume, interruption)
exits non-zero with one message naming the culprit and no traceback, and leaves the work dir
as it was (absent, or byte-identical). The cases run in-process and stop before any JIT
compile. The resume cases need one real (tiny) run: `history` makes it, stopping it with a
real SIGINT to this process and resuming it; a real second process holds a lock in
`test_lock_held_by_another_process_is_named`.
"""

import argparse
import contextlib
import dataclasses
import errno
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
from PIL import Image

from conftest import ROOT
from dc3d_jax import cli, errors, pipeline, workdir
from experiments import run
from tests.test_loop import default_sigint

TINY = [  # the reference-only tiny run of conftest.tiny_config, as flags
    "--config=configs/dreamcraft3d.py:quick", "--config.guidance.prior_2d=none",
    "--config.guidance.prior_3d=none", "--config.data.image_size=64",
    "--config.coarse_nerf.train.steps=2", "--config.coarse_nerf.train.resolutions=(16,)",
    "--config.coarse_nerf.train.resolution_milestones=()",
    "--config.coarse_nerf.train.log_every=1", "--config.coarse_nerf.train.checkpoint_every=2",
    "--config.coarse_nerf.train.sample_every=1000", "--config.coarse_nerf.field.grid.n_levels=6",
    "--config.coarse_nerf.field.grid.base_resolution=8",
    "--config.coarse_nerf.field.grid.per_level_scale=1.5",
    "--config.coarse_nerf.field.grid.log2_table_size=10",
    "--config.coarse_nerf.field.band_start_level=4",
    "--config.coarse_nerf.field.band_start_step=2",
    "--config.coarse_nerf.field.band_update_steps=1",
    "--config.coarse_nerf.render.num_steps_diagonal=48",
    "--config.coarse_nerf.render.samples_per_ray=16",
    "--config.coarse_nerf.render.prepass_samples_per_ray=24", "--config.eval.resolution=16",
    "--config.eval.orbit_views=4", "--config.eval.chunk_rays=128"]


def _rgba(shape_fn, alpha=255, size=64) -> np.ndarray:
  yy, xx = np.mgrid[:size, :size]
  img = np.zeros((size, size, 4), np.uint8)
  img[..., :3] = (200, 60, 40)
  img[..., 3] = np.where(shape_fn(yy - size / 2, xx - size / 2), alpha, 0)
  return img


def _save(path: Path, array, mode=None) -> str:
  Image.fromarray(array, mode).save(path)
  return str(path)


def _truncated(path: Path) -> str:
  data = path.read_bytes()
  path.write_bytes(data[: len(data) // 2])
  return str(path)


def _weights(d: Path) -> dict:
  """Damaged and refused weight files, written by torch / safetensors themselves."""
  import safetensors.torch
  import torch
  state = {"state_dict": {"w": torch.randn(64, 64)}}
  torch.save(state, d / "zip.ckpt")
  torch.save(state, d / "legacy.ckpt", _use_new_zipfile_serialization=False)
  torch.save({**state, "hparams": argparse.Namespace(lr=1)}, d / "pickled.ckpt")
  safetensors.torch.save_file(state["state_dict"], d / "w.safetensors")
  (d / "garbage.ckpt").write_bytes(b"not a checkpoint\n" * 8)
  (d / "sd_incomplete").mkdir()
  (d / "sd_incomplete" / "model_index.json").write_text("{}")
  return {"trunc_zip": _truncated(d / "zip.ckpt"), "trunc_legacy": _truncated(d / "legacy.ckpt"),
          "trunc_st": _truncated(d / "w.safetensors"), "pickled": str(d / "pickled.ckpt"),
          "garbage": str(d / "garbage.ckpt"), "sd_incomplete": str(d / "sd_incomplete"),
          "no_model": str(d / "no_such_model")}


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict:
  d = tmp_path_factory.mktemp("inputs")
  disc = lambda y, x: y * y + x * x < 400
  rng = np.random.default_rng(0)
  out = {
      "good": _save(d / "good.png", _rgba(disc)),
      "other": _save(d / "other.png", _rgba(lambda y, x: (abs(y) < 15) & (abs(x) < 15))),
      "photo": _save(d / "photo.jpg", np.full((64, 64, 3), 128, np.uint8)),
      "grey": _save(d / "grey.png", np.full((64, 64, 3), 128, np.uint8)),
      "transparent": _save(d / "transparent.png", _rgba(disc, alpha=0)),
      "faint": _save(d / "faint.png", _rgba(disc, alpha=100)),
      "dot": _save(d / "dot.png", _rgba(lambda y, x: (y == 0) & (x == 0))),
      "depth": _save(d / "depth.png", rng.integers(0, 255, (64, 64), np.uint8)),
      "depth_small": _save(d / "depth_small.png", rng.integers(0, 255, (48, 32), np.uint8)),
      "depth_rgb": _save(d / "depth_rgb.png", rng.integers(0, 255, (64, 64, 3), np.uint8)),
      "a_file": str(d / "a_file"), "missing": str(d / "missing.png")}
  (d / "not_an_image.png").write_text("hello")
  out["not_an_image"] = str(d / "not_an_image.png")
  Path(out["a_file"]).write_text("x")
  return {**out, **_weights(d)}


def _snapshot(path: Path):
  """Every file's bytes under `path` (None if absent): 'as it was' means equal snapshots."""
  if not path.exists():
    return None
  return {str(p.relative_to(path)): (p.read_bytes() if p.is_file() else "<dir>")
          for p in sorted(path.rglob("*"))}


def main(argv, capsys) -> tuple:
  code = run.main(argv)
  out, err = capsys.readouterr()
  return code, out, err


def _assert_one_message(code: int, err: str, culprit: str) -> None:
  assert code not in (0, 1), err
  assert "Traceback" not in err
  lines = [line for line in err.splitlines() if line.strip()]
  heads = [line for line in lines if line.startswith(("error:", "interrupted:"))]
  assert len(heads) == 1 and lines[0] == heads[0], err   # one message, first on stderr
  assert culprit in err, (culprit, err)


@dataclasses.dataclass
class Case:
  kind: str                              # the input class
  args: Callable[[dict], list]           # files -> extra flags
  culprit: Callable[[dict], str]         # files -> what the message must name
  prepare: Callable | None = None        # (files, workdir, monkeypatch, cleanups) -> work dir


def _image(name, *more):
  return lambda f: [f"--config.data.image={f[name]}", *more]


def _cfg(*flags):
  return lambda f: ["--config.data.image=" + f["good"], *flags]


def _zero123(name):
  return lambda f: [f"--config.data.image={f['good']}", "--config.guidance.prior_3d=zero123",
                    f"--config.guidance.zero123_model={f[name]}"]


def _key(text):
  return lambda f: text


def _path(name):
  return lambda f: f[name]


CONFIG = {
    "unknown_key": Case("config", _cfg("--config.foo=1"), _key("config has no key foo")),
    "misspelled_key": Case("config", _cfg("--config.coarse_nerf.train.stpes=5"),
                           _key("did you mean coarse_nerf.train.steps?")),
    "misspelled_section": Case("config", _cfg("--config.coarse_nerf.trian.steps=5"),
                               _key("did you mean coarse_nerf.train.steps?")),
    "section_as_value": Case("config", _cfg("--config.coarse_nerf.train=5"),
                             _key("coarse_nerf.train is a section")),
    "negative_steps": Case("config", _cfg("--config.coarse_nerf.train.steps=-5"),
                           _key("coarse_nerf.train.steps=-5")),
    "float_steps": Case("config", _cfg("--config.coarse_nerf.train.steps=2.5"),
                        _key("coarse_nerf.train.steps")),
    "fill_zero": Case("config", _cfg("--config.data.fill=0"), _key("data.fill=0")),
    "log_every_zero": Case("config", _cfg("--config.coarse_nerf.train.log_every=0"),
                           _key("coarse_nerf.train.log_every=0")),
    "checkpoint_every_zero": Case("config", _cfg("--config.coarse_nerf.train.checkpoint_every=0"),
                                  _key("checkpoint_every")),
    "resolution_zero": Case("config", _cfg("--config.coarse_nerf.train.resolutions=(0,)"),
                            _key("coarse_nerf.train.resolutions")),
    "milestones_count": Case("config",
                             _cfg("--config.coarse_nerf.train.resolution_milestones=(1,2)"),
                             _key("coarse_nerf.train.resolution_milestones")),
    "negative_weight": Case("config", _cfg("--config.coarse_nerf.loss.rgb=-1"),
                            _key("coarse_nerf.loss.rgb")),
    "schedule_shape": Case("config", _cfg("--config.coarse_nerf.loss.mask=(0,1,2)"),
                           _key("coarse_nerf.loss.mask")),
    "t_min_above_t_max": Case("config", _cfg("--config.coarse_nerf.guidance.sds_2d.t_min=0.9"),
                              _key("coarse_nerf.guidance.sds_2d.t_min")),
    "fovy_zero": Case("config", _cfg("--config.data.fovy_deg=0"), _key("data.fovy_deg")),
    "render_size_not_multiple_of_8": Case("config", _cfg("--config.guidance.sd_render_size=100"),
                                          _key("guidance.sd_render_size")),
    "bool_typo": Case("config", _cfg("--config.data.recenter=maybe"), _key("data.recenter")),
    "elevation_range_reversed": Case("config", _cfg("--config.data.elevation_range_deg=(45,-10)"),
                                     _key("data.elevation_range_deg")),
    "band_above_levels": Case("config", _cfg("--config.coarse_nerf.field.band_start_level=9"),
                              _key("coarse_nerf.field.band_start_level")),
    "unknown_stage": Case("config", _cfg("--config.stages=coarse_neuss"), _key("coarse_neuss")),
    "fps_zero": Case("config", _cfg("--config.eval.fps=0"), _key("eval.fps")),
    "sd_without_prompt": Case("config", _cfg("--config.guidance.prior_2d=sd"), _key("prompt")),
    "zero123_without_model": Case("config", _cfg("--config.guidance.prior_3d=zero123"),
                                  _key("guidance.zero123_model")),
    "oracle_with_image": Case("config", _cfg("--config.guidance.prior_2d=oracle"),
                              _key("data.image")),
    "unknown_flag": Case("config", _cfg("--restrat"), _key("--restrat")),
    "missing_config_file": Case("config", lambda f: ["--config=configs/nope.py"],
                                _key("configs/nope.py")),
    "unknown_variant": Case("config", lambda f: ["--config=configs/dreamcraft3d.py:bogus"],
                            _key("bogus")),
}

IMAGE = {
    "image_missing": Case("image", _image("missing"), _path("missing")),
    "image_not_an_image": Case("image", _image("not_an_image"), _path("not_an_image")),
    "image_without_alpha": Case("image", _image("photo"), _path("photo")),
    "image_fully_transparent": Case("image", _image("transparent"), _path("transparent")),
    "image_faint_alpha": Case("image", _image("faint"), _path("faint")),
    "image_empty_after_background_removal": Case(
        "image", _image("grey", "--config.data.remove_background=True"), _path("grey")),
    "image_empty_at_render_size": Case("image", _image("dot", "--config.data.recenter=False"),
                                       _key("16x16 render size")),
}

DEPTH = {
    "depth_other_shape": Case("depth", _cfg("--config.data.depth={depth_small}"),
                              _path("depth_small")),
    "depth_colour": Case("depth", _cfg("--config.data.depth={depth_rgb}"), _path("depth_rgb")),
    "depth_missing": Case("depth", _cfg("--config.data.depth={missing}"), _key("data.depth")),
    "depth_without_image": Case("depth", lambda f: [f"--config.data.depth={f['depth']}",
                                                    "--config.guidance.prior_2d=oracle"],
                                _key("data.depth")),
}

WEIGHTS = {
    "model_missing": Case("weights", _zero123("no_model"), _path("no_model")),
    "model_folder_incomplete": Case(
        "weights", _cfg("--config.guidance.prior_2d=sd", "--config.prompt=a toy",
                        "--config.guidance.sd_model={sd_incomplete}"), _path("sd_incomplete")),
    "ckpt_truncated_zip": Case("weights", _zero123("trunc_zip"), _path("trunc_zip")),
    "ckpt_garbage": Case("weights", _zero123("garbage"), _path("garbage")),
    "safetensors_truncated": Case("weights", _zero123("trunc_st"), _path("trunc_st")),
    "legacy_pickle_truncated": Case("weights", _zero123("trunc_legacy"), _path("trunc_legacy")),
    "ckpt_pickles_objects": Case("weights", _zero123("pickled"), _path("pickled")),
}


def _hold_lock(files, wd, monkeypatch, cleanups):
  # flock locks belong to an open file, so a second open() in this process conflicts just as
  # another process would (a real other process: `history` below).
  lock = workdir.Lock(wd).acquire("python -m experiments.run --config=other.py")
  cleanups.append(lock.release)
  return wd


def _a_file(files, wd, monkeypatch, cleanups):
  return Path(files["a_file"])


def _disk_full(files, wd, monkeypatch, cleanups):
  def full(self, *args, **kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(self))
  monkeypatch.setattr(Path, "write_text", full)
  return wd


def _ctrl_c_while_loading(files, wd, monkeypatch, cleanups):
  def interrupt(*args):
    raise KeyboardInterrupt
  monkeypatch.setattr(pipeline, "_load_models", interrupt)
  return wd


WORKDIR = {
    "workdir_empty": Case("workdir", lambda f: [f"--config.data.image={f['good']}",
                                                "--config.workdir="], _key("workdir")),
    "workdir_is_a_file": Case("workdir", _cfg(), _path("a_file"), prepare=_a_file),
    "workdir_locked": Case("workdir", _cfg(), _key("in use by another run (pid"),
                           prepare=_hold_lock),
    "disk_full": Case("workdir", _cfg(), _key("no space left on device"), prepare=_disk_full),
}

INTERRUPTION = {
    "ctrl_c_before_writing": Case("interruption", _cfg(), _key("re-run the same command"),
                                  prepare=_ctrl_c_while_loading),
}


RESUME_FLAGS = {   # resume cases run against the finished run made by `history`
    "resume_other_reference": (_image("other"), _key("reference.image_sha256")),
    "resume_shape_change": (_cfg("--config.coarse_nerf.field.grid.n_levels=5",
                                 "--config.coarse_nerf.field.band_start_level=4"),
                            _key("shape key coarse_nerf.field.grid.n_levels: 6 -> 5")),
    "resume_other_prompt": (_cfg("--config.prompt=a blue toy"), _key("prompt: '' -> 'a blue")),
    "resume_damaged_provenance": (_cfg(), _key("provenance.json")),
}

TABLE = {**CONFIG, **IMAGE, **DEPTH, **WEIGHTS, **WORKDIR, **INTERRUPTION}


def _argv(case, files, wd) -> list:
  extra = [a.format(**files) for a in case.args(files)]
  return [*TINY, f"--config.workdir={wd}", *extra]


@pytest.mark.parametrize("name", sorted(TABLE))
def test_bad_input_gives_one_message_and_leaves_the_workdir(name, files, tmp_path, capsys,
                                                            monkeypatch):
  case, cleanups = TABLE[name], []
  wd = tmp_path / "run"
  if case.prepare is not None:
    wd = case.prepare(files, wd, monkeypatch, cleanups)
  before = _snapshot(wd)
  code, _, err = main(_argv(case, files, wd), capsys)
  monkeypatch.undo()
  after = _snapshot(wd)
  for cleanup in cleanups:
    cleanup()
  _assert_one_message(code, err, case.culprit(files))
  assert after == before
  if case.kind == "weights":
    assert "weights_only" not in err   # never a hint to turn the pickle guard off


def test_table_spans_every_input_class():
  kinds = {c.kind for c in TABLE.values()} | {"resume"}
  assert kinds == {"config", "image", "depth", "weights", "workdir", "resume", "interruption"}
  assert len(TABLE) + len(RESUME_FLAGS) >= 25


# ------------------------------------------------------------- a real run, interrupted

@dataclasses.dataclass
class History:
  workdir: Path
  code: int                 # exit status of the interrupted invocation
  stderr: str
  stopped_at: int
  rows_after_interrupt: list
  checkpointed: bool        # the step reached had a checkpoint right after the interrupt
  resumed_out: str
  final_argv: list
  handler_after: object     # the SIGINT handler once the interrupted run returned


def _rows(wd: Path) -> list:
  path = wd / "coarse_nerf" / "metrics.jsonl"
  if not path.exists():
    return []
  return [json.loads(line)["step"] for line in path.read_text().splitlines()]


def _sigint_after(wd: Path, rows: int, finished: threading.Event) -> None:
  """Sends this process a real SIGINT once `rows` steps are logged (the loop is running)."""
  deadline = time.time() + 600
  while len(_rows(wd)) < rows and not finished.is_set() and time.time() < deadline:
    time.sleep(0.02)
  if not finished.is_set():
    os.kill(os.getpid(), signal.SIGINT)


def _interrupted_run(argv, wd: Path) -> tuple:
  """The CLI's main on argv, stopped by SIGINT after two logged steps -> (code, stderr)."""
  finished = threading.Event()
  sender = threading.Thread(target=_sigint_after, args=(wd, 2, finished))
  err = io.StringIO()
  sender.start()
  try:
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
      code = run.main(argv)
  finally:
    finished.set()
    sender.join()
  return code, err.getvalue()


LONG = 100_000   # steps of the run that SIGINT stops


@pytest.fixture(scope="module")
def history(files, tmp_path_factory) -> History:
  """A tiny reference-only run stopped by a real SIGINT (delivered to this process, handled
  by the loop's handler in the main thread), then resumed to the end with more steps."""
  wd = tmp_path_factory.mktemp("history") / "run"
  argv = [*TINY, f"--config.workdir={wd}", f"--config.data.image={files['good']}"]
  with default_sigint():   # the suite may have inherited SIGINT ignored
    code, err = _interrupted_run(argv + [f"--config.coarse_nerf.train.steps={LONG}",
                                         "--config.coarse_nerf.train.checkpoint_every=1000"], wd)
    handler_after = signal.getsignal(signal.SIGINT)
  rows = _rows(wd)
  stopped = max(rows)
  checkpointed = (wd / "coarse_nerf" / "checkpoints" / str(stopped)).is_dir()
  final = argv + [f"--config.coarse_nerf.train.steps={stopped + 2}"]
  out = io.StringIO()
  with contextlib.redirect_stdout(out):
    assert run.main(final) == 0
  return History(wd, code, err, stopped, rows, checkpointed, out.getvalue(), final,
                 handler_after)


def test_sigint_checkpoints_the_step_reached_and_says_how_to_resume(history):
  assert history.code == 130, history.stderr[-3000:]
  assert "Traceback" not in history.stderr
  lines = [x for x in history.stderr.splitlines() if x.startswith(("interrupted:", "error:"))]
  n = history.stopped_at
  assert lines == [f"interrupted: [coarse_nerf] interrupted at step {n} of {LONG}; re-run the "
                   f"same command to resume from step {n}"], history.stderr[-3000:]
  assert history.checkpointed
  assert history.rows_after_interrupt == list(range(1, n + 1))
  assert history.handler_after is signal.default_int_handler   # the loop's handler removed


def test_lock_held_by_another_process_is_named(files, tmp_path, capsys):
  """A real second process holds the work dir's lock; the run names its pid and command."""
  wd = tmp_path / "run"
  holder = subprocess.Popen(
      [sys.executable, "-c", "import sys, time; from dc3d_jax import workdir; "
       "workdir.Lock(sys.argv[1]).acquire('python -m experiments.run --config=theirs.py'); "
       "print('locked', flush=True); time.sleep(120)", str(wd)],
      cwd=ROOT, stdout=subprocess.PIPE, text=True)
  try:
    assert holder.stdout.readline().strip() == "locked"
    before = _snapshot(wd)
    code, _, err = main([*TINY, f"--config.workdir={wd}", f"--config.data.image={files['good']}"],
                        capsys)
    _assert_one_message(code, err, f"in use by another run (pid {holder.pid}")
    assert "--config=theirs.py" in err and _snapshot(wd) == before
  finally:
    holder.kill()
    holder.wait()


def test_resume_continues_from_the_checkpoint_without_duplicate_rows(history):
  n = history.stopped_at
  assert f"resumed from the checkpoint at step {n}" in history.resumed_out
  assert _rows(history.workdir) == list(range(1, n + 3))
  assert not (history.workdir / workdir.LOCK).exists()   # released at the end


def test_wall_time_counts_every_invocation(history):
  lines = (history.workdir / workdir.INVOCATIONS).read_text().splitlines()
  logged = [json.loads(line) for line in lines]
  assert [r["outcome"] for r in logged] == ["interrupted", "done"]
  metrics = json.loads((history.workdir / "metrics.json").read_text())
  assert metrics["wall_time_s"] == pytest.approx(sum(r["wall_s"] for r in logged), abs=0.2)
  assert metrics["wall_time_s"] > logged[-1]["wall_s"]


def test_a_complete_run_is_reported_and_not_redone(history, capsys):
  before = _snapshot(history.workdir)
  code, out, err = main(history.final_argv, capsys)
  assert code == 0, err
  assert "is complete" in out and '"steps": ' in out
  assert _snapshot(history.workdir) == before


@pytest.mark.parametrize("flag, complete", [
    ("--config.texture.train.steps=7", True),        # a stage after the last one run
    ("--config.coarse_nerf.train.log_every=3", False),   # the stage that ran
    ("--config.eval.orbit_views=7", False)])             # a run-wide section
def test_completeness_ignores_only_the_sections_of_stages_not_run(history, flag, complete,
                                                                  capsys):
  before = _snapshot(history.workdir)
  code, out, err = main([*history.final_argv, flag, "--check"], capsys)
  assert code == 0, err
  assert json.loads(out[out.index("{"):])["complete"] is complete, out
  assert _snapshot(history.workdir) == before


@pytest.mark.parametrize("name", sorted(RESUME_FLAGS))
def test_resume_refuses_other_inputs(name, history, files, tmp_path, capsys):
  args, culprit = RESUME_FLAGS[name]
  wd = history.workdir
  if name == "resume_damaged_provenance":
    wd = tmp_path / "copy"
    shutil.copytree(history.workdir, wd)
    (wd / workdir.PROVENANCE).write_text("{not json")
  steps = f"--config.coarse_nerf.train.steps={history.stopped_at + 2}"
  before = _snapshot(wd)
  code, _, err = main([*TINY, f"--config.workdir={wd}", steps, *args(files)], capsys)
  _assert_one_message(code, err, culprit(files))
  assert "--restart" in err
  assert _snapshot(wd) == before


def test_restart_moves_the_old_run_aside_and_starts_afresh(history, files, tmp_path, capsys,
                                                           monkeypatch):
  wd = tmp_path / "run"
  shutil.copytree(history.workdir, wd)
  old = _snapshot(wd)
  monkeypatch.setattr(pipeline, "_train_and_evaluate", lambda ctx, started: {"trained": True})
  argv = [*TINY, f"--config.workdir={wd}", *_image("other")(files)]
  code, out, err = main([*argv, "--restart"], capsys)
  assert code == 0, err
  (aside,) = [p for p in tmp_path.iterdir() if p.name.startswith("run.old-")]
  assert f"moved the previous run to {aside}" in out and _snapshot(aside) == old
  assert sorted(p.name for p in wd.iterdir()) == ["config.json", "invocations.jsonl",
                                                  "provenance.json", "reference"]
  sha = lambda d: json.loads((d / workdir.PROVENANCE).read_text())["reference"]["image_sha256"]
  assert sha(wd) != sha(aside)


@pytest.mark.parametrize("spec", ["configs/demo.py", "configs/dreamcraft3d.py",
                                  "configs/dreamcraft3d.py:quick"])
def test_every_key_of_the_shipped_configs_has_a_rule_and_a_meaning(spec):
  cfg = cli.load_config(cli.parse_args([f"--config={spec}"]))
  lines = pipeline.describe_config(cfg).splitlines()
  assert len(lines) > 90 and not [x for x in lines if "(no description)" in x]
  with cfg.unlocked():
    cfg.coarse_nerf.train.new_key = 1
  with pytest.raises(errors.ConfigError, match="coarse_nerf.train.new_key=1: no rule knows"):
    pipeline.validate(cfg)


def test_overrides_are_read_as_the_type_of_their_key():
  args = cli.parse_args(["--config=configs/dreamcraft3d.py", "--config.stages=coarse_nerf",
                         "--config.prompt=(1, 2)", "--config.data.recenter=false",
                         "--config.data.fill=1", "--config.coarse_nerf.loss.rgb=500",
                         "--config.coarse_nerf.train.resolutions", "(16,32)",
                         "--config.data.fill=0.5"])   # the last one wins
  cfg = cli.load_config(args)
  assert cfg.stages == ("coarse_nerf",) and cfg.prompt == "(1, 2)"
  assert cfg.data.recenter is False and cfg.data.fill == 0.5
  assert cfg.coarse_nerf.loss.rgb == (500,) and cfg.coarse_nerf.train.resolutions == (16, 32)
