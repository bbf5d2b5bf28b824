"""Tests for dc3d_jax.io: loading, resizing, recentering and the atomic writers."""

import gc
import json
import warnings

import imageio
import numpy as np
import pytest
from PIL import Image

from dc3d_jax.io import images, recenter, writers
from dc3d_jax.io.images import ImageInputError


def _save(path, arr, mode=None, **kwargs):
  (Image.fromarray(arr, mode) if mode else Image.fromarray(arr)).save(path, **kwargs)
  return path


def _rgb_u8(h=8, w=6, seed=0):
  return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _files_in(directory):
  return sorted(p.name for p in directory.iterdir())


# ----------------------------------------------------------------------------- load_rgba

@pytest.mark.parametrize("name", ["photo.jpg", "photo.png"])
def test_rgb_without_alpha_raises_with_fix(tmp_path, name):
  path = _save(tmp_path / name, _rgb_u8())
  with pytest.raises(ImageInputError) as info:
    images.load_rgba(path)
  msg = str(info.value)
  assert name in msg and "remove_background" in msg and "transparent" in msg


def test_opaque_alpha_counts_as_no_background(tmp_path):
  rgba = np.concatenate([_rgb_u8(), np.full((8, 6, 1), 255, np.uint8)], -1)
  with pytest.raises(ImageInputError, match="opaque.png"):
    images.load_rgba(_save(tmp_path / "opaque.png", rgba))


def test_remove_background_callable_builds_alpha(tmp_path):
  rgb = _rgb_u8()
  seen = {}

  def remover(x):
    seen["shape"], seen["dtype"] = x.shape, x.dtype
    return np.where(x[..., 0] > 0.5, 1.0, 0.0).astype(np.float32)

  out = images.load_rgba(_save(tmp_path / "a.png", rgb), remove_background=remover)
  assert seen == {"shape": (8, 6, 3), "dtype": np.float32}
  assert out.shape == (8, 6, 4) and out.dtype == np.float32
  np.testing.assert_allclose(out[..., :3], rgb / 255.0, atol=1e-6)
  np.testing.assert_array_equal(out[..., 3], (rgb[..., 0] / 255.0 > 0.5).astype(np.float32))


def test_rgba_png_and_webp_keep_straight_alpha(tmp_path):
  rgba = np.concatenate([_rgb_u8(), np.random.default_rng(1).integers(0, 256, (8, 6, 1),
                                                                     dtype=np.uint8)], -1)
  for name, kwargs in [("x.png", {}), ("x.webp", {"lossless": True, "exact": True})]:
    out = images.load_rgba(_save(tmp_path / name, rgba, **kwargs))
    np.testing.assert_allclose(out, rgba / 255.0, atol=1e-6, err_msg=name)


def test_la_mode_loads_grey_and_alpha(tmp_path):
  la = np.zeros((4, 5, 2), np.uint8)
  la[..., 0], la[1:3, 1:4, 1] = 200, 255
  out = images.load_rgba(_save(tmp_path / "la.png", la, "LA"))
  np.testing.assert_allclose(out[..., :3], 200 / 255.0, atol=1e-6)
  np.testing.assert_array_equal(out[..., 3], la[..., 1] / 255.0)


def test_palette_with_transparency_keeps_it(tmp_path):
  idx = np.zeros((4, 4), np.uint8)
  idx[1:3, 1:3] = 1
  img = Image.fromarray(idx, "P")
  img.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
  img.info["transparency"] = 0
  img.save(tmp_path / "p.png", transparency=0)
  out = images.load_rgba(tmp_path / "p.png")
  np.testing.assert_array_equal(out[..., 3], idx.astype(np.float32))
  np.testing.assert_allclose(out[1:3, 1:3, :3], np.broadcast_to([1.0, 0, 0], (2, 2, 3)))


def test_missing_and_corrupt_files(tmp_path):
  with pytest.raises(FileNotFoundError, match="nope.png"):
    images.load_rgba(tmp_path / "nope.png")
  bad = tmp_path / "broken.png"
  bad.write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 10)
  with pytest.raises(ImageInputError, match="broken.png"):
    images.load_rgba(bad)


# ----------------------------------------------------------------------------- load_depth

def test_depth_16bit_scales_to_unit_range(tmp_path):
  d16 = np.array([[0, 65535], [32768, 1000]], np.uint16)
  Image.fromarray(d16).save(tmp_path / "d16.png")
  out = images.load_depth(tmp_path / "d16.png")
  assert out.shape == (2, 2, 1) and out.dtype == np.float32
  np.testing.assert_allclose(out[..., 0], d16 / 65535.0, atol=1e-7)


def test_depth_8bit_and_resize(tmp_path):
  d8 = np.full((4, 4), 51, np.uint8)
  path = _save(tmp_path / "d8.png", d8)
  np.testing.assert_allclose(images.load_depth(path), 0.2, atol=1e-7)
  out = images.load_depth(path, shape_hw=(2, 2))
  assert out.shape == (2, 2, 1)
  np.testing.assert_allclose(out, 0.2, atol=1e-6)


def _save_u16(path, values):
  Image.fromarray(np.round(values[..., 0] * 65535).astype(np.uint16)).save(path)
  return path


def test_disparity_map_gives_the_depth_maps_loss(tmp_path):
  """The toy at the reference view: its depth as the reference preprocesses it (min-max
  inside the mask, near = dark) and its disparity (1/depth, min-max, near = bright), each a
  16-bit PNG loaded with its data.depth_kind, give one depth_rel for a rendered depth; the
  disparity read as depth pushes the other way."""
  import jax
  import jax.numpy as jnp
  from dc3d_jax import cameras, losses
  from dc3d_jax.geometry import rasterize
  from dc3d_jax.priors import oracle
  render = jax.jit(lambda mesh: rasterize.render_mesh(
      mesh, cameras.reference_camera(cameras.ViewSettings(), 48, 48)))
  out = render(oracle.ground_truth_mesh("primitives"))
  distance, alpha = np.asarray(out["depth"], np.float64), np.asarray(out["alpha"])
  mask = (alpha > 0.5).astype(np.float32)
  inside = mask > 0

  def min_max_inside(values):   # the reference's preprocessing: [0, 1] in the mask, 0 out
    lo, hi = values[inside].min(), values[inside].max()
    return np.where(inside, (values - lo) / (hi - lo), 0.0)

  depth_png = _save_u16(tmp_path / "depth.png", min_max_inside(distance))
  disp_png = _save_u16(tmp_path / "disparity.png",
                       min_max_inside(1.0 / np.maximum(distance, 1e-6)))
  # A rendered depth with an error: the true distance plus a tilt across the image.
  pred = jnp.asarray(distance + 0.2 * np.linspace(-1, 1, 48)[None, :, None], jnp.float32)
  depth_rel = jax.jit(losses.depth_rel)
  loss = lambda path, kind: float(depth_rel(pred, images.load_depth(path, kind=kind), mask))
  from_depth, from_disparity = loss(depth_png, "depth"), loss(disp_png, "disparity")
  print(f"depth_rel: depth {from_depth:.4f}, disparity {from_disparity:.4f}")
  assert 0.05 < from_depth < 0.5
  assert abs(from_disparity - from_depth) < 5e-3        # measured 2.5e-3 (0.117 vs 0.120)
  assert loss(disp_png, "depth") > 1.5                   # the wrong sign: 2 - the loss
  with pytest.raises(ValueError, match="data.depth_kind='inverse'"):
    images.load_depth(depth_png, kind="inverse")


def test_depth_three_equal_channels_accepted_unequal_rejected(tmp_path):
  grey = np.random.default_rng(2).integers(0, 256, (5, 5), dtype=np.uint8)
  out = images.load_depth(_save(tmp_path / "eq.png", np.stack([grey] * 3, -1)))
  np.testing.assert_allclose(out[..., 0], grey / 255.0, atol=1e-7)
  with pytest.raises(ImageInputError) as info:
    images.load_depth(_save(tmp_path / "colour_depth.png", _rgb_u8(5, 5)))
  assert "colour_depth.png" in str(info.value) and "single-channel" in str(info.value)


# ----------------------------------------------------------------------------- resize_area

@pytest.mark.parametrize("channels", [1, 3, 4])
@pytest.mark.parametrize("hw", [(5, 3), (16, 40), (7, 12)])
def test_resize_constant_stays_constant(channels, hw):
  value = np.array([0.3, 0.6, 0.9, 0.7][:channels], np.float32)
  img = np.broadcast_to(value, (12, 12, channels)).copy()
  out = images.resize_area(img, hw)
  assert out.shape == (*hw, channels) and out.dtype == np.float32
  np.testing.assert_allclose(out, np.broadcast_to(value, out.shape), atol=1e-6)


def test_resize_block_checkerboard_gives_block_means():
  rng = np.random.default_rng(3)
  blocks = rng.random((3, 4, 3)).astype(np.float32)
  # Each 2x2 block holds a checkerboard around its value: mean of the block = value.
  check = np.array([[0.1, -0.1], [-0.1, 0.1]], np.float32)[..., None]
  img = np.kron(blocks, np.ones((2, 2, 1), np.float32)) + np.tile(check, (3, 4, 1))
  out = images.resize_area(img, (3, 4))
  np.testing.assert_allclose(out, blocks, atol=1e-6)


def test_resize_non_integer_area_matches_brute_force():
  img = np.random.default_rng(4).random((5, 7, 1)).astype(np.float32)
  # Brute force: upsample 6x by replication (3/5 and 2/7 scales become whole pixels), box-average.
  big = np.repeat(np.repeat(img, 6, 0), 6, 1)
  want = big.reshape(3, 10, 2, 21, 1).mean(axis=(1, 3))
  np.testing.assert_allclose(images.resize_area(img, (3, 2)), want, atol=1e-6)


def test_resize_upsample_is_bilinear():
  img = np.array([[0.0, 1.0]], np.float32)[..., None]
  out = images.resize_area(img, (1, 4))[0, :, 0]
  np.testing.assert_allclose(out, [0.0, 0.25, 0.75, 1.0], atol=1e-6)


@pytest.mark.parametrize("hw", [(7, 7), (5, 9), (40, 40)])
def test_rgba_resize_is_premultiplied_no_dark_fringe(hw):
  colour = np.array([0.9, 0.5, 0.2], np.float32)
  img = np.zeros((20, 20, 4), np.float32)  # transparent pixels have black RGB
  img[5:14, 6:17, :3], img[5:14, 6:17, 3] = colour, 1.0
  out = images.resize_area(img, hw)
  inside = out[..., 3] > 0
  assert inside.any() and (out[..., 3][inside] < 1).any()  # there are soft edge pixels
  np.testing.assert_allclose(out[..., :3][inside], np.broadcast_to(colour, (inside.sum(), 3)),
                             atol=1e-5)
  np.testing.assert_array_equal(out[..., :3][~inside], 0.0)


def test_reference_arrays_mask_and_straight_rgb():
  img = np.zeros((8, 8, 4), np.float32)
  img[:, :3, :3], img[:, :3, 3] = 0.4, 1.0   # 3 opaque columns -> 1.5 columns at half size
  depth = np.linspace(0, 1, 64, dtype=np.float32).reshape(8, 8)
  out = images.reference_arrays(img, depth, (4, 4))
  assert out["rgb"].shape == (4, 4, 3) and out["mask"].shape == (4, 4, 1)
  np.testing.assert_array_equal(out["mask"][0, :, 0], [1, 0, 0, 0])  # alpha 1, 0.5, 0, 0
  np.testing.assert_allclose(out["rgb"][:, :2], 0.4, atol=1e-6)  # straight, not 0.2
  # Depth is area-averaged: each output pixel is the mean of its 2x2 block.
  np.testing.assert_allclose(out["depth"][..., 0], depth.reshape(4, 2, 4, 2).mean((1, 3)),
                             atol=1e-6)
  assert images.reference_arrays(img, None, (4, 4))["depth"] is None


# ----------------------------------------------------------------------------- recenter

def test_recenter_rectangle_and_depth():
  rgba = np.zeros((100, 100, 4), np.float32)
  rgba[10:30, 60:70] = [0.2, 0.4, 0.6, 1.0]  # 20 tall, 10 wide, off-centre
  depth = np.zeros((100, 100, 1), np.float32)
  depth[10:30, 60:70] = 0.7
  out, out_depth = recenter.recenter(rgba, size=100, fill=0.9, depth=depth)
  assert out.shape == (100, 100, 4) and out_depth.shape == (100, 100, 1)
  ys, xs = np.nonzero(out[..., 3] > 0.5)
  assert ys.max() - ys.min() + 1 == 90 and xs.max() - xs.min() + 1 == 45
  assert abs((ys.min() + ys.max()) / 2 - 49.5) <= 1 and abs((xs.min() + xs.max()) / 2 - 49.5) <= 1
  np.testing.assert_allclose(out[ys, xs, :3], np.broadcast_to([0.2, 0.4, 0.6], (ys.size, 3)),
                             atol=1e-5)
  dy, dx = np.nonzero(out_depth[..., 0] > 0)
  np.testing.assert_array_equal([dy.min(), dy.max(), dx.min(), dx.max()],
                                [ys.min(), ys.max(), xs.min(), xs.max()])
  np.testing.assert_allclose(out_depth[dy, dx, 0], 0.7, atol=1e-6)


def test_recenter_wide_object_and_no_depth():
  rgba = np.zeros((50, 80, 4), np.float32)
  rgba[40:44, 0:30, 3] = 1.0
  out, none = recenter.recenter(rgba, size=64)
  ys, xs = np.nonzero(out[..., 3] > 0.5)
  assert none is None and xs.max() - xs.min() + 1 == int(0.9 * 64)  # 57


def test_recenter_empty_alpha_raises():
  with pytest.raises(ImageInputError, match="empty"):
    recenter.recenter(np.zeros((10, 10, 4), np.float32), size=16)


# ----------------------------------------------------------------------------- writers

def test_save_png_modes_round_trip(tmp_path):
  rng = np.random.default_rng(5)
  for channels, mode in [(1, "L"), (3, "RGB"), (4, "RGBA")]:
    img = rng.random((6, 7, channels)).astype(np.float32)
    path = tmp_path / "sub" / f"c{channels}.png"
    writers.save_png(path, img)
    back = Image.open(path)
    assert back.mode == mode
    want = np.round(img * 255).astype(np.uint8)
    np.testing.assert_array_equal(np.asarray(back).reshape(want.shape), want)
  assert _files_in(tmp_path / "sub") == ["c1.png", "c3.png", "c4.png"]


def test_failed_png_write_leaves_old_file_and_no_temp(tmp_path):
  path = tmp_path / "img.png"
  writers.save_png(path, np.zeros((2, 2, 3)))
  before = path.read_bytes()
  with pytest.raises(ValueError, match="NaN"):
    writers.save_png(path, np.full((2, 2, 3), np.nan))
  assert path.read_bytes() == before and _files_in(tmp_path) == ["img.png"]


def test_image_grid_layout():
  grey = np.full((4, 3, 1), 0.5, np.float32)
  rgb = np.zeros((4, 3, 3), np.float32)
  rgba = np.zeros((4, 3, 4), np.float32)  # fully transparent -> white
  grid = writers.image_grid([grey, rgb, rgba], ncols=2)
  gap = writers.GRID_GAP
  assert grid.shape == (2 * 4 + gap, 2 * 3 + gap, 3)
  np.testing.assert_allclose(grid[:4, :3], 0.5)
  np.testing.assert_allclose(grid[:4, 3:3 + gap], 1.0)  # white gap
  np.testing.assert_allclose(grid[:4, 3 + gap:], 0.0)
  np.testing.assert_allclose(grid[4 + gap:, :3], 1.0)  # transparent over white
  np.testing.assert_allclose(grid[4 + gap:, 3 + gap:], 1.0)  # empty cell


def _read_video(path):
  # imageio-ffmpeg's reader never closes its pipes once ffmpeg has exited; silence that
  # ResourceWarning here so the suite also passes under -W error.
  with warnings.catch_warnings():
    warnings.simplefilter("ignore", ResourceWarning)
    with imageio.v2.get_reader(path, format="FFMPEG") as reader:
      out = reader.get_meta_data(), [np.asarray(f) for f in reader]
    gc.collect()
  return out


def test_save_video_round_trip_and_odd_padding(tmp_path):
  n, h, w = 5, 33, 47
  frames = np.zeros((n, h, w, 3), np.float32)
  for i in range(n):
    frames[i, :, : 8 * (i + 1)] = [0.1, 0.5, 0.9]
  path = tmp_path / "vid" / "turntable.mp4"
  writers.save_video(path, frames, fps=30)
  meta, back = _read_video(path)
  assert meta["size"] == (48, 34) and len(back) == n
  assert abs(meta["fps"] - 30) < 1e-6
  assert back[-1].shape == (34, 48, 3)
  last = back[-1].astype(np.float32) / 255
  np.testing.assert_allclose(last[10, 20], [0.1, 0.5, 0.9], atol=0.04)  # colour survives
  # Padding is white (probed next to black content: yuv420p shares chroma over 2x2 pixels).
  assert last[-1, 44].min() > 0.9 and last[10, -1].min() > 0.9 and last[10, 44].max() < 0.1
  assert _files_in(path.parent) == ["turntable.mp4"]


@pytest.mark.parametrize("error", [RuntimeError, KeyboardInterrupt])
def test_save_video_error_mid_iteration_leaves_nothing(tmp_path, error):
  def frames():
    for _ in range(3):
      yield np.zeros((8, 8, 3), np.float32)
    raise error("renderer died")

  with pytest.raises(error):
    writers.save_video(tmp_path / "out.mp4", frames())
  assert _files_in(tmp_path) == []


def test_save_video_mismatched_frame_leaves_nothing(tmp_path):
  frames = [np.zeros((9, 8, 3)), np.zeros((10, 8, 3))]  # both pad to 10 rows
  with pytest.raises(ValueError, match="size"):
    writers.save_video(tmp_path / "out.mp4", frames)
  assert _files_in(tmp_path) == []


def test_jsonl_append_and_truncate_round_trip(tmp_path):
  path = tmp_path / "run" / "metrics.jsonl"
  writers.truncate_jsonl(path, 3)  # missing file: no-op
  assert not path.exists()
  for step in range(1, 7):
    writers.append_jsonl(path, {"step": np.int32(step), "loss": np.float32(1.0 / step)})
  with open(path, "a") as f:
    f.write('{"step": 7, "loss"')  # a crash mid-line
  assert len(path.read_text().splitlines()) == 7
  writers.truncate_jsonl(path, 4)
  records = [json.loads(line) for line in path.read_text().splitlines()]
  assert [r["step"] for r in records] == [1, 2, 3, 4]
  assert records[1]["loss"] == pytest.approx(0.5)
  writers.append_jsonl(path, {"step": 5, "loss": 0.2})
  assert [json.loads(x)["step"] for x in path.read_text().splitlines()] == [1, 2, 3, 4, 5]
  assert _files_in(path.parent) == ["metrics.jsonl"]


def test_save_json_numpy_and_jax(tmp_path):
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  obj = {"b": np.float32(0.25), "a": jnp.arange(3), "c": {"x": jnp.float32(2.5),
                                                         "y": np.array([[1, 2]], np.int64)},
         "d": (np.bool_(True), None)}
  path = tmp_path / "deep" / "metrics.json"
  writers.save_json(path, obj)
  text = path.read_text()
  assert json.loads(text) == {"a": [0, 1, 2], "b": 0.25, "c": {"x": 2.5, "y": [[1, 2]]},
                              "d": [True, None]}
  assert text.index('"a"') < text.index('"b"') < text.index('"c"') and '\n  "a"' in text


def test_recenter_fill_matches_the_reference_921_pixels():
  rgba = np.zeros((200, 100, 4), np.float32)
  rgba[20:180, 30:70, 3] = 1.0
  out, _ = recenter.recenter(rgba, size=1024)
  ys, _ = np.nonzero(out[..., 3] > 0.5)
  assert ys.max() - ys.min() + 1 == 921
