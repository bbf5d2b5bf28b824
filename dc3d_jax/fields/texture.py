"""The texture stage's colour field on a fixed mesh (reference §1 "3 Texture": the hash grid and
the feature MLP are the only trained parts of the 3D model).

x ∈ [-r, r]^3 (world, points on the surface) is scaled to [0, 1]^3 and hash-encoded with every
level on; c(x) = sigmoid(MLP_c(h)) (no shading or view dependence, `no-material`). Parameter
names (hash_table, feature_mlp) are the coarse NeRF's, NeuS's and DMTet's, so the warm start
copies them by name when their shapes fit.
"""

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp

from dc3d_jax.fields.density import normalize_points
from dc3d_jax.fields.mlp import VanillaMLP
from dc3d_jax.geometry import hash_grid


@dataclasses.dataclass(frozen=True)
class TextureSettings:
  radius: float = 2.0
  hidden: int = 64


class TextureField(nn.Module):
  grid: hash_grid.HashGridSpec
  settings: TextureSettings

  def setup(self):
    self.hash_table = self.param("hash_table", lambda k: hash_grid.init_table(k, self.grid))
    self.feature_mlp = VanillaMLP(hidden=(self.settings.hidden,), out_dim=3)

  def __call__(self, x: jax.Array) -> jax.Array:
    """[N, 3] world points -> [N, 3] colour in (0, 1)."""
    u = normalize_points(x, self.settings.radius)
    mask = jnp.ones((self.grid.n_levels,), jnp.float32)
    return jax.nn.sigmoid(self.feature_mlp(hash_grid.encode(self.hash_table, u, self.grid, mask)))


def init_params(grid: hash_grid.HashGridSpec, settings: TextureSettings, key) -> dict:
  """{hash_table, feature_mlp}, freshly initialised."""
  return TextureField(grid, settings).init(key, jnp.zeros((1, 3)))["params"]


def color_fn(params, grid: hash_grid.HashGridSpec, settings: TextureSettings):
  """[N, 3] -> [N, 3] bound to params."""
  field = TextureField(grid, settings)
  return lambda x: field.apply({"params": params}, x)
