"""Schedules and keys against the DreamCraft3D reference table (reference §1, §1a, §2, §3)."""

import zlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dc3d_jax.core import rng, schedules

STEP_CHANGE = (2000, 1.0, 10.0, 2001)      # e.g. lambda_orient 1 -> 10 at step 2000
T_MIN_RAMP = (0, 0.7, 0.2, 200)            # coarse NeRF SDS t_min
BAND = dict(n_levels=16, start_level=8, start_step=2000, update_steps=500)


@pytest.mark.parametrize("step,want", [(0, 1.0), (1000, 1.0), (2000, 1.0), (2001, 10.0),
                                       (2500, 10.0), (5000, 10.0)])
def test_step_change(step, want):
  assert float(schedules.scalar(STEP_CHANGE, step)) == want


@pytest.mark.parametrize("step,want", [(0, 0.7), (50, 0.575), (100, 0.45), (200, 0.2),
                                       (300, 0.2), (5000, 0.2)])
def test_linear_ramp(step, want):
  np.testing.assert_allclose(float(schedules.scalar(T_MIN_RAMP, step)), want, rtol=1e-6)


def test_ramp_before_its_start_is_clamped():
  value = (100, 2.0, 4.0, 300)
  np.testing.assert_allclose([float(schedules.scalar(value, s)) for s in (0, 100, 200, 300, 400)],
                             [2.0, 2.0, 3.0, 4.0, 4.0], rtol=1e-6)


def test_traced_step_gives_the_same_values():
  steps = jnp.array([0, 100, 200, 300, 1999, 2000, 2001], jnp.int32)
  fn = jax.jit(jax.vmap(lambda s: jnp.stack([schedules.scalar(T_MIN_RAMP, s),
                                             schedules.scalar(STEP_CHANGE, s),
                                             schedules.scalar(0.25, s)])))
  got = np.asarray(fn(steps))
  want = np.array([[float(schedules.scalar(v, int(s))) for v in (T_MIN_RAMP, STEP_CHANGE, 0.25)]
                   for s in steps])
  np.testing.assert_array_equal(got, want)
  np.testing.assert_allclose(got[:, 0], [0.7, 0.45, 0.2, 0.2, 0.2, 0.2, 0.2], rtol=1e-6)
  np.testing.assert_array_equal(got[:, 1], [1, 1, 1, 1, 1, 1, 10])
  assert got.dtype == np.float32


def test_constant_schedules_are_float32():
  for value in (3, 3.0, (3,), (3.0,)):
    got = schedules.scalar(value, 12)
    assert got.dtype == jnp.float32 and float(got) == 3.0
  assert float(jax.jit(lambda s: schedules.scalar((0.25,), s))(jnp.int32(7))) == 0.25


def test_ramp_ends_exactly_at_its_final_value():
  # v0 + (v1 - v0)·1 gave 0.19999999, so ⌊1000·t_min⌋ was 199, not the reference's 200.
  assert schedules.scalar(T_MIN_RAMP, 200) == jnp.float32(0.2)
  assert schedules.scalar(T_MIN_RAMP, 0) == jnp.float32(0.7)


@pytest.mark.parametrize("value", [(1, 2, 3), "0.5", None, (0, 1, 2, 0), (10, 1, 2, 5), [1, 2],
                                   {"a": 1}, True, ("a", 1, 2, 3), ()])
def test_check_schedule_rejects_bad_values_naming_the_key(value):
  with pytest.raises(ValueError, match="loss.orient"):
    schedules.check_schedule(value, "loss.orient")


@pytest.mark.parametrize("value", [0, 0.1, 5, (0.5,), (0, 0.7, 0.2, 200), [2000, 1, 10, 2001]])
def test_check_schedule_accepts_numbers_and_ramps(value):
  schedules.check_schedule(value, "loss.orient")


@pytest.mark.parametrize("value,want", [(0, True), (0.0, True), ((0, 0, 0, 10), True),
                                        ((0,), True), ((0.1,), False),
                                        ((0, 0.0, 1.0, 10), False), ((0, 1.0, 0.0, 10), False),
                                        ((5, 0.0, 0.0, 10), True), (1e-8, False), (-1, False)])
def test_is_constant_zero(value, want):
  assert schedules.is_constant_zero(value) is want
  if want:
    assert all(float(schedules.scalar(value, s)) == 0.0 for s in (0, 5, 10, 100))


@pytest.mark.parametrize("step,want", [(0, 8), (1999, 8), (2000, 8), (2499, 8), (2500, 9),
                                       (4999, 13), (5000, 14), (10000, 16)])
def test_progressive_band_levels(step, want):
  assert int(schedules.hash_levels_active(step, **BAND)) == want
  mask = np.asarray(schedules.level_mask(step, **BAND))
  assert mask.dtype == np.float32 and mask.shape == (16,)
  np.testing.assert_array_equal(mask, (np.arange(16) < want).astype(np.float32))


def test_progressive_band_under_jit_matches_brute_force():
  steps = np.arange(0, 12001, 37)
  got = np.asarray(jax.jit(jax.vmap(lambda s: schedules.level_mask(s, **BAND)))(steps))
  # Brute force: add a level at every multiple of 500 past 2000.
  want_levels = [min(16, 8 + sum(1 for k in range(1, 100) if s >= 2000 + 500 * k)) for s in steps]
  np.testing.assert_array_equal(got.sum(-1), want_levels)


@pytest.mark.parametrize("step", [0, 1, 50, 100, 200, 201, 202, 1000])
def test_view_range_fraction(step):
  got = float(schedules.view_range_fraction(step, 200))
  np.testing.assert_allclose(got, min(1.0, step / 201), rtol=1e-6)
  traced = jax.jit(lambda s: schedules.view_range_fraction(s, 200))(jnp.int32(step))
  assert float(traced) == got


def test_view_range_fraction_without_progression_is_one():
  assert float(schedules.view_range_fraction(0, 0)) == 1.0
  assert float(schedules.view_range_fraction(0, -1)) == 1.0


@pytest.mark.parametrize("step,want", [(0, 128), (2999, 128), (3000, 384), (4999, 384)])
def test_piecewise_constant_render_resolution(step, want):
  assert schedules.piecewise_constant(step, (3000,), (128, 384)) == want


def test_piecewise_constant_several_boundaries_and_errors():
  values = ("a", "b", "c")
  got = [schedules.piecewise_constant(s, (10, 20), values) for s in (0, 9, 10, 19, 20, 99)]
  assert got == ["a", "a", "b", "b", "c", "c"]
  with pytest.raises(ValueError, match=r"len\(values\) == len\(boundaries\) \+ 1"):
    schedules.piecewise_constant(0, (3000,), (128,))
  with pytest.raises(ValueError, match=r"len\(values\) == len\(boundaries\) \+ 1"):
    schedules.piecewise_constant(0, (3000,), (128, 256, 384))


def test_stream_id_is_crc32():
  # The CRC-32 check value: crc32(b"123456789") = 0xCBF43926, top bit cleared.
  assert rng.stream_id("123456789") == 0x4BF43926
  assert rng.stream_id("sds_noise") == 1616204895
  assert rng.stream_id("sds_noise") == zlib.crc32(b"sds_noise") & 0x7FFFFFFF
  assert 0 <= rng.stream_id("é" * 100) < 2**31


def _data(key):
  return np.asarray(jax.random.key_data(key))


def test_key_for_is_deterministic_and_separates_streams_and_steps():
  root = rng.root_key(0)
  a3 = _data(rng.key_for(root, "a", 3))
  np.testing.assert_array_equal(a3, _data(rng.key_for(rng.root_key(0), "a", 3)))
  others = [_data(rng.key_for(root, "b", 3)), _data(rng.key_for(root, "a", 4)),
            _data(rng.key_for(root, "a", 2)), _data(rng.key_for(rng.root_key(1), "a", 3))]
  for other in others:
    assert not np.array_equal(a3, other)
  # The derivation is the documented one: fold in the stream id, then the step.
  want = jax.random.fold_in(jax.random.fold_in(root, rng.stream_id("a")), 3)
  np.testing.assert_array_equal(a3, _data(want))
  # Draws from different steps differ.
  u = [float(jax.random.uniform(rng.key_for(root, "a", s))) for s in range(8)]
  assert len(set(u)) == 8


def test_key_for_under_jit_with_a_traced_step():
  root = rng.root_key(42)
  fn = jax.jit(lambda r, s: jax.random.key_data(rng.key_for(r, "sds_noise", s)))
  for step in (0, 3, 4999):
    np.testing.assert_array_equal(np.asarray(fn(root, jnp.int32(step))),
                                  _data(rng.key_for(root, "sds_noise", step)))
