"""Load reference images and depth maps into float32 arrays, and resize them.

Conventions (docs/ARCHITECTURE.md): images are float32 in [0, 1], [H, W, C], straight (not
premultiplied) alpha; masks and depth are [H, W, 1]. Host-side NumPy/PIL only, no JAX.

The reference loader (DreamCraft3D `data/image.py`) resizes with OpenCV's INTER_AREA, takes
mask = alpha > 0.5 and depth = png / 255; `reference_arrays` reproduces that contract.

Depth convention: a reference depth map grows with distance, near = dark, far = bright, as
the reference's preprocessing writes it (Omnidata depth, min-max normalised to [0, 1] inside
the mask, 0 outside). Monocular estimators often give disparity instead (near = bright);
`load_depth(kind="disparity")` turns it into depth's direction (`DEPTH_KINDS`).
"""

import os
from typing import Callable

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from dc3d_jax import errors

# Modes whose pixels carry their own alpha; "P"/"L"/"RGB" may instead carry a tRNS entry.
_ALPHA_MODES = ("RGBA", "LA", "PA", "RGBa", "La")
_SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I")

BackgroundRemover = Callable[[np.ndarray], np.ndarray]


# A user-supplied image cannot be used as given; the message says how to fix it.
ImageInputError = errors.InputError


class ImageNotFoundError(errors.InputError, FileNotFoundError):
  """A user-supplied image path that names no file."""


def _open(path) -> Image.Image:
  """Opens and fully decodes an image; errors name the file."""
  path = os.fspath(path)
  if not os.path.exists(path):
    raise ImageNotFoundError(f"{path}: no such image file; check the path (config data.image "
                             "/ data.depth)")
  try:
    img = Image.open(path)
    img.load()  # decode now, so a truncated file fails here and not later
  except (UnidentifiedImageError, Image.DecompressionBombError, OSError, SyntaxError,
          ValueError) as err:
    raise ImageInputError(f"{path}: cannot read the image ({err})") from err
  return img


def _has_alpha(img: Image.Image) -> bool:
  return img.mode in _ALPHA_MODES or "transparency" in img.info


def _no_background_error(path) -> ImageInputError:
  return ImageInputError(
      f"{os.fspath(path)}: the image has no transparent background (no alpha channel, or "
      "an alpha channel that is opaque everywhere). DreamCraft3D needs the object cut out. "
      "Pass --config.data.remove_background=True to remove the background automatically, "
      "or give an RGBA image (PNG/WebP) whose background is transparent.")


def _alpha_from(remove_background: BackgroundRemover, rgb: np.ndarray, path) -> np.ndarray:
  """Runs the background remover and checks its output: [H, W] float in [0, 1]."""
  alpha = np.asarray(remove_background(rgb), dtype=np.float32)
  if alpha.ndim == 3 and alpha.shape[-1] == 1:
    alpha = alpha[..., 0]
  if alpha.shape != rgb.shape[:2]:
    raise ValueError(f"{os.fspath(path)}: background remover returned alpha of shape "
                     f"{alpha.shape}, expected {rgb.shape[:2]}")
  return np.clip(alpha, 0.0, 1.0)


def load_rgba(path, *, remove_background: BackgroundRemover | None = None) -> np.ndarray:
  """Loads a PNG/WebP/JPEG as [H, W, 4] float32 in [0, 1] with straight alpha.

  An image without a usable alpha raises ImageInputError, unless `remove_background`
  (rgb [H, W, 3] float32 -> alpha [H, W] float32) is given, which then builds the alpha.
  An image that already has a transparent background keeps its own alpha.
  """
  if remove_background is not None and not callable(remove_background):
    raise TypeError("remove_background must be a callable rgb -> alpha or None; the CLI "
                    "turns data.remove_background=True into one")
  img = ImageOps.exif_transpose(_open(path))  # phone JPEGs store rotation in EXIF
  rgba = np.asarray(img.convert("RGBA" if _has_alpha(img) else "RGB"), np.float32) / 255.0
  if rgba.shape[-1] == 4 and rgba[..., 3].min() < 1.0:
    return rgba
  rgb = np.ascontiguousarray(rgba[..., :3])
  if remove_background is None:
    raise _no_background_error(path)
  alpha = _alpha_from(remove_background, rgb, path)
  return np.concatenate([rgb, alpha[..., None]], axis=-1)


def _grey_values(img: Image.Image, path) -> np.ndarray:
  """[H, W] float32 in [0, 1] from a single-channel (or equal-channel) image."""
  if img.mode in _SIXTEEN_BIT_MODES:  # PIL opens 16-bit grey PNGs as I;16 (or I)
    return np.asarray(img, np.float32) / 65535.0
  if img.mode == "F":
    return np.asarray(img, np.float32)
  if img.mode in ("L", "LA", "1"):
    return np.asarray(img.getchannel(0).convert("L"), np.float32) / 255.0
  rgb = np.asarray(img.convert("RGB"))
  if not (np.array_equal(rgb[..., 0], rgb[..., 1]) and np.array_equal(rgb[..., 0], rgb[..., 2])):
    # The reference's Pearson depth loss fails on such maps with "Predictions and targets
    # must have the same shape" (DreamCraft3D issue #22); say what is wrong instead.
    raise ImageInputError(
        f"{os.fspath(path)}: depth must be a single-channel (greyscale) image, but it has "
        f"3 different colour channels (mode {img.mode}). Save the depth map as a 8- or "
        "16-bit greyscale PNG.")
  return rgb[..., 0].astype(np.float32) / 255.0


DEPTH_KINDS = ("depth", "disparity")


def load_depth(path, shape_hw: tuple[int, int] | None = None, kind: str = "depth") -> np.ndarray:
  """Loads a depth map as [H, W, 1] float32 in [0, 1] that grows with distance (near = dark).

  The map is 8/16-bit grey divided by 255/65535; a 3-channel image is accepted when its
  channels are equal. kind (data.depth_kind): "depth" is taken as it is, the reference's
  convention (Omnidata depth, min-max normalised inside the mask, near = dark); "disparity"
  (near = bright, e.g. MiDaS-style inverse depth) becomes 1 - value. A normalised disparity
  has lost the shift that 1/disparity would need, but the loss that reads the map
  (losses.depth_rel, 1 - Pearson correlation inside the mask) ignores scale and shift, so
  negating is the direction fix that matters: for an object at the reference distance the
  loss is then the depth map's to within a few 1e-3 (tests/test_io.py). Pixels outside the
  mask are not read. With `shape_hw` the map is resized (resize_area) to that (h, w).
  """
  if kind not in DEPTH_KINDS:
    raise errors.ConfigError(f"config data.depth_kind={kind!r}; expected one of {DEPTH_KINDS} "
                      "(disparity: near is bright)")
  depth = _grey_values(_open(path), path)[..., None]
  if kind == "disparity":
    depth = 1.0 - depth
  if shape_hw is not None and depth.shape[:2] != tuple(shape_hw):
    depth = resize_area(depth, shape_hw)
  return depth


def _area_weights(n_in: int, n_out: int) -> np.ndarray:
  """[n_out, n_in] box-filter weights: exact overlap of output and input pixel spans."""
  scale = n_in / n_out
  edges = np.arange(n_out + 1) * scale
  lo, hi = edges[:-1, None], edges[1:, None]
  src = np.arange(n_in)[None, :]
  overlap = np.clip(np.minimum(hi, src + 1) - np.maximum(lo, src), 0.0, None)
  return overlap / scale


def _bilinear_weights(n_in: int, n_out: int) -> np.ndarray:
  """[n_out, n_in] linear-interpolation weights at pixel centres (half-pixel convention)."""
  x = np.clip((np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5, 0.0, n_in - 1)
  lo = np.floor(x).astype(int)
  hi = np.minimum(lo + 1, n_in - 1)
  frac = x - lo
  w = np.zeros((n_out, n_in))
  np.add.at(w, (np.arange(n_out), lo), 1.0 - frac)
  np.add.at(w, (np.arange(n_out), hi), frac)
  return w


def _axis_weights(n_in: int, n_out: int) -> np.ndarray | None:
  """Box filter when shrinking (as INTER_AREA), bilinear when growing; None if equal."""
  if n_out == n_in:
    return None
  weights = _area_weights if n_out < n_in else _bilinear_weights
  return weights(n_in, n_out).astype(np.float32)


def _resize_linear(img: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
  """Separable resize of [H, W, C] as two matrix products."""
  (h_in, w_in, c), (h, w) = img.shape, hw
  wy, wx = _axis_weights(h_in, h), _axis_weights(w_in, w)
  out = img
  if wy is not None:
    out = (wy @ out.reshape(h_in, w_in * c)).reshape(h, w_in, c)
  if wx is not None:
    out = np.tensordot(wx, out, axes=([1], [1])).transpose(1, 0, 2)
  return np.ascontiguousarray(out, dtype=np.float32)


def resize_area(img: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
  """Resizes [H, W, C] float32 to [h, w, C]: area average down, bilinear up, per axis.

  For C = 4 (straight RGBA) colour is resized premultiplied and divided back: resizing
  straight colour would average in the (meaningless, often black) colour of transparent
  pixels and leave a dark fringe around the object.
  """
  img = np.asarray(img, np.float32)
  h, w = int(hw[0]), int(hw[1])
  if img.ndim != 3 or h < 1 or w < 1:
    raise ValueError(f"resize_area wants [H, W, C] and a positive (h, w); got {img.shape}, {hw}")
  if img.shape[-1] != 4:
    return _resize_linear(img, (h, w))
  alpha = img[..., 3:]
  out = _resize_linear(np.concatenate([img[..., :3] * alpha, alpha], -1), (h, w))
  alpha = np.clip(out[..., 3:], 0.0, 1.0)
  rgb = np.divide(out[..., :3], alpha, out=np.zeros_like(out[..., :3]), where=alpha > 0)
  return np.concatenate([np.clip(rgb, 0.0, 1.0), alpha], -1)


def reference_arrays(rgba: np.ndarray, depth: np.ndarray | None,
                     hw: tuple[int, int]) -> dict[str, np.ndarray | None]:
  """What a stage consumes at one render resolution (h, w).

  Returns rgb [h, w, 3] (straight: the loss composites it over the rendered background),
  mask [h, w, 1] = alpha > 0.5 as float32, and depth [h, w, 1] or None.
  """
  small = resize_area(rgba, hw)
  out = {"rgb": small[..., :3],
         "mask": (small[..., 3:] > 0.5).astype(np.float32),
         "depth": None}
  if depth is not None:
    depth = np.asarray(depth, np.float32)
    out["depth"] = resize_area(depth[..., None] if depth.ndim == 2 else depth, hw)
  return out
