"""Image metrics on [..., H, W, C] arrays in [0, 1], composited on white before scoring
(DreamCraft3D's protocol, ../shared/reference/evaluation.md).

SSIM (Wang et al. 2004) convention: per channel, Gaussian window of 11 taps with σ = 1.5
(normalised to sum 1), K1 = 0.01, K2 = 0.03, data range L = 1, population (biased) local
variances, and the mean of the SSIM map over the "valid" region (windows that fit inside the
image, i.e. a 5-pixel border dropped) and over channels. This is Wang et al.'s MATLAB
`ssim_index` and scikit-image's `structural_similarity(gaussian_weights=True, sigma=1.5,
use_sample_covariance=False, data_range=1)`.
"""

import numpy as np
from scipy import ndimage

SSIM_WINDOW, SSIM_SIGMA, SSIM_K1, SSIM_K2 = 11, 1.5, 0.01, 0.03


def psnr(pred: np.ndarray, target: np.ndarray) -> float:
  """Peak signal-to-noise ratio in dB over all pixels and channels (peak 1)."""
  mse = float(np.mean((np.asarray(pred, np.float64) - np.asarray(target, np.float64)) ** 2))
  return float("inf") if mse == 0 else -10.0 * np.log10(mse)


def mask_iou(pred_alpha: np.ndarray, target_alpha: np.ndarray, threshold: float = 0.5) -> float:
  """Intersection over union of the two masks alpha > threshold (1 when both are empty)."""
  a, b = np.asarray(pred_alpha) > threshold, np.asarray(target_alpha) > threshold
  union = np.logical_or(a, b).sum()
  return 1.0 if union == 0 else float(np.logical_and(a, b).sum() / union)


def gaussian_window(size: int = SSIM_WINDOW, sigma: float = SSIM_SIGMA) -> np.ndarray:
  """[size] taps exp(-k² / 2σ²), k centred, summing to 1."""
  k = np.arange(size) - (size - 1) / 2.0
  w = np.exp(-k * k / (2.0 * sigma * sigma))
  return w / w.sum()


def _local_mean(img: np.ndarray, window: np.ndarray) -> np.ndarray:
  """Separable weighted mean over [..., H, W, C], keeping only windows inside the image."""
  r = len(window) // 2
  out = ndimage.correlate1d(img, window, axis=-3, mode="constant")
  out = ndimage.correlate1d(out, window, axis=-2, mode="constant")
  return out[..., r:-r, r:-r, :]


def ssim_map(pred: np.ndarray, target: np.ndarray) -> np.ndarray:
  """SSIM at every valid window centre: [..., H, W, C] -> [..., H - 10, W - 10, C]."""
  x, y = np.asarray(pred, np.float64), np.asarray(target, np.float64)
  if x.shape != y.shape or x.ndim < 3 or min(x.shape[-3:-1]) < SSIM_WINDOW:
    raise ValueError(f"ssim wants equal [..., H, W, C] shapes with H, W >= {SSIM_WINDOW}; "
                     f"got {x.shape} and {y.shape}")
  w = gaussian_window()
  mx, my = _local_mean(x, w), _local_mean(y, w)
  vx = _local_mean(x * x, w) - mx * mx
  vy = _local_mean(y * y, w) - my * my
  cxy = _local_mean(x * y, w) - mx * my
  c1, c2 = SSIM_K1 ** 2, SSIM_K2 ** 2
  return ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx * mx + my * my + c1) * (vx + vy + c2))


def ssim_per_image(pred: np.ndarray, target: np.ndarray) -> np.ndarray:
  """[N, H, W, C] pairs -> [N] mean SSIM of each."""
  return ssim_map(pred, target).mean(axis=(-3, -2, -1))


def ssim(pred: np.ndarray, target: np.ndarray) -> float:
  """Mean SSIM of one [H, W, C] pair (or the mean over a batch of pairs)."""
  return float(ssim_map(pred, target).mean())
