"""Orbax checkpoints of a stage's TrainState, with resume from the newest one."""

from pathlib import Path

import jax
import orbax.checkpoint as ocp


class CheckpointStore:
  """Saves TrainStates under `<stage>/checkpoints/<step>/` and restores the newest."""

  def __init__(self, directory: Path, keep: int = 2):
    options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                           enable_async_checkpointing=False)
    self._manager = ocp.CheckpointManager(Path(directory).absolute(), options=options)

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def save(self, step: int, state) -> None:
    if step in self._manager.all_steps():
      return
    self._manager.save(step, args=ocp.args.StandardSave(state))
    self._manager.wait_until_finished()

  def restore(self, step: int, template):
    """Restores into the structure (and shardings) of `template`."""
    abstract = jax.tree_util.tree_map(ocp.utils.to_shape_dtype_struct, template)
    return self._manager.restore(step, args=ocp.args.StandardRestore(abstract))

  def close(self) -> None:
    self._manager.close()
