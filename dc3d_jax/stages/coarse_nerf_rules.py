"""Config rules of the coarse-NeRF stage (`cfg.coarse_nerf`): each key's range and meaning,
the rules that span keys, and the keys that fix array shapes (core/config_rules.py).

pipeline.STAGES lists this Section with the stage's runner; the one validation pass
(config_check.validate) applies it before a run writes anything.
"""

from dc3d_jax.core.config_rules import (Bool, Choice, Float, Int, Numbers, Schedule, Section,
                                        is_number, schedule_value)
from dc3d_jax.guidance import registry
from dc3d_jax.stages import coarse_nerf as cn

KEYS = {
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
    "field.radius": Float("half-size of the scene box [-r, r]^3", 0.0, lo_open=True),
    "field.hidden": Int("width of the density and feature MLPs", lo=1),
    "field.blob_scale": Float("density bias of the initial blob (Magic3D)", lo=0.0),
    "field.blob_std": Float("radius of the initial density blob", 0.0, lo_open=True),
    "field.grid.n_levels": Int("hash-grid levels", 1, 32),
    "field.grid.n_features": Int("features per hash-grid level", 1, 8),
    "field.grid.log2_table_size": Int("log2 of the hash table size per level", 4, 24),
    "field.grid.base_resolution": Int("coarsest hash-grid resolution", lo=1),
    "field.grid.per_level_scale": Float("resolution growth per level", lo=1.0),
    "field.band_start_level": Int("hash-grid levels active at the start", lo=1),
    "field.band_start_step": Int("step from which the active band grows", lo=0),
    "field.band_update_steps": Int("steps per extra active level", lo=1),
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
    "render.occupancy_resolution": Int("occupancy grid cells per axis", lo=2),
    "render.occupancy_threshold": Float("density above which a cell is occupied", lo=0.0),
    "render.occupancy_decay": Float("occupancy grid decay per update", 0.0, 1.0,
                                    lo_open=True),
    "render.occupancy_every": Int("steps between occupancy grid updates", lo=1),
    "guidance.*.t_min": Schedule("lower end of the diffusion t range (fraction of T)", 0.0, 1.0),
    "guidance.*.t_max": Schedule("upper end of the diffusion t range (fraction of T)", 0.0, 1.0),
    "optim.lr.*": Float("Adam learning rate of a parameter group", lo=0.0),
    "optim.b1": Float("Adam beta1", 0.0, 1.0, hi_open=True),
    "optim.b2": Float("Adam beta2", 0.0, 1.0, hi_open=True),
    "optim.eps": Float("Adam epsilon", 0.0, lo_open=True),
    "loss.*": Schedule("weight of a loss term (0 removes the term)", lo=0.0),
}


def _key(rel: str) -> str:
  return f"{cn.NAME}.{rel}"


def _named_sets(s):
  """Loss terms, learning-rate groups and guidance slots must be exactly the stage's."""
  for rel, given, known in (("loss", s.loss.keys(), cn.LOSS_TERMS),
                            ("optim.lr", s.optim.lr.keys(), cn.PARAM_GROUPS),
                            ("guidance", s.guidance.keys(), [slot for slot, _ in registry.SLOTS])):
    unknown, missing = sorted(set(given) - set(known)), sorted(set(known) - set(given))
    if unknown:
      yield _key(f"{rel}.{unknown[0]}"), f"unknown name; {rel} takes {sorted(known)}"
    elif missing and rel != "guidance":
      yield _key(rel), f"missing {missing}; {rel} takes exactly {sorted(known)}"


def _breakpoints(*scheds) -> list:
  steps = {0}
  for v in scheds:
    if not is_number(v) and len(v) == 4:
      steps |= {v[0], v[3]}
  return sorted(steps)


def _t_ranges(s):
  for slot, ranges in s.guidance.items():
    lo, hi = ranges.t_min, ranges.t_max
    for step in _breakpoints(lo, hi):
      if schedule_value(lo, step) > schedule_value(hi, step):
        yield _key(f"guidance.{slot}.t_min"), (f"t_min exceeds t_max at step {step} "
                                               f"({lo} vs {hi})")
        break


def _train_and_grid(s):
  t, f = s.train, s.field
  if len(t.resolutions) != len(t.resolution_milestones) + 1:
    yield _key("train.resolution_milestones"), (
        f"{len(t.resolution_milestones)} milestone(s) for {len(t.resolutions)} resolution(s); "
        "there must be one milestone fewer than train.resolutions")
  if f.band_start_level > f.grid.n_levels:
    yield _key("field.band_start_level"), (f"{f.band_start_level} exceeds "
                                           f"field.grid.n_levels={f.grid.n_levels}")
  if f.grid.n_levels * 2**f.grid.log2_table_size >= 2**31:
    yield _key("field.grid.log2_table_size"), "n_levels * 2**log2_table_size must be < 2**31"


def _checks(cfg):
  s = cfg[cn.NAME]
  yield from _named_sets(s)
  yield from _train_and_grid(s)
  yield from _t_ranges(s)


RULES = Section(cn.NAME, KEYS, checks=(_checks,),
                shape_keys=("field.hidden", "field.grid.*", "render.occupancy_resolution",
                            "train.resolutions"))
