"""Multiresolution hash encoding (Instant-NGP), with tiny-cuda-nn's grid semantics, in plain jnp.

Symbols: L levels, T = 2**log2_table_size entries per level, F features per entry, b the base
resolution, s the per-level scale. For level l:
  scale_l = b * s**l - 1,   res_l = ceil(scale_l) + 1   (grid vertices per axis),
  N_l = min(ceil8(res_l**3), T)   (the level's parameter count: res_l**3 rounded up to a
                                   multiple of 8 for aligned access, capped at T),
  pos = x * scale_l + 0.5,  cell = floor(pos),  frac = pos - cell,
and the level's feature is the trilinear blend of its 8 corner entries, corner c = cell + {0,1}^3
with weight prod_d (frac_d if bit_d else 1 - frac_d). A corner's entry is
  dense (res_l**3 <= N_l):  (c_x + c_y * res_l + c_z * res_l**2) mod N_l,
  hashed (otherwise):       ((c_x * 1) ^ (c_y * 2654435761) ^ (c_z * 805459861) in uint32) mod N_l,
the index tiny-cuda-nn's `grid_index` computes (encodings/grid.h): each level is indexed
modulo its *own* size N_l, not modulo T. Each level here owns a [T, F] slice of the table;
dense levels use only its first N_l rows (tiny-cuda-nn packs the levels back to back; the
features, not the memory layout, are what match).

Boundaries: x is clamped to [0, 1] (callers normalise; the clamp keeps `cell` non-negative so
the uint32 arithmetic never sees a negative coordinate). Corner coordinates are *not* clamped,
as in tiny-cuda-nn: for x in the top half-cell (x * scale_l + 0.5 >= ceil(scale_l)) the upper
corner is res_l, one past the last vertex. In a dense level its index aliases the first
vertex of the next row or slab, and past the last slab it wraps modulo N_l to the start of
the level (modulo T it would land on rows no other point reads). Clamping it instead would
make the encoding constant across that half-cell and break parity with the reference
(threestudio on tcnn). So every index is valid, for x exactly 0 or 1 too.

Defaults are DreamCraft3D's: 16 levels x 2 features, T = 2**19, b = 16, s = 1.447269237440378
(= 2**(8/15) to float precision, so scale_15 = 16 * 2**8 - 1 = 4095 and the finest level has
4096 vertices per axis).

Implementation: one level's encoding vmapped over [L] arrays of per-level scales, index
multipliers and dense flags (a small graph; `encode`'s docstring has the measurements).
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

# The spatial-hash primes of Instant-NGP / tiny-cuda-nn (x's is 1, so x enters unscrambled).
HASH_PRIMES = (1, 2654435761, 805459861)


@dataclasses.dataclass(frozen=True)
class HashGridSpec:
  """Static shape of a hash grid; hashable, so it can be a jit static argument."""
  n_levels: int = 16
  n_features: int = 2
  log2_table_size: int = 19
  base_resolution: int = 16
  # 2**(8/15): 15 steps from b = 16 reach 16 * 2**8 = 4096 (DreamCraft3D's finest level).
  per_level_scale: float = 1.447269237440378

  def __post_init__(self):
    # Flat gather indices are int32: all levels' rows must fit.
    if self.n_levels * self.table_size >= 2**31:
      raise ValueError(f"n_levels * 2**log2_table_size must be < 2**31, got {self}")

  @property
  def table_size(self) -> int:
    return 2**self.log2_table_size

  @property
  def output_dim(self) -> int:
    return self.n_levels * self.n_features

  def scales(self) -> np.ndarray:
    """[L] float64: b * s**l - 1."""
    levels = np.arange(self.n_levels, dtype=np.float64)
    return self.base_resolution * self.per_level_scale**levels - 1.0

  def resolutions(self) -> np.ndarray:
    """[L] int64: grid vertices per axis, ceil(scale) + 1."""
    return np.ceil(self.scales()).astype(np.int64) + 1

  def level_sizes(self) -> np.ndarray:
    """[L] int64 N_l: rows a level indexes, min(res**3 rounded up to a multiple of 8, T)."""
    dense = -(-self.resolutions()**3 // 8) * 8
    return np.minimum(dense, self.table_size)

  def dense_levels(self) -> np.ndarray:
    """[L] bool: levels whose whole grid fits their rows (indexed densely, not hashed)."""
    return self.resolutions()**3 <= self.level_sizes()

  @classmethod
  def from_config(cls, cfg) -> "HashGridSpec":
    """From any object with the five fields as attributes (e.g. an ml_collections ConfigDict)."""
    return cls(n_levels=int(cfg.n_levels), n_features=int(cfg.n_features),
               log2_table_size=int(cfg.log2_table_size),
               base_resolution=int(cfg.base_resolution),
               per_level_scale=float(cfg.per_level_scale))


def init_table(key: jax.Array, spec: HashGridSpec) -> jax.Array:
  """[L, T, F] float32 uniform(-1e-4, 1e-4), Instant-NGP's initialisation."""
  shape = (spec.n_levels, spec.table_size, spec.n_features)
  return jax.random.uniform(key, shape, jnp.float32, -1e-4, 1e-4)


def _index_multipliers(spec: HashGridSpec) -> np.ndarray:
  """[L, 3] uint32: per-axis multipliers, (1, res, res**2) if dense else the hash primes."""
  res = spec.resolutions()
  dense = np.stack([np.ones_like(res), res, res * res], axis=-1)
  primes = np.broadcast_to(np.array(HASH_PRIMES, np.int64), dense.shape)
  mult = np.where(spec.dense_levels()[:, None], dense, primes)
  return (mult % 2**32).astype(np.uint32)


def _clamp_unit(x: jax.Array) -> jax.Array:
  """x clamped to [0, 1], with gradient 1 on the closed interval (jnp.clip halves it at 0, 1)."""
  inside = (x >= 0.0) & (x <= 1.0)
  return jnp.where(inside, x, jnp.clip(x, 0.0, 1.0))


def _corner_outer(a: jax.Array, combine) -> jax.Array:
  """[..., 3, 2] per-axis terms -> [..., 8] over the 2**3 corners; corner 4*bx + 2*by + bz."""
  t = combine(a[..., 0, :, None, None], a[..., 1, None, :, None])
  t = combine(t, a[..., 2, None, None, :])
  return t.reshape(t.shape[:-3] + (8,))


def _level_features(table_l: jax.Array, x: jax.Array, scale: jax.Array, mult: jax.Array,
                    dense: jax.Array, size: jax.Array) -> jax.Array:
  """One level's blended features.

  table_l: [T, F]. x: [..., 3] in [0, 1]. scale: scalar float32. mult: [3] uint32 index
  multipliers. dense: scalar bool (sum the terms; else xor them). size: scalar uint32 N_l,
  the modulus of the level's indices. Returns [..., F] float32.
  """
  pos = x * scale + 0.5
  cell = jnp.floor(pos)                                   # floor has zero gradient: x's
  frac = pos - cell                                       # gradient flows through frac only
  weights = _corner_outer(jnp.stack([1.0 - frac, frac], axis=-1), jnp.multiply)
  corner = cell.astype(jnp.uint32)[..., None] + jnp.arange(2, dtype=jnp.uint32)
  terms = corner * mult[:, None]                          # [..., 3, 2]; uint32 mul wraps
  linear = _corner_outer(terms, jnp.add)
  hashed = _corner_outer(terms, jnp.bitwise_xor)
  rows = jnp.where(dense, linear, hashed) % size          # N_l <= T: inside the slice
  feats = table_l.at[rows.astype(jnp.int32)].get(mode="promise_in_bounds")   # [..., 8, F]
  return jnp.einsum("...c,...cf->...f", weights, feats.astype(jnp.float32))


def encode(table: jax.Array, x: jax.Array, spec: HashGridSpec,
           level_mask: jax.Array | None = None) -> jax.Array:
  """Hash-grid features of points.

  table: [L, T, F] float32. x: [..., 3] points in [0, 1]^3 (clamped). level_mask: optional
  [L] 0/1 floats multiplying each level's features (DreamCraft3D's progressive band: levels
  are masked, never re-allocated). Returns [..., L*F] float32, level-major.
  Differentiable w.r.t. table (scatter-add) and x (through the trilinear weights).

  Levels are vmapped over [L] arrays of scales, multipliers and dense flags. Measured with
  benchmarks/hash_grid.py's problem (2**18 points, L=16, T=2**19, encode + MLP; 2-core CPU
  shared with other jobs), points/s forward / fwd+bwd, best of 5:
    both cores free:  this vmap 8.4e5 / 3.6e5, a Python loop over levels 9.5e5 / 4.4e5,
                      one flat [L*T, F] gather with per-level row offsets 6.0e5 / 2.9e5;
    cores contended:  vmap 4.9e5 / 2.2e5, loop 4.9e5 / 2.3e5;
    one core (taskset, 2**16 points): vmap 4.4e5 / 1.9e5, loop 4.7e5 / 1.5e5.
  The loop wins only by running its 16 independent (single-threaded) XLA:CPU scatters on idle
  cores; it costs 9x the HLO and 4x the compile time (1.4 s vs 0.3 s), so the vmap stays.
  """
  scales = jnp.asarray(spec.scales(), jnp.float32)
  mult = jnp.asarray(_index_multipliers(spec))
  dense = jnp.asarray(spec.dense_levels())
  sizes = jnp.asarray(spec.level_sizes(), jnp.uint32)
  x = _clamp_unit(x)
  level = lambda t, s, m, d, n: _level_features(t, x, s, m, d, n)
  out = jax.vmap(level, out_axes=-2)(table, scales, mult, dense, sizes)   # [..., L, F]
  if level_mask is not None:
    out = out * level_mask.astype(jnp.float32)[:, None]
  return out.reshape(x.shape[:-1] + (spec.output_dim,))
