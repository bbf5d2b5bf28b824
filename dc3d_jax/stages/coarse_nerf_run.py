"""Wires the coarse-NeRF stage into a run (stages/runner.py does the shared work): it is the
first stage, so it starts from a fresh state."""

from dc3d_jax.stages import coarse_nerf as cn
from dc3d_jax.stages import runner


def run(ctx, previous=None) -> runner.Handoff:
  """Trains the coarse NeRF from scratch (`previous` is unused)."""
  settings, prior_params = runner.build_settings(ctx, cn)
  key = runner.init_key(ctx, cn)
  return runner.run_stage(ctx, cn, settings, prior_params,
                          init_state=lambda: cn.init_state(settings, key))
