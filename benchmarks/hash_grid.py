"""Speed of the hash-grid encoding + a small MLP head, forward and forward+backward.

  python -m benchmarks.hash_grid --out benchmarks/out/hash_grid.json

Times the jitted scalar loss of encode(table, x) -> 32-64-4 MLP (one hidden ReLU, no biases)
and its gradient w.r.t. (table, MLP weights): the inner loop of a NeRF step. Reports points
per second (median of --repeats runs after one warm-up; the best run's seconds as well), the
device, jax version and spec, writes them as JSON to --out and prints a one-line summary.
"""

import argparse
import dataclasses
import statistics

import jax
import jax.numpy as jnp

from benchmarks import common
from dc3d_jax.geometry import hash_grid


def init_params(key: jax.Array, spec: hash_grid.HashGridSpec, hidden: int = 64,
                out_dim: int = 4) -> dict:
  """Table [L, T, F] and MLP weights w1 [L*F, hidden], w2 [hidden, out_dim] (He-scaled)."""
  k_table, k1, k2 = jax.random.split(key, 3)
  return {
      "table": hash_grid.init_table(k_table, spec),
      "w1": jax.random.normal(k1, (spec.output_dim, hidden)) * (2.0 / spec.output_dim)**0.5,
      "w2": jax.random.normal(k2, (hidden, out_dim)) * (2.0 / hidden)**0.5,
  }


def loss_fn(params: dict, x: jax.Array, spec: hash_grid.HashGridSpec,
            encode=hash_grid.encode) -> jax.Array:
  """Scalar loss: mean square of the MLP output. x: [N, 3] in [0, 1]."""
  h = jax.nn.relu(encode(params["table"], x, spec) @ params["w1"])
  return jnp.mean(jnp.square(h @ params["w2"]))


def run(spec: hash_grid.HashGridSpec, n_points: int, repeats: int,
        encode=hash_grid.encode) -> dict:
  """Times forward and forward+backward; returns the JSON-ready record."""
  key_params, key_x = jax.random.split(jax.random.key(0))
  params = init_params(key_params, spec)
  x = jax.random.uniform(key_x, (n_points, 3))
  forward = jax.jit(lambda p, x: loss_fn(p, x, spec, encode))
  backward = jax.jit(jax.value_and_grad(lambda p, x: loss_fn(p, x, spec, encode)))
  times_fwd = common.wall_times(lambda: forward(params, x), repeats)
  times_bwd = common.wall_times(lambda: backward(params, x), repeats)
  t_fwd, t_bwd = statistics.median(times_fwd), statistics.median(times_bwd)
  return {
      "benchmark": "hash_grid",
      **common.environment(),
      "spec": dataclasses.asdict(spec),
      "n_points": n_points,
      "repeats": repeats,
      "forward_seconds": t_fwd,
      "fwd_bwd_seconds": t_bwd,
      # The best run too: on a shared CPU the median carries other jobs' load.
      "forward_best_seconds": min(times_fwd),
      "fwd_bwd_best_seconds": min(times_bwd),
      "forward_points_per_second": n_points / t_fwd,
      "fwd_bwd_points_per_second": n_points / t_bwd,
  }


def parse_args(argv=None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--out", required=True, help="JSON file to write")
  parser.add_argument("--points", type=int, default=2**18)
  parser.add_argument("--levels", type=int, default=16)
  parser.add_argument("--log2-table", type=int, default=19)
  parser.add_argument("--repeats", type=int, default=5)
  return parser.parse_args(argv)


def main(argv=None) -> dict:
  args = parse_args(argv)
  spec = hash_grid.HashGridSpec(n_levels=args.levels, log2_table_size=args.log2_table)
  record = run(spec, args.points, args.repeats)
  common.write(args.out, record)
  print(f"hash_grid on {record['platform']}/{record['device_kind']}: N={args.points} "
        f"L={spec.n_levels} T=2**{spec.log2_table_size}: "
        f"forward {record['forward_points_per_second']:.3e} pts/s, "
        f"fwd+bwd {record['fwd_bwd_points_per_second']:.3e} pts/s")
  return record


if __name__ == "__main__":
  main()
