"""Orbax checkpoints of a stage's TrainState, with resume from the newest one."""

from pathlib import Path

import jax
import orbax.checkpoint as ocp

from dc3d_jax import errors


class CheckpointStore:
  """Saves TrainStates under `<stage>/checkpoints/<step>/` and restores the newest."""

  def __init__(self, directory: Path, keep: int | None = 2):
    """keep: checkpoints kept on disk after a save (the newest); None keeps all."""
    options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                           enable_async_checkpointing=False)
    self.directory = Path(directory).absolute()
    self._manager = ocp.CheckpointManager(self.directory, options=options)

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def all_steps(self) -> tuple:
    return tuple(self._manager.all_steps())

  def save(self, step: int, state) -> None:
    if step in self._manager.all_steps():
      return
    self._manager.save(step, args=ocp.args.StandardSave(state))
    self._manager.wait_until_finished()

  def restore(self, step: int, template):
    """Restores into the structure (and shardings) of `template`."""
    abstract = jax.tree_util.tree_map(ocp.utils.to_shape_dtype_struct, template)
    try:
      return self._manager.restore(step, args=ocp.args.StandardRestore(abstract))
    except (ValueError, KeyError, TypeError, FileNotFoundError) as err:
      first = str(err).strip().splitlines()[0][:200] if str(err).strip() else type(err).__name__
      raise errors.ResumeError(
          f"{self.directory / str(step)}: cannot resume from this checkpoint ({first}); it was "
          "made with other settings or is damaged. Re-run with --restart to start afresh (the "
          "old run is moved aside)") from err

  def close(self) -> None:
    self._manager.close()
