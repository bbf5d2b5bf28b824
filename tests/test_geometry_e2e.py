"""End to end on CPU through the oracle: coarse NeRF -> NeuS -> DMTet on the built-in object
(primitives.test_object), one pipeline.run, at small resolutions; then the exported GLB is
checked the way a glTF viewer would show it.

Settings (on top of conftest.tiny_config: 6-level hash grid, oracle 2D prior at 32²): 150
coarse-NeRF steps at 32² with its normal-based regularizers off (as configs/demo.py, for time),
80 NeuS steps at 32² (cosine anneal over the 80), 60 DMTet steps at 64² on a 48 tet grid (24
cells across the fitted box), the normal-consistency ramp scaled to the 60 steps.

Measured (2026-12-01, CPU; two runs gave the same figures): Chamfer 0.0290 of the GT
bounding-box diagonal (symmetric mean, eval/protocol), F-score 0.852 at 5% of the diagonal
(0.435 at 2%), GLB silhouette IoU 0.928 against the reference mask at 64². The asserted bounds:
Chamfer < 0.04 (+38%), F-score@0.05 > 0.75 (-12%), IoU >= 0.9 (the issue's figure). A shorter
chain (40 NeuS and 30 DMTet steps on a 32 grid, normal consistency 1 from step 1) measured
Chamfer 0.038, F@0.05 0.74 and IoU 0.883: the bounds fail for a chain that has not fitted. The
same GLB's mesh taken back to the training frame (Z-up, front +X) and seen from the same camera
has IoU 0.486: the test fails for a wrong glTF frame.

Time: 123 s with the geometry step not yet in the compilation cache, 89 s warm, on the 2-core
machine shared with other jobs (load average ~9).
"""

from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest
import trimesh
from PIL import Image

from configs import dreamcraft3d
from conftest import tiny_config
from dc3d_jax import cameras, pipeline, reference
from dc3d_jax.core.types import Camera
from dc3d_jax.geometry import primitives, rasterize

NERF_STEPS, NEUS_STEPS, GEOMETRY_STEPS = 150, 80, 60
SILHOUETTE_SIZE = 64


def _config(workdir):
  cfg = tiny_config(workdir, steps=NERF_STEPS)
  with cfg.unlocked():
    cfg.stages = ("coarse_nerf", "coarse_neus", "geometry")
    never = 10**6
    cfg.coarse_nerf.train.update(resolutions=(32,), log_every=10, checkpoint_every=never)
    for name in ("orient", "normal_smooth_2d", "normal_smooth_3d"):
      cfg.coarse_nerf.loss[name] = (0.0,)
    cfg.coarse_neus.train.update(steps=NEUS_STEPS, resolutions=(32,), log_every=10,
                                 checkpoint_every=never, sample_every=never)
    cfg.coarse_neus.render.cos_anneal_end = NEUS_STEPS
    g = cfg.geometry
    g.train.update(steps=GEOMETRY_STEPS, resolutions=(64,), log_every=5,
                   checkpoint_every=never, sample_every=never)
    g.tets.update(resolution=48, max_vertices=2**13, max_faces=2**14)
    scale = GEOMETRY_STEPS / 5000                      # (1000, 10, 1, 2000) -> (12, .., 24)
    s0, v0, v1, s1 = dreamcraft3d.get_config().geometry.loss.normal_consistency
    g.loss.normal_consistency = (int(s0 * scale), v0, v1, int(s1 * scale))
    cfg.guidance.oracle_resolution = 32
    cfg.eval.update(resolution=32, orbit_views=4)
  return cfg


def _front_camera(views, size: int) -> Camera:
  """The reference camera as a glTF viewer's default front view: on glTF's +Z axis at the
  reference distance, looking at the origin along -Z, image up = glTF +Y (c2w columns:
  right, up, backward, centre; written here, not taken from the export code)."""
  d = views.ref_distance
  c2w = jnp.array([[1.0, 0.0, 0.0, 0.0], [0.0, 1.0, 0.0, 0.0], [0.0, 0.0, 1.0, d],
                   [0.0, 0.0, 0.0, 1.0]], jnp.float32)
  return Camera(c2w=c2w, fovy=jnp.deg2rad(jnp.float32(views.fovy_deg)),
                elevation_deg=jnp.float32(0.0), azimuth_deg=jnp.float32(0.0),
                distance=jnp.float32(d), height=size, width=size)


def _glb_silhouette(path: Path, views, size: int) -> np.ndarray:
  """[size, size] bool coverage of the GLB as stored (glTF frame), from its +Z side."""
  scene = trimesh.load(path, force="mesh", process=False)
  vertices = np.asarray(scene.vertices, np.float32)
  mesh = primitives.Mesh(vertices, np.asarray(scene.faces, np.int32), np.zeros_like(vertices))
  return np.asarray(rasterize.render_mesh(mesh, _front_camera(views, size))["alpha"])[..., 0] > 0.5


def _reference_mask(workdir: Path, size: int) -> np.ndarray:
  rgba = np.asarray(Image.open(workdir / "reference" / "rgba.png"), np.float32) / 255.0
  arrays = reference.at_resolution({"rgba": rgba, "depth": None}, size)
  return np.asarray(arrays["mask"])[..., 0] > 0.5


@pytest.fixture(scope="module")
def chain(tmp_path_factory):
  cfg = _config(tmp_path_factory.mktemp("e2e") / "run")
  return cfg, pipeline.run(cfg, progress=False)


def test_exported_dmtet_mesh_is_close_to_the_ground_truth(chain):
  _, results = chain
  assert results["stage"] == "geometry" and results["steps"] == GEOMETRY_STEPS
  assert results["chamfer"] < 0.04
  assert results["fscore@0.05"] > 0.75


def test_glb_seen_from_gltf_front_matches_the_reference_silhouette(chain):
  cfg, _ = chain
  workdir = Path(cfg.workdir)
  views = cameras.ViewSettings.from_config(cfg.data)
  ours = _glb_silhouette(workdir / "export" / "model.glb", views, SILHOUETTE_SIZE)
  ref = _reference_mask(workdir, SILHOUETTE_SIZE)
  iou = (ours & ref).sum() / (ours | ref).sum()
  assert iou >= 0.9, iou
