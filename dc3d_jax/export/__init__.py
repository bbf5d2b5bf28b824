"""Export of a stage's result as a textured asset: UV unwrap, texture bake, GLB and OBJ.

`export_mesh(out_dir, vertices, faces, albedo_fn)` writes `model.glb` and `model.obj` +
`model.mtl` + `model_albedo.png` (bake.py: xatlas + UV raster + hole fill; mesh_files.py:
frames and writers). The mesh comes from the stage (NeRF density threshold, NeuS SDF, DMTet
surface) in the training frame; the colour from its texture field.
"""

from pathlib import Path

import numpy as np

from dc3d_jax.export import bake, mesh_files


def export_mesh(out_dir, vertices: np.ndarray, faces: np.ndarray, albedo_fn, *,
                texture_size: int = 1024) -> dict:
  """Writes model.glb / model.obj (+ .mtl, _albedo.png) under out_dir; returns a summary."""
  out_dir = Path(out_dir)
  uv_mesh = bake.unwrap(vertices, faces)
  texture, covered = bake.bake(uv_mesh, albedo_fn, texture_size)
  args = (uv_mesh.vertices, uv_mesh.faces, uv_mesh.uv, texture)
  mesh_files.write_obj(out_dir / "model.obj", *args)
  mesh_files.write_glb(out_dir / "model.glb", *args)
  return {"vertices": int(len(vertices)), "faces": int(len(faces)),
          "texture_size": texture_size, "texture_coverage": float(np.mean(covered))}
