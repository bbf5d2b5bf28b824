"""What every stage shares: the TrainState, loss weighting, the optimizer, the guarded
update, and one compiled step per substep pattern. The loop that drives a stage lives in
stages/loop.py."""

import functools
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import optax
from flax import struct

from dc3d_jax.core import numerics, schedules
from dc3d_jax.errors import ConfigError


@struct.dataclass(kw_only=True)
class TrainState:
  """step: steps completed; params: trainable pytree; opt_state: optax state; buffers: named
  non-trainable arrays (occupancy grid...); skipped: updates dropped for non-finite values."""
  step: jax.Array
  params: Any
  opt_state: Any
  buffers: Any
  skipped: jax.Array


def new_state(params, tx: optax.GradientTransformation, buffers) -> TrainState:
  return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
                    buffers=buffers, skipped=jnp.zeros((), jnp.int32))


def check_loss_weights(loss_cfg: Mapping, terms: tuple, stage: str) -> dict:
  """Config weights must name exactly the stage's loss terms (typos are errors, not zeros)."""
  given = set(loss_cfg.keys())
  missing, unknown = sorted(set(terms) - given), sorted(given - set(terms))
  if missing or unknown:
    raise ValueError(f"config {stage}.loss: missing weights {missing}, unknown weights "
                     f"{unknown}; the {stage} stage's terms are {sorted(terms)}")
  weights = {name: loss_cfg[name] for name in terms}
  for name, value in weights.items():
    schedules.check_schedule(value, f"{stage}.loss.{name}")
  return weights


def active_terms(weights: Mapping) -> frozenset:
  """Terms whose weight is not identically 0 (the others are never computed)."""
  return frozenset(n for n, v in weights.items() if not schedules.is_constant_zero(v))


def weighted_total(terms: Mapping, weights: Mapping, step) -> jax.Array:
  return sum(schedules.scalar(weights[name], step) * value for name, value in terms.items())


def make_optimizer(optim_cfg, param_groups: tuple):
  """Adam with one learning rate per top-level parameter group and no LR schedule
  (reference §1: no schedulers anywhere)."""
  lrs = dict(optim_cfg.lr)
  if set(lrs) != set(param_groups):
    raise ValueError(f"config optim.lr: groups {sorted(lrs)} do not match the parameter "
                     f"groups {sorted(param_groups)}")
  adam = lambda lr: optax.adam(lr, b1=optim_cfg.b1, b2=optim_cfg.b2, eps=optim_cfg.eps)
  labels = {name: name for name in param_groups}
  return optax.multi_transform({name: adam(lr) for name, lr in lrs.items()}, labels)


def apply_gradients(state: TrainState, grads, tx, buffers) -> TrainState:
  """One optimizer step; a step whose gradients are not finite is dropped and counted."""
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  ok = numerics.all_finite(grads)
  pick = lambda new, old: jax.tree_util.tree_map(lambda a, b: jnp.where(ok, a, b), new, old)
  return TrainState(step=state.step + 1, params=pick(params, state.params),
                    opt_state=pick(opt_state, state.opt_state), buffers=buffers,
                    skipped=state.skipped + (1 - ok.astype(jnp.int32)))


SUBSTEP_PATTERNS = {"alternate": (("ref",), ("guidance",)), "accumulate": (("ref", "guidance"),)}


def compile_steps(train_step, settings, substeps: str, stage: str) -> dict:
  """{parts: jitted train_step(state, batch, prior_params, root_key)} for the substep pattern
  ("alternate" or "accumulate"), with the state donated."""
  if substeps not in SUBSTEP_PATTERNS:
    raise ConfigError(f"config {stage}.train.substeps={substeps!r}; expected one of "
                     f"{sorted(SUBSTEP_PATTERNS)}")
  return {parts: jax.jit(functools.partial(train_step, settings=settings, parts=parts),
                         donate_argnums=(0,))
          for parts in SUBSTEP_PATTERNS[substeps]}


def parts_at(step: int, substeps: str) -> tuple:
  """Reference "alternate": even steps the reference view, odd steps the guidance."""
  if substeps == "accumulate":
    return ("ref", "guidance")
  return ("ref",) if step % 2 == 0 else ("guidance",)
