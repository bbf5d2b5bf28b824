"""The reference image a run starts from, in one of three ways:
  - data.image: the user's file (background removed with u2netp if asked, then recentred);
  - stage 0: no data.image but a prompt: Stable Diffusion draws it, u2netp removes the
    background, it is recentred (reference §2 preprocessing, with u2netp for carvekit);
  - a ground-truth object rendered at the reference view: data.object (the built-in
    'primitives', a testbed catalog object, e.g. a held-out one, or a generated 'proc-NNNN',
    e.g. a validation one), or, when data.object is
    empty, the object the oracle prior knows (guidance.oracle_object). Its mesh also scores
    the run (novel views, Chamfer, F-score, volume IoU).
`load` checks the reference in memory (nothing written: the pipeline validates every input
before it writes); `save` then puts a copy under `<workdir>/reference/` so the run's input can
be looked at; `identity` says what it was made from, for the work dir's provenance.json."""

import hashlib
import json
from pathlib import Path

import jax
import numpy as np
from PIL import Image

from dc3d_jax import cameras
from dc3d_jax.geometry import rasterize
from dc3d_jax.io import background, digest, images, recenter, writers
from dc3d_jax.priors import oracle, text_to_image


def render_ground_truth(mesh, views: cameras.ViewSettings, size: int) -> tuple:
  """RGBA [S,S,4] and depth [S,S,1] (min-max normalised inside the mask, 0 outside)."""
  camera = cameras.reference_camera(views, size, size)
  out = jax.device_get(rasterize.render_mesh(mesh, camera))
  rasterize.check_exact(out["overflow"], "ground-truth reference render")
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


def check_mask(rgba: np.ndarray, what: str) -> np.ndarray:
  """Refuses a reference whose mask (alpha > 0.5, what the losses use) is empty."""
  if not (rgba[..., 3] > 0.5).any():
    raise images.ImageInputError(
        f"{what}: the object's mask is empty after preprocessing (no pixel has alpha > 0.5); "
        "give an image whose object is opaque, or cut the object out yourself (RGBA with a "
        "transparent background)")
  return rgba


def _user_depth(data_cfg, image_hw) -> np.ndarray | None:
  if not data_cfg.depth:
    return None
  depth = images.load_depth(data_cfg.depth, kind=data_cfg.depth_kind)
  if depth.shape[:2] != tuple(image_hw):
    raise images.ImageInputError(
        f"{data_cfg.depth}: the depth map is {depth.shape[1]}x{depth.shape[0]} (w x h) but "
        f"the image {data_cfg.image} is {image_hw[1]}x{image_hw[0]}; give a depth map of the "
        "image's size (config data.depth)")
  return depth


def load_user_reference(data_cfg) -> tuple:
  """RGBA and optional depth from data.image / data.depth, recentred if data.recenter."""
  remover = background.make_background_remover() if data_cfg.remove_background else None
  rgba = images.load_rgba(data_cfg.image, remove_background=remover)
  depth = _user_depth(data_cfg, rgba.shape[:2])
  what = f"{data_cfg.image}" + (" (background removed by u2netp)" if remover else "")
  check_mask(rgba, what)
  rgba, depth = _recentred(rgba, depth, data_cfg)
  return check_mask(rgba, what), depth


def _stage0_settings(cfg) -> dict:
  return dict(cfg.stage0.to_dict(), prompt=cfg.prompt, model=cfg.guidance.sd_model,
              negative_prompt=cfg.guidance.negative_prompt)


def _stage0_path(cfg, workdir: Path) -> Path:
  """Generated images are kept per (model, prompt, sampler settings): a re-run reuses one."""
  digest = hashlib.sha256(json.dumps(_stage0_settings(cfg), sort_keys=True).encode())
  return workdir / "reference" / f"generated_{digest.hexdigest()[:12]}.png"


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
  what = f"stage 0's image {path} (background removed by u2netp)"
  rgba = check_mask(np.concatenate([rgb, alpha[..., None]], -1), what)
  rgba, _ = _recentred(rgba, None, cfg.data)
  return check_mask(rgba, what)


def object_name(cfg) -> str:
  """The ground-truth object of this run, or "" (a user image or stage 0)."""
  if cfg.data.object:
    return cfg.data.object
  uses_oracle = "oracle" in (cfg.guidance.prior_2d, cfg.guidance.prior_3d)
  return cfg.guidance.oracle_object if uses_oracle and not cfg.data.image else ""


def ground_truth(cfg):
  """primitives.Mesh of the run's ground-truth object (world frame, as rendered), or None."""
  name = object_name(cfg)
  if not name:
    return None
  if name == "primitives":
    return oracle.ground_truth_mesh(name)
  from dc3d_jax.testbed import objects   # reads assets/testbed: only when asked for
  return objects.ground_truth_mesh(name)


def uses_stage0(cfg, ground_truth) -> bool:
  return not cfg.data.image and ground_truth is None


def load(cfg, ground_truth) -> dict | None:
  """The reference in memory, checked; nothing is written. None when stage 0 must draw it
  (that needs the Stable Diffusion model: `generate_reference`).

  -> {"rgba": [S,S,4], "depth": [S,S,1] or None, "source": str}"""
  views = cameras.ViewSettings.from_config(cfg.data)
  if cfg.data.image:
    rgba, depth = load_user_reference(cfg.data)
    return {"rgba": rgba, "depth": depth, "source": str(cfg.data.image)}
  if ground_truth is not None:
    # Already in the reference camera's frame: recentring would move it off the ground truth.
    rgba, depth = render_ground_truth(ground_truth, views, cfg.data.image_size)
    return {"rgba": rgba, "depth": depth,
            "source": f"ground truth '{object_name(cfg)}' rendered at the reference view"}
  return None


def from_stage0(cfg, workdir: Path, store) -> dict:
  return {"rgba": generate_reference(cfg, workdir, store), "depth": None,
          "source": f"stage 0: '{cfg.prompt}' drawn by {cfg.guidance.sd_model}"}


def identity(cfg, ground_truth) -> dict:
  """What the reference is made from, for the work dir's provenance: the sha256 of the image
  (and depth) file, the oracle's object, or stage 0's settings."""
  if cfg.data.image:
    return {"image_sha256": digest.file_sha256(cfg.data.image),
            "depth_sha256": digest.file_sha256(cfg.data.depth) if cfg.data.depth else ""}
  if ground_truth is not None:
    return {"oracle_object": object_name(cfg)}
  return {"stage0": _stage0_settings(cfg)}


def save(reference: dict, workdir: Path) -> None:
  """Writes the run's input under <workdir>/reference/ so it can be looked at."""
  writers.save_png(workdir / "reference" / "rgba.png", reference["rgba"])
  if reference["depth"] is not None:
    writers.save_png(workdir / "reference" / "depth.png", reference["depth"])


def at_resolution(reference: dict, size: int) -> dict:
  """The stage's reference batch at one render resolution (rgb, mask and maybe depth)."""
  arrays = images.reference_arrays(reference["rgba"], reference["depth"], (size, size))
  return {k: v for k, v in arrays.items() if v is not None}
