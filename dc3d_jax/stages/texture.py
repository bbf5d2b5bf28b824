"""Stage 3, texture: a colour field on the fixed mesh of the previous stage, refined by
bootstrapped score distillation (BSD) or plain SDS (reference §1 "3 Texture", §3, §4, §10).

State (TextureState, one pytree, checkpointed whole): params {hash_table, feature_mlp} (the
colour field, fields/texture.py) and their AdamW state; buffers {vertices [V, 3], faces [F, 3],
normals [V, 3], seen [F]} (the fixed mesh, training frame; `seen` = the face owns a pixel of the
reference view); bsd: guidance.bsd.BSDState (both trained UNets' params and AdamW states, the
augmentation cache) when texture.guidance.kind = "bsd", else ().

Rendering (render/textured_mesh.py): rasterize -> interpolate points and normals -> colour
field -> antialias, at texture.resolution, white background.

What a step does (`kind_at`, from the step alone):
  "bsd" kind (BSD cycle, guidance.bsd.what_happens; reference §4):
    dreambooth[+augment]  the first `dreambooth_steps` of each cycle: render a random view (no
                          gradient), on augment steps make an augmentation (frozen base first,
                          φ_DB after: the bootstrapping) into the FIFO cache, then one ε-MSE
                          AdamW step of φ_DB. The colour field is not touched (in the reference
                          its grads are None, so torch's AdamW skips it: no weight decay).
    ref                   even steps after the phase: reference-view L1 on the mask eroded by
                          4 px, one AdamW step of the colour field.
    bsd                   odd steps: random views; g = (1-ᾱ_t)(CFG_2(ε_DB) - ε_est) on the
                          render's latent (stop-gradient-target loss, weight texture.loss.bsd),
                          one AdamW step of the colour field, then one ε-MSE step of φ_est on
                          the detached latent.
  "sds" kind: ref on steps % ref_every == 0, else "guidance": the configured SDS terms
    (guidance.prior_2d / prior_3d, e.g. the oracle) on random views.
Prompts of the BSD path (table rows, priors/prompts.py): the four direction prompts
("<p>, side view", ...; thresholds texture.prior.*_threshold_deg, 30/30/60 as the reference's
SD prompt processor), the negative prompt (unconditional) and the plain prompt (the estimator's
view-independent text). With texture.prior.base = "testbed" there is no table: the base gives
each view's conditions itself (priors/testbed_base.py: reference image + relative camera).
"""

import dataclasses
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import struct

from dc3d_jax import cameras as cams
from dc3d_jax.errors import ConfigError
from dc3d_jax.fields import texture as texture_field
from dc3d_jax.geometry import hash_grid, mesh_ops
from dc3d_jax.guidance import bsd as bsd_lib
from dc3d_jax.priors import prompts
from dc3d_jax.render import textured_mesh
from dc3d_jax.stages import common

NAME = "texture"
LOSS_TERMS = ("rgb", "bsd", "estimator", "dreambooth", "sds_2d", "sds_3d")
PARAM_GROUPS = ("hash_table", "feature_mlp")
CARRIED = PARAM_GROUPS               # copied from the predecessor when the shapes fit
GUIDANCE_KINDS = ("bsd", "sds")
BSD_BASES = ("sd", "testbed")        # texture.prior.base (texture_run.build_bsd)
UNCOND = prompts.UNCOND              # row of the negative prompt in the BSD prompt table
PLAIN = prompts.UNCOND + 1           # row of the plain (view-independent) prompt
TRUNCATION_HINT = "the texture stage renders a mesh: nothing is truncated"


@dataclasses.dataclass(frozen=True)
class Settings:
  """Everything static a step needs, built once from the config (texture_run.py)."""
  grid: hash_grid.HashGridSpec
  field: texture_field.TextureSettings
  render: textured_mesh.RenderSettings
  views: cams.ViewSettings
  weights: Mapping[str, Any]
  kind: str                          # "bsd" | "sds"
  guidance: Mapping[str, Any]        # {"sds_2d"|"sds_3d": SDSGuidance} (kind "sds")
  bsd: Any                           # guidance.bsd.BSD (kind "bsd"), else None
  batch_size: int
  tx: Any
  ref_every: int = 2
  erode: int = 4                     # pixels the reference mask is eroded by (§3)
  prompt_thresholds: tuple = (30.0, 30.0, 60.0)   # front, back, overhead (degrees)
  min_component_fraction: float = 0.01
  data_sharding: Any = None

  @property
  def active(self) -> frozenset:
    return common.active_terms(self.weights)


@struct.dataclass(kw_only=True)
class TextureState(common.TrainState):
  """common.TrainState plus the BSD state (() when the guidance is plain SDS)."""
  bsd: Any = ()


def make_optimizer(optim_cfg, param_groups: tuple = PARAM_GROUPS):
  """AdamW with one learning rate per group and the reference's weight decay, which also
  shrinks the hash grid (§10: ≈0.67× over 5000 steps)."""
  lrs = dict(optim_cfg.lr)
  if set(lrs) != set(param_groups):
    raise ConfigError(f"config texture.optim.lr: groups {sorted(lrs)}; expected exactly "
                      f"{sorted(param_groups)}")
  adamw = lambda lr: optax.adamw(lr, b1=optim_cfg.b1, b2=optim_cfg.b2, eps=optim_cfg.eps,
                                 weight_decay=optim_cfg.weight_decay)
  return optax.multi_transform({n: adamw(lr) for n, lr in lrs.items()},
                               {n: n for n in param_groups})


# ------------------------------------------------------------------------------ the mesh

def prepare_mesh(vertices, faces, settings: Settings, reference_size: int) -> dict:
  """Host: the fixed mesh as the state's buffers. Components with fewer faces than
  min_component_fraction of the largest are removed (the reference's texture stage: 1%);
  vertex normals; `seen` from the reference view at reference_size²."""
  vertices, faces = np.asarray(vertices, np.float32), np.asarray(faces, np.int64)
  if settings.min_component_fraction > 0:
    vertices, faces = mesh_ops.remove_small_components(vertices, faces,
                                                       settings.min_component_fraction)
  if faces.shape[0] == 0:
    raise ConfigError("the texture stage got an empty mesh from its predecessor; train the "
                      "geometry longer or check its config")
  camera = cams.reference_camera(settings.views, reference_size, reference_size)
  seen = textured_mesh.seen_faces(vertices, faces, camera, settings.render)
  normals = mesh_ops.vertex_normals(jnp.asarray(vertices), jnp.asarray(faces, jnp.int32))
  return {"vertices": jnp.asarray(vertices), "faces": jnp.asarray(faces, jnp.int32),
          "normals": jnp.asarray(normals, jnp.float32), "seen": jnp.asarray(seen)}


def augmentation_hw(bsd_model, codec_params) -> tuple:
  """(H, W) of the base's decoded images (the augmentation cache's; 512² for SD 2.1-base)."""
  def shape():
    x = bsd_model.base.encode(codec_params, jnp.zeros((1, 8, 8, 3)), jax.random.key(0))
    return bsd_model.base.decode(codec_params, x)
  return tuple(jax.eval_shape(shape).shape[1:3])


def init_state(settings: Settings, key, mesh: dict, prior_params=None) -> TextureState:
  """A fresh colour field on `mesh` (prepare_mesh); with BSD, fresh trained copies of the
  base in prior_params["bsd"] ({"base", "codec", "prompts"})."""
  k_field, k_bsd = jax.random.split(key)
  params = texture_field.init_params(settings.grid, settings.field, k_field)
  bsd_state = ()
  if settings.kind == "bsd":
    p = prior_params["bsd"]
    bsd_state = settings.bsd.init_state(p["base"], k_bsd, augmentation_hw(settings.bsd,
                                                                          p["codec"]))
  # Copies: the step donates its state, which must not free the caller's mesh.
  state = common.new_state(params, settings.tx, jax.tree_util.tree_map(jnp.copy, dict(mesh)))
  return TextureState(step=state.step, params=state.params, opt_state=state.opt_state,
                      buffers=state.buffers, skipped=state.skipped, bsd=bsd_state)


def carried_params(previous_params: Mapping, fresh: Mapping) -> dict:
  """The predecessor's hash_table and feature_mlp where their shapes equal the fresh ones'
  (copies: the texture step donates its state); {} when any does not fit."""
  shape = lambda tree: jax.tree_util.tree_map(jnp.shape, tree)
  if not all(name in previous_params and shape(previous_params[name]) == shape(fresh[name])
             for name in CARRIED):
    return {}
  return jax.tree_util.tree_map(jnp.copy, {n: previous_params[n] for n in CARRIED})


def convert_from(previous_state, settings: Settings, key, mesh: dict,
                 prior_params=None) -> TextureState:
  """The warm start: init_state, with the predecessor's colour field carried over when its
  parameters fit (else the field stays fresh, and a note says so)."""
  state = init_state(settings, key, mesh, prior_params)
  carried = carried_params(getattr(previous_state, "params", {}), state.params)
  if not carried:
    print(f"note: [{NAME}] the previous stage's colour field does not fit texture.field (or "
          "has none); the texture starts fresh")
    return state
  params = {**state.params, **carried}
  return state.replace(params=params, opt_state=settings.tx.init(params))


# ------------------------------------------------------------------------------ rendering

def render_views(params, buffers, cameras, settings: Settings) -> dict:
  """Cameras [B] -> textured_mesh.render's images [B, H, W, C]."""
  color = texture_field.color_fn(params, settings.grid, settings.field)
  return textured_mesh.render(buffers, cameras, color, settings.render)


def render_image(params, buffers, camera, step=None, *, settings: Settings, chunk: int = 0):
  """One camera, no gradient -> {"rgb", "opacity", "depth", "comp_normal"} [H, W, C] and
  "kept_frac" 1 (runner.samples_fn and the evaluation read it; a mesh render drops nothing)."""
  out = render_views(params, buffers, jax.tree_util.tree_map(lambda a: a[None], camera),
                     settings)
  images = {k: out[k][0] for k in ("rgb", "opacity", "depth", "comp_normal")}
  return {**images, "kept_frac": jnp.float32(1.0)}


def extract_mesh(state: TextureState, settings: Settings, resolution: int | None = None):
  """The fixed mesh (vertices [V, 3], faces [F, 3]) numpy, training frame; `resolution` (the
  volume stages' marching-cubes grid) does not apply."""
  return (np.asarray(state.buffers["vertices"], np.float32),
          np.asarray(state.buffers["faces"], np.int64))


def albedo_fn(state: TextureState, settings: Settings):
  """[K, 3] world points -> [K, 3] colour in [0, 1] (the colour field; no shading)."""
  return jax.jit(texture_field.color_fn(state.params, settings.grid, settings.field))


# ------------------------------------------------------------------------------ schedule

def kind_at(step: int, settings: Settings) -> str:
  """What step `step` runs: "dreambooth", "dreambooth+augment", "ref", "bsd" (BSD cycle) or
  "ref", "guidance" (SDS)."""
  if settings.kind == "sds":
    return "ref" if step % settings.ref_every == 0 else "guidance"
  w = bsd_lib.what_happens(step, settings.bsd.settings)
  if w["dreambooth"]:
    return "dreambooth+augment" if w["augment"] else "dreambooth"
  return "ref" if w["ref"] else "bsd"


def kinds(settings: Settings) -> tuple:
  if settings.kind == "sds":
    return ("ref", "guidance")
  return ("dreambooth", "dreambooth+augment", "ref", "bsd")


# ------------------------------------------------------------------------------ config

def settings_from_config(cfg, guidance: Mapping, batch_size: int, data_sharding=None,
                         bsd_model=None) -> Settings:
  """cfg: the whole run config. The hash grid and box radius are coarse_nerf's (one field box
  for every stage, so the colour field carries over); texture.field.hidden is the colour MLP's
  width. bsd_model: the guidance.bsd.BSD of texture.guidance.kind = "bsd" (texture_run.py)."""
  s, nerf = cfg[NAME], cfg["coarse_nerf"]
  kind = s.guidance.kind
  if kind not in GUIDANCE_KINDS:
    raise ConfigError(f"config texture.guidance.kind={kind!r}; expected one of {GUIDANCE_KINDS}")
  p = s.prior
  return Settings(
      grid=hash_grid.HashGridSpec.from_config(nerf.field.grid),
      field=texture_field.TextureSettings(radius=nerf.field.radius, hidden=s.field.hidden),
      render=textured_mesh.RenderSettings(backend=s.render.rasterizer,
                                          max_pairs=s.render.max_pairs or None,
                                          field_chunk=s.render.field_chunk),
      views=cams.ViewSettings.from_config(cfg.data, 0),
      weights=common.check_loss_weights(s.loss, LOSS_TERMS, NAME),
      kind=kind, guidance=dict(guidance) if kind == "sds" else {}, bsd=bsd_model,
      batch_size=batch_size, tx=make_optimizer(s.optim),
      ref_every=s.bsd.ref_every, erode=s.erode_pixels,
      prompt_thresholds=(p.front_threshold_deg, p.back_threshold_deg,
                         p.overhead_threshold_deg),
      min_component_fraction=s.min_component_fraction, data_sharding=data_sharding)
