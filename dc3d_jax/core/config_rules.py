"""Declarative config rules: what each config key may hold, what it means, and whether a
change of it changes array shapes. `dc3d_jax/config_check.py` runs them all in one pass before
a run writes anything; `--list_keys` prints their meanings.

A `Section` covers one top-level part of the config ("data", "eval", a stage such as
"coarse_nerf", or "" for the top-level scalars):
  - `keys`: {dotted key relative to the section: Rule}. A "*" component matches any one name
    ("loss.*", "guidance.*.t_min"). Every leaf of the config must match a rule, so a new key
    without a rule (and a meaning) is an error, not a silent pass.
  - `checks`: functions cfg -> [(full key, message)] for rules that span keys
    (len(resolutions) == len(milestones) + 1, t_min <= t_max, ...).
  - `shape_keys`: relative keys (wildcards allowed) whose values fix the shapes of saved
    arrays; a work dir refuses to resume when one of them changes (workdir.py).

A stage adds its rules by defining a Section (e.g. stages/coarse_nerf_rules.py) and listing it
with its runner in pipeline.STAGES; docs/ARCHITECTURE.md ("Config rules") says the same.
Rules return a problem as "expected ..." text; the caller names the key and the fix.
"""

import dataclasses
import math
from typing import Any, Callable, Iterable, Mapping, Sequence


def is_int(v) -> bool:
  return isinstance(v, int) and not isinstance(v, bool)


def is_number(v) -> bool:
  return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


@dataclasses.dataclass(frozen=True)
class Rule:
  """doc: the key's meaning, one line (printed by --list_keys)."""
  doc: str

  def expected(self) -> str:
    raise NotImplementedError

  def ok(self, value) -> bool:
    raise NotImplementedError

  def problem(self, value) -> str | None:
    """None when `value` is acceptable, else "expected ..."."""
    return None if self.ok(value) else f"expected {self.expected()}"


def _interval(lo, hi, lo_open, hi_open) -> str:
  if lo is not None and hi is not None:
    return f"in {'(' if lo_open else '['}{lo:g}, {hi:g}{')' if hi_open else ']'}"
  if lo is not None:
    return f"{'>' if lo_open else '>='} {lo:g}"
  return f"{'<' if hi_open else '<='} {hi:g}" if hi is not None else ""


@dataclasses.dataclass(frozen=True)
class Number(Rule):
  """An int or float in an interval; `integer` for ints only, `multiple_of` for sizes."""
  lo: float | None = None
  hi: float | None = None
  lo_open: bool = False
  hi_open: bool = False
  integer: bool = False
  multiple_of: int | None = None

  def expected(self) -> str:
    what = "an integer" if self.integer else "a number"
    if self.multiple_of:
      what += f" multiple of {self.multiple_of}"
    bounds = _interval(self.lo, self.hi, self.lo_open, self.hi_open)
    return f"{what} {bounds}".strip()

  def ok(self, v) -> bool:
    if not (is_int(v) if self.integer else is_number(v)):
      return False
    if self.lo is not None and (v <= self.lo if self.lo_open else v < self.lo):
      return False
    if self.hi is not None and (v >= self.hi if self.hi_open else v > self.hi):
      return False
    return not (self.multiple_of and v % self.multiple_of)


# Capitalised like the classes beside them: rule tables read `Int("steps", lo=1)`.
def Int(doc, lo=None, hi=None, multiple_of=None) -> Number:  # pylint: disable=invalid-name
  return Number(doc, lo=lo, hi=hi, integer=True, multiple_of=multiple_of)


def Float(doc, lo=None, hi=None, *, lo_open=False,  # pylint: disable=invalid-name
          hi_open=False) -> Number:
  return Number(doc, lo=lo, hi=hi, lo_open=lo_open, hi_open=hi_open)


@dataclasses.dataclass(frozen=True)
class Bool(Rule):
  def expected(self) -> str:
    return "True or False"

  def ok(self, v) -> bool:
    return isinstance(v, bool)


@dataclasses.dataclass(frozen=True)
class Text(Rule):
  """A string; `required` refuses the empty string."""
  required: bool = False

  def expected(self) -> str:
    return "a non-empty string" if self.required else "a string"

  def ok(self, v) -> bool:
    return isinstance(v, str) and (bool(v.strip()) or not self.required)


@dataclasses.dataclass(frozen=True)
class Choice(Rule):
  options: tuple = ()

  def expected(self) -> str:
    return "one of " + ", ".join(repr(o) for o in self.options)

  def ok(self, v) -> bool:
    return isinstance(v, str) and v in self.options


@dataclasses.dataclass(frozen=True)
class File(Rule):
  """A path to an existing file, or "" when `optional`."""
  optional: bool = True

  def expected(self) -> str:
    return "the path of an existing file" + (" (or empty)" if self.optional else "")

  def ok(self, v) -> bool:
    import os
    return isinstance(v, str) and ((self.optional and v == "") or os.path.isfile(v))


@dataclasses.dataclass(frozen=True)
class Numbers(Rule):
  """A tuple of numbers, each satisfying `item`; `length` fixes the count, `min_len` bounds
  it, `order` is "" (any), "<=" (non-decreasing) or "<" (increasing)."""
  item: Number = Number("")
  length: int | None = None
  min_len: int = 0
  order: str = ""

  def expected(self) -> str:
    count = f"{self.length} " if self.length else ("at least 1 " if self.min_len == 1 else "")
    order = {"": "", "<=": ", non-decreasing", "<": ", increasing"}[self.order]
    return f"a tuple of {count}values, each {self.item.expected()}{order}"

  def ok(self, v) -> bool:
    if not isinstance(v, (tuple, list)) or not all(self.item.ok(x) for x in v):
      return False
    if (self.length is not None and len(v) != self.length) or len(v) < self.min_len:
      return False
    pairs = list(zip(v[:-1], v[1:]))
    if self.order == "<=":
      return all(a <= b for a, b in pairs)
    return all(a < b for a, b in pairs) if self.order == "<" else True


@dataclasses.dataclass(frozen=True)
class Names(Rule):
  """A non-empty tuple of distinct names from `options`."""
  options: tuple = ()

  def expected(self) -> str:
    return "a non-empty tuple of distinct names from " + ", ".join(map(repr, self.options))

  def ok(self, v) -> bool:
    return (isinstance(v, (tuple, list)) and len(v) > 0 and len(set(v)) == len(v)
            and all(isinstance(x, str) and x in self.options for x in v))

  def problem(self, value) -> str | None:
    if self.ok(value):
      return None
    items = value if isinstance(value, (tuple, list)) else ()
    unknown = [x for x in items if x not in self.options]
    if unknown:
      return f"unknown {unknown}; available {sorted(self.options)}"
    return f"expected {self.expected()}"


@dataclasses.dataclass(frozen=True)
class Schedule(Rule):
  """A schedule of the step (core/schedules.py): v, (v,) or (s0, v0, v1, s1) with integer
  steps 0 <= s0 < s1 and values in [lo, hi]."""
  lo: float | None = None
  hi: float | None = None

  def expected(self) -> str:
    bounds = _interval(self.lo, self.hi, False, False)
    return f"a schedule (v,) or (s0, v0, v1, s1) with steps 0 <= s0 < s1 and values {bounds}"

  def ok(self, v) -> bool:
    value_ok = Number("", lo=self.lo, hi=self.hi).ok
    if is_number(v):
      return value_ok(v)
    if not isinstance(v, (tuple, list)) or len(v) not in (1, 4):
      return False
    if len(v) == 1:
      return value_ok(v[0])
    s0, v0, v1, s1 = v
    steps_ok = is_number(s0) and is_number(s1) and 0 <= s0 < s1
    return steps_ok and value_ok(v0) and value_ok(v1)


def schedule_value(value, step: float) -> float:
  """A schedule's value at `step`, in Python (no JAX) for checks; core/schedules.scalar is
  the one the steps use."""
  if is_number(value):
    return float(value)
  if len(value) == 1:
    return float(value[0])
  s0, v0, v1, s1 = value
  frac = min(max((step - s0) / (s1 - s0), 0.0), 1.0)
  return v0 * (1.0 - frac) + v1 * frac


Check = Callable[[Any], Iterable[tuple[str, str]]]


@dataclasses.dataclass(frozen=True)
class Section:
  """Rules of one top-level config section ("" for the top-level scalars)."""
  name: str
  keys: Mapping[str, Rule]
  checks: Sequence[Check] = ()
  shape_keys: Sequence[str] = ()

  def full(self, key: str) -> str:
    return f"{self.name}.{key}" if self.name else key

  def rule_for(self, key: str) -> Rule | None:
    """The rule of a relative dotted key: an exact entry, else the first wildcard match."""
    if key in self.keys:
      return self.keys[key]
    return next((r for pattern, r in self.keys.items() if matches(pattern, key)), None)


def matches(pattern: str, key: str) -> bool:
  p, k = pattern.split("."), key.split(".")
  return len(p) == len(k) and all(a in ("*", b) for a, b in zip(p, k))


def leaves(tree, prefix: str = "") -> dict:
  """{dotted key: value} of every leaf of a ConfigDict / dict (sections are recursed into)."""
  out = {}
  for name, value in tree.items():
    key = f"{prefix}{name}"
    if hasattr(value, "items") and not isinstance(value, (str, bytes)):
      out.update(leaves(value, key + "."))
    else:
      out[key] = value
  return out
