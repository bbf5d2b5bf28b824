"""DMTet geometry and its texture field (reference §1 "2 Geometry (DMTet)", §10 "DMTet (2)").

Geometry: per-vertex parameters over a tet grid (geometry/tets.py) of resolution N,
  s [V]       the SDF at each grid vertex (< 0 inside, the project's one sign convention),
  δ [V, 3]    the deformation: vertex = grid + (1/N)·tanh(δ) in the unit cube, mapped to
              the isosurface box `bbox` [2, 3] (a buffer, fixed by the NeuS -> DMTet warm start);
the surface is the zero level set of the linear interpolant of s, extracted by marching tets
(differentiable in s and δ) into a padded mesh with static budgets.

Texture: the colour field of fields/texture.py (hash grid with every level on + colour MLP),
whose parameter names (hash_table, feature_mlp) are DensityField's and SDFField's, so the warm
start copies them; it sits beside s and δ in the stage's params.
"""

import dataclasses

import jax
import jax.numpy as jnp

from dc3d_jax.fields import texture
from dc3d_jax.geometry import hash_grid
from dc3d_jax.geometry import marching_tets as mt
from dc3d_jax.geometry import tets as tets_lib


@dataclasses.dataclass(frozen=True)
class MeshBudget:
  """Static marching-tets output sizes: a surface with more crossings overflows."""
  max_vertices: int
  max_faces: int


def texture_fn(params, grid: hash_grid.HashGridSpec, settings: texture.TextureSettings):
  """[N, 3] -> [N, 3] albedo of the geometry stage's params (their hash_table and feature_mlp
  are fields/texture.py's colour field; sdf and deformation are not the field's)."""
  return texture.color_fn({"hash_table": params["hash_table"],
                           "feature_mlp": params["feature_mlp"]}, grid, settings)


def isosurface(params, bbox: jax.Array, grid: tets_lib.TetGrid,
               budget: MeshBudget) -> mt.PaddedMesh:
  """The DMTet surface of params {"sdf" [V], "deformation" [V, 3]} in the world frame, as a
  padded mesh (check its overflow). grid: the tet grid, passed as a jit argument."""
  x = tets_lib.deformed_vertices(grid, params["deformation"], bbox)
  return mt.marching_tets(x, params["sdf"], grid, max_vertices=budget.max_vertices,
                          max_faces=budget.max_faces)


def sphere_sdf(grid: tets_lib.TetGrid, radius: float, margin: float = 0.1):
  """(sdf [V], bbox [2, 3]) of a sphere of `radius` at the origin on the grid fitted to its box
  enlarged by `margin` per side (what dmtet_init gives for NeuS's initial sphere)."""
  half = radius * (1.0 + 2.0 * margin)
  bbox = jnp.array([[-half] * 3, [half] * 3], jnp.float32)
  x = tets_lib.to_box(jnp.asarray(grid.vertices), bbox)
  return jnp.linalg.norm(x, axis=-1) - radius, bbox
