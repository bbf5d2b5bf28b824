"""Hash-grid encoding against a loop-by-loop Python brute force of tiny-cuda-nn's grid.

The brute force is written from tcnn's source (include/tiny-cuda-nn/encodings/grid.h), not
from dc3d_jax: `GridEncodingTemplated`'s constructor gives each level
params_in_level = min(next_multiple(res**3, 8), 2**log2_hashmap_size) rows, and `grid_index`
accumulates the dense index x + y·res + z·res² while the stride fits, switches to the spatial
hash when the level's size is smaller than res**3, and takes the index modulo the level's own
size. The level scale is tcnn's float32 exp2f(l·log2 s)·b − 1 (dc3d_jax rounds b·s**l − 1
from float64: the two differ by a few float32 ulps, inside the tolerance).
"""

import itertools
import json
import math

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from benchmarks import hash_grid as hash_grid_benchmark
from dc3d_jax.geometry import hash_grid

MASK32 = 0xFFFFFFFF
PRIMES = (1, 2654435761, 805459861)

# 4 levels of scales 3, 7, 15, 31 -> resolutions 4, 8, 16, 32 and res**3 = 64, 512, 4096,
# 32768 against T = 1024: two dense levels (64 and 512 rows), two hashed. Integer scales put
# the upper corner of the top half-cell one past the last vertex (tcnn's aliasing).
SMALL = hash_grid.HashGridSpec(n_levels=4, n_features=2, log2_table_size=10,
                               base_resolution=4, per_level_scale=2.0)
# Fractional scales, 3 features; level 0 (res 5) is dense with 5**3 = 125 -> 128 rows, levels
# 1 and 2 (res 9, 15) are hashed (729, 3375 > 2**8).
ODD = hash_grid.HashGridSpec(n_levels=3, n_features=3, log2_table_size=8,
                             base_resolution=5, per_level_scale=1.7)


def tcnn_levels(spec):
  """[(scale, resolution, params_in_level)] per level, as tcnn's constructor computes them."""
  out = []
  for level in range(spec.n_levels):
    log2_scale = np.float32(math.log2(spec.per_level_scale))
    scale = float(np.float32(np.exp2(np.float32(level) * log2_scale))
                  * np.float32(spec.base_resolution) - np.float32(1.0))
    res = math.ceil(scale) + 1
    params = min(-(-res**3 // 8) * 8, 2**spec.log2_table_size)   # next_multiple(res^3, 8)
    out.append((scale, res, params))
  return out


def tcnn_grid_index(corner, hashmap_size: int, res: int) -> int:
  """grid_index(): dense while the stride fits, else the xor hash; modulo the level size."""
  stride, index = 1, 0
  for dim in range(3):
    if stride > hashmap_size:
      break
    index += corner[dim] * stride
    stride *= res
  if hashmap_size < stride:
    index = 0
    for dim in range(3):
      index ^= (corner[dim] * PRIMES[dim]) & MASK32
  return index % hashmap_size


def brute_force_corners(x, spec):
  """Yields (point, level, row, weight, raw) for every corner of every level, one at a time;
  raw is the index before the modulo (dense levels only, else None)."""
  levels = tcnn_levels(spec)
  for n, point in enumerate(np.asarray(x, np.float32)):
    for level, (scale, res, size) in enumerate(levels):
      # pos_fract in float32, as the kernel computes it.
      pos = [float(np.float32(p) * np.float32(scale) + np.float32(0.5)) for p in point]
      cell = [math.floor(p) for p in pos]
      frac = [p - c for p, c in zip(pos, cell)]
      for bits in itertools.product((0, 1), repeat=3):
        c = [cell[d] + bits[d] for d in range(3)]
        weight = math.prod(frac[d] if bits[d] else 1.0 - frac[d] for d in range(3))
        raw = c[0] + c[1] * res + c[2] * res * res if res**3 <= size else None
        yield n, level, tcnn_grid_index(c, size, res), weight, raw


def brute_force_encode(table, x, spec):
  table = np.asarray(table, np.float64)
  out = np.zeros((len(x), spec.n_levels, spec.n_features))
  for n, level, row, weight, _ in brute_force_corners(x, spec):
    out[n, level] += weight * table[level, row]
  return out.reshape(len(x), -1)


def random_points(key, n):
  """n points in [0, 1]^3: uniform, plus the corners 0 and 1 and points in the top half-cell
  of every level, where the upper corner index reaches res (0.995 > 1 - 0.5/scale for the
  scales here, up to 31)."""
  x = jax.random.uniform(key, (n, 3))
  edges = jnp.array([[0.0, 0.0, 0.0], [1.0, 1.0, 1.0], [0.0, 1.0, 0.5], [0.99, 0.97, 1.0],
                     [0.995, 0.995, 0.995], [0.3, 0.995, 0.999]])
  return jnp.concatenate([x, edges])


def jit_encode(spec):
  return jax.jit(lambda t, x, mask=None: hash_grid.encode(t, x, spec, level_mask=mask))


def random_table(key, spec):
  shape = (spec.n_levels, spec.table_size, spec.n_features)
  return jax.random.uniform(key, shape, jnp.float32, -1.0, 1.0)


@pytest.mark.parametrize("spec, sizes, dense", [
    (SMALL, [64, 512, 1024, 1024], [True, True, False, False]),
    (ODD, [128, 256, 256], [True, False, False])], ids=["small", "odd"])
def test_level_sizes_and_kinds_are_tcnns(spec, sizes, dense):
  assert [size for _, _, size in tcnn_levels(spec)] == sizes
  np.testing.assert_array_equal(spec.level_sizes(), sizes)
  np.testing.assert_array_equal(spec.dense_levels(), dense)
  np.testing.assert_array_equal(spec.resolutions(), [r for _, r, _ in tcnn_levels(spec)])


@pytest.mark.parametrize("spec", [SMALL, ODD], ids=["small", "odd"])
def test_encode_matches_brute_force(spec):
  table = random_table(jax.random.key(0), spec)
  x = random_points(jax.random.key(1), 58)
  got = jit_encode(spec)(table, x)
  assert got.shape == (64, spec.output_dim) and got.dtype == jnp.float32
  # The points reach dense-level indices past the level's size, where "mod level size" and
  # "mod T" pick different rows: the comparison below sees the difference.
  sizes = spec.level_sizes()
  assert any(raw is not None and raw >= sizes[level]
             for _, level, _, _, raw in brute_force_corners(x, spec))
  # Table entries are O(1); the slack is float32 rounding of pos (an ulp of ~32 is 4e-6).
  np.testing.assert_allclose(got, brute_force_encode(table, x, spec), atol=2e-6, rtol=0)


def test_encode_keeps_leading_dims():
  table = random_table(jax.random.key(0), ODD)
  x = jax.random.uniform(jax.random.key(1), (2, 5, 3))
  encode = jit_encode(ODD)
  got = encode(table, x)
  assert got.shape == (2, 5, ODD.output_dim)
  np.testing.assert_array_equal(got.reshape(10, -1), encode(table, x.reshape(10, 3)))


def test_table_gradient_is_scattered_weights():
  spec = SMALL
  table = random_table(jax.random.key(0), spec)
  x = random_points(jax.random.key(1), 40)
  cot = jax.random.normal(jax.random.key(2), (len(x), spec.n_levels, spec.n_features))
  loss = lambda t: jnp.sum(hash_grid.encode(t, x, spec) * cot.reshape(len(x), -1))
  got = jax.jit(jax.grad(loss))(table)
  want = np.zeros(table.shape)
  cot = np.asarray(cot)
  for n, level, row, weight, _ in brute_force_corners(x, spec):
    want[level, row] += weight * cot[n, level]
  assert np.count_nonzero(want) > 100  # many entries are hit, some more than once
  np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)


def test_point_gradient_matches_finite_differences():
  spec = SMALL
  table = random_table(jax.random.key(0), spec)
  cot = jax.random.normal(jax.random.key(2), (spec.output_dim,))
  f = jax.jit(lambda p: jnp.dot(hash_grid.encode(table, p, spec), cot))
  step = 1e-3
  # Within a cell the encoding is linear along each axis, so a central difference is exact
  # up to rounding, provided p +- step stays in the same cell at every level.
  scales = spec.scales()
  candidates = np.asarray(jax.random.uniform(jax.random.key(3), (300, 3)), np.float64)
  frac = (candidates[:, None, :] * scales[:, None] + 0.5) % 1.0
  margin = 2 * step * scales[:, None]
  keep = np.all((frac > margin) & (frac < 1 - margin), axis=(1, 2))
  points = candidates[keep][:10].astype(np.float32)
  assert len(points) == 10
  grad = jax.jit(jax.grad(f))
  for p in points:
    g = np.asarray(grad(jnp.asarray(p)))
    for d in range(3):
      e = np.zeros(3, np.float32)
      e[d] = step
      fd = (float(f(jnp.asarray(p + e))) - float(f(jnp.asarray(p - e)))) / (2 * step)
      np.testing.assert_allclose(g[d], fd, rtol=2e-3, atol=2e-3)


def test_level_mask_zeroes_exactly_the_masked_levels():
  spec = SMALL
  table = random_table(jax.random.key(0), spec)
  x = random_points(jax.random.key(1), 30)
  mask = jnp.array([1.0, 0.0, 1.0, 0.0])
  encode = jit_encode(spec)
  full = encode(table, x).reshape(len(x), spec.n_levels, -1)
  masked = encode(table, x, mask).reshape(len(x), spec.n_levels, -1)
  assert np.all(np.asarray(masked[:, 1]) == 0) and np.all(np.asarray(masked[:, 3]) == 0)
  np.testing.assert_array_equal(masked[:, 0::2], full[:, 0::2])
  assert np.all(np.abs(np.asarray(full[:, 1])) > 0)  # the zeros came from the mask


def test_reference_spec_resolutions():
  spec = hash_grid.HashGridSpec()
  res = spec.resolutions()
  assert res[0] == 16 and spec.scales()[0] == 15.0
  assert abs(int(res[-1]) - 4096) <= 2  # DreamCraft3D: finest level 4096
  assert np.all(np.diff(res) > 0)
  assert spec.table_size == 2**19 and spec.output_dim == 32
  assert spec.dense_levels().tolist() == [True] * 5 + [False] * 11
  assert spec.level_sizes()[0] == 16**3 and spec.level_sizes()[-1] == spec.table_size


def test_from_config_and_init_table():
  cfg = ml_collections.ConfigDict(dict(n_levels=3, n_features=4, log2_table_size=6,
                                       base_resolution=8, per_level_scale=1.5))
  spec = hash_grid.HashGridSpec.from_config(cfg)
  assert spec == hash_grid.HashGridSpec(3, 4, 6, 8, 1.5)
  table = hash_grid.init_table(jax.random.key(0), spec)
  assert table.shape == (3, 64, 4) and table.dtype == jnp.float32
  assert float(jnp.max(jnp.abs(table))) <= 1e-4 and float(jnp.std(table)) > 1e-5


def test_unit_cube_corners_are_finite_with_finite_gradients():
  spec = hash_grid.HashGridSpec()
  table = hash_grid.init_table(jax.random.key(0), spec)
  x = jnp.array([[0.0, 0.0, 0.0], [1.0, 1.0, 1.0], [0.0, 1.0, 0.0], [1.0, 0.5, 0.0]])
  loss = lambda t, x: jnp.sum(jnp.sin(1e4 * hash_grid.encode(t, x, spec)))
  value, (g_table, g_x) = jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))(table, x)
  assert np.isfinite(float(value))
  assert np.all(np.isfinite(np.asarray(g_table))) and np.all(np.isfinite(np.asarray(g_x)))
  assert np.any(np.asarray(g_x) != 0)


def test_points_outside_the_cube_are_clamped():
  table = random_table(jax.random.key(0), SMALL)
  encode = jit_encode(SMALL)
  outside = jnp.array([[-0.5, 0.3, 1.5], [1.2, -1e-3, 0.7]])
  np.testing.assert_array_equal(encode(table, outside), encode(table, jnp.clip(outside, 0, 1)))
  g = jax.grad(lambda x: jnp.sum(hash_grid.encode(table, x, SMALL)))(outside)
  assert np.all(np.asarray(g)[[0, 0, 1, 1], [0, 2, 0, 1]] == 0)
  assert np.all(np.asarray(g)[[0, 1], [1, 2]] != 0)


def test_benchmark_writes_positive_rates(tmp_path):
  out = tmp_path / "sub" / "hash_grid.json"
  hash_grid_benchmark.main(["--out", str(out), "--points", "64", "--levels", "2",
                            "--log2-table", "8", "--repeats", "1"])
  record = json.loads(out.read_text())
  assert record["n_points"] == 64 and record["spec"]["n_levels"] == 2
  assert record["forward_points_per_second"] > 0 and record["fwd_bwd_points_per_second"] > 0
  assert record["platform"] and record["jax_version"] == jax.__version__
