"""Config rules of the geometry (DMTet) stage (`cfg.geometry`; core/config_rules.py, with the
keys every stage shares from stages/rules_common.py). Its hash grid and box radius are
coarse_nerf's and its colour MLP's width coarse_neus's (the warm start carries them)."""

from dc3d_jax.core.config_rules import Bool, Choice, Float, Int, Section
from dc3d_jax.geometry import rasterize
from dc3d_jax.geometry.raster import nvdiffrast_backend
from dc3d_jax.stages import geometry
from dc3d_jax.stages import rules_common as common

KEYS = {
    **common.TRAIN, **common.OPTIM, **common.GUIDANCE_AND_LOSS,
    "init_from": common.INIT_FROM,
    "train.n_rgb": Int("the 2D prior reads RGB (and the reference view's rgb/mask losses "
                       "apply) on steps divisible by this; normal maps on the others", lo=1),
    "tets.resolution": Int("tet grid resolution N (N/2 cells per axis; even)", lo=2),
    "tets.max_vertices": Int("marching-tets vertex budget (static shape)", lo=3),
    "tets.max_faces": Int("marching-tets face budget (static shape)", lo=1),
    "tets.bbox_margin": Float("the DMTet box: the NeuS surface's tight box enlarged by this "
                              "fraction of its extent per side", 0.0),
    "render.rasterizer": Choice("rasterizer backend ('auto': nvdiffrast where it can run)",
                                options=rasterize.BACKENDS),
    "render.max_pairs": Int("JAX rasterizer's tiled-search budget of (tile, triangle) pairs",
                            lo=1),
    "render.field_chunk": Int("albedo queries per chunk (0: all at once)", lo=0),
    "render.remat": Bool("recompute albedo chunks in the backward pass (memory)"),
}


def _checks(cfg):
  s = cfg[geometry.NAME]
  yield from common.named_sets(geometry.NAME, s, geometry.LOSS_TERMS, geometry.PARAM_GROUPS)
  yield from common.milestones(geometry.NAME, s.train)
  yield from common.t_ranges(geometry.NAME, s)
  if s.tets.resolution % 2:
    yield f"{geometry.NAME}.tets.resolution", "must be even (N/2 cells per axis)"
  if s.render.rasterizer == "nvdiffrast" and geometry.NAME in cfg.stages:
    missing = nvdiffrast_backend.missing()     # imports torch: only when asked for
    if missing:
      yield f"{geometry.NAME}.render.rasterizer", (f"nvdiffrast cannot run here ({missing}); "
                                                   "use 'auto' or 'jax'")


RULES = Section(geometry.NAME, KEYS, checks=(_checks,), shape_keys=("tets.resolution",))
