"""Contextual distance (Mechrez et al. 2018) on VGG19 relu5_4 features: DreamCraft3D's CX metric.

    load_vgg19(path)                                   -> params (jnp arrays)
    vgg19_relu5_4(params, images)                      -> [N, H/16, W/16, 512]
    contextual_loss(x, y, band_width)                  -> [N]   x, y: [N, P, C] feature sets
    contextual_distance(params, reference, views, ...) -> (mean, [N] per view)

Reference protocol (`metric_utils.py` with the `contextual_loss` package's
`ContextualLoss(use_vgg=True, vgg_layer='relu5_4')`, band width h = 0.5, cosine distance):
both images on white, area-resized to 512², ImageNet mean/std normalised, VGG19 features up to
relu5_4. With x the reference's features and y a view's, both [P, C] sets of positions:
  - centre both on the channel mean of y, μ = mean_j y_j; unit-normalise each position
    (ε = 1e-12, as torch's F.normalize); d_ij = 1 − cos(x_i, y_j);
  - d̃_ij = d_ij / (min_k d_ik + 1e-5)            (relative to x_i's nearest y)
  - w_ij = exp((1 − d̃_ij) / h),  CX_ij = w_ij / Σ_k w_ik
  - CX = mean_j max_i CX_ij,  loss = −log(CX + 1e-5).
Identical feature sets give −log(1 + 1e-5) (every x_i's own y_i takes all the weight).

Weights: a torchvision-format VGG19 state dict (`features.{i}.weight` [out, in, 3, 3] and
`.bias` for the 16 convs at features indices 0, 2, 5, ..., 34), read with
`torch.load(weights_only=True)` or from safetensors. None ship here.
"""

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from dc3d_jax.errors import ModelError, ModelNotFound
from dc3d_jax.io.images import resize_area

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# torchvision vgg19 `features` (configuration "E"): "M" is a 2×2/2 max pool, numbers are the
# output channels of 3×3 convs (padding 1) each followed by a ReLU. relu5_4 is index 35.
_VGG19_LAYERS = (64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M",
                 512, 512, 512, 512, "M", 512, 512, 512, 512)


def conv_indices() -> list:
  """torchvision `features` index of each conv up to conv5_4 (0, 2, 5, 7, 10, ..., 34)."""
  out, index = [], 0
  for v in _VGG19_LAYERS:
    if v == "M":
      index += 1
    else:
      out.append(index)
      index += 2   # conv, ReLU
  return out


def _read_state_dict(path: Path) -> dict:
  if path.suffix == ".safetensors":
    from safetensors.numpy import load_file
    return load_file(str(path))
  import torch
  try:
    state = torch.load(str(path), map_location="cpu", weights_only=True)
  except Exception as err:  # a pickle with code in it, or not a torch file at all
    raise ModelError(f"{path}: not a weights-only torch state dict ({err})") from err
  return {k: v.numpy() for k, v in state.items() if hasattr(v, "numpy")}


def load_vgg19(path) -> dict:
  """{"conv{n}.kernel" [3, 3, in, out], "conv{n}.bias"} for the 16 convs, from a torchvision
  VGG19 state dict (keys `features.{i}.*`, or without the `features.` prefix)."""
  path = Path(path)
  if not path.is_file():
    raise ModelNotFound(f"{path}: no VGG19 weights there (eval contextual metric); give a "
                        "torchvision vgg19 state dict (.pth) or leave the VGG19 path empty")
  state = _read_state_dict(path)
  params = {}
  prefix = "features." if any(k.startswith("features.") for k in state) else ""
  for n, i in enumerate(conv_indices()):
    weight, bias = f"{prefix}{i}.weight", f"{prefix}{i}.bias"
    for name in (weight, bias):
      if name not in state:
        raise ModelError(f"{path}: missing {name}; expected a torchvision vgg19 state dict")
    params[f"conv{n}.kernel"] = jnp.asarray(np.transpose(state[weight], (2, 3, 1, 0)),
                                            jnp.float32)
    params[f"conv{n}.bias"] = jnp.asarray(state[bias], jnp.float32)
  return params


@jax.jit
def vgg19_relu5_4(params: dict, images: jax.Array) -> jax.Array:
  """[N, H, W, 3] in [0, 1] -> relu5_4 features [N, H/16, W/16, 512] (NHWC)."""
  x = (images - jnp.asarray(IMAGENET_MEAN)) / jnp.asarray(IMAGENET_STD)
  n = 0
  for v in _VGG19_LAYERS:
    if v == "M":
      x = jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, 2, 2, 1), (1, 2, 2, 1), "VALID")
      continue
    x = jax.lax.conv_general_dilated(x, params[f"conv{n}.kernel"], (1, 1), ((1, 1), (1, 1)),
                                     dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                     precision=jax.lax.Precision.HIGHEST)
    x = jax.nn.relu(x + params[f"conv{n}.bias"])
    n += 1
  return x


def _unit(v: jax.Array) -> jax.Array:
  return v / jnp.maximum(jnp.linalg.norm(v, axis=-1, keepdims=True), 1e-12)


@jax.jit
def contextual_loss(x: jax.Array, y: jax.Array, band_width: float = 0.5) -> jax.Array:
  """[N, P, C] and [N, Q, C] feature sets -> [N] contextual loss (module docstring)."""
  mu = jnp.mean(y, axis=1, keepdims=True)
  cos = jnp.einsum("npc,nqc->npq", _unit(x - mu), _unit(y - mu),
                   precision=jax.lax.Precision.HIGHEST)
  d = 1.0 - cos
  d_rel = d / (jnp.min(d, axis=2, keepdims=True) + 1e-5)
  cx = jax.nn.softmax((1.0 - d_rel) / band_width, axis=2)   # w_ij / Σ_k w_ik, overflow-safe
  return -jnp.log(jnp.mean(jnp.max(cx, axis=1), axis=1) + 1e-5)


def _features(params: dict, images: np.ndarray, size: int) -> jax.Array:
  small = np.stack([resize_area(img, (size, size)) for img in np.asarray(images, np.float32)])
  f = vgg19_relu5_4(params, small)
  return f.reshape(f.shape[0], -1, f.shape[-1])


def contextual_distance(params: dict, reference: np.ndarray, views: np.ndarray, *,
                        size: int = 512, batch: int = 4):
  """Mean and per-view CX of each [H, W, 3] view (on white) against the reference, in fixed
  batches of views (the last one padded), so one compilation serves any number of views."""
  views = np.asarray(views, np.float32)
  n = len(views)
  views = np.concatenate([views, np.repeat(views[-1:], (-n) % batch, 0)])
  ref = _features(params, np.asarray(reference)[None], size)
  x = jnp.broadcast_to(ref, (batch,) + ref.shape[1:])
  per_view = []
  for i in range(0, len(views), batch):
    per_view.extend(np.asarray(contextual_loss(x, _features(params, views[i:i + batch], size))))
  per_view = [float(v) for v in per_view[:n]]
  return float(np.mean(per_view)), per_view
