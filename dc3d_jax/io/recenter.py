"""Recenter a cut-out object: tight crop, scale to a fixed fill, paste on a square canvas.

DreamCraft3D's preprocessing (`preprocess_image.py --recenter`, size 1024, border ratio 0.1)
makes the object's longer side 90% of the canvas and centres it. The reference camera
(elevation 0, azimuth 0, distance 3.8, fovy 20) and Zero123's conditioning assume this
framing, so every input goes through it.
"""

import numpy as np

from dc3d_jax.io.images import ImageInputError, resize_area


def _tight_bbox(alpha: np.ndarray, threshold: float) -> tuple[int, int, int, int]:
  """(y0, y1, x0, x1), end-exclusive, of the pixels with alpha > threshold."""
  rows = np.flatnonzero((alpha > threshold).any(axis=1))
  cols = np.flatnonzero((alpha > threshold).any(axis=0))
  if rows.size == 0:
    raise ImageInputError(
        f"recenter: the alpha channel is empty (no pixel has alpha > {threshold}), so "
        "there is no object to centre. Check that the background removal kept the object, "
        "or give an RGBA image whose object is opaque.")
  return rows[0], rows[-1] + 1, cols[0], cols[-1] + 1


def _placement(crop_hw: tuple[int, int], size: int, fill: float):
  """Scaled crop size (h, w), longer side int(fill·size) (921 px of 1024, as the reference),
  and its top-left corner."""
  long_side = max(1, min(size, int(fill * size)))
  scale = long_side / max(crop_hw)
  h, w = (max(1, min(size, round(n * scale))) for n in crop_hw)
  return (h, w), ((size - h) // 2, (size - w) // 2)


def _paste(img: np.ndarray, hw, top_left, size: int) -> np.ndarray:
  """Resizes [h, w, C] to hw and pastes it on a zero (transparent) square canvas."""
  canvas = np.zeros((size, size, img.shape[-1]), np.float32)
  (h, w), (y, x) = hw, top_left
  canvas[y:y + h, x:x + w] = resize_area(img, hw)
  return canvas


def recenter(rgba: np.ndarray, *, size: int, fill: float = 0.9, depth: np.ndarray | None = None,
             threshold: float = 0.0) -> tuple[np.ndarray, np.ndarray | None]:
  """Crops rgba [H, W, 4] to its object, scales and centres it on a [size, size, 4] canvas.

  The object is the tight box of alpha > threshold (the reference uses > 0, so soft matting
  edges count as object). Its longer side becomes int(fill * size) pixels, aspect kept.
  An optional depth [H, W] or [H, W, 1] gets the same crop, scale and offset and comes back
  as [size, size, 1], zero outside the pasted box.
  """
  rgba = np.asarray(rgba, np.float32)
  if rgba.ndim != 3 or rgba.shape[-1] != 4:
    raise ValueError(f"recenter wants rgba [H, W, 4], got {rgba.shape}")
  y0, y1, x0, x1 = _tight_bbox(rgba[..., 3], threshold)
  hw, top_left = _placement((y1 - y0, x1 - x0), size, fill)
  out = _paste(rgba[y0:y1, x0:x1], hw, top_left, size)
  if depth is None:
    return out, None
  depth = np.asarray(depth, np.float32)
  depth = depth[..., None] if depth.ndim == 2 else depth
  if depth.shape[:2] != rgba.shape[:2]:
    raise ImageInputError(f"recenter: depth is {depth.shape[:2]} but the image is "
                          f"{rgba.shape[:2]}; they must be the same size")
  return out, _paste(depth[y0:y1, x0:x1], hw, top_left, size)
