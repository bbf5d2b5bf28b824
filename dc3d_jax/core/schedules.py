"""Schedules: pure functions of the training step, evaluated inside the jitted step.

A scalar schedule is either a number or a 4-tuple (s0, v0, v1, s1): linear from v0 at step s0
to v1 at step s1, clamped at both ends (the reference's `C()` helper, DreamCraft3D configs).
So (2000, 1, 10, 2001) is a step change at 2000 and (0, 0.7, 0.2, 200) a ramp over 200 steps.
"""

from typing import Sequence, Union

import jax.numpy as jnp

Schedule = Union[float, int, Sequence[float]]


def check_schedule(value: Schedule, name: str) -> None:
  """Raises a ValueError naming `name` unless `value` is a number or (s0, v0, v1, s1)."""
  if isinstance(value, (int, float)):
    return
  if not (isinstance(value, (tuple, list)) and len(value) == 4):
    raise ValueError(f"{name}: expected a number or (s0, v0, v1, s1), got {value!r}")
  if not value[3] > value[0]:
    raise ValueError(f"{name}: schedule {value!r} needs s1 > s0")


def is_constant_zero(value: Schedule) -> bool:
  """True when the schedule is 0 at every step (its term can be skipped at trace time)."""
  if isinstance(value, (int, float)):
    return value == 0
  return value[1] == 0 and value[2] == 0


def scalar(value: Schedule, step):
  """The schedule's value at `step` (Python int or traced array) as float32."""
  if isinstance(value, (int, float)):
    return jnp.float32(value)
  s0, v0, v1, s1 = (float(v) for v in value)
  frac = jnp.clip((jnp.asarray(step, jnp.float32) - s0) / (s1 - s0), 0.0, 1.0)
  return jnp.float32(v0) + (v1 - v0) * frac


def hash_levels_active(step, *, n_levels: int, start_level: int, start_step: int,
                       update_steps: int):
  """Number of active hash-grid levels (progressive band, reference §1a).

  `start_level` levels until `start_step`, then one more every `update_steps` steps.
  """
  grown = jnp.maximum(jnp.asarray(step) - start_step, 0) // update_steps
  return jnp.minimum(start_level + grown, n_levels)


def level_mask(step, *, n_levels: int, start_level: int, start_step: int, update_steps: int):
  """[n_levels] float32 0/1 mask over hash-grid levels at `step`."""
  active = hash_levels_active(step, n_levels=n_levels, start_level=start_level,
                              start_step=start_step, update_steps=update_steps)
  return (jnp.arange(n_levels) < active).astype(jnp.float32)


def view_range_fraction(step, progressive_until: int):
  """r in [0, 1]: how far the random-view range has grown from the reference view.

  r = min(1, step / (progressive_until + 1)); progressive_until = 0 gives the full range at once.
  """
  if progressive_until <= 0:
    return jnp.float32(1.0)
  return jnp.minimum(1.0, jnp.asarray(step, jnp.float32) / (progressive_until + 1))


def piecewise_constant(step: int, boundaries: Sequence[int], values: Sequence):
  """Python-side (static) lookup: values[i] where boundaries[i-1] <= step < boundaries[i].

  Used for things that change array shapes (render resolution), so they stay out of jit.
  """
  if len(values) != len(boundaries) + 1:
    raise ValueError(f"need len(values) == len(boundaries) + 1, got {values} / {boundaries}")
  index = sum(1 for b in boundaries if step >= b)
  return values[index]
