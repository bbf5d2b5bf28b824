"""Shared benchmark plumbing: wall times after warm-up, peak memory, device facts, JSON out."""

import datetime
import os
import resource
import statistics
import time

import jax

from dc3d_jax.io import writers


def wall_times(fn, repeats: int) -> list[float]:
  """Seconds of `repeats` calls of fn() (each result blocked on), after one warm-up call."""
  jax.block_until_ready(fn())
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(fn())
    times.append(time.perf_counter() - start)
  return times


def summary(times: list[float]) -> dict:
  return {"median_s": statistics.median(times), "min_s": min(times), "runs": len(times)}


def peak_memory_bytes() -> dict:
  """Accelerator peak bytes in use when the backend reports it; host peak RSS always."""
  out = {"host_peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}
  stats = jax.devices()[0].memory_stats() or {}
  if "peak_bytes_in_use" in stats:
    out["device_peak_bytes"] = stats["peak_bytes_in_use"]
  return out


def environment() -> dict:
  dev = jax.devices()[0]
  return {"platform": dev.platform, "device_kind": dev.device_kind,
          "device_count": jax.device_count(), "jax_version": jax.__version__,
          "cpu_count": os.cpu_count(),
          "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds")}


def write(path, record: dict) -> None:
  writers.save_json(path, record)
