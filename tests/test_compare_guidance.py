"""experiments/compare_guidance.py: the configs of the two arms and the summary. The runs
themselves are pipeline.run (tests/test_stage_chain.py, tests/test_data_object.py); here a
stand-in records each config and returns figures made from it."""

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from experiments import compare_guidance


def test_arms_differ_only_in_the_guidance_and_are_summarised(tmp_path, capsys, monkeypatch):
  seen = []

  def fake_run(cfg, progress=True):
    seen.append(cfg)
    guided = cfg.coarse_nerf.loss.sds_3d != (0.0,)
    return {"novel_psnr": 10.0 + cfg.seed + 2.0 * guided, "chamfer": 0.1, "other": 1.0}

  monkeypatch.setattr(compare_guidance.pipeline, "run", fake_run)
  out = tmp_path / "compare.json"
  record = compare_guidance.main([
      "--config=configs/dreamcraft3d.py:quick", "--objects=cow,duck", "--seeds=0,3",
      f"--root={tmp_path / 'runs'}", f"--out={out}", "--set", "guidance.prior_2d=none",
      "--set", "guidance.prior_3d=testbed", "--set", "coarse_neus.loss.sds_3d=0.5"])
  assert json.loads(out.read_text()) == json.loads(json.dumps(record))
  assert len(seen) == 8
  for cfg, run in zip(seen, record["runs"]):
    assert (cfg.data.object, cfg.seed) == (run["object"], run["seed"])
    assert cfg.workdir == str(tmp_path / "runs" / f"{run['object']}-s{run['seed']}-{run['arm']}")
    weights = [cfg[s].loss[k] for s in cfg.stages for k in ("sds_2d", "sds_3d")]
    if run["arm"] == "guided":
      assert cfg.guidance.prior_3d == "testbed"         # --set reaches the run
      assert cfg.coarse_neus.loss.sds_3d == (0.5,) and cfg.coarse_nerf.loss.sds_3d == (0.1,)
    else:
      assert all(w == (0.0,) for w in weights)
      assert (cfg.guidance.prior_2d, cfg.guidance.prior_3d) == ("none", "none")
      assert cfg.coarse_nerf.train.steps == seen[0].coarse_nerf.train.steps
    assert set(run["metrics"]) == {"novel_psnr", "chamfer"}    # the headline only
  psnr = record["summary"]["guided"]["novel_psnr"]
  assert psnr["n"] == 4 and np.isclose(psnr["mean"], 12.0 + 1.5)
  assert np.isclose(psnr["std"], np.std([12, 15, 12, 15]))
  assert record["summary"]["unguided"]["novel_psnr"]["mean"] == 11.5
  table = capsys.readouterr().out
  assert "| guided | 13.5 ± 1.5 | 0.1 ± 0 |" in table


def test_one_arm_runs_alone_and_a_bad_arm_is_refused(tmp_path, monkeypatch):
  seen = []
  monkeypatch.setattr(compare_guidance.pipeline, "run",
                      lambda cfg, progress=True: seen.append(cfg) or {"novel_psnr": 1.0})
  record = compare_guidance.main([
      "--config=configs/dreamcraft3d.py:quick", "--objects=cow", "--seeds=0,1",
      f"--root={tmp_path}", f"--out={tmp_path / 'o.json'}", "--arms=unguided"])
  assert [r["arm"] for r in record["runs"]] == ["unguided", "unguided"]
  assert set(record["summary"]) == {"unguided"}
  assert all(cfg.guidance.prior_3d == "none" for cfg in seen)
  with pytest.raises(SystemExit):
    compare_guidance.main(["--config=configs/dreamcraft3d.py:quick", "--objects=cow",
                           f"--out={tmp_path / 'o.json'}", "--arms=guided,off"])


def test_sample_grid_puts_each_runs_last_rgb_views_beside_the_reference(tmp_path, monkeypatch):
  """Each stand-in run writes a reference and two sample grids in runner.visual_row's layout
  (one colour per arm and azimuth); the PNG beside --out must hold the newest one's RGB cells
  in order: reference | unguided 0°..270° | guided 0°..270°."""
  from dc3d_jax.io import writers
  from dc3d_jax.stages import runner
  n, cell = len(runner.SAMPLE_AZIMUTHS_DEG), 6
  colour = lambda arm, r: np.array([0.2 * r, 0.9 if arm == "guided" else 0.1, 0.5])

  def fake_run(cfg, progress=True):
    wd = Path(cfg.workdir)
    arm = "guided" if cfg.guidance.prior_3d != "none" else "unguided"
    writers.save_png(wd / "reference" / "rgba.png", np.zeros((cell, cell, 4)))
    for step, shift in ((100, 0.5), (200, 0.0)):          # the newest must be the one read
      rows = [[np.full((cell, cell, 3), colour(arm, r) + shift), np.zeros((cell, cell, 3))]
              for r in range(n)]
      writers.save_png(wd / "coarse_nerf" / "samples" / f"step_{step:06d}.png",
                       writers.image_grid([c for row in rows for c in row], 2))
    return {"novel_psnr": 1.0}

  monkeypatch.setattr(compare_guidance.pipeline, "run", fake_run)
  compare_guidance.main([
      "--config=configs/dreamcraft3d.py:quick", "--objects=cow", "--seeds=0",
      f"--root={tmp_path}", f"--out={tmp_path / 'o.json'}", "--set",
      "guidance.prior_2d=none", "--set", "guidance.prior_3d=oracle",
      "--set", 'stages=("coarse_nerf",)'])
  grid = np.asarray(Image.open(tmp_path / "o.png").convert("RGB"), np.float32) / 255.0
  pitch = cell + writers.GRID_GAP
  assert grid.shape == (cell, (1 + 2 * n) * pitch - writers.GRID_GAP, 3)
  np.testing.assert_allclose(grid[:, :cell], 1.0)          # the transparent reference: white
  for k, (arm, r) in enumerate([(a, r) for a in ("unguided", "guided") for r in range(n)]):
    got = grid[:, (1 + k) * pitch:][:, :cell]
    np.testing.assert_allclose(got, np.broadcast_to(colour(arm, r), got.shape), atol=1 / 255)


def test_the_unguided_arm_of_a_bsd_texture_stage_runs_no_bsd(tmp_path):
  """BSD's base model is texture.prior.base, not a prior slot: the unguided arm must also
  leave the BSD kind, or it would still be guided."""
  args = compare_guidance.argparse.Namespace(
      config="configs/demo.py", root=str(tmp_path),
      set=["stages=texture", f"texture.init_from={tmp_path / 'geometry_run'}"])
  guided = compare_guidance.run_config(args, "cow", 0, "guided")
  unguided = compare_guidance.run_config(args, "cow", 0, "unguided")
  assert guided.texture.guidance.kind == "bsd" and guided.texture.prior.base == "testbed"
  assert unguided.texture.guidance.kind == "sds"
  assert unguided.texture.loss.sds_2d == unguided.texture.loss.sds_3d == (0.0,)
  assert (unguided.guidance.prior_2d, unguided.guidance.prior_3d) == ("none", "none")
