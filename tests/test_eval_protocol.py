"""The evaluation protocol (dc3d_jax.eval.protocol) on the ground-truth toy at tiny sizes: which
views are scored against what. (CLIP and contextual distance through the protocol are tested
in test_eval_networks.py, next to their tiny models.)"""

import jax
import numpy as np
import pytest

from dc3d_jax import cameras
from dc3d_jax.eval import protocol
from dc3d_jax.geometry import primitives, rasterize

SIZE = 32
SETTINGS = protocol.ProtocolSettings(size=SIZE, orbit_views=8, high_azimuths_deg=(0.0, 180.0),
                                     lpips_size=64, contextual_size=32, geometry_points=5000,
                                     volume_resolution=32)
VIEWS = cameras.ViewSettings()


@pytest.fixture(scope="module")
def toy():
  return primitives.test_object()


def _renderer(mesh, blank_reference_view=False):
  """render_fn of a mesh; optionally an empty white image at the reference pose."""
  def render_fn(camera):
    out = jax.device_get(rasterize.render_mesh(mesh, camera))
    if blank_reference_view and abs(float(camera.azimuth_deg)) < 1e-3 \
        and abs(float(camera.elevation_deg)) < 1e-3:
      return {"rgb": np.ones_like(out["rgb"]), "opacity": np.zeros_like(out["alpha"])}
    return {"rgb": out["rgb"], "opacity": out["alpha"]}
  return render_fn


def _reference_rgba(mesh):
  out = jax.device_get(rasterize.render_mesh(mesh, cameras.reference_camera(VIEWS, SIZE, SIZE)))
  return np.concatenate([out["rgb"], out["alpha"]], -1)


def test_orbit_starts_at_the_reference_pose():
  orbit = protocol.orbit_cameras(VIEWS, SETTINGS)
  ref = cameras.reference_camera(VIEWS, SIZE, SIZE)
  np.testing.assert_allclose(orbit.c2w[0], ref.c2w, atol=1e-6)
  np.testing.assert_allclose(np.diff(np.asarray(orbit.azimuth_deg)) % 360.0, 45.0, atol=1e-4)
  high = protocol.high_cameras(VIEWS, SETTINGS)
  np.testing.assert_allclose(high.elevation_deg, 30.0)


def test_novel_views_exclude_the_reference_view(toy, lpips_params):
  # The prediction equals the GT everywhere except at the reference pose, where it is empty:
  # every novel and elevated view is perfect, the reference view is not.
  models = protocol.EvalModels(lpips=lpips_params)
  out = protocol.evaluate(_renderer(toy, blank_reference_view=True), _reference_rgba(toy),
                          VIEWS, SETTINGS, models, gt_mesh=toy,
                          pred_mesh=(toy.vertices, toy.faces))
  for prefix, n in (("novel", 7), ("high", 2)):
    assert out[f"{prefix}_psnr"] == float("inf")
    assert out[f"{prefix}_ssim"] == pytest.approx(1.0) and out[f"{prefix}_mask_iou"] == 1.0
    assert abs(out[f"{prefix}_lpips"]) < 1e-6
    assert len(out[f"{prefix}_psnr_per_view"]) == n
  assert out["ref_mask_iou"] == 0.0 and out["ref_psnr"] < 15.0 and out["ref_lpips"] > 0.05
  # The same mesh: volume IoU exact, Chamfer at the 5k-point sampling floor.
  assert out["volume_iou"] == 1.0 and out["chamfer"] < 0.01 and out["fscore@0.05"] == 1.0
  # A prediction turned half around scores worse on every novel-view metric.
  turned = primitives.rotate(toy, np.diag([-1.0, -1.0, 1.0]))
  bad = protocol.evaluate(_renderer(turned), _reference_rgba(toy), VIEWS, SETTINGS, models,
                          gt_mesh=toy, pred_mesh=(turned.vertices, turned.faces))
  assert bad["novel_psnr"] < 25.0 and bad["novel_ssim"] < 0.99 and bad["novel_lpips"] > 0.01
  assert bad["volume_iou"] < 0.95 and bad["chamfer"] > 0.01
  assert all(np.isfinite(v) for k, v in bad.items() if not k.endswith("per_view"))


def test_settings_from_config():
  import ml_collections
  cfg = ml_collections.ConfigDict(dict(
      resolution=64, orbit_views=120, novel_stride=4, high_elevation_deg=30.0,
      high_azimuths_deg=(0.0, 90.0), fscore_thresholds=(0.01, 0.02), geometry_points=1000,
      volume_resolution=32))
  s = protocol.ProtocolSettings.from_config(cfg, seed=3)
  assert (s.size, s.orbit_views, s.novel_stride, s.high_azimuths_deg, s.seed) == \
      (64, 120, 4, (0.0, 90.0), 3)
