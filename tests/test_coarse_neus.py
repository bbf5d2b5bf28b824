"""The NeuS stage: the SDF field at init, the warm start from the coarse NeRF, and a 2-step run
through the in-process hand-off after 2 coarse-NeRF steps (tiny config, oracle prior)."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import tiny_config
from dc3d_jax import pipeline
from dc3d_jax.errors import ConfigError, ResumeError
from dc3d_jax.fields import sdf as sdf_field
from dc3d_jax.guidance import registry
from dc3d_jax.stages import coarse_nerf_run, coarse_neus_run, runner
from dc3d_jax.stages import coarse_neus as neus


def _bits(tree):
  return [np.asarray(a).view(np.uint8) for a in jax.tree_util.tree_leaves(jax.device_get(tree))]


def _identical(a, b) -> bool:
  return all(np.array_equal(x, y) for x, y in zip(_bits(a), _bits(b), strict=True))


@pytest.fixture(scope="module")
def nerf(tmp_path_factory):
  """A run context with both stages configured, and the coarse NeRF's Handoff after 2 steps."""
  cfg = tiny_config(tmp_path_factory.mktemp("run"), steps=2)
  with cfg.unlocked():
    cfg.stages = ("coarse_nerf", "coarse_neus")
    # Every term the NeuS step can compute cheaply: the reference's plus eikonal and the 2D
    # normal smoothness (normal_smooth_3d's jittered normals are tested in test_neus_render).
    cfg.coarse_neus.loss.update(eikonal=(0.1,), normal_smooth_2d=(1.0,))
  ctx = pipeline.open_context(cfg, progress=False)
  return ctx, coarse_nerf_run.run(ctx)


def _settings(cfg):
  return neus.settings_from_config(cfg, registry.build(cfg, neus.NAME)[0], 1)


def test_sdf_field_starts_as_the_radius_half_sphere():
  settings = _settings(tiny_config("unused"))
  x = jnp.array([[0.0, 0.0, 0.0], [0.5, 0.0, 0.0], [0.0, -1.0, 0.0], [0.6, 0.8, 1.0]])

  @jax.jit
  def init_and_query(key):
    params = neus.fresh_params(settings, key)
    return neus.field_fns(params, settings)[1](x), sdf_field.inv_std(params["variance"])

  f, inv_std = init_and_query(jax.random.key(0))
  # Hash features start in ±1e-4 and the MLP has no biases, so f = |x| - 0.5 up to ~1e-4.
  np.testing.assert_allclose(np.asarray(f), [-0.5, 0.0, 0.5, np.sqrt(2) - 0.5], atol=1e-3)
  assert float(inv_std) == pytest.approx(np.exp(3.0), rel=1e-6)


def test_warm_start_carries_the_nerf_parameters_bit_for_bit(nerf):
  ctx, handoff = nerf
  settings = _settings(ctx.cfg)
  key = jax.random.key(7)
  state = jax.jit(lambda s: neus.convert_from(s, settings, key))(handoff.state)
  before = jax.device_get(handoff.state)
  assert int(before.step) == 2                          # trained, not at its init
  for name in neus.CARRIED:
    assert _identical(state.params[name], before.params[name]), name
  assert _identical(state.buffers["occupancy"], before.buffers["occupancy"])
  assert not np.asarray(before.buffers["occupancy"].binary).all()   # the grid was updated
  # The SDF head and the variance are fresh: the same as a fresh init from the same key.
  fresh = jax.jit(lambda k: neus.fresh_params(settings, k))(key)
  assert _identical(state.params["sdf_mlp"], fresh["sdf_mlp"])
  assert float(state.params["variance"]) == pytest.approx(0.3)
  assert set(state.params) == set(neus.PARAM_GROUPS) and int(state.step) == 0
  mu = [a for a in jax.tree_util.tree_leaves(state.opt_state) if np.ndim(a) > 0]
  assert mu and all(not np.any(np.asarray(a)) for a in mu)          # Adam moments at 0
  # The sphere bias dominates the fresh head: inside at the origin, outside at |x| = 1.5.
  query = jax.jit(lambda p, x: neus.field_fns(p, settings)[1](x))
  f = np.asarray(query(state.params, jnp.array([[0.0, 0.0, 0.0], [1.5, 0.0, 0.0]])))
  np.testing.assert_allclose(f, [-0.5, 1.0], atol=0.1)


def test_warm_start_rejects_a_nerf_of_other_shapes_or_no_predecessor(nerf):
  ctx, handoff = nerf
  cfg = tiny_config("unused")
  with cfg.unlocked():
    cfg.coarse_nerf.field.grid.log2_table_size = 11
  with pytest.raises(ConfigError, match="hash_table"):
    neus.convert_from(handoff.state, _settings(cfg), jax.random.key(0))
  with pytest.raises(ResumeError, match="coarse_nerf"):
    coarse_neus_run.run(ctx, None)


def test_two_neus_steps_after_two_nerf_steps(nerf):
  ctx, handoff = nerf
  settings, _ = runner.build_settings(ctx, neus)
  key = runner.init_key(ctx, neus)
  start = jax.device_get(jax.jit(lambda s: neus.convert_from(s, settings, key))(handoff.state))
  out = coarse_neus_run.run(ctx, handoff)
  assert isinstance(out.settings, neus.Settings) and int(out.state.step) == 2
  lines = (ctx.workdir / neus.NAME / "metrics.jsonl").read_text().splitlines()
  ref_m, guide_m = (json.loads(line) for line in lines)
  # Every term with a weight is logged, except sds_3d: prior_3d is "none" here.
  assert settings.active == {"rgb", "mask", "depth_rel", "sds_2d", "sds_3d", "orient",
                             "sparsity", "opaque", "eikonal", "normal_smooth_2d"}
  logged = {k[len("loss/"):] for m in (ref_m, guide_m) for k in m if k.startswith("loss/")}
  assert logged == settings.active - {"sds_3d"} and "sds_3d" not in settings.guidance
  assert "loss/sparsity" not in ref_m and "loss/rgb" not in guide_m
  for m in (ref_m, guide_m):
    assert all(np.isfinite(v) for v in m.values())
  # Reference §3.1-3.2 NeuS t range [0.2, 0.5]; inv_std = exp(10·0.3) before the first update.
  assert 200 <= guide_m["sds_2d/t"] <= 500
  assert ref_m["inv_std"] == pytest.approx(np.exp(3.0), rel=1e-5)
  assert ref_m["cos_anneal_ratio"] == 0.0 and guide_m["cos_anneal_ratio"] > 0.0
  assert int(out.state.skipped) == 0
  end = jax.device_get(out.state.params)
  for name in neus.PARAM_GROUPS:
    moved = jax.tree_util.tree_map(lambda a, b: float(np.max(np.abs(a - b))), end[name],
                                   start.params[name])
    assert all(v > 0 for v in jax.tree_util.tree_leaves(moved)), name
