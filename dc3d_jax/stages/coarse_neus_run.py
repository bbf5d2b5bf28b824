"""Wires the NeuS stage into a run (stages/runner.py does the shared work): it starts from the
coarse NeRF's final state, handed over in process by the previous stage."""

from dc3d_jax.errors import ResumeError
from dc3d_jax.stages import coarse_nerf as cn
from dc3d_jax.stages import coarse_neus as neus
from dc3d_jax.stages import runner


def run(ctx, previous: runner.Handoff | None = None) -> runner.Handoff:
  """Trains the NeuS stage, warm-started from `previous` (the coarse NeRF's Handoff)."""
  if previous is None or not isinstance(previous.settings, cn.Settings):
    raise ResumeError(f"stage {neus.NAME} starts from the coarse NeRF's result: list "
                      f"{cn.NAME!r} before {neus.NAME!r} in --config.stages")
  settings, prior_params = runner.build_settings(ctx, neus)
  key = runner.init_key(ctx, neus)
  return runner.run_stage(ctx, neus, settings, prior_params,
                          init_state=lambda: neus.convert_from(previous.state, settings, key))
