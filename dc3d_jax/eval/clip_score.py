"""CLIP image similarity between the reference image and rendered views (DreamCraft3D's metric).

    load_clip_scorer(folder)                  -> ClipScorer  (a local CLIPModel folder)
    image_features(scorer, images)            -> [N, D] unit-length projected CLIP embeddings
    clip_similarity(scorer, reference, views) -> (mean cosine, [N] per view)

Reference protocol (`metric_utils.py`, ../shared/reference/evaluation.md): images composited
on white, area-resized to the encoder's input size (224 for the ViT-H/14 and bigG/14 it names),
normalised with the CLIP mean/std of the model's preprocessor config (OpenAI's when absent),
projected CLS embedding, L2-normalised; score = mean over the 120 orbit views of the cosine
with the reference image. Weights come from a local folder written by transformers'
`CLIPModel.save_pretrained` (or a CLIPVisionModelWithProjection folder); nothing ships here
and nothing is downloaded. Loading reuses the priors' CLIP vision loader
(`priors/loading.py`: transformers' FlaxCLIPVisionModel plus the visual projection).
"""

import dataclasses
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from dc3d_jax.io.images import resize_area
from dc3d_jax.priors import loading
from dc3d_jax.priors.torch_semantics import torch_semantics


@dataclasses.dataclass(frozen=True)
class ClipScorer:
  """A loaded CLIP image tower: `pooled(params, pixels [N, S, S, 3]) -> [N, hidden]` (jitted
  once at load), its params, projection [hidden, D], and the input size and normalisation."""
  pooled: Any
  params: Any
  projection: Any
  mean: tuple
  std: tuple
  size: int


def load_clip_scorer(folder) -> ClipScorer:
  source = loading.clip_vision_from_folder(Path(folder))
  model, params, projection = loading.build_clip_vision(source, jnp.float32)
  # The Flax module itself takes NHWC (the FlaxCLIPVisionModel wrapper would transpose NCHW).
  pooled = jax.jit(lambda p, x: model.module.apply({"params": p}, x).pooler_output)
  return ClipScorer(pooled, params, projection["kernel"], source.mean, source.std, source.size)


def preprocess(scorer: ClipScorer, images: np.ndarray) -> np.ndarray:
  """[N, H, W, 3] in [0, 1] (on white) -> [N, S, S, 3] normalised encoder input."""
  s = scorer.size
  small = np.stack([resize_area(img, (s, s)) for img in np.asarray(images, np.float32)])
  return (small - np.asarray(scorer.mean, np.float32)) / np.asarray(scorer.std, np.float32)


def image_features(scorer: ClipScorer, images: np.ndarray, batch: int = 16) -> np.ndarray:
  """[N, H, W, 3] in [0, 1] -> [N, D] L2-normalised projected image embeddings, computed in
  fixed batches (the last one padded), so one compilation serves any N."""
  pixels = preprocess(scorer, images)
  n = len(pixels)
  pixels = np.concatenate([pixels, np.repeat(pixels[-1:], (-n) % batch, 0)])  # one shape
  out = []
  with torch_semantics():
    for i in range(0, len(pixels), batch):
      pooled = scorer.pooled(scorer.params, pixels[i:i + batch])
      out.append(np.asarray(pooled @ scorer.projection))
  z = np.concatenate(out)[:n].astype(np.float64)
  return z / np.linalg.norm(z, axis=-1, keepdims=True)


def clip_similarity(scorer: ClipScorer, reference: np.ndarray, views: np.ndarray):
  """Mean and per-view cosine of each [H, W, 3] view with the [H, W, 3] reference (on white)."""
  z = image_features(scorer, np.concatenate([np.asarray(reference)[None], np.asarray(views)]))
  per_view = z[1:] @ z[0]
  return float(per_view.mean()), per_view.tolist()
