"""The oracle prior: a denoiser that knows the ground-truth object (docs/ARCHITECTURE.md).

For a camera it renders the ground-truth mesh, x0 = 2·render - 1 at the prior's resolution,
and predicts the noise that maps x_t back to it: ε̂ = (x_t - √ᾱ_t x0)/√(1-ᾱ_t). Under SDS this
gives g = w(t)(ε̂ - ε) = √(ᾱ_t(1-ᾱ_t))·(x - x0): the same code path as a learned prior, with
a known answer, so every stage can be run end to end on CPU and must converge to the object.
Pixel-space, like DeepFloyd IF's 64² stage I.
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from dc3d_jax.core.types import Camera
from dc3d_jax.geometry import primitives, rasterize
from dc3d_jax.priors import noise_schedule


@dataclasses.dataclass(frozen=True)
class OraclePrior:
  resolution: int = 64
  beta_schedule: str = "scaled_linear"
  beta_start: float = 0.00085
  beta_end: float = 0.012
  num_train_timesteps: int = 1000

  def alphas_cumprod(self) -> np.ndarray:
    return noise_schedule.alphas_cumprod(self.beta_schedule, self.beta_start, self.beta_end,
                                         self.num_train_timesteps)

  def encode(self, params, images: jax.Array, key=None) -> jax.Array:
    b, _, _, c = images.shape
    size = (b, self.resolution, self.resolution, c)
    return 2.0 * jax.image.resize(images, size, "bilinear", antialias=False) - 1.0

  def condition(self, params, cameras: Camera) -> jax.Array:
    """[B] cameras -> [B, res, res, 3] ground-truth renders x0 in [-1, 1]."""
    small = cameras.replace(height=self.resolution, width=self.resolution)
    render = jax.vmap(lambda cam: rasterize.render_mesh(params["mesh"], cam)["rgb"])(small)
    return 2.0 * jax.lax.stop_gradient(render) - 1.0

  def predict_noise(self, params, x_t, t, cond) -> jax.Array:
    a = jnp.asarray(self.alphas_cumprod())[t].reshape((-1, 1, 1, 1))
    return (x_t - jnp.sqrt(a) * cond) / jnp.sqrt(1.0 - a)


def oracle_params(mesh: primitives.Mesh) -> dict:
  return {"mesh": mesh}


def ground_truth_mesh(name: str) -> primitives.Mesh:
  """The ground-truth object an oracle knows, by config name."""
  if name == "primitives":
    return primitives.test_object()
  raise ValueError(f"guidance.oracle_object: unknown object {name!r}; expected 'primitives'")
