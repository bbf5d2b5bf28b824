"""Volume rendering and the occupancy grid against closed forms and NumPy brute force.

Fields are plain closures: field_fn([N, 3]) -> (σ [N], rgb [N, 3]); density_fn([N, 3]) -> σ [N].
"""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dc3d_jax import cameras
from dc3d_jax.core.types import Rays
from dc3d_jax.render import occupancy, volume

RADIUS = 2.0


def _rays(origins, directions):
  d = np.asarray(directions, np.float64)
  d = d / np.linalg.norm(d, axis=-1, keepdims=True)
  return Rays(origins=jnp.asarray(origins, jnp.float32), directions=jnp.asarray(d, jnp.float32))


def _np_ray_box(o, d, r):
  """Float64 slab test: (t_near clipped at 0, t_far)."""
  with np.errstate(divide="ignore"):
    t0, t1 = (-r - o) / d, (r - o) / d
  return np.maximum(np.minimum(t0, t1).max(-1), 0.0), np.maximum(t0, t1).min(-1)


def _np_midpoints(o, d, settings):
  """[R, N] float64 non-stratified sample midpoints and their validity (inside the box)."""
  t_near, t_far = _np_ray_box(o, d, settings.radius)
  n = settings.num_steps_diagonal
  t = t_near[:, None] + (np.arange(n)[None] + 0.5) * settings.step_size
  return t, t < t_far[:, None]


@functools.partial(jax.jit, static_argnums=(2, 3))
def _packed_rays(rays, grid, settings, budget):
  """[K] ray index of each packed slot, as the (non-pruning) renderer packs them."""
  _, valid = volume.candidate_samples(rays, grid, settings, jax.random.key(0))
  return volume.pack(valid, budget)[0]


def _renderer(field_fn, density_fn, settings, normals="none"):
  def render(rays, grid, key):
    return volume.render_rays(field_fn, density_fn, rays, grid, settings, key, normals=normals)
  return jax.jit(render)


# ----------------------------------------------------------------------------- ray_box


def test_ray_box_closed_form():
  rays = _rays([[3.8, 0, 0], [3.8, 0.5, -1.0], [0.0, 0.0, 0.0], [3.8, 3.0, 0.0], [0, 0, 5.0]],
               [[-1, 0, 0], [-1, 0, 0], [0, 0, 1], [-1, 0, 0], [0, 0, 1]])
  t_near, t_far = (np.asarray(v) for v in volume.ray_box(rays, RADIUS))
  np.testing.assert_allclose(t_near[:3], [1.8, 1.8, 0.0], atol=1e-6)
  np.testing.assert_allclose(t_far[:3], [5.8, 5.8, 2.0], atol=1e-6)
  assert t_far[3] <= t_near[3]                 # passes beside the box
  assert t_far[4] <= t_near[4]                 # points away from it


def test_ray_box_random_rays_match_float64():
  rng = np.random.default_rng(0)
  o = rng.uniform(-5, 5, (256, 3))
  d = rng.normal(size=(256, 3))
  d /= np.linalg.norm(d, axis=-1, keepdims=True)
  t_near, t_far = (np.asarray(v, np.float64) for v in volume.ray_box(_rays(o, d), RADIUS))
  want_near, want_far = _np_ray_box(o, d, RADIUS)
  hit = want_far > want_near + 1e-3
  miss = want_far < want_near - 1e-3
  assert hit.sum() > 20 and miss.sum() > 20
  np.testing.assert_allclose(t_near[hit], want_near[hit], atol=1e-4)
  np.testing.assert_allclose(t_far[hit], want_far[hit], atol=1e-4)
  assert np.all(t_far[miss] <= t_near[miss])
  # Exit points of hits lie on the box surface.
  exit_points = o[hit] + t_far[hit, None] * d[hit]
  np.testing.assert_allclose(np.abs(exit_points).max(-1), RADIUS, atol=1e-4)


# ------------------------------------------------------------------ compositing weights


def _packed_example(seed=0):
  """Rays of lengths 5, 0, 1, 12, 8, 9 (ray 1 has none), then 6 dead slots (ray = R)."""
  rng = np.random.default_rng(seed)
  lengths = [5, 0, 1, 12, 8, 9]
  n_rays = len(lengths)
  ray = np.concatenate([np.full(n, r) for r, n in enumerate(lengths)] + [np.full(6, n_rays)])
  live = ray < n_rays
  sigma = rng.uniform(0.0, 40.0, ray.shape)
  sigma[~live] = 1e3                           # garbage in dead slots must not matter
  return ray, live, sigma, lengths


_composite_weights = jax.jit(volume.composite_weights, static_argnums=(3, 4))


def _np_weights(sigma, ray, live, step):
  """w_i = exp(-Σ_{j<i} σ_j Δ)(1 - exp(-σ_i Δ)), one ray at a time."""
  w = np.zeros_like(sigma)
  for r in np.unique(ray[live]):
    acc = 0.0
    for i in np.nonzero((ray == r) & live)[0]:
      w[i] = math.exp(-acc) * (1.0 - math.exp(-sigma[i] * step))
      acc += sigma[i] * step
  return w


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_composite_weights_match_per_ray_brute_force(seed):
  ray, live, sigma, lengths = _packed_example(seed)
  step = 0.02
  w = np.asarray(_composite_weights(jnp.asarray(sigma, jnp.float32), jnp.asarray(ray),
                                    jnp.asarray(live), step, max(lengths)))
  want = _np_weights(sigma, ray, live, step)
  np.testing.assert_allclose(w, want, rtol=1e-5, atol=1e-7)
  assert np.all(w[~live] == 0.0)
  # Σ_i w_i = 1 - exp(-Σ_i σ_i Δ) per ray (telescoping) and never exceeds 1.
  n_rays = len(lengths)
  per_ray = np.bincount(ray, weights=w, minlength=n_rays + 1)[:n_rays]
  tau = np.bincount(ray[live], weights=sigma[live] * step, minlength=n_rays)
  np.testing.assert_allclose(per_ray, 1.0 - np.exp(-tau), rtol=1e-5, atol=1e-7)
  assert np.all(per_ray <= 1.0 + 1e-6) and np.all(w >= 0.0)


def test_composite_weights_with_max_len_equal_to_the_longest_ray():
  # The doubling scan runs ⌈log2 max_len⌉ passes; it must still see the whole longest ray,
  # including at powers of two. Padded to 40 slots so the shapes stay put.
  rng = np.random.default_rng(7)
  for length in (1, 2, 7, 8, 9, 16, 17):
    ray = np.concatenate([np.repeat([0, 1, 2], [length, length, 1]),
                          np.full(40 - 2 * length - 1, 3)])
    live = ray < 3
    sigma = rng.uniform(0.0, 30.0, ray.shape)
    w = np.asarray(_composite_weights(jnp.asarray(sigma, jnp.float32), jnp.asarray(ray),
                                      jnp.asarray(live), 0.05, length))
    np.testing.assert_allclose(w, _np_weights(sigma, ray, live, 0.05), rtol=1e-5, atol=1e-7,
                               err_msg=f"length {length}")


def test_accumulate_sums_per_ray_and_drops_dead_slots():
  ray, live, _, lengths = _packed_example()
  rng = np.random.default_rng(3)
  w = np.where(live, rng.uniform(0, 1, ray.shape), 7.0)
  v = rng.normal(size=(ray.size, 3))
  got = np.asarray(volume.accumulate(jnp.asarray(w, jnp.float32), jnp.asarray(v, jnp.float32),
                                     jnp.asarray(ray), len(lengths)))
  want = np.stack([np.sum((w[:, None] * v)[ray == r], 0) for r in range(len(lengths))])
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


# -------------------------------------------------------------------------------- pack


_pack = jax.jit(volume.pack, static_argnums=1)
_repack = jax.jit(volume.repack, static_argnums=(3, 4, 5))


def _np_pack(valid, budget):
  """Largest j* with Σ_{k<j*} (valid samples at index k) ≤ budget; keep indices < j*."""
  j_star = max(j for j in range(valid.shape[1] + 1) if valid[:, :j].sum() <= budget)
  return valid & (np.arange(valid.shape[1]) < j_star)[None], j_star


@pytest.mark.parametrize("budget", [40, 100, 10_000])
def test_pack_cuts_every_ray_at_the_same_index(budget):
  rng = np.random.default_rng(budget)
  n_rays, n = 9, 24
  valid = rng.uniform(size=(n_rays, n)) < 0.6
  valid[4] = False                                          # a ray with no samples
  ray, sample, live, kept_frac = (np.asarray(v) for v in _pack(jnp.asarray(valid), budget))
  assert ray.shape == sample.shape == live.shape == (budget,)
  kept, j_star = _np_pack(valid, budget)
  got = np.zeros_like(valid)
  got[ray[live], sample[live]] = True
  np.testing.assert_array_equal(got, kept)
  np.testing.assert_allclose(float(kept_frac), kept.sum() / valid.sum(), rtol=1e-6)
  # Ray-major, near to far; dead slots trail with ray = R, sample 0.
  flat = ray[live] * n + sample[live]
  assert np.all(np.diff(flat) > 0)
  assert live.sum() == kept.sum() and np.all(live[:live.sum()])
  assert np.all(ray[~live] == n_rays) and np.all(sample[~live] == 0)
  # Each ray keeps its nearest valid samples: a prefix of its valid list.
  for r in range(n_rays):
    got_r = sample[live][ray[live] == r]
    np.testing.assert_array_equal(got_r, np.nonzero(valid[r])[0][:len(got_r)])
  if valid.sum() <= budget:
    assert float(kept_frac) == 1.0 and j_star == n
    rows, cols = np.nonzero(valid)
    np.testing.assert_array_equal(ray[live], rows)
    np.testing.assert_array_equal(sample[live], cols)
  else:
    assert float(kept_frac) < 1.0
    # j* is maximal: one more index would not fit.
    assert valid[:, :j_star + 1].sum() > budget


@pytest.mark.parametrize("budget", [30, 500])
def test_repack_keeps_the_selection_in_order(budget):
  rng = np.random.default_rng(budget)
  n_rays, n = 7, 16
  valid = rng.uniform(size=(n_rays, n)) < 0.7
  ray, sample, live, _ = _pack(jnp.asarray(valid), 200)
  keep = np.asarray(live) & (rng.uniform(size=200) < 0.5)
  r2, s2, l2, frac = (np.asarray(v) for v in _repack(jnp.asarray(keep), ray, sample, n_rays,
                                                     n, budget))
  chosen = np.zeros((n_rays, n), bool)
  chosen[np.asarray(ray)[keep], np.asarray(sample)[keep]] = True
  kept, _ = _np_pack(chosen, budget)
  rows, cols = np.nonzero(kept)
  np.testing.assert_array_equal(r2[l2], rows)
  np.testing.assert_array_equal(s2[l2], cols)
  assert np.all(r2[~l2] == n_rays)
  np.testing.assert_allclose(float(frac), kept.sum() / chosen.sum(), rtol=1e-6)


# ------------------------------------------------------------------ closed-form renders

SLAB_SETTINGS = volume.VolumeSettings(num_steps_diagonal=64, samples_per_ray=64.0,
                                      stratified=False)


def test_constant_density_slab():
  c, thickness, colour = 2.0, 0.5, np.array([0.2, 0.5, 0.9])

  def field_fn(x):
    sigma = jnp.where(jnp.abs(x[:, 0]) < thickness / 2, c, 0.0)
    return sigma, jnp.broadcast_to(jnp.asarray(colour, jnp.float32), x.shape)

  rng = np.random.default_rng(0)
  o = np.stack([np.full(12, 3.8), rng.uniform(-1, 1, 12), rng.uniform(-1, 1, 12)], -1)
  d = np.stack([-np.ones(12), rng.uniform(-0.2, 0.2, 12), rng.uniform(-0.2, 0.2, 12)], -1)
  d /= np.linalg.norm(d, axis=-1, keepdims=True)
  rays = _rays(o, d)
  grid = occupancy.init_grid(8)
  render = _renderer(field_fn, lambda x: field_fn(x)[0], SLAB_SETTINGS)
  out = render(rays, grid, jax.random.key(0))
  assert float(out["kept_frac"]) == 1.0
  step = SLAB_SETTINGS.step_size
  t, valid = _np_midpoints(o, d, SLAB_SETTINGS)
  x = o[:, None, 0] + t * d[:, None, 0]
  inside = valid & (np.abs(x) < thickness / 2)
  margin = np.abs(np.abs(x[valid]) - thickness / 2).min()
  assert margin > 1e-4, "a midpoint sits on the slab face; float32 could classify it either way"
  l_eff = inside.sum(-1) * step                             # L' = (midpoints inside)·Δ
  length = thickness / np.abs(d[:, 0])                      # the chord through the slab
  assert np.all(np.abs(l_eff - length) <= step + 1e-9)
  opacity = np.asarray(out["opacity"])[:, 0]
  np.testing.assert_allclose(opacity, 1.0 - np.exp(-c * l_eff), rtol=1e-5)
  assert np.all(opacity >= 1.0 - np.exp(-c * (length - step)) - 1e-6)
  assert np.all(opacity <= 1.0 - np.exp(-c * (length + step)) + 1e-6)
  want_rgb = opacity[:, None] * colour + (1.0 - opacity[:, None]) * 1.0
  np.testing.assert_allclose(np.asarray(out["rgb"]), want_rgb, rtol=1e-5, atol=1e-6)
  # Depth = Σ w_i t_i over the slab's midpoints.
  tau = np.where(inside, c * step, 0.0)
  w = np.exp(-(np.cumsum(tau, -1) - tau)) * (1.0 - np.exp(-tau))
  np.testing.assert_allclose(np.asarray(out["depth"])[:, 0], np.sum(w * t, -1), rtol=1e-5)


def test_weights_sum_to_opacity_for_random_densities():
  def density_fn(x):                                       # smooth, positive, ≤ 7
    return 4.0 + 3.0 * jnp.sin(3.0 * x[:, 0] + 2.0 * x[:, 1]) * jnp.cos(x[:, 2])

  def field_fn(x):
    return density_fn(x), 0.5 + 0.5 * jnp.sin(x)

  rng = np.random.default_rng(2)
  o = rng.normal(size=(24, 3))
  o = 3.8 * o / np.linalg.norm(o, axis=-1, keepdims=True)
  d = -o + rng.normal(scale=1.5, size=o.shape)             # some rays miss the box
  d /= np.linalg.norm(d, axis=-1, keepdims=True)
  settings = volume.VolumeSettings(num_steps_diagonal=48, samples_per_ray=48.0,
                                   stratified=False)
  rays, grid = _rays(o, d), occupancy.init_grid(4)
  out = _renderer(field_fn, density_fn, settings)(rays, grid, jax.random.key(3))
  assert float(out["kept_frac"]) == 1.0
  w, live = np.asarray(out["weights"], np.float64), np.asarray(out["live"])
  opacity = np.asarray(out["opacity"], np.float64)[:, 0]
  assert np.all(w >= 0.0) and np.all(w[~live] == 0.0)
  assert np.all(opacity <= 1.0) and opacity.max() > 0.99 and np.any(opacity == 0.0)
  # The packed layout, rebuilt: the renderer packs the candidates ray-major, near to far.
  ray = np.asarray(_packed_rays(rays, grid, settings, settings.budget(len(o))))
  np.testing.assert_array_equal(ray < len(o), live)
  np.testing.assert_allclose(np.bincount(ray, w, len(o) + 1)[:-1], opacity, rtol=1e-5, atol=1e-6)
  # Brute force per ray on the float64 midpoints: w_i = exp(-Σ_{j<i} σ_j Δ)(1 - exp(-σ_i Δ)).
  t, inside = _np_midpoints(o, d, settings)
  np.testing.assert_array_equal(inside.sum(-1), np.bincount(ray[live], minlength=len(o)))
  x = o[:, None] + t[..., None] * d[:, None]
  sigma = 4.0 + 3.0 * np.sin(3.0 * x[..., 0] + 2.0 * x[..., 1]) * np.cos(x[..., 2])
  tau = np.where(inside, sigma * settings.step_size, 0.0)
  want = np.exp(-(np.cumsum(tau, -1) - tau)) * (1.0 - np.exp(-tau))
  np.testing.assert_allclose(w[live], want[inside], rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(opacity, 1.0 - np.exp(-tau.sum(-1)), rtol=1e-5, atol=1e-6)
  # dirs: each sample carries its ray's direction.
  np.testing.assert_allclose(np.asarray(out["dirs"])[live], d[ray[live]], atol=1e-6)


DENSE = 1e4
SPHERE_R = 0.5


def _dense_sphere(x):
  return jnp.where(jnp.sum(x * x, -1) < SPHERE_R**2, DENSE, 0.0)


def _sphere_field(x):
  return _dense_sphere(x), jnp.full(x.shape, 0.3)


def _np_ray_sphere(o, d, r):
  """Near hit distance and chord length along unit rays (NaN / 0 on a miss); closest approach."""
  b = np.sum(o * d, -1)
  disc = b * b - (np.sum(o * o, -1) - r * r)
  root = np.sqrt(np.maximum(disc, 0.0))
  closest = np.linalg.norm(o - b[:, None] * d, axis=-1)
  return np.where(disc > 0, -b - root, np.nan), np.where(disc > 0, 2 * root, 0.0), closest


@functools.partial(jax.jit, static_argnums=(2, 3))
def _view_rays(elevation, azimuth, size, fovy=22.0):
  """Flat [size², 3] rays of a camera at distance 3.8 looking at the origin."""
  rays = cameras.camera_rays(cameras.make_camera(elevation, azimuth, 3.8, fovy, size, size))
  return Rays(origins=rays.origins.reshape(-1, 3), directions=rays.directions.reshape(-1, 3))


def _sphere_view(size=11):
  return _view_rays(20.0, 35.0, size)


SPHERE_SETTINGS = volume.VolumeSettings(num_steps_diagonal=128, samples_per_ray=128.0)
_render_sphere = _renderer(_sphere_field, _dense_sphere, SPHERE_SETTINGS)   # one compile


def _sphere_classes(rays, step):
  o, d = np.asarray(rays.origins, np.float64), np.asarray(rays.directions, np.float64)
  t_hit, chord, closest = _np_ray_sphere(o, d, SPHERE_R)
  hit, miss = chord > 2 * step, closest > SPHERE_R + 1e-3
  assert hit.sum() >= 20 and miss.sum() >= 8
  return t_hit, hit, miss


def test_dense_sphere_depth_is_the_ray_sphere_distance():
  rays = _sphere_view()
  step = SPHERE_SETTINGS.step_size
  out = _render_sphere(rays, occupancy.init_grid(16), jax.random.key(0))
  assert float(out["kept_frac"]) == 1.0
  t_hit, hit, miss = _sphere_classes(rays, step)
  opacity = np.asarray(out["opacity"])[:, 0]
  depth = np.asarray(out["depth"])[:, 0]
  np.testing.assert_allclose(opacity[hit], 1.0, atol=1e-5)
  np.testing.assert_array_equal(opacity[miss], 0.0)
  # The first midpoint inside the sphere takes all the weight: t_hit ≤ depth < t_hit + Δ.
  rel = depth[hit] / opacity[hit] - t_hit[hit]
  assert np.all(rel >= -1e-4) and np.all(rel <= step + 1e-4)
  # rgb: the sphere's colour where hit, the white background where missed.
  rgb = np.asarray(out["rgb"])
  np.testing.assert_allclose(rgb[hit], 0.3, atol=1e-4)
  np.testing.assert_allclose(rgb[miss], 1.0)


def test_pruning_keeps_the_render_and_drops_samples():
  rays = _sphere_view()
  grid = occupancy.init_grid(16)
  key = jax.random.key(1)
  full = _render_sphere(rays, grid, key)
  results = {}
  for name, alpha, trans, spr in [("alpha", 0.01, 0.0, 24.0), ("both", 0.01, 1e-4, 4.0)]:
    settings = volume.VolumeSettings(num_steps_diagonal=128, samples_per_ray=spr,
                                     prepass_samples_per_ray=128.0, alpha_threshold=alpha,
                                     transmittance_threshold=trans)
    assert settings.prunes
    out = _renderer(_sphere_field, _dense_sphere, settings)(rays, grid, key)
    assert float(out["kept_frac"]) == 1.0, name
    np.testing.assert_allclose(np.asarray(out["opacity"]), np.asarray(full["opacity"]), atol=1e-3)
    np.testing.assert_allclose(np.asarray(out["depth"]), np.asarray(full["depth"]), atol=1e-3)
    results[name] = float(out["samples_per_ray"])
  # The same stratification key gives the same candidates: only empty / hidden samples go.
  assert results["alpha"] < 0.5 * float(full["samples_per_ray"])
  assert results["both"] < results["alpha"]
  # With the transmittance cut only the first sample inside (σΔ ≈ 270: opaque) survives, one per
  # ray that sees the sphere.
  opaque_rays = np.asarray(full["opacity"])[:, 0] > 0.5
  np.testing.assert_allclose(results["both"], opaque_rays.mean(), rtol=1e-6)


@functools.partial(jax.jit, static_argnums=(0, 2))
def _fd_normals(density_fn, points, settings):
  return volume.finite_difference_normals(density_fn, points, density_fn(points), settings)


def _radial_density(x):
  """σ = exp(-|x|): decreasing outward, so n = -∇σ/|∇σ| = x/|x|."""
  return jnp.exp(-jnp.sqrt(jnp.sum(x * x, -1)))


@pytest.mark.parametrize("eps", [0.01, 0.001])
def test_finite_difference_normals_of_a_radial_density(eps):
  rng = np.random.default_rng(4)
  x = rng.normal(size=(200, 3))
  r = rng.uniform(0.5, 1.5, (200, 1))
  x = r * x / np.linalg.norm(x, axis=-1, keepdims=True)
  settings = volume.VolumeSettings(normal_eps=eps)
  xj = jnp.asarray(x, jnp.float32)
  n = np.asarray(_fd_normals(_radial_density, xj, settings), np.float64)
  np.testing.assert_allclose(np.linalg.norm(n, axis=-1), 1.0, atol=1e-5)
  err = np.linalg.norm(n - x / r, axis=-1)
  # Forward differences: ∇σ + (ε/2)·diag(H); for f = e^{-r}, |H| ≤ (1 + 1/r)·|∇σ|.
  bound = eps / 2 * math.sqrt(3) * (1.0 + 1.0 / r[:, 0]) + 2e-4
  assert np.all(err <= bound)
  assert err.max() > 0.05 * bound.max()                    # the bound is not vacuous


def test_finite_difference_normals_stay_inside_the_box():
  def density_fn(x):                                       # NaN outside [-r, r]^3
    inside = jnp.all(jnp.abs(x) <= RADIUS, -1)
    return jnp.where(inside, _radial_density(x), jnp.nan)

  x = jnp.array([[RADIUS, 0.0, 0.0], [RADIUS, RADIUS, RADIUS], [1.0, -RADIUS, 0.5]])
  n = _fd_normals(density_fn, x, volume.VolumeSettings())
  assert np.all(np.isfinite(np.asarray(n)))


def _ramp_sphere(x):
  """Dense inside radius 0.5, growing inward, so its finite-difference normal is defined."""
  return 1e6 * jnp.maximum(SPHERE_R - jnp.sqrt(jnp.sum(x * x, -1)), 0.0)


def _packed_points(rays, grid, settings, n_out):
  """Float64 points of the renderer's packed samples (non-stratified), rebuilt in NumPy."""
  ray = np.asarray(_packed_rays(rays, grid, settings, settings.budget(n_out)))
  o, d = np.asarray(rays.origins, np.float64), np.asarray(rays.directions, np.float64)
  t, inside = _np_midpoints(o, d, settings)
  points = np.zeros((ray.size, 3))
  live = ray < len(o)
  points[live] = (o[:, None] + t[..., None] * d[:, None])[inside]
  return points, ray, live


def test_comp_normal_of_a_dense_sphere_faces_the_camera():
  size = 11
  settings = volume.VolumeSettings(num_steps_diagonal=128, samples_per_ray=128.0,
                                   stratified=False)
  rays = _view_rays(0.0, 0.0, size)
  field = lambda x: (_ramp_sphere(x), jnp.full(x.shape, 0.3))
  grid = occupancy.init_grid(16)
  out = _renderer(field, _ramp_sphere, settings, normals="normal")(rays, grid,
                                                                  jax.random.key(2))
  comp = np.asarray(out["comp_normal"]).reshape(-1, 3)
  opacity = np.asarray(out["opacity"]).reshape(-1)
  centre = size * size // 2
  assert opacity[centre] > 0.999
  # n = +X up to the forward-difference error: a sideways shift ε moves |x| by ε²/(2r), so
  # n_y = n_z ≈ ε/(2r) = 0.01 here (0.005 after the [0, 1] mapping).
  np.testing.assert_allclose(comp[centre], [1.0, 0.5, 0.5], atol=0.5 * 0.01 / SPHERE_R)
  # Empty pixels are zero (comp_normal is multiplied by the opacity).
  np.testing.assert_array_equal(comp[opacity == 0.0], 0.0)
  # Hit pixels whose first sample inside is deeper than ε (so no forward difference crosses the
  # kink at the surface): that sample is opaque (σΔ ≥ 1e6·ε·Δ) and its normal, x/|x| up to the
  # ε√3/(2r) forward-difference error, is the decoded comp_normal.
  points, ray, live = _packed_points(rays, grid, settings, size * size)
  depth_in = SPHERE_R - np.linalg.norm(points, axis=-1)
  first = {}
  for k in np.nonzero(live & (depth_in > 0))[0]:
    first.setdefault(ray[k], k)
  rays_ok = [r for r, k in first.items() if depth_in[k] > settings.normal_eps]
  assert len(rays_ok) >= 25 and centre in rays_ok
  k = np.array([first[r] for r in rays_ok])
  r_hat = points[k] / np.linalg.norm(points[k], axis=-1, keepdims=True)
  decoded = 2.0 * comp[rays_ok] / opacity[rays_ok, None] - 1.0
  np.testing.assert_allclose(opacity[rays_ok], 1.0, atol=1e-6)
  fd_error = math.sqrt(3) * settings.normal_eps / (2 * (SPHERE_R - settings.step_size))
  assert np.all(np.linalg.norm(decoded - r_hat, axis=-1) < fd_error)
  d = np.asarray(rays.directions)[rays_ok]
  assert np.all(np.sum(decoded * d, -1) < 0.0)             # facing the camera
  assert out["normal"].shape == out["weights"].shape + (3,)


def test_normal_perturb_is_the_normal_at_a_jittered_point():
  # σ = 13 - |x|²: forward differences give exactly n(p) ∝ 2p + ε(1, 1, 1), so the perturbed
  # normal tells how far the point moved across the normal: σ_tangential ≈ perturb_std.
  settings = volume.VolumeSettings(num_steps_diagonal=64, samples_per_ray=64.0,
                                   stratified=False)
  density_fn = lambda x: 13.0 - jnp.sum(x * x, -1)
  field = lambda x: (density_fn(x), jnp.full(x.shape, 0.3))
  rays = _sphere_view(size=5)
  grid = occupancy.init_grid(4)
  out = _renderer(field, density_fn, settings, normals="normal_perturb")(rays, grid,
                                                                        jax.random.key(5))
  points, _, live = _packed_points(rays, grid, settings, 25)
  eps = settings.normal_eps
  # Away from the centre, and from the box faces (where the shifted queries are clamped).
  use = (live & (np.linalg.norm(points, axis=-1) > 0.5)
         & (np.abs(points).max(-1) < RADIUS - 0.1))
  assert use.sum() > 200
  exact = 2 * points[use] + eps
  exact /= np.linalg.norm(exact, axis=-1, keepdims=True)
  n, n2 = np.asarray(out["normal"], np.float64)[use], np.asarray(out["normal_perturb"])[use]
  np.testing.assert_allclose(n, exact, atol=2e-4)
  # Angle between n(p) and n(p + δ) ≈ |δ_tangential| / |p + ε/2|; E|δ_t|² = 2·std².
  angle = np.arccos(np.clip(np.sum(n * n2, -1), -1.0, 1.0))
  moved = angle * np.linalg.norm(points[use] + eps / 2, axis=-1)
  rms = np.sqrt(np.mean(moved**2))
  np.testing.assert_allclose(rms, math.sqrt(2) * settings.perturb_std, rtol=0.15)


# ---------------------------------------------------------------------------- occupancy


def test_update_grid_marks_the_one_dense_cell():
  res, target = 8, (5, 2, 6)
  cell = 2 * RADIUS / res
  lo = np.array(target) * cell - RADIUS

  def density_fn(x):
    inside = jnp.all((x >= lo) & (x < lo + cell), -1)
    return jnp.where(inside, 50.0, 0.0)

  step = 0.01
  update = jax.jit(functools.partial(occupancy.update_grid, density_fn=density_fn, radius=RADIUS,
                                     step_size=step, threshold=0.01, decay=0.95))
  grid = update(occupancy.init_grid(res), key=jax.random.key(0))
  binary = np.asarray(grid.binary)
  assert binary[target] and binary.sum() == 1
  np.testing.assert_allclose(float(grid.occ[target]), 50.0 * step, rtol=1e-6)
  assert float(np.asarray(grid.occ).sum()) == pytest.approx(0.5, rel=1e-6)
  # Samples are kept only where the grid is occupied.
  centre = lo + cell / 2
  far = np.array([[-1.9, -1.9, -1.9], [1.9, 1.9, -1.9], centre + [cell, 0, 0]])
  got = np.asarray(occupancy.is_occupied(grid, jnp.asarray(np.vstack([centre, far]),
                                                           jnp.float32), RADIUS))
  np.testing.assert_array_equal(got, [True, False, False, False])


def test_update_grid_ema_closed_form():
  res, radius, step, decay, threshold = 4, RADIUS, 0.02, 0.95, 0.01
  rng = np.random.default_rng(6)
  table = rng.uniform(0.0, 1.0, (res,) * 3) * (rng.uniform(size=(res,) * 3) < 0.5)
  old = rng.uniform(0.0, 0.03, (res,) * 3)

  def density_fn(x):                                       # constant on each cell
    idx = jnp.floor((x + radius) / (2 * radius) * res).astype(jnp.int32)
    return jnp.asarray(table, jnp.float32)[idx[:, 0], idx[:, 1], idx[:, 2]]

  grid = occupancy.OccupancyGrid(occ=jnp.asarray(old, jnp.float32),
                                 binary=jnp.ones((res,) * 3, bool))
  update = jax.jit(functools.partial(occupancy.update_grid, density_fn=density_fn, radius=radius,
                                     step_size=step, threshold=threshold, decay=decay))
  new = update(grid, key=jax.random.key(1))
  want = np.maximum(decay * old, table * step)
  np.testing.assert_allclose(np.asarray(new.occ), want, rtol=1e-6)
  np.testing.assert_array_equal(np.asarray(new.binary), want > min(threshold, want.mean()))
  assert 0 < np.asarray(new.binary).sum() < res**3


def test_is_occupied_cells_and_box_edges():
  res = 4
  binary = np.zeros((res,) * 3, bool)
  binary[0, 0, 0] = binary[3, 3, 3] = True
  grid = occupancy.OccupancyGrid(occ=jnp.zeros((res,) * 3), binary=jnp.asarray(binary))
  pts = jnp.array([[-2.0, -2.0, -2.0], [-1.01, -1.01, -1.01], [-0.99, -1.5, -1.5],
                   [2.0, 2.0, 2.0], [2.01, 1.5, 1.5], [0.0, 0.0, 0.0]])
  got = np.asarray(occupancy.is_occupied(grid, pts, RADIUS))
  np.testing.assert_array_equal(got, [True, True, False, True, False, False])
  idx = np.asarray(occupancy.cell_index(pts, RADIUS, res))
  np.testing.assert_array_equal(idx[[0, 1, 2, 3, 5]], [[0, 0, 0], [0, 0, 0], [1, 0, 0],
                                                       [3, 3, 3], [2, 2, 2]])


def test_empty_grid_renders_background_only():
  rays = _sphere_view()
  grid = occupancy.OccupancyGrid(occ=jnp.zeros((16,) * 3), binary=jnp.zeros((16,) * 3, bool))
  out = _render_sphere(rays, grid, jax.random.key(0))
  np.testing.assert_array_equal(np.asarray(out["opacity"]), 0.0)
  np.testing.assert_array_equal(np.asarray(out["rgb"]), 1.0)
  assert float(out["samples_per_ray"]) == 0.0
