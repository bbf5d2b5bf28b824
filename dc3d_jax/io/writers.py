"""Atomic writers for images, videos, JSON and JSON-lines metrics.

Every file is written to a hidden temporary name in the target's directory and moved into
place with os.replace, so an exception or Ctrl-C never leaves a half-written file at the
target path (a resumed run trusts what it finds in outputs/<run>/).
"""

import contextlib
import json
import os
import secrets
import shutil
import warnings
from pathlib import Path
from typing import Any, Iterable

import imageio_ffmpeg
import numpy as np
from PIL import Image

GRID_GAP = 2  # white pixels between image_grid cells
_VIDEO_CRF = "18"  # x264 constant quality: visually lossless for renders, small files


@contextlib.contextmanager
def atomic_path(path):
  """Yields a temporary path next to `path` (same suffix) and moves it into place on success.

  The suffix is kept because writers such as ffmpeg pick the format from it. A unique name
  is made rather than a mkstemp file, so the result gets normal (umask) permissions.
  """
  path = Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  tmp = path.with_name(f".{path.stem}.{os.getpid()}-{secrets.token_hex(4)}.tmp{path.suffix}")
  try:
    yield tmp
    if not tmp.exists():
      raise OSError(f"{path}: the writer produced no file")
    os.replace(tmp, path)
  finally:
    tmp.unlink(missing_ok=True)  # BaseException too: Ctrl-C leaves no debris


def to_uint8(img, what) -> np.ndarray:
  """float [0, 1] (or uint8) -> uint8, refusing NaN/Inf rather than hiding them."""
  img = np.asarray(img)
  if img.dtype == np.uint8:
    return img
  img = img.astype(np.float32)
  if not np.isfinite(img).all():
    raise ValueError(f"{what}: image contains NaN or Inf")
  return np.round(np.clip(img, 0.0, 1.0) * 255.0).astype(np.uint8)


def save_png(path, img) -> None:
  """Writes [H, W, 1|3|4] (or [H, W]) float in [0, 1] as an 8-bit grey/RGB/RGBA PNG."""
  img = to_uint8(img, path)
  img = img[..., None] if img.ndim == 2 else img
  if img.ndim != 3 or img.shape[-1] not in (1, 3, 4):
    raise ValueError(f"{path}: save_png wants [H, W, 1|3|4], got {img.shape}")
  pil = Image.fromarray(img[..., 0] if img.shape[-1] == 1 else img)
  with atomic_path(path) as tmp:
    pil.save(tmp, format="PNG")


def to_rgb_on_white(img) -> np.ndarray:
  """[H, W] or [H, W, 1|3|4] float -> [H, W, 3]: grey broadcast, RGBA over white."""
  img = np.asarray(img, np.float32)
  img = img[..., None] if img.ndim == 2 else img
  channels = img.shape[-1]
  if channels == 1:
    return np.repeat(img, 3, axis=-1)
  if channels == 3:
    return img
  if channels == 4:
    alpha = img[..., 3:]
    return img[..., :3] * alpha + (1.0 - alpha)
  raise ValueError(f"expected 1, 3 or 4 channels, got shape {img.shape}")


def image_grid(images, ncols: int) -> np.ndarray:
  """Tiles images row-major into [H', W', 3] with GRID_GAP white pixels between cells.

  Cells take the largest image's size; smaller images sit at the cell's top-left on white.
  """
  cells = [to_rgb_on_white(im) for im in images]
  if not cells:
    raise ValueError("image_grid needs at least one image")
  ncols = max(1, min(int(ncols), len(cells)))
  nrows = -(-len(cells) // ncols)
  ch = max(c.shape[0] for c in cells)
  cw = max(c.shape[1] for c in cells)
  step_y, step_x = ch + GRID_GAP, cw + GRID_GAP
  grid = np.ones((nrows * step_y - GRID_GAP, ncols * step_x - GRID_GAP, 3), np.float32)
  for i, cell in enumerate(cells):
    y, x = (i // ncols) * step_y, (i % ncols) * step_x
    grid[y:y + cell.shape[0], x:x + cell.shape[1]] = cell
  return grid


def _as_float(frame) -> np.ndarray:
  frame = np.asarray(frame)
  return frame.astype(np.float32) / 255.0 if frame.dtype == np.uint8 else frame


def _even_frame(frame, what) -> np.ndarray:
  """uint8 [H, W, 3] padded with white at the bottom/right to even sides (yuv420p needs it)."""
  rgb = to_uint8(to_rgb_on_white(_as_float(frame)), what)
  h, w = rgb.shape[:2]
  pad = ((0, h % 2), (0, w % 2), (0, 0))
  return np.ascontiguousarray(np.pad(rgb, pad, constant_values=255))


def save_video(path, frames: Iterable[Any], fps: float = 30) -> None:
  """Writes frames ([N, H, W, 3] array, or a list/iterator of [H, W, C]) as an H.264 MP4.

  yuv420p with even sides plays in browsers; odd sizes are padded with white. Frames are
  consumed lazily, so an iterator of renders never has to fit in memory at once.
  """
  frames = iter(frames)
  first = next(frames, None)
  if first is None:
    raise ValueError(f"{path}: save_video got no frames")
  raw_hw = np.shape(first)[:2]  # compared before padding: 33 and 34 rows both pad to 34
  first = _even_frame(first, path)
  size_hw = first.shape[:2]
  with atomic_path(path) as tmp:
    writer = imageio_ffmpeg.write_frames(
        str(tmp), (size_hw[1], size_hw[0]), fps=fps, codec="libx264", quality=None,
        pix_fmt_in="rgb24", pix_fmt_out="yuv420p", macro_block_size=1,
        output_params=["-crf", _VIDEO_CRF, "-preset", "medium", "-movflags", "+faststart"])
    try:
      with warnings.catch_warnings():
        # Starting ffmpeg forks a JAX-threaded process; it execs at once, so the generic
        # fork-deadlock warning does not apply here.
        warnings.filterwarnings("ignore", message=r"os\.fork\(\) was called",
                                category=RuntimeWarning)
        writer.send(None)
      writer.send(first)
      for frame in frames:
        if np.shape(frame)[:2] != raw_hw:
          raise ValueError(f"{path}: frame of size {np.shape(frame)[:2]} after frames of {raw_hw}")
        writer.send(_even_frame(frame, path))
    finally:
      writer.close()  # waits for ffmpeg, so the file is complete (or removed) after this


def to_python(obj):
  """Recursively turns numpy/jax scalars and arrays into JSON-ready Python values."""
  if isinstance(obj, dict):
    # Keys become strings here (json would anyway) so sort_keys never compares int with str.
    return {k if isinstance(k, str) else str(to_python(k)): to_python(v) for k, v in obj.items()}
  if isinstance(obj, (list, tuple)):
    return [to_python(v) for v in obj]
  if isinstance(obj, (str, int, float, bool)) or obj is None:
    return obj
  if isinstance(obj, os.PathLike):
    return os.fspath(obj)
  if isinstance(obj, np.generic) or hasattr(obj, "__array__"):  # numpy, jax.Array
    arr = np.asarray(obj)
    if arr.dtype.kind not in "biufU":  # e.g. bfloat16, whose .tolist() json cannot write
      arr = arr.astype(np.float32)
    return arr.tolist()
  raise TypeError(f"cannot write {type(obj).__name__} as JSON")


def save_json(path, obj) -> None:
  """Writes obj as JSON (sorted keys, indent 2), atomically, creating parent dirs."""
  text = json.dumps(to_python(obj), sort_keys=True, indent=2) + "\n"
  with atomic_path(path) as tmp:
    tmp.write_text(text)


def copy_file(source, path) -> None:
  """Copies a file to `path`, atomically, creating parent dirs."""
  with atomic_path(path) as tmp:
    shutil.copyfile(source, tmp)


def append_jsonl(path, obj) -> None:
  """Appends obj as one JSON line and flushes it (metrics survive a crash up to this line)."""
  line = json.dumps(to_python(obj), sort_keys=True)
  path = Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  with open(path, "a", encoding="utf-8") as f:
    f.write(line + "\n")
    f.flush()


def _parse_lines(text: str) -> list[Any]:
  """Records of a jsonl text; unparseable lines (a crash mid-append) are dropped."""
  records = []
  for line in text.splitlines():
    try:
      records.append(json.loads(line))
    except json.JSONDecodeError:
      continue
  return records


def truncate_jsonl(path, max_step: int) -> None:
  """Keeps only records with record["step"] <= max_step (records without a step are kept).

  Used on resume from a checkpoint at max_step, so no step is logged twice. Atomic; a
  missing file is a no-op.
  """
  path = Path(path)
  if not path.exists():
    return
  kept = [r for r in _parse_lines(path.read_text(encoding="utf-8"))
          if not (isinstance(r, dict) and "step" in r) or r["step"] <= max_step]
  text = "".join(json.dumps(r, sort_keys=True) + "\n" for r in kept)
  with atomic_path(path) as tmp:
    tmp.write_text(text, encoding="utf-8")
