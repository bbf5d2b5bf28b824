"""Deterministic per-object albedo for untextured meshes: coloured parts and baked shading.

Parts: k-means (k = 3..5, from the object's name) on face centroids, seeded by the name, each
part one colour of PALETTE, so colour is learnable and a wrong back view shows.

Shading: a fixed, view-independent factor s = 0.55 + 0.45·(1 + n·l)/2 (half-Lambert of the
vertex normal n against the object-frame direction LIGHT) multiplies the part colour. Renders
then carry shape cues, while the colour of a surface point stays the same from every view, so
the pipeline's unlit colour fields can represent the renders exactly. The half-Lambert form
(rather than max(0, n·l)) keeps a gradient on the side facing away from the light, so back
views carry shape cues too.

Every colour has a channel ≤ 0.55 (nothing near white): a pixel counts as object when its
smallest channel is below 0.9 (`eval.masks`-style foreground from RGB alone).
"""

import zlib

import numpy as np

from dc3d_jax.testbed import meshes

PALETTE = np.array([
    (0.85, 0.20, 0.20),   # red
    (0.95, 0.55, 0.10),   # orange
    (0.95, 0.82, 0.15),   # yellow
    (0.30, 0.70, 0.25),   # green
    (0.10, 0.62, 0.58),   # teal
    (0.20, 0.40, 0.85),   # blue
    (0.55, 0.30, 0.75),   # purple
    (0.92, 0.45, 0.65),   # pink
    (0.55, 0.35, 0.20),   # brown
    (0.50, 0.55, 0.12),   # olive
    (0.15, 0.20, 0.50),   # navy
    (0.45, 0.45, 0.50),   # grey
], np.float32)
LIGHT = np.array([0.6, 0.3, 0.75]) / np.linalg.norm([0.6, 0.3, 0.75])   # front, left, above
AMBIENT, DIFFUSE = 0.55, 0.45


def object_seed(name: str) -> int:
  """A stable seed per object name (Python's hash() is salted per process)."""
  return zlib.crc32(name.encode("utf-8"))


def kmeans_labels(points: np.ndarray, k: int, seed: int, iterations: int = 25) -> np.ndarray:
  """[N, 3] -> [N] labels in 0..k-1 of Lloyd's k-means with k-means++ seeding (seeded)."""
  rng = np.random.default_rng(seed)
  centres = [points[rng.integers(len(points))]]
  for _ in range(1, k):
    d2 = np.min([np.sum((points - c) ** 2, -1) for c in centres], axis=0)
    centres.append(points[rng.choice(len(points), p=d2 / d2.sum())])
  centres = np.array(centres)
  for _ in range(iterations):
    labels = np.argmin(np.sum((points[:, None] - centres[None]) ** 2, -1), axis=1)
    centres = np.array([points[labels == j].mean(0) if np.any(labels == j) else centres[j]
                        for j in range(k)])
  return np.argmin(np.sum((points[:, None] - centres[None]) ** 2, -1), axis=1)


def part_colours(name: str, centroids: np.ndarray) -> np.ndarray:
  """[M, 3] face centroids -> [M, 3] part colours (3..5 parts, distinct palette colours)."""
  seed = object_seed(name)
  k = min(3 + seed % 3, len(centroids))
  labels = kmeans_labels(centroids, k, seed)
  colours = PALETTE[np.random.default_rng(seed).choice(len(PALETTE), k, replace=False)]
  return colours[labels]


def shading(normals: np.ndarray) -> np.ndarray:
  """[..., 3] unit normals (object frame) -> [...] factor in [0.55, 1]."""
  return AMBIENT + DIFFUSE * 0.5 * (1.0 + normals @ LIGHT)


def corner_colours(name: str, mesh: meshes.TriMesh) -> np.ndarray:
  """[M, 3 corners, 3] albedo of an untextured mesh in its upright object frame: the face's
  part colour times the corner vertex's baked shading."""
  v, f = mesh.vertices, mesh.faces
  part = part_colours(name, v[f].mean(axis=1))
  shade = shading(meshes.vertex_normals(v, f))[f]
  return (part[:, None, :] * shade[..., None]).astype(np.float32)


def foreground(rgb: np.ndarray, threshold: float = 0.9) -> np.ndarray:
  """[..., 3] composited-on-white RGB -> [...] float mask (smallest channel < threshold)."""
  return (np.asarray(rgb).min(axis=-1) < threshold).astype(np.float32)
