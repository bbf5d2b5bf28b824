"""NeRF density field of the coarse stage (reference §1, §1a).

x ∈ [-r, r]^3 (world) is scaled to u = (x + r)/2r ∈ [0, 1]^3 and hash-encoded (levels masked by
the progressive band). Two heads read the encoding:
  σ(x) = softplus(MLP_σ(h) + s·(1 - |x|/σ_b))   the "Magic3D blob" (s = 10, σ_b = 0.5)
  c(x) = sigmoid(MLP_c(h))                       no shading or view dependence
Parameter names (hash_table, feature_mlp) are shared with the NeuS field so its warm start can
copy them.
"""

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp

from dc3d_jax.core import numerics
from dc3d_jax.fields.mlp import VanillaMLP
from dc3d_jax.geometry import hash_grid


@dataclasses.dataclass(frozen=True)
class DensitySettings:
  radius: float = 2.0
  blob_scale: float = 10.0
  blob_std: float = 0.5
  hidden: int = 64


def normalize_points(x: jax.Array, radius: float) -> jax.Array:
  """World [-r, r]^3 -> [0, 1]^3 (clipped; the box has no unbounded contraction)."""
  return jnp.clip((x + radius) / (2.0 * radius), 0.0, 1.0)


def blob_bias(x: jax.Array, scale: float, std: float) -> jax.Array:
  """s·(1 - |x|/σ_b): a density bump at the origin so training starts from a blob."""
  return scale * (1.0 - numerics.safe_norm(x) / std)


class DensityField(nn.Module):
  grid: hash_grid.HashGridSpec
  settings: DensitySettings

  def setup(self):
    self.hash_table = self.param("hash_table", lambda k: hash_grid.init_table(k, self.grid))
    self.density_mlp = VanillaMLP(hidden=(self.settings.hidden,), out_dim=1)
    self.feature_mlp = VanillaMLP(hidden=(self.settings.hidden,), out_dim=3)

  def encode(self, x: jax.Array, level_mask: jax.Array) -> jax.Array:
    u = normalize_points(x, self.settings.radius)
    return hash_grid.encode(self.hash_table, u, self.grid, level_mask)

  def _density(self, x: jax.Array, h: jax.Array) -> jax.Array:
    raw = self.density_mlp(h)[..., 0]
    return jax.nn.softplus(raw + blob_bias(x, self.settings.blob_scale, self.settings.blob_std))

  def density(self, x: jax.Array, level_mask: jax.Array) -> jax.Array:
    """[N, 3] world points -> [N] density σ."""
    return self._density(x, self.encode(x, level_mask))

  def __call__(self, x: jax.Array, level_mask: jax.Array):
    """[N, 3] world points -> (σ [N], rgb [N, 3] in (0, 1))."""
    h = self.encode(x, level_mask)
    return self._density(x, h), jax.nn.sigmoid(self.feature_mlp(h))
