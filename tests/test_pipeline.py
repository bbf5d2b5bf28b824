"""The whole run: outputs a person can open, resume, and clear errors on bad input."""

import json
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest
from PIL import Image

from conftest import ROOT, tiny_config
from dc3d_jax import pipeline
from dc3d_jax.stages import coarse_nerf as cn
from dc3d_jax.stages.checkpoints import CheckpointStore


def _steps_logged(workdir: Path) -> list:
  lines = (workdir / "coarse_nerf" / "metrics.jsonl").read_text().splitlines()
  return [json.loads(line)["step"] for line in lines]


def test_run_writes_outputs_then_resumes(tmp_path):
  cfg = tiny_config(tmp_path / "run", steps=4)
  with cfg.unlocked():
    cfg.coarse_nerf.train.sample_every = 2
  results = pipeline.run(cfg, progress=False)
  w = Path(cfg.workdir)
  for rel in ("config.json", "metrics.json", "reference/rgba.png", "reference/depth.png",
              "coarse_nerf/turntable.mp4", "coarse_nerf/samples/step_000004.png"):
    assert (w / rel).is_file(), rel
  assert sorted(int(p.name) for p in (w / "coarse_nerf/checkpoints").iterdir()
                if p.name.isdigit()) == [2, 4]
  assert _steps_logged(w) == [1, 2, 3, 4]
  saved = json.loads((w / "metrics.json").read_text())
  assert saved["steps"] == 4 and saved["stage"] == "coarse_nerf"
  for key in ("novel_psnr", "novel_mask_iou", "high_psnr", "ref_psnr", "ref_mask_iou",
              "ref_ssim", "wall_time_s", "eval_kept_frac_min"):
    assert np.isfinite(saved[key]) and saved[key] == pytest.approx(results[key])
  # orbit_views=4: views 1..3 are novel; one elevated view.
  assert 0.0 <= saved["novel_mask_iou"] <= 1.0 and len(saved["novel_psnr_per_view"]) == 3
  assert len(saved["high_psnr_per_view"]) == 1
  with cfg.unlocked():
    cfg.coarse_nerf.train.steps = 6
  assert pipeline.run(cfg, progress=False)["steps"] == 6
  assert _steps_logged(w) == [1, 2, 3, 4, 5, 6]


def _final_params(workdir: Path, steps: int):
  store = CheckpointStore(workdir / "coarse_nerf" / "checkpoints")
  assert store.latest_step() == steps
  cfg = tiny_config(workdir, steps)
  from dc3d_jax.guidance import registry
  settings = cn.settings_from_config(cfg, registry.build(cfg, cn.NAME)[0], 1)
  state = store.restore(steps, cn.init_state(settings, jax.random.key(0)))
  store.close()
  return jax.device_get(state.params)


def test_resumed_run_equals_uninterrupted_run(tmp_path):
  """Keys come from (stream, step), so stopping at step 2 and resuming changes nothing."""
  pipeline.run(tiny_config(tmp_path / "straight", steps=4), progress=False)
  pipeline.run(tiny_config(tmp_path / "resumed", steps=2), progress=False)
  pipeline.run(tiny_config(tmp_path / "resumed", steps=4), progress=False)
  a = _final_params(tmp_path / "straight", 4)
  b = _final_params(tmp_path / "resumed", 4)
  diffs = jax.tree_util.tree_leaves(jax.tree_util.tree_map(
      lambda x, y: float(np.max(np.abs(x - y))), a, b))
  assert max(diffs) < 1e-6


def test_rgb_image_without_alpha_is_rejected(tmp_path, tiny_cfg):
  image = tmp_path / "photo.jpg"
  Image.fromarray(np.full((32, 32, 3), 128, np.uint8)).save(image)
  with tiny_cfg.unlocked():
    tiny_cfg.data.image = str(image)
  with pytest.raises(ValueError, match="oracle prior knows only its built-in object"):
    pipeline.run(tiny_cfg, progress=False)
  with tiny_cfg.unlocked():
    tiny_cfg.guidance.prior_2d = "none"
  with pytest.raises(ValueError, match=r"photo\.jpg.*remove_background"):
    pipeline.run(tiny_cfg, progress=False)


def test_unknown_stage_is_rejected(tiny_cfg):
  with tiny_cfg.unlocked():
    tiny_cfg.stages = ("coarse_nerf", "coarse_neuss")
  with pytest.raises(ValueError, match=r"unknown \['coarse_neuss'\]"):
    pipeline.run(tiny_cfg, progress=False)


@pytest.mark.parametrize("flag, message", [
    ("--config.coarse_nerf.loss.orientt=1", "orientt"),
    ("--config=configs/dreamcraft3d.py:bogus", "unknown variant 'bogus'"),
])
def test_cli_rejects_typos(flag, message, tmp_path):
  args = [sys.executable, "-m", "experiments.run", "--config=configs/demo.py",
          f"--config.workdir={tmp_path}"]
  args = [a for a in args if not (flag.startswith("--config=") and a.startswith("--config="))]
  proc = subprocess.run(args + [flag], cwd=ROOT, capture_output=True, text=True, timeout=120)
  assert proc.returncode != 0
  assert message in proc.stderr
  assert not (tmp_path / "config.json").exists()
