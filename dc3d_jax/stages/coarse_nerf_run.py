"""Wires the coarse-NeRF stage into a run: guidance, compiled steps, reference batches per
resolution, sample images, and the hand-off (state + image renderer) to what comes next."""

import dataclasses
import functools
from typing import Any, Callable

import jax
import numpy as np

from dc3d_jax import cameras, reference
from dc3d_jax.core import devices, rng, schedules
from dc3d_jax.eval import report
from dc3d_jax.guidance import registry
from dc3d_jax.io import writers
from dc3d_jax.stages import coarse_nerf as cn
from dc3d_jax.stages import loop

SAMPLE_AZIMUTHS_DEG = (0.0, 90.0, 180.0, 270.0)


@dataclasses.dataclass
class Handoff:
  state: Any
  settings: cn.Settings
  # camera -> {"rgb", "opacity", "depth", "comp_normal"} numpy [H, W, C], and "kept_frac";
  # a report.MonitoredRenderer, so truncated evaluation renders are reported.
  render_fn: Callable


def _visual_row(out: dict) -> list:
  """rgb | normal | depth (normalised over the object) | opacity, for one view."""
  opacity = out["opacity"]
  inside = opacity > 0.5
  depth = out["depth"] / np.maximum(opacity, 1e-6)
  lo, hi = (depth[inside].min(), depth[inside].max()) if inside.any() else (0.0, 1.0)
  depth_img = np.where(inside, 1.0 - (depth - lo) / max(hi - lo, 1e-6), 0.0)
  return [out["rgb"], out["comp_normal"], depth_img, opacity]


TRUNCATION_HINT = (f"raise {cn.NAME}.render.samples_per_ray (and prepass_samples_per_ray when "
                   "pruning is on)")


def _image_renderer(settings: cn.Settings, chunk: int):
  render = jax.jit(functools.partial(cn.render_image, settings=settings, chunk=chunk))
  def for_state(state):
    grid = state.buffers["occupancy"]
    return lambda camera: jax.device_get(render(state.params, grid, camera, state.step))
  return for_state


def _samples_fn(renderer, views: cameras.ViewSettings, size: int):
  watch = report.MonitoredRenderer(None, f"{cn.NAME} sample images", TRUNCATION_HINT)
  def samples(state, step):
    watch.render_fn = renderer(state)
    render_fn = watch
    cams = cameras.make_camera(views.ref_elevation_deg,
                               views.ref_azimuth_deg + np.array(SAMPLE_AZIMUTHS_DEG),
                               views.ref_distance, views.fovy_deg, size, size)
    rows = [_visual_row(render_fn(cams[i])) for i in range(len(SAMPLE_AZIMUTHS_DEG))]
    return writers.image_grid([img for row in rows for img in row], ncols=4)
  return samples


def _step_inputs(ctx, settings: cn.Settings, prior_params):
  t = ctx.cfg[cn.NAME].train
  compiled = cn.compile_steps(settings, t.substeps)
  prior_params = ctx.parallel.replicate(prior_params)
  root = ctx.parallel.replicate(ctx.root_key)
  batches = {res: ctx.parallel.replicate({"ref": reference.at_resolution(ctx.reference, res)})
             for res in t.resolutions}

  def step_inputs(step: int):
    res = schedules.piecewise_constant(step, t.resolution_milestones, t.resolutions)
    parts = cn.parts_at(step, t.substeps)
    fn = compiled[parts]
    step_fn = lambda state, batch: fn(state, batch, prior_params, root)
    return "+".join(parts), step_fn, batches[res]
  return step_inputs


def run(ctx, previous=None) -> Handoff:
  """Trains the coarse NeRF from scratch (it is the first stage; `previous` is unused)."""
  cfg = ctx.cfg
  guidance, prior_params = registry.build(cfg, cn.NAME, ctx.priors, ctx.reference)
  batch = devices.views_per_step(cfg.data.batch_size, ctx.parallel.n_devices)
  settings = cn.settings_from_config(cfg, guidance, batch, ctx.parallel.data)
  if "depth_rel" in settings.active and ctx.reference["depth"] is None:
    print(f"note: {cn.NAME}.loss.depth_rel is set but data.depth is empty; "
          "the relative-depth loss is skipped")
  renderer = _image_renderer(settings, cfg.eval.chunk_rays)
  init_key = rng.key_for(ctx.root_key, f"{cn.NAME}/init", 0)
  plan = loop.StagePlan(
      name=cn.NAME, steps=cfg[cn.NAME].train.steps,
      init_state=lambda: ctx.parallel.replicate(cn.init_state(settings, init_key)),
      step_inputs=_step_inputs(ctx, settings, prior_params),
      samples=_samples_fn(renderer, settings.views, cfg.eval.resolution))
  state = loop.run(plan, ctx.workdir / cn.NAME, cfg[cn.NAME].train, progress=ctx.progress)
  render_fn = report.MonitoredRenderer(renderer(state), f"{cn.NAME} evaluation",
                                       TRUNCATION_HINT)
  return Handoff(state=state, settings=settings, render_fn=render_fn)
