"""The texture stage (stages/texture.py, texture_steps.py) on a small fixed mesh.

The BSD base is a pixel-space denoiser whose ε is a constant field set by the prompt row
(ε = c·s, s its one parameter vector), so the sign of the BSD gradient is known in closed form:
with direction rows +1, the unconditional row 0 and the plain row p, g = (1 - ᾱ_t)(2·1 - p):
p = -1 makes g > 0 (the texture must darken), p = 3 makes g < 0 (it must brighten).
Checks: the reference step's update is AdamW's first step on the loss's gradient, which a finite
difference of the loss confirms; the cycle runs what guidance/bsd.what_happens says at each
step and each trained part changes only in its own steps; a BSD step moves the texture along
-g; resume equals an uninterrupted run (the trained copies and the cache included); the warm
start carries the previous stage's colour field; the export round trip (GLB reloaded with
trimesh, re-rendered with the project's rasterizer, PSNR >= 30 dB; glTF up +Y, front +Z).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import trimesh

from conftest import tiny_config
from dc3d_jax import cameras as cams
from dc3d_jax import losses, results
from dc3d_jax.eval import metrics
from dc3d_jax.export import mesh_files
from dc3d_jax.geometry import isosurface, rasterize, sdf_shapes
from dc3d_jax.guidance import bsd as bsd_lib
from dc3d_jax.priors.denoiser_base import PixelDenoiser
from dc3d_jax.stages import coarse_neus, loop, runner, texture_run, texture_steps
from dc3d_jax.stages import texture as tx

RES, PIXELS = 32, 8          # render size; the pixel base's size


class Static(tuple):
  """A hashable, leafless pytree holding the settings (static under jit)."""

  def __new__(cls, value):
    return super().__new__(cls, (value,))


jax.tree_util.register_pytree_node(Static, lambda s: ((), s[0]), lambda aux, _: Static(aux))


def constant_eps(p, x, t, cond):
  """ε = cond[:, :3]·s everywhere (ignores x and t)."""
  return jnp.broadcast_to((cond[:, :3] * p["s"])[:, None, None, :], x.shape) + 0.0 * x


def prompt_table(plain: float) -> jnp.ndarray:
  """Rows: 4 directions (+1), unconditional (0), plain (`plain`)."""
  return jnp.asarray([[1.0] * 3] * 4 + [[0.0] * 3, [plain] * 3], jnp.float32)


def shape_sdf(x):
  """A sphere with a bump toward +X (the front, seen from the reference view) and taller
  than wide along Z (up)."""
  body = sdf_shapes.box(x, half_sizes=(0.35, 0.35, 0.6)) - 0.05
  return sdf_shapes.union(body, sdf_shapes.sphere(x, center=(0.45, 0.0, 0.2), radius=0.2))


@pytest.fixture(scope="module")
def stage(tmp_path_factory):
  """Settings (BSD on the pixel base, a 6-step cycle), compiled steps, params, mesh."""
  cfg = tiny_config(tmp_path_factory.mktemp("tex"))
  with cfg.unlocked():
    cfg.texture.resolution = RES
    cfg.texture.bsd.update(cycle_steps=6, dreambooth_steps=2, augment_every=2, sampler_steps=4)
    cfg.texture.prior.lr_full = 1e-3
  model = texture_run.make_bsd(PixelDenoiser(apply_fn=constant_eps, size=PIXELS), cfg.texture)
  settings = tx.settings_from_config(cfg, {}, 1, None, model)
  v, f = isosurface.extract(jax.jit(shape_sdf), 2.0, 24, 0.0, inside="below")
  mesh = tx.prepare_mesh(v, f, settings, RES)
  params = {"bsd": {"base": {"s": jnp.ones((3,), jnp.float32)}, "codec": {},
                    "prompts": prompt_table(-1.0)}}
  ref = {"rgb": jnp.full((RES, RES, 3), 0.1), "mask": jnp.zeros((RES, RES, 1)).at[6:26, 8:24]
         .set(1.0)}
  return dict(cfg=cfg, settings=settings, steps=texture_steps.compile_steps(settings),
              params=params, mesh=mesh, batch={"ref": ref})


def fresh(stage, seed=0):
  """A fresh state, committed to the device as a run's (ctx.parallel.replicate) and as every
  step's output, so each kind compiles once."""
  state = tx.init_state(stage["settings"], jax.random.key(seed), stage["mesh"], stage["params"])
  return jax.device_put(state, jax.devices()[0])


def run_step(stage, state, step_kind, params=None):
  fn = stage["steps"][step_kind]
  return fn(state, stage["batch"], params or stage["params"], jax.random.key(7))


@jax.jit
def _ref_loss(params, mesh, ref, settings_box):
  s = settings_box[0]
  out = tx.render_views(params, mesh, cams.reference_camera(s.views, RES, RES)[None], s)
  return 1000.0 * losses.rgb_l1_eroded(out["rgb"][0], ref["rgb"], ref["mask"])


def ref_loss(stage, params):
  """1000 × the eroded-mask L1 of the reference view, written out here."""
  return _ref_loss(params, stage["mesh"], stage["batch"]["ref"], Static(stage["settings"]))


def varied(stage, seed=5, scale=0.3):
  """A fresh state with a random hash table (a fresh one is ~1e-4, which leaves every ReLU of
  the colour MLP at its kink), so the colours vary and the loss is smooth around it."""
  state = fresh(stage)
  table = state.params["hash_table"]
  return state.replace(params=dict(state.params, hash_table=scale * jax.random.normal(
      jax.random.key(seed), table.shape)))


def eroded_brute_force(mask: np.ndarray, p: int = 4) -> np.ndarray:
  """1 where every pixel of the (2p+1)² window inside the image is 1."""
  h, w = mask.shape[:2]
  out = np.zeros_like(mask)
  for i in range(h):
    for j in range(w):
      out[i, j] = mask[max(i - p, 0):i + p + 1, max(j - p, 0):j + p + 1].min()
  return out


def test_ref_step_is_adamw_on_the_loss_gradient_and_lowers_the_loss(stage):
  s, ref = stage["settings"], stage["batch"]["ref"]
  state = varied(stage)
  before = jax.device_get(state.params)
  rgb = tx.render_image(state.params, state.buffers, cams.reference_camera(s.views, RES, RES),
                        settings=s)["rgb"]
  new, m = run_step(stage, state, "ref")
  assert int(new.step) == 1
  m_e = eroded_brute_force(np.asarray(ref["mask"]))
  assert m_e.sum() == 12 * 8
  want_loss = 1000 * np.mean(np.abs(np.asarray(rgb) - 0.1) * m_e)
  np.testing.assert_allclose(float(m["loss"]), want_loss, rtol=1e-5)
  grads = jax.grad(lambda p: ref_loss(stage, p))(before)
  optim = stage["cfg"].texture.optim
  for group in tx.PARAM_GROUPS:
    lr = optim.lr[group]
    want = jax.tree_util.tree_map(
        lambda w, g: w - lr * g / (jnp.abs(g) + optim.eps) - lr * optim.weight_decay * w,
        before[group], grads[group])
    for a, b in zip(jax.tree_util.tree_leaves(new.params[group]),
                    jax.tree_util.tree_leaves(want), strict=True):
      np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-8)
  delta = jax.tree_util.tree_map(lambda a, b: a - b, jax.device_get(new.params), before)
  step_along = lambda h: float(ref_loss(stage, jax.tree_util.tree_map(
      lambda w, d: w + h * d, before, delta)))
  slope_fd = (step_along(1e-3) - step_along(-1e-3)) / 2e-3
  slope_ad = sum(float(jnp.vdot(g, d)) for g, d in zip(jax.tree_util.tree_leaves(grads),
                                                       jax.tree_util.tree_leaves(delta)))
  assert slope_fd < 0 and abs(slope_fd - slope_ad) < 0.1 * abs(slope_ad)
  assert step_along(1.0) < step_along(0.0)


def _changed(a, b) -> bool:
  return any(not np.array_equal(x, y) for x, y in zip(jax.tree_util.tree_leaves(a),
                                                      jax.tree_util.tree_leaves(b)))


def test_the_cycle_runs_what_the_schedule_says_and_each_part_trains_in_its_steps(stage):
  s = stage["settings"]
  state = fresh(stage)
  seen = []
  for step in range(8):
    kind = tx.kind_at(step, s)
    w = bsd_lib.what_happens(step, s.bsd.settings)
    want = ("dreambooth+augment" if w["augment"] else "dreambooth") if w["dreambooth"] else (
        "ref" if w["ref"] else "bsd")
    assert kind == want
    old = jax.device_get(state)
    state, _ = run_step(stage, state, kind)
    db = _changed(old.bsd.dreambooth.params, state.bsd.dreambooth.params)
    est = _changed(old.bsd.estimator.params, state.bsd.estimator.params)
    field = _changed(old.params, state.params)
    seen.append((kind, db, est, field, int(state.bsd.augmentations)))
  assert seen == [("dreambooth+augment", True, False, False, 1),
                  ("dreambooth", True, False, False, 1),
                  ("ref", False, False, True, 1), ("bsd", False, True, True, 1),
                  ("ref", False, False, True, 1), ("bsd", False, True, True, 1),
                  ("dreambooth+augment", True, False, False, 2),
                  ("dreambooth", True, False, False, 2)]
  assert int(state.step) == 8 and int(state.bsd.cache.count) == 2
  assert int(state.bsd.dreambooth.updates) == 4 and int(state.bsd.estimator.updates) == 2


@pytest.mark.parametrize("plain, sign", [(-1.0, -1.0), (3.0, 1.0)])
def test_a_bsd_step_moves_the_texture_against_g(stage, plain, sign):
  """g > 0 (plain row -1) darkens the seen surface, g < 0 (plain row 3) brightens it."""
  s = stage["settings"]
  params = {"bsd": dict(stage["params"]["bsd"], prompts=prompt_table(plain))}
  state = fresh(stage)
  cameras = texture_steps.random_views(jax.random.key(7), 3, s, RES)   # the step's views
  before = tx.render_views(state.params, stage["mesh"], cameras, s)
  state = state.replace(step=jnp.asarray(3, jnp.int32))
  new, m = run_step(stage, state, "bsd", params)
  after = tx.render_views(new.params, stage["mesh"], cameras, s)
  covered = np.asarray(before["opacity"][..., 0]) > 0.99
  change = np.asarray(after["rgb"] - before["rgb"])[covered]
  assert covered.sum() > 50 and float(m["bsd/grad_norm"]) > 0
  # A first-order step lowers the weighted sum Σ g·z: with g of one sign everywhere, the
  # mean colour (single pixels and channels may go either way through the shared MLP).
  assert sign * change.mean() > 1e-4


def _plan(stage, steps):
  inputs = lambda step: (tx.kind_at(step, stage["settings"]),
                         lambda st, b: run_step(stage, st, tx.kind_at(step, stage["settings"])),
                         stage["batch"])
  return loop.StagePlan(name=tx.NAME, steps=steps, init_state=lambda: fresh(stage),
                        step_inputs=inputs)


def test_resume_from_a_checkpoint_equals_the_uninterrupted_run(stage, tmp_path):
  train = stage["cfg"].texture.train
  with train.unlocked():
    train.update(log_every=1, checkpoint_every=3, keep_checkpoints=5)
  straight = loop.run(_plan(stage, 7), tmp_path / "a", train, progress=False)
  loop.run(_plan(stage, 3), tmp_path / "b", train, progress=False)
  resumed = loop.run(_plan(stage, 7), tmp_path / "b", train, progress=False)
  a, b = jax.device_get(straight), jax.device_get(resumed)
  assert int(b.bsd.augmentations) == 2
  for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b), strict=True):
    np.testing.assert_array_equal(x, y)


def test_warm_start_carries_the_previous_colour_field(stage):
  cfg, s = stage["cfg"], stage["settings"]
  neus_settings = coarse_neus.settings_from_config(cfg, {}, 1)
  neus = coarse_neus.init_state(neus_settings, jax.random.key(3))
  neus = neus.replace(params=dict(neus.params, hash_table=neus.params["hash_table"] + 0.3 *
                                  jax.random.normal(jax.random.key(4),
                                                    neus.params["hash_table"].shape)))
  state = tx.convert_from(neus, s, jax.random.key(0), stage["mesh"], stage["params"])
  points = np.asarray(stage["mesh"]["vertices"])
  np.testing.assert_array_equal(tx.albedo_fn(state, s)(points),
                                coarse_neus.albedo_fn(neus, neus_settings)(points))
  narrow = s.__class__(**{**s.__dict__, "field": tx.texture_field.TextureSettings(hidden=16)})
  fresh_state = tx.convert_from(neus, narrow, jax.random.key(0), stage["mesh"], stage["params"])
  assert fresh_state.params["feature_mlp"]["out"]["kernel"].shape[0] == 16


def _sample_texture(texture, uv):
  """Bilinear lookup, uv [..., 2] with v up (OBJ/trimesh convention), texel centres at +½."""
  size = texture.shape[0]
  col, row = uv[..., 0] * size - 0.5, (1.0 - uv[..., 1]) * size - 0.5
  return jnp.stack([jax.scipy.ndimage.map_coordinates(texture[..., c], [row, col], order=1,
                                                      mode="nearest") for c in range(3)], -1)


def test_export_round_trip_renders_the_stage_and_opens_upright_facing_the_viewer(stage, tmp_path):
  s = stage["settings"]
  state = varied(stage, scale=1.0)        # a varied texture, then a few steps of the stage
  for step in range(4):
    state, _ = run_step(stage, state, tx.kind_at(step, s))
  handoff = runner.Handoff(state=state, settings=s, render_fn=None, module=tx)
  export_cfg = stage["cfg"].export
  with export_cfg.unlocked():
    export_cfg.texture_size = 512
  mesh = results.final_mesh(tx, handoff, export_cfg)
  results.export_asset(tmp_path, tx, handoff, mesh, export_cfg)
  size = 64
  camera = cams.reference_camera(s.views, size, size)
  own = tx.render_image(state.params, state.buffers, camera, settings=s)["rgb"]
  v, f, uv, texture = mesh_files.load_glb(tmp_path / "model.glb")
  faces = jnp.asarray(f, jnp.int32)
  clip = jnp.concatenate([v, np.ones_like(v[:, :1])], -1) @ cams.mvp_matrix(camera, 0.1,
                                                                             1000.0).T
  raster = rasterize.rasterize(clip, faces, size, size, backend="jax")
  hit = (raster.tri_id >= 0)[..., None]
  color = _sample_texture(jnp.asarray(texture), rasterize.interpolate(jnp.asarray(uv), faces,
                                                                      raster))
  image = rasterize.antialias(jnp.where(hit, color, 1.0), raster, clip, faces)
  assert hit.sum() > 500 and np.std(np.asarray(own)[np.asarray(hit[..., 0])]) > 0.02
  assert metrics.psnr(np.asarray(image), np.asarray(own)) >= 30.0
  # Stricter, on the covered pixels alone (the white background matches trivially): a wrong
  # frame or a flipped v fails here (measured: 61.5 dB; with v flipped 31.6 dB, whole image 33.5).
  inside = np.asarray(hit[..., 0])
  assert metrics.psnr(np.asarray(image)[inside], np.asarray(own)[inside]) >= 40.0
  # glTF frame, as a viewer reads the file: Y up (the shape is tallest along training Z),
  # the front (the bump on training +X, toward the reference camera) toward +Z.
  raw = np.asarray(trimesh.load(tmp_path / "model.glb", force="mesh", process=False).vertices)
  extent = raw.max(0) - raw.min(0)
  assert np.argmax(extent) == 1 and raw[:, 2].max() > 0.6 > -raw[:, 2].min()


def test_a_guidance_step_with_guidance_off_only_advances_the_step(stage):
  """The SDS kind with no prior slot (an unguided run): its guidance steps change nothing but
  the step, so the reference steps keep their schedule (they used to fail: a loss of int 0)."""
  cfg = stage["cfg"].copy_and_resolve_references()
  with cfg.unlocked():
    cfg.texture.guidance.kind = "sds"
  settings = tx.settings_from_config(cfg, {}, 1)
  assert tx.kind_at(1, settings) == "guidance" and not settings.guidance
  state = tx.init_state(settings, jax.random.key(0), stage["mesh"], {})
  before = jax.device_get((state.params, state.opt_state))     # the step donates `state`
  new, metrics = texture_steps.compile_steps(settings)["guidance"](
      state, stage["batch"], {}, jax.random.key(7))
  assert int(new.step) == 1 and float(metrics["loss"]) == 0.0
  same = jax.tree_util.tree_map(np.array_equal, jax.device_get((new.params, new.opt_state)),
                                before)
  assert all(jax.tree_util.tree_leaves(same))
