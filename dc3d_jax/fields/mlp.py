"""The reference's small MLP heads: in -> 64 -> out, one hidden ReLU, no biases (reference §1).

Initialised like PyTorch's nn.Linear default, U(-1/√fan_in, 1/√fan_in), which is Flax's
variance_scaling(1/3, fan_in, uniform).
"""

from typing import Sequence

import flax.linen as nn
import jax

TORCH_LINEAR_INIT = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")


class VanillaMLP(nn.Module):
  hidden: Sequence[int] = (64,)
  out_dim: int = 1

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    for i, width in enumerate(self.hidden):
      x = nn.relu(nn.Dense(width, use_bias=False, kernel_init=TORCH_LINEAR_INIT,
                           name=f"dense_{i}")(x))
    return nn.Dense(self.out_dim, use_bias=False, kernel_init=TORCH_LINEAR_INIT,
                    name="out")(x)
