"""Speed of the differentiable mesh extraction the geometry stage runs every step.

  python -m benchmarks.marching_tets --out benchmarks/results/marching_tets_cpu.json

For each tet-grid resolution N, with the default budgets (max_vertices, max_faces) =
(2^17, 2^18) at N = 128, scaled by (N/128)^2: a sphere SDF (radius 0.4 in the box
[-0.5, 0.5]^3, so it spans 80% of the box like an object in its tight box enlarged by 10%)
on the deformed grid, timed as
  - extract: marching tets forward (deformed vertices -> padded mesh);
  - extract_grad: forward + backward of Σ w·p over the mesh vertices w.r.t. (sdf, δ), the
    whole padded mesh returned too (a renderer needs the faces; without them XLA would skip
    computing them);
  - consistency_grad: forward + backward of the normal-consistency loss (vertex normals,
    unique edges by sort) w.r.t. (sdf, δ): the stage's regularizer path.
Medians of --repeats runs after one warm-up (the best run too), in seconds, and the process
CPU seconds per call (user + system, all threads): on a shared machine the wall time carries
other jobs' load, the CPU time much less so.
"""

import argparse
import os
import resource
import statistics

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import common
from dc3d_jax.geometry import marching_tets as mt
from dc3d_jax.geometry import mesh_ops, sdf_shapes, tets

BOX = np.array([[-0.5] * 3, [0.5] * 3], np.float32)


def budgets(resolution: int) -> dict:
  scale = (resolution / 128)**2
  return dict(max_vertices=int(2**17 * scale), max_faces=int(2**18 * scale))


def _functions(budget):
  def mesh_of(sdf, delta, grid):
    return mt.marching_tets(tets.deformed_vertices(grid, delta, BOX), sdf, grid, **budget)

  def vertex_loss(sdf, delta, grid, w):
    mesh = mesh_of(sdf, delta, grid)
    return jnp.sum(mesh.vertices * w), mesh

  def consistency_loss(sdf, delta, grid):
    m = mesh_of(sdf, delta, grid)
    return mesh_ops.mesh_normal_consistency(m.vertices, m.faces, m.face_mask)

  grad = lambda f: jax.jit(jax.grad(f, argnums=(0, 1)))
  return {"extract": jax.jit(mesh_of),
          "extract_grad": jax.jit(jax.grad(vertex_loss, argnums=(0, 1), has_aux=True)),
          "consistency_grad": grad(consistency_loss)}


def _cpu_seconds() -> float:
  usage = resource.getrusage(resource.RUSAGE_SELF)
  return usage.ru_utime + usage.ru_stime


PARTS = ("extract", "extract_grad", "consistency_grad")


def run(resolution: int, repeats: int, parts=PARTS) -> dict:
  grid = jax.device_put(tets.tet_grid(resolution))
  budget = budgets(resolution)
  sdf = sdf_shapes.sphere(tets.to_box(grid.vertices, BOX), (0.01, -0.02, 0.015), 0.4)
  delta = jnp.zeros_like(grid.vertices)
  w = jax.random.normal(jax.random.key(0), (budget["max_vertices"], 3))
  fns = _functions(budget)
  mesh = fns["extract"](sdf, delta, grid)
  calls = {"extract": lambda: fns["extract"](sdf, delta, grid),
           "extract_grad": lambda: fns["extract_grad"](sdf, delta, grid, w),
           "consistency_grad": lambda: fns["consistency_grad"](sdf, delta, grid)}
  record = {"resolution": resolution, **budget, "num_vertices_grid": int(grid.vertices.shape[0]),
            "num_tets": int(grid.tets.shape[0]), "num_edges": int(grid.edges.shape[0]),
            "mesh_vertices": int(mesh.num_vertices), "mesh_faces": int(mesh.num_faces),
            "overflow": bool(mesh.overflow)}
  for name in parts:
    call = calls[name]
    jax.block_until_ready(call())                 # compile outside the CPU count
    cpu_start = _cpu_seconds()
    times = common.wall_times(call, repeats)      # one more warm-up call, then the timed ones
    record[f"{name}_cpu_seconds"] = (_cpu_seconds() - cpu_start) / (repeats + 1)
    record[f"{name}_seconds"] = statistics.median(times)
    record[f"{name}_best_seconds"] = min(times)
  return record


def parse_args(argv=None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--out", required=True, help="JSON file to write")
  parser.add_argument("--resolutions", type=int, nargs="+", default=[64, 128])
  parser.add_argument("--repeats", type=int, default=5)
  parser.add_argument("--parts", nargs="+", choices=PARTS, default=list(PARTS))
  return parser.parse_args(argv)


def main(argv=None) -> dict:
  args = parse_args(argv)
  rows = [run(res, args.repeats, args.parts) for res in args.resolutions]
  record = {"benchmark": "marching_tets", **common.environment(), "repeats": args.repeats,
            "load_average_1m": os.getloadavg()[0], "rows": rows}
  common.write(args.out, record)
  for r in rows:
    print(f"marching_tets N={r['resolution']} ({r['num_tets']:,} tets, {r['mesh_faces']:,} "
          "faces): " + ", ".join(f"{p} {r[p + '_seconds']:.3f} s (CPU {r[p + '_cpu_seconds']:.3f})"
                                 for p in args.parts))
  return record


if __name__ == "__main__":
  main()
