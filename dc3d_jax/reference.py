"""The reference image a run starts from: loaded from the user's file (and recentred), or
rendered from the oracle's ground-truth object. Either way a copy is written to
`<workdir>/reference/` so the run's input can be looked at."""

from pathlib import Path

import jax
import numpy as np

from dc3d_jax import cameras
from dc3d_jax.geometry import rasterize
from dc3d_jax.io import images, recenter, writers


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


def load_user_reference(data_cfg) -> tuple:
  """RGBA and optional depth from data.image / data.depth, recentred if data.recenter."""
  if data_cfg.remove_background:
    raise ValueError("config data.remove_background=True: background removal is not "
                     "available yet; give an RGBA image with a transparent background")
  rgba = images.load_rgba(data_cfg.image)
  depth = images.load_depth(data_cfg.depth, rgba.shape[:2]) if data_cfg.depth else None
  if data_cfg.recenter:
    rgba, depth = recenter.recenter(rgba, size=data_cfg.image_size, fill=data_cfg.fill,
                                    depth=depth)
  return rgba, depth


def prepare(cfg, workdir: Path, ground_truth) -> dict:
  """-> {"rgba": [S,S,4], "depth": [S,S,1] or None, "source": str}, saved under reference/."""
  views = cameras.ViewSettings.from_config(cfg.data)
  if cfg.data.image:
    rgba, depth = load_user_reference(cfg.data)
    source = str(cfg.data.image)
  elif ground_truth is not None:
    # Already in the reference camera's frame: recentring would move it off the ground truth.
    rgba, depth = render_ground_truth(ground_truth, views, cfg.data.image_size)
    source = f"ground truth '{cfg.guidance.oracle_object}' rendered at the reference view"
  else:
    raise ValueError("config data.image is empty: give a reference image "
                     "(--config.data.image=PATH) or use the oracle prior's object")
  writers.save_png(workdir / "reference" / "rgba.png", rgba)
  if depth is not None:
    writers.save_png(workdir / "reference" / "depth.png", depth)
  return {"rgba": rgba, "depth": depth, "source": source}


def at_resolution(reference: dict, size: int) -> dict:
  """The stage's reference batch at one render resolution (rgb, mask and maybe depth)."""
  arrays = images.reference_arrays(reference["rgba"], reference["depth"], (size, size))
  return {k: v for k, v in arrays.items() if v is not None}
