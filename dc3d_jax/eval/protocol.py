"""The evaluation protocol: DreamCraft3D's image metrics plus ground-truth novel views and geometry.

    evaluate(render_fn, reference_rgba, views, settings, models, *, gt_mesh, pred_mesh, orbit)
        -> flat dict of floats, plus per-view lists under "<name>_per_view"

`render_fn(camera) -> {"rgb" [H, W, 3] on white, "opacity" [H, W, 1], ...}` (numpy) is the
stage's renderer; this module knows nothing about fields.

What is measured (../shared/reference/evaluation.md, issue 10):
- The orbit: `orbit_views` (120) cameras at the reference elevation, distance and fovy,
  evenly spaced in azimuth from the reference azimuth, so view 0 is the reference pose.
- Reference view (view 0 against the input image, area-resized to the eval size and
  composited on white): ref_psnr, ref_ssim, ref_lpips, ref_mask_iou (input alpha > 0.5).
  The reference scores PSNR at 800² and LPIPS at 224² on the same view; here PSNR and SSIM
  are at the eval size, LPIPS at `lpips_size` (224²).
- Novel views against the ground truth (when `gt_mesh` is given; rendered with
  `geometry.rasterize.render_mesh`): orbit views 1..N-1 (novel_*; `novel_stride` > 1 keeps
  every s-th, as the brute-force rasterizer costs ~0.1-0.4 s a view on CPU), and a set at a
  higher elevation (high_*, default 30° at 8 azimuths 45° apart) because the orbit at the
  reference elevation never looks at the top of the object. PSNR, SSIM, LPIPS, mask IoU;
  LPIPS of every compared pair (reference, novel, high) runs in one batched pass.
- Geometry (when both meshes are given): eval/geometry.mesh_metrics (Chamfer, F-score,
  volume IoU in GT-diagonal units, no alignment).
- CLIP similarity and contextual distance of the reference image against all orbit views
  (view 0 included, as the reference does), when their models are loaded.
"""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np

from dc3d_jax import cameras
from dc3d_jax.eval import clip_score, contextual, geometry, metrics
from dc3d_jax.eval import lpips as lpips_lib
from dc3d_jax.geometry import rasterize
from dc3d_jax.io.images import resize_area


@dataclasses.dataclass(frozen=True)
class ProtocolSettings:
  """Static settings of one evaluation (config keys: see `from_config`)."""
  size: int = 128
  orbit_views: int = 120
  novel_stride: int = 1   # GT comparisons on orbit views 1, 1 + s, 1 + 2s, ... (1: all)
  high_elevation_deg: float = 30.0
  high_azimuths_deg: tuple = (0.0, 45.0, 90.0, 135.0, 180.0, 225.0, 270.0, 315.0)
  lpips_size: int = 224
  contextual_size: int = 512
  fscore_thresholds: tuple = geometry.DEFAULT_THRESHOLDS
  geometry_points: int = 100_000
  volume_resolution: int = 64
  seed: int = 0
  chunk: int = 16   # views per SSIM / LPIPS batch (bounds host memory)

  @classmethod
  def from_config(cls, eval_cfg, seed: int = 0) -> "ProtocolSettings":
    """From cfg.eval: resolution, orbit_views, novel_stride, high_elevation_deg,
    high_azimuths_deg, fscore_thresholds, geometry_points, volume_resolution."""
    return cls(size=int(eval_cfg.resolution), orbit_views=int(eval_cfg.orbit_views),
               novel_stride=int(eval_cfg.novel_stride),
               high_elevation_deg=float(eval_cfg.high_elevation_deg),
               high_azimuths_deg=tuple(eval_cfg.high_azimuths_deg),
               fscore_thresholds=tuple(eval_cfg.fscore_thresholds),
               geometry_points=int(eval_cfg.geometry_points),
               volume_resolution=int(eval_cfg.volume_resolution), seed=seed)


@dataclasses.dataclass(frozen=True)
class EvalModels:
  """Loaded metric networks; None skips the metrics that need them."""
  lpips: dict | None = None
  clip: clip_score.ClipScorer | None = None
  vgg19: dict | None = None

  @classmethod
  def load(cls, *, lpips_weights=None, use_lpips: bool = True, clip_model: str = "",
           vgg19_weights: str = "") -> "EvalModels":
    """lpips_weights None means assets/ (or $DC3D_LPIPS); empty paths skip CLIP / CX."""
    return cls(lpips=lpips_lib.load_lpips(lpips_weights) if use_lpips else None,
               clip=clip_score.load_clip_scorer(clip_model) if clip_model else None,
               vgg19=contextual.load_vgg19(vgg19_weights) if vgg19_weights else None)


def render_views(render_fn, cams) -> dict:
  """{"rgb" [N, H, W, 3], "opacity" [N, H, W, 1]} for a batch of N cameras."""
  outs = [render_fn(cams[i]) for i in range(cams.fovy.shape[0])]
  return {k: np.stack([np.asarray(o[k], np.float32) for o in outs]) for k in ("rgb", "opacity")}


# Jitted: built eagerly, each camera batch shape costs dozens of small op compilations.
@functools.partial(jax.jit, static_argnums=(0, 1))
def orbit_cameras(views, settings: ProtocolSettings):
  """The orbit_views cameras at the reference elevation; index 0 is the reference pose."""
  return cameras.orbit_cameras(settings.orbit_views, views, settings.size, settings.size)


@functools.partial(jax.jit, static_argnums=(0, 1))
def high_cameras(views, settings: ProtocolSettings):
  """Cameras at high_elevation_deg and the reference azimuth + high_azimuths_deg."""
  azim = views.ref_azimuth_deg + jnp.asarray(settings.high_azimuths_deg, jnp.float32)
  return cameras.make_camera(settings.high_elevation_deg, azim, views.ref_distance,
                             views.fovy_deg, settings.size, settings.size)


def render_ground_truth(mesh, cams) -> dict:
  """{"rgb" [N, H, W, 3] on white, "opacity" [N, H, W, 1]} of the GT mesh."""
  outs = [jax.device_get(rasterize.render_mesh(mesh, cams[i])) for i in range(cams.fovy.shape[0])]
  return {"rgb": np.stack([o["rgb"] for o in outs]).astype(np.float32),
          "opacity": np.stack([o["alpha"] for o in outs]).astype(np.float32)}


def on_white(rgba: np.ndarray) -> np.ndarray:
  """[H, W, 4] straight RGBA -> [H, W, 3] composited on white."""
  rgba = np.asarray(rgba, np.float32)
  return rgba[..., :3] * rgba[..., 3:] + (1.0 - rgba[..., 3:])


def reference_target(reference_rgba: np.ndarray, size: int) -> dict:
  """The input image at size²: {"rgb" [1, S, S, 3] on white, "opacity" [1, S, S, 1]}."""
  small = resize_area(np.asarray(reference_rgba, np.float32), (size, size))
  return {"rgb": on_white(small)[None], "opacity": small[None, ..., 3:]}


def image_metrics(pred: dict, target: dict, settings: ProtocolSettings) -> dict:
  """Per-view lists psnr, ssim, mask_iou of [N, ...] renders against targets."""
  n = pred["rgb"].shape[0]
  out = {"psnr": [metrics.psnr(pred["rgb"][i], target["rgb"][i]) for i in range(n)],
         "mask_iou": [metrics.mask_iou(pred["opacity"][i], target["opacity"][i])
                      for i in range(n)],
         "ssim": []}
  for i in range(0, n, settings.chunk):
    out["ssim"] += metrics.ssim_per_image(pred["rgb"][i:i + settings.chunk],
                                          target["rgb"][i:i + settings.chunk]).tolist()
  return out


def _take(images: dict, index) -> dict:
  return {k: v[index] for k, v in images.items()}


def comparison_sets(render_fn, views, settings, orbit, reference_rgba, gt_mesh) -> dict:
  """name -> (rendered, target) image dicts: "ref" (view 0 against the input image), and with
  a GT mesh "novel" (orbit views 1, 1 + s, ...) and "high" (the elevated set)."""
  sets = {"ref": (_take(orbit, slice(0, 1)), reference_target(reference_rgba, settings.size))}
  if gt_mesh is None:
    return sets
  novel = slice(1, None, settings.novel_stride)
  sets["novel"] = (_take(orbit, novel),
                   render_ground_truth(gt_mesh, orbit_cameras(views, settings)[novel]))
  if settings.high_azimuths_deg:
    cams = high_cameras(views, settings)
    sets["high"] = (render_views(render_fn, cams), render_ground_truth(gt_mesh, cams))
  return sets


def set_metrics(sets: dict, lpips_params, settings: ProtocolSettings) -> dict:
  """"<set>_<metric>" means and "<set>_<metric>_per_view" lists; LPIPS of all sets in one
  batched pass."""
  per_set = {name: image_metrics(pred, target, settings) for name, (pred, target) in sets.items()}
  if lpips_params is not None:
    scores = lpips_lib.lpips(lpips_params,
                             np.concatenate([p["rgb"] for p, _ in sets.values()]),
                             np.concatenate([t["rgb"] for _, t in sets.values()]),
                             size=settings.lpips_size, batch=settings.chunk)
    ends = np.cumsum([p["rgb"].shape[0] for p, _ in sets.values()])
    for name, part in zip(sets, np.split(scores, ends[:-1])):
      per_set[name]["lpips"] = part.tolist()
  out = {}
  for name, values in ((f"{s}_{m}", v) for s, d in per_set.items() for m, v in d.items()):
    out[name] = float(np.mean(values))
    if not name.startswith("ref_"):
      out[f"{name}_per_view"] = [float(v) for v in values]
  return out


def evaluate(render_fn, reference_rgba: np.ndarray, views, settings: ProtocolSettings,
             models: EvalModels = EvalModels(), *, gt_mesh=None, pred_mesh=None,
             orbit: dict | None = None) -> dict:
  """All metrics the inputs allow (module docstring). `orbit` may hold the orbit's renders
  (render_views of orbit_cameras) when the caller already made them for a turntable;
  `pred_mesh` is (vertices [V, 3], faces [F, 3])."""
  orbit = orbit if orbit is not None else render_views(render_fn, orbit_cameras(views, settings))
  sets = comparison_sets(render_fn, views, settings, orbit, reference_rgba, gt_mesh)
  out = set_metrics(sets, models.lpips, settings)
  if gt_mesh is not None and pred_mesh is not None:
    out.update(geometry.mesh_metrics(
        pred_mesh[0], pred_mesh[1], gt_mesh.vertices, gt_mesh.faces,
        n_points=settings.geometry_points, thresholds=settings.fscore_thresholds,
        resolution=settings.volume_resolution, seed=settings.seed))
  # CLIP and CX resize the input image from its own resolution, not from the eval size.
  if models.clip is not None:
    out["clip_similarity"], out["clip_similarity_per_view"] = clip_score.clip_similarity(
        models.clip, on_white(reference_rgba), orbit["rgb"])
  if models.vgg19 is not None:
    out["contextual"], out["contextual_per_view"] = contextual.contextual_distance(
        models.vgg19, on_white(reference_rgba), orbit["rgb"], size=settings.contextual_size)
  return out
