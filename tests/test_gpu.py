"""GPU-only checks (marked `gpu`; tests/conftest.py skips them where no GPU is present):

  python -m pytest -m gpu tests/test_gpu.py

- bf16 priors: one SDS step of each tiny prior (SD with Perp-Neg, Zero123) in bf16 gives a
  finite float32 render gradient within rel L2 0.25 / cosine 0.98 of the fp32 one, the bounds
  of tests/test_precision.py, whose CPU figures are rel L2 0.113 (SD) and 0.055 (Zero123).
  The fp32 reference runs at "highest" matmul precision (the GPU default may use TF32).
- The coarse step at the reference's 128² with its occupancy grid (32³, updated every 16
  steps) and the reference hash grid: 20 alternating steps on the oracle prior, finite
  losses, kept_frac reported for both substeps.
- The sharded path: the data-parallel step over every local GPU against the same step on one
  host CPU device (a 1-device run of the same code); losses agree to 1e-4 relative. With two
  or more GPUs the views are split across them.

Module-level imports stay light: collecting this file must never fail on a CPU machine.
"""

import pytest

pytestmark = pytest.mark.gpu


def _gpus():
  import jax
  return [d for d in jax.devices() if d.platform == "gpu"]


# ---- bf16 priors --------------------------------------------------------------------------

@pytest.fixture(scope="module")
def folders(tmp_path_factory):
  from experiments import tiny_models
  root = tmp_path_factory.mktemp("tiny_models")
  return {"sd": tiny_models.write_tiny_stable_diffusion(root / "sd"),
          "zero123": tiny_models.write_tiny_zero123(root / "zero123")}


@pytest.mark.parametrize("kind", ["sd", "zero123"])
def test_bf16_guidance_step_is_finite_and_close_to_fp32(kind, folders):
  import jax
  import jax.numpy as jnp
  import numpy as np
  import test_precision   # the CPU test's prior builders and SDS step, reused on the GPU
  build = test_precision.BUILDERS[kind]
  with jax.default_matmul_precision("highest"):
    fp32 = np.asarray(test_precision._render_grad(*build(folders[kind], jnp.float32)))
  bf16 = test_precision._render_grad(*build(folders[kind], jnp.bfloat16))
  assert bf16.dtype == jnp.float32 and np.isfinite(np.asarray(bf16)).all()
  a, b = fp32.astype(np.float64).ravel(), np.asarray(bf16, np.float64).ravel()
  rel = np.linalg.norm(b - a) / np.linalg.norm(a)
  cosine = a @ b / (np.linalg.norm(a) * np.linalg.norm(b))
  print(f"gpu {kind}: bf16 vs fp32 render gradient rel L2 {rel:.3g}, cosine {cosine:.5f}")
  assert np.abs(a).max() > 0 and rel < 0.25 and cosine > 0.98


# ---- the coarse step at 128² -----------------------------------------------------------------

def _oracle_stage(cfg, devices, batch: int):
  """(settings, compiled steps, step inputs) of the coarse stage on a mesh over `devices`."""
  import jax
  from dc3d_jax import reference
  from dc3d_jax.core import devices as devs, rng
  from dc3d_jax.guidance import registry
  from dc3d_jax.priors import oracle
  from dc3d_jax.stages import coarse_nerf as cn
  par = devs.data_parallel(devices)
  guidance, prior = registry.build(cfg, cn.NAME)
  settings = cn.settings_from_config(cfg, guidance, batch, par.data)
  gt = oracle.ground_truth_mesh(cfg.guidance.oracle_object)
  rgba, depth = reference.render_ground_truth(gt, settings.views, cfg.data.image_size)
  res = cfg.coarse_nerf.train.resolutions[0]
  ref = par.replicate({"ref": reference.at_resolution({"rgba": rgba, "depth": depth}, res)})
  state = par.replicate(cn.init_state(settings, jax.random.key(0)))
  inputs = (ref, par.replicate(prior), par.replicate(rng.root_key(0)))
  return settings, cn.compile_steps(settings, "alternate"), state, inputs


def _run_steps(compiled, state, inputs, steps: int) -> list:
  import jax
  from dc3d_jax.stages import coarse_nerf as cn
  history = []
  for step in range(steps):
    state, metrics = compiled[cn.parts_at(step, "alternate")](state, *inputs)
    history.append({k: float(v) for k, v in jax.device_get(metrics).items()})
  return history


def test_coarse_step_at_128_with_the_occupancy_grid():
  import numpy as np
  from configs import dreamcraft3d
  cfg = dreamcraft3d.get_config()
  with cfg.unlocked():
    cfg.guidance.prior_2d, cfg.guidance.prior_3d = "oracle", "none"
    cfg.data.image_size = 256
  _, compiled, state, inputs = _oracle_stage(cfg, _gpus(), batch=len(_gpus()))
  history = _run_steps(compiled, state, inputs, 20)
  for m in history:
    assert np.isfinite(m["loss"]), m
  last = {k: v for m in history for k, v in m.items()}       # newest value of each metric
  kept = {k: v for k, v in last.items() if k.startswith("kept_frac/")}
  print(f"gpu coarse 128²: kept_frac {kept}, occupied_frac {last['occupied_frac']:.3f}, "
        f"samples/ray {last['samples_per_ray/ref']:.2f} / {last['samples_per_ray/guidance']:.2f}")
  assert set(kept) == {"kept_frac/ref", "kept_frac/guidance"}
  assert all(0.0 < v <= 1.0 for v in kept.values())
  assert history[-1]["occupied_frac"] < 1.0     # the grid was updated (steps 0 and 16)


# ---- the sharded path ------------------------------------------------------------------------

def test_sharded_step_matches_a_one_device_run():
  import jax
  from conftest import tiny_config
  cfg = tiny_config("/tmp/unused-gpu-sharding")
  batch = 2 * len(_gpus())
  losses = []
  for devices in (_gpus(), jax.devices("cpu")[:1]):
    with jax.default_matmul_precision("highest"):
      _, compiled, state, inputs = _oracle_stage(cfg, devices, batch)
      losses.append([m["loss"] for m in _run_steps(compiled, state, inputs, 4)])
  rel = max(abs(a - b) / max(1.0, abs(a)) for a, b in zip(*losses))
  print(f"gpu sharded ({len(_gpus())} GPU) vs 1 CPU device: losses max rel {rel:.1e}")
  assert rel <= 1e-4
