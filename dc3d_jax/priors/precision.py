"""Compute precision of the diffusion priors: bf16 on GPU, fp32 on CPU (docs/ARCHITECTURE.md,
"Priors without downloads").

Fields always train in fp32; only the frozen prior weights and their activations change.
XLA:CPU runs bf16 convolutions slower than fp32 and with less accuracy, hence "auto".
"""

import jax
import jax.numpy as jnp

CHOICES = ("auto", "fp32", "bf16")


def prior_dtype(setting: str):
  """guidance.precision -> the dtype priors are loaded and run in."""
  if setting not in CHOICES:
    raise ValueError(f"config guidance.precision={setting!r}; expected one of {CHOICES}")
  if setting == "auto":
    on_accelerator = any(d.platform in ("gpu", "tpu") for d in jax.devices())
    return jnp.bfloat16 if on_accelerator else jnp.float32
  return jnp.bfloat16 if setting == "bf16" else jnp.float32
