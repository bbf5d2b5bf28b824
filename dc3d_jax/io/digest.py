"""Content digests of input files, for a work dir's provenance (what a run was made from)."""

import hashlib
from pathlib import Path


def file_sha256(path: str | Path) -> str:
  """The hex sha256 of a file's bytes, read in 1 MiB blocks."""
  digest = hashlib.sha256()
  with open(path, "rb") as f:
    for block in iter(lambda: f.read(1 << 20), b""):
      digest.update(block)
  return digest.hexdigest()
