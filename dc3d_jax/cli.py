"""Command-line arguments of experiments/run.py: parsing, loading the config file, overrides.

    parse_args(argv) -> Args          (no imports of JAX: --help stays fast)
    load_config(args) -> ConfigDict   the config file's get_config(variant), overrides applied

The grammar is ml_collections' (`--config=file.py[:variant]`, `--config.a.b=value`), parsed
here rather than by absl's global flag registry, so that a bad flag is one ConfigError (with the
nearest valid key) and the CLI can be called in-process any number of times (tests).
"""

import dataclasses
import difflib
import importlib.util
import sys
from pathlib import Path

from dc3d_jax import config_overrides, errors

USAGE = """\
usage: python -m experiments.run --config=FILE.py[:VARIANT] [--config.KEY=VALUE ...] [options]

Runs dc3d-jax on a config (configs/demo.py: the CPU demo; configs/dreamcraft3d.py: the
reference settings, :quick for a smoke run). Any config key can be overridden with
--config.<a>.<b>=<value>; unknown or misspelled keys are errors. Re-running the same command
resumes the run in its work dir (config key `workdir`).

options:
  --config=FILE.py[:VARIANT]  the config file (required)
  --config.KEY=VALUE          override one config key (tuples: --config.x=(1,2); schedules
                              (v,) or (s0,v0,v1,s1): --config.coarse_nerf.loss.rgb=500)
  --list_keys                 list every config key with its value, meaning and accepted
                              range, then exit (e.g. --config=configs/demo.py --list_keys)
  --check                     validate the config, inputs, models and work dir, write
                              nothing, and exit
  --restart                   start the work dir afresh: the previous run is moved aside to
                              <workdir>.old-<time>, nothing is deleted
  --traceback                 show the traceback of a known error (or DC3D_TRACEBACK=1)
  -h, --help                  show this help and exit

exit status: 0 done (or already complete), 2 bad config/input/model/work dir, 3 non-finite
training, 130 interrupted (re-run the same command to resume), 1 a bug (with its traceback).
"""

FLAGS = ("--list_keys", "--check", "--restart", "--traceback", "--help")


@dataclasses.dataclass
class Args:
  config: str = ""
  overrides: dict = dataclasses.field(default_factory=dict)   # ordered, last one wins
  list_keys: bool = False
  check: bool = False
  restart: bool = False
  traceback: bool = False
  help: bool = False


def _flag_error(arg: str) -> errors.ConfigError:
  name = arg.split("=", 1)[0]
  near = difflib.get_close_matches(name, FLAGS + ("--config",), n=1)
  hint = f"; did you mean {near[0]}?" if near else ""
  return errors.ConfigError(f"unknown argument {arg!r}{hint} (--help lists the options)")


def _take_value(argv: list, i: int, name: str) -> tuple[str, int]:
  """The value of `--name=value` or `--name value`; (value, index of the next argument)."""
  arg = argv[i]
  if "=" in arg:
    return arg.split("=", 1)[1], i + 1
  if i + 1 >= len(argv) or argv[i + 1].startswith("--"):
    raise errors.ConfigError(f"{name} needs a value: {name}=VALUE")
  return argv[i + 1], i + 2


def parse_args(argv) -> Args:
  """argv without the program name. Raises ConfigError on anything it does not know."""
  args, i = Args(), 0
  argv = list(argv)
  while i < len(argv):
    arg = argv[i]
    name = arg.split("=", 1)[0].replace("-", "_").lstrip("_")
    if arg in ("-h", "--help", "--helpfull", "--helpshort"):
      args.help, i = True, i + 1
    elif name == "config":
      args.config, i = _take_value(argv, i, "--config")
    elif name.startswith("config."):
      value, i = _take_value(argv, i, arg.split("=", 1)[0])
      key = arg.split("=", 1)[0].lstrip("-")[len("config."):]
      args.overrides.pop(key, None)
      args.overrides[key] = value
    elif "=" not in arg and f"--{name}" in FLAGS:
      setattr(args, name, True)
      i += 1
    else:
      raise _flag_error(arg)
  if not args.help and not args.config:
    raise errors.ConfigError("--config is required, e.g. --config=configs/demo.py "
                             "(--help lists the options)")
  return args


def _load_module(path: Path, spec_text: str):
  spec = importlib.util.spec_from_file_location(f"dc3d_config_{path.stem}", path)
  module = importlib.util.module_from_spec(spec)
  try:
    spec.loader.exec_module(module)
  except SyntaxError as err:
    raise errors.ConfigError(f"--config={spec_text}: {err.filename}:{err.lineno}: "
                             f"{err.msg}") from None
  except ImportError as err:
    raise errors.ConfigError(f"--config={spec_text}: {path} cannot import {err.name!r} "
                             f"({err}); run from the repository root") from None
  if not callable(getattr(module, "get_config", None)):
    raise errors.ConfigError(f"--config={spec_text}: {path} defines no get_config()")
  return module


def load_config(args: Args):
  """The config of `--config=file.py[:variant]` with the --config.* overrides applied."""
  text = args.config
  path_text, colon, variant = text.partition(":")
  path = Path(path_text)
  if not path.is_file():
    raise errors.ConfigError(f"--config={text}: no config file at {path.absolute()} (the "
                             "shipped ones are configs/demo.py and configs/dreamcraft3d.py)")
  if str(Path.cwd()) not in sys.path and "" not in sys.path:
    sys.path.insert(0, str(Path.cwd()))   # configs import each other as `configs.<name>`
  module = _load_module(path, text)
  try:
    cfg = module.get_config(variant) if colon else module.get_config()
  except (ValueError, TypeError, KeyError) as err:
    raise errors.ConfigError(f"--config={text}: {err}") from None
  config_overrides.apply_overrides(cfg, args.overrides)
  return cfg
