"""End-of-stage evaluation: turntable frames, reference-view and novel-view metrics, and the
check that no evaluation render was truncated.

`render_fn(camera) -> {"rgb", "opacity", ..., "kept_frac"}` ([H, W, C] numpy; kept_frac the
fraction of live samples the render's static budget kept) comes from the stage, so this
module knows nothing about fields. Novel views need the ground-truth mesh (oracle/testbed
runs); they are the eval.novel_* azimuths and elevations, which the reference image never
showed.

A render whose budget cut samples (kept_frac < 1, docs/ARCHITECTURE.md "Volume rendering with
static shapes") loses the far ends of its rays: `MonitoredRenderer` warns the first time that
happens and keeps the smallest kept_frac, which `truncation_metrics` puts in metrics.json.
"""

import dataclasses
import warnings
from typing import Callable

import jax
import numpy as np

from dc3d_jax import cameras
from dc3d_jax.eval import metrics
from dc3d_jax.geometry import rasterize


class TruncatedRenderWarning(RuntimeWarning):
  """A render lost samples to its static budget (kept_frac < 1)."""


@dataclasses.dataclass
class MonitoredRenderer:
  """render_fn wrapped to watch kept_frac: the smallest value over all renders, how many were
  truncated, and one TruncatedRenderWarning (naming `hint`, the config keys to raise) at the
  first truncated render."""
  render_fn: Callable
  what: str = "render"
  hint: str = "raise the render sample budget"
  min_kept_frac: float = 1.0
  renders: int = 0
  truncated: int = 0

  def __call__(self, camera) -> dict:
    out = self.render_fn(camera)
    kept = float(np.asarray(out.get("kept_frac", 1.0)))
    self.renders += 1
    self.min_kept_frac = min(self.min_kept_frac, kept)
    if kept < 1.0:
      self.truncated += 1
      if self.truncated == 1:
        warnings.warn(f"{self.what}: a render kept only {kept:.3f} of its live samples (the "
                      f"far ends of some rays were cut); {self.hint}",
                      TruncatedRenderWarning, stacklevel=2)
    return out


def truncation_metrics(render_fn) -> dict:
  """{"eval_kept_frac_min", "eval_truncated_renders"} of a MonitoredRenderer (else {})."""
  if not isinstance(render_fn, MonitoredRenderer):
    return {}
  return {"eval_kept_frac_min": render_fn.min_kept_frac,
          "eval_truncated_renders": render_fn.truncated}


def turntable(render_fn, views: cameras.ViewSettings, n_views: int, size: int) -> np.ndarray:
  """[N, H, W, 3] frames orbiting at the reference elevation, starting at the reference view."""
  orbit = cameras.orbit_cameras(n_views, views, size, size)
  return np.stack([render_fn(orbit[i])["rgb"] for i in range(n_views)])


def reference_view_metrics(render_fn, reference_batch: dict, views) -> dict:
  """PSNR and mask IoU of the reference view against the (white-composited) input image."""
  size = reference_batch["rgb"].shape[0]
  out = render_fn(cameras.reference_camera(views, size, size))
  m = reference_batch["mask"]
  target = reference_batch["rgb"] * m + (1.0 - m)
  return {"ref_view_psnr": metrics.psnr(out["rgb"], target),
          "ref_mask_iou": metrics.mask_iou(out["opacity"], m)}


def novel_cameras(views, eval_cfg, size: int):
  grid = [(e, a) for e in eval_cfg.novel_elevations_deg for a in eval_cfg.novel_azimuths_deg]
  elev, azim = (np.array(v, np.float32) for v in zip(*grid))
  return cameras.make_camera(elev, views.ref_azimuth_deg + azim, views.ref_distance,
                             views.fovy_deg, size, size)


def novel_view_metrics(render_fn, mesh, views, eval_cfg, size: int) -> dict:
  """Mean PSNR (on white) and mask IoU against ground-truth renders of unseen views."""
  cams = novel_cameras(views, eval_cfg, size)
  psnrs, ious = [], []
  for i in range(cams.fovy.shape[0]):
    gt = jax.device_get(rasterize.render_mesh(mesh, cams[i]))
    rasterize.check_exact(gt["overflow"], "ground-truth novel view")
    out = render_fn(cams[i])
    psnrs.append(metrics.psnr(out["rgb"], gt["rgb"]))
    ious.append(metrics.mask_iou(out["opacity"], gt["alpha"]))
  return {"novel_view_psnr": float(np.mean(psnrs)), "mask_iou": float(np.mean(ious)),
          "novel_view_psnr_per_view": psnrs, "mask_iou_per_view": ious}
