"""The reference image a run starts from, in one of three ways:
  - data.image: the user's file (background removed with u2netp if asked, then recentred);
  - stage 0: no data.image but a prompt: Stable Diffusion draws it, u2netp removes the
    background, it is recentred (reference §2 preprocessing, with u2netp for carvekit);
  - the oracle's ground-truth object rendered at the reference view.
Either way a copy is written to `<workdir>/reference/` so the run's input can be looked at."""

import hashlib
import json
from pathlib import Path

import jax
import numpy as np
from PIL import Image

from dc3d_jax import cameras
from dc3d_jax.geometry import rasterize
from dc3d_jax.io import background, images, recenter, writers
from dc3d_jax.priors import text_to_image


def render_ground_truth(mesh, views: cameras.ViewSettings, size: int) -> tuple:
  """RGBA [S,S,4] and depth [S,S,1] (min-max normalised inside the mask, 0 outside)."""
  camera = cameras.reference_camera(views, size, size)
  out = jax.device_get(rasterize.render_mesh(mesh, camera))
  alpha = out["alpha"]
  rgba = np.concatenate([out["rgb"] * alpha + (1.0 - alpha), alpha], axis=-1)
  return rgba.astype(np.float32), normalized_depth(out["depth"], alpha)


def normalized_depth(depth: np.ndarray, alpha: np.ndarray) -> np.ndarray:
  """Depth scaled to [0, 1] inside the mask and 0 outside (the reference's preprocessing)."""
  inside = alpha > 0.5
  if not inside.any():
    return np.zeros_like(depth)
  lo, hi = depth[inside].min(), depth[inside].max()
  return np.where(inside, (depth - lo) / max(hi - lo, 1e-8), 0.0).astype(np.float32)


def _recentred(rgba, depth, data_cfg) -> tuple:
  if not data_cfg.recenter:
    return rgba, depth
  return recenter.recenter(rgba, size=data_cfg.image_size, fill=data_cfg.fill, depth=depth)


def load_user_reference(data_cfg) -> tuple:
  """RGBA and optional depth from data.image / data.depth, recentred if data.recenter."""
  remover = background.make_background_remover() if data_cfg.remove_background else None
  rgba = images.load_rgba(data_cfg.image, remove_background=remover)
  depth = (images.load_depth(data_cfg.depth, rgba.shape[:2], kind=data_cfg.depth_kind)
           if data_cfg.depth else None)
  return _recentred(rgba, depth, data_cfg)


def _stage0_path(cfg, workdir: Path) -> Path:
  """Generated images are kept per (model, prompt, sampler settings): a re-run reuses one."""
  settings = dict(cfg.stage0.to_dict(), prompt=cfg.prompt, model=cfg.guidance.sd_model,
                  negative_prompt=cfg.guidance.negative_prompt)
  digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:12]
  return workdir / "reference" / f"generated_{digest}.png"


def generate_reference(cfg, workdir: Path, store) -> np.ndarray:
  """Stage 0: prompt -> image (Stable Diffusion) -> u2netp alpha -> recentred RGBA."""
  path = _stage0_path(cfg, workdir)
  if path.exists():
    rgb = np.asarray(Image.open(path).convert("RGB"), np.float32) / 255.0
  else:
    s = cfg.stage0
    rgb = text_to_image.generate_image(
        store.stable_diffusion(), cfg.prompt, negative_prompt=cfg.guidance.negative_prompt,
        steps=s.steps, guidance_scale=s.guidance_scale, size=s.size, seed=s.seed)
    writers.save_png(path, rgb)
  alpha = background.make_background_remover()(rgb)
  rgba, _ = _recentred(np.concatenate([rgb, alpha[..., None]], -1), None, cfg.data)
  return rgba


def prepare(cfg, workdir: Path, ground_truth, store=None) -> dict:
  """-> {"rgba": [S,S,4], "depth": [S,S,1] or None, "source": str}, saved under reference/.

  store: the run's guidance.registry.PriorStore (stage 0 draws with its Stable Diffusion)."""
  views = cameras.ViewSettings.from_config(cfg.data)
  depth = None
  if cfg.data.image:
    rgba, depth = load_user_reference(cfg.data)
    source = str(cfg.data.image)
  elif ground_truth is not None:
    # Already in the reference camera's frame: recentring would move it off the ground truth.
    rgba, depth = render_ground_truth(ground_truth, views, cfg.data.image_size)
    source = f"ground truth '{cfg.guidance.oracle_object}' rendered at the reference view"
  elif cfg.prompt and store is not None:
    rgba = generate_reference(cfg, workdir, store)
    source = f"stage 0: '{cfg.prompt}' drawn by {cfg.guidance.sd_model}"
  else:
    raise ValueError("config data.image is empty: give a reference image "
                     "(--config.data.image=PATH), a prompt for stage 0 (--config.prompt=...), "
                     "or use the oracle prior's object")
  writers.save_png(workdir / "reference" / "rgba.png", rgba)
  if depth is not None:
    writers.save_png(workdir / "reference" / "depth.png", depth)
  return {"rgba": rgba, "depth": depth, "source": source}


def at_resolution(reference: dict, size: int) -> dict:
  """The stage's reference batch at one render resolution (rgb, mask and maybe depth)."""
  arrays = images.reference_arrays(reference["rgba"], reference["depth"], (size, size))
  return {k: v for k, v in arrays.items() if v is not None}
