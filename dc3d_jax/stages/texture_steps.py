"""The texture stage's compiled steps, one per kind (stages/texture.py `kind_at`).

Each is the pure `train_step(state, batch, prior_params, root_key, *, settings, kind)`, jitted
with the state donated. batch: {"ref": the reference at texture.resolution}. prior_params:
{"bsd": {"base", "codec", "prompts" [6, ...]}} for BSD on SD (the frozen base network's
params, the VAE's, the prompt table of texture.py), {"bsd": {"base", "codec": {},
"conditioning": {"ref"}}} for BSD on the testbed base (priors/testbed_base.py: per-view
conditions from the reference and each camera), or {slot: params} of the SDS terms. Every
random draw uses key_for(root_key, "texture/<stream>", step), so a resumed run equals an
uninterrupted one.
Metrics: "loss" (the weighted total of the step's kind) and "loss/<term>" unweighted.
"""

import functools

import jax
import jax.numpy as jnp

from dc3d_jax import cameras as cams
from dc3d_jax import losses
from dc3d_jax.core import rng
from dc3d_jax.guidance import bsd as bsd_lib
from dc3d_jax.priors import prompts
from dc3d_jax.stages import common, substeps
from dc3d_jax.stages import texture as tx_stage
from dc3d_jax.stages.texture import Settings, TextureState


def _key(root_key, stream: str, step):
  return rng.key_for(root_key, f"{tx_stage.NAME}/{stream}", step)


def random_views(root_key, step, settings: Settings, size: int):
  """[B] random cameras of this step (split along the data axis when sharded)."""
  cameras = cams.random_cameras(_key(root_key, "views", step), step, settings.batch_size,
                                settings.views, size, size)
  if settings.data_sharding is not None:
    cameras = jax.lax.with_sharding_constraint(cameras, settings.data_sharding)
  return cameras


def bsd_prompts(table, cameras, settings: Settings) -> tuple:
  """Prompt rows for cameras [B] -> (c_vd, u, c_vi) with B rows each, and the flattened c2w
  [B, 16] (DS's camera label)."""
  front, back, overhead = settings.prompt_thresholds
  index = prompts.view_direction(cameras.elevation_deg, cameras.azimuth_deg,
                                 front_threshold=front, back_threshold=back,
                                 overhead_threshold=overhead)
  rows = lambda i: jax.tree_util.tree_map(lambda t: t[i], table)
  b = index.shape[0]
  fixed = lambda r: rows(jnp.full((b,), r, jnp.int32))
  return rows(index), fixed(tx_stage.UNCOND), fixed(tx_stage.PLAIN), cameras.c2w.reshape(b, 16)


def bsd_conditions(model, p, cameras, settings: Settings) -> tuple:
  """(c_vd, u, c_vi) with B rows each and the flattened c2w [B, 16] for cameras [B]: the
  base's own per-view conditions when it has `view_conditions` (the testbed base, from
  p["conditioning"]: reference image + relative camera), else the prompt table's rows."""
  view_conditions = getattr(model.base, "view_conditions", None)
  if view_conditions is None:
    return bsd_prompts(p["prompts"], cameras, settings)
  b = cameras.c2w.shape[0]
  return (*view_conditions(p["conditioning"], cameras), cameras.c2w.reshape(b, 16))


def _update(state: TextureState, grads, settings: Settings) -> TextureState:
  """One AdamW step of the colour field (a non-finite step is dropped and counted)."""
  new = common.apply_gradients(state, grads, settings.tx, state.buffers)
  return state.replace(step=new.step, params=new.params, opt_state=new.opt_state,
                       skipped=new.skipped)


def _field_step(state, settings, loss_fn):
  """value_and_grad of loss_fn(params) -> (terms, metrics); returns (state, metrics)."""
  def total(params):
    terms, metrics = loss_fn(params)
    return common.weighted_total(terms, settings.weights, state.step), (terms, metrics)

  (loss, (terms, metrics)), grads = jax.value_and_grad(total, has_aux=True)(state.params)
  metrics = {**{f"loss/{k}": v for k, v in terms.items()}, **metrics, "loss": loss}
  return _update(state, grads, settings), metrics


def ref_step(state, batch, settings: Settings):
  """The reference view's L1 on the eroded mask."""
  ref = batch["ref"]
  camera = cams.reference_camera(settings.views, *ref["rgb"].shape[:2])[None]

  def loss_fn(params):
    out = tx_stage.render_views(params, state.buffers, camera, settings)
    rgb = losses.rgb_l1_eroded(out["rgb"][0], ref["rgb"], ref["mask"],
                               settings.render.background, settings.erode)
    return {"rgb": rgb}, {"raster_overflow/ref": jnp.max(out["raster_overflow"])}
  return _field_step(state, settings, loss_fn)


def sds_step(state, batch, prior_params, root_key, settings: Settings):
  """The configured SDS terms on random views. With no slot active (guidance off: priors
  "none" or weights 0) the step only advances, so the reference steps keep their schedule."""
  step = state.step
  if not settings.active & set(settings.guidance):
    return state.replace(step=step + 1), {"loss": jnp.zeros((), jnp.float32)}
  cameras = random_views(root_key, step, settings, batch["ref"]["rgb"].shape[0])

  def loss_fn(params):
    out = tx_stage.render_views(params, state.buffers, cameras, settings)
    terms, metrics = substeps.guidance_terms(settings, out["rgb"], cameras, prior_params,
                                             root_key, step, tx_stage.NAME)
    return terms, {**metrics, "raster_overflow/guidance": jnp.max(out["raster_overflow"])}
  return _field_step(state, settings, loss_fn)


def bsd_step(state, batch, prior_params, root_key, settings: Settings):
  """BSD on random views: the colour field's step, then φ_est's ε-MSE step on the same
  (detached) latent."""
  step, model, p = state.step, settings.bsd, prior_params["bsd"]
  cameras = random_views(root_key, step, settings, batch["ref"]["rgb"].shape[0])
  cond, uncond, cond_vi, labels = bsd_conditions(model, p, cameras, settings)
  k_enc, k_g, k_est = jax.random.split(_key(root_key, "bsd", step), 3)

  def loss_fn(params):
    out = tx_stage.render_views(params, state.buffers, cameras, settings)
    z = model.base.encode(p["codec"], model.guidance_input(out["rgb"], out["opacity"]), k_enc)
    g, aux = model.bsd_gradient(state.bsd, p["base"], z, cond, uncond, cond_vi, k_g, step,
                                labels)
    metrics = {**{f"bsd/{k}": v for k, v in aux.items()}, "z": jax.lax.stop_gradient(z)}
    return {"bsd": bsd_lib.stop_gradient_target_loss(z, g)}, metrics

  new, metrics = _field_step(state, settings, loss_fn)
  bsd_state, est = model.estimator_update(state.bsd, p["base"], metrics.pop("z"), cond_vi,
                                          k_est, labels)
  return new.replace(bsd=bsd_state), {**metrics, "loss/estimator": est["mse"],
                                      "estimator/grad_norm": est["grad_norm"]}


def dreambooth_step(state, batch, prior_params, root_key, settings: Settings, augment: bool):
  """The DreamBooth phase: an augmentation (if `augment`) from the current render of a random
  view, then φ_DB's ε-MSE step with view 0's prompt. The colour field is not touched."""
  step, model, p = state.step, settings.bsd, prior_params["bsd"]
  cameras = random_views(root_key, step, settings, batch["ref"]["rgb"].shape[0])
  cond, uncond, _, labels = bsd_conditions(model, p, cameras, settings)
  k_enc, k_aug, k_db = jax.random.split(_key(root_key, "dreambooth", step), 3)
  bsd_state = state.bsd
  if augment:
    out = tx_stage.render_views(state.params, state.buffers, cameras, settings)
    z = model.base.encode(p["codec"], out["rgb"], k_enc)
    bsd_state, _ = model.augment(bsd_state, p["base"], p["codec"], z, cond, uncond, k_aug, step,
                                 visibility=out["unseen"])
  first = lambda tree: jax.tree_util.tree_map(lambda a: a[:1], tree)
  bsd_state, db = model.dreambooth_update(bsd_state, p["base"], p["codec"], first(cond), k_db,
                                          labels[:1])
  weight = model.settings.dreambooth_weight
  metrics = {"loss": weight * db["mse"], "loss/dreambooth": db["mse"],
             "dreambooth/grad_norm": db["grad_norm"], "dreambooth/dropped": db["dropped"],
             "augmentations": bsd_state.augmentations}
  return state.replace(step=state.step + 1, bsd=bsd_state), metrics


def train_step(state: TextureState, batch, prior_params, root_key, *, settings: Settings,
               kind: str):
  """One step of `kind` (texture.kinds(settings))."""
  if kind == "ref":
    return ref_step(state, batch, settings)
  if kind == "guidance":
    return sds_step(state, batch, prior_params, root_key, settings)
  if kind == "bsd":
    return bsd_step(state, batch, prior_params, root_key, settings)
  if kind in ("dreambooth", "dreambooth+augment"):
    return dreambooth_step(state, batch, prior_params, root_key, settings,
                           augment=kind.endswith("augment"))
  raise ValueError(f"unknown texture step kind {kind!r}")


def compile_steps(settings: Settings) -> dict:
  """{kind: jitted train_step(state, batch, prior_params, root_key)}, the state donated."""
  return {kind: jax.jit(functools.partial(train_step, settings=settings, kind=kind),
                        donate_argnums=(0,))
          for kind in tx_stage.kinds(settings)}
