"""Runs dc3d-jax on a config.

  python -m experiments.run --config=configs/demo.py
  python -m experiments.run --config=configs/dreamcraft3d.py --config.data.image=IMG.png
Any config key can be overridden with --config.<a>.<b>=<value>; unknown keys are errors.
"""

import json

from absl import app, flags, logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "Path to a config file "
                                          "(optionally file.py:variant).", lock_config=True)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  logging.set_verbosity(logging.WARNING)  # orbax logs every checkpoint step at INFO
  from dc3d_jax import pipeline  # after flag parsing: keeps --help fast
  results = pipeline.run(_CONFIG.value)
  summary = {k: v for k, v in results.items() if not isinstance(v, list)}
  print(json.dumps(summary, indent=2, sort_keys=True))


if __name__ == "__main__":
  flags.mark_flags_as_required(["config"])
  app.run(main)
