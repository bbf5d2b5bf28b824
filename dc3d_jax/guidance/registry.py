"""Builds a stage's guidance terms and their frozen prior params from the config.

The 2D slot (`sds_2d`) and the 3D slot (`sds_3d`) each take a prior kind from
guidance.prior_2d / guidance.prior_3d ("none" leaves the slot empty, so 2D-only, 3D-only and
hybrid runs are config choices); the timestep ranges come from <stage>.guidance.<slot>.
Models are loaded once per run by a PriorStore and shared by stage 0 and every stage.

The 2D slot takes the reference's DeepFloyd IF stage I ("deepfloyd", guidance.if_model), whose
t ranges the configs hold, or Stable Diffusion ("sd") standing in for it. guidance.sd_t_schedule
says how SD reads IF's ranges: "snr_matched_if" (default) queries SD at the step of the same
signal-to-noise ratio as the IF step drawn (noise_schedule.snr_matched_timesteps);
"if_fractions" at the same step index. IF itself is queried at the drawn step.
"""

from pathlib import Path

from dc3d_jax.core import schedules
from dc3d_jax.errors import ConfigError
from dc3d_jax.guidance.sds import SDSGuidance
from dc3d_jax.priors import (deepfloyd, loading, noise_schedule, oracle, precision,
                             stable_diffusion, testbed, text_cache, zero123)

SLOTS = (("sds_2d", "prior_2d"), ("sds_3d", "prior_3d"))
KINDS = {"prior_2d": ("none", "oracle", "sd", "deepfloyd"),
         "prior_3d": ("none", "oracle", "zero123", "testbed")}
SD_T_SCHEDULES = ("snr_matched_if", "if_fractions")


class PriorStore:
  """Loads each configured diffusion model at most once per run (explicit, not a global)."""

  def __init__(self, guidance_cfg, cache_dir: Path | None = None):
    self._cfg = guidance_cfg
    self.cache_dir = cache_dir
    self.text_cache = text_cache.TextEmbeddingCache()
    self._models = {}

  @property
  def dtype(self):
    return precision.prior_dtype(self._cfg.precision)

  def stable_diffusion(self):
    if not self._cfg.sd_model:
      raise ValueError("config guidance.sd_model is empty: give a Stable Diffusion diffusers "
                       "folder or a model id in the local Hugging Face cache")
    if "sd" not in self._models:
      self._models["sd"] = loading.load_stable_diffusion(self._cfg.sd_model, dtype=self.dtype)
    return self._models["sd"]

  def deepfloyd(self):
    if not self._cfg.if_model:
      raise ValueError("config guidance.if_model is empty: give a DeepFloyd IF stage-I "
                       "folder or a model id in the local Hugging Face cache")
    if "deepfloyd" not in self._models:
      self._models["deepfloyd"] = loading.load_deepfloyd(self._cfg.if_model, dtype=self.dtype)
    return self._models["deepfloyd"]

  def zero123(self):
    if not self._cfg.zero123_model:
      raise ValueError("config guidance.zero123_model is empty: give stable_zero123.ckpt, "
                       "zero123-xl.ckpt or a diffusers-format Zero123 folder (or set "
                       "guidance.prior_3d=none for a 2D-only run)")
    if "zero123" not in self._models:
      self._models["zero123"] = loading.load_zero123(
          self._cfg.zero123_model, dtype=self.dtype,
          image_encoder=self._cfg.zero123_image_encoder or None)
    return self._models["zero123"]

  def testbed(self):
    if "testbed" not in self._models:
      self._models["testbed"] = testbed.load_model(testbed.resolve(self._cfg.testbed_model))
    return self._models["testbed"]


def _text_prior(cfg, store: PriorStore, kind: str, make, load, **sizes):
  """A text-to-image prior of the 2D slot (models from load(), after the prompt is checked)
  with the run's prompt, Perp-Neg and view thresholds (shared by both kinds) and the
  embeddings cached in the store."""
  g = cfg.guidance
  if not cfg.prompt:
    raise ValueError(f"config prompt is empty: the 2D prior (guidance.prior_2d={kind!r}) "
                     "needs a text prompt (--config.prompt=...)")
  return make(load(), cfg.prompt, perp_neg=g.sd_perp_neg, negative_prompt=g.negative_prompt,
              front_threshold=g.front_threshold_deg, back_threshold=g.back_threshold_deg,
              overhead_threshold=g.overhead_threshold_deg, cache_dir=store.cache_dir,
              cache=store.text_cache, **sizes)


def _stable_diffusion_prior(cfg, store: PriorStore):
  g = cfg.guidance
  return _text_prior(cfg, store, "sd", stable_diffusion.make_stable_diffusion_prior,
                     store.stable_diffusion, guidance_scale=g.sd_guidance_scale,
                     render_size=g.sd_render_size)


def _deepfloyd_prior(cfg, store: PriorStore):
  g = cfg.guidance
  return _text_prior(cfg, store, "deepfloyd", deepfloyd.make_deepfloyd_prior,
                     store.deepfloyd, guidance_scale=g.if_guidance_scale,
                     resolution=g.if_render_size)


def _zero123_prior(cfg, store: PriorStore, reference: dict):
  g, d = cfg.guidance, cfg.data
  return zero123.make_zero123_prior(
      store.zero123(), reference["rgba"], guidance_scale=g.zero123_guidance_scale,
      variant=g.zero123_variant, ref_elevation_deg=d.ref_elevation_deg,
      ref_azimuth_deg=d.ref_azimuth_deg, ref_distance=d.ref_distance,
      render_size=g.zero123_render_size)


def _make_prior(kind: str, cfg, store, reference):
  if kind == "oracle":
    prior = oracle.OraclePrior(resolution=cfg.guidance.oracle_resolution)
    return prior, oracle.oracle_params(oracle.ground_truth_mesh(cfg.guidance.oracle_object))
  if store is None:
    raise ValueError(f"guidance prior {kind!r} needs a PriorStore")
  if kind == "sd":
    return _stable_diffusion_prior(cfg, store)
  if kind == "deepfloyd":
    return _deepfloyd_prior(cfg, store)
  if reference is None:
    raise ValueError(f"the {kind} prior needs the reference image")
  if kind == "testbed":
    return testbed.make_testbed_prior(
        store.testbed(), reference["rgba"], guidance_scale=cfg.guidance.testbed_guidance_scale,
        ref_elevation_deg=cfg.data.ref_elevation_deg, ref_azimuth_deg=cfg.data.ref_azimuth_deg)
  return _zero123_prior(cfg, store, reference)


def check_kinds(guidance_cfg) -> None:
  for key, kinds in KINDS.items():
    if guidance_cfg[key] not in kinds:
      raise ValueError(f"config guidance.{key}={guidance_cfg[key]!r}; expected one of {kinds}")
  if guidance_cfg.sd_t_schedule not in SD_T_SCHEDULES:
    raise ConfigError(f"config guidance.sd_t_schedule={guidance_cfg.sd_t_schedule!r}; "
                      f"expected one of {SD_T_SCHEDULES}")


def timestep_map(kind: str, prior, guidance_cfg) -> tuple | None:
  """The prior's step for each drawn IF step: SD's step of equal SNR under
  sd_t_schedule="snr_matched_if"; None (the drawn step itself) otherwise, and always for IF
  ("deepfloyd"), whose own schedule the t ranges were set for."""
  if kind != "sd" or guidance_cfg.sd_t_schedule != "snr_matched_if":
    return None
  steps = noise_schedule.snr_matched_timesteps(noise_schedule.deepfloyd_if_alphas_cumprod(),
                                               prior.alphas_cumprod())
  return tuple(int(t) for t in steps)


def build(cfg, stage: str, store: PriorStore | None = None, reference: dict | None = None):
  """-> ({slot: SDSGuidance}, {slot: prior params}) for the slots with a prior."""
  check_kinds(cfg.guidance)
  terms, params = {}, {}
  for slot, key in SLOTS:
    kind = cfg.guidance[key]
    if kind == "none":
      continue
    prior, params[slot] = _make_prior(kind, cfg, store, reference)
    ranges = cfg[stage].guidance[slot]
    for name in ("t_min", "t_max"):
      schedules.check_schedule(ranges[name], f"{stage}.guidance.{slot}.{name}")
    terms[slot] = SDSGuidance(prior=prior, t_min=tuple(ranges.t_min),
                              t_max=tuple(ranges.t_max),
                              timestep_map=timestep_map(kind, prior, cfg.guidance))
  return terms, params
