"""Stage 1b, coarse NeuS: hash-grid SDF field, NeuS rendering, the same reference-view losses
and hybrid score distillation as the coarse NeRF (reference §1b, §3, §10).

Warm start (`convert_from`): the coarse NeRF's hash table, colour MLP and occupancy grid are
carried over bit for bit; the SDF head and the variance start fresh, so the SDF starts as the
radius-0.5 sphere and only the features and colours carry meaning over. All hash levels are on
(including levels the NeRF band never trained). The carried occupancy grid keeps decaying
under NeuS's updates (EMA 0.95 every 16 steps) and so fades over ~1,400 steps.

Substeps as in the coarse NeRF (stages/substeps.py). No term reads comp_normal by default
(normal_smooth_2d and eikonal are 0 in the reference); the normals every NeuS sample needs for
its α also serve the orientation term.
"""

import dataclasses
from typing import Any, Mapping

import jax
import jax.numpy as jnp

from dc3d_jax import cameras as cams
from dc3d_jax.core import rng, schedules
from dc3d_jax.core.chunking import map_in_chunks
from dc3d_jax.errors import ConfigError, ResumeError
from dc3d_jax.fields import sdf as sdf_field
from dc3d_jax.fields.sdf import SDFField, SDFSettings
from dc3d_jax.geometry import hash_grid, isosurface
from dc3d_jax.render import neus, occupancy, volume
from dc3d_jax.stages import coarse_nerf as cn
from dc3d_jax.stages import common, substeps

NAME = "coarse_neus"
LOSS_TERMS = ("rgb", "mask", "depth_rel", "sds_2d", "sds_3d", "normal_smooth_2d",
              "normal_smooth_3d", "orient", "sparsity", "opaque", "eikonal")
FIELD_GROUPS = ("hash_table", "sdf_mlp", "feature_mlp")
PARAM_GROUPS = FIELD_GROUPS + ("variance",)
CARRIED = ("hash_table", "feature_mlp")      # copied from the coarse NeRF
PER_RAY = ("rgb", "opacity", "depth", "comp_normal")


@dataclasses.dataclass(frozen=True)
class Settings:
  """Everything static a step needs, built once from the config."""
  grid: hash_grid.HashGridSpec
  field: SDFSettings
  volume: volume.VolumeSettings
  occupancy: occupancy.OccupancySettings
  views: cams.ViewSettings
  weights: Mapping[str, Any]
  guidance: Mapping[str, Any]
  batch_size: int
  tx: Any
  variance_init: float = 0.3        # v₀: inv_std = exp(10·v₀) ≈ 20
  cos_anneal_end: int = 5000        # steps until the cosine-anneal ratio reaches 1
  data_sharding: Any = None
  field_chunk: int = 0
  remat: bool = False
  rays_noise_scale: float = 0.0     # reference-view ray jitter (data.rays_noise_scale)

  @property
  def active(self) -> frozenset:
    return common.active_terms(self.weights)

  @property
  def normals(self) -> str:
    return "normal_perturb" if "normal_smooth_3d" in self.active else "normal"


def settings_from_config(cfg, guidance: Mapping, batch_size: int, data_sharding=None):
  """cfg: the whole run config. The hash grid, box radius and occupancy resolution are the
  coarse NeRF's (coarse_nerf.field.grid, .radius, .render.occupancy_resolution): the warm start
  carries the table and the grid over, so they cannot differ."""
  s, nerf = cfg[NAME], cfg[cn.NAME]
  r, radius = s.render, nerf.field.radius
  vol = volume.VolumeSettings(
      radius=radius, num_steps_diagonal=r.num_steps_diagonal,
      samples_per_ray=r.samples_per_ray, stratified=r.stratified,
      alpha_threshold=r.alpha_threshold, transmittance_threshold=r.transmittance_threshold,
      prepass_samples_per_ray=r.prepass_samples_per_ray)
  return Settings(
      grid=hash_grid.HashGridSpec.from_config(nerf.field.grid),
      field=SDFSettings(radius=radius, sphere_radius=s.field.sphere_radius,
                        hidden=s.field.hidden),
      volume=vol,
      occupancy=occupancy.OccupancySettings(nerf.render.occupancy_resolution,
                                            r.occupancy_threshold, r.occupancy_decay,
                                            r.occupancy_every),
      views=cams.ViewSettings.from_config(cfg.data, s.views.progressive_until),
      weights=common.check_loss_weights(s.loss, LOSS_TERMS, NAME),
      guidance=dict(guidance), batch_size=batch_size,
      tx=common.make_optimizer(s.optim, PARAM_GROUPS),
      variance_init=s.field.variance_init, cos_anneal_end=r.cos_anneal_end,
      data_sharding=data_sharding, field_chunk=r.field_chunk, remat=r.remat,
      rays_noise_scale=float(cfg.data.rays_noise_scale))


def _field(settings: Settings) -> SDFField:
  return SDFField(grid=settings.grid, settings=settings.field)


def level_mask(settings: Settings) -> jax.Array:
  """All levels on (reference §10)."""
  return jnp.ones((settings.grid.n_levels,), jnp.float32)


def fresh_params(settings: Settings, key) -> dict:
  """{hash_table, sdf_mlp, feature_mlp, variance}, all newly initialised."""
  field = _field(settings).init(key, jnp.zeros((1, 3)), level_mask(settings))["params"]
  return {**field, "variance": sdf_field.init_variance(settings.variance_init)}


def init_state(settings: Settings, key) -> common.TrainState:
  """A state from scratch: the shapes checkpoints are restored into, and a stage without a
  warm start."""
  grid = occupancy.init_grid(settings.occupancy.resolution)
  return common.new_state(fresh_params(settings, key), settings.tx, {"occupancy": grid})


def _check_carried(nerf_state, params: dict, resolution: int) -> None:
  for name in CARRIED:
    want = jax.tree_util.tree_map(jnp.shape, params[name])
    got = jax.tree_util.tree_map(jnp.shape, nerf_state.params[name])
    if want != got:
      raise ConfigError(f"coarse-NeRF parameter {name!r} has shapes {got}, the NeuS field "
                        f"expects {want}: coarse_nerf.field must match the state's run")
  got = nerf_state.buffers["occupancy"].occ.shape
  if got != (resolution,) * 3:
    raise ConfigError(f"coarse-NeRF occupancy grid is {got}, expected {(resolution,) * 3} "
                      "(coarse_nerf.render.occupancy_resolution must match the state's run)")


def convert_from(nerf_state: common.TrainState, settings: Settings, key) -> common.TrainState:
  """The warm start from a coarse-NeRF TrainState (reference §1b): hash table, colour MLP and
  occupancy grid carried over unchanged; SDF head, variance and optimizer state fresh."""
  if not (isinstance(nerf_state, common.TrainState) and "density_mlp" in nerf_state.params):
    raise ResumeError("coarse_neus starts from a coarse-NeRF TrainState; got "
                      f"{type(nerf_state).__name__}")
  fresh = fresh_params(settings, key)
  _check_carried(nerf_state, fresh, settings.occupancy.resolution)
  # Copies: the NeuS step donates its state, which must not free the NeRF state's buffers.
  carried = jax.tree_util.tree_map(jnp.copy, {n: nerf_state.params[n] for n in CARRIED})
  grid = jax.tree_util.tree_map(jnp.copy, nerf_state.buffers["occupancy"])
  return common.new_state({**fresh, **carried}, settings.tx, {"occupancy": grid})


def field_fns(params, settings: Settings):
  """(field_fn: [N,3] -> (f, rgb), sdf_fn: [N,3] -> f) bound to params, evaluated in chunks
  of settings.field_chunk points (recomputed in the backward pass if settings.remat)."""
  field, mask = _field(settings), level_mask(settings)
  variables = {"params": {name: params[name] for name in FIELD_GROUPS}}
  apply = lambda x: field.apply(variables, x, mask)
  sdf = lambda x: field.apply(variables, x, mask, method=SDFField.sdf)
  chunked = lambda fn: lambda x: map_in_chunks(fn, x, settings.field_chunk, remat=settings.remat)
  return chunked(apply), chunked(sdf)


def _flat_renderer(params, grid, step, settings: Settings, vol: volume.VolumeSettings,
                   normals: str):
  """render_flat(rays [R], key) at this step's inv_std and cosine-anneal ratio."""
  field_fn, sdf_fn = field_fns(params, settings)
  s = sdf_field.inv_std(params["variance"])
  ratio = schedules.cos_anneal_ratio(step, settings.cos_anneal_end)
  return lambda rays, key: neus.render_rays(field_fn, sdf_fn, rays, grid, vol, s, ratio, key,
                                            normals=normals)


def render_views(params, grid, cameras, key, step, settings: Settings, jitter=None):
  """Cameras [B] -> (images {name: [B,H,W,C]}, packed samples {name: [B,K,...]});
  jitter: optional [2, 3] ray offsets (the reference view's, substeps.ref_ray_jitter)."""
  render_flat = _flat_renderer(params, grid, step, settings, settings.volume, settings.normals)
  return substeps.render_views(render_flat, cameras, key, PER_RAY, jitter)


def _update_occupancy(params, grid, step, root_key, settings: Settings):
  """The grid's EMA of the simplified alpha every settings.occupancy.every steps (§10)."""
  _, sdf_fn = field_fns(params, settings)
  s = jax.lax.stop_gradient(sdf_field.inv_std(params["variance"]))
  alpha_fn = lambda x: neus.occupancy_alpha(sdf_fn(x), settings.volume.step_size, s)
  return occupancy.periodic_update(grid, alpha_fn, step,
                                   rng.key_for(root_key, f"{NAME}/occupancy", step),
                                   settings.occupancy, settings.field.radius)


def train_step(state: common.TrainState, batch, prior_params, root_key, *,
               settings: Settings, parts: tuple):
  """One optimisation step over the substeps in `parts` ("ref", "guidance")."""
  step = state.step
  grid = _update_occupancy(state.params, state.buffers["occupancy"], step, root_key, settings)

  def loss_fn(params):
    render = lambda cameras, key, jitter: render_views(params, grid, cameras, key, step,
                                                       settings, jitter)
    terms, metrics = substeps.sum_over(parts, lambda substep: substeps.run_substep(
        render, substep, batch, prior_params, root_key, step, settings, NAME))
    return common.weighted_total(terms, settings.weights, step), (terms, metrics)

  (total, (terms, metrics)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
  new_state = common.apply_gradients(state, grads, settings.tx, {"occupancy": grid})
  metrics = {**{f"loss/{k}": v for k, v in terms.items()}, **metrics, "loss": total,
             "occupied_frac": jnp.mean(grid.binary),
             "inv_std": sdf_field.inv_std(state.params["variance"]),
             "cos_anneal_ratio": schedules.cos_anneal_ratio(step, settings.cos_anneal_end)}
  return new_state, metrics


def render_image(params, grid, camera, step, *, settings: Settings, chunk: int) -> dict:
  """One camera, full image, no gradient, ray chunks of `chunk` -> {name: [H, W, C]} plus
  "kept_frac" (substeps.render_image)."""
  vol = dataclasses.replace(settings.volume, stratified=False)
  render_flat = _flat_renderer(params, grid, step, settings, vol, "normal")
  return substeps.render_image(render_flat, camera, chunk, PER_RAY)


def extract_mesh(state: common.TrainState, settings: Settings, resolution: int):
  """The SDF's zero level set by marching cubes over the box -> (vertices [V, 3], faces
  [F, 3]) numpy, training frame, outward winding (SDF < 0 inside)."""
  _, sdf_fn = field_fns(state.params, settings)
  return isosurface.extract(jax.jit(sdf_fn), settings.field.radius, resolution, 0.0,
                            inside="below")


def albedo_fn(state: common.TrainState, settings: Settings):
  """[K, 3] world points -> [K, 3] colour in [0, 1] (the field has no shading)."""
  field_fn, _ = field_fns(state.params, settings)
  return jax.jit(lambda x: field_fn(x)[1])


def compile_steps(settings: Settings, pattern: str) -> dict:
  """{parts: jitted train_step} for the substep pattern ("alternate" or "accumulate")."""
  return common.compile_steps(train_step, settings, pattern, NAME)


parts_at = common.parts_at
