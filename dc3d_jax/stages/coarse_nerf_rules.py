"""Config rules of the coarse-NeRF stage (`cfg.coarse_nerf`): each key's range and meaning,
the rules that span keys, and the keys that fix array shapes (core/config_rules.py; the keys
every stage shares are in stages/rules_common.py).

pipeline.STAGES lists this Section with the stage's runner; the one validation pass
(config_check.validate) applies it before a run writes anything.
"""

from dc3d_jax.core.config_rules import Float, Int, Section
from dc3d_jax.stages import coarse_nerf as cn
from dc3d_jax.stages import rules_common as common

KEYS = {
    **common.TRAIN, **common.VOLUME, **common.OPTIM, **common.GUIDANCE_AND_LOSS,
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
    "render.occupancy_resolution": Int("occupancy grid cells per axis", lo=2),
}


def _grid(s):
  f = s.field
  if f.band_start_level > f.grid.n_levels:
    yield f"{cn.NAME}.field.band_start_level", (f"{f.band_start_level} exceeds "
                                                f"field.grid.n_levels={f.grid.n_levels}")
  if f.grid.n_levels * 2**f.grid.log2_table_size >= 2**31:
    yield f"{cn.NAME}.field.grid.log2_table_size", "n_levels * 2**log2_table_size must be < 2**31"


def _checks(cfg):
  s = cfg[cn.NAME]
  yield from common.named_sets(cn.NAME, s, cn.LOSS_TERMS, cn.PARAM_GROUPS)
  yield from common.milestones(cn.NAME, s.train)
  yield from _grid(s)
  yield from common.t_ranges(cn.NAME, s)


RULES = Section(cn.NAME, KEYS, checks=(_checks,),
                shape_keys=("field.hidden", "field.grid.*", "render.occupancy_resolution",
                            "train.resolutions"))
