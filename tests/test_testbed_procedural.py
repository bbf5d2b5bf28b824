"""Generated training objects (testbed/procedural.py) and how they join the training set."""

import numpy as np
import pytest

from dc3d_jax.geometry import primitives
from dc3d_jax.testbed import albedo, catalog, dataset, meshes, procedural, render

NAMES = procedural.names(24)     # four of each family


def test_a_name_always_gives_the_same_object_and_names_differ():
  a, b = procedural.generate("proc-0007"), procedural.generate("proc-0007")
  np.testing.assert_array_equal(a.vertices, b.vertices)
  np.testing.assert_array_equal(a.corner_attr, b.corner_attr)
  shapes = {procedural.generate(n).vertices.tobytes() for n in NAMES}
  assert len(shapes) == len(NAMES)
  with pytest.raises(KeyError, match="proc-NNNN"):
    procedural.generate("cow")


def test_parts_are_closed_and_wound_outward():
  """Each part's signed volume (divergence theorem, primitives.mesh_volume) is positive (wound
  outward) and does not change when the part is moved, which holds for a closed surface only
  (an open one's flux through the missing faces depends on the origin)."""
  for name in NAMES:
    for part in procedural.parts(name)[0]:
      vol = primitives.mesh_volume(part)
      assert vol > 1e-5, name
      moved = primitives.mesh_volume(primitives.translate(part, (0.7, -1.3, 2.1)))
      np.testing.assert_allclose(moved, vol, rtol=1e-3, err_msg=name)


def test_every_family_is_mirror_symmetric():
  """Every vertex has its mirror image through the object's XZ plane (the plane turned by the
  three-quarter yaw for animals and vehicles), found by brute-force nearest neighbours; the
  vessels (turned solids) are also centred on the Z axis."""
  for i, name in enumerate(NAMES):
    family = procedural.FAMILIES[i % len(procedural.FAMILIES)]
    v = procedural.generate(name).vertices
    if family in procedural._THREE_QUARTER:
      v = meshes.rotate(v, (("z", 45.0),))
    if family is procedural._vessel:   # rotationally symmetric about Z: mirror in X as well
      np.testing.assert_allclose(v[:, :2].mean(0), 0.0, atol=1e-6)
    mirror = v * np.array([1.0, -1.0, 1.0])
    gap = np.sqrt(((mirror[:, None] - v[None]) ** 2).sum(-1)).min(1).max()
    assert gap < 1e-6, (name, gap)


def test_part_colours_come_from_the_palette_with_baked_shading():
  obj = procedural.generate("proc-0000")
  shade = albedo.shading(meshes.vertex_normals(obj.vertices, obj.faces))[obj.faces]
  albedo_rgb = obj.corner_attr / shade[..., None]
  nearest = np.abs(albedo_rgb.reshape(-1, 1, 3) - albedo.PALETTE[None]).sum(-1).min(1)
  assert nearest.max() < 1e-5
  assert len(np.unique(np.round(albedo_rgb.reshape(-1, 3), 4), axis=0)) >= 3


def test_generated_names_may_train_and_held_out_ones_still_may_not():
  names = catalog.TRAIN[:1] + procedural.names(2)
  assert catalog.check_training_names(names) == names
  for bad in (("proc-x",), ("cow",), ("proc-0001", "duck")):
    with pytest.raises(ValueError):
      catalog.check_training_names(bad)


def test_config_adds_generated_objects_after_the_catalog():
  data = {"resolution": 16, "instances": 2, "procedural": 3,
          "elevation_range_deg": [-10.0, 45.0]}
  settings, names = dataset.from_config(data)
  assert settings == dataset.RenderSettings(resolution=16, instances=2)
  assert names == catalog.TRAIN + ("proc-0000", "proc-0001", "proc-0002")
  assert dataset.from_config({"resolution": 16})[1] == catalog.TRAIN


def test_objects_are_cached_one_by_one_so_a_larger_set_renders_only_the_new(monkeypatch,
                                                                           tmp_path):
  rendered = []
  real = dataset.render_object
  monkeypatch.setattr(dataset, "render_object",
                      lambda obj, s: rendered.append(obj.name) or real(obj, s))
  settings = dataset.RenderSettings(resolution=8, supersample=1, instances=1, views=1)
  small = dataset.build_training_set(settings, procedural.names(2), cache_dir=tmp_path)
  large = dataset.build_training_set(settings, procedural.names(3), cache_dir=tmp_path)
  assert rendered == ["proc-0000", "proc-0001", "proc-0002"]
  np.testing.assert_array_equal(large["rgba"][:2], small["rgba"])
  assert large["rgba"].shape == (3, 2, 8, 8, 4) and list(large["object"]) == [0, 1, 2]


def test_a_generated_object_renders_framed_like_a_catalog_one():
  """render.place frames it: the reference view's silhouette spans 90% of the longer side."""
  obj = procedural.generate("proc-0004")
  placed = render.place(obj.vertices, 0.0, 0.0)
  rgba = render.render_views(obj, placed, [0.0], [0.0], 32, supersample=2)[0]
  mask = albedo.foreground(rgba[..., :3]) > 0
  rows, cols = np.nonzero(mask.any(1))[0], np.nonzero(mask.any(0))[0]
  extent = max(rows[-1] - rows[0], cols[-1] - cols[0]) + 1
  assert abs(extent - 0.9 * 32) <= 1.5
