"""Image and geometry metrics (dc3d_jax.eval.metrics, dc3d_jax.eval.geometry) against closed
forms and brute force: SSIM/PSNR of known images, Chamfer and F-score of a sphere against a
shifted sphere, F-score at known offsets, volume IoU of nested boxes and of a union of convex
parts."""

import numpy as np
import pytest

from dc3d_jax.eval import geometry, metrics
from dc3d_jax.geometry import primitives

C1, C2 = 0.01 ** 2, 0.03 ** 2


# ------------------------------------------------------------------------------- images

def test_psnr_of_a_constant_offset():
  x = np.full((16, 16, 3), 0.25)
  assert metrics.psnr(x + 0.1, x) == pytest.approx(20.0, abs=1e-9)   # -10 log10(0.1²)
  assert metrics.psnr(x, x) == float("inf")


def test_ssim_of_identical_images_is_one():
  x = np.random.default_rng(0).random((2, 24, 20, 3))
  assert metrics.ssim(x, x) == pytest.approx(1.0, abs=1e-12)
  np.testing.assert_allclose(metrics.ssim_per_image(x, x), 1.0, atol=1e-12)


def test_ssim_of_constant_images_is_the_luminance_term():
  # σ_x = σ_y = σ_xy = 0: SSIM = (2ab + C1) / (a² + b² + C1).
  a, b = 0.3, 0.7
  got = metrics.ssim(np.full((20, 20, 3), a), np.full((20, 20, 3), b))
  assert got == pytest.approx((2 * a * b + C1) / (a * a + b * b + C1), abs=1e-12)


def test_ssim_of_a_contrast_change_is_the_contrast_structure_term():
  # x = m + A·s, y = m + k·A·s with s = ±1 a checkerboard: under the Gaussian window every local
  # mean is m (to ~1e-8: the window's alternating sum is ~9e-5 per axis) and σ_x² = A², σ_y² =
  # k²A², σ_xy = kA², so SSIM = (2kA² + C2) / ((1 + k²)A² + C2).
  i, j = np.mgrid[0:40, 0:36]
  s = ((-1.0) ** (i + j))[..., None]
  m, amp = 0.5, 0.2
  for k in (0.5, -1.0, 0.1):
    got = metrics.ssim(m + amp * s, m + k * amp * s)
    want = (2 * k * amp ** 2 + C2) / ((1 + k * k) * amp ** 2 + C2)
    assert got == pytest.approx(want, abs=1e-10), k


def test_ssim_uses_the_valid_region_only():
  # A change confined to the 5-pixel border enters the SSIM map only through windows that
  # reach it; one in the far corner's outermost pixel is seen by a single valid window.
  x = np.full((31, 31, 1), 0.5)
  y = x.copy()
  y[0, 0] = 0.9
  smap = metrics.ssim_map(x, y)
  assert smap.shape == (21, 21, 1)
  assert (smap < 1.0).sum() == 1 and smap[0, 0, 0] < 1.0
  with pytest.raises(ValueError, match="H, W >= 11"):
    metrics.ssim(np.zeros((10, 12, 3)), np.zeros((10, 12, 3)))


# ---------------------------------------------------------------------------- geometry

def _sphere(shift=0.0):
  return primitives.uv_sphere(center=(shift, 0.0, 0.0), radius=0.5, n_lat=64, n_lon=128)


def test_chamfer_and_fscore_of_a_shifted_sphere():
  # Exact spheres of radius R shifted by s < R: the distance from a point at polar cosine t
  # (uniform on [-1, 1]) to the other sphere is |sqrt(R² + s² - 2Rst) - R|. Its mean is exactly
  # s/2 in both directions (so Chamfer = s/2), and the fraction within τ < s is exactly τ/s
  # (so precision = recall = F = τ/s). Sampling with 50k points adds a small positive bias.
  s = 0.05
  gt, pred = _sphere(), _sphere(s)
  diag = geometry.bbox_diagonal(gt.vertices)
  assert diag == pytest.approx(np.sqrt(3.0), rel=1e-6)
  out = geometry.mesh_metrics(pred.vertices, pred.faces, gt.vertices, gt.faces,
                              n_points=50_000, thresholds=(0.5 * s / diag, 2 * s / diag))
  for key in ("chamfer", "chamfer_pred_to_gt", "chamfer_gt_to_pred"):
    assert out[key] * diag == pytest.approx(s / 2, rel=0.06), key
  half = f"{0.5 * s / diag:g}"
  for key in ("precision", "recall", "fscore"):
    assert out[f"{key}@{half}"] == pytest.approx(0.5, abs=0.03), key
    assert out[f"{key}@{2 * s / diag:g}"] == 1.0
  assert 0.5 < out["volume_iou"] < 1.0


def test_fscore_at_known_offsets():
  # A 10×10 grid of spacing 0.1 and its copy moved by d = 0.02 along the normal: every nearest
  # neighbour is the point's own copy at exactly d, so F = 1 above d and 0 below it.
  u, v = np.meshgrid(np.arange(10) * 0.1, np.arange(10) * 0.1)
  gt = np.stack([u.ravel(), v.ravel(), np.zeros(100)], -1)
  moved = gt + [0.0, 0.0, 0.02]
  out = geometry.point_metrics(moved, gt, 1.0, thresholds=(0.019, 0.021))
  assert out["fscore@0.019"] == 0.0 and out["fscore@0.021"] == 1.0
  assert out["chamfer"] == pytest.approx(0.02)
  # Half of the points moved by 0.03 instead: precision = recall = F = 0.5 at τ = 0.025.
  moved[50:, 2] = 0.03
  out = geometry.point_metrics(moved, gt, 2.0, thresholds=(0.0125,))   # scale 2: τ·2 = 0.025
  assert out["precision@0.0125"] == out["recall@0.0125"] == out["fscore@0.0125"] == 0.5
  assert out["chamfer"] == pytest.approx(0.5 * (0.02 + 0.03) / 2.0)


def test_volume_iou_of_nested_boxes_is_the_volume_ratio():
  # Inner box faces on cell boundaries of the 64³ grid over [-1, 1]³: the ratio is exact.
  outer = primitives.box(half_sizes=(1.0, 1.0, 1.0))
  inner = primitives.box(center=(0.25, 0.0, -0.125), half_sizes=(0.25, 0.5, 0.625))
  want = (0.5 * 1.0 * 1.25) / 8.0
  assert geometry.volume_iou(inner.vertices, inner.faces, outer.vertices, outer.faces) == want
  # The rule does not depend on the winding direction of the faces.
  flipped = inner.faces[:, ::-1]
  assert geometry.volume_iou(inner.vertices, flipped, outer.vertices, outer.faces) == want
  assert geometry.volume_iou(outer.vertices, outer.faces, outer.vertices, outer.faces) == 1.0


def _inside_convex(mesh, points):
  """Brute force: a point is inside a closed convex mesh when it is behind every face plane."""
  tri = np.asarray(mesh.vertices, np.float64)[mesh.faces]
  n = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
  keep = np.linalg.norm(n, axis=-1) > 1e-12
  side = np.einsum("fd,pfd->pf", n[keep], points[:, None, :] - tri[keep][None, :, 0])
  return np.all(side < 0.0, axis=-1)


def test_occupancy_of_overlapping_convex_parts_matches_brute_force():
  # Three overlapping closed convex parts in one mesh (ray parity would make the overlaps
  # holes; the winding number counts them once). Brute force: point in any part.
  parts = [primitives.box(center=(0.0, 0.0, -0.1), half_sizes=(0.3, 0.2, 0.35)),
           primitives.uv_sphere(center=(0.1, 0.05, 0.3), radius=0.25, n_lat=12, n_lon=24),
           primitives.cone(base_center=(0.0, 0.15, -0.2), radius=0.15, height=0.5, n=16,
                           axis=(0.0, 1.0, 0.0))]
  mesh = primitives.concatenate(parts)
  lo, hi = primitives.mesh_bounds(mesh)
  r = 24
  occ = geometry.occupancy(mesh.vertices, mesh.faces, lo, hi, r)
  cell = (hi - lo) / r
  axes = [lo[a] + (np.arange(r) + 0.5 + geometry._JITTER[a]) * cell[a] for a in range(3)]
  pts = np.stack(np.meshgrid(*axes, indexing="ij"), -1).reshape(-1, 3)
  want = np.any([_inside_convex(p, pts) for p in parts], axis=0).reshape(r, r, r)
  assert want.sum() > 1000 and np.array_equal(occ, want)


def test_sample_surface_is_seeded_and_area_weighted():
  small = primitives.box(center=(-2.0, 0.0, 0.0), half_sizes=(0.5, 0.5, 0.5))   # area 6
  big = primitives.box(center=(2.0, 0.0, 0.0), half_sizes=(1.0, 1.0, 1.0))      # area 24
  mesh = primitives.concatenate([small, big])
  pts = geometry.sample_surface(mesh.vertices, mesh.faces, 20_000, seed=3)
  assert np.array_equal(pts, geometry.sample_surface(mesh.vertices, mesh.faces, 20_000, seed=3))
  assert np.mean(pts[:, 0] < 0) == pytest.approx(0.2, abs=0.01)
  # Every point lies on the surface of its box (max-norm distance from the centre = half size).
  on_big = np.abs(np.abs(pts[pts[:, 0] > 0] - [2.0, 0.0, 0.0]).max(-1) - 1.0)
  assert on_big.max() < 1e-9
