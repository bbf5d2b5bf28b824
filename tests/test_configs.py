"""The shipped configs' claims: the CPU demo scales every step-based schedule of the
reference config by one factor (configs/demo.py's docstring)."""

import pytest

from conftest import ROOT
from configs import demo, dreamcraft3d, oracle
from dc3d_jax import cli, pipeline

# Not configs of experiments/run.py: the testbed prior's training config and a config part.
NOT_RUN_CONFIGS = ("__init__", "testbed", "texture_section")


@pytest.mark.parametrize("small, steps, progressive", [
    (demo.get_config().coarse_nerf, demo.STEPS, 80),
    (oracle.get_config().coarse_nerf, demo.STEPS, 80),
    (demo.get_config("nerf").coarse_nerf, demo.NERF_STEPS, 40)])
def test_shrunk_nerf_scales_every_step_based_schedule(small, steps, progressive):
  ref = dreamcraft3d.get_config().coarse_nerf
  at = lambda step: int(round(step * steps / 5000))
  assert small.train.steps == at(ref.train.steps) == steps
  assert small.views.progressive_until == at(ref.views.progressive_until) == progressive
  assert small.field.band_start_step == at(ref.field.band_start_step)
  assert small.field.band_update_steps == at(ref.field.band_update_steps)
  for slot in ("sds_2d", "sds_3d"):                    # timestep annealing
    for name in ("t_min", "t_max"):
      s0, v0, v1, s1 = ref.guidance[slot][name]
      assert tuple(small.guidance[slot][name]) == (at(s0), v0, v1, at(s1))
  ramps = [name for name, w in ref.loss.items() if len(w) == 4]
  assert ramps
  for name in ramps:                                   # loss-weight step changes
    s0, v0, v1, s1 = ref.loss[name]
    got = tuple(small.loss[name])
    assert got == (0.0,) or got == (at(s0), v0, v1, at(s0) + (s1 - s0)), name


@pytest.mark.parametrize("name", sorted(p.name for p in (ROOT / "configs").glob("*.py")
                                        if p.stem not in NOT_RUN_CONFIGS) + ["demo.py:nerf"])
def test_every_run_config_passes_validation(name):
  """Each shipped run config loads as `--config=configs/<name>.py` and passes every rule (the
  reference config with the oracle in place of the image and weights it asks for)."""
  extra = ["--config.guidance.prior_2d=oracle", "--config.guidance.prior_3d=none"]
  cfg = cli.load_config(cli.parse_args([f"--config=configs/{name}",
                                        *(extra if name == "dreamcraft3d.py" else [])]))
  pipeline.validate(cfg)
