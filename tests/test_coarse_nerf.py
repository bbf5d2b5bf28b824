"""The coarse-NeRF stage: a short run's numbers, no recompilation, weights, and the NaN stop."""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dc3d_jax import cameras as cams
from dc3d_jax import reference
from dc3d_jax.core import devices, rng
from dc3d_jax.eval import report
from dc3d_jax.guidance import registry
from dc3d_jax.priors import oracle
from dc3d_jax.stages import coarse_nerf as cn
from dc3d_jax.stages import common


def _setup(cfg):
  par = devices.data_parallel()
  guidance, prior_params = registry.build(cfg, cn.NAME)
  settings = cn.settings_from_config(cfg, guidance, 1, par.data)
  gt = oracle.ground_truth_mesh(cfg.guidance.oracle_object)
  rgba, depth = reference.render_ground_truth(gt, settings.views, 64)
  batch = {"ref": reference.at_resolution({"rgba": rgba, "depth": depth}, 16)}
  state = cn.init_state(settings, jax.random.key(0))
  # As the pipeline does: everything replicated on the device mesh, views split along it.
  return settings, par.replicate(batch), par.replicate(prior_params), par.replicate(state)


@pytest.fixture(scope="module")
def stage(tmp_path_factory):
  from conftest import tiny_config
  cfg = tiny_config(tmp_path_factory.mktemp("run"))
  settings, batch, prior_params, state = _setup(cfg)
  return cfg, settings, batch, prior_params, state, cn.compile_steps(settings, "alternate")


def _run(compiled, state, batch, prior_params, steps, start=0):
  root = devices.data_parallel().replicate(rng.root_key(0))
  history = []
  for step in range(start, start + steps):
    state, metrics = compiled[cn.parts_at(step, "alternate")](state, batch, prior_params, root)
    history.append(jax.device_get(metrics))
  return state, history


def test_two_steps_log_every_term_and_change_params(stage):
  _, settings, batch, prior_params, state, compiled = stage
  before = jax.device_get(state.params)
  state = jax.tree_util.tree_map(jnp.copy, state)  # the step donates its input
  state, (ref_m, guide_m) = _run(compiled, state, batch, prior_params, 2)
  assert set(ref_m) >= {f"loss/{n}" for n in ("rgb", "mask", "depth_rel", "orient",
                                                "opaque", "normal_smooth_2d",
                                                "normal_smooth_3d")}
  assert "loss/sparsity" not in ref_m and "loss/sds_2d" not in ref_m
  assert set(guide_m) >= {"loss/sds_2d", "loss/sparsity", "sds_2d/t"}
  for m in (ref_m, guide_m):
    assert all(np.isfinite(v) for v in m.values())
  # Reference §3.1 NeRF t range at step 1: [0.7, 0.85] (minus 1/200 of the ramp).
  assert 695 <= guide_m["sds_2d/t"] <= 850
  # The blob starts as a sphere of radius ~0.5: the reference mask disagrees with it.
  assert ref_m["loss/mask"] > 1e-3 and ref_m["kept_frac/ref"] == 1.0
  assert int(state.step) == 2 and int(state.skipped) == 0
  moved = jax.tree_util.tree_map(lambda a, b: float(np.max(np.abs(a - b))),
                                 jax.device_get(state.params), before)
  assert all(v > 0 for v in jax.tree_util.tree_leaves(moved))


def test_steps_do_not_recompile(stage):
  _, _, batch, prior_params, state, compiled = stage
  state = jax.tree_util.tree_map(jnp.copy, state)
  state, _ = _run(compiled, state, batch, prior_params, 2)   # both variants compiled
  compiles = []
  listener = lambda event, duration, **kw: compiles.append(event) if "compile" in event else None
  jax.monitoring.register_event_duration_secs_listener(listener)
  try:
    _run(compiled, state, batch, prior_params, 4, start=2)
  finally:
    jax.monitoring.unregister_event_duration_listener(listener)
  assert compiles == [], compiles
  assert all(fn._cache_size() == 1 for fn in compiled.values())


def test_reference_loss_falls_over_a_few_steps(stage):
  _, _, batch, prior_params, state, compiled = stage
  state = jax.tree_util.tree_map(jnp.copy, state)
  _, history = _run(compiled, state, batch, prior_params, 40)
  rgb = [float(m["loss/rgb"]) for m in history[::2]]
  assert rgb[-1] < 0.5 * rgb[0]


def test_truncated_evaluation_render_is_reported(stage):
  """A render whose budget cuts samples says so: kept_frac < 1 from render_image, one warning
  from the MonitoredRenderer the stage hands to the evaluator, the minimum in its metrics."""
  _, settings, _, _, state, _ = stage
  starved = dataclasses.replace(settings, volume=dataclasses.replace(
      settings.volume, samples_per_ray=1.0, prepass_samples_per_ray=2.0))
  camera = cams.make_camera(0.0, 0.0, 3.8, 20.0, 16, 16)
  grid = state.buffers["occupancy"]
  render = lambda s: jax.device_get(jax.jit(functools.partial(
      cn.render_image, settings=s, chunk=64))(state.params, grid, camera, state.step))
  full, cut = render(settings), render(starved)
  assert cut["rgb"].shape == (16, 16, 3) and float(cut["kept_frac"]) < 0.5
  assert float(full["kept_frac"]) > float(cut["kept_frac"])
  fn = report.MonitoredRenderer(lambda c: cut, "test render", "raise the budget")
  with pytest.warns(report.TruncatedRenderWarning, match="raise the budget"):
    fn(camera)
  fn(camera)   # warned once: a second truncated render adds to the count only
  assert report.truncation_metrics(fn) == {
      "eval_kept_frac_min": pytest.approx(float(cut["kept_frac"])),
      "eval_truncated_renders": 2}
  assert report.truncation_metrics(lambda c: cut) == {}


def test_batch_of_8_on_one_device_is_the_mean_of_8_single_views(tiny_cfg):
  """data.batch_size=8 on one device, the reference's effective batch (8 GPUs x 1 view): a
  guidance step renders 8 distinct random views and its SDS loss is their mean. With the
  oracle and a fixed t the per-view loss is ½ᾱ(1-ᾱ)‖x - x_gt‖² (the noise cancels), so it
  is checked against 8 separate one-view renders and losses."""
  with tiny_cfg.unlocked():
    tiny_cfg.data.batch_size = 8
    tiny_cfg.coarse_nerf.render.stratified = False       # renders independent of their key
    for name in ("t_min", "t_max"):
      tiny_cfg.coarse_nerf.guidance.sds_2d[name] = (0.5,)
    for name in ("orient", "normal_smooth_2d", "normal_smooth_3d"):   # a smaller step
      tiny_cfg.coarse_nerf.loss[name] = (0.0,)
  par = devices.data_parallel()
  guidance, prior_params = registry.build(tiny_cfg, cn.NAME)
  batch = devices.views_per_step(tiny_cfg.data.batch_size, par.n_devices)
  settings = cn.settings_from_config(tiny_cfg, guidance, batch, par.data)
  step = 1001                 # full view range; 1001 % 16 != 0: no occupancy update
  # Jitted: eager Flax init and camera sampling dispatch op by op (seconds on 2 cores).
  state = jax.jit(functools.partial(cn.init_state, settings))(jax.random.key(0))
  state = state.replace(step=jnp.int32(step))
  root = rng.root_key(0)
  ref = {"ref": {"rgb": jnp.zeros((16, 16, 3)), "mask": jnp.zeros((16, 16, 1))}}
  step_fn = cn.compile_steps(settings, "alternate")[("guidance",)]
  grid, params = state.buffers["occupancy"], state.params
  _, metrics = step_fn(jax.tree_util.tree_map(jnp.copy, state), ref, prior_params, root)
  views = jax.jit(lambda key: cams.random_cameras(key, step, 8, settings.views, 16, 16))(
      rng.key_for(root, f"{cn.NAME}/views", step))
  mask = cn.level_mask(settings, step)

  @jax.jit
  def one_view(camera):
    images, _ = cn.render_views(params, grid, camera, jax.random.key(1), settings, mask,
                                "none")
    loss, _ = guidance["sds_2d"].loss(prior_params["sds_2d"], images["rgb"], camera, step,
                                      jax.random.key(2))
    return loss, images["rgb"][0]

  losses, renders = zip(*(one_view(views[i:i + 1]) for i in range(8)))
  angles = np.stack([np.asarray(views.elevation_deg), np.asarray(views.azimuth_deg)], -1)
  assert len({tuple(np.round(a, 3)) for a in angles}) == 8              # 8 distinct views
  assert min(float(jnp.abs(a - b).max()) for i, a in enumerate(renders)
             for b in renders[i + 1:]) > 1e-3                           # 8 distinct renders
  assert float(metrics["loss/sds_2d"]) > 0
  np.testing.assert_allclose(float(metrics["loss/sds_2d"]), np.mean(losses), rtol=1e-5)


def test_loss_weights_must_match_terms():
  weights = {n: (1.0,) for n in cn.LOSS_TERMS}
  assert common.check_loss_weights(weights, cn.LOSS_TERMS, "coarse_nerf") == weights
  typo = dict(weights, orientt=(1.0,))
  del typo["orient"]
  with pytest.raises(ValueError, match=r"missing weights \['orient'\].*unknown weights \['orientt'\]"):
    common.check_loss_weights(typo, cn.LOSS_TERMS, "coarse_nerf")
  with pytest.raises(ValueError, match="coarse_nerf.loss.rgb"):
    common.check_loss_weights(dict(weights, rgb=(1, 2)), cn.LOSS_TERMS, "coarse_nerf")


def test_zero_weights_skip_their_terms(tiny_cfg):
  with tiny_cfg.unlocked():
    for name in ("orient", "normal_smooth_2d", "normal_smooth_3d", "depth_rel"):
      tiny_cfg.coarse_nerf.loss[name] = (0.0,)
  settings, *_ = _setup(tiny_cfg)
  assert settings.normals == "none"
  assert not settings.active & {"orient", "normal_smooth_2d", "normal_smooth_3d", "depth_rel"}


def test_nonfinite_loss_stops_with_a_clear_message(tiny_cfg, monkeypatch):
  from dc3d_jax import errors, losses, pipeline
  from dc3d_jax.stages import loop
  with tiny_cfg.unlocked():   # a NaN weight is a config error, refused before anything runs
    tiny_cfg.coarse_nerf.loss.rgb = (float("nan"),)
  with pytest.raises(errors.ConfigError, match="coarse_nerf.loss.rgb"):
    pipeline.run(tiny_cfg, progress=False)
  with tiny_cfg.unlocked():   # so the NaN the loop must stop on is made inside the step
    tiny_cfg.coarse_nerf.loss.rgb = (1000.0,)
  monkeypatch.setattr(losses, "rgb", lambda *args: jnp.float32(jnp.nan))
  with pytest.raises(loop.NonFiniteError, match=r"step 1: non-finite values in \['loss'"):
    pipeline.run(tiny_cfg, progress=False)
