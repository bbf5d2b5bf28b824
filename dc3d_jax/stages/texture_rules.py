"""Config rules of the texture stage (`cfg.texture`, configs/texture_section.py; core/
config_rules.py). Its hash grid and box radius are coarse_nerf's (one field box for every
stage), so they have no keys here."""

import types

from dc3d_jax.core.config_rules import (Bool, Choice, Float, Int, Schedule, Section, Text,
                                        schedule_value)
from dc3d_jax.geometry import rasterize
from dc3d_jax.guidance import registry
from dc3d_jax.priors import trainable
from dc3d_jax.stages import rules_common as common
from dc3d_jax.stages import texture as tx

_PROB = dict(lo=0.0, hi=1.0)
_TRAIN = {k: v for k, v in common.TRAIN.items()
          if k not in ("train.resolutions", "train.resolution_milestones", "train.substeps",
                       "views.progressive_until")}

KEYS = {
    **_TRAIN, **common.GUIDANCE_AND_LOSS,
    "init_from": common.INIT_FROM,
    "resolution": Int("render size of the reference and random views", 8),
    "mesh_resolution": Int("grid of the previous stage's mesh extraction (marching cubes; "
                           "DMTet ignores it)", 8, 1024),
    "min_component_fraction": Float("drop mesh components with fewer faces than this "
                                    "fraction of the largest (reference 0.01)", **_PROB),
    "erode_pixels": Int("pixels the reference mask is eroded by for the ref L1", 0, 64),
    "field.hidden": Int("width of the colour MLP", lo=1),
    "render.rasterizer": Choice("rasterizer backend", options=rasterize.BACKENDS),
    "render.max_pairs": Int("tiled visibility search budget (0: its default)", lo=0),
    "render.field_chunk": Int("colour queries per chunk (0: all at once)", lo=0),
    "guidance.kind": Choice("'bsd': the BSD cycle on trained copies of texture.prior.base; "
                            "'sds': plain SDS through guidance.prior_2d/prior_3d",
                            options=tx.GUIDANCE_KINDS),
    "optim.lr.*": Float("AdamW learning rate of a parameter group", lo=0.0),
    "optim.b1": Float("AdamW beta1", 0.0, 1.0, hi_open=True),
    "optim.b2": Float("AdamW beta2", 0.0, 1.0, hi_open=True),
    "optim.eps": Float("AdamW epsilon", 0.0, lo_open=True),
    "optim.weight_decay": Float("AdamW decoupled weight decay", 0.0),
    # texture.bsd (guidance/bsd.py BSDSettings)
    "bsd.cycle_steps": Int("steps of one BSD cycle (DreamBooth phase + ref/BSD steps)", lo=1),
    "bsd.dreambooth_steps": Int("DreamBooth-only steps at the start of each cycle", lo=0),
    "bsd.augment_every": Int("DreamBooth-phase steps between augmentations", lo=1),
    "bsd.ref_every": Int("outside the phase, ref on steps % ref_every == 0 (else BSD); "
                         "the SDS kind alternates the same way", lo=2),
    "bsd.cache_size": Int("augmentations kept (FIFO)", lo=1),
    "bsd.sampler_steps": Int("DPM-Solver++ grid of the augmentation", 2, 1000),
    "bsd.augment_guidance_scale": Float("CFG of the augmentation sampler", 0.0),
    "bsd.bsd_guidance_scale": Float("CFG of ε_DB in the BSD gradient", 0.0),
    "bsd.estimator_guidance_scale": Float("CFG of the estimator (1: conditional only)", 0.0),
    "bsd.prompt_dropout": Float("probability the DreamBooth prompt is zeroed", **_PROB),
    "bsd.t_min": Schedule("lower end of BSD's t range (fraction of T)", 0.0, 1.0),
    "bsd.t_max": Schedule("upper end of BSD's t range and the augmentation's noise level",
                          0.0, 1.0),
    "bsd.camera_condition": Bool("DS: class embedding of the flattened c2w on both copies"),
    "bsd.masked_augmentation": Bool("DS: augmentations keep the reference-visible region"),
    "bsd.silhouette_band": Int("DS: no BSD gradient within this band of the silhouette "
                               "(0: off; DS 11)", lo=0),
    # texture.prior (priors/trainable.py)
    "prior.base": Choice("frozen base of the trained copies: 'sd' (texture.prior.model, the "
                         "reference) or 'testbed' (guidance.testbed_model; pixel space, "
                         "image + camera conditioning)", options=tx.BSD_BASES),
    "prior.model": Text("frozen SD base of the trained copies (diffusers folder or cached id; "
                        "prior.base='sd' only)"),
    "prior.memory_mode": Choice("'full': two full trainable UNets; 'lora': adapters over one "
                                "frozen base", options=trainable.MODES),
    "prior.lora_rank": Int("LoRA rank", lo=1),
    "prior.lora_alpha": Float("LoRA alpha (scale alpha / rank)", 0.0, lo_open=True),
    "prior.lr_full": Float("AdamW lr of both UNets in 'full' mode", lo=0.0),
    "prior.lr_lora": Float("AdamW lr of the adapters (and camera MLPs) in 'lora' mode", lo=0.0),
    "prior.b1": Float("trained UNets' AdamW beta1", 0.0, 1.0, hi_open=True),
    "prior.b2": Float("trained UNets' AdamW beta2", 0.0, 1.0, hi_open=True),
    "prior.eps": Float("trained UNets' AdamW epsilon", 0.0, lo_open=True),
    "prior.weight_decay": Float("trained UNets' AdamW weight decay", 0.0),
    "prior.remat": Bool("recompute UNet blocks in the backward pass (memory)"),
    "prior.render_size": Int("renders are resized to this before the VAE", 8, multiple_of=8),
    "prior.front_threshold_deg": Float("|azimuth| below which a BSD view is 'front'",
                                       0.0, 180.0),
    "prior.back_threshold_deg": Float("|azimuth| above 180 minus this is 'back'", 0.0, 180.0),
    "prior.overhead_threshold_deg": Float("elevation above which a view is 'overhead'",
                                          -90.0, 90.0),
}


def _bsd_checks(cfg):
  s = cfg[tx.NAME]
  b = s.bsd
  if b.dreambooth_steps >= b.cycle_steps:
    yield f"{tx.NAME}.bsd.dreambooth_steps", (f"{b.dreambooth_steps} leaves no BSD or ref "
                                              f"step in a cycle of {b.cycle_steps}")
  for step in (0, s.train.steps):
    if schedule_value(b.t_min, step) > schedule_value(b.t_max, step):
      yield f"{tx.NAME}.bsd.t_min", f"exceeds bsd.t_max at step {step}"
      break
  for name in ("dreambooth", "estimator"):
    if len(tuple(s.loss[name])) != 1:
      yield f"{tx.NAME}.loss.{name}", "the ε-MSE weights are constants, (v,)"
  if s.guidance.kind == "bsd" and tx.NAME in cfg.stages:
    yield from _base_checks(cfg)


def _base_checks(cfg):
  """What the BSD base needs: SD a prompt and texture.prior.model; the testbed base full
  copies (LoRA targets SD's module names) and no class embedding."""
  p = cfg[tx.NAME].prior
  if p.base == "sd":
    if not cfg.prompt:
      yield "prompt", "empty, but the texture stage's BSD (texture.guidance.kind='bsd') needs one"
    if not p.model:
      yield f"{tx.NAME}.prior.model", "empty: give a Stable Diffusion 2.1-base folder or id"
    return
  if p.memory_mode != "full":
    yield f"{tx.NAME}.prior.memory_mode", ("the testbed base (texture.prior.base='testbed') "
                                           "trains full copies only; set it to 'full'")
  if cfg[tx.NAME].bsd.camera_condition:
    yield f"{tx.NAME}.bsd.camera_condition", ("the testbed base has no class embedding (its "
                                              "camera is an input already); set it False")


def _named_sets(s):
  """Loss terms and learning-rate groups are exactly the stage's; guidance slots are known."""
  for rel, given, known in (("loss", s.loss.keys(), tx.LOSS_TERMS),
                            ("optim.lr", s.optim.lr.keys(), tx.PARAM_GROUPS),
                            ("guidance", [k for k in s.guidance.keys() if k != "kind"],
                             [slot for slot, _ in registry.SLOTS])):
    unknown, missing = sorted(set(given) - set(known)), sorted(set(known) - set(given))
    if unknown:
      yield f"{tx.NAME}.{rel}.{unknown[0]}", f"unknown name; {rel} takes {sorted(known)}"
    elif missing and rel != "guidance":
      yield f"{tx.NAME}.{rel}", f"missing {missing}; {rel} takes exactly {sorted(known)}"


def _checks(cfg):
  s = cfg[tx.NAME]
  yield from _named_sets(s)
  slots = types.SimpleNamespace(guidance={k: v for k, v in s.guidance.items() if k != "kind"})
  yield from common.t_ranges(tx.NAME, slots)
  yield from _bsd_checks(cfg)


RULES = Section(tx.NAME, KEYS, checks=(_checks,),
                shape_keys=("field.hidden", "guidance.kind", "prior.base",
                            "prior.memory_mode", "prior.lora_rank", "bsd.cache_size",
                            "bsd.camera_condition", "prior.render_size"))
