"""Geometry metrics of a predicted mesh against the ground truth, in GT-diagonal units.

    sample_surface(vertices, faces, n, seed)                    -> [n, 3] points
    point_metrics(pred_points, gt_points, scale, thresholds)    -> Chamfer, F-score dict
    occupancy(vertices, faces, lo, hi, resolution)              -> [R, R, R] bool
    volume_iou(pred_v, pred_f, gt_v, gt_f, resolution)          -> float
    mesh_metrics(pred_v, pred_f, gt_v, gt_f, ...)                -> flat dict of floats

Conventions (../shared/reference/evaluation.md):
- Units: every distance is divided by the diagonal of the ground truth's axis-aligned
  bounding box, so thresholds read as fractions of the object's size.
- Alignment: none. Runs reconstruct in the ground truth's own frame (the reference image is
  rendered from it), so a shift or rotation of the prediction is an error that counts.
- Points: `n` points sampled uniformly by area on each surface (numpy Generator seeded by
  `seed`), all surfaces, hidden or not. A GT made of overlapping closed parts (the toy of
  `geometry.primitives.test_object`) therefore has sample points inside its volume that a
  reconstructed outer surface can never reach; the testbed's meshes are single surfaces.
- Chamfer: SyncDreamer's convention, the mean of the two directional mean nearest-neighbour
  distances, (mean_p d(p, GT) + mean_g d(g, pred)) / 2; both directions are returned too
  (`chamfer_pred_to_gt` is accuracy, `chamfer_gt_to_pred` completeness).
- F-score at threshold τ (Tatarchenko et al. 2019): precision = fraction of predicted points
  within τ (strictly closer) of the GT points, recall = the converse, F = 2PR / (P + R).
- Volume IoU: occupancy of the cell centres of a resolution³ grid over the union of the two
  bounding boxes (SyncDreamer: 64³), by the winding number along +z and along −z computed
  from signed ray crossings. For a closed, consistently oriented mesh both are the exact
  winding number, so a union of overlapping closed parts counts once; a point is inside when
  both are non-zero, which keeps columns through a hole of an open mesh outside.
"""

import numpy as np
from scipy.spatial import cKDTree

DEFAULT_THRESHOLDS = (0.01, 0.02, 0.05)
# Columns and cell centres are moved by these fractions of a cell, so no column passes exactly
# through an edge or vertex, and no cell centre lies exactly on a face, of grid-aligned meshes
# (boxes, the primitives): the ties that would make crossing counts ambiguous.
_JITTER = np.array([np.sqrt(2.0) - 1.0, np.sqrt(3.0) - 1.0, np.pi - 3.0]) * 1e-6


def _triangles(vertices, faces) -> np.ndarray:
  """[F, 3 corners, 3] float64."""
  return np.asarray(vertices, np.float64)[np.asarray(faces, np.int64)]


def sample_surface(vertices, faces, n: int, seed: int = 0) -> np.ndarray:
  """[n, 3] points uniform by area on the triangles (faces drawn ∝ area, then uniform
  barycentrics by the square-root rule)."""
  tri = _triangles(vertices, faces)
  area = 0.5 * np.linalg.norm(np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]), axis=-1)
  if not area.sum() > 0:
    raise ValueError("sample_surface: the mesh has no area")
  rng = np.random.default_rng(seed)
  idx = rng.choice(len(tri), size=n, p=area / area.sum())
  r1, r2 = np.sqrt(rng.random(n)), rng.random(n)
  w = np.stack([1.0 - r1, r1 * (1.0 - r2), r1 * r2], -1)
  return np.einsum("nk,nkd->nd", w, tri[idx])


def bbox_diagonal(vertices) -> float:
  v = np.asarray(vertices, np.float64)
  return float(np.linalg.norm(v.max(0) - v.min(0)))


def point_metrics(pred_points, gt_points, scale: float = 1.0,
                  thresholds=DEFAULT_THRESHOLDS) -> dict:
  """Chamfer and F-score of two point sets; distances divided by `scale` first."""
  d_pred = cKDTree(gt_points).query(pred_points)[0] / scale   # accuracy side
  d_gt = cKDTree(pred_points).query(gt_points)[0] / scale     # completeness side
  out = {"chamfer": 0.5 * (d_pred.mean() + d_gt.mean()),
         "chamfer_pred_to_gt": d_pred.mean(), "chamfer_gt_to_pred": d_gt.mean()}
  for t in thresholds:
    p, r = np.mean(d_pred < t), np.mean(d_gt < t)
    out[f"precision@{t:g}"], out[f"recall@{t:g}"] = p, r
    out[f"fscore@{t:g}"] = 0.0 if p + r == 0 else 2.0 * p * r / (p + r)
  return {k: float(v) for k, v in out.items()}


def _edge_function(a: np.ndarray, b: np.ndarray, p: np.ndarray) -> np.ndarray:
  """2D orientation of p against edge a -> b, computed with the endpoints in lexicographic
  order and the sign flipped back, so the two triangles sharing an edge get bit-identical
  values (one crossing is never counted twice or lost to rounding)."""
  swap = (a[:, 0] > b[:, 0]) | ((a[:, 0] == b[:, 0]) & (a[:, 1] > b[:, 1]))
  lo, hi = np.where(swap[:, None], b, a), np.where(swap[:, None], a, b)
  e = (hi[:, 0] - lo[:, 0]) * (p[:, 1] - lo[:, 1]) - (hi[:, 1] - lo[:, 1]) * (p[:, 0] - lo[:, 0])
  return np.where(swap, -e, e)


def _column_pairs(tri, xs, ys):
  """(triangle index, i, j) for every column (xs[i], ys[j]) inside a triangle's xy box."""
  lo, hi = tri[:, :, :2].min(1), tri[:, :, :2].max(1)
  i0, i1 = np.searchsorted(xs, lo[:, 0]), np.searchsorted(xs, hi[:, 0], side="right")
  j0, j1 = np.searchsorted(ys, lo[:, 1]), np.searchsorted(ys, hi[:, 1], side="right")
  ni, nj = np.maximum(i1 - i0, 0), np.maximum(j1 - j0, 0)
  t = np.repeat(np.arange(len(tri)), ni * nj)
  k = np.arange(len(t)) - np.repeat(np.cumsum(ni * nj) - ni * nj, ni * nj)
  return t, i0[t] + k // nj[t], j0[t] + k % nj[t]


def occupancy(vertices, faces, lo, hi, resolution: int = 64) -> np.ndarray:
  """[R, R, R] bool: which cell centres of the box [lo, hi] the mesh encloses (index i, j, k
  along x, y, z). See the module docstring for the inside rule."""
  lo, hi = np.asarray(lo, np.float64), np.asarray(hi, np.float64)
  cell = (hi - lo) / resolution
  centres = [lo[a] + (np.arange(resolution) + 0.5 + _JITTER[a]) * cell[a] for a in range(3)]
  tri = _triangles(vertices, faces)
  t, i, j = _column_pairs(tri, centres[0], centres[1])
  p = np.stack([centres[0][i], centres[1][j]], -1)
  v0, v1, v2 = tri[t, 0], tri[t, 1], tri[t, 2]
  e0, e1, e2 = (_edge_function(a[:, :2], b[:, :2], p) for a, b in ((v1, v2), (v2, v0), (v0, v1)))
  area = e0 + e1 + e2                       # twice the signed xy area; > 0 faces +z
  hit = ((e0 > 0) & (e1 > 0) & (e2 > 0)) | ((e0 < 0) & (e1 < 0) & (e2 < 0))
  z = (e0 * v0[:, 2] + e1 * v1[:, 2] + e2 * v2[:, 2])[hit] / area[hit]
  sign = np.sign(area[hit]).astype(np.int64)
  k = np.searchsorted(centres[2], z)        # the crossing lies above cell centres 0..k-1
  counts = np.zeros((resolution, resolution, resolution + 1), np.int64)
  np.add.at(counts, (i[hit], j[hit], k), sign)
  # Winding number from a ray up: exits (+1) minus entries (-1) above the point; from a ray
  # down: the same count below, negated.
  above = np.cumsum(counts[..., ::-1], axis=-1)[..., ::-1][..., 1:]
  below = -np.cumsum(counts, axis=-1)[..., :-1]
  return (above != 0) & (below != 0)


def volume_iou(pred_vertices, pred_faces, gt_vertices, gt_faces, resolution: int = 64) -> float:
  """IoU of the two occupancies on one resolution³ grid over the union bounding box."""
  both = np.concatenate([np.asarray(pred_vertices, np.float64),
                         np.asarray(gt_vertices, np.float64)])
  lo, hi = both.min(0), both.max(0)
  a = occupancy(pred_vertices, pred_faces, lo, hi, resolution)
  b = occupancy(gt_vertices, gt_faces, lo, hi, resolution)
  union = np.logical_or(a, b).sum()
  return 0.0 if union == 0 else float(np.logical_and(a, b).sum() / union)


def mesh_metrics(pred_vertices, pred_faces, gt_vertices, gt_faces, *, n_points: int = 100_000,
                 thresholds=DEFAULT_THRESHOLDS, resolution: int = 64, seed: int = 0) -> dict:
  """Chamfer, F-score (with precision and recall) and volume IoU, GT-diagonal units."""
  scale = bbox_diagonal(gt_vertices)
  pred_pts = sample_surface(pred_vertices, pred_faces, n_points, seed)
  gt_pts = sample_surface(gt_vertices, gt_faces, n_points, seed + 1)
  out = point_metrics(pred_pts, gt_pts, scale, thresholds)
  out["volume_iou"] = volume_iou(pred_vertices, pred_faces, gt_vertices, gt_faces, resolution)
  return out
