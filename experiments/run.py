"""Runs dc3d-jax on a config.

  python -m experiments.run --config=configs/demo.py
  python -m experiments.run --config=configs/dreamcraft3d.py --config.data.image=IMG.png
  python -m experiments.run --config=configs/demo.py --list_keys     # every key, its meaning
Any config key can be overridden with --config.<a>.<b>=<value>; unknown keys are errors.
`--help` lists the options (dc3d_jax/cli.py).

A known failure (dc3d_jax.errors.Dc3dError: bad config, input, model, work dir, resume,
non-finite training, Ctrl-C) is printed as one message without a traceback (--traceback or
DC3D_TRACEBACK=1 shows it) and exits with its code; any other exception is a bug and keeps its
traceback.
"""

import json
import os
import signal
import sys
import traceback

from dc3d_jax import cli, errors


def _summary(results: dict) -> str:
  return json.dumps({k: v for k, v in results.items() if not isinstance(v, list)}, indent=2,
                    sort_keys=True)


def _execute(args) -> None:
  cfg = cli.load_config(args)
  from absl import flags, logging   # orbax logs every checkpoint step at INFO
  flags.FLAGS.mark_as_parsed()
  logging.set_verbosity(logging.WARNING)
  from dc3d_jax import pipeline  # after argument parsing: keeps --help fast
  if args.list_keys:
    print(pipeline.describe_config(cfg))
  elif args.check:
    print("ok: " + json.dumps(pipeline.check(cfg), sort_keys=True))
  else:
    print(_summary(pipeline.run(cfg, restart=args.restart)))


def main(argv=None) -> int:
  """The CLI: argv without the program name; returns the exit status."""
  argv = sys.argv[1:] if argv is None else argv
  show = os.environ.get("DC3D_TRACEBACK", "") not in ("", "0")
  try:
    args = cli.parse_args(argv)
    show = show or args.traceback
    if args.help:
      print(cli.USAGE)
      return 0
    _execute(args)
    return 0
  except errors.Dc3dError as err:
    if show:
      traceback.print_exc()
    label = "interrupted" if isinstance(err, errors.Interrupted) else "error"
    print(f"{label}: {err}", file=sys.stderr)
    return err.exit_code
  except KeyboardInterrupt:
    if show:
      traceback.print_exc()
    print("interrupted: stopped by Ctrl-C; re-run the same command to resume (from the "
          "newest checkpoint, if any)", file=sys.stderr)
    return errors.Interrupted.exit_code


if __name__ == "__main__":
  signal.signal(signal.SIGPIPE, signal.SIG_DFL)   # `... --list_keys | head` ends quietly
  sys.exit(main())
