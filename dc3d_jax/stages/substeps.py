"""What the volume stages' substeps share (coarse NeRF, NeuS; reference §3): which views a
substep renders, rendering them, and the named terms they get.

A "ref" substep renders the reference view and gets rgb / mask / depth_rel; a "guidance"
substep renders B random views and gets the guidance (SDS) terms and sparsity. The orientation,
opacity, normal-smoothness and eikonal regularizers apply to whichever views were rendered.
Terms are unweighted; a term is computed only when its weight is not identically 0.

`settings` is a stage's Settings: any object with views, batch_size, data_sharding, guidance
({slot: SDSGuidance}), active (the terms with a non-zero weight) and volume (VolumeSettings).
"""

from typing import Callable, Mapping

import jax
import jax.numpy as jnp

from dc3d_jax import cameras as cams
from dc3d_jax import losses
from dc3d_jax.core import rng
from dc3d_jax.core.types import Camera, Rays

# render_flat(rays [R], key) -> {per-ray [R, C] and per-sample [K, ...] outputs}
FlatRenderer = Callable[[Rays, jax.Array], dict]


def substep_cameras(substep: str, settings, root_key, step, height: int, width: int,
                    stage: str) -> Camera:
  """[1] reference camera, or [B] random cameras split along the data axis."""
  if substep == "ref":
    return cams.reference_camera(settings.views, height, width)[None]
  cameras = cams.random_cameras(rng.key_for(root_key, f"{stage}/views", step), step,
                                settings.batch_size, settings.views, height, width)
  if settings.data_sharding is not None:
    cameras = jax.lax.with_sharding_constraint(cameras, settings.data_sharding)
  return cameras


def ref_ray_jitter(root_key, resolution: int, settings, stage: str):
  """The reference view's [2, 3] ray offsets at one render resolution (None when off):
  drawn from (stream, resolution), so fixed while the resolution is (reference §2,
  `rays_noise_scale` 2e-3). settings.rays_noise_scale is the scale."""
  scale = getattr(settings, "rays_noise_scale", 0.0)
  if scale <= 0:
    return None
  return cams.reference_ray_jitter(rng.key_for(root_key, f"{stage}/ref_rays", resolution), scale)


def render_views(render_flat: FlatRenderer, cameras: Camera, key, per_ray: tuple, jitter=None):
  """Cameras [B] -> (images {name in per_ray: [B,H,W,C]}, packed samples {name: [B,K,...]}).
  jitter: optional [2, 3] ray offsets for every camera (cameras.camera_rays)."""
  h, w = cameras.height, cameras.width

  def one(camera, k):
    rays = cams.camera_rays(camera, jitter)
    out = render_flat(jax.tree_util.tree_map(lambda a: a.reshape(-1, 3), rays), k)
    images = {n: out.pop(n).reshape(h, w, -1) for n in per_ray if n in out}
    return images, out

  return jax.vmap(one)(cameras, jax.random.split(key, cameras.fovy.shape[0]))


def render_image(render_flat: FlatRenderer, camera: Camera, chunk: int, names: tuple) -> dict:
  """One camera, full image, rays in chunks of `chunk` -> {name: [H, W, C]} plus "kept_frac":
  the smallest fraction of live samples a chunk's budget kept (1: none cut). The key is
  fixed: callers render without stratification."""
  rays = cams.camera_rays(camera)
  flat = jnp.concatenate([rays.origins.reshape(-1, 3), rays.directions.reshape(-1, 3)], -1)
  n = flat.shape[0]
  flat = jnp.pad(flat, ((0, (-n) % chunk), (0, 0)), mode="edge").reshape(-1, chunk, 6)

  def one(block):
    out = render_flat(Rays(origins=block[:, :3], directions=block[:, 3:]), jax.random.key(0))
    return {k: out[k] for k in names + ("kept_frac",)}

  outs = jax.lax.map(one, flat)
  kept_frac = jnp.min(outs.pop("kept_frac"))
  images = {k: v.reshape(-1, v.shape[-1])[:n].reshape(camera.height, camera.width, -1)
            for k, v in outs.items()}
  return {**images, "kept_frac": kept_frac}


def regularizers(images, samples, active: frozenset, substep: str) -> dict:
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
  if "eikonal" in active:
    terms["eikonal"] = losses.eikonal(samples["sdf_grad"], samples["live"])
  return terms


def ref_terms(images, ref: Mapping, active: frozenset, background: float) -> dict:
  terms = {}
  if "rgb" in active:
    terms["rgb"] = losses.rgb(images["rgb"][0], ref["rgb"], ref["mask"], background)
  if "mask" in active:
    terms["mask"] = losses.mask(images["opacity"][0], ref["mask"])
  if "depth_rel" in active and "depth" in ref:
    terms["depth_rel"] = losses.depth_rel(images["depth"][0], ref["depth"], ref["mask"])
  return terms


def guidance_terms(settings, rgb, cameras, prior_params, root_key, step, stage: str):
  """Each active guidance slot's loss on the renders rgb [B,H,W,3] -> (terms, metrics)."""
  terms, metrics = {}, {}
  for name, term in settings.guidance.items():
    if name in settings.active:
      k = rng.key_for(root_key, f"{stage}/{name}", step)
      terms[name], aux = term.loss(prior_params[name], rgb, cameras, step, k)
      metrics.update({f"{name}/{m}": v for m, v in aux.items()})
  return terms, metrics


def substep_terms(substep: str, images, samples, cameras, batch, prior_params, root_key, step,
                  settings, stage: str):
  """All terms of one rendered substep -> (terms, metrics)."""
  terms = regularizers(images, samples, settings.active, substep)
  metrics = {f"kept_frac/{substep}": jnp.min(samples["kept_frac"]),
             f"samples_per_ray/{substep}": jnp.mean(samples["samples_per_ray"])}
  if substep == "ref":
    terms.update(ref_terms(images, batch["ref"], settings.active, settings.volume.background))
    return terms, metrics
  guided, aux = guidance_terms(settings, images["rgb"], cameras, prior_params, root_key, step,
                               stage)
  return {**terms, **guided}, {**metrics, **aux}


def run_substep(render_fn, substep: str, batch, prior_params, root_key, step, settings,
                stage: str):
  """Renders the substep's views with render_fn(cameras, key, jitter) -> (images, samples) at
  the reference batch's resolution (the reference view's rays jittered); returns (terms,
  metrics)."""
  h, w = batch["ref"]["rgb"].shape[:2]
  cameras = substep_cameras(substep, settings, root_key, step, h, w, stage)
  jitter = ref_ray_jitter(root_key, h, settings, stage) if substep == "ref" else None
  images, samples = render_fn(cameras, rng.key_for(root_key, f"{stage}/{substep}/render", step),
                              jitter)
  return substep_terms(substep, images, samples, cameras, batch, prior_params, root_key, step,
                       settings, stage)


def sum_over(parts: tuple, substep_fn) -> tuple:
  """substep_fn(substep) -> (terms, metrics) for each of `parts`; terms of the same name add."""
  terms, metrics = {}, {}
  for substep in parts:
    t, m = substep_fn(substep)
    for name, value in t.items():
      terms[name] = terms.get(name, 0.0) + value
    metrics.update(m)
  return terms, metrics
