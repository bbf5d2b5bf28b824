"""BSD on the testbed model (priors/testbed_base.py, texture.prior.base = "testbed").

A tiny testbed architecture (16², one level, no attention) with a non-zero output layer.
Checks: the base's ε is √(1−ᾱ) x_t + √ᾱ v̂ with ᾱ the cosine schedule's closed form
cos²(((t+1)/T + s)/(1 + s)·π/2) / cos²(s/(1 + s)·π/2), s = 0.008 (the cap never binds below
t = 999), at two timesteps, and its ε-MSE is ᾱ times the v-MSE; the codec against block
means by hand and its Jacobian; the per-view conditions' relative camera against hand
values for two cameras, and BSD's gradient at a fresh state, g = (1−ᾱ)·2·(ε_c − ε_u) (c_vi is
the null condition); the texture stage's BSD cycle built through texture_run.build_bsd from a
weights file (finite, φ_DB trains in the DreamBooth phase, the cache fills, the texture and
φ_est train in BSD steps); the config rules of texture.prior.base.
"""

import math
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import texture_section
from conftest import tiny_config
from dc3d_jax import cameras as cams
from dc3d_jax import config_check, pipeline
from dc3d_jax.errors import ConfigError
from dc3d_jax.geometry import isosurface, sdf_shapes
from dc3d_jax.guidance import registry
from dc3d_jax.priors import testbed
from dc3d_jax.priors import testbed_base
from dc3d_jax.priors.testbed_unet import Architecture
from dc3d_jax.stages import texture_run, texture_steps
from dc3d_jax.stages import texture as tx

TINY = Architecture(resolution=16, channels=(16,), attention_levels=(), emb_dim=32,
                    groups=4)
R, RES = 16, 32              # the model's resolution; the texture stage's render size


def tiny_params(seed=1):
  """Tiny testbed params with a random output layer (it starts at zero: ε_c would equal ε_u)."""
  params = testbed.init_params(TINY, jax.random.key(seed))
  last = sorted(k for k in params if k.startswith("Conv_"))[-1]
  params[last]["kernel"] = 0.1 * jax.random.normal(jax.random.key(seed + 1),
                                                   params[last]["kernel"].shape)
  return params


def cosine_alpha_bar(t: int, s: float = 0.008) -> float:
  f = lambda u: math.cos((u / 1000 + s) / (1 + s) * math.pi / 2) ** 2
  return f(t + 1) / f(0)


def reference_rgba():
  """A [24, 24, 4] reference: a red square on a transparent background."""
  rgba = np.zeros((24, 24, 4), np.float32)
  rgba[6:18, 6:18] = (1.0, 0.0, 0.0, 1.0)
  return rgba


BASE = testbed_base.TestbedBase(arch=TINY, ref_elevation_deg=20.0, ref_azimuth_deg=0.0)
PARAMS = tiny_params()


def test_epsilon_is_converted_from_v_with_the_cosine_schedule():
  rng = np.random.default_rng(0)
  x0 = jnp.asarray(rng.uniform(-1, 1, (2, R, R, 3)), jnp.float32)
  noise = jnp.asarray(rng.standard_normal((2, R, R, 3)), jnp.float32)
  cond = testbed.conditioning(jnp.asarray(rng.uniform(-1, 1, (2, R, R, 3)), jnp.float32),
                              jnp.asarray([[0.3, 0.5, 0.8, 1.2], [-0.2, -1.0, 0.0, 1.5]]))
  both = jax.jit(lambda x_t, t: (BASE.apply(PARAMS, x_t, t, cond),
                                 testbed.apply_v(PARAMS, x_t, t, cond, TINY)))  # the network
  for step in (100, 700):
    a = cosine_alpha_bar(step)
    np.testing.assert_allclose(BASE.alphas_cumprod()[step], a, rtol=1e-5)
    t = jnp.full((2,), step, jnp.int32)
    x_t = math.sqrt(a) * x0 + math.sqrt(1 - a) * noise
    eps, v_hat = both(x_t, t)
    np.testing.assert_allclose(eps, math.sqrt(1 - a) * x_t + math.sqrt(a) * v_hat,
                               rtol=1e-5, atol=1e-6)
    # The trained copies' ε-MSE is ᾱ × the v-MSE (v = √ᾱ ε − √(1−ᾱ) x_0).
    v = math.sqrt(a) * noise - math.sqrt(1 - a) * x0
    np.testing.assert_allclose(jnp.mean((eps - noise) ** 2),
                               a * jnp.mean((v_hat - v) ** 2), rtol=1e-4)
  with pytest.raises(ConfigError, match="camera_condition"):
    BASE.apply(PARAMS, x0, t, cond, class_emb=jnp.zeros((2, 32)))


def test_codec_is_block_means_in_minus_one_one_and_decodes_back():
  rng = np.random.default_rng(1)
  small = jnp.asarray(rng.uniform(0, 1, (1, R, R, 3)), jnp.float32)
  np.testing.assert_allclose(BASE.decode({}, BASE.encode({}, small)), small, atol=1e-6)
  # Constant 2x2 blocks: encoding a 2R render gives 2·block − 1, decoding gives the blocks.
  big = jnp.repeat(jnp.repeat(small, 2, axis=1), 2, axis=2)
  np.testing.assert_allclose(BASE.encode({}, big), 2.0 * small - 1.0, atol=1e-6)
  np.testing.assert_allclose(BASE.decode({}, BASE.encode({}, big)), small, atol=1e-6)
  grad = jax.grad(lambda im: jnp.sum(BASE.encode({}, im)))(big)
  np.testing.assert_allclose(grad, 0.5, atol=1e-7)       # ∂(2·mean of 4)/∂pixel = 2/4
  assert float(BASE.decode({}, jnp.full((1, 2, 2, 3), 3.0)).max()) == 1.0


def test_view_conditions_are_the_reference_and_the_relative_camera():
  base, params, cond_params = testbed_base.make_testbed_base(
      testbed.TestbedModel(arch=TINY, params=PARAMS, card={}), reference_rgba(),
      ref_elevation_deg=20.0, ref_azimuth_deg=0.0)
  assert base == BASE and params is PARAMS
  ref = np.asarray(cond_params["ref"])
  assert ref.shape == (1, R, R, 3)
  np.testing.assert_allclose(ref[0, 0, 0], [1, 1, 1], atol=1e-6)      # white background
  np.testing.assert_allclose(ref[0, 8, 8], [1, -1, -1], atol=1e-6)    # red, in [-1, 1]
  cameras = cams.make_camera(jnp.array([30.0, -10.0]), jnp.array([90.0, -135.0]), 3.8, 20.0,
                             RES, RES)
  c_vd, u, c_vi = base.view_conditions(cond_params, cameras)
  # (30°, 90°) from the reference (20°, 0°): polar 60° vs 70°; (-10°, -135°): 100° vs 70°.
  h = math.sqrt(0.5)
  want = [[-math.pi / 18, 1.0, 0.0, math.radians(70)], [math.pi / 6, -h, -h, math.radians(70)]]
  np.testing.assert_allclose(c_vd["pose"], want, atol=1e-6)
  np.testing.assert_allclose(c_vd["pose"], testbed.relative_pose(
      jnp.array([30.0, -10.0]), jnp.array([90.0, -135.0]), 20.0, 0.0), atol=1e-6)
  np.testing.assert_array_equal(c_vd["ref"], np.broadcast_to(ref, (2, R, R, 3)))
  for c in (u, c_vi):
    assert all(not np.any(np.asarray(leaf)) for leaf in jax.tree_util.tree_leaves(c))
  # BSD at a fresh state (φ_DB = φ_est = base): g = (1−ᾱ)(ε_u + 2(ε_c − ε_u) − ε_u).
  model = texture_run.make_bsd(base, texture_section.texture_config())
  state = model.init_state(params, jax.random.key(0), (R, R))
  z_t = jax.random.normal(jax.random.key(3), (2, R, R, 3))
  t = jnp.array([300, 450])
  g = jax.jit(model.gradient_at)(state, params, z_t, t, c_vd, u, c_vi)
  a = jnp.asarray([cosine_alpha_bar(300), cosine_alpha_bar(450)])[:, None, None, None]
  v = jax.jit(lambda c: testbed.apply_v(params, z_t, t, c, TINY))    # the network itself
  eps = lambda c: jnp.sqrt(1 - a) * z_t + jnp.sqrt(a) * v(c)
  np.testing.assert_allclose(g, (1 - a) * 2.0 * (eps(c_vd) - eps(u)), rtol=1e-4, atol=1e-6)
  assert float(jnp.abs(g).max()) > 1e-4


def sphere_sdf(x):
  return sdf_shapes.sphere(x, center=(0.0, 0.0, 0.0), radius=0.5)


def make_config(tmp_path):
  cfg = tiny_config(tmp_path)
  weights = tmp_path / "tiny_testbed.safetensors"
  testbed.save_model(weights, TINY, PARAMS, {"steps": 0})
  with cfg.unlocked():
    cfg.stages = ("geometry", "texture")
    cfg.prompt, cfg.texture.prior.model = "", ""          # neither is needed by the testbed
    cfg.guidance.testbed_model = str(weights)
    cfg.texture.resolution = RES
    cfg.texture.prior.base = "testbed"
    cfg.texture.prior.lr_full = 1e-3
    cfg.texture.bsd.update(cycle_steps=6, dreambooth_steps=1, augment_every=6, sampler_steps=4)
  return cfg


def _changed(a, b) -> bool:
  return any(not np.array_equal(x, y) for x, y in zip(jax.tree_util.tree_leaves(a),
                                                      jax.tree_util.tree_leaves(b)))


def test_the_texture_stage_runs_bsd_on_the_testbed_base(tmp_path):
  cfg = make_config(tmp_path)
  ctx = types.SimpleNamespace(cfg=cfg, priors=registry.PriorStore(cfg.guidance),
                              reference={"rgba": reference_rgba()})
  model, prior_params = texture_run.build_bsd(ctx)
  assert isinstance(model.base, testbed_base.TestbedBase) and model.base.arch == TINY
  assert set(prior_params["bsd"]) == {"base", "codec", "conditioning"}
  assert prior_params["bsd"]["base"] is ctx.priors.testbed().params   # the run's store's
  settings = tx.settings_from_config(cfg, {}, 1, None, model)
  v, f = isosurface.extract(jax.jit(sphere_sdf), 2.0, 16, 0.0, inside="below")
  mesh = tx.prepare_mesh(v, f, settings, RES)
  state = tx.init_state(settings, jax.random.key(0), mesh, prior_params)
  assert state.bsd.cache.images.shape[1:] == (R, R, 3)      # decoded at the model's size
  steps = texture_steps.compile_steps(settings)
  ref = {"rgb": jnp.full((RES, RES, 3), 0.3), "mask": jnp.zeros((RES, RES, 1))
         .at[8:24, 8:24].set(1.0)}
  seen = []
  for step in range(2):      # the two kinds that run the network: DreamBooth+augment, BSD
    kind = tx.kind_at(step, settings)
    old = jax.device_get(state)
    state, metrics = steps[kind](state, {"ref": ref}, prior_params, jax.random.key(7))
    assert all(np.isfinite(np.asarray(m)).all() for m in jax.tree_util.tree_leaves(metrics))
    seen.append((kind, _changed(old.bsd.dreambooth.params, state.bsd.dreambooth.params),
                 _changed(old.bsd.estimator.params, state.bsd.estimator.params),
                 _changed(old.params, state.params), int(state.bsd.cache.count)))
  assert seen == [("dreambooth+augment", True, False, False, 1), ("bsd", False, True, True, 1)]
  cached = np.asarray(state.bsd.cache.images[0])
  assert np.isfinite(cached).all() and 0.0 <= cached.min() and cached.max() <= 1.0
  assert float(metrics["bsd/grad_norm"]) > 0 and int(state.bsd.dreambooth.skipped) == 0
  assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree_util.tree_leaves(state))


def _problems(cfg) -> dict:
  return {key: msg for key, _, msg in config_check.problems(cfg, pipeline.config_sections())}


def test_config_rules_of_the_bsd_base(tmp_path):
  cfg = make_config(tmp_path)
  assert _problems(cfg) == {}       # no prompt and no SD model needed for the testbed base
  with cfg.unlocked():
    cfg.texture.prior.base = "sd"
  assert {"prompt", "texture.prior.model"} <= set(_problems(cfg))
  for key, value in (("prior.memory_mode", "lora"), ("bsd.camera_condition", True),
                     ("prior.base", "zero123")):
    bad = make_config(tmp_path)
    with bad.unlocked():
      bad.texture[key.split(".")[0]][key.split(".")[1]] = value
    assert f"texture.{key}" in _problems(bad), key
    if key == "prior.memory_mode":
      ctx = types.SimpleNamespace(cfg=bad, priors=None, reference=None)
      with pytest.raises(ConfigError, match="texture.prior.memory_mode"):
        texture_run.build_bsd(ctx)
