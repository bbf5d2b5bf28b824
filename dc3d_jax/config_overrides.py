"""Dotted-key overrides of a locked ConfigDict: what `--config.a.b=v` does on the command line
(experiments/run.py), and what the benchmarks use.

    apply_overrides(cfg, {"coarse_nerf.loss.rgb": "500", ...})
    nearest_keys(cfg, key) -> the closest valid keys (difflib), for "did you mean" messages

A value is read by the type of the key it replaces: a string key takes the text as given; a
bool takes True/False (true/false, 1/0, yes/no); numbers and tuples are Python literals. A
scalar given for a tuple-valued key becomes a 1-tuple (a constant schedule, core/schedules.py),
and a bare comma list (`coarse_nerf,coarse_neus`) a tuple of strings. Unknown keys and values
of the wrong type raise ConfigError naming the key, the nearest valid key and the fix.
"""

import ast
import difflib

from dc3d_jax import errors
from dc3d_jax.core.config_rules import is_int, is_number, leaves

_TRUE, _FALSE = ("true", "1", "yes"), ("false", "0", "no")


def nearest_keys(cfg, key: str, n: int = 1) -> list:
  """The valid dotted keys (leaves) closest to `key` as a whole, else by its last part."""
  keys = list(leaves(cfg))
  close = difflib.get_close_matches(key, keys, n=n, cutoff=0.6)
  if not close:   # e.g. a section left out: "stpes" -> "...train.steps"
    last = key.rsplit(".", 1)[-1]
    by_last = {k.rsplit(".", 1)[-1]: k for k in keys}
    close = [by_last[m] for m in difflib.get_close_matches(last, list(by_last), n=n)]
  return close


def _unknown(cfg, dotted: str) -> errors.ConfigError:
  near = nearest_keys(cfg, dotted)
  hint = f"; did you mean {near[0]}?" if near else ""
  return errors.ConfigError(f"config has no key {dotted}{hint} (`--list_keys` lists every key "
                            "with its default and meaning)")


def _literal(text: str):
  try:
    return ast.literal_eval(text)
  except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
    return text


def _as_tuple(raw):
  value = _literal(raw) if isinstance(raw, str) else raw
  if isinstance(value, (tuple, list)):
    return tuple(value)
  if isinstance(value, str) and "," in value:
    return tuple(part.strip() for part in value.split(",") if part.strip())
  return (value,)


def _as_bool(raw):
  if isinstance(raw, bool):
    return raw
  text = str(raw).strip().lower()
  return True if text in _TRUE else False if text in _FALSE else raw


def _as_number(raw, current):
  value = _literal(raw) if isinstance(raw, str) else raw
  if isinstance(current, float) and is_int(value):
    return float(value)
  return value


def parse_value(raw, current):
  """`raw` (text from the command line, or a Python value) read as the type of `current`."""
  if isinstance(current, bool):
    return _as_bool(raw)
  if isinstance(current, str):
    return raw
  if isinstance(current, (tuple, list)):
    return _as_tuple(raw)
  if is_number(current):
    return _as_number(raw, current)
  return _literal(raw) if isinstance(raw, str) else raw


def _type_ok(value, current) -> bool:
  if isinstance(current, bool):
    return isinstance(value, bool)
  if is_int(current):
    return is_int(value)
  if isinstance(current, float):
    return is_number(value)
  if isinstance(current, (tuple, list)):
    return isinstance(value, tuple)
  return isinstance(value, type(current)) if current is not None else True


def _kind(current) -> str:
  if isinstance(current, bool):
    return "True or False"
  if is_int(current):
    return "an integer"
  if isinstance(current, float):
    return "a number"
  if isinstance(current, (tuple, list)):
    return "a tuple such as (1,2) or one value"
  return f"a {type(current).__name__}"


def _node(cfg, dotted: str):
  """(parent ConfigDict, last name) of an existing leaf key, or ConfigError."""
  node, *path = cfg, *dotted.split(".")
  for name in path[:-1]:
    if not hasattr(node, "keys") or name not in node:
      raise _unknown(cfg, dotted)
    node = node[name]
  if not hasattr(node, "keys") or path[-1] not in node:
    raise _unknown(cfg, dotted)
  if hasattr(node[path[-1]], "keys"):
    inner = ", ".join(list(node[path[-1]].keys())[:4])
    raise errors.ConfigError(f"config key {dotted} is a section, not a value; set one of its "
                             f"keys, e.g. --config.{dotted}.<key>= with <key> one of {inner}, ...")
  return node, path[-1]


def apply_overrides(cfg, overrides: dict) -> None:
  """overrides: {"coarse_nerf.loss.rgb": "500", ...}; strings are read as the key's type."""
  for dotted, raw in overrides.items():
    node, last = _node(cfg, dotted)
    current = node[last]
    value = parse_value(raw, current)
    if not _type_ok(value, current):
      raise errors.ConfigError(f"config {dotted}={raw!r}: expected {_kind(current)}, like the "
                               f"default {current!r}")
    try:
      node[last] = value
    except (TypeError, ValueError) as err:
      raise errors.ConfigError(f"config {dotted}={raw!r}: {err}") from None
