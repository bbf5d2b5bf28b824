"""Prompt embeddings computed once per (model source, prompt): in memory, in an explicit
`TextEmbeddingCache` the caller owns, and on disk as `<cache_dir>/<sha256>.npy`. Shared by the
text priors (Stable Diffusion's CLIP, DeepFloyd IF's T5), whose encoders are run only for the
prompts found in neither.
"""

import dataclasses
import hashlib
import os
from typing import Callable, Optional

import numpy as np


@dataclasses.dataclass
class TextEmbeddingCache:
  """In-memory text embeddings keyed by `embedding_key`; `encoded` counts prompts that went
  through a text encoder (a cache hit leaves it unchanged)."""
  entries: dict = dataclasses.field(default_factory=dict)
  encoded: int = 0


def embedding_key(source: str, prompt: str) -> str:
  """sha256 of (model source, prompt): the cache key and the on-disk file name."""
  return hashlib.sha256(f"{source}\x00{prompt}".encode("utf-8")).hexdigest()


def _load_cached(cache: TextEmbeddingCache, cache_dir, key: str) -> Optional[np.ndarray]:
  if key not in cache.entries and cache_dir is not None:
    path = os.path.join(cache_dir, key + ".npy")
    if os.path.exists(path):
      cache.entries[key] = np.load(path)
  return cache.entries.get(key)


def _store(cache: TextEmbeddingCache, cache_dir, key: str, value: np.ndarray) -> None:
  cache.entries[key] = value
  if cache_dir is not None:
    os.makedirs(cache_dir, exist_ok=True)
    # Write then rename, so a concurrent run never reads a half-written file.
    tmp = os.path.join(cache_dir, f"{key}.{os.getpid()}.tmp.npy")
    np.save(tmp, value)
    os.replace(tmp, os.path.join(cache_dir, key + ".npy"))


def cached_embeddings(source: str, texts: list, encode: Callable[[list], np.ndarray], *,
                      cache_dir=None, cache: Optional[TextEmbeddingCache] = None) -> np.ndarray:
  """[N] prompts -> [N, L, D] float32 embeddings, each looked up in `cache` (memory), then in
  `cache_dir` (disk); `encode` (a list of prompts -> [n, L, D]) runs once on the rest, if any."""
  if cache_dir is not None and not source:
    raise ValueError("text embeddings: an on-disk cache needs models.source to name the "
                     "weights; otherwise embeddings of different models would collide")
  cache = TextEmbeddingCache() if cache is None else cache
  keys = [embedding_key(source, p) for p in texts]
  missing = {k: p for k, p in zip(keys, texts) if _load_cached(cache, cache_dir, k) is None}
  if missing:
    values = encode(list(missing.values()))
    cache.encoded += len(missing)
    for key, value in zip(missing, values):
      _store(cache, cache_dir, key, np.asarray(value, np.float32))
  return np.stack([cache.entries[k] for k in keys])
