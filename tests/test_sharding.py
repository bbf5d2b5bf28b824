"""Data parallelism: on 2 forced host devices the random views split across devices and the
guidance steps give the same losses and renders as on one device."""

import json
import subprocess
import sys
import textwrap

from conftest import ROOT, TEST_XLA_FLAGS

SCRIPT = textwrap.dedent("""
    import json, sys
    import jax, numpy as np
    sys.path.insert(0, "tests")
    from conftest import tiny_config
    from dc3d_jax import cameras as cams, reference
    from dc3d_jax.core import devices, rng
    from dc3d_jax.guidance import registry
    from dc3d_jax.priors import oracle
    from dc3d_jax.stages import coarse_nerf as cn

    def run(devs):
      par = devices.data_parallel(devs)
      cfg = tiny_config("/tmp/unused")
      guidance, prior = registry.build(cfg, cn.NAME)
      settings = cn.settings_from_config(cfg, guidance, 2, par.data)
      gt = oracle.ground_truth_mesh("primitives")
      rgba, depth = reference.render_ground_truth(gt, settings.views, 64)
      batch = par.replicate({"ref": reference.at_resolution({"rgba": rgba, "depth": depth}, 16)})
      state = par.replicate(cn.init_state(settings, jax.random.key(0)))
      prior, root = par.replicate(prior), par.replicate(rng.root_key(0))
      # The guidance substep alone: it is the one whose random views split across devices
      # (the reference substep renders the one reference view), and one compile per run.
      step_fn = cn.compile_steps(settings, "alternate")[("guidance",)]
      losses = []
      for step in range(4):
        state, m = step_fn(state, batch, prior, root)
        losses.append(float(m["loss"]))
      # The lowered module states its partition count; no second compile is needed.
      hlo = step_fn.lower(state, batch, prior, root).as_text()
      partitions = 2 if "num_partitions = 2" in hlo else 1
      cam = cams.make_camera(20.0, 135.0, 3.8, 20.0, 16, 16)
      image = cn.render_image(state.params, state.buffers["occupancy"], cam, state.step,
                              settings=settings, chunk=64)["rgb"]
      return losses, np.asarray(image), partitions

    assert jax.device_count() == 2, jax.devices()
    l2, img2, parts2 = run(jax.devices())
    l1, img1, parts1 = run(jax.devices()[:1])
    print(json.dumps({"losses_1": l1, "losses_2": l2, "partitions": [parts1, parts2],
                      "image_diff": float(np.max(np.abs(img1 - img2)))}))
""")


# The losses differ only by float32 summation order across devices: measured max rel 3.0e-7
# over the 4 guidance steps (docs/ARCHITECTURE.md quotes it); the bound leaves a factor ~3.
LOSS_RTOL = 1e-6


def test_two_devices_match_one_device():
  env = {"XLA_FLAGS": f"--xla_force_host_platform_device_count=2 {TEST_XLA_FLAGS}",
         "PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT), "JAX_PLATFORMS": "cpu"}
  proc = subprocess.run([sys.executable, "-c", SCRIPT], cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  out = json.loads(proc.stdout.strip().splitlines()[-1])
  assert len(out["losses_2"]) == 4
  assert out["partitions"] == [1, 2]
  rel = max(abs(a - b) / max(1.0, abs(a)) for a, b in zip(out["losses_1"], out["losses_2"]))
  print(f"2 devices vs 1: losses max rel {rel:.1e}, render max|Δ| {out['image_diff']:.1e}")
  assert rel <= LOSS_RTOL
  # Parameters are not compared: Adam turns noise-level gradients (~1e-9, summed in a different
  # order across devices) into ±lr steps of table entries that no sample reads. A render is
  # what those entries cannot change.
  assert out["image_diff"] < 1e-3
