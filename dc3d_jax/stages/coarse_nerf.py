"""Stage 1a, coarse NeRF: hash-grid density field, volume rendering, reference-view losses
and score distillation (reference §1a, §3).

Substeps (reference "alternate"): on even steps the reference view is rendered and gets the
rgb / mask / depth_rel losses; on odd steps B random views get the guidance (SDS) losses and
sparsity. The orientation, opacity and normal-smoothness regularizers apply to whichever
views were rendered. `parts` names the substeps one compiled step runs.
"""

import dataclasses
from typing import Any, Mapping

import jax
import jax.numpy as jnp

from dc3d_jax import cameras as cams
from dc3d_jax.core import rng, schedules
from dc3d_jax.core.chunking import map_in_chunks
from dc3d_jax.fields.density import DensityField, DensitySettings
from dc3d_jax.geometry import hash_grid, isosurface
from dc3d_jax.render import occupancy, volume
from dc3d_jax.render.occupancy import OccupancySettings
from dc3d_jax.stages import common, substeps

NAME = "coarse_nerf"
LOSS_TERMS = ("rgb", "mask", "depth_rel", "sds_2d", "sds_3d", "normal_smooth_2d",
              "normal_smooth_3d", "orient", "sparsity", "opaque")
PARAM_GROUPS = ("hash_table", "density_mlp", "feature_mlp")
PER_RAY = ("rgb", "opacity", "depth", "comp_normal")


@dataclasses.dataclass(frozen=True)
class Band:
  """Progressive hash-grid band: start_level levels, one more every update_steps."""
  start_level: int
  start_step: int
  update_steps: int


@dataclasses.dataclass(frozen=True)
class Settings:
  """Everything static a step needs, built once from the config."""
  grid: hash_grid.HashGridSpec
  field: DensitySettings
  band: Band
  volume: volume.VolumeSettings
  occupancy: OccupancySettings
  views: cams.ViewSettings
  weights: Mapping[str, Any]
  guidance: Mapping[str, Any]
  batch_size: int
  tx: Any
  data_sharding: Any = None
  field_chunk: int = 0          # points per field evaluation (0: all at once)
  remat: bool = False           # recompute field chunks in the backward pass (memory)
  rays_noise_scale: float = 0.0  # reference-view ray jitter (data.rays_noise_scale)

  @property
  def active(self) -> frozenset:
    return common.active_terms(self.weights)

  @property
  def normals(self) -> str:
    if "normal_smooth_3d" in self.active:
      return "normal_perturb"
    return "normal" if self.active & {"orient", "normal_smooth_2d"} else "none"


def settings_from_config(cfg, guidance: Mapping, batch_size: int, data_sharding=None):
  """cfg: the whole run config; guidance: {"sds_2d"|"sds_3d": SDSGuidance} for this stage."""
  s = cfg[NAME]
  r = s.render
  vol = volume.VolumeSettings(
      radius=s.field.radius, num_steps_diagonal=r.num_steps_diagonal,
      samples_per_ray=r.samples_per_ray, stratified=r.stratified,
      alpha_threshold=r.alpha_threshold, transmittance_threshold=r.transmittance_threshold,
      prepass_samples_per_ray=r.prepass_samples_per_ray)
  return Settings(
      grid=hash_grid.HashGridSpec.from_config(s.field.grid),
      field=DensitySettings(radius=s.field.radius, blob_scale=s.field.blob_scale,
                            blob_std=s.field.blob_std, hidden=s.field.hidden),
      band=Band(s.field.band_start_level, s.field.band_start_step, s.field.band_update_steps),
      volume=vol,
      occupancy=OccupancySettings(r.occupancy_resolution, r.occupancy_threshold,
                                  r.occupancy_decay, r.occupancy_every),
      views=cams.ViewSettings.from_config(cfg.data, s.views.progressive_until),
      weights=common.check_loss_weights(s.loss, LOSS_TERMS, NAME),
      guidance=dict(guidance), batch_size=batch_size,
      tx=common.make_optimizer(s.optim, PARAM_GROUPS), data_sharding=data_sharding,
      field_chunk=r.field_chunk, remat=r.remat,
      rays_noise_scale=float(cfg.data.rays_noise_scale))


def _field(settings: Settings) -> DensityField:
  return DensityField(grid=settings.grid, settings=settings.field)


def init_state(settings: Settings, key) -> common.TrainState:
  points = jnp.zeros((1, 3))
  params = _field(settings).init(key, points, jnp.ones((settings.grid.n_levels,)))["params"]
  grid = occupancy.init_grid(settings.occupancy.resolution)
  return common.new_state(params, settings.tx, {"occupancy": grid})


def level_mask(settings: Settings, step) -> jax.Array:
  b = settings.band
  return schedules.level_mask(step, n_levels=settings.grid.n_levels, start_level=b.start_level,
                              start_step=b.start_step, update_steps=b.update_steps)


def field_fns(params, settings: Settings, mask: jax.Array):
  """(field_fn: [N,3] -> (σ, rgb), density_fn: [N,3] -> σ) bound to params, evaluated in
  chunks of settings.field_chunk points (recomputed in the backward pass if settings.remat)."""
  field = _field(settings)
  variables = {"params": params}
  apply = lambda x: field.apply(variables, x, mask)
  density = lambda x: field.apply(variables, x, mask, method=DensityField.density)
  chunked = lambda fn: lambda x: map_in_chunks(fn, x, settings.field_chunk, remat=settings.remat)
  return chunked(apply), chunked(density)


def render_views(params, grid, cameras, key, settings: Settings, mask, normals: str,
                 jitter=None):
  """Cameras [B] -> (images {name: [B,H,W,C]}, packed samples {name: [B,K,...]}).
  jitter: optional [2, 3] ray offsets for every camera (cameras.camera_rays)."""
  field_fn, density_fn = field_fns(params, settings, mask)
  render_flat = lambda rays, k: volume.render_rays(field_fn, density_fn, rays, grid,
                                                   settings.volume, k, normals=normals)
  return substeps.render_views(render_flat, cameras, key, PER_RAY, jitter)


def ref_ray_jitter(root_key, resolution: int, settings: Settings):
  """The reference view's [2, 3] ray offsets at one render resolution (None when off)."""
  return substeps.ref_ray_jitter(root_key, resolution, settings, NAME)


def _substep(params, grid, substep: str, batch, prior_params, root_key, step,
             settings: Settings, mask):
  """Renders the substep's views; returns (terms, metrics)."""
  render = lambda cameras, key, jitter: render_views(params, grid, cameras, key, settings,
                                                     mask, settings.normals, jitter)
  return substeps.run_substep(render, substep, batch, prior_params, root_key, step, settings,
                              NAME)


def _update_occupancy(params, grid, step, root_key, settings: Settings, mask):
  """The grid's EMA of σΔ every settings.occupancy.every steps (reference §1a)."""
  _, density_fn = field_fns(params, settings, mask)
  alpha_fn = lambda x: density_fn(x) * settings.volume.step_size
  return occupancy.periodic_update(grid, alpha_fn, step,
                                   rng.key_for(root_key, f"{NAME}/occupancy", step),
                                   settings.occupancy, settings.field.radius)


def train_step(state: common.TrainState, batch, prior_params, root_key, *,
               settings: Settings, parts: tuple):
  """One optimisation step over the substeps in `parts` ("ref", "guidance")."""
  step = state.step
  mask = level_mask(settings, step)
  grid = _update_occupancy(state.params, state.buffers["occupancy"], step, root_key,
                           settings, mask)

  def loss_fn(params):
    terms, metrics = substeps.sum_over(parts, lambda substep: _substep(
        params, grid, substep, batch, prior_params, root_key, step, settings, mask))
    return common.weighted_total(terms, settings.weights, step), (terms, metrics)

  (total, (terms, metrics)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
  new_state = common.apply_gradients(state, grads, settings.tx, {"occupancy": grid})
  metrics = {**{f"loss/{k}": v for k, v in terms.items()}, **metrics, "loss": total,
             "occupied_frac": jnp.mean(grid.binary), "levels": jnp.sum(mask)}
  return new_state, metrics


def render_image(params, grid, camera, step, *, settings: Settings, chunk: int) -> dict:
  """One camera, full image, no gradient, ray chunks of `chunk` -> {name: [H, W, C]} plus
  "kept_frac": the smallest fraction of live samples a chunk's budget kept (1: none cut)."""
  field_fn, density_fn = field_fns(params, settings, level_mask(settings, step))
  vol = dataclasses.replace(settings.volume, stratified=False)
  render_flat = lambda rays, key: volume.render_rays(field_fn, density_fn, rays, grid, vol,
                                                     key, normals="normal")
  return substeps.render_image(render_flat, camera, chunk, PER_RAY)


DENSITY_THRESHOLD = 25.0   # the reference's isosurface threshold of the density field


def extract_mesh(state: common.TrainState, settings: Settings, resolution: int):
  """The density's isosurface at DENSITY_THRESHOLD by marching cubes over the box ->
  (vertices [V, 3], faces [F, 3]) numpy, training frame, outward winding."""
  _, density_fn = field_fns(state.params, settings, level_mask(settings, state.step))
  return isosurface.extract(jax.jit(density_fn), settings.field.radius, resolution,
                            DENSITY_THRESHOLD, inside="above")


def albedo_fn(state: common.TrainState, settings: Settings):
  """[K, 3] world points -> [K, 3] colour in [0, 1] (the field has no shading)."""
  field_fn, _ = field_fns(state.params, settings, level_mask(settings, state.step))
  return jax.jit(lambda x: field_fn(x)[1])


def compile_steps(settings: Settings, pattern: str) -> dict:
  """{parts: jitted train_step} for the substep pattern ("alternate" or "accumulate")."""
  return common.compile_steps(train_step, settings, pattern, NAME)


parts_at = common.parts_at
