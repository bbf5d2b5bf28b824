"""Config rules of the NeuS stage (`cfg.coarse_neus`; core/config_rules.py, with the keys every
stage shares from stages/rules_common.py). Its hash grid, box radius and occupancy resolution
are coarse_nerf's (the warm start carries them), so they have no keys here."""

from dc3d_jax.core.config_rules import Float, Int, Section
from dc3d_jax.stages import coarse_neus as neus
from dc3d_jax.stages import rules_common as common

KEYS = {
    **common.TRAIN, **common.VOLUME, **common.OPTIM, **common.GUIDANCE_AND_LOSS,
    "init_from": common.INIT_FROM,
    "field.hidden": Int("width of the SDF and feature MLPs", lo=1),
    "field.sphere_radius": Float("radius of the initial SDF sphere (sdf = MLP + |x| - r)",
                                 0.0, lo_open=True),
    "field.variance_init": Float("initial v of NeuS's inv_std = exp(10 v)", -5.0, 5.0),
    "render.cos_anneal_end": Int("steps until NeuS's cosine-anneal ratio reaches 1", lo=1),
}


def _checks(cfg):
  s = cfg[neus.NAME]
  yield from common.named_sets(neus.NAME, s, neus.LOSS_TERMS, neus.PARAM_GROUPS)
  yield from common.milestones(neus.NAME, s.train)
  yield from common.t_ranges(neus.NAME, s)


RULES = Section(neus.NAME, KEYS, checks=(_checks,),
                shape_keys=("field.hidden", "train.resolutions"))
