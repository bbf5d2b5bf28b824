"""The check that no evaluation render was truncated (the metrics are eval/protocol.py's).

`render_fn(camera) -> {"rgb", "opacity", ..., "kept_frac"}` ([H, W, C] numpy; kept_frac the
fraction of live samples the render's static budget kept) comes from the stage, so this
module knows nothing about fields.

A render whose budget cut samples (kept_frac < 1, docs/ARCHITECTURE.md "Volume rendering with
static shapes") loses the far ends of its rays: `MonitoredRenderer` warns the first time that
happens and keeps the smallest kept_frac, which `truncation_metrics` puts in metrics.json.
"""

import dataclasses
import warnings
from typing import Callable

import numpy as np



class TruncatedRenderWarning(RuntimeWarning):
  """A render lost samples to its static budget (kept_frac < 1)."""


@dataclasses.dataclass
class MonitoredRenderer:
  """render_fn wrapped to watch kept_frac: the smallest value over all renders, how many were
  truncated, and one TruncatedRenderWarning (naming `hint`, the config keys to raise) at the
  first truncated render."""
  render_fn: Callable
  what: str = "render"
  hint: str = "raise the render sample budget"
  min_kept_frac: float = 1.0
  renders: int = 0
  truncated: int = 0

  def __call__(self, camera) -> dict:
    out = self.render_fn(camera)
    kept = float(np.asarray(out.get("kept_frac", 1.0)))
    self.renders += 1
    self.min_kept_frac = min(self.min_kept_frac, kept)
    if kept < 1.0:
      self.truncated += 1
      if self.truncated == 1:
        warnings.warn(f"{self.what}: a render kept only {kept:.3f} of its live samples (the "
                      f"far ends of some rays were cut); {self.hint}",
                      TruncatedRenderWarning, stacklevel=2)
    return out


def truncation_metrics(render_fn) -> dict:
  """{"eval_kept_frac_min", "eval_truncated_renders"} of a MonitoredRenderer (else {})."""
  if not isinstance(render_fn, MonitoredRenderer):
    return {}
  return {"eval_kept_frac_min": render_fn.min_kept_frac,
          "eval_truncated_renders": render_fn.truncated}
