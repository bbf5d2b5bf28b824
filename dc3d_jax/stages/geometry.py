"""Stage 2, geometry: a DMTet surface rasterized at 1024² with the texture field, refined by the
reference-view losses and hybrid score distillation (reference §1 "2 Geometry (DMTet)", §3
geometry column, §9, §10 "DMTet (2)").

State: params {sdf [V], deformation [V, 3], hash_table, feature_mlp} (fields/dmtet.py), one
Adam learning rate each; buffers {"bbox": [2, 3]}, the isosurface box fixed by the warm start.
The tet grid is a constant: built once, placed on the device and passed to every step as
batch["constants"] (stages/runner.py), never closed over.

Warm start (`convert_from`): marching tets of the NeuS SDF over the scene box, floaters below
1% removed, the tight box + 10% per side becomes bbox, the SDF is sampled at the grid vertices
there, the deformation is 0; hash table and colour MLP are the NeuS field's, bit for bit.

A step (reference "accumulate": both substeps every step) extracts the mesh once and
  ref        renders the reference view: rgb and mask (and depth_rel) losses;
  guidance   renders B random views: Zero123 (sds_3d) always reads RGB, the 2D prior (sds_2d)
             reads RGB on steps with step % n_rgb == 0 and the normal map comp_normal on the
             others ("RGB steps", n_rgb = 4).
On the other steps the reference's ref substep computes no image loss, so its render is skipped
here. The mesh terms (normal_consistency, laplacian) are added once per substep, as the
reference computes them in each: twice per step under "accumulate".
The render type is part of the compiled variant: parts = (substeps..., "rgb" | "normal").
Logged names: the 2D prior's loss and metrics on normal steps are `sds_2d_normal` (weight:
loss.sds_2d), so a metrics row tells the two inputs apart.
"""

import dataclasses
import functools
from typing import Any, Mapping

import jax
import jax.numpy as jnp

from dc3d_jax import cameras as cams
from dc3d_jax.core import chunking
from dc3d_jax.errors import ConfigError, ResumeError
from dc3d_jax.fields import dmtet
from dc3d_jax.fields import texture as texture_field
from dc3d_jax.geometry import dmtet_init, hash_grid, isosurface, mesh_ops
from dc3d_jax.geometry import marching_tets as mt
from dc3d_jax.geometry import rasterize as raster_lib
from dc3d_jax.geometry import tets as tets_lib
from dc3d_jax.render import mesh as mesh_render
from dc3d_jax.stages import coarse_nerf as cn
from dc3d_jax.stages import coarse_neus as neus
from dc3d_jax.stages import common, substeps

NAME = "geometry"
LOSS_TERMS = ("rgb", "mask", "depth_rel", "sds_2d", "sds_3d", "normal_consistency",
              "laplacian")
PARAM_GROUPS = ("sdf", "deformation", "hash_table", "feature_mlp")
CARRIED = ("hash_table", "feature_mlp")        # copied from the NeuS field
MESH_TERMS = ("normal_consistency", "laplacian")
RGB, NORMAL = "rgb", "normal"
PER_PIXEL = ("rgb", "opacity", "depth", "comp_normal")
BUDGET_KEYS = f"{NAME}.tets.max_vertices / {NAME}.tets.max_faces"
TRUNCATION_HINT = (f"raise {BUDGET_KEYS} (mesh) or {NAME}.render.max_pairs (rasterizer); "
                   "metrics.jsonl's mesh_overflow and raster_overflow/<substep> say which")


@dataclasses.dataclass(frozen=True)
class Settings:
  """Everything static a step needs, built once from the config."""
  grid: hash_grid.HashGridSpec
  texture: texture_field.TextureSettings
  tet_resolution: int
  budget: dmtet.MeshBudget
  render: mesh_render.MeshRenderSettings
  views: cams.ViewSettings
  weights: Mapping[str, Any]
  guidance: Mapping[str, Any]          # {slot: SDSGuidance} fed RGB renders
  normal_guidance: Mapping[str, Any]   # {"sds_2d": the 2D slot's term fed normal maps}
  batch_size: int
  tx: Any
  n_rgb: int = 4
  bbox_margin: float = 0.1
  data_sharding: Any = None

  @property
  def active(self) -> frozenset:
    return common.active_terms(self.weights)


def _for_normal_maps(term):
  """The 2D slot's term on normal maps: the same prior (a learned prior reads them as images,
  as IF does in the reference), or the oracle's normal-map variant."""
  to_normals = getattr(term.prior, "for_normal_maps", None)
  return term if to_normals is None else dataclasses.replace(term, prior=to_normals())


def settings_from_config(cfg, guidance: Mapping, batch_size: int, data_sharding=None):
  """cfg: the whole run config. The hash grid and box radius are coarse_nerf's and the colour
  MLP's width coarse_neus's (field.hidden): the warm start carries them."""
  s = cfg[NAME]
  r, t = s.render, s.tets
  render = mesh_render.MeshRenderSettings(
      backend=raster_lib.resolve_backend(r.rasterizer), max_pairs=r.max_pairs,
      field_chunk=r.field_chunk, remat=r.remat)
  return Settings(
      grid=hash_grid.HashGridSpec.from_config(cfg[cn.NAME].field.grid),
      texture=texture_field.TextureSettings(radius=cfg[cn.NAME].field.radius,
                                    hidden=cfg[neus.NAME].field.hidden),
      tet_resolution=t.resolution, budget=dmtet.MeshBudget(t.max_vertices, t.max_faces),
      render=render, views=cams.ViewSettings.from_config(cfg.data, s.views.progressive_until),
      weights=common.check_loss_weights(s.loss, LOSS_TERMS, NAME),
      guidance=dict(guidance),
      normal_guidance={k: _for_normal_maps(v) for k, v in guidance.items() if k == "sds_2d"},
      batch_size=batch_size, tx=common.make_optimizer(s.optim, PARAM_GROUPS),
      n_rgb=s.train.n_rgb, bbox_margin=t.bbox_margin, data_sharding=data_sharding)


# ------------------------------------------------------------------------- state and warm start

def tet_grid(settings: Settings) -> tets_lib.TetGrid:
  """The stage's tet grid, on the host (jax.device_put it once; runner constants)."""
  return tets_lib.tet_grid(settings.tet_resolution)


def constants(settings: Settings) -> tets_lib.TetGrid:
  """The untrained device inputs of every step and render (runner module docstring)."""
  return tet_grid(settings)


def init_state(settings: Settings, key, grid: tets_lib.TetGrid | None = None):
  """A state without a warm start: NeuS's initial sphere (radius 0.5) on its fitted box and a
  fresh texture field. The shapes checkpoints are restored into."""
  grid = tet_grid(settings) if grid is None else grid
  sdf, bbox = dmtet.sphere_sdf(grid, neus.SDFSettings().sphere_radius, settings.bbox_margin)
  params = {"sdf": sdf, "deformation": jnp.zeros(grid.vertices.shape, jnp.float32),
            **texture_field.init_params(settings.grid, settings.texture, key)}
  return common.new_state(params, settings.tx, {"bbox": bbox})


def _check_carried(neus_state, settings: Settings) -> None:
  want = jax.eval_shape(lambda: texture_field.init_params(settings.grid, settings.texture,
                                                    jax.random.key(0)))
  for name in CARRIED:
    got = jax.tree_util.tree_map(jnp.shape, neus_state.params[name])
    expected = jax.tree_util.tree_map(lambda a: a.shape, want[name])
    if got != expected:
      raise ConfigError(f"NeuS parameter {name!r} has shapes {got}, the DMTet texture field "
                        f"expects {expected}: coarse_nerf.field.grid and coarse_neus.field."
                        "hidden must match the state's run")


def neus_sdf_fn(neus_state, neus_settings):
  """[n, 3] world points -> [n] NeuS SDF, jitted with the params as an argument."""
  query = jax.jit(lambda p, x: neus.field_fns(p, neus_settings)[1](x))
  return lambda x: query(neus_state.params, x)


def convert_from(neus_state: common.TrainState, neus_settings: neus.Settings,
                 settings: Settings, key, grid: tets_lib.TetGrid | None = None):
  """The warm start from a NeuS TrainState (module docstring; reference §1 "2 Geometry").
  key: unused (nothing is drawn fresh), kept for the runners' common shape; grid: the
  stage's tet grid if already built."""
  del key
  if not (isinstance(neus_state, common.TrainState) and "sdf_mlp" in neus_state.params):
    raise ResumeError("geometry starts from a coarse-NeuS TrainState; got "
                      f"{type(neus_state).__name__}")
  _check_carried(neus_state, settings)
  grid = tet_grid(settings) if grid is None else grid
  init = dmtet_init.init_from_sdf(
      neus_sdf_fn(neus_state, neus_settings), grid, settings.texture.radius,
      max_vertices=settings.budget.max_vertices, max_faces=settings.budget.max_faces,
      margin=settings.bbox_margin, budget_keys=BUDGET_KEYS)
  # Copies: the step donates its state, which must not free the NeuS state's buffers.
  carried = jax.tree_util.tree_map(jnp.copy, {n: neus_state.params[n] for n in CARRIED})
  params = {"sdf": jnp.asarray(init.sdf), "deformation": jnp.asarray(init.deformation),
            **carried}
  return common.new_state(params, settings.tx, {"bbox": jnp.asarray(init.bbox)})


# ------------------------------------------------------------------------------- the step

def render_type(step, n_rgb: int) -> str:
  """"rgb" on the reference's RGB steps (step % n_rgb == 0), else "normal"."""
  return RGB if step % n_rgb == 0 else NORMAL


def parts_at(step: int, pattern: str, settings: Settings) -> tuple:
  """The substeps of `pattern` at this step, then the render type."""
  return common.parts_at(step, pattern) + (render_type(step, settings.n_rgb),)


def surface(params, bbox, grid, settings: Settings):
  """(padded mesh, [Vmax, 3] unit vertex normals) of the current SDF and deformation."""
  mesh = dmtet.isosurface(params, bbox, grid, settings.budget)
  return mesh, mesh_ops.vertex_normals(mesh.vertices, mesh.faces, mesh.face_mask)


def mesh_terms(mesh, normals, active: frozenset) -> dict:
  """The regularizers of the mesh itself (reference §3): vertex-normal consistency over edges
  and the uniform Laplacian."""
  terms = {}
  if not active & set(MESH_TERMS):
    return terms
  edges = mesh_ops.unique_edges(mesh.faces, mesh.face_mask)
  if "normal_consistency" in active:
    terms["normal_consistency"] = mesh_ops.normal_consistency(normals, edges.edges, edges.mask)
  if "laplacian" in active:
    terms["laplacian"] = mesh_ops.laplacian_loss(mesh.vertices, edges.edges, edges.mask,
                                                 mesh.vertex_mask)
  return terms


def render_views(params, mesh, normals, cameras, settings: Settings,
                 render: mesh_render.MeshRenderSettings | None = None) -> dict:
  """Cameras [B] -> {rgb, opacity, comp_normal, depth: [B, H, W, C], raster_overflow [B]}."""
  albedo = dmtet.texture_fn(params, settings.grid, settings.texture)
  return mesh_render.render(mesh.vertices, mesh.faces, normals, cameras, albedo,
                            render or settings.render)


def guidance_inputs(images: dict, kind: str, settings: Settings) -> dict:
  """The substeps.guidance_terms overrides: on normal steps the 2D slot reads comp_normal
  through its normal-map term; every other slot (and every slot on RGB steps) reads rgb."""
  if kind == NORMAL and "sds_2d" in settings.normal_guidance:
    return {"sds_2d": (settings.normal_guidance["sds_2d"], images["comp_normal"])}
  return {}


def _substep(params, mesh, normals, shared, substep, kind, batch, prior_params, root_key,
             step, settings: Settings):
  """One substep's (terms, metrics); `shared` are the mesh terms, counted per substep."""
  if substep == "ref" and kind == NORMAL:
    return dict(shared), {}
  size = batch["ref"]["rgb"].shape[0]
  cameras = substeps.substep_cameras(substep, settings, root_key, step, size, size, NAME)
  images = render_views(params, mesh, normals, cameras, settings)
  metrics = {f"raster_overflow/{substep}": jnp.max(images["raster_overflow"])}
  if substep == "ref":
    return {**shared, **substeps.ref_terms(images, batch["ref"], settings.active,
                                           settings.render.background)}, metrics
  guided, aux = substeps.guidance_terms(settings, images["rgb"], cameras, prior_params,
                                        root_key, step, NAME,
                                        overrides=guidance_inputs(images, kind, settings))
  return {**shared, **guided}, {**metrics, **aux}


def _logged(name: str, kind: str) -> str:
  """sds_2d on a normal step is logged as sds_2d_normal (module docstring)."""
  head, sep, tail = name.partition("/")
  return f"sds_2d_normal{sep}{tail}" if kind == NORMAL and head == "sds_2d" else name


def train_step(state: common.TrainState, batch, prior_params, root_key, *,
               settings: Settings, parts: tuple):
  """One optimisation step: parts = (substeps..., render type)."""
  step, bbox, grid = state.step, state.buffers["bbox"], batch["constants"]
  names, kind = parts[:-1], parts[-1]

  def loss_fn(params):
    mesh, normals = surface(params, bbox, grid, settings)
    shared = mesh_terms(mesh, normals, settings.active)
    terms, metrics = substeps.sum_over(names, lambda substep: _substep(
        params, mesh, normals, shared, substep, kind, batch, prior_params, root_key, step,
        settings))
    metrics.update(mesh_vertices=mesh.num_vertices, mesh_faces=mesh.num_faces,
                   mesh_overflow=mesh.overflow.astype(jnp.int32))
    return common.weighted_total(terms, settings.weights, step), (terms, metrics)

  (total, (terms, metrics)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
  new_state = common.apply_gradients(state, grads, settings.tx, state.buffers)
  metrics = {**{f"loss/{_logged(k, kind)}": v for k, v in terms.items()},
             **{_logged(k, kind): v for k, v in metrics.items()}, "loss": total}
  return new_state, metrics


def compile_steps(settings: Settings, pattern: str) -> dict:
  """{parts: jitted train_step} for the substep pattern, one per render type."""
  return common.compile_steps(train_step, settings, pattern, NAME,
                              variants=((RGB,), (NORMAL,)))


# ------------------------------------------------------------------- images, mesh, albedo

def render_aux(state, constants) -> dict:
  """render_image's `aux`: the box and the tet grid (runner.render_aux)."""
  return {"bbox": state.buffers["bbox"], "tets": constants}


def mesh_kept_frac(mesh) -> jax.Array:
  """1 when the mesh fits its budgets, else the fraction of faces (or vertices) kept."""
  budget = lambda kept, true: jnp.minimum(1.0, kept / jnp.maximum(true, 1))
  return jnp.minimum(budget(mesh.face_mask.shape[0], mesh.num_faces),
                     budget(mesh.vertex_mask.shape[0], mesh.num_vertices))


def render_image(params, aux, camera, step, *, settings: Settings, chunk: int) -> dict:
  """One camera, full image, no gradient -> {name: [H, W, C]} plus "kept_frac": 1 unless the
  mesh overflowed its budget (the fraction of faces kept) or the rasterizer its pair budget
  (max_pairs / (max_pairs + dropped)). chunk: albedo queries per chunk."""
  del step
  mesh, normals = surface(params, aux["bbox"], aux["tets"], settings)
  render = dataclasses.replace(settings.render, field_chunk=chunk, remat=False)
  out = render_views(params, mesh, normals, camera[None], settings, render)
  pairs = settings.render.max_pairs or 1
  raster_kept = pairs / (pairs + out["raster_overflow"][0].astype(jnp.float32))
  return {**{k: out[k][0] for k in PER_PIXEL}, "kept_frac": mesh_kept_frac(mesh) * raster_kept}


def extract_mesh(state, settings: Settings, resolution: int | None = None, *,
                 grid: tets_lib.TetGrid | None = None):
  """(vertices [n, 3] float32, faces [m, 3] int32) numpy: the DMTet mesh itself, in the
  training frame (Z-up, the reference camera at +X), faces wound outward. `resolution` (the
  volume stages' marching-cubes grid, results.final_mesh) does not apply and is ignored.
  ConfigError if the mesh overflowed its budget; isosurface.NoSurfaceError if it is empty."""
  del resolution
  grid = tet_grid(settings) if grid is None else grid
  x = tets_lib.deformed_vertices(grid, state.params["deformation"], state.buffers["bbox"])
  mesh = mt.extract(x, state.params["sdf"], grid, max_vertices=settings.budget.max_vertices,
                    max_faces=settings.budget.max_faces)
  vertices, faces = mt.compact(jax.device_get(mesh), BUDGET_KEYS)
  if len(faces) == 0:
    raise isosurface.NoSurfaceError("the DMTet SDF has no zero crossing on the tet grid")
  return vertices, faces


@functools.partial(jax.jit, static_argnames=("grid", "texture"))
def _albedo(params, points, *, grid, texture):
  return dmtet.texture_fn(params, grid, texture)(points)


def albedo_fn(state, settings: Settings, chunk: int = 2**16):
  """-> fn([K, 3] world points) -> [K, 3] numpy albedo in (0, 1), the texture field at the
  points (evaluated in fixed chunks, one compile)."""
  params = {k: state.params[k] for k in CARRIED}
  query = lambda x: _albedo(params, x, grid=settings.grid, texture=settings.texture)
  return lambda points: chunking.map_on_host(query, points, chunk)
