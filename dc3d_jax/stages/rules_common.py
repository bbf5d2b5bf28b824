"""Config rules every stage shares (core/config_rules.py): the train loop's keys, the volume
renderer's, the optimizer's, loss weights and guidance t ranges, and the checks that span
keys (named sets, t_min <= t_max, one milestone fewer than resolutions). A stage's rules module
(stages/<stage>_rules.py) composes these with its own keys."""

from dc3d_jax.core.config_rules import (Bool, Choice, Float, Int, Numbers, Schedule, Text,
                                        is_number, schedule_value)
from dc3d_jax.guidance import registry

INIT_FROM = Text("work dir whose previous stage finished, to start from when that stage is "
                 "not in this run's stages; empty: this work dir")

TRAIN = {
    "train.steps": Int("optimisation steps of the stage", lo=1),
    "train.resolutions": Numbers("render size of the reference and random views, per phase",
                                 item=Int("", lo=8), min_len=1),
    "train.resolution_milestones": Numbers("steps at which the next render size starts",
                                           item=Int("", lo=1), order="<"),
    "train.substeps": Choice("'alternate': ref view on even steps, guidance on odd; "
                             "'accumulate': both every step",
                             options=("alternate", "accumulate")),
    "train.log_every": Int("steps between metrics.jsonl rows (and the NaN check)", lo=1),
    "train.checkpoint_every": Int("steps between checkpoints", lo=1),
    "train.sample_every": Int("steps between sample images", lo=1),
    "train.keep_checkpoints": Int("checkpoints kept on disk (the newest)", lo=1),
    "views.progressive_until": Int("steps over which the random-view range grows from the "
                                   "reference view", lo=0),
}

VOLUME = {
    "render.num_steps_diagonal": Int("candidate samples across the box diagonal", lo=2),
    "render.stratified": Bool("jitter each ray's samples"),
    "render.prepass_samples_per_ray": Float("pruning pre-pass budget, samples per ray",
                                            0.0, lo_open=True),
    "render.samples_per_ray": Float("gradient-pass budget, samples per ray", 0.0,
                                    lo_open=True),
    "render.alpha_threshold": Float("prune samples with alpha below this", 0.0, 1.0,
                                    hi_open=True),
    "render.transmittance_threshold": Float("prune samples behind this transmittance",
                                            0.0, 1.0, hi_open=True),
    "render.field_chunk": Int("field queries per chunk (0: all at once)", lo=0),
    "render.remat": Bool("recompute field chunks in the backward pass (memory)"),
    "render.occupancy_threshold": Float("opacity above which a cell is occupied", lo=0.0),
    "render.occupancy_decay": Float("occupancy grid decay per update", 0.0, 1.0,
                                    lo_open=True),
    "render.occupancy_every": Int("steps between occupancy grid updates", lo=1),
}

OPTIM = {
    "optim.lr.*": Float("learning rate of a parameter group", lo=0.0),
    "optim.b1": Float("Adam beta1", 0.0, 1.0, hi_open=True),
    "optim.b2": Float("Adam beta2", 0.0, 1.0, hi_open=True),
    "optim.eps": Float("Adam epsilon", 0.0, lo_open=True),
}

GUIDANCE_AND_LOSS = {
    "guidance.*.t_min": Schedule("lower end of the diffusion t range (fraction of T)", 0.0, 1.0),
    "guidance.*.t_max": Schedule("upper end of the diffusion t range (fraction of T)", 0.0, 1.0),
    "loss.*": Schedule("weight of a loss term (0 removes the term)", lo=0.0),
}


def named_sets(stage: str, s, loss_terms, param_groups):
  """Loss terms, learning-rate groups and guidance slots must be exactly the stage's."""
  for rel, given, known in (("loss", s.loss.keys(), loss_terms),
                            ("optim.lr", s.optim.lr.keys(), param_groups),
                            ("guidance", s.guidance.keys(), [slot for slot, _ in registry.SLOTS])):
    unknown, missing = sorted(set(given) - set(known)), sorted(set(known) - set(given))
    if unknown:
      yield f"{stage}.{rel}.{unknown[0]}", f"unknown name; {rel} takes {sorted(known)}"
    elif missing and rel != "guidance":
      yield f"{stage}.{rel}", f"missing {missing}; {rel} takes exactly {sorted(known)}"


def _breakpoints(*scheds) -> list:
  steps = {0}
  for v in scheds:
    if not is_number(v) and len(v) == 4:
      steps |= {v[0], v[3]}
  return sorted(steps)


def t_ranges(stage: str, s):
  """t_min <= t_max at every breakpoint of either schedule."""
  for slot, ranges in s.guidance.items():
    lo, hi = ranges.t_min, ranges.t_max
    for step in _breakpoints(lo, hi):
      if schedule_value(lo, step) > schedule_value(hi, step):
        yield f"{stage}.guidance.{slot}.t_min", (f"t_min exceeds t_max at step {step} "
                                                 f"({lo} vs {hi})")
        break


def milestones(stage: str, t):
  if len(t.resolutions) != len(t.resolution_milestones) + 1:
    yield f"{stage}.train.resolution_milestones", (
        f"{len(t.resolution_milestones)} milestone(s) for {len(t.resolutions)} resolution(s); "
        "there must be one milestone fewer than train.resolutions")
