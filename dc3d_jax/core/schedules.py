"""Schedules: pure functions of the training step, evaluated inside the jitted step.

A scalar schedule is a number, a 1-tuple (v,) (a constant), or a 4-tuple (s0, v0, v1, s1):
linear from v0 at step s0 to v1 at step s1, clamped at both ends (the reference's `C()` helper,
DreamCraft3D configs). So (2000, 1, 10, 2001) is a step change at 2000 and (0, 0.7, 0.2, 200) a
ramp over 200 steps. Configs store every schedule as a tuple, so that on the command line
`--config.x=500` (parsed as (500,)) and `--config.x=(0,1,10,2000)` both work.
"""

from typing import Sequence, Union

import jax.numpy as jnp

Schedule = Union[float, int, Sequence[float]]


def _is_number(v) -> bool:
  return isinstance(v, (int, float)) and not isinstance(v, bool)


def check_schedule(value: Schedule, name: str) -> None:
  """Raises a ValueError naming `name` unless `value` is v, (v,) or (s0, v0, v1, s1)."""
  if _is_number(value):
    return
  ok = isinstance(value, (tuple, list)) and len(value) in (1, 4) and all(map(_is_number, value))
  if not ok:
    raise ValueError(f"{name}: expected a number, (v,) or (s0, v0, v1, s1), got {value!r}")
  if len(value) == 4 and not value[3] > value[0]:
    raise ValueError(f"{name}: schedule {value!r} needs s1 > s0")


def is_constant_zero(value: Schedule) -> bool:
  """True when the schedule is 0 at every step (its term can be skipped at trace time)."""
  if _is_number(value):
    return value == 0
  return all(v == 0 for v in value[-3:-1]) if len(value) == 4 else value[0] == 0


def scalar(value: Schedule, step):
  """The schedule's value at `step` (Python int or traced array) as float32."""
  if _is_number(value) or len(value) == 1:
    return jnp.float32(value if _is_number(value) else value[0])
  s0, v0, v1, s1 = (float(v) for v in value)
  frac = jnp.clip((jnp.asarray(step, jnp.float32) - s0) / (s1 - s0), 0.0, 1.0)
  # Weighted form, exact at both ends (v0 + (v1-v0)·1 can miss v1 by an ulp: 0.2 -> 0.19999999,
  # which moved the reference's ⌊1000·t_min⌋ = 200 to 199).
  return jnp.float32(v0) * (1.0 - frac) + jnp.float32(v1) * frac


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


def cos_anneal_ratio(step, anneal_end: int):
  """NeuS's cosine-anneal ratio r = min(1, step / anneal_end); anneal_end 0 gives 1 at once
  (reference §1b: 5000 steps, the whole stage)."""
  if anneal_end <= 0:
    return jnp.float32(1.0)
  return jnp.minimum(1.0, jnp.asarray(step, jnp.float32) / anneal_end)


def piecewise_constant(step: int, boundaries: Sequence[int], values: Sequence):
  """Python-side (static) lookup: values[i] where boundaries[i-1] <= step < boundaries[i].

  Used for things that change array shapes (render resolution), so they stay out of jit.
  """
  if len(values) != len(boundaries) + 1:
    raise ValueError(f"need len(values) == len(boundaries) + 1, got {values} / {boundaries}")
  index = sum(1 for b in boundaries if step >= b)
  return values[index]
