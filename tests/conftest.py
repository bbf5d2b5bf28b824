"""Test-wide settings: XLA's CPU flags, JAX's persistent compilation cache
(docs/ARCHITECTURE.md "Tests"), CPU float32, the xdist fixture groups."""

import os
from pathlib import Path

# XLA's CPU backend with its older elemental fusion emitters instead of the MLIR fusion
# emitters: the suite is compile-bound (tiny shapes, hundreds of distinct jits), and these
# compile faster: 122-126 -> 85-91 s cold for the coarse/NeuS step benchmarks and
# test_coarse_nerf.py (docs/ARCHITECTURE.md "Tests"). Runs outside the tests keep XLA's
# default (their long step loops are not faster this way:
# benchmarks/results/xla_fusion_emitters_ab_cpu.json). Set before jax is imported;
# subprocesses the tests start inherit it.
TEST_XLA_FLAGS = "--xla_cpu_use_fusion_emitters=false"
os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {TEST_XLA_FLAGS}".strip()

import jax  # noqa: E402  (after XLA_FLAGS)
import pytest

ROOT = Path(__file__).resolve().parents[1]

jax.config.update("jax_compilation_cache_dir", str(ROOT / ".jax_cache"))
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
os.environ.setdefault("TQDM_DISABLE", "1")


# Modules whose tests share an expensive session- or module-scoped fixture. `make test` runs
# `-n 2 --dist loadgroup`: each group's tests run on one worker, so the fixture is built once
# (xdist's default scheduling split them, and both workers built conftest.stage_chain, ~50 s
# each); every other test is its own unit, as with `--dist load`.
FIXTURE_GROUPS = {
    "test_coarse_neus.py": "stage_chain", "test_geometry.py": "stage_chain",
    "test_geometry_e2e.py": "e2e_chain", "test_cli_priors.py": "cli_models",
    "test_precision.py": "precision_models", "test_sd_guidance.py": "sd_models",
    "test_texture.py": "texture_stage", "test_coarse_nerf.py": "nerf_stage",
    "test_run_contract.py": "run_history",
}


def pytest_xdist_make_scheduler(config, log):
  """`--dist loadgroup` with FIXTURE_GROUPS as the groups. xdist's own loadgroup marks a group
  by suffixing the test's node id, which pytest 9 no longer reads back (every test then
  became its own group); a scheduler that maps modules to groups needs no marker. xdist's
  scope scheduling hands out the largest groups first (--loadscope-reorder, its default)."""
  if config.getvalue("dist") != "loadgroup":
    return None
  from xdist.scheduler import LoadScopeScheduling

  class FixtureGroupScheduling(LoadScopeScheduling):
    def _split_scope(self, nodeid: str) -> str:
      return FIXTURE_GROUPS.get(nodeid.split("::")[0].rsplit("/", 1)[-1], nodeid)

  return FixtureGroupScheduling(config, log)


def pytest_collection_modifyitems(config, items):
  if any(d.platform == "gpu" for d in jax.devices()):
    return
  skip = pytest.mark.skip(reason="needs a GPU")
  for item in items:
    if "gpu" in item.keywords:
      item.add_marker(skip)


def tiny_config(workdir, steps: int = 4):
  """The reference config shrunk to seconds: 16² renders, a 6-level grid, all losses on
  (the geometry stage: a 32 tet grid)."""
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
    g = cfg.geometry      # its hash grid is coarse_nerf's, its colour MLP coarse_neus's
    g.train.update(steps=steps, resolutions=(16,), log_every=1, checkpoint_every=2,
                   sample_every=1000)
    g.tets.update(resolution=32, max_vertices=2**12, max_faces=2**13)
    cfg.guidance.oracle_resolution = 16
    cfg.eval.update(resolution=16, orbit_views=4, chunk_rays=128, high_azimuths_deg=(90.0,),
                    lpips=False, geometry_points=2000, volume_resolution=16)
    cfg.export.update(mesh_resolution=32, texture_size=32)
  return cfg


@pytest.fixture(scope="session")
def stage_chain(tmp_path_factory):
  """The coarse NeRF and the NeuS trained 2 steps each through the in-process hand-off (tiny
  config, oracle prior, every cheap NeuS term on): a namespace with the run context (its
  stages list geometry too), and the two stages' Handoffs. Shared by the NeuS and geometry
  tests, so the chain trains once per session."""
  from types import SimpleNamespace
  from dc3d_jax import pipeline
  from dc3d_jax.stages import coarse_nerf_run, coarse_neus_run
  cfg = tiny_config(tmp_path_factory.mktemp("chain") / "run", steps=2)
  with cfg.unlocked():
    cfg.stages = ("coarse_nerf", "coarse_neus", "geometry")
    # Every term the NeuS step can compute cheaply: the reference's plus eikonal and the 2D
    # normal smoothness (normal_smooth_3d's jittered normals are tested in test_neus_render).
    cfg.coarse_neus.loss.update(eikonal=(0.1,), normal_smooth_2d=(1.0,))
    # The geometry stage's terms that are 0 in the reference, so that all are exercised.
    cfg.geometry.loss.update(depth_rel=(0.05,), laplacian=(0.1,))
  ctx = pipeline.open_context(cfg, progress=False)
  nerf = coarse_nerf_run.run(ctx)
  return SimpleNamespace(ctx=ctx, nerf=nerf, neus=coarse_neus_run.run(ctx, nerf))


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
