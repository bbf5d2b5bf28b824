"""A catalog name -> an upright, coloured `render.ObjectModel`, read from assets/testbed/.

Untextured meshes are cleaned, checked (catalog objects must be solids), stood upright,
coarsened to ≤ MAX_FACES faces (vertex clustering: renders are 64² at most) or subdivided to
≥ MIN_FACES (so part colours form regions), wound consistently and given albedo.py's part
colours with baked shading. Textured objects keep their meshes and carry (u, v, shade) per
corner: the COLLADA duck its one texture, the OBJ models one atlas of their materials' maps.
"""

from pathlib import Path

import numpy as np
from PIL import Image

from dc3d_jax.errors import AssetError
from dc3d_jax.geometry import primitives
from dc3d_jax.testbed import albedo, catalog, meshes, procedural, render
from dc3d_jax.testbed.render import ObjectModel

ASSETS = Path(__file__).resolve().parents[2] / "assets" / "testbed"
MAX_FACES, MIN_FACES = 1200, 700


def asset_path(relative: str, root: Path | None = None) -> Path:
  path = Path(root or ASSETS) / relative
  if not path.is_file():
    raise AssetError(f"{path}: testbed asset missing; fetch it with "
                     "`python scripts/fetch_assets.py` (or `make assets`)")
  return path


def _image(path: Path) -> np.ndarray:
  return np.asarray(Image.open(path).convert("RGB"), np.float32) / 255.0


def _textured_obj(name: str, entry: catalog.Entry, root) -> ObjectModel:
  """An OBJ with one or more textures: corner UVs into one atlas (meshes.texture_atlas),
  winding made consistent for the shading normals, (u, v, shade) per corner."""
  for sidecar in entry.sidecars:
    asset_path(sidecar, root)
  obj = meshes.read_obj(asset_path(entry.file, root))
  keep = meshes.proper_faces(obj.vertices, obj.faces)
  faces, corner_uv = obj.faces[keep], obj.corner_uv[keep]
  flip = meshes.consistent_winding(obj.vertices, faces)
  faces = np.where(flip[:, None], faces[:, ::-1], faces)
  corner_uv = np.where(flip[:, None, None], corner_uv[:, ::-1], corner_uv)
  texture, uv = meshes.texture_atlas([_image(p) for p in obj.textures], corner_uv,
                                     obj.material[keep])
  used, faces = np.unique(faces, return_inverse=True)
  faces = faces.reshape(-1, 3)
  v = meshes.rotate(obj.vertices[used], entry.rotation)
  shade = albedo.shading(meshes.vertex_normals(v, faces))[faces]
  attr = np.concatenate([uv, shade[..., None]], -1)
  return ObjectModel(name=name, vertices=v, faces=faces, corner_attr=attr.astype(np.float32),
                     texture=texture)


def _textured_collada(name: str, entry: catalog.Entry, root) -> ObjectModel:
  v, f, uv = meshes.read_collada(asset_path(entry.file, root))
  mesh = meshes.clean(meshes.TriMesh(v, f, uv))
  v = meshes.rotate(mesh.vertices, entry.rotation)
  texture = _image(asset_path(entry.texture, root))
  shade = albedo.shading(meshes.vertex_normals(v, mesh.faces))
  attr = np.concatenate([mesh.uvs, shade[:, None]], -1)[mesh.faces]
  return ObjectModel(name=name, vertices=v, faces=mesh.faces,
                     corner_attr=attr.astype(np.float32), texture=texture)


def prepare_mesh(name: str, vertices: np.ndarray, faces: np.ndarray,
                 rotation: tuple = ()) -> ObjectModel:
  """Raw (V, F) of an untextured object -> upright, resized, coloured ObjectModel."""
  mesh = meshes.clean(meshes.TriMesh(vertices, faces))
  meshes.check_solid(mesh, name)
  mesh = meshes.TriMesh(meshes.rotate(mesh.vertices, rotation), mesh.faces)
  mesh = meshes.decimate(mesh, MAX_FACES) if len(mesh.faces) > MAX_FACES else \
      meshes.subdivide(mesh, MIN_FACES)
  mesh = meshes.orient_outward(mesh)
  return ObjectModel(name=name, vertices=mesh.vertices, faces=mesh.faces,
                     corner_attr=albedo.corner_colours(name, mesh))


def load_object(name: str, root: Path | None = None) -> ObjectModel:
  """The catalog object `name` (or a generated "proc-NNNN", procedural.py), upright (Z-up,
  front towards +X), ready to place and render."""
  if catalog.is_procedural(name):
    return procedural.generate(name)
  if name not in catalog.OBJECTS:
    raise KeyError(f"unknown testbed object {name!r}; see dc3d_jax/testbed/catalog.py")
  entry = catalog.OBJECTS[name]
  if entry.file.endswith(".obj"):
    return _textured_obj(name, entry, root)
  if entry.texture is not None:
    return _textured_collada(name, entry, root)
  v, f = meshes.read_off(asset_path(entry.file, root))
  return prepare_mesh(name, v, f, entry.rotation)


def ground_truth_mesh(name: str, root: Path | None = None) -> primitives.Mesh:
  """The catalog object `name` as a pipeline's ground truth: placed as the testbed frames its
  reference views (yaw 0: its catalog front faces the reference camera at elevation 0°;
  longer side of the silhouette 90% of the image, centred), with unshared corners carrying
  the albedo (a textured object's texture is sampled at the corners: detail finer than a
  face is lost). Padded zero-area faces cover no pixel and no volume."""
  obj = load_object(name, root)
  vertices = render.place(obj.vertices, 0.0, 0.0)
  colours = obj.corner_attr
  if obj.texture is not None:   # (u, v, shade) per corner -> RGB
    colours = render.sample_texture(obj.texture, colours[..., :2]) * colours[..., 2:]
  return render.corner_mesh(vertices, obj.faces, np.clip(colours, 0.0, 1.0))
