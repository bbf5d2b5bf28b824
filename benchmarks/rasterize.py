"""Speed of the rasterizer: rasterize + interpolate + antialias, forward and forward+backward.

  python -m benchmarks.rasterize --backend jax --out benchmarks/results/rasterize_jax_cpu.json
  python -m benchmarks.rasterize --backend nvdiffrast --out $OUT/rasterize_nvdiffrast_gpu.json

The scene is the geometry stage's shape of work: a sphere-like mesh (primitives.cube_sphere,
12 n² nearly uniform triangles on shared vertices, radius 0.5 at distance 2.0, fovy 40°, so
it covers ~40% of the image) with per-vertex colours, rendered at --res² (1024 as the
reference's stage 2). Forward = rasterize + interpolate colours + antialias; backward = the
gradient of a weighted image sum w.r.t. the world-space vertex positions (through clip space,
the barycentrics and the antialiasing), as the DMTet step needs. For each --faces count it
records median/min wall seconds after one compiling call (and the process's CPU seconds per
call), that first call's seconds, the covered pixels, the tiled search's overflow and the
peak memory, then writes JSON to --out.
"""

import argparse
import os
import time

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import common
from dc3d_jax import cameras
from dc3d_jax.geometry import primitives, rasterize


def scene(n_faces: int, res: int) -> dict:
  """The cube sphere with about n_faces triangles, its colours, camera and image weights."""
  mesh = primitives.cube_sphere((0.0, 0.0, 0.0), 0.5, (1.0, 1.0, 1.0),
                                n=max(1, round((n_faces / 12) ** 0.5)))
  rng = np.random.default_rng(0)
  return dict(vertices=jnp.asarray(mesh.vertices), faces=jnp.asarray(mesh.faces),
              colors=jnp.asarray(rng.uniform(size=mesh.vertices.shape), jnp.float32),
              mvp=cameras.mvp_matrix(cameras.make_camera(10.0, 20.0, 2.0, 40.0, res, res)),
              weights=jnp.asarray(rng.uniform(-1, 1, (res, res, 3)), jnp.float32))


def render(vertices, s: dict, res: int, backend: str, search: str = "auto") -> tuple:
  """-> (antialiased [res, res, 3] image, RasterOut)."""
  clip = jnp.concatenate([vertices, jnp.ones_like(vertices[:, :1])], -1) @ s["mvp"].T
  raster = rasterize.rasterize(clip, s["faces"], res, res, backend=backend, search=search)
  rgb = rasterize.interpolate(s["colors"], s["faces"], raster)
  return rasterize.antialias(rgb, raster, clip, s["faces"]), raster


def run_one(n_faces: int, res: int, backend: str, repeats: int, search: str = "auto") -> dict:
  # The scene enters as arguments, not constants, as a mesh extracted inside a step does
  # (XLA would otherwise fold the mesh topology at compile time).
  s = scene(n_faces, res)
  loss = lambda v, s: jnp.sum(s["weights"] * render(v, s, res, backend, search)[0])
  forward = jax.jit(lambda v, s: render(v, s, res, backend, search))
  backward = jax.jit(jax.value_and_grad(loss))
  record = {"faces": int(s["faces"].shape[0]), "vertices": int(s["vertices"].shape[0])}
  for name, fn in (("forward", forward), ("fwd_bwd", backward)):
    start = time.perf_counter()
    out = jax.block_until_ready(fn(s["vertices"], s))
    record[f"{name}_first_call_s"] = time.perf_counter() - start
    cpu_start = time.process_time()
    record[name] = common.summary(common.wall_times(lambda: fn(s["vertices"], s), repeats))
    # CPU seconds of this process per call (all threads; warm-up call included in the
    # average): on a shared CPU machine the wall time also carries other jobs' load.
    record[name]["cpu_s_per_call"] = (time.process_time() - cpu_start) / (repeats + 1)
    if name == "forward":
      record["covered_fraction"] = float(jnp.mean(out[1].tri_id >= 0))
      record["overflow"] = int(out[1].overflow)
    else:
      record["grad_finite"] = bool(jnp.all(jnp.isfinite(out[1])))
  return record


def parse_args(argv=None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--out", required=True, help="JSON file to write")
  parser.add_argument("--backend", default="jax", choices=rasterize.BACKENDS)
  parser.add_argument("--res", type=int, default=1024)
  parser.add_argument("--faces", default="10000,100000", help="comma-separated face counts")
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--search", default="auto", choices=("auto", "brute", "tiled"),
                      help="the JAX backend's visibility search (raster/visibility.py)")
  return parser.parse_args(argv)


def main(argv=None) -> dict:
  args = parse_args(argv)
  backend = rasterize.resolve_backend(args.backend)
  runs = [run_one(int(n), args.res, backend, args.repeats, args.search)
          for n in args.faces.split(",")]
  record = {"benchmark": "rasterize", **common.environment(), "backend": backend,
            "search": args.search,
            "resolution": args.res, "repeats": args.repeats, "runs": runs,
            "load_average_1min": os.getloadavg()[0], **common.peak_memory_bytes()}
  common.write(args.out, record)
  for r in runs:
    print(f"rasterize[{backend}] on {record['platform']}/{record['device_kind']} {args.res}² "
          f"F={r['faces']}: forward {r['forward']['median_s']:.3f} s, "
          f"fwd+bwd {r['fwd_bwd']['median_s']:.3f} s, overflow {r['overflow']}")
  return record


if __name__ == "__main__":
  main()
