"""What a run leaves to look at: a turntable per stage, the exported asset of the last stage,
and its metrics (eval/protocol.py).

- `<stage>/turntable.mp4`: eval.orbit_views frames at the reference elevation, starting at the
  reference view, RGB | normals side by side (reference §2: 120 views, 30 fps).
- `export/`: model.glb (Y-up, front toward +Z), model.obj + .mtl + _albedo.png, and
  turntable.mp4, from the last stage's mesh (its `extract_mesh`) and colour (its `albedo_fn`).
- metrics: the evaluation protocol on the last stage's orbit renders, with the ground truth's
  novel views and geometry when the run knows the object (oracle, testbed).

A stage module provides extract_mesh(state, settings, resolution) -> (vertices, faces) and
albedo_fn(state, settings) -> fn([K, 3] points) -> [K, 3], both in the training frame.
"""

import numpy as np

from dc3d_jax import cameras, export
from dc3d_jax.eval import protocol, report
from dc3d_jax.geometry import mesh_ops
from dc3d_jax.io import writers


def orbit_renders(render_fn, views, n_views: int, size: int) -> dict:
  """{"rgb", "opacity", "comp_normal"}: [N, H, W, C] renders of the orbit (view 0 = reference)."""
  orbit = cameras.orbit_cameras(n_views, views, size, size)
  outs = [render_fn(orbit[i]) for i in range(n_views)]
  return {k: np.stack([np.asarray(o[k], np.float32) for o in outs])
          for k in ("rgb", "opacity", "comp_normal")}


def turntable_frames(renders: dict) -> np.ndarray:
  """[N, H, 2W, 3]: RGB on white | the normal map on white."""
  normal = renders["comp_normal"] + (1.0 - renders["opacity"])
  return np.concatenate([renders["rgb"], np.clip(normal, 0.0, 1.0)], axis=2)


def stage_turntable(path, render_fn, cfg) -> dict:
  """Renders the orbit, writes its turntable video to `path`, returns the renders."""
  views = cameras.ViewSettings.from_config(cfg.data)
  e = cfg.eval
  renders = orbit_renders(render_fn, views, e.orbit_views, e.resolution)
  writers.save_video(path, turntable_frames(renders), fps=e.fps)
  return renders


def final_mesh(module, handoff, export_cfg):
  """The last stage's surface (vertices, faces), small components removed if asked."""
  vertices, faces = module.extract_mesh(handoff.state, handoff.settings,
                                        export_cfg.mesh_resolution)
  if export_cfg.min_component_fraction > 0:
    vertices, faces = mesh_ops.remove_small_components(
        vertices, faces, min_fraction=export_cfg.min_component_fraction)
  return np.asarray(vertices, np.float32), np.asarray(faces, np.int64)


def export_asset(out_dir, module, handoff, mesh, export_cfg) -> dict:
  """model.glb / model.obj (+ .mtl, _albedo.png) under out_dir; returns a summary."""
  albedo = module.albedo_fn(handoff.state, handoff.settings)
  return export.export_mesh(out_dir, mesh[0], mesh[1], albedo,
                            texture_size=export_cfg.texture_size)


def evaluate(ctx, handoff, renders: dict, mesh) -> dict:
  """The protocol's metrics on the orbit renders (+ GT views and geometry when known)."""
  cfg = ctx.cfg
  e = cfg.eval
  settings = protocol.ProtocolSettings.from_config(e, cfg.seed)
  models = protocol.EvalModels.load(use_lpips=e.lpips, clip_model=e.clip_model,
                                    vgg19_weights=e.vgg19_weights)
  views = cameras.ViewSettings.from_config(cfg.data)
  out = protocol.evaluate(handoff.render_fn, ctx.reference["rgba"], views, settings, models,
                          gt_mesh=ctx.ground_truth, pred_mesh=mesh, orbit=renders)
  out.update(report.truncation_metrics(handoff.render_fn))
  return out
