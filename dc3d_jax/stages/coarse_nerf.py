"""Stage 1a, coarse NeRF: hash-grid density field, volume rendering, reference-view losses
and score distillation (reference §1a, §3).

Substeps (reference "alternate"): on even steps the reference view is rendered and gets the
rgb / mask / depth_rel losses; on odd steps B random views get the guidance (SDS) losses and
sparsity. The orientation, opacity and normal-smoothness regularizers apply to whichever
views were rendered. `parts` names the substeps one compiled step runs.
"""

import dataclasses
import functools
from typing import Any, Mapping

import jax
import jax.numpy as jnp

from dc3d_jax import cameras as cams
from dc3d_jax import losses
from dc3d_jax.core import rng, schedules
from dc3d_jax.core.chunking import map_in_chunks
from dc3d_jax.core.types import Rays
from dc3d_jax.fields.density import DensityField, DensitySettings
from dc3d_jax.geometry import hash_grid
from dc3d_jax.render import occupancy, volume
from dc3d_jax.stages import common

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
class OccupancySettings:
  resolution: int = 32
  threshold: float = 0.01
  decay: float = 0.95
  every: int = 16


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
  h, w = cameras.height, cameras.width

  def one(camera, k):
    rays = cams.camera_rays(camera, jitter)
    flat = jax.tree_util.tree_map(lambda a: a.reshape(-1, 3), rays)
    out = volume.render_rays(field_fn, density_fn, flat, grid, settings.volume, k,
                             normals=normals)
    images = {n: out.pop(n).reshape(h, w, -1) for n in PER_RAY if n in out}
    return images, out

  keys = jax.random.split(key, cameras.fovy.shape[0])
  return jax.vmap(one)(cameras, keys)


def _regularizers(images, samples, active: frozenset, substep: str) -> dict:
  terms = {}
  if "orient" in active:
    terms["orient"] = jnp.mean(jax.vmap(losses.orientation)(
        samples["weights"], samples["normal"], samples["dirs"], samples["live"],
        images["opacity"]))
  if "normal_smooth_2d" in active:
    terms["normal_smooth_2d"] = losses.normal_smooth_2d(images["comp_normal"])
  if "normal_smooth_3d" in active:
    terms["normal_smooth_3d"] = losses.normal_smooth_3d(
        samples["normal"], samples["normal_perturb"], samples["live"])
  if "opaque" in active:
    terms["opaque"] = losses.opaque(images["opacity"])
  if "sparsity" in active and substep == "guidance":
    terms["sparsity"] = losses.sparsity(images["opacity"])
  return terms


def _ref_terms(images, ref: Mapping, active: frozenset, background: float) -> dict:
  terms = {}
  if "rgb" in active:
    terms["rgb"] = losses.rgb(images["rgb"][0], ref["rgb"], ref["mask"], background)
  if "mask" in active:
    terms["mask"] = losses.mask(images["opacity"][0], ref["mask"])
  if "depth_rel" in active and "depth" in ref:
    terms["depth_rel"] = losses.depth_rel(images["depth"][0], ref["depth"], ref["mask"])
  return terms


def ref_ray_jitter(root_key, resolution: int, settings: Settings):
  """The reference view's [2, 3] ray offsets at one render resolution (None when off):
  drawn from (stream, resolution), so fixed while the resolution is (reference §2)."""
  if settings.rays_noise_scale <= 0:
    return None
  key = rng.key_for(root_key, f"{NAME}/ref_rays", resolution)
  return cams.reference_ray_jitter(key, settings.rays_noise_scale)


def _substep(params, grid, substep: str, batch, prior_params, root_key, step,
             settings: Settings, mask):
  """Renders the substep's views; returns (terms, metrics)."""
  h, w = batch["ref"]["rgb"].shape[:2]
  key = rng.key_for(root_key, f"{NAME}/{substep}/render", step)
  jitter = None
  if substep == "ref":
    cameras = cams.reference_camera(settings.views, h, w)[None]
    jitter = ref_ray_jitter(root_key, h, settings)
  else:
    cameras = cams.random_cameras(rng.key_for(root_key, f"{NAME}/views", step), step,
                                  settings.batch_size, settings.views, h, w)
    if settings.data_sharding is not None:
      cameras = jax.lax.with_sharding_constraint(cameras, settings.data_sharding)
  images, samples = render_views(params, grid, cameras, key, settings, mask, settings.normals,
                                 jitter)
  terms = _regularizers(images, samples, settings.active, substep)
  metrics = {f"kept_frac/{substep}": jnp.min(samples["kept_frac"]),
             f"samples_per_ray/{substep}": jnp.mean(samples["samples_per_ray"])}
  if substep == "ref":
    terms.update(_ref_terms(images, batch["ref"], settings.active, settings.volume.background))
    return terms, metrics
  for name, term in settings.guidance.items():
    if name in settings.active:
      k = rng.key_for(root_key, f"{NAME}/{name}", step)
      terms[name], aux = term.loss(prior_params[name], images["rgb"], cameras, step, k)
      metrics.update({f"{name}/{m}": v for m, v in aux.items()})
  return terms, metrics


def _update_occupancy(params, grid, step, root_key, settings: Settings, mask):
  occ = settings.occupancy
  _, density_fn = field_fns(params, settings, mask)
  def update(g):
    return occupancy.update_grid(
        g, density_fn, rng.key_for(root_key, f"{NAME}/occupancy", step),
        radius=settings.field.radius, step_size=settings.volume.step_size,
        threshold=occ.threshold, decay=occ.decay)
  return jax.lax.cond(step % occ.every == 0, update, lambda g: g, grid)


def train_step(state: common.TrainState, batch, prior_params, root_key, *,
               settings: Settings, parts: tuple):
  """One optimisation step over the substeps in `parts` ("ref", "guidance")."""
  step = state.step
  mask = level_mask(settings, step)
  grid = _update_occupancy(state.params, state.buffers["occupancy"], step, root_key,
                           settings, mask)

  def loss_fn(params):
    terms, metrics = {}, {}
    for substep in parts:
      t, m = _substep(params, grid, substep, batch, prior_params, root_key, step, settings,
                      mask)
      for name, value in t.items():
        terms[name] = terms.get(name, 0.0) + value
      metrics.update(m)
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
  rays = cams.camera_rays(camera)
  flat = jnp.concatenate([rays.origins.reshape(-1, 3), rays.directions.reshape(-1, 3)], -1)
  n = flat.shape[0]
  flat = jnp.pad(flat, ((0, (-n) % chunk), (0, 0)), mode="edge").reshape(-1, chunk, 6)

  def one(block):
    r = Rays(origins=block[:, :3], directions=block[:, 3:])
    out = volume.render_rays(field_fn, density_fn, r, grid, vol, jax.random.key(0),
                             normals="normal")
    return {k: out[k] for k in PER_RAY + ("kept_frac",)}

  outs = jax.lax.map(one, flat)
  kept_frac = jnp.min(outs.pop("kept_frac"))
  images = {k: v.reshape(-1, v.shape[-1])[:n].reshape(camera.height, camera.width, -1)
            for k, v in outs.items()}
  return {**images, "kept_frac": kept_frac}


def compile_steps(settings: Settings, substeps: str) -> dict:
  """{parts: jitted train_step} for the substep pattern ("alternate" or "accumulate")."""
  patterns = {"alternate": (("ref",), ("guidance",)), "accumulate": (("ref", "guidance"),)}
  if substeps not in patterns:
    raise ValueError(f"config {NAME}.train.substeps={substeps!r}; expected one of "
                     f"{sorted(patterns)}")
  return {parts: jax.jit(functools.partial(train_step, settings=settings, parts=parts),
                         donate_argnums=(0,))
          for parts in patterns[substeps]}


def parts_at(step: int, substeps: str) -> tuple:
  """Reference "alternate": even steps the reference view, odd steps the guidance."""
  if substeps == "accumulate":
    return ("ref", "guidance")
  return ("ref",) if step % 2 == 0 else ("guidance",)
