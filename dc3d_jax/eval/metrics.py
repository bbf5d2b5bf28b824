"""Image metrics on [..., H, W, C] arrays in [0, 1], composited on white before scoring
(DreamCraft3D's protocol, ../shared/reference/evaluation.md)."""

import numpy as np


def psnr(pred: np.ndarray, target: np.ndarray) -> float:
  """Peak signal-to-noise ratio in dB over all pixels and channels (peak 1)."""
  mse = float(np.mean((np.asarray(pred, np.float64) - np.asarray(target, np.float64)) ** 2))
  return float("inf") if mse == 0 else -10.0 * np.log10(mse)


def mask_iou(pred_alpha: np.ndarray, target_alpha: np.ndarray, threshold: float = 0.5) -> float:
  """Intersection over union of the two masks alpha > threshold (1 when both are empty)."""
  a, b = np.asarray(pred_alpha) > threshold, np.asarray(target_alpha) > threshold
  union = np.logical_or(a, b).sum()
  return 1.0 if union == 0 else float(np.logical_and(a, b).sum() / union)
