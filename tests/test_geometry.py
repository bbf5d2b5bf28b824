"""The geometry (DMTet) stage: the NeuS -> DMTet warm start (carried parameters bit for bit; the
surface at the default 128 grid against PyMCubes' marching cubes of the NeuS SDF), which prior
reads what on steps 0..7, the normal-consistency schedule, a 2-step run through the
in-process hand-off after 2 coarse-NeRF and 2 NeuS steps (conftest.stage_chain) with the
deformation bound, and the same 2 steps as a pipeline run from the chain's finished work dir
(geometry.init_from: same parameters, exported mesh, metrics, resume)."""

import dataclasses
import json

import jax
import jax.numpy as jnp
import mcubes
import numpy as np
import pytest

from configs import dreamcraft3d
from conftest import tiny_config
from dc3d_jax.core import chunking, schedules
from dc3d_jax.errors import ResumeError
from dc3d_jax import pipeline
from dc3d_jax.geometry import mesh_ops, tets
from dc3d_jax.guidance import registry
from dc3d_jax.stages import coarse_neus as neus
from dc3d_jax.stages import geometry, geometry_run, substeps
from dc3d_jax.stages.checkpoints import CheckpointStore
from test_dmtet_init import _point_mesh_distance, _surface_points


def _bits(tree):
  return [np.asarray(a).view(np.uint8) for a in jax.tree_util.tree_leaves(jax.device_get(tree))]


def _identical(a, b) -> bool:
  return all(np.array_equal(x, y) for x, y in zip(_bits(a), _bits(b), strict=True))


def _settings(cfg, stage=geometry):
  return stage.settings_from_config(cfg, registry.build(cfg, stage.NAME)[0], 1)


@pytest.fixture(scope="module")
def bumpy_neus(stage_chain):
  """The chain's NeuS state with its hash table redrawn U(-0.3, 0.3): the SDF becomes the
  radius-0.5 sphere with bumps of ±0.045 at the hash grid's scales (a shape that the tet grid
  must follow, unlike the sphere NeuS starts from)."""
  state = stage_chain.neus.state
  table = 0.3 * jax.random.uniform(jax.random.key(1), state.params["hash_table"].shape,
                                   minval=-1.0, maxval=1.0)
  return state.replace(params={**state.params, "hash_table": table}), stage_chain.neus.settings


def _marching_cubes(sdf_fn, bbox, samples):
  lin = [np.linspace(bbox[0, k], bbox[1, k], samples) for k in range(3)]
  points = np.stack(np.meshgrid(*lin, indexing="ij"), -1).reshape(-1, 3)
  volume = chunking.map_on_host(sdf_fn, points, 2**16).reshape((samples,) * 3)
  v, f = mcubes.marching_cubes(-volume, 0.0)     # PyMCubes: positive inside
  return bbox[0] + v * (bbox[1] - bbox[0]) / (samples - 1), f.astype(np.int64)


def test_warm_start_carries_the_texture_and_fits_the_neus_surface(bumpy_neus, tet_grid_128):
  neus_state, neus_settings = bumpy_neus
  cfg = tiny_config("unused")
  with cfg.unlocked():
    cfg.geometry.tets.update(resolution=128, max_vertices=2**16, max_faces=2**17)
  settings = _settings(cfg)
  state = geometry.convert_from(neus_state, neus_settings, settings, None, tet_grid_128)
  for name in geometry.CARRIED:
    assert _identical(state.params[name], neus_state.params[name]), name
  assert not np.any(np.asarray(state.params["deformation"]))
  assert int(state.step) == 0 and set(state.params) == set(geometry.PARAM_GROUPS)
  sdf_fn = geometry.neus_sdf_fn(neus_state, neus_settings)
  bbox = np.asarray(state.buffers["bbox"], np.float64)
  corners = np.array([bbox[0], bbox[1]], np.float32)    # the grid's first and last vertex
  np.testing.assert_allclose(np.asarray(state.params["sdf"])[[0, -1]], sdf_fn(corners),
                             rtol=1e-6)
  v, f = geometry.extract_mesh(state, settings, grid=tet_grid_128)
  h = (bbox[1] - bbox[0]).max() / tet_grid_128.cells_per_axis           # ≈ 0.0196
  radius = np.linalg.norm(v, axis=-1)
  assert radius.min() < 0.48 and radius.max() > 0.52                    # the bumps are there
  # Marching cubes at twice the lattice density over the same box. Both surfaces are linear
  # interpolants of the same SDF, whose bumps are a few lattice edges wide, so they differ by
  # O(h² κ) on average and by a fraction of h where a bump is lattice-sized. Measured: ours
  # -> MC mean 4.8e-4 / max 3.5e-3, MC -> ours mean 5.7e-4 / max 6.3e-3. The bounds (1e-3 on
  # the means, h / 2 on the maxima) fail for a box off by a fifth of a cell, a flipped sign,
  # or an SDF that is not the NeuS field's.
  mc_v, mc_f = _marching_cubes(sdf_fn, bbox, 2 * tet_grid_128.cells_per_axis + 1)
  rng = np.random.default_rng(0)
  d_ours = _point_mesh_distance(_surface_points(v, f, 1500, rng), mc_v, mc_f)
  d_mc = _point_mesh_distance(_surface_points(mc_v, mc_f, 1500, rng), v, f)
  assert d_ours.mean() < 1e-3 and d_mc.mean() < 1e-3
  assert d_ours.max() < 0.5 * h and d_mc.max() < 0.5 * h


def test_warm_start_needs_a_neus_state(stage_chain):
  settings = _settings(stage_chain.ctx.cfg)
  with pytest.raises(ResumeError, match="coarse-NeuS TrainState"):
    geometry.convert_from(stage_chain.nerf.state, stage_chain.neus.settings, settings, None)
  with pytest.raises(ResumeError, match="'coarse_neus' before 'geometry'"):
    geometry_run.run(stage_chain.ctx, stage_chain.nerf)


@dataclasses.dataclass(frozen=True)
class _Spy:
  """A guidance term whose loss is the mean of the images it is given."""
  tag: str

  def loss(self, params, images, cams, step, key):
    return jnp.mean(images), {}


def test_the_2d_prior_reads_normal_maps_on_three_steps_in_four():
  cfg = tiny_config("unused")
  with cfg.unlocked():
    cfg.guidance.prior_3d = "oracle"
  settings = _settings(cfg)
  assert settings.n_rgb == 4
  # The oracle's normal-map variant compares with the ground truth's normal map.
  assert settings.normal_guidance["sds_2d"].prior.target == "normal"
  assert settings.guidance["sds_2d"].prior.target == "rgb"
  spies = dataclasses.replace(settings, guidance={"sds_2d": _Spy("2d"), "sds_3d": _Spy("3d")},
                              normal_guidance={"sds_2d": _Spy("2d normal")})
  images = {"rgb": jnp.full((1, 4, 4, 3), 0.25), "comp_normal": jnp.full((1, 4, 4, 3), 0.75)}
  params = {"sds_2d": None, "sds_3d": None}
  seen = []
  for step in range(8):
    parts = geometry.parts_at(step, "accumulate", settings)
    overrides = geometry.guidance_inputs(images, parts[-1], spies)
    terms, _ = substeps.guidance_terms(spies, images["rgb"], None, params, jax.random.key(0),
                                       step, geometry.NAME, overrides=overrides)
    assert parts[:-1] == ("ref", "guidance")
    seen.append((parts[-1], float(terms["sds_2d"]), float(terms["sds_3d"])))
  rgb, normal = ("rgb", 0.25, 0.25), ("normal", 0.75, 0.25)          # Zero123: always RGB
  assert seen == [rgb, normal, normal, normal, rgb, normal, normal, normal]


def test_normal_consistency_schedule():
  weight = dreamcraft3d.get_config().geometry.loss.normal_consistency
  values = [float(schedules.scalar(weight, s)) for s in (0, 1000, 1500, 2000, 3000)]
  np.testing.assert_allclose(values, [10.0, 10.0, 5.5, 1.0, 1.0], rtol=1e-6)


@pytest.fixture(scope="module")
def geometry_steps(stage_chain):
  """(the state the warm start makes, the Handoff after 2 geometry steps) in the chain's work
  dir, through the in-process hand-off from the chain's NeuS."""
  ctx, previous = stage_chain.ctx, stage_chain.neus
  settings = _settings(ctx.cfg)
  start = geometry.convert_from(previous.state, previous.settings, settings, None,
                                geometry.tet_grid(settings))
  return jax.device_get(start), geometry_run.run(ctx, previous)


def test_two_geometry_steps_after_nerf_and_neus(stage_chain, geometry_steps):
  ctx = stage_chain.ctx
  settings = _settings(ctx.cfg)
  grid = geometry.tet_grid(settings)
  start, out = geometry_steps
  assert isinstance(out.settings, geometry.Settings) and int(out.state.step) == 2
  assert int(out.state.skipped) == 0
  rows = [json.loads(line) for line in
          (ctx.workdir / geometry.NAME / "metrics.jsonl").read_text().splitlines()]
  assert [r["step"] for r in rows] == [1, 2]
  rgb_m, normal_m = rows
  assert settings.active == {"rgb", "mask", "depth_rel", "sds_2d", "sds_3d",
                             "normal_consistency", "laplacian"}
  losses = lambda m: {k[len("loss/"):] for k in m if k.startswith("loss/")}
  # Step 0 (RGB): every active term but sds_3d (prior_3d is "none"); step 1 (normal maps): no
  # reference-view loss, and the 2D prior's term logged as sds_2d_normal.
  assert losses(rgb_m) == settings.active - {"sds_3d"}
  assert losses(normal_m) == {"sds_2d_normal", "normal_consistency", "laplacian"}
  for m in rows:
    assert all(np.isfinite(v) for v in m.values())
    assert m["mesh_overflow"] == 0 and m["raster_overflow/guidance"] == 0
  assert rgb_m["raster_overflow/ref"] == 0 and 20 <= rgb_m["sds_2d/t"] <= 500
  # The mesh terms count once per substep, as the reference: 2x the start mesh's value.
  v, f = geometry.extract_mesh(start, settings, grid=grid)
  nc = float(mesh_ops.mesh_normal_consistency(jnp.asarray(v), jnp.asarray(f)))
  assert rgb_m["loss/normal_consistency"] == pytest.approx(2 * nc, rel=1e-5)
  assert rgb_m["mesh_faces"] == f.shape[0] > 1000
  end = jax.device_get(out.state.params)
  for name in geometry.PARAM_GROUPS:
    moved = jax.tree_util.tree_map(lambda a, b: float(np.max(np.abs(a - b))), end[name],
                                   start.params[name])
    assert all(v > 0 for v in jax.tree_util.tree_leaves(moved)), name
  # The hand-off's mesh and albedo (what export reads).
  v, f = geometry.extract_mesh(out.state, out.settings, grid=grid)
  box = np.asarray(out.state.buffers["bbox"])
  assert f.shape[0] > 1000 and np.all(v >= box[0] - 1e-6) and np.all(v <= box[1] + 1e-6)
  albedo = geometry.albedo_fn(out.state, out.settings)(v[:100])
  assert albedo.shape == (100, 3) and np.all((albedo > 0) & (albedo < 1))
  # Each vertex stays within (1/N)·(box extent) of its lattice position (reference: tanh(δ)/N
  # in the unit cube), however far δ moved.
  lattice = grid.vertices * (box[1] - box[0]) + box[0]
  moved = np.abs(tets.deformed_vertices(grid, end["deformation"], box) - lattice)
  assert np.all(moved <= (box[1] - box[0]) / grid.resolution + 1e-6) and moved.max() > 0


def test_geometry_from_a_finished_neus_work_dir_equals_the_in_process_hand_off(
    stage_chain, geometry_steps, tmp_path):
  """A run of stages=("geometry",) whose geometry.init_from is the chain's work dir (where
  NeuS finished) ends with the in-process hand-off's parameters bit for bit, leaves the
  turntable, the exported DMTet mesh and the metrics; re-running it is reported complete."""
  cfg = stage_chain.ctx.cfg.copy_and_resolve_references()
  with cfg.unlocked():
    cfg.workdir, cfg.stages = str(tmp_path / "run"), ("geometry",)
    cfg.geometry.init_from = str(stage_chain.ctx.workdir)
  results = pipeline.run(cfg, progress=False)
  assert results["stage"] == geometry.NAME and results["steps"] == 2
  run = tmp_path / "run"
  assert not (run / neus.NAME).exists()
  for rel in ("geometry/turntable.mp4", "export/model.glb", "export/model.obj"):
    assert (run / rel).is_file(), rel
  assert np.isfinite(results["chamfer"]) and results["export"]["faces"] > 1000
  settings = _settings(cfg)
  store = CheckpointStore(run / geometry.NAME / "checkpoints")
  loaded = store.restore(2, geometry.init_state(settings, jax.random.key(0)))
  store.close()
  assert _identical(loaded.params, geometry_steps[1].state.params)
  assert pipeline.run(cfg, progress=False) == results        # complete: nothing redone


def test_kept_frac_reports_a_mesh_over_its_budget():
  from dc3d_jax.geometry.marching_tets import PaddedMesh
  mesh = lambda n_v, n_f: PaddedMesh(
      vertices=jnp.zeros((50, 3)), faces=jnp.zeros((100, 3), jnp.int32),
      vertex_mask=jnp.zeros(50, bool), face_mask=jnp.zeros(100, bool),
      num_vertices=jnp.int32(n_v), num_faces=jnp.int32(n_f), overflow=jnp.bool_(False))
  assert float(geometry.mesh_kept_frac(mesh(40, 90))) == 1.0
  assert float(geometry.mesh_kept_frac(mesh(40, 400))) == 0.25       # faces over budget
  assert float(geometry.mesh_kept_frac(mesh(200, 90))) == 0.25       # vertices over budget
