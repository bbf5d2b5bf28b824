"""The testbed's data side (issue 10): asset fetching, the split, mesh readers, albedo and
framed renders. Meshes here are the project's primitives (tests/testbed_tiny.py), so nothing
needs the network or the fetched assets."""

import subprocess
import sys

import numpy as np
import pytest
import trimesh

import testbed_tiny
from conftest import ROOT
from dc3d_jax.errors import AssetError
from dc3d_jax.geometry import primitives
from dc3d_jax.testbed import albedo, catalog, dataset, meshes, objects, render

sys.path.insert(0, str(ROOT / "scripts"))
import assets_testbed  # noqa: E402


def test_split_is_disjoint_and_covers_the_catalog():
  assert not set(catalog.TRAIN) & set(catalog.NEVER_TRAIN)
  assert set(catalog.TRAIN) | set(catalog.NEVER_TRAIN) == set(catalog.OBJECTS)
  assert "duck" in catalog.HELD_OUT and len(catalog.HELD_OUT) >= 5
  assert set(catalog.HELD_OUT_TEXTURED) <= set(catalog.NEVER_TRAIN)
  with pytest.raises(ValueError, match="held out"):
    catalog.check_training_names(catalog.TRAIN[:1] + ("spider",))
  assert all(catalog.OBJECTS[n].up in catalog.UP for n in catalog.OBJECTS)


def test_dataset_builder_never_reads_held_out_meshes(monkeypatch):
  read = []
  monkeypatch.setattr(objects, "load_object", lambda name, root=None: read.append(name) or name)
  monkeypatch.setattr(dataset, "render_object", lambda obj, s: {
      "rgba": np.zeros((s.instances, 1, 2, 2, 4), np.uint8), "elevation": np.zeros((1, 1)),
      "azimuth": np.zeros((1, 1)), "ref_elevation": np.zeros(1)})
  data = dataset.build_training_set(dataset.RenderSettings(instances=1))
  assert read == list(catalog.TRAIN) and not set(read) & set(catalog.HELD_OUT)
  assert list(data["names"]) == list(catalog.TRAIN)
  read.clear()
  with pytest.raises(ValueError, match="held out"):
    dataset.build_training_set(dataset.RenderSettings(), names=catalog.TRAIN[:2] + ("cow",))
  assert read == []   # refused before any mesh was read


def test_read_off_fans_polygons_and_skips_comments(tmp_path):
  path = tmp_path / "quad.off"
  path.write_text("# comment\nOFF\n5 2 0\n0 0 0\n1 0 0\n1 1 0\n0 1 0\n0 0 1\n"
                  "4 0 1 2 3 0.5 0.5 0.5\n3 0 1 4\n")
  v, f = meshes.read_off(path)
  assert v.shape == (5, 3)
  np.testing.assert_array_equal(f, [[0, 1, 2], [0, 2, 3], [0, 1, 4]])


def test_read_collada_splits_vertices_at_uv_seams(tmp_path):
  ns = "http://www.collada.org/2005/11/COLLADASchema"
  path = tmp_path / "quad.dae"
  path.write_text(f"""<COLLADA xmlns="{ns}"><library_geometries><geometry><mesh>
<source id="p"><float_array>0 0 0 1 0 0 1 1 0 0 1 0</float_array>
 <technique_common><accessor stride="3"/></technique_common></source>
<source id="uv"><float_array>0 0 1 0 1 1 0 1 0.5 0.5</float_array>
 <technique_common><accessor stride="2"/></technique_common></source>
<vertices id="v"><input semantic="POSITION" source="#p"/></vertices>
<polylist count="2"><input offset="0" semantic="VERTEX" source="#v"/>
 <input offset="1" semantic="TEXCOORD" source="#uv"/><vcount>3 3</vcount>
 <p>0 0 1 1 2 2 0 4 2 2 3 3</p></polylist></mesh></geometry></library_geometries></COLLADA>""")
  v, f, uv = meshes.read_collada(path)
  assert len(v) == 5    # position 0 carries two UVs, so it is split
  np.testing.assert_allclose(v[f], [[[0, 0, 0], [1, 0, 0], [1, 1, 0]],
                                    [[0, 0, 0], [1, 1, 0], [0, 1, 0]]])
  np.testing.assert_allclose(uv[f][:, 0], [[0, 0], [0.5, 0.5]])


def test_read_obj_reads_quads_negative_indices_and_materials(tmp_path):
  (tmp_path / "two.mtl").write_text("newmtl a\nKd 1 1 1\nmap_Kd .\\a.png\n"
                                    "newmtl b b\nmap_Kd sub/b.png\n")
  (tmp_path / "two.obj").write_text(
      "# a quad in material a, then a triangle in 'b b' by negative indices\n"
      "mtllib two.mtl\nv 0 0 0\nv 1 0 0\nv 1 1 0\nv 0 1 0\nvt 0 0\nvt 1 0\nvt 1 1\n"
      "vt 0 1\nvn 0 0 1\nf 1/1/1 2/2/1 3/3/1 4/4/1\nusemtl b b\nv 0 0 1\nvt 0.5 0.5\n"
      "f -1/-1 -5/-2 -4/-3\n")
  obj = meshes.read_obj(tmp_path / "two.obj")
  np.testing.assert_array_equal(obj.faces, [[0, 1, 2], [0, 2, 3], [4, 0, 1]])
  np.testing.assert_array_equal(obj.material, [0, 0, 1])  # before any usemtl: the first
  np.testing.assert_allclose(obj.corner_uv[1], [[0, 0], [1, 1], [0, 1]])
  np.testing.assert_allclose(obj.corner_uv[2], [[0.5, 0.5], [0, 1], [1, 1]])
  assert [p.relative_to(tmp_path).as_posix() for p in obj.textures] == ["a.png", "b.png"]
  (tmp_path / "bare.obj").write_text("mtllib two.mtl\nv 0 0 0\nv 1 0 0\nv 0 1 0\nf 1 2 3\n")
  with pytest.raises(AssetError, match="without texture coordinates"):
    meshes.read_obj(tmp_path / "bare.obj")
  (tmp_path / "typo.obj").write_text("mtllib two.mtl\nusemtl c\nv 0 0 0\nvt 0 0\nf 1/1 1/1 1/1\n")
  with pytest.raises(AssetError, match="names no material"):
    meshes.read_obj(tmp_path / "typo.obj")


def test_texture_atlas_draws_each_face_as_its_repeating_texture():
  """Points inside faces, looked up in the atlas (clamped, render.sample_texture), equal the
  same points looked up in their own material's texture repeated; faces straddle repeats."""
  rng = np.random.default_rng(0)
  tile = 8     # textures at the tile size: the atlas holds them unresampled
  textures = [rng.random((tile, tile, 3)).astype(np.float32) for _ in range(3)]
  corner_uv = rng.uniform(-1.5, 1.5, (30, 1, 2)) + rng.uniform(0, 0.6, (30, 3, 2))
  material = np.arange(30) % 3
  atlas, atlas_uv = meshes.texture_atlas(textures, corner_uv, material, tile=tile)
  assert atlas.shape == (2 * 2 * tile, 2 * 2 * tile, 3)      # 3 cells on a 2 × 2 grid
  weights = rng.dirichlet(np.ones(3), (30, 4))               # 4 points inside each face
  inside = np.einsum("fpk,fkc->fpc", weights, corner_uv)
  local = inside - np.floor(corner_uv.min(axis=1, keepdims=True))
  away = np.all((local > 1.0 / tile) & (local < 2.0 - 1.0 / tile), axis=-1)  # off cell edges
  got = render.sample_texture(atlas, np.einsum("fpk,fkc->fpc", weights, atlas_uv))
  want = np.stack([testbed_tiny.repeating_lookup(textures[m], inside[f]) for f, m in enumerate(material)])
  assert away.sum() > 60
  np.testing.assert_allclose(got[away], want[away], atol=1e-5)
  with pytest.raises(AssetError, match="repeats"):
    meshes.texture_atlas(textures, np.array([[[0.9, 0], [3.0, 0], [1, 1]]]), np.array([0]))


def test_consistent_winding_names_the_flipped_faces():
  sphere = trimesh.creation.icosphere(subdivisions=1)     # closed, wound outward
  faces = np.asarray(sphere.faces, np.int64)
  flipped = faces.copy()
  flipped[[2, 7]] = flipped[[2, 7]][:, ::-1]
  flags = meshes.consistent_winding(np.asarray(sphere.vertices), flipped)
  np.testing.assert_array_equal(np.flatnonzero(flags), [2, 7])
  inside_out = meshes.consistent_winding(np.asarray(sphere.vertices), faces[:, ::-1])
  assert inside_out.all()                                 # closed: turned outward


def test_decimate_meets_the_face_budget_and_keeps_the_shape():
  sphere = primitives.uv_sphere(n_lat=48, n_lon=96)
  mesh = meshes.clean(meshes.TriMesh(np.asarray(sphere.vertices, np.float64),
                                     np.asarray(sphere.faces, np.int64)))
  small = meshes.decimate(mesh, 600)
  assert 300 < len(small.faces) <= 600
  radius = np.linalg.norm(small.vertices, axis=-1)
  assert radius.max() < 1.0 + 1e-6 and radius.min() > 0.9


def test_degenerate_and_planar_meshes_are_refused():
  flat = meshes.TriMesh(np.array([[0, 0, 0], [1, 0, 0], [1, 1, 0], [0, 1, 0.0]]),
                        np.array([[0, 1, 2], [0, 2, 3], [0, 1, 3], [1, 2, 3]]))
  with pytest.raises(AssetError, match="degenerate"):
    meshes.check_solid(flat, "flat")


def test_albedo_is_deterministic_and_multicoloured():
  obj = testbed_tiny.tiny_object("snowman")
  again = testbed_tiny.tiny_object("snowman")
  np.testing.assert_array_equal(obj.corner_attr, again.corner_attr)
  mesh = meshes.TriMesh(obj.vertices, obj.faces)
  parts = np.unique(albedo.part_colours("snowman", obj.vertices[obj.faces].mean(1)), axis=0)
  assert 3 <= len(parts) <= 5 and len(parts) == 3 + albedo.object_seed("snowman") % 3
  other = albedo.part_colours("snowmen", obj.vertices[obj.faces].mean(1))
  assert not np.array_equal(other, albedo.part_colours("snowman", obj.vertices[obj.faces].mean(1)))
  shade = albedo.shading(meshes.vertex_normals(mesh.vertices, mesh.faces))
  assert shade.min() >= 0.55 - 1e-6 and shade.max() <= 1.0 + 1e-6 and np.ptp(shade) > 0.3
  assert albedo.foreground(albedo.PALETTE * 0.55).all()   # darkest shade of every colour ...
  assert albedo.foreground(albedo.PALETTE).all()          # ... and brightest count as object


@pytest.mark.parametrize("yaw, ref_elevation", [(0.0, 0.0), (70.0, 25.0)])
def test_renders_fill_90_percent_at_the_reference_view_and_are_centred(yaw, ref_elevation):
  obj = testbed_tiny.tiny_object()
  placed = render.place(obj.vertices, yaw, ref_elevation)
  image = render.render_views(obj, placed, ref_elevation, 0.0, 64, supersample=1)[0]
  rows = np.flatnonzero(image[..., 3].max(1) > 0)
  cols = np.flatnonzero(image[..., 3].max(0) > 0)
  height, width = rows[-1] + 1 - rows[0], cols[-1] + 1 - cols[0]
  assert abs(max(height, width) - 0.9 * 64) <= 1.5
  assert abs(0.5 * (rows[0] + rows[-1] + 1) - 32) <= 1.0
  assert abs(0.5 * (cols[0] + cols[-1] + 1) - 32) <= 1.0
  # Off-reference views of the same placement are not re-framed.
  side = render.render_views(obj, placed, ref_elevation, 90.0, 64, supersample=1)[0]
  assert not np.array_equal(side[..., 3], image[..., 3])


def test_fetch_reports_an_unreachable_registry_as_one_asset_error(tmp_path, monkeypatch):
  def offline(cmd, **kwargs):
    return subprocess.CompletedProcess(cmd, 100, "", "E: Failed to fetch http://deb.debian."
                                       "org/... Temporary failure resolving 'deb.debian.org'")
  monkeypatch.setattr(assets_testbed.subprocess, "run", offline)
  with pytest.raises(AssetError, match="registry") as info:
    assets_testbed.fetch_testbed(tmp_path)
  assert "apt-get download" in str(info.value) and "Temporary failure" in str(info.value)
  assert not (tmp_path / "testbed").exists()
  assert not list(tmp_path.glob(".fetch-*"))       # the staging folder is gone too


def test_fetch_is_idempotent_on_a_verified_folder(tmp_path, monkeypatch):
  folder = tmp_path / "testbed"
  pinned = {}
  for name in assets_testbed.wanted():
    (folder / name).parent.mkdir(parents=True, exist_ok=True)
    (folder / name).write_text(name)
    pinned[name] = assets_testbed.sha256_of(folder / name)
  table = tmp_path / "pinned.json"
  table.write_text(__import__("json").dumps(pinned))
  monkeypatch.setattr(assets_testbed, "PINNED", table)
  monkeypatch.setattr(assets_testbed.subprocess, "run", lambda *a, **k: pytest.fail("fetched"))
  assert "already present" in assets_testbed.fetch_testbed(tmp_path)
  (folder / assets_testbed.wanted()[0]).write_text("tampered")
  assert assets_testbed.verify(folder, pinned) == [assets_testbed.wanted()[0]]


def test_a_mirrored_pair_is_the_mirror_objects_pair():
  """The training's mirror augmentation (testbed/training.py): flipping a render left-right and
  negating its azimuth gives the render of the object mirrored about the plane through the up
  axis and the reference camera (azimuth 0), for the reference view and any other view."""
  obj = testbed_tiny.tiny_object()                  # the box nose sits off that plane (y 0.1)
  placed = render.place(obj.vertices, 25.0, 10.0)
  mirror = np.array([1.0, -1.0, 1.0])
  twin = render.ObjectModel(obj.name, placed * mirror, obj.faces[:, ::-1],
                            obj.corner_attr[:, ::-1])   # reversed winding keeps faces outward
  elevation, azimuth = np.array([10.0, 30.0, -5.0]), np.array([0.0, 60.0, 200.0])
  views = render.render_views(obj, placed, elevation, azimuth, 32)
  mirrored = render.render_views(twin, twin.vertices, elevation, -azimuth, 32)
  assert float(np.abs(views - views[:, :, ::-1]).max()) > 0.3     # the renders are not symmetric
  np.testing.assert_allclose(mirrored, views[:, :, ::-1], atol=2e-3)
