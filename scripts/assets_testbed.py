"""Fetches the testbed's ground-truth meshes and images (issue 10) into <dest>/testbed/.

    fetch_testbed(dest) -> str      a one-line account; called by scripts/fetch_assets.py

Sources (../shared/reference/assets.md §1-2), each through its ordinary client:
  Debian libcgal-demo 5.5.1-2      apt-get download; dpkg-deb's data -> usr/share/doc/
                                   libcgal-dev/data.tar.gz -> data/meshes/<name>.off
  Debian assimp-testmodels         usr/share/assimp/models/Collada/duck.dae + duckCM.tga,
  5.2.5~ds0-1                      models/OBJ/spider.obj + .mtl + its 5 JPEG textures
  PyPI pymeshlab 2025.7.post1      pip download (one manylinux wheel, 106 MB, not installed);
                                   pymeshlab/tests/sample_meshes/bunny10k_textured.obj + .mtl
                                   + TextureDouble_A.png
  npm @lobehub/fluent-emoji-3d     npm pack; package/assets/<codepoint>.webp (256² RGBA)
  1.1.0
Only the files the project uses are kept: the CGAL meshes named in
dc3d_jax/testbed/catalog.py, the textured models and their textures, and EMOJI. Every kept
file's sha256 is pinned in scripts/assets_testbed.sha256.json and checked; the same table is
written to <dest>/testbed/manifest.json. Idempotent (a complete, verified folder is left
alone) and atomic (the folder is assembled under a temporary name and moved into place).
"""

import hashlib
import io
import json
import os
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:  # run as a script, only scripts/ is on the path
  sys.path.insert(0, str(REPO_ROOT))

from dc3d_jax.errors import AssetError  # noqa: E402
from dc3d_jax.testbed import catalog  # noqa: E402

CGAL_DEB = "libcgal-demo=5.5.1-2"
ASSIMP_DEB = "assimp-testmodels=5.2.5~ds0-1"
EMOJI_NPM = "@lobehub/fluent-emoji-3d@1.1.0"
CGAL_DATA = "./usr/share/doc/libcgal-dev/data.tar.gz"
ASSIMP_DIR = "./usr/share/assimp/models/"
# Data only: the wheel is unpacked, never installed, so one platform's wheel serves all.
PYMESHLAB_VERSION = "2025.7.post1"
PYMESHLAB_WHEEL = (f"pymeshlab=={PYMESHLAB_VERSION}", "--platform", "manylinux_2_35_x86_64",
                   "--python-version", "3.11")
PYMESHLAB_DIR = f"pymeshlab-{PYMESHLAB_VERSION}.data/purelib/pymeshlab/tests/sample_meshes/"
# Fluent 3D emoji of single objects on transparent backgrounds (image-only runs).
EMOJI = {"1f986": "duck", "1f9f8": "teddy bear", "1f34e": "apple", "1f680": "rocket",
         "1fa91": "chair", "1f697": "car", "1f344": "mushroom", "1f335": "cactus",
         "1fad6": "teapot", "1f47e": "alien"}
SOURCES = f"{CGAL_DEB}, {ASSIMP_DEB}, {EMOJI_NPM}, {PYMESHLAB_WHEEL[0]} (PyPI)"
PINNED = Path(__file__).with_name("assets_testbed.sha256.json")
FOLDER = "testbed"


def sha256_of(path: Path) -> str:
  digest = hashlib.sha256()
  with open(path, "rb") as f:
    for block in iter(lambda: f.read(1 << 20), b""):
      digest.update(block)
  return digest.hexdigest()


def wanted() -> list[str]:
  """Paths under <dest>/testbed/ that the project uses."""
  files = {e.file for e in catalog.OBJECTS.values()}
  files |= {e.texture for e in catalog.OBJECTS.values() if e.texture}
  files |= {f for e in catalog.OBJECTS.values() for f in e.sidecars}
  return sorted(files | {f"emoji/{code}.webp" for code in EMOJI})


def _run(command: list[str], cwd: Path, what: str) -> None:
  try:
    result = subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=900)
  except (OSError, subprocess.TimeoutExpired) as err:
    raise AssetError(f"{what}: `{' '.join(command)}` could not run ({err})") from err
  if result.returncode != 0:
    tail = "\n  ".join((result.stderr or result.stdout).strip().splitlines()[-4:])
    raise AssetError(f"{what}: `{' '.join(command)}` failed (exit {result.returncode}); check "
                     f"access to the package registry (apt sources / npm registry / PyPI):"
                     f"\n  {tail}")


def _deb_payload(deb: Path) -> tarfile.TarFile:
  """The data archive of a .deb (dpkg-deb --fsys-tarfile), opened in memory."""
  result = subprocess.run(["dpkg-deb", "--fsys-tarfile", str(deb)], capture_output=True)
  if result.returncode != 0:
    raise AssetError(f"{deb}: dpkg-deb cannot read the package ({result.stderr[-300:]!r})")
  return tarfile.open(fileobj=io.BytesIO(result.stdout))


def _member_bytes(archive, member: str) -> bytes | None:
  """A member of a tar archive or a zip file (a wheel), or None where it has none."""
  try:
    if isinstance(archive, zipfile.ZipFile):
      return archive.read(member)
    data = archive.extractfile(member)
  except KeyError:
    return None
  return None if data is None else data.read()


def _extract(archive, members: dict[str, Path], source: str) -> None:
  for member, out in members.items():
    data = _member_bytes(archive, member)
    if data is None:
      raise AssetError(f"{source}: has no {member}; the package changed? expected "
                       f"{SOURCES}")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(data)


def _assimp_member(name: str) -> str:
  """assimp/duck.dae -> its COLLADA folder; assimp/OBJ/x -> models/OBJ/x."""
  rest = name[len("assimp/"):]
  return ASSIMP_DIR + (rest if "/" in rest else "Collada/" + rest)


def _download(tmp: Path, out: Path) -> None:
  """Downloads the four packages into tmp and extracts the wanted files under out."""
  _run(["apt-get", "download", CGAL_DEB, ASSIMP_DEB], tmp, "Debian packages")
  _run(["npm", "pack", EMOJI_NPM, "--silent", "--pack-destination", str(tmp)], tmp,
       "npm package")
  _run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
        "--disable-pip-version-check", "--quiet", *PYMESHLAB_WHEEL, "-d", str(tmp)], tmp,
       "PyPI wheel")
  files = wanted()
  cgal_deb, assimp_deb = (next(tmp.glob(f"{name.split('=')[0]}_*.deb"))
                          for name in (CGAL_DEB, ASSIMP_DEB))
  data = _deb_payload(cgal_deb).extractfile(CGAL_DATA)
  with tarfile.open(fileobj=io.BytesIO(data.read())) as meshes:
    _extract(meshes, {f"data/meshes/{f[5:]}": out / f for f in files if f.startswith("cgal/")},
             cgal_deb.name)
  _extract(_deb_payload(assimp_deb), {_assimp_member(f): out / f for f in files
                                      if f.startswith("assimp/")}, assimp_deb.name)
  wheel = next(tmp.glob("pymeshlab-*.whl"))
  with zipfile.ZipFile(wheel) as archive:
    _extract(archive, {PYMESHLAB_DIR + f[10:]: out / f for f in files
                       if f.startswith("pymeshlab/")}, wheel.name)
  with tarfile.open(next(tmp.glob("*.tgz"))) as emoji:
    _extract(emoji, {f"package/assets/{f[6:]}": out / f for f in files
                     if f.startswith("emoji/")}, EMOJI_NPM)


def verify(folder: Path, pinned: dict) -> list[str]:
  """Files of `pinned` missing from folder or with another sha256 (empty: all good)."""
  return [name for name, digest in pinned.items()
          if not (folder / name).is_file() or sha256_of(folder / name) != digest]


def fetch_testbed(dest) -> str:
  """Ensures <dest>/testbed/ holds every wanted file with its pinned sha256."""
  dest = Path(dest)
  target = dest / FOLDER
  pinned = json.loads(PINNED.read_text())
  missing = sorted(set(wanted()) - set(pinned))
  if missing:
    raise AssetError(f"{PINNED}: no sha256 pinned for {missing}; add them (sha256 of the file "
                     "as extracted from its package)")
  pinned = {name: pinned[name] for name in wanted()}
  if not verify(target, pinned):
    return f"{target}: already present ({len(pinned)} files, sha256 checked), nothing to do"
  dest.mkdir(parents=True, exist_ok=True)
  with tempfile.TemporaryDirectory(dir=dest, prefix=".fetch-testbed-") as tmp:
    tmp = Path(tmp)
    staged = tmp / FOLDER
    _download(tmp, staged)
    bad = verify(staged, pinned)
    if bad:
      raise AssetError(f"testbed assets: sha256 mismatch for {bad[:5]} ({len(bad)} files); "
                       f"the packages differ from {SOURCES}")
    (staged / "manifest.json").write_text(json.dumps(pinned, indent=1, sort_keys=True) + "\n")
    if target.exists():  # incomplete or stale: move it aside, then swap in the new folder
      os.replace(target, tmp / "old")
    os.replace(staged, target)
  return f"{target}: {len(pinned)} files extracted from {SOURCES}"


def pin_current(folder: Path) -> None:
  """Maintainer helper: writes PINNED from an extracted folder (after checking it by eye)."""
  PINNED.write_text(json.dumps({n: sha256_of(folder / n) for n in wanted()}, indent=1,
                               sort_keys=True) + "\n")


if __name__ == "__main__":
  print(fetch_testbed(Path(sys.argv[1]) if len(sys.argv) > 1 else REPO_ROOT / "assets"))
