"""Cost of the evaluation protocol (dc3d_jax.eval.protocol) by part, on the ground-truth toy.

  python -m benchmarks.eval_protocol --out benchmarks/out/eval_protocol.json [--res 128 --views 120]

The prediction is the toy scaled by 1.03 and moved 0.01 (so every metric is finite), rendered
with the rasterizer as its render_fn; the ground truth is the toy (1,428 faces). One warm-up
pass at 4 orbit views compiles everything (render shapes and the LPIPS batch do not depend on
the view count); then each part of `protocol.evaluate` runs once at the full settings, in the
order evaluate runs them, and is timed: the orbit renders (render_fn, the stage's cost), the
GT renders of the novel and elevated views, PSNR/SSIM/mask IoU, LPIPS, and the geometry
metrics. The 1-minute load average is recorded, because the CPU machine is shared.
"""

import argparse
import os
import time

import jax
import numpy as np

from benchmarks import common
from dc3d_jax import cameras
from dc3d_jax.eval import geometry, protocol
from dc3d_jax.eval import lpips as lpips_lib
from dc3d_jax.geometry import primitives, rasterize


def _mesh_renderer(mesh):
  def render_fn(camera):
    out = jax.device_get(rasterize.render_mesh(mesh, camera))
    return {"rgb": out["rgb"], "opacity": out["alpha"]}
  return render_fn


def _timed(times: dict, name: str, fn):
  start = time.perf_counter()
  out = fn()
  times[name] = time.perf_counter() - start
  return out


def time_parts(settings, lpips_params) -> dict:
  """Seconds of each part of protocol.evaluate at `settings` (see the module docstring)."""
  gt = primitives.test_object()
  pred = primitives.scale(primitives.translate(gt, (0.0, 0.01, 0.0)), 1.03)
  render_fn, views, t = _mesh_renderer(pred), cameras.ViewSettings(), {}
  orbit_cams = protocol.orbit_cameras(views, settings)
  high_cams = protocol.high_cameras(views, settings)
  orbit = _timed(t, "orbit_render_fn", lambda: protocol.render_views(render_fn, orbit_cams))
  high = _timed(t, "high_render_fn", lambda: protocol.render_views(render_fn, high_cams))
  gt_views = _timed(t, "gt_renders", lambda: [protocol.render_ground_truth(gt, cams)
                                              for cams in (orbit_cams[1:], high_cams)])
  gt_views = {k: np.concatenate([v[k] for v in gt_views]) for k in orbit}
  pred_views = {k: np.concatenate([orbit[k][1:], high[k]]) for k in orbit}
  _timed(t, "psnr_ssim_mask", lambda: protocol.image_metrics(pred_views, gt_views, settings))
  if lpips_params is not None:
    _timed(t, "lpips", lambda: lpips_lib.lpips(lpips_params, pred_views["rgb"], gt_views["rgb"],
                                               size=settings.lpips_size, batch=settings.chunk))
  _timed(t, "geometry", lambda: geometry.mesh_metrics(
      pred.vertices, pred.faces, gt.vertices, gt.faces, n_points=settings.geometry_points,
      resolution=settings.volume_resolution))
  t["total"] = sum(t.values())
  t["pairs_scored"] = int(pred_views["rgb"].shape[0])
  return t


def parse_args(argv=None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--out", required=True, help="JSON file to write")
  parser.add_argument("--res", type=int, default=128)
  parser.add_argument("--views", type=int, default=120)
  parser.add_argument("--points", type=int, default=100_000, help="surface samples per mesh")
  parser.add_argument("--no-lpips", action="store_true", help="skip LPIPS (no weights needed)")
  return parser.parse_args(argv)


def main(argv=None) -> dict:
  args = parse_args(argv)
  settings = protocol.ProtocolSettings(size=args.res, orbit_views=args.views,
                                       geometry_points=args.points)
  lpips_params = None if args.no_lpips else lpips_lib.load_lpips()
  warm = protocol.ProtocolSettings(size=args.res, orbit_views=4, geometry_points=args.points)
  first = time_parts(warm, lpips_params)
  record = {"benchmark": "eval_protocol", **common.environment(), "resolution": args.res,
            "orbit_views": args.views, "geometry_points": args.points, "high_views": len(settings.high_azimuths_deg),
            "lpips": lpips_params is not None, "load_average_1min": os.getloadavg()[0],
            "warmup_4_views_s": first["total"], "seconds": time_parts(settings, lpips_params),
            **common.peak_memory_bytes()}
  record["load_average_1min_after"] = os.getloadavg()[0]
  common.write(args.out, record)
  s = record["seconds"]
  print(f"eval protocol {args.res}² × {args.views} views: {s['total']:.1f} s "
        f"(render_fn {s['orbit_render_fn'] + s['high_render_fn']:.1f}, GT {s['gt_renders']:.1f}, "
        f"LPIPS {s.get('lpips', 0.0):.1f}, geometry {s['geometry']:.1f})")
  return record


if __name__ == "__main__":
  main()
