"""Test-wide settings: JAX's persistent compilation cache (STYLE.md), CPU float32."""

import os
from pathlib import Path

import jax
import pytest

ROOT = Path(__file__).resolve().parents[1]

jax.config.update("jax_compilation_cache_dir", str(ROOT / ".jax_cache"))
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
os.environ.setdefault("TQDM_DISABLE", "1")


def pytest_collection_modifyitems(config, items):
  if any(d.platform == "gpu" for d in jax.devices()):
    return
  skip = pytest.mark.skip(reason="needs a GPU")
  for item in items:
    if "gpu" in item.keywords:
      item.add_marker(skip)


def tiny_config(workdir, steps: int = 4):
  """The reference config shrunk to seconds: 16² renders, a 6-level grid, all losses on."""
  from configs import dreamcraft3d
  cfg = dreamcraft3d.get_config("quick")
  with cfg.unlocked():
    cfg.workdir = str(workdir)
    cfg.guidance.prior_2d, cfg.guidance.prior_3d = "oracle", "none"
    cfg.data.image_size = 64
    t = cfg.coarse_nerf.train
    t.steps, t.resolutions, t.resolution_milestones = steps, (16,), ()
    t.log_every, t.checkpoint_every, t.sample_every = 1, 2, 1000
    f = cfg.coarse_nerf.field
    f.grid.update(n_levels=6, base_resolution=8, per_level_scale=1.5, log2_table_size=10)
    f.band_start_level, f.band_start_step, f.band_update_steps = 4, 2, 1
    cfg.coarse_nerf.render.update(num_steps_diagonal=48, samples_per_ray=16.0,
                                  prepass_samples_per_ray=24.0)
    n = cfg.coarse_neus   # its hash grid is coarse_nerf's
    n.train.update(steps=steps, resolutions=(16,), log_every=1, checkpoint_every=2,
                   sample_every=1000)
    n.render.update(num_steps_diagonal=48, samples_per_ray=16.0, prepass_samples_per_ray=24.0)
    cfg.guidance.oracle_resolution = 16
    cfg.eval.update(resolution=16, turntable_views=4, chunk_rays=128,
                    novel_azimuths_deg=(90.0, 180.0), novel_elevations_deg=(0.0,))
  return cfg


@pytest.fixture
def tiny_cfg(tmp_path):
  return tiny_config(tmp_path / "run")
