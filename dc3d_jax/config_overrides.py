"""Applies dotted-key overrides to a (locked) ConfigDict, as `--config.a.b=v` does, for the
sweep runner and benchmarks. Unknown keys are errors; a scalar given for a tuple-valued key
becomes a 1-tuple (a constant schedule), as ml_collections' flag parser does."""

import ast


def _parse(text):
  if not isinstance(text, str):
    return text
  try:
    return ast.literal_eval(text)
  except (ValueError, SyntaxError):
    return text


def apply_overrides(cfg, overrides: dict) -> None:
  """overrides: {"coarse_nerf.loss.rgb": "500", ...} (strings are parsed as Python literals)."""
  for dotted, raw in overrides.items():
    node, *path = cfg, *dotted.split(".")
    for name in path[:-1]:
      if name not in node:
        raise KeyError(f"config has no key {dotted!r} (no {name!r})")
      node = node[name]
    last = path[-1]
    if last not in node:
      raise KeyError(f"config has no key {dotted!r}")
    value = _parse(raw)
    if isinstance(node[last], tuple) and not isinstance(value, (tuple, list)):
      value = (value,)
    elif isinstance(node[last], tuple):
      value = tuple(value)
    elif isinstance(node[last], float) and isinstance(value, int):
      value = float(value)
    node[last] = value
