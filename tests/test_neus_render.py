"""NeuS rendering (render/neus.py) and alpha compositing against closed forms, numerical
integration and brute force. Fields are plain closures (an analytic SDF, no hash grid)."""

import math

import jax
import jax.numpy as jnp
import numpy as np
from scipy import integrate

from dc3d_jax.core import schedules
from dc3d_jax.render import neus, occupancy, volume
from test_volume import _np_ray_sphere, _view_rays

SPHERE_R = 0.5


def _sigmoid(x):
  return 0.5 * (1.0 + np.tanh(0.5 * x))


# ------------------------------------------------------------------ compositing from alphas


_weights = jax.jit(volume.weights_from_alpha, static_argnums=3)


def test_weights_from_alpha_match_per_ray_products_and_sum_to_at_most_one():
  rng = np.random.default_rng(0)
  lengths = [5, 0, 1, 12, 8]
  ray = np.concatenate([np.full(n, r) for r, n in enumerate(lengths)] + [np.full(6, 5)])
  live = ray < 5
  alpha = rng.uniform(0.0, 1.0, ray.shape)
  alpha[[2, 9]] = [1.0, 0.0]               # an opaque sample (ray 0) and an empty one (ray 3)
  alpha[~live] = 0.9                       # dead slots must not matter
  w = np.asarray(_weights(jnp.asarray(alpha, jnp.float32), jnp.asarray(ray),
                          jnp.asarray(live), 12), np.float64)
  want = np.zeros_like(alpha)
  for r in range(5):
    trans = 1.0
    for i in np.nonzero(ray == r)[0]:
      want[i], trans = trans * alpha[i], trans * (1.0 - alpha[i])
  np.testing.assert_allclose(w, want, rtol=2e-6, atol=1e-7)
  assert np.all(w[~live] == 0.0) and np.all(w[3:5] == 0.0)   # behind the opaque sample
  per_ray = np.bincount(ray, w, 6)[:5]
  untouched = np.array([np.prod(1.0 - alpha[(ray == r)]) for r in range(5)])
  np.testing.assert_allclose(per_ray, 1.0 - untouched, rtol=2e-6, atol=1e-7)
  assert np.all(per_ray <= 1.0)


def test_weights_from_alpha_gradient_is_finite_at_alpha_one():
  ray, live = jnp.array([0, 0, 0, 1]), jnp.array([True, True, True, False])
  loss = lambda a: jnp.sum(_weights(a, ray, live, 3) * jnp.array([1.0, 2.0, 3.0, 4.0]))
  g = np.asarray(jax.grad(loss)(jnp.array([0.5, 1.0, 0.3, 0.2])))
  # Σ w_i c_i = a0 + 2(1-a0)a1 + 3(1-a0)(1-a1)a2: closed-form partials at (0.5, 1, 0.3).
  np.testing.assert_allclose(g, [1 - 2 * 1.0, 2 * 0.5 - 3 * 0.5 * 0.3, 0.0, 0.0], atol=1e-6)


# ------------------------------------------------------------------------- NeuS alphas


def _plane_alpha_by_integration(f_mid, cos, step, s):
  """1 - exp(-∫ρ dt) over a section of length Δ of the SDF f(t) = f_mid + cos·t, with NeuS's
  opaque density ρ = max(-(dΦ_s(f)/dt)/Φ_s(f), 0) = max(-s·cos·(1 - Φ_s(f)), 0)."""
  rho = lambda t: max(-s * cos * (1.0 - _sigmoid(s * (f_mid + cos * t))), 0.0)
  tau, _ = integrate.quad(rho, -step / 2, step / 2, epsabs=1e-12, epsrel=1e-10, limit=200)
  return 1.0 - math.exp(-tau)


def test_neus_alpha_of_a_plane_is_the_integrated_opaque_density():
  step, s = 0.0135, 200.0
  rng = np.random.default_rng(1)
  f_mid = rng.uniform(-0.02, 0.03, 40)
  cos = -rng.uniform(0.05, 1.0, 40)                        # rays approaching the plane
  normal = np.array([0.0, 0.0, 1.0])
  dirs = np.stack([np.sqrt(1 - cos**2), np.zeros_like(cos), cos], -1)
  got = np.asarray(neus.neus_alpha(jnp.asarray(f_mid, jnp.float32),
                                   jnp.broadcast_to(jnp.asarray(normal, jnp.float32), (40, 3)),
                                   jnp.asarray(dirs, jnp.float32), step, s, 1.0), np.float64)
  want = np.array([_plane_alpha_by_integration(f, c, step, s) for f, c in zip(f_mid, cos)])
  assert want.min() < 0.01 and want.max() > 0.5          # both sides of the plane
  # The reference's +1e-5 guard moves α by ≤ 1e-5/Φ_s(f_prev); float32 sigmoids ~1e-6.
  prev_cdf = _sigmoid(s * (f_mid - cos * step / 2))
  np.testing.assert_allclose(got, want, atol=1e-5 / prev_cdf.min() + 1e-5)
  # Leaving the surface (cos > 0), the true α is 0; the guard leaves ≤ 1e-5/Φ_s(f_prev).
  away = neus.neus_alpha(jnp.float32(0.01), jnp.array([0.0, 0.0, 1.0]), jnp.array([0.0, 0.0, 1.0]),
                         step, s, 1.0)
  assert 0.0 < float(away) <= 1e-5 / _sigmoid(s * 0.01) * 1.001


def test_occupancy_alpha_is_the_simplified_alpha_with_cos_minus_one():
  step, s = 0.02, 35.0
  f = np.linspace(-0.3, 0.3, 61)
  got = np.asarray(neus.occupancy_alpha(jnp.asarray(f, jnp.float32), step, s), np.float64)
  prev, nxt = _sigmoid(s * (f + step / 2)), _sigmoid(s * (f - step / 2))
  # float32 sigmoids near 1 resolve ~6e-8, so their difference carries ~1e-7 absolute error.
  np.testing.assert_allclose(got, np.clip((prev - nxt + 1e-5) / (prev + 1e-5), 0, 1),
                             rtol=1e-5, atol=3e-7)
  # It is the rendering α of a ray running straight into the surface (d·n = -1), at any r.
  n = jnp.broadcast_to(jnp.array([1.0, 0.0, 0.0]), (61, 3))
  for ratio in (0.0, 0.5, 1.0):
    np.testing.assert_allclose(np.asarray(neus.neus_alpha(jnp.asarray(f, jnp.float32), n, -n,
                                                          step, s, ratio)), got, rtol=1e-6,
                               atol=5e-7)


def test_cos_anneal_endpoints():
  ratio = lambda step, end: float(schedules.cos_anneal_ratio(step, end))
  assert ratio(0, 5000) == 0.0 and ratio(2500, 5000) == 0.5
  assert ratio(5000, 5000) == 1.0 and ratio(9000, 5000) == 1.0 and ratio(0, 0) == 1.0
  cos = jnp.linspace(-1.0, 1.0, 9)
  # r = 0: -(1 - cos)/2 (a ray leaving the surface still sees a falling SDF); r = 1: min(cos, 0).
  np.testing.assert_allclose(neus.annealed_cos(cos, 0.0), -(1.0 - cos) / 2, atol=1e-7)
  np.testing.assert_allclose(neus.annealed_cos(cos, 1.0), jnp.minimum(cos, 0.0), atol=1e-7)
  assert np.all(np.asarray(neus.annealed_cos(cos, 0.3)) <= 0.0)


# --------------------------------------------------------------------------- a sphere SDF


def _sphere_sdf(x):
  return jnp.sqrt(jnp.sum(x * x, -1)) - SPHERE_R


def _sphere_field(x):
  return _sphere_sdf(x), jnp.full(x.shape, 0.3)


SETTINGS = volume.VolumeSettings(num_steps_diagonal=128, samples_per_ray=128.0,
                                 stratified=False, alpha_threshold=0.01,
                                 prepass_samples_per_ray=128.0)


@jax.jit
def _render_sphere(rays, key):
  return neus.render_rays(_sphere_field, _sphere_sdf, rays, occupancy.init_grid(16), SETTINGS,
                          5000.0, 1.0, key, normals="normal_perturb")


def test_sharp_sphere_sdf_renders_the_ray_sphere_distance():
  rays = _view_rays(20.0, 35.0, 15)
  out = _render_sphere(rays, jax.random.key(0))
  step = SETTINGS.step_size
  o, d = np.asarray(rays.origins, np.float64), np.asarray(rays.directions, np.float64)
  t_hit, chord, closest = _np_ray_sphere(o, d, SPHERE_R)
  hit, miss = chord > 2 * step, closest > SPHERE_R + 0.02
  assert hit.sum() >= 40 and miss.sum() >= 40 and float(out["kept_frac"]) == 1.0
  opacity, depth = (np.asarray(out[k])[:, 0] for k in ("opacity", "depth"))
  np.testing.assert_allclose(opacity[hit], 1.0, atol=1e-5)
  # Pruned to the few samples near the surface, each leaving it with α ≈ 1e-5 (the guard).
  assert np.all(opacity[miss] < 1e-4)
  # At r = 1 a sample's weight is the mass of the (logistic, width 1/s) surface crossing in
  # its section, so depth is the midpoint rule of the crossing's mean: within Δ/2 of t_hit,
  # plus the sphere's curvature over a section (Δ²/8R ≈ 7e-4).
  err = depth[hit] / opacity[hit] - t_hit[hit]
  assert np.all(np.abs(err) <= step / 2 + 2e-3)
  assert np.abs(err).max() > step / 8                      # the bound is not vacuous
  np.testing.assert_allclose(np.asarray(out["rgb"])[hit], 0.3, atol=1e-4)
  np.testing.assert_allclose(np.asarray(out["rgb"])[miss], 1.0, atol=1e-4)
  assert np.all(opacity <= 1.0)
  # Per-sample outputs at the samples that carry weight (near the surface, |x| ≈ R): the
  # forward-difference gradient of |x| - R has norm 1 + O(ε/R), and the normals face the
  # camera (the orientation penalty max(0, n·d)² vanishes).
  w = np.asarray(out["weights"])
  near = w > 1e-3
  grad, normal, dirs = (np.asarray(out[k])[near] for k in ("sdf_grad", "normal", "dirs"))
  assert near.sum() >= hit.sum()
  np.testing.assert_allclose(np.linalg.norm(grad, axis=-1), 1.0, atol=0.01 / SPHERE_R)
  np.testing.assert_allclose(normal, grad / np.linalg.norm(grad, axis=-1, keepdims=True),
                             atol=1e-6)
  facing = np.sum(normal * dirs, -1)
  assert np.sum(w[near] * np.maximum(facing, 0.0) ** 2) < 1e-3 * np.sum(w[near])
  # normal_perturb: the sphere's normal at x + δ, δ ~ N(0, 0.01²), so it turns by
  # |δ_tangential|/R (rms √2·0.01/R ≈ 0.028 rad) from the normal at x.
  perturbed = np.asarray(out["normal_perturb"])[near]
  np.testing.assert_allclose(np.linalg.norm(perturbed, axis=-1), 1.0, atol=1e-5)
  angle = np.arccos(np.clip(np.sum(perturbed * normal, -1), -1.0, 1.0))
  rms = math.sqrt(2) * SETTINGS.perturb_std / SPHERE_R
  assert 0.3 * rms < np.sqrt(np.mean(angle**2)) < 3 * rms
