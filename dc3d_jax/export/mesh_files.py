"""Textured mesh files: OBJ + MTL + PNG and binary glTF (GLB), written atomically.

Frames. The training frame is Z-up with the reference camera on +X, so an object's front
faces +X (reference §10 "Export"). glTF is Y-up and a viewer's default camera looks down −Z,
so it sees the +Z side. `to_gltf_frame` maps training (x, y, z) to glTF (y, z, x): a proper
rotation (a cyclic permutation) that takes up +Z to +Y and the front +X to +Z, so the asset
opens upright and facing the viewer. The OBJ is written in the same Y-up frame (the de-facto
convention of OBJ viewers); DEVIATION: the reference writes its OBJ raw in the Z-up training
frame.

UVs: `uv` has v growing upward from the bottom of the texture image (OBJ's `vt`); glTF's
texture coordinates grow downward, which trimesh's GLB writer converts.
"""

from pathlib import Path

import numpy as np
import trimesh
from PIL import Image

from dc3d_jax.io import writers

# Rows: glTF axes; columns: training axes. glTF x = training y, y = z, z = x.
TRAINING_TO_GLTF = np.array([[0.0, 1.0, 0.0], [0.0, 0.0, 1.0], [1.0, 0.0, 0.0]], np.float32)


def to_gltf_frame(points: np.ndarray) -> np.ndarray:
  """[..., 3] training-frame (Z-up, front +X) -> glTF frame (Y-up, front +Z)."""
  return np.asarray(points, np.float32) @ TRAINING_TO_GLTF.T


def from_gltf_frame(points: np.ndarray) -> np.ndarray:
  """Inverse of to_gltf_frame."""
  return np.asarray(points, np.float32) @ TRAINING_TO_GLTF


def _trimesh(vertices, faces, uv, texture) -> trimesh.Trimesh:
  image = Image.fromarray(writers.to_uint8(texture, "texture"))
  material = trimesh.visual.material.PBRMaterial(baseColorTexture=image, metallicFactor=0.0,
                                                 roughnessFactor=1.0)
  visual = trimesh.visual.TextureVisuals(uv=np.asarray(uv, np.float64), material=material)
  return trimesh.Trimesh(vertices=to_gltf_frame(vertices), faces=np.asarray(faces),
                         visual=visual, process=False)


def write_glb(path, vertices, faces, uv, texture) -> None:
  """Training-frame mesh with per-vertex uv [N, 2] and texture [S, S, 3] -> GLB (Y-up)."""
  data = _trimesh(vertices, faces, uv, texture).export(file_type="glb")
  with writers.atomic_path(path) as tmp:
    Path(tmp).write_bytes(data)


def _obj_text(vertices, faces, uv, mtl_name: str) -> str:
  v = to_gltf_frame(vertices)
  lines = [f"mtllib {mtl_name}", "usemtl material_0"]
  lines += [f"v {x:.6f} {y:.6f} {z:.6f}" for x, y, z in v]
  lines += [f"vt {s:.6f} {t:.6f}" for s, t in np.asarray(uv)]
  lines += [f"f {a}/{a} {b}/{b} {c}/{c}" for a, b, c in np.asarray(faces) + 1]
  return "\n".join(lines) + "\n"


def write_obj(path, vertices, faces, uv, texture) -> None:
  """OBJ + `<stem>.mtl` + `<stem>_albedo.png` beside it (Y-up, like the GLB)."""
  path = Path(path)
  png, mtl = f"{path.stem}_albedo.png", f"{path.stem}.mtl"
  writers.save_png(path.with_name(png), texture)
  material = (f"newmtl material_0\nKa 1 1 1\nKd 1 1 1\nKs 0 0 0\nillum 1\nmap_Kd {png}\n")
  for name, text in ((mtl, material), (path.name, _obj_text(vertices, faces, uv, mtl))):
    with writers.atomic_path(path.with_name(name)) as tmp:
      Path(tmp).write_text(text)


def load_glb(path):
  """-> (training-frame vertices [N, 3], faces [M, 3], uv [N, 2], texture [S, S, 3] float)."""
  scene = trimesh.load(path, force="mesh", process=False)
  visual = scene.visual
  image = np.asarray(visual.material.baseColorTexture.convert("RGB"), np.float32) / 255.0
  return (from_gltf_frame(scene.vertices), np.asarray(scene.faces), np.asarray(visual.uv),
          image)
