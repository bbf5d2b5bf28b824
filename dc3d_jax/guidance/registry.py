"""Builds a stage's guidance terms and their frozen prior params from the config.

The 2D slot (`sds_2d`) and the 3D slot (`sds_3d`) each take a prior kind from
guidance.prior_2d / guidance.prior_3d ("none" leaves the slot empty, so 2D-only, 3D-only and
hybrid runs are config choices); the timestep ranges come from <stage>.guidance.<slot>.
"""

from dc3d_jax.core import schedules
from dc3d_jax.guidance.sds import SDSGuidance
from dc3d_jax.priors import oracle

SLOTS = (("sds_2d", "prior_2d"), ("sds_3d", "prior_3d"))
KINDS = ("none", "oracle")


def _load_prior(kind: str, cfg):
  if kind == "oracle":
    prior = oracle.OraclePrior(resolution=cfg.guidance.oracle_resolution)
    mesh = oracle.ground_truth_mesh(cfg.guidance.oracle_object)
    return prior, oracle.oracle_params(mesh)
  raise ValueError(f"guidance prior {kind!r} is not available; expected one of {KINDS}")


def build(cfg, stage: str):
  """-> ({slot: SDSGuidance}, {slot: prior params}) for the slots with a prior."""
  terms, params, loaded = {}, {}, {}
  for slot, key in SLOTS:
    kind = cfg.guidance[key]
    if kind not in KINDS:
      raise ValueError(f"config guidance.{key}: unknown prior {kind!r}; expected one of {KINDS}")
    if kind == "none":
      continue
    if kind not in loaded:
      loaded[kind] = _load_prior(kind, cfg)
    prior, prior_params = loaded[kind]
    ranges = cfg[stage].guidance[slot]
    for name in ("t_min", "t_max"):
      schedules.check_schedule(ranges[name], f"{stage}.guidance.{slot}.{name}")
    terms[slot] = SDSGuidance(prior=prior, t_min=tuple(ranges.t_min),
                              t_max=tuple(ranges.t_max))
    params[slot] = prior_params
  return terms, params
