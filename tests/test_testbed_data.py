"""The testbed's data side (issue 10): asset fetching, the split, mesh readers, albedo and
framed renders. Meshes here are the project's primitives (tests/testbed_tiny.py), so nothing
needs the network or the fetched assets."""

import subprocess
import sys

import numpy as np
import pytest

import testbed_tiny
from conftest import ROOT
from dc3d_jax.errors import AssetError
from dc3d_jax.geometry import primitives
from dc3d_jax.testbed import albedo, catalog, dataset, meshes, objects, render

sys.path.insert(0, str(ROOT / "scripts"))
import assets_testbed  # noqa: E402


def test_split_is_disjoint_and_covers_the_catalog():
  assert not set(catalog.TRAIN) & set(catalog.HELD_OUT)
  assert set(catalog.TRAIN) | set(catalog.HELD_OUT) == set(catalog.OBJECTS)
  assert "duck" in catalog.HELD_OUT and len(catalog.HELD_OUT) >= 5
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
