"""The one validation pass over a run's config, before anything is written.

    validate(cfg, sections)        raises ConfigError naming the first bad key (and how many more)
    describe(cfg, sections)        every key = value, its meaning and what it accepts (--list_keys)
    shape_config(cfg, sections)    {key: value} of the shape-determining keys (workdir.py)
    run_sections(stage_names)      the rules of the run-level sections (top, data, guidance,
                                   stage0, eval); stages bring their own (core/config_rules.py)

Ranges, not only types: step counts and intervals >= 1, sizes, fill fractions, angles,
resolutions (multiples of 8 where a VAE sees them), schedules (core/schedules.py), and rules
that span keys (an oracle prior with a user image, a 2D prior without a prompt...).
"""

from dc3d_jax import errors
from dc3d_jax.core.config_rules import (Bool, Choice, File, Float, Int, Names, Numbers, Section,
                                        Text, leaves, matches)
from dc3d_jax.guidance import registry
from dc3d_jax.io import images
from dc3d_jax.priors import oracle, precision, zero123

_SEED = dict(lo=0, hi=2**32 - 1)
_ELEVATION = Float("", -90.0, 90.0, lo_open=True, hi_open=True)
_AZIMUTH = Float("", -360.0, 360.0)


def _top(stage_names) -> Section:
  return Section("", {
      "workdir": Text("folder of the run's outputs, checkpoints and lock (one run per folder)",
                      required=True),
      "seed": Int("root of every random key (core/rng.key_for)", **_SEED),
      "prompt": Text("text prompt of the 2D prior and stage 0"),
      "stages": Names("stages to run, in order", options=tuple(stage_names)),
  })


DATA = Section("data", {
    "image": File("RGBA reference image; empty: data.object / the oracle's object, or stage 0 "
                  "from the prompt"),
    "object": Text("a ground-truth object instead of an image: 'primitives', a testbed "
                   "catalog name (e.g. held-out 'cow') or a generated 'proc-NNNN' (e.g. "
                   "validation 'proc-0402'); its render is the reference and its mesh scores "
                   "the run"),
    "depth": File("optional depth map (grey PNG, the image's size) for the depth_rel loss"),
    "depth_kind": Choice("data.depth's convention: depth (near = dark) or disparity "
                         "(near = bright)", options=images.DEPTH_KINDS),
    "rays_noise_scale": Float("std of the reference view's fixed ray offset (reference 2e-3)",
                              0.0),
    "remove_background": Bool("cut the object out of data.image with u2netp"),
    "recenter": Bool("crop the object and scale it to data.fill of the canvas"),
    "fill": Float("fraction of the canvas the object's longer side fills after recentring",
                  0.1, 1.0),
    "image_size": Int("canvas size (pixels) of the preprocessed reference", 32, 4096),
    "ref_elevation_deg": Float("elevation of the reference camera (degrees)", -90.0, 90.0,
                               lo_open=True, hi_open=True),
    "ref_azimuth_deg": Float("azimuth of the reference camera (degrees)", -360.0, 360.0),
    "ref_distance": Float("distance of every camera from the origin", 0.0, lo_open=True),
    "fovy_deg": Float("vertical field of view of every camera (degrees)", 0.0, 180.0,
                      lo_open=True, hi_open=True),
    "elevation_range_deg": Numbers("elevation range of the random views (degrees)",
                                   item=_ELEVATION, length=2, order="<="),
    "azimuth_range_deg": Numbers("azimuth range of the random views, around the reference",
                                 item=_AZIMUTH, length=2, order="<="),
    "batch_size": Int("random views per step over all devices; 0: one per device", lo=0),
}, shape_keys=("batch_size",))

GUIDANCE = Section("guidance", {
    "prior_2d": Choice("2D prior of the sds_2d slot", options=registry.KINDS["prior_2d"]),
    "prior_3d": Choice("3D prior of the sds_3d slot", options=registry.KINDS["prior_3d"]),
    "precision": Choice("priors' compute precision", options=precision.CHOICES),
    "sd_model": Text("Stable Diffusion: diffusers folder or model id in the local HF cache"),
    "sd_guidance_scale": Float("classifier-free guidance scale of Stable Diffusion", 0.0),
    "sd_perp_neg": Bool("perp-neg view prompts for the 2D prior (sd or deepfloyd)"),
    "sd_t_schedule": Choice("SD's timesteps: snr_matched_if (IF's t ranges at equal SNR) or "
                            "if_fractions (IF's steps as they are)",
                            options=registry.SD_T_SCHEDULES),
    "sd_render_size": Int("renders are resized to this before SD's VAE", 8, multiple_of=8),
    "if_model": Text("DeepFloyd IF stage I (guidance.prior_2d=deepfloyd): diffusers folder or "
                     "model id in the local HF cache"),
    "if_guidance_scale": Float("classifier-free guidance scale of DeepFloyd IF (reference 20)",
                               0.0),
    "if_render_size": Int("renders are resized to this for DeepFloyd IF (reference 64; smaller "
                          "only to shrink smoke tests)", 8, multiple_of=8),
    "negative_prompt": Text("negative prompt of the 2D prior and stage 0"),
    "front_threshold_deg": Float("|azimuth| below which a view is 'front'", 0.0, 180.0),
    "back_threshold_deg": Float("|azimuth| above 180 minus this is 'back'", 0.0, 180.0),
    "overhead_threshold_deg": Float("elevation above which a view is 'overhead'", -90.0, 90.0),
    "zero123_model": Text("Zero123: .ckpt / .safetensors, diffusers folder or cached id"),
    "zero123_image_encoder": Text("CLIP ViT-L/14 folder or id, for checkpoints without one"),
    "zero123_variant": Choice("Zero123 pose encoding", options=zero123.VARIANTS),
    "zero123_guidance_scale": Float("classifier-free guidance scale of Zero123", 0.0),
    "testbed_model": Text("testbed prior: a .safetensors written by experiments/train_prior.py"),
    "testbed_guidance_scale": Float("classifier-free guidance scale of the testbed prior", 0.0),
    "zero123_render_size": Int("renders are resized to this before Zero123's VAE", 8,
                               multiple_of=8),
    "oracle_object": Text("the built-in object the oracle prior knows", required=True),
    "oracle_resolution": Int("pixel resolution of the oracle prior", 8),
})

STAGE0 = Section("stage0", {
    "steps": Int("sampler steps of stage 0 (text to image)", 1, 1000),
    "guidance_scale": Float("classifier-free guidance scale of stage 0", 0.0),
    "size": Int("image size drawn by stage 0", 64, multiple_of=64),
    "seed": Int("seed of stage 0's initial noise", **_SEED),
})

EVAL = Section("eval", {
    "resolution": Int("render size of the turntables and the metrics", 8),
    "orbit_views": Int("views of the orbit at the reference elevation (turntables, metrics; "
                       "view 0 is the reference view)", 2),
    "fps": Float("frames per second of the turntable video", 0.0, 240.0, lo_open=True),
    "novel_stride": Int("score every s-th orbit view against the ground truth", 1),
    "high_elevation_deg": Float("elevation of the extra ground-truth views", -90.0, 90.0),
    "high_azimuths_deg": Numbers("azimuths of the extra views, from the reference",
                                 item=_AZIMUTH),
    "fscore_thresholds": Numbers("F-score distance thresholds (fractions of the GT diagonal)",
                                 item=Float("", 0.0, lo_open=True), min_len=1),
    "geometry_points": Int("surface points sampled per mesh for Chamfer / F-score", 100),
    "volume_resolution": Int("occupancy grid cells per axis for volume IoU", 4, 512),
    "lpips": Bool("score LPIPS-AlexNet (weights from `make assets`)"),
    "clip_model": Text("CLIP folder for clip_similarity; empty: skipped"),
    "vgg19_weights": File("VGG19 state dict for the contextual distance; empty: skipped"),
    "chunk_rays": Int("rays per chunk when rendering full images", 1),
})

EXPORT = Section("export", {
    "enabled": Bool("write the last stage's asset to export/ (GLB, OBJ + MTL + PNG)"),
    "mesh_resolution": Int("marching-cubes grid of the volume stages' mesh", 8, 1024),
    "texture_size": Int("baked texture size (pixels)", 8, 8192),
    "min_component_fraction": Float("remove mesh components with fewer faces than this "
                                    "fraction of the largest (0 keeps all)", 0.0, 1.0),
})


def _uses(cfg, kind: str) -> bool:
  return kind in (cfg.guidance.prior_2d, cfg.guidance.prior_3d)


def _inputs(cfg):
  """What the reference comes from, and the models that needs."""
  g = cfg.guidance
  if _uses(cfg, "oracle") and cfg.data.image:
    yield "data.image", (f"the oracle prior knows only its built-in object "
                         f"('{g.oracle_object}'), not a user image; use a learned prior "
                         "(guidance.prior_2d/prior_3d) for a real image, or leave data.image "
                         "empty")
  if cfg.data.object and cfg.data.image:
    yield "data.object", "give either a reference image (data.image) or an object, not both"
  if cfg.data.object and _uses(cfg, "oracle") and cfg.data.object != g.oracle_object:
    yield "data.object", (f"'{cfg.data.object}', but the oracle prior knows only "
                          f"guidance.oracle_object='{g.oracle_object}': use a learned prior")
  if cfg.data.object and cfg.data.object != "primitives":
    from dc3d_jax.testbed import catalog
    if cfg.data.object not in catalog.OBJECTS and not catalog.is_procedural(cfg.data.object):
      yield "data.object", (f"unknown object '{cfg.data.object}': expected 'primitives', "
                            "one of dc3d_jax/testbed/catalog.py's OBJECTS or a generated "
                            f"object '{catalog.PROCEDURAL_PREFIX}NNNN' (testbed/procedural.py)")
  stage0 = not cfg.data.image and not cfg.data.object and not _uses(cfg, "oracle")
  if stage0 and not cfg.prompt:
    yield "data.image", ("empty: give a reference image (--config.data.image=PATH), a prompt "
                         "for stage 0 (--config.prompt=...), or use the oracle prior")
  if cfg.data.depth and not cfg.data.image:
    yield "data.depth", "a depth map belongs to a reference image: set data.image too"
  if g.prior_2d in ("sd", "deepfloyd") and not cfg.prompt:
    yield "prompt", (f"empty, but the 2D prior guidance.prior_2d='{g.prior_2d}' needs a text "
                     "prompt")
  if g.prior_2d == "deepfloyd" and not g.if_model:
    yield "guidance.if_model", "empty: give a DeepFloyd IF stage-I folder or cached model id"
  if (g.prior_2d == "sd" or (stage0 and cfg.prompt)) and not g.sd_model:
    yield "guidance.sd_model", "empty: give a Stable Diffusion folder or cached model id"
  if g.prior_3d == "zero123" and not g.zero123_model:
    yield "guidance.zero123_model", ("empty: give stable_zero123.ckpt, zero123-xl.ckpt or a "
                                     "Zero123 folder (or guidance.prior_3d=none)")
  try:
    oracle.ground_truth_mesh(g.oracle_object)
  except ValueError as err:
    yield "guidance.oracle_object", str(err).split(": ", 1)[-1]


def run_sections(stage_names) -> tuple:
  return (_top(stage_names), DATA, GUIDANCE, STAGE0, EVAL, EXPORT)


RUN_CHECKS = (_inputs,)


def _section_of(key: str, by_name: dict):
  """(section, key relative to it) for a full dotted key."""
  head, _, rest = key.partition(".")
  if rest and head in by_name:
    return by_name[head], rest
  return by_name.get(""), key


def problems(cfg, sections, checks=RUN_CHECKS) -> list:
  """[(full key, value or None, message)] in config order, then the cross-key checks."""
  by_name = {s.name: s for s in sections}
  out = []
  for key, value in leaves(cfg).items():
    section, rel = _section_of(key, by_name)
    rule = section.rule_for(rel) if section else None
    if rule is None:
      out.append((key, value, "no rule knows this key (a stage's config section must be "
                              "listed with its rules in pipeline.STAGES)"))
    elif (msg := rule.problem(value)) is not None:
      out.append((key, value, f"{msg} ({rule.doc})"))
  if not out:  # cross-key checks assume every single key is sane
    for check in (*checks, *(c for s in sections for c in s.checks)):
      out += [(key, None, msg) for key, msg in check(cfg)]
  return out


def validate(cfg, sections, checks=RUN_CHECKS) -> None:
  """Raises ConfigError with the first problem, naming the key and the fix."""
  found = problems(cfg, sections, checks)
  if not found:
    return
  key, value, msg = found[0]
  shown = f"{key}={value!r}" if value is not None else key
  more = ""
  if len(found) > 1:
    more = f" ({len(found) - 1} more: {', '.join(k for k, _, _ in found[1:4])}" + (
        ", ..." if len(found) > 4 else "") + ")"
  raise errors.ConfigError(f"config {shown}: {msg}. Fix it with --config.{key}=... or in the "
                           f"config file{more}")


def shape_config(cfg, sections) -> dict:
  """{full key: value} of every shape-determining key present in cfg."""
  flat = leaves(cfg)
  out = {}
  for s in sections:
    for pattern in s.shape_keys:
      out.update({k: v for k, v in flat.items()
                  if k.startswith(s.full("")) and matches(s.full(pattern), k)})
  return out


def describe(cfg, sections) -> str:
  """One line per key: `key = value  # meaning [accepts]`, shape keys marked."""
  by_name = {s.name: s for s in sections}
  shapes = set(shape_config(cfg, sections))
  lines = []
  for key, value in leaves(cfg).items():
    section, rel = _section_of(key, by_name)
    rule = section.rule_for(rel) if section else None
    doc = f"{rule.doc} [{rule.expected()}]" if rule else "(no description)"
    mark = " {shape: a change needs --restart}" if key in shapes else ""
    lines.append(f"{key} = {value!r}  # {doc}{mark}")
  return "\n".join(lines)
