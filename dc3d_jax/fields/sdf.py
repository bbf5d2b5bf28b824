"""NeuS signed distance field (reference §1, §1b) and its learned sharpness.

x ∈ [-r, r]^3 (world) is scaled to [0, 1]^3 and hash-encoded (all levels on in NeuS). Two heads
read the encoding h:
  f(x) = MLP_f(h) + (|x| - ρ)        a sphere of radius ρ = 0.5 at init (negative inside)
  c(x) = sigmoid(MLP_c(h))           no shading or view dependence
Parameter names (hash_table, feature_mlp) are DensityField's, so the warm start from the coarse
NeRF copies them; sdf_mlp is NeuS's own.

The renderer's sharpness s = inv_std = exp(10·v) is learned through a scalar v (v₀ = 0.3, so
s₀ ≈ 20), kept as its own top-level parameter group `variance` beside the field's (reference:
it belongs to the renderer and has its own learning rate).
"""

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp

from dc3d_jax.core import numerics
from dc3d_jax.fields.density import normalize_points
from dc3d_jax.fields.mlp import VanillaMLP
from dc3d_jax.geometry import hash_grid

VARIANCE_SCALE = 10.0
INV_STD_RANGE = (1e-6, 1e6)   # the reference clamps s to this range


@dataclasses.dataclass(frozen=True)
class SDFSettings:
  radius: float = 2.0
  sphere_radius: float = 0.5
  hidden: int = 64


def sphere_bias(x: jax.Array, sphere_radius: float) -> jax.Array:
  """|x| - ρ: the SDF of a sphere of radius ρ, added to the MLP's output."""
  return numerics.safe_norm(x) - sphere_radius


def inv_std(variance: jax.Array) -> jax.Array:
  """s = exp(10·v), clamped to [1e-6, 1e6]."""
  return jnp.clip(jnp.exp(VARIANCE_SCALE * variance), *INV_STD_RANGE)


def init_variance(value: float) -> jax.Array:
  return jnp.asarray(value, jnp.float32)


class SDFField(nn.Module):
  grid: hash_grid.HashGridSpec
  settings: SDFSettings

  def setup(self):
    self.hash_table = self.param("hash_table", lambda k: hash_grid.init_table(k, self.grid))
    self.sdf_mlp = VanillaMLP(hidden=(self.settings.hidden,), out_dim=1)
    self.feature_mlp = VanillaMLP(hidden=(self.settings.hidden,), out_dim=3)

  def encode(self, x: jax.Array, level_mask: jax.Array) -> jax.Array:
    u = normalize_points(x, self.settings.radius)
    return hash_grid.encode(self.hash_table, u, self.grid, level_mask)

  def _sdf(self, x: jax.Array, h: jax.Array) -> jax.Array:
    return self.sdf_mlp(h)[..., 0] + sphere_bias(x, self.settings.sphere_radius)

  def sdf(self, x: jax.Array, level_mask: jax.Array) -> jax.Array:
    """[N, 3] world points -> [N] signed distance (negative inside)."""
    return self._sdf(x, self.encode(x, level_mask))

  def __call__(self, x: jax.Array, level_mask: jax.Array):
    """[N, 3] world points -> (f [N], rgb [N, 3] in (0, 1))."""
    h = self.encode(x, level_mask)
    return self._sdf(x, h), jax.nn.sigmoid(self.feature_mlp(h))
