"""Shared array containers (flax.struct dataclasses, so they are pytrees and cross jit).

Frame (docs/ARCHITECTURE.md, Conventions): world Z-up, right-handed; c2w columns are (right, up, back) and the camera
looks down its -z (OpenGL). Image rows go top to bottom (row 0 is the top of the picture).
"""

import jax
import jax.numpy as jnp
from flax import struct


@struct.dataclass
class Camera:
  """A batch of pinhole cameras on the viewing sphere.

  c2w:           [..., 4, 4] camera-to-world
  fovy:          [...] vertical field of view, radians
  elevation_deg: [...] degrees above the XY plane
  azimuth_deg:   [...] degrees from +X towards +Y
  distance:      [...] distance to the origin, world units
  height, width: image size in pixels (static: they set array shapes)
  """
  c2w: jax.Array
  fovy: jax.Array
  elevation_deg: jax.Array
  azimuth_deg: jax.Array
  distance: jax.Array
  height: int = struct.field(pytree_node=False, default=64)
  width: int = struct.field(pytree_node=False, default=64)

  @property
  def position(self) -> jax.Array:
    """[..., 3] camera centre in world space."""
    return self.c2w[..., :3, 3]

  @property
  def focal(self) -> jax.Array:
    """[...] focal length in pixels (square pixels, set by fovy and height)."""
    return 0.5 * self.height / jnp.tan(0.5 * self.fovy)

  @property
  def batch_shape(self) -> tuple:
    return self.fovy.shape

  def __getitem__(self, index) -> "Camera":
    return jax.tree_util.tree_map(lambda x: x[index], self)


@struct.dataclass
class Rays:
  """origins: [..., 3] world-space; directions: [..., 3] unit length, world-space."""
  origins: jax.Array
  directions: jax.Array
