"""Wires the texture stage into a run: the fixed mesh from the previous stage, the guidance
(BSD on the trained copies of texture.prior.base: SD's texture.prior.model or the testbed
model of guidance.testbed_model; or the configured SDS terms), the loop.

The mesh is `previous.module.extract_mesh(previous.state, previous.settings,
texture.mesh_resolution)` (DMTet's surface; the volume stages' marching cubes at that grid),
so any stage with extract_mesh can precede it. The stage runs its own StagePlan (stages/
loop.py): its steps are chosen by kind (texture.kind_at), not by the volume stages' substep
patterns, and its renderer reads the mesh in state.buffers.
"""

import dataclasses
import functools

import jax
import jax.numpy as jnp

from dc3d_jax import reference
from dc3d_jax.core import devices
from dc3d_jax.errors import ConfigError, ResumeError
from dc3d_jax.eval import report
from dc3d_jax.guidance import bsd as bsd_lib
from dc3d_jax.guidance import registry
from dc3d_jax.priors import loading, prompts, stable_diffusion, testbed_base
from dc3d_jax.priors.denoiser_base import LatentUNet
from dc3d_jax.priors.trainable import JaxTrainablePrior
from dc3d_jax.stages import loop, runner
from dc3d_jax.stages import texture as tx_stage
from dc3d_jax.stages import texture_steps


def trainable_prior(prior_cfg, base, camera_condition: bool) -> JaxTrainablePrior:
  """texture.prior -> the trained copies' implementation (docs/texture_bsd.md for the rates)."""
  lr = prior_cfg.lr_full if prior_cfg.memory_mode == "full" else prior_cfg.lr_lora
  return JaxTrainablePrior(base=base, mode=prior_cfg.memory_mode, lr=lr, b1=prior_cfg.b1,
                           b2=prior_cfg.b2, eps=prior_cfg.eps,
                           weight_decay=prior_cfg.weight_decay, lora_rank=prior_cfg.lora_rank,
                           lora_alpha=prior_cfg.lora_alpha, camera_condition=camera_condition,
                           remat=prior_cfg.remat)


def make_bsd(base, texture_cfg) -> bsd_lib.BSD:
  """The BSD machinery on a frozen base (LatentUNet, TestbedBase or PixelDenoiser) from
  texture.*."""
  settings = bsd_lib.settings_from_config(texture_cfg)
  prior = trainable_prior(texture_cfg.prior, base, settings.camera_condition)
  return bsd_lib.BSD(base=base, dreambooth=prior, estimator=prior, settings=settings)


def _sd_models(ctx):
  """The loaded SD of texture.prior.model (the run's PriorStore's when it is guidance.sd_model)."""
  model = ctx.cfg.texture.prior.model
  if model == ctx.cfg.guidance.sd_model:
    return ctx.priors.stable_diffusion()
  return loading.load_stable_diffusion(model, dtype=ctx.priors.dtype)


def bsd_prompt_table(models, prompt: str, negative_prompt: str, store) -> jax.Array:
  """[6, L, D]: the four direction prompts, the negative prompt, the plain prompt."""
  texts = [*prompts.directional_prompts(prompt), negative_prompt, prompt]
  table = stable_diffusion.text_embeddings(models, texts, cache_dir=store.cache_dir,
                                           cache=store.text_cache)
  return jnp.asarray(table, models.unet.dtype)


def build_bsd(ctx) -> tuple:
  """-> (BSD on texture.prior.base, prior params {"bsd": ...}): Stable Diffusion ("sd", the
  reference: {"base", "codec", "prompts"}) or the testbed model ("testbed":
  {"base", "codec": {}, "conditioning": {"ref"}}, priors/testbed_base.py)."""
  if ctx.cfg.texture.prior.base == "testbed":
    return build_testbed_bsd(ctx)
  return build_sd_bsd(ctx)


def build_sd_bsd(ctx) -> tuple:
  """-> (BSD on Stable Diffusion, prior params {"bsd": {"base", "codec", "prompts"}})."""
  cfg = ctx.cfg
  models = _sd_models(ctx)
  base = LatentUNet(unet=models.unet, vae=models.vae, schedule=models.schedule,
                    vae_scaling_factor=models.vae_scaling_factor,
                    render_size=cfg.texture.prior.render_size)
  table = bsd_prompt_table(models, cfg.prompt, cfg.guidance.negative_prompt, ctx.priors)
  params = {"base": models.params["unet"], "codec": models.params["vae"], "prompts": table}
  return make_bsd(base, cfg.texture), {"bsd": params}


def build_testbed_bsd(ctx) -> tuple:
  """-> (BSD on the testbed model of guidance.testbed_model (the run's PriorStore's, shared
  with the 3D slot), prior params {"bsd": {"base", "codec": {}, "conditioning": {"ref"}}}).
  Only texture.prior.memory_mode "full": LoRA's targets are SD's attention module names."""
  cfg = ctx.cfg
  if cfg.texture.prior.memory_mode != "full":
    raise ConfigError(f"config texture.prior.memory_mode={cfg.texture.prior.memory_mode!r}: "
                      "the testbed base (texture.prior.base='testbed') trains full copies "
                      "only (LoRA targets SD's attention modules); set it to 'full'")
  if ctx.reference is None:
    raise ValueError("the testbed base of BSD needs the reference image")
  base, params, conditioning = testbed_base.make_testbed_base(
      ctx.priors.testbed(), ctx.reference["rgba"], ref_elevation_deg=cfg.data.ref_elevation_deg,
      ref_azimuth_deg=cfg.data.ref_azimuth_deg)
  return make_bsd(base, cfg.texture), {"bsd": {"base": params, "codec": {},
                                               "conditioning": conditioning}}


def build_settings(ctx) -> tuple:
  """-> (Settings, prior params) for texture.guidance.kind."""
  cfg = ctx.cfg
  batch = devices.views_per_step(cfg.data.batch_size, ctx.parallel.n_devices)
  if cfg.texture.guidance.kind == "bsd":
    model, prior_params = build_bsd(ctx)
    settings = tx_stage.settings_from_config(cfg, {}, batch, ctx.parallel.data, model)
    return settings, prior_params
  guidance, prior_params = registry.build(cfg, tx_stage.NAME, ctx.priors, ctx.reference)
  # The texture stage's t ranges are the SD schedule's own (§4), not IF fractions to remap.
  guidance = {k: dataclasses.replace(g, timestep_map=None) for k, g in guidance.items()}
  return tx_stage.settings_from_config(cfg, guidance, batch, ctx.parallel.data), prior_params


def image_renderer(settings):
  """state -> (camera -> numpy images), one jitted renderer for every state."""
  render = jax.jit(functools.partial(tx_stage.render_image, settings=settings))
  return lambda state: (lambda camera: jax.device_get(render(state.params, state.buffers,
                                                             camera)))


def step_inputs(ctx, settings, prior_params):
  """step -> (kind, compiled fn(state, batch), batch) (loop.StagePlan)."""
  compiled = texture_steps.compile_steps(settings)
  prior_params = ctx.parallel.replicate(prior_params)
  root = ctx.parallel.replicate(ctx.root_key)
  size = ctx.cfg.texture.resolution
  batch = ctx.parallel.replicate({"ref": reference.at_resolution(ctx.reference, size)})

  def inputs(step: int):
    kind = tx_stage.kind_at(step, settings)
    fn = compiled[kind]
    return kind, (lambda state, b: fn(state, b, prior_params, root)), batch
  return inputs


def previous_mesh(ctx, previous) -> tuple:
  """(vertices, faces) of the previous stage's final state (module docstring)."""
  module = getattr(previous, "module", None)
  if previous is None or module is None or not hasattr(module, "extract_mesh"):
    raise ResumeError(f"stage {tx_stage.NAME} textures the mesh of the stage before it: list "
                      "a stage with a surface (geometry, coarse_neus) before it in "
                      "--config.stages")
  return module.extract_mesh(previous.state, previous.settings, ctx.cfg.texture.mesh_resolution)


def run(ctx, previous: runner.Handoff | None = None) -> runner.Handoff:
  """Trains the texture stage on the previous stage's mesh (its newest checkpoint first)."""
  cfg = ctx.cfg
  vertices, faces = previous_mesh(ctx, previous)
  settings, prior_params = build_settings(ctx)
  mesh = tx_stage.prepare_mesh(vertices, faces, settings, cfg.texture.resolution)
  key = runner.init_key(ctx, tx_stage)
  init = lambda: tx_stage.convert_from(previous.state, settings, key, mesh, prior_params)
  renderer = image_renderer(settings)
  plan = loop.StagePlan(
      name=tx_stage.NAME, steps=cfg.texture.train.steps,
      init_state=lambda: ctx.parallel.replicate(init()),
      step_inputs=step_inputs(ctx, settings, prior_params),
      samples=runner.samples_fn(tx_stage, renderer, settings.views, cfg.eval.resolution))
  state = loop.run(plan, ctx.workdir / tx_stage.NAME, cfg.texture.train, progress=ctx.progress)
  render_fn = report.MonitoredRenderer(renderer(state), f"{tx_stage.NAME} evaluation",
                                       tx_stage.TRUNCATION_HINT)
  return runner.Handoff(state=state, settings=settings, render_fn=render_fn, module=tx_stage)
