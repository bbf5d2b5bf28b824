"""The nearest covering triangle of every pixel centre (the z-buffer), outside autodiff.

A pixel is covered when every folded edge function is ≥ 0 (a centre exactly on an edge
counts for both triangles); the z-buffer keeps the largest 1/w; equal depths go to the
lower triangle index (triangles.py has the symbols).

Two searches give the same ids:
  brute_force: every pixel against every triangle, `lax.map` over pixel chunks
               (P × F pair tests; the right choice for small images or few triangles).
  tiled:       the image is cut into S × S tiles; each triangle is listed in the tiles its
               pixel bounding box touches (a static budget of `max_pairs` (tile, triangle)
               pairs, sorted by tile), and each tile tests only its own list, in blocks of
               `block` candidates, as many blocks as its longest list needs. Pairs beyond
               the budget are dropped and counted in `overflow` (0 = exact).
"""

import jax
import jax.numpy as jnp

from dc3d_jax.geometry.raster import common, triangles

# brute_force: pixel_chunk × F ≈ 2**20 pixel-triangle pairs per lax.map step.
PAIRS_PER_CHUNK = 2**20


def _closest(tri: dict, face: jax.Array, px: jax.Array, py: jax.Array, valid: jax.Array):
  """Nearest covering candidate: tri entries [3, ..., C], their face ids and valid [..., C],
  px/py [..., P, 1] -> (key [..., P], face id [..., P]).

  key is 1/w of the winner (-1 if none); among equal keys the lowest face id wins.
  """
  # Three separate expressions, not one stacked [3, ...] array: XLA then fuses the whole
  # test-and-reduce into one loop (the stacked form ran ~10x slower on CPU).
  e = [tri["dx"][k] * (py - tri["y1"][k]) - tri["dy"][k] * (px - tri["x1"][k]) for k in range(3)]
  inside = (e[0] >= 0.0) & (e[1] >= 0.0) & (e[2] >= 0.0) & valid
  inv_w = e[0] * tri["weight"][0] + e[1] * tri["weight"][1] + e[2] * tri["weight"][2]
  key = jnp.where(inside, inv_w, -1.0)           # 1/w(p) > 0 when inside; nearest = largest
  best = jnp.max(key, axis=-1)
  # max, then the lowest id attaining it: ~5x faster on CPU than argmax's variadic reduce.
  winner = jnp.min(jnp.where(key == best[..., None], face, jnp.iinfo(jnp.int32).max), axis=-1)
  return best, winner


def brute_force(tri: dict, height: int, width: int, pixel_chunk: int | None = None):
  """tri from triangles.setup (no gradients) -> [H, W] int32 ids, -1 where empty."""
  n_faces = tri["valid"].shape[0]
  n = height * width
  chunk = pixel_chunk or max(1, PAIRS_PER_CHUNK // max(n_faces, 1))
  chunk = int(min(chunk, n))
  n_chunks = -(-n // chunk)
  px, py = (a.ravel() for a in common.pixel_centres_ndc(height, width))
  # Padding pixels sit far outside NDC, so they are never covered.
  pad = n_chunks * chunk - n
  px = jnp.pad(px, (0, pad), constant_values=1e6).reshape(n_chunks, chunk, 1)
  py = jnp.pad(py, (0, pad), constant_values=1e6).reshape(n_chunks, chunk, 1)

  face = jnp.arange(n_faces, dtype=jnp.int32)

  def one_chunk(p):
    key, winner = _closest(tri, face, p[0], p[1], tri["valid"])
    return jnp.where(key > 0.0, winner, -1)

  ids = jax.lax.map(one_chunk, (px, py))
  return ids.reshape(-1)[:n].reshape(height, width)


def tile_lists(tri: dict, height: int, width: int, tile: int, max_pairs: int) -> dict:
  """Bins triangles into S × S tiles by their pixel bounding boxes.

  Returns faces [max_pairs] int32 (tile-major, ascending face index within a tile), start and
  count [T] (each tile's slice of `faces`, T = ceil(H/S)·ceil(W/S), row-major) and overflow
  (pairs beyond max_pairs; those are the highest face indices' and are dropped).
  """
  n_faces = tri["valid"].shape[0]
  tiles_x = -(-width // tile)
  n_tiles = -(-height // tile) * tiles_x
  row0, row1, col0, col1 = triangles.pixel_ranges(tri, height, width)
  empty = (row0 > row1) | (col0 > col1)
  tx0, ty0 = col0 // tile, row0 // tile
  n_x = col1 // tile - tx0 + 1
  n_pairs = jnp.where(empty, 0, n_x * (row1 // tile - ty0 + 1))
  ends = jnp.cumsum(n_pairs)
  first = ends - n_pairs
  # Slot s belongs to the last face whose first slot is ≤ s: mark each face at its first slot
  # (max: of faces sharing one, the last is the one with pairs) and carry it forward.
  slot = jnp.arange(max_pairs, dtype=jnp.int32)
  marks = jnp.zeros(max_pairs, jnp.int32).at[first].max(
      jnp.arange(n_faces, dtype=jnp.int32), mode="drop")
  face = jax.lax.cummax(marks)
  local = slot - first[face]
  per_row = jnp.maximum(n_x[face], 1)
  tile_id = (ty0[face] + local // per_row) * tiles_x + tx0[face] + local % per_row
  tile_id = jnp.where(slot < ends[-1], tile_id, n_tiles)          # unused slots sort last
  # A stable sort keeps ascending face order inside each tile (the tie rule needs it).
  tile_sorted, faces = jax.lax.sort((tile_id, face), num_keys=1, is_stable=True)
  count = jax.ops.segment_sum(jnp.ones_like(tile_sorted), tile_sorted, num_segments=n_tiles)
  return dict(faces=faces, start=jnp.cumsum(count) - count, count=count,
              overflow=jnp.maximum(ends[-1] - max_pairs, 0).astype(jnp.int32))


def _tile_pixels(tile_ids: jax.Array, tiles_x: int, tile: int, height: int, width: int):
  """[C] tile ids -> NDC px, py [C, S*S, 1] of their pixel centres (row-major in the tile)."""
  r = jnp.arange(tile)
  rows = (tile_ids // tiles_x)[:, None, None] * tile + r[None, :, None]     # [C, S, 1]
  cols = (tile_ids % tiles_x)[:, None, None] * tile + r[None, None, :]      # [C, 1, S]
  shape = (tile_ids.shape[0], tile, tile)
  px = jnp.broadcast_to(2.0 * (cols + 0.5) / width - 1.0, shape)
  py = jnp.broadcast_to(1.0 - 2.0 * (rows + 0.5) / height, shape)
  return px.reshape(shape[0], -1, 1), py.reshape(shape[0], -1, 1)


def _search_tile_group(tri: dict, lists: dict, start, count, pixels, block: int):
  """Nearest covering face for the pixels of a group of tiles -> [C, S*S] ids (-1 empty).

  Loops over blocks of `block` candidates, as many as the group's longest list needs.
  """
  px, py = pixels
  n_slots = lists["faces"].shape[0]

  def body(j, carry):
    best_key, best_id = carry
    offsets = j * block + jnp.arange(block)
    ok = offsets[None, :] < count[:, None]                                 # [C, B]
    face = lists["faces"][jnp.minimum(start[:, None] + offsets, n_slots - 1)]
    cand = {k: tri[k][:, face][:, :, None, :] for k in ("dx", "dy", "x1", "y1", "weight")}
    key, winner = _closest(cand, face[:, None, :], px, py, (ok & tri["valid"][face])[:, None, :])
    better = key > best_key                   # strict: ties keep the lower face index
    return jnp.where(better, key, best_key), jnp.where(better, winner, best_id)

  n_blocks = (jnp.max(count) + block - 1) // block
  init = (jnp.full(px.shape[:2], -1.0, px.dtype), jnp.full(px.shape[:2], -1, jnp.int32))
  key, ids = jax.lax.fori_loop(0, n_blocks, body, init)
  return jnp.where(key > 0.0, ids, -1)


def tiled(tri: dict, height: int, width: int, *, tile: int = 16, tiles_per_step: int = 64,
          block: int = 32, max_pairs: int | None = None) -> tuple:
  """tri from triangles.setup (no gradients) -> ([H, W] int32 ids, overflow int32).

  max_pairs defaults to 4·F + 4·T (T tiles): a mesh of small triangles touches ~1-2 tiles
  each, a few large ones touch many tiles but are few.
  """
  tiles_y, tiles_x = -(-height // tile), -(-width // tile)
  n_tiles = tiles_y * tiles_x
  if max_pairs is None:
    max_pairs = 4 * tri["valid"].shape[0] + 4 * n_tiles
  lists = tile_lists(tri, height, width, tile, max_pairs)
  group = min(tiles_per_step, n_tiles)
  n_groups = -(-n_tiles // group)
  pad = n_groups * group - n_tiles
  # Tiles grouped by list length (longest first): a group loops as long as its longest list,
  # so like lengths together keep the work near Σ counts.
  order = jnp.argsort(-lists["count"]).astype(jnp.int32)
  tile_ids = jnp.pad(order, (0, pad)).reshape(n_groups, group)
  start = jnp.pad(lists["start"][order], (0, pad)).reshape(n_groups, group)
  count = jnp.pad(lists["count"][order], (0, pad)).reshape(n_groups, group)

  def one_group(args):
    ids, s, c = args
    pixels = _tile_pixels(ids, tiles_x, tile, height, width)
    return _search_tile_group(tri, lists, s, c, pixels, block)

  ids = jax.lax.map(one_group, (tile_ids, start, count))            # [G, C, S*S]
  ids = jnp.zeros((n_tiles, tile * tile), jnp.int32).at[order].set(
      ids.reshape(-1, tile * tile)[:n_tiles])
  ids = ids.reshape(tiles_y, tiles_x, tile, tile)
  ids = ids.transpose(0, 2, 1, 3).reshape(tiles_y * tile, tiles_x * tile)
  return ids[:height, :width], lists["overflow"]
