"""The stage chain: a contiguous run of stages, each starting from the previous one's final
state, handed over in process or read from a finished work dir (runner.load_final)."""

from pathlib import Path

import jax
import numpy as np
import pytest

from conftest import tiny_config
from dc3d_jax import errors, pipeline
from dc3d_jax.export import mesh_files
from dc3d_jax.stages import coarse_neus as neus
from dc3d_jax.stages.checkpoints import CheckpointStore


def _chain_config(workdir, stages):
  cfg = tiny_config(workdir, steps=2)
  with cfg.unlocked():
    cfg.stages = stages
    cfg.coarse_neus.train.steps = 2
  return cfg


def _final_neus_params(workdir: Path, cfg):
  settings = neus.settings_from_config(cfg, {}, 1)
  store = CheckpointStore(Path(workdir) / neus.NAME / "checkpoints")
  state = store.restore(2, neus.init_state(settings, jax.random.key(0)))
  store.close()
  return jax.device_get(state.params)


def _check_outputs(workdir: Path, results: dict):
  """Every stage's turntable; the last stage's asset (NeuS starts as a sphere, so it has a
  surface after 2 steps) and its geometry metrics."""
  for rel in ("coarse_nerf/turntable.mp4", "coarse_neus/turntable.mp4", "export/model.glb",
              "export/model.obj", "export/model.mtl", "export/model_albedo.png",
              "export/turntable.mp4"):
    assert (workdir / rel).is_file(), rel
  v, f, uv, texture = mesh_files.load_glb(workdir / "export" / "model.glb")
  assert len(f) == results["export"]["faces"] and texture.shape == (32, 32, 3)
  for key in ("chamfer", "volume_iou", "ref_psnr", "novel_psnr"):
    assert np.isfinite(results[key]), key
  assert any(key.startswith("fscore") for key in results)


def test_a_stage_without_its_finished_predecessor_is_refused_before_writing(tmp_path):
  cfg = _chain_config(tmp_path / "run", ("coarse_neus",))
  with pytest.raises(errors.ResumeError, match="coarse_nerf stage has not finished"):
    pipeline.run(cfg, progress=False)
  assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("stages, match", [(("coarse_neus", "coarse_nerf"), "contiguous run"),
                                           (("coarse_nerf",) * 2, "distinct names")])
def test_stages_must_be_a_contiguous_run_in_pipeline_order(tmp_path, stages, match):
  with pytest.raises(errors.ConfigError, match=match):
    pipeline.validate(_chain_config(tmp_path / "run", stages))


def test_starting_from_a_finished_work_dir_equals_the_in_process_hand_off(tmp_path):
  """NeuS trained from coarse_nerf's checkpoint in another work dir (init_from) ends with the
  same parameters as NeuS handed the state in process: the load restores the final state."""
  first = _chain_config(tmp_path / "a", ("coarse_nerf", "coarse_neus"))
  results = pipeline.run(first, progress=False)
  assert results["stage"] == neus.NAME
  _check_outputs(tmp_path / "a", results)
  second = _chain_config(tmp_path / "b", ("coarse_neus",))
  with second.unlocked():
    second.coarse_neus.init_from = str(tmp_path / "a")
  assert pipeline.run(second, progress=False)["stage"] == neus.NAME
  assert not (tmp_path / "b" / "coarse_nerf").exists()
  a, b = _final_neus_params(tmp_path / "a", first), _final_neus_params(tmp_path / "b", second)
  for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b), strict=True):
    np.testing.assert_array_equal(x, y)
