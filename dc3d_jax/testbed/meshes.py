"""Ground-truth meshes of the testbed: reading (OFF, a minimal COLLADA, OBJ + MTL), cleaning,
resizing, packing several textures into one.

Symbols: V [N, 3] float64 vertex positions, F [M, 3] int64 triangle indices, UV [N, 2] texture
coordinates (COLLADA's t axis points up: texel row = (1 - t)·H). Readers return the file's own
frame; `catalog.Entry.rotation` turns it upright Z-up with the front towards +X.

Everything runs once per object on the host, in NumPy.
"""

import dataclasses
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import trimesh
from PIL import Image

from dc3d_jax.errors import AssetError


@dataclasses.dataclass(frozen=True)
class TriMesh:
  """vertices [N, 3], faces [M, 3]; uvs [N, 2] and texture [H, W, 3] in [0, 1] or None."""
  vertices: np.ndarray
  faces: np.ndarray
  uvs: np.ndarray | None = None
  texture: np.ndarray | None = None


def _data_lines(path: Path) -> list[str]:
  lines = []
  for line in Path(path).read_text(errors="replace").splitlines():
    line = line.split("#", 1)[0].strip()
    if line:
      lines.append(line)
  return lines


def read_off(path) -> tuple[np.ndarray, np.ndarray]:
  """OFF / COFF / NOFF -> (V, F); polygons are fan-triangulated, colours and normals dropped."""
  lines = _data_lines(path)
  if not lines or not lines[0].split()[0].endswith("OFF"):
    raise AssetError(f"{path}: not an OFF file (no OFF header); re-fetch the testbed assets "
                     "with `python scripts/fetch_assets.py`")
  header = lines[0].split()[1:] or lines.pop(1).split()
  n_vertices, n_faces = int(header[0]), int(header[1])
  body = lines[1:]
  vertices = np.array([[float(x) for x in body[i].split()[:3]] for i in range(n_vertices)])
  triangles = []
  for line in body[n_vertices:n_vertices + n_faces]:
    values = line.split()
    ring = [int(v) for v in values[1:1 + int(values[0])]]
    triangles += [(ring[0], ring[k], ring[k + 1]) for k in range(1, len(ring) - 1)]
  return vertices, np.array(triangles, np.int64).reshape(-1, 3)


def _collada_float_array(root, ns, source_id: str) -> np.ndarray:
  source = root.find(f".//c:source[@id='{source_id.lstrip('#')}']", ns)
  stride = int(source.find(".//c:accessor", ns).get("stride", "1"))
  values = np.array(source.find("c:float_array", ns).text.split(), np.float64)
  return values.reshape(-1, stride)


def read_collada(path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """The first <polylist>/<triangles> of a COLLADA file -> (V, F, UV), node transforms not
  applied (the duck's are identity). Vertices are split where a position has several UVs."""
  root = ET.parse(path).getroot()
  ns = {"c": root.tag.split("}")[0].strip("{")}
  prims = root.find(".//c:mesh/c:polylist", ns)
  prims = root.find(".//c:mesh/c:triangles", ns) if prims is None else prims
  if prims is None:
    raise AssetError(f"{path}: no <polylist> or <triangles> in the COLLADA file")
  inputs = {i.get("semantic"): i for i in prims.findall("c:input", ns)}
  stride = 1 + max(int(i.get("offset")) for i in inputs.values())
  index = np.array(prims.find("c:p", ns).text.split(), np.int64).reshape(-1, stride)
  vcount = prims.find("c:vcount", ns)
  counts = (np.array(vcount.text.split(), np.int64) if vcount is not None
            else np.full(len(index) // 3, 3))
  pos_src = root.find(f".//c:vertices[@id='{inputs['VERTEX'].get('source').lstrip('#')}']"
                      "/c:input[@semantic='POSITION']", ns).get("source")
  positions = _collada_float_array(root, ns, pos_src)
  uvs = _collada_float_array(root, ns, inputs["TEXCOORD"].get("source"))[:, :2]
  corner = index[:, [int(inputs["VERTEX"].get("offset")), int(inputs["TEXCOORD"].get("offset"))]]
  pairs, corner_vertex = np.unique(corner, axis=0, return_inverse=True)
  starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
  fans = [(s, s + k, s + k + 1) for s, n in zip(starts, counts) for k in range(1, n - 1)]
  faces = corner_vertex.reshape(-1)[np.array(fans, np.int64)]
  return positions[pairs[:, 0]], faces, uvs[pairs[:, 1]]


@dataclasses.dataclass(frozen=True)
class CornerTextured:
  """An OBJ's triangles with per-corner texture coordinates: vertices [N, 3], faces [M, 3],
  corner_uv [M, 3, 2] (t up, may leave [0, 1]: textures repeat), material [M] indexing
  textures (paths of the materials' diffuse maps, in MTL order)."""
  vertices: np.ndarray
  faces: np.ndarray
  corner_uv: np.ndarray
  material: np.ndarray
  textures: tuple


def _obj_index(token: str, count: int) -> int:
  """A 1-based (or negative, counted back from the end) OBJ index -> 0-based."""
  i = int(token)
  return i - 1 if i > 0 else count + i


def _mtl_maps(path: Path) -> dict:
  """material name -> its map_Kd file (Windows separators allowed), in file order."""
  maps, name = {}, None
  for line in _data_lines(path):
    key, _, rest = line.partition(" ")
    if key == "newmtl":
      name = rest.strip()
      maps[name] = None
    elif key == "map_Kd" and name is not None:
      maps[name] = path.parent / rest.strip().replace("\\", "/").split("/")[-1]
  missing = [n for n, m in maps.items() if m is None]
  if not maps or missing:
    raise AssetError(f"{path}: every material needs a map_Kd texture (none for {missing})")
  return maps


def read_obj(path) -> CornerTextured:
  """A textured Wavefront OBJ and its MTL -> CornerTextured; polygons fan-triangulated,
  normals dropped; faces before any usemtl take the first material."""
  path = Path(path)
  positions, uvs, faces, corner_uv, material = [], [], [], [], []
  maps, current = None, 0
  for line in _data_lines(path):
    key, *values = line.split()
    if key == "v":
      positions.append([float(x) for x in values[:3]])
    elif key == "vt":
      uvs.append([float(x) for x in values[:2]])
    elif key == "mtllib":
      maps = _mtl_maps(path.parent / " ".join(values))
    elif key == "usemtl":
      name = " ".join(values)
      if maps is None or name not in maps:
        raise AssetError(f"{path}: usemtl {name!r} names no material of its mtllib")
      current = list(maps).index(name)
    elif key == "f":
      corners = [c.split("/") for c in values]
      if any(len(c) < 2 or not c[1] for c in corners):
        raise AssetError(f"{path}: a face without texture coordinates ({line!r})")
      ring = [(_obj_index(c[0], len(positions)), _obj_index(c[1], len(uvs))) for c in corners]
      for k in range(1, len(ring) - 1):
        tri = (ring[0], ring[k], ring[k + 1])
        faces.append([v for v, _ in tri])
        corner_uv.append([uvs[t] for _, t in tri])
        material.append(current)
  if maps is None or not faces:
    raise AssetError(f"{path}: not a textured OBJ (no mtllib or no faces)")
  return CornerTextured(np.array(positions, np.float64), np.array(faces, np.int64),
                        np.array(corner_uv, np.float64), np.array(material, np.int64),
                        tuple(maps.values()))


def texture_atlas(textures: list, corner_uv: np.ndarray, material: np.ndarray,
                  tile: int = 256) -> tuple[np.ndarray, np.ndarray]:
  """Packs repeating textures into one clamped texture for `render.sample_texture`.

  textures: [H_i, W_i, 3] images; corner_uv [M, 3, 2]; material [M]. Each texture is resized
  to tile² and repeated 2 × 2 in its cell of the atlas; each face's UVs are shifted by whole
  repeats so their minimum lies in [0, 1), so a face spanning less than one repeat (checked)
  is drawn as the repeating texture draws it. Returns (atlas [R·2·tile, C·2·tile, 3],
  atlas corner_uv [M, 3, 2])."""
  local = corner_uv - np.floor(corner_uv.min(axis=1, keepdims=True))
  if local.max() >= 2.0:
    raise AssetError(f"texture_atlas: a face spans {local.max():.2f} texture repeats (max 2)")
  cols = int(np.ceil(np.sqrt(len(textures))))
  rows = int(np.ceil(len(textures) / cols))
  atlas = np.ones((rows * 2 * tile, cols * 2 * tile, 3), np.float32)
  for i, image in enumerate(textures):
    r, c = divmod(i, cols)
    small = np.stack([np.asarray(Image.fromarray(np.asarray(image[..., k], np.float32))
                                 .resize((tile, tile), Image.BILINEAR)) for k in range(3)], -1)
    atlas[r * 2 * tile:(r + 1) * 2 * tile, c * 2 * tile:(c + 1) * 2 * tile] = \
        np.tile(small, (2, 2, 1))
  r, c = np.divmod(material, cols)
  u = (c[:, None] + local[..., 0] / 2.0) / cols
  v = 1.0 - (r[:, None] + 1.0 - local[..., 1] / 2.0) / rows
  return atlas, np.stack([u, v], -1)


def proper_faces(v: np.ndarray, f: np.ndarray) -> np.ndarray:
  """[M] bool: faces with three distinct indices and non-zero area."""
  area2 = np.linalg.norm(np.cross(v[f[:, 1]] - v[f[:, 0]], v[f[:, 2]] - v[f[:, 0]]), axis=-1)
  distinct = (f[:, 0] != f[:, 1]) & (f[:, 1] != f[:, 2]) & (f[:, 0] != f[:, 2])
  return distinct & (area2 > 1e-12 * max(float(np.ptp(v, 0).max()), 1e-12) ** 2)


def clean(mesh: TriMesh) -> TriMesh:
  """Drops faces with repeated indices or zero area, then unreferenced vertices."""
  v, f = mesh.vertices, mesh.faces[proper_faces(mesh.vertices, mesh.faces)]
  used, f = np.unique(f, return_inverse=True)
  uvs = None if mesh.uvs is None else mesh.uvs[used]
  return dataclasses.replace(mesh, vertices=v[used], faces=f.reshape(-1, 3), uvs=uvs)


def check_solid(mesh: TriMesh, name: str) -> None:
  """A usable object has ≥ 4 faces and extent in all three axes (not a patch or a polygon)."""
  extent = np.ptp(mesh.vertices, axis=0) if len(mesh.vertices) else np.zeros(3)
  if len(mesh.faces) < 4 or extent.min() < 0.02 * max(extent.max(), 1e-12):
    raise AssetError(f"testbed object {name!r}: degenerate mesh ({len(mesh.faces)} faces, "
                     f"extent {np.round(extent, 4).tolist()}); remove it from the catalog")


def rotate(vertices: np.ndarray, rotation: tuple) -> np.ndarray:
  """Applies ((axis, degrees), ...) in order, each a right-handed turn about a world axis."""
  for axis, degrees in rotation:
    c, s = np.cos(np.deg2rad(degrees)), np.sin(np.deg2rad(degrees))
    i, j = {"x": (1, 2), "y": (2, 0), "z": (0, 1)}[axis]
    turned = vertices.copy()
    turned[:, i] = c * vertices[:, i] - s * vertices[:, j]
    turned[:, j] = s * vertices[:, i] + c * vertices[:, j]
    vertices = turned
  return vertices


def _cluster(mesh: TriMesh, cell: float) -> TriMesh:
  """Vertex clustering on a grid of `cell`: vertices in one cell merge at their mean."""
  keys = np.floor((mesh.vertices - mesh.vertices.min(0)) / cell).astype(np.int64)
  _, group = np.unique(keys, axis=0, return_inverse=True)
  group = group.reshape(-1)
  counts = np.bincount(group)
  merged = np.stack([np.bincount(group, mesh.vertices[:, k]) / counts for k in range(3)], -1)
  faces = np.unique(np.sort(group[mesh.faces], axis=1), axis=0, return_index=True)[1]
  return clean(TriMesh(vertices=merged, faces=group[mesh.faces][np.sort(faces)]))


def decimate(mesh: TriMesh, max_faces: int) -> TriMesh:
  """Coarsens an untextured mesh to ≤ max_faces faces by vertex clustering (the finest grid,
  found by bisection on the cell size, that meets the budget). Renders here are 64² at most,
  so the lost detail is sub-pixel for the budgets used."""
  if len(mesh.faces) <= max_faces:
    return mesh
  if mesh.uvs is not None:
    raise ValueError("decimate: textured meshes are not decimated (UVs would be lost)")
  lo, hi = 0.0, float(np.ptp(mesh.vertices, 0).max())
  best = _cluster(mesh, hi)
  for _ in range(18):
    mid = 0.5 * (lo + hi)
    candidate = _cluster(mesh, mid)
    if len(candidate.faces) <= max_faces:
      hi, best = mid, candidate
    else:
      lo = mid
  return best


def subdivide(mesh: TriMesh, min_faces: int) -> TriMesh:
  """Midpoint-subdivides (4 faces per face) until ≥ min_faces faces, so that per-face part
  colours of a low-poly object (a cube's 12 faces) form spatial regions."""
  v, f = mesh.vertices, mesh.faces
  while len(f) < min_faces:
    v, f = trimesh.remesh.subdivide(v, f)
  return TriMesh(vertices=np.asarray(v), faces=np.asarray(f, np.int64))


def vertex_normals(vertices: np.ndarray, faces: np.ndarray) -> np.ndarray:
  """[N, 3] area-weighted unit vertex normals (faces as wound; zero where undefined)."""
  cross = np.cross(vertices[faces[:, 1]] - vertices[faces[:, 0]],
                   vertices[faces[:, 2]] - vertices[faces[:, 0]])
  normals = np.zeros_like(vertices)
  for k in range(3):
    np.add.at(normals, faces[:, k], cross)
  length = np.linalg.norm(normals, axis=-1, keepdims=True)
  return np.where(length > 0, normals / np.maximum(length, 1e-30), 0.0)


def _wound(vertices: np.ndarray, faces: np.ndarray) -> np.ndarray:
  """trimesh's consistent (and, where closed, outward) winding of the faces."""
  tm = trimesh.Trimesh(vertices, faces, process=False)
  trimesh.repair.fix_winding(tm)
  if tm.is_watertight:
    trimesh.repair.fix_inversion(tm)
  return np.asarray(tm.faces, np.int64)


def consistent_winding(vertices: np.ndarray, faces: np.ndarray) -> np.ndarray:
  """[M] bool: the faces trimesh flips to wind the mesh consistently (outward where a
  component is closed), without reordering them (`orient_outward` for corner data)."""
  fixed = _wound(vertices, faces)
  if fixed.shape != faces.shape or not np.array_equal(np.sort(fixed, 1), np.sort(faces, 1)):
    raise AssetError("consistent_winding: trimesh reordered the faces")
  rolled = [np.roll(faces, k, axis=1) for k in range(3)]
  return ~np.any([np.all(fixed == r, axis=1) for r in rolled], axis=0)


def orient_outward(mesh: TriMesh) -> TriMesh:
  """Makes face winding consistent and outward where trimesh can (closed components), so
  vertex normals and baked shading are not speckled by flipped faces."""
  return dataclasses.replace(mesh, faces=_wound(mesh.vertices, mesh.faces))
