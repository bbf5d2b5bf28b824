"""Data parallelism over the local devices: random views are split along a 'data' mesh axis;
parameters and reference data are replicated. One device is the same code with a 1-wide mesh."""

import dataclasses

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec


@dataclasses.dataclass(frozen=True)
class DataParallel:
  mesh: Mesh

  @property
  def n_devices(self) -> int:
    return self.mesh.devices.size

  @property
  def data(self) -> NamedSharding:
    """Leading (view) axis split over devices."""
    return NamedSharding(self.mesh, PartitionSpec("data"))

  @property
  def replicated(self) -> NamedSharding:
    return NamedSharding(self.mesh, PartitionSpec())

  def replicate(self, tree):
    return jax.device_put(tree, self.replicated)


def data_parallel(devices=None) -> DataParallel:
  devices = jax.local_devices() if devices is None else devices
  return DataParallel(Mesh(np.asarray(devices), ("data",)))


def views_per_step(requested: int, n_devices: int) -> int:
  """data.batch_size: 0 means one random view per device (the reference's DDP setup)."""
  if requested == 0:
    return n_devices
  if requested < 0 or requested % n_devices:
    raise ValueError(f"config data.batch_size={requested} must be a positive multiple of the "
                     f"{n_devices} local device(s), or 0 for one view per device")
  return requested
