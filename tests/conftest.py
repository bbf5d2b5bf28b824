"""Test-wide settings: JAX's persistent compilation cache (docs/ARCHITECTURE.md "Tests"), CPU float32."""

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
    cfg.eval.update(resolution=16, orbit_views=4, chunk_rays=128, high_azimuths_deg=(90.0,),
                    lpips=False, geometry_points=2000, volume_resolution=16)
    cfg.export.update(mesh_resolution=32, texture_size=32)
  return cfg


@pytest.fixture
def tiny_cfg(tmp_path):
  return tiny_config(tmp_path / "run")


@pytest.fixture(scope="session")
def lpips_params():
  """LPIPS-AlexNet weights; fetched into assets/ once if missing (the project's own set-up step,
  as `make test` runs it), or read from $DC3D_LPIPS."""
  import importlib.util
  from dc3d_jax.eval import lpips
  path = lpips.default_weights_path()
  if not path.is_file() and lpips.WEIGHTS_ENV not in os.environ:
    spec = importlib.util.spec_from_file_location("assets_lpips",
                                                  ROOT / "scripts" / "assets_lpips.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.fetch_lpips(path.parent)
  return lpips.load_lpips(path)


@pytest.fixture(scope="session")
def tet_grid_128():
  """The default (reference) tet grid, built once per session and placed on the device."""
  from dc3d_jax.geometry import tets
  return jax.device_put(tets.tet_grid(128))
