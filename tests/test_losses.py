"""Reference-view losses and regularizers against NumPy formulas (reference §3)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dc3d_jax import losses


def _rng(seed=0):
  return np.random.default_rng(seed)


def _f32(x):
  return jnp.asarray(x, jnp.float32)


def _binary_mask(rng, shape, p=0.5):
  m = (rng.uniform(size=shape) < p).astype(np.float64)
  m.reshape(-1)[:3] = [1.0, 1.0, 0.0]                      # never all zeros or all ones
  return m


@pytest.mark.parametrize("background", [1.0, 0.0, 0.3])
def test_rgb_composites_the_reference_over_the_background(background):
  rng = _rng(1)
  pred = rng.uniform(size=(2, 5, 4, 3))
  gt = rng.uniform(size=(2, 5, 4, 3))
  m = _binary_mask(rng, (2, 5, 4, 1))
  m[0, 0, 0, 0] = 0.25                                     # soft edges composite linearly too
  got = float(losses.rgb(_f32(pred), _f32(gt), _f32(m), background))
  target = gt * m + background * (1 - m)
  np.testing.assert_allclose(got, np.mean((pred - target) ** 2), rtol=1e-5)
  # A render equal to the composited reference scores 0, whatever the masked-out colours.
  gt_other = np.where(m > 0, gt, rng.uniform(size=gt.shape))
  assert float(losses.rgb(_f32(gt_other * m + background * (1 - m)), _f32(gt_other), _f32(m),
                          background)) < 1e-12
  assert float(losses.rgb(_f32(target), _f32(gt_other), _f32(m), background)) < 1e-12


def test_rgb_default_background_is_white():
  gt, m = np.zeros((1, 2, 2, 3)), np.zeros((1, 2, 2, 1))
  assert float(losses.rgb(_f32(np.ones((1, 2, 2, 3))), _f32(gt), _f32(m))) == 0.0
  assert float(losses.rgb(_f32(np.zeros((1, 2, 2, 3))), _f32(gt), _f32(m))) == 1.0


def test_mask():
  rng = _rng(2)
  op = rng.uniform(size=(2, 6, 6, 1))
  m = _binary_mask(rng, (2, 6, 6, 1))
  np.testing.assert_allclose(float(losses.mask(_f32(op), _f32(m))), np.mean((op - m) ** 2),
                             rtol=1e-5)
  assert float(losses.mask(_f32(m), _f32(m))) == 0.0


def _depth_case(seed=3):
  rng = _rng(seed)
  gt = rng.uniform(0.0, 1.0, (8, 8, 1))
  pred = gt + 0.3 * rng.normal(size=gt.shape)
  m = _binary_mask(rng, gt.shape, p=0.6)
  return pred, gt, m


def test_depth_rel_is_one_minus_pearson_inside_the_mask():
  pred, gt, m = _depth_case()
  sel = m[..., 0] > 0
  want = 1.0 - np.corrcoef(pred[..., 0][sel], gt[..., 0][sel])[0, 1]
  got = float(losses.depth_rel(_f32(pred), _f32(gt), _f32(m)))
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)
  assert 0.0 < got < 1.0
  # Values outside the mask do not matter.
  junk = np.where(m > 0, pred, 1e3)
  np.testing.assert_allclose(float(losses.depth_rel(_f32(junk), _f32(gt), _f32(m))), got,
                             rtol=1e-4)


@pytest.mark.parametrize("scale,shift", [(1.0, 0.0), (3.7, -2.0), (0.05, 10.0)])
def test_depth_rel_is_invariant_to_positive_affine_rescaling(scale, shift):
  pred, gt, m = _depth_case(4)
  base = float(losses.depth_rel(_f32(pred), _f32(gt), _f32(m)))
  got = float(losses.depth_rel(_f32(scale * pred + shift), _f32(gt), _f32(m)))
  np.testing.assert_allclose(got, base, atol=2e-5)


def test_depth_rel_perfect_and_negated_matches():
  _, gt, m = _depth_case(5)
  affine = 2.5 * gt + 0.7
  np.testing.assert_allclose(float(losses.depth_rel(_f32(affine), _f32(gt), _f32(m))), 0.0,
                             atol=1e-5)
  np.testing.assert_allclose(float(losses.depth_rel(_f32(-affine), _f32(gt), _f32(m))), 2.0,
                             atol=1e-5)


def test_depth_rel_gradient_is_finite_for_a_flat_prediction():
  _, gt, m = _depth_case(6)
  grad = jax.grad(losses.depth_rel)(_f32(np.full(gt.shape, 2.0)), _f32(gt), _f32(m))
  assert np.all(np.isfinite(np.asarray(grad)))


def test_normal_smooth_2d():
  rng = _rng(7)
  n = rng.uniform(size=(2, 5, 7, 3))
  dh = n[:, 1:] - n[:, :-1]
  dw = n[:, :, 1:] - n[:, :, :-1]
  want = np.mean(dh**2) + np.mean(dw**2)
  np.testing.assert_allclose(float(losses.normal_smooth_2d(_f32(n))), want, rtol=1e-5)
  # A constant image is perfectly smooth; a ramp along W only has the W term.
  assert float(losses.normal_smooth_2d(_f32(np.full((1, 4, 4, 3), 0.3)))) == 0.0
  ramp = np.broadcast_to(np.arange(6.0)[None, None, :, None] * 0.1, (1, 3, 6, 3))
  np.testing.assert_allclose(float(losses.normal_smooth_2d(_f32(ramp))), 0.01, rtol=1e-5)


def test_normal_smooth_3d_ignores_dead_samples():
  rng = _rng(8)
  k = 40
  n = rng.normal(size=(k, 3))
  n2 = n + 0.1 * rng.normal(size=(k, 3))
  live = rng.uniform(size=k) < 0.7
  n2[~live] = 1e4                                          # garbage in dead slots
  want = np.mean(np.mean(np.abs(n - n2), -1)[live])
  got = float(losses.normal_smooth_3d(_f32(n), _f32(n2), jnp.asarray(live)))
  np.testing.assert_allclose(got, want, rtol=1e-5)
  assert float(losses.normal_smooth_3d(_f32(n), _f32(n2), jnp.zeros(k, bool))) == 0.0


def _orientation_case(seed=9):
  rng = _rng(seed)
  k = 30
  normal = rng.normal(size=(k, 3))
  normal /= np.linalg.norm(normal, axis=-1, keepdims=True)
  dirs = rng.normal(size=(k, 3))
  dirs /= np.linalg.norm(dirs, axis=-1, keepdims=True)
  weights = rng.uniform(size=k)
  live = rng.uniform(size=k) < 0.8
  weights[~live] = 0.0
  opacity = np.array([0.0, 0.2, 0.0, 1.0, 0.5, 1e-6])[:, None]
  return weights, normal, dirs, live, opacity


def test_orientation_matches_the_formula():
  weights, normal, dirs, live, opacity = _orientation_case()
  facing_away = np.maximum(np.sum(normal * dirs, -1), 0.0) ** 2
  want = np.sum(weights * facing_away * live) / np.sum(opacity > 0)
  got = float(losses.orientation(_f32(weights), _f32(normal), _f32(dirs), jnp.asarray(live),
                                 _f32(opacity)))
  np.testing.assert_allclose(got, want, rtol=1e-5)
  assert got > 0.0


def test_orientation_only_penalises_normals_facing_away():
  weights, normal, dirs, live, opacity = _orientation_case(10)
  toward = -np.sign(np.sum(normal * dirs, -1, keepdims=True)) * normal  # n·d ≤ 0 everywhere
  assert float(losses.orientation(_f32(weights), _f32(toward), _f32(dirs), jnp.asarray(live),
                                  _f32(opacity))) == 0.0
  away = -toward
  assert float(losses.orientation(_f32(weights), _f32(away), _f32(dirs), jnp.asarray(live),
                                  _f32(opacity))) > 0.0


def test_orientation_stops_the_gradient_to_the_weights():
  weights, normal, dirs, live, opacity = _orientation_case(11)
  args = (_f32(weights), _f32(normal), _f32(dirs), jnp.asarray(live), _f32(opacity))
  g_w, g_n = jax.grad(losses.orientation, argnums=(0, 1))(*args)
  np.testing.assert_array_equal(np.asarray(g_w), 0.0)
  # d/dn of w·max(0, n·d)²/P = 2w·max(0, n·d)·d/P (zero for facing normals and dead samples).
  dot = np.maximum(np.sum(normal * dirs, -1, keepdims=True), 0.0)
  want = 2 * (weights * live)[:, None] * dot * dirs / np.sum(opacity > 0)
  np.testing.assert_allclose(np.asarray(g_n), want, rtol=1e-5, atol=1e-7)


def test_sparsity():
  op = _rng(12).uniform(size=(3, 4, 4, 1))
  np.testing.assert_allclose(float(losses.sparsity(_f32(op))), np.mean(np.sqrt(op**2 + 0.01)),
                             rtol=1e-6)
  np.testing.assert_allclose(float(losses.sparsity(jnp.zeros((2, 2)))), 0.1, rtol=1e-6)


def test_opaque_is_the_clamped_binary_entropy():
  op = _rng(13).uniform(size=(2, 5, 5, 1))
  op.reshape(-1)[:4] = [0.0, 1.0, 1e-5, 1 - 1e-5]          # the clamp decides these
  p = np.clip(op, 1e-3, 1 - 1e-3)
  want = np.mean(-p * np.log(p) - (1 - p) * np.log(1 - p))
  np.testing.assert_allclose(float(losses.opaque(_f32(op))), want, rtol=1e-5)
  np.testing.assert_allclose(float(losses.opaque(jnp.full((3,), 0.5))), np.log(2.0), rtol=1e-6)
  # 0.5 is the maximum; the clamp keeps 0 and 1 finite (and equal to the value at 1e-3).
  grid = np.linspace(0.0, 1.0, 101)
  values = np.asarray(jax.vmap(lambda v: losses.opaque(v[None]))(_f32(grid)))
  assert np.argmax(values) == 50 and np.all(values <= np.log(2.0) + 1e-6)
  at_clamp = -1e-3 * np.log(1e-3) - (1 - 1e-3) * np.log(1 - 1e-3)
  np.testing.assert_allclose(values[[0, -1]], at_clamp, rtol=1e-4)
  grad = jax.grad(lambda v: losses.opaque(v))(_f32([0.0, 1.0, 0.3]))
  assert np.all(np.isfinite(np.asarray(grad)))
