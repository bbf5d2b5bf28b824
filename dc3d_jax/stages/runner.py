"""What every stage runner shares: guidance and settings from the config, compiled steps and
reference batches per render resolution, sample images, the loop, and the hand-off (state +
image renderer) to what comes next. A runner (stages/<stage>_run.py) only says how its stage's
first state is made.

A stage module provides: NAME; settings_from_config(cfg, guidance, batch_size, data_sharding);
compile_steps(settings, pattern) -> {parts: step}; parts_at(step, pattern, settings);
render_image(params, aux, camera, step, *, settings, chunk) -> {"rgb", "opacity", "depth",
"comp_normal"} [H, W, C]. Its Settings has views and active. `aux` is a volume stage's
occupancy grid (state.buffers["occupancy"]), or what the stage's optional
render_aux(state, constants) returns; a stage with constants provides constants(settings)
(load_final rebuilds them). Optionally TRUNCATION_HINT, the config keys to raise when
a render reports kept_frac < 1.

`constants` (run_stage's argument) are device arrays every step and render reads but nothing
trains, e.g. the geometry stage's tet grid: they are placed on the devices once and passed as
arguments (batch["constants"] in a step), never closed over (that would bake them into the
compiled program).
"""

import dataclasses
import functools
from pathlib import Path
from types import ModuleType
from typing import Any, Callable

import jax
import numpy as np
from tqdm.auto import tqdm

from dc3d_jax import cameras, reference
from dc3d_jax.core import devices, rng, schedules
from dc3d_jax.eval import report
from dc3d_jax.guidance import registry
from dc3d_jax.errors import ResumeError
from dc3d_jax.io import writers
from dc3d_jax.stages import loop
from dc3d_jax.stages.checkpoints import CheckpointStore

SAMPLE_AZIMUTHS_DEG = (0.0, 90.0, 180.0, 270.0)


@dataclasses.dataclass
class Handoff:
  state: Any
  settings: Any
  # camera -> {"rgb", "opacity", "depth", "comp_normal"} numpy [H, W, C], and "kept_frac";
  # a report.MonitoredRenderer, so truncated evaluation renders are reported.
  render_fn: Callable
  # The stage module that made the state (extract_mesh, albedo_fn...): the texture stage
  # reads its predecessor's mesh through it.
  module: Any = None


def visual_row(out: dict) -> list:
  """rgb | normal | depth (normalised over the object) | opacity, for one view."""
  opacity = out["opacity"]
  inside = opacity > 0.5
  depth = out["depth"] / np.maximum(opacity, 1e-6)
  lo, hi = (depth[inside].min(), depth[inside].max()) if inside.any() else (0.0, 1.0)
  depth_img = np.where(inside, 1.0 - (depth - lo) / max(hi - lo, 1e-6), 0.0)
  return [out["rgb"], out["comp_normal"], depth_img, opacity]


def render_aux(stage: ModuleType, state, constants=None):
  """render_image's second argument: the stage's render_aux(state, constants), else a volume
  stage's occupancy grid."""
  hook = getattr(stage, "render_aux", None)
  return hook(state, constants) if hook is not None else state.buffers["occupancy"]


def image_renderer(stage: ModuleType, settings, chunk: int, constants=None):
  """state -> (camera -> numpy images), one jitted renderer for every state."""
  render = jax.jit(functools.partial(stage.render_image, settings=settings, chunk=chunk))
  def for_state(state):
    aux = render_aux(stage, state, constants)
    return lambda camera: jax.device_get(render(state.params, aux, camera, state.step))
  return for_state


def truncation_hint(stage: ModuleType) -> str:
  hint = getattr(stage, "TRUNCATION_HINT", None)
  return hint or (f"raise {stage.NAME}.render.samples_per_ray (and prepass_samples_per_ray "
                  "when pruning is on)")


def samples_fn(stage: ModuleType, renderer, views: cameras.ViewSettings, size: int):
  """(state, step) -> a grid image: one visual_row per sample azimuth around the reference."""
  watch = report.MonitoredRenderer(None, f"{stage.NAME} sample images", truncation_hint(stage))
  def samples(state, step):
    watch.render_fn = renderer(state)
    render_fn = watch
    cams = cameras.make_camera(views.ref_elevation_deg,
                               views.ref_azimuth_deg + np.array(SAMPLE_AZIMUTHS_DEG),
                               views.ref_distance, views.fovy_deg, size, size)
    rows = [visual_row(render_fn(cams[i])) for i in range(len(SAMPLE_AZIMUTHS_DEG))]
    return writers.image_grid([img for row in rows for img in row], ncols=4)
  return samples


def step_inputs(ctx, stage: ModuleType, settings, prior_params, constants=None):
  """step -> (kind, compiled fn(state, batch), batch): the substep pattern's name and compiled
  step, and the reference batch at the step's render resolution (<stage>.train), with the
  (replicated) constants under "constants" when there are any."""
  t = ctx.cfg[stage.NAME].train
  compiled = stage.compile_steps(settings, t.substeps)
  prior_params = ctx.parallel.replicate(prior_params)
  root = ctx.parallel.replicate(ctx.root_key)
  batches = {res: ctx.parallel.replicate({"ref": reference.at_resolution(ctx.reference, res)})
             for res in t.resolutions}
  if constants is not None:
    batches = {res: {**batch, "constants": constants} for res, batch in batches.items()}

  def inputs(step: int):
    res = schedules.piecewise_constant(step, t.resolution_milestones, t.resolutions)
    parts = stage.parts_at(step, t.substeps, settings)
    fn = compiled[parts]
    step_fn = lambda state, batch: fn(state, batch, prior_params, root)
    return "+".join(parts), step_fn, batches[res]
  return inputs


def build_settings(ctx, stage: ModuleType):
  """The stage's guidance (registry.build) and Settings -> (settings, prior_params)."""
  cfg = ctx.cfg
  guidance, prior_params = registry.build(cfg, stage.NAME, ctx.priors, ctx.reference)
  batch = devices.views_per_step(cfg.data.batch_size, ctx.parallel.n_devices)
  settings = stage.settings_from_config(cfg, guidance, batch, ctx.parallel.data)
  if "depth_rel" in settings.active and ctx.reference["depth"] is None:
    print(f"note: {stage.NAME}.loss.depth_rel is set but data.depth is empty; "
          "the relative-depth loss is skipped")
  return settings, prior_params


def init_key(ctx, stage: ModuleType) -> jax.Array:
  return rng.key_for(ctx.root_key, f"{stage.NAME}/init", 0)


def run_stage(ctx, stage: ModuleType, settings, prior_params,
              init_state: Callable[[], Any], constants=None) -> Handoff:
  """Trains the stage from init_state() (or its newest checkpoint) to <stage>.train.steps.
  constants: the stage's untrained device inputs (module docstring), or None."""
  cfg = ctx.cfg
  if constants is not None:
    constants = ctx.parallel.replicate(constants)
  renderer = image_renderer(stage, settings, cfg.eval.chunk_rays, constants)
  plan = loop.StagePlan(
      name=stage.NAME, steps=cfg[stage.NAME].train.steps,
      init_state=lambda: ctx.parallel.replicate(init_state()),
      step_inputs=step_inputs(ctx, stage, settings, prior_params, constants),
      samples=samples_fn(stage, renderer, settings.views, cfg.eval.resolution))
  state = loop.run(plan, ctx.workdir / stage.NAME, cfg[stage.NAME].train, progress=ctx.progress)
  render_fn = report.MonitoredRenderer(renderer(state), f"{stage.NAME} evaluation",
                                       truncation_hint(stage))
  return Handoff(state=state, settings=settings, render_fn=render_fn, module=stage)


def load_final(ctx, stage: ModuleType, source: Path) -> Handoff:
  """The final state of `stage` as a finished run left it under source/<stage>/ (its
  final.json and the checkpoint at that step), for the next stage to start from.

  The stage module provides init_state(settings, key), the restore template."""
  stage_dir = Path(source) / stage.NAME
  step = loop.final_step(stage_dir)
  if step is None:
    raise ResumeError(missing_predecessor(stage.NAME, source))
  batch = devices.views_per_step(ctx.cfg.data.batch_size, ctx.parallel.n_devices)
  settings = stage.settings_from_config(ctx.cfg, {}, batch, ctx.parallel.data)
  template = ctx.parallel.replicate(stage.init_state(settings, init_key(ctx, stage)))
  store = CheckpointStore(stage_dir / "checkpoints", keep=None)
  try:
    if step not in store.all_steps():
      raise ResumeError(f"{stage_dir}: final.json says step {step}, but there is no checkpoint "
                        f"of that step in {stage_dir / 'checkpoints'}; re-run the "
                        f"{stage.NAME} stage (--config.stages={stage.NAME},...)")
    state = store.restore(step, template)
  finally:
    store.close()
  tqdm.write(f"[{stage.NAME}] starting from its final state in {stage_dir} (step {step})")
  constants = getattr(stage, "constants", None)
  if constants is not None:
    constants = ctx.parallel.replicate(constants(settings))
  renderer = image_renderer(stage, settings, ctx.cfg.eval.chunk_rays, constants)
  return Handoff(state=state, settings=settings, render_fn=report.MonitoredRenderer(
      renderer(state), f"{stage.NAME} evaluation", truncation_hint(stage)), module=stage)


def missing_predecessor(name: str, source: Path) -> str:
  return (f"{Path(source) / name}: the {name} stage has not finished there (no final.json), "
          f"and the next stage starts from its final state; run it first (list {name!r} in "
          "--config.stages), or point <stage>.init_from at a work dir where it finished")
