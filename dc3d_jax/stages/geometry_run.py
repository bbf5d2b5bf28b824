"""Wires the geometry (DMTet) stage into a run (stages/runner.py does the shared work): it
starts from the coarse NeuS's final state, handed over in process by the previous stage, and
passes its tet grid to every step and render as a constant."""

from dc3d_jax.errors import ResumeError
from dc3d_jax.stages import coarse_neus as neus
from dc3d_jax.stages import geometry, runner


def run(ctx, previous: runner.Handoff | None = None) -> runner.Handoff:
  """Trains the geometry stage, warm-started from `previous` (the NeuS stage's Handoff)."""
  if previous is None or not isinstance(previous.settings, neus.Settings):
    raise ResumeError(f"stage {geometry.NAME} starts from the coarse NeuS's result: list "
                      f"{neus.NAME!r} before {geometry.NAME!r} in --config.stages")
  settings, prior_params = runner.build_settings(ctx, geometry)
  key = runner.init_key(ctx, geometry)
  grid = geometry.tet_grid(settings)
  init = lambda: geometry.convert_from(previous.state, previous.settings, settings, key, grid)
  return runner.run_stage(ctx, geometry, settings, prior_params, init_state=init,
                          constants=grid)
