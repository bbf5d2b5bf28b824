"""DMTet geometry and its texture field (reference §1 "2 Geometry (DMTet)", §10 "DMTet (2)").

Geometry: per-vertex parameters over a tet grid (geometry/tets.py) of resolution N,
  s [V]       the SDF at each grid vertex (< 0 inside, the project's one sign convention),
  δ [V, 3]    the deformation: vertex = grid + (1/N)·tanh(δ) in the unit cube, mapped to
              the isosurface box `bbox` [2, 3] (a buffer, fixed by the NeuS -> DMTet warm start);
the surface is the zero level set of the linear interpolant of s, extracted by marching tets
(differentiable in s and δ) into a padded mesh with static budgets.

Texture: colour c(x) = sigmoid(MLP_c(h(x))), h the hash encoding of x scaled from the scene box
[-r, r]^3 to [0, 1]^3 with every level on, as the NeuS field does. Its parameter names
(hash_table, feature_mlp) are DensityField's and SDFField's, so the warm start copies them.
"""

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp

from dc3d_jax.fields.density import normalize_points
from dc3d_jax.fields.mlp import VanillaMLP
from dc3d_jax.geometry import hash_grid
from dc3d_jax.geometry import marching_tets as mt
from dc3d_jax.geometry import tets as tets_lib


@dataclasses.dataclass(frozen=True)
class TextureSettings:
  radius: float = 2.0      # the scene box [-r, r]^3 the hash grid covers (coarse_nerf's)
  hidden: int = 64         # the colour MLP's width (the NeuS field's)


@dataclasses.dataclass(frozen=True)
class MeshBudget:
  """Static marching-tets output sizes: a surface with more crossings overflows."""
  max_vertices: int
  max_faces: int


class TextureField(nn.Module):
  """[N, 3] world points -> [N, 3] albedo in (0, 1)."""
  grid: hash_grid.HashGridSpec
  settings: TextureSettings

  def setup(self):
    self.hash_table = self.param("hash_table", lambda k: hash_grid.init_table(k, self.grid))
    self.feature_mlp = VanillaMLP(hidden=(self.settings.hidden,), out_dim=3)

  def __call__(self, x: jax.Array) -> jax.Array:
    u = normalize_points(x, self.settings.radius)
    mask = jnp.ones((self.grid.n_levels,), jnp.float32)     # all levels on, as NeuS
    h = hash_grid.encode(self.hash_table, u, self.grid, mask)
    return jax.nn.sigmoid(self.feature_mlp(h))


def fresh_texture(grid: hash_grid.HashGridSpec, settings: TextureSettings, key) -> dict:
  """{hash_table, feature_mlp} newly initialised."""
  return TextureField(grid, settings).init(key, jnp.zeros((1, 3)))["params"]


def texture_fn(params, grid: hash_grid.HashGridSpec, settings: TextureSettings):
  """[N, 3] -> [N, 3] albedo, bound to params' hash_table and feature_mlp."""
  field = TextureField(grid, settings)
  variables = {"params": {"hash_table": params["hash_table"],
                          "feature_mlp": params["feature_mlp"]}}
  return lambda x: field.apply(variables, x)


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
