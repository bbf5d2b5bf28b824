"""Paired comparison of two predictors scored on the same items, with a cluster bootstrap.

`paired_difference(a, b, groups)`: a[i] and b[i] score two predictions of the same item i
(say, one novel view), groups[i] names the unit the items were drawn with (the object). Views
of one object share its shape, so they are not independent draws: the bootstrap resamples
whole groups with replacement (Efron & Tibshirani's cluster bootstrap) and recomputes the
mean difference over the items of the drawn groups. It reports the observed mean difference,
the percentile 95% interval of the resampled ones, the fraction of resamples at or below 0 (a
one-sided bootstrap p-value for "a beats b"), and in how many groups a's mean is above b's.
A non-finite difference (PSNR of an exact prediction is +inf) has no interval: ci95 and p_le_0
are then None.
"""

import numpy as np


def paired_difference(a, b, groups, *, resamples: int = 10_000, seed: int = 0) -> dict:
  """a, b [N] scores (higher is better), groups [N] labels -> {"diff", "ci95", "p_le_0",
  "groups_better", "groups"}; diff = mean(a − b) over all N items."""
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  if a.shape != b.shape or a.ndim != 1 or len(groups) != a.shape[0]:
    raise ValueError(f"paired_difference: a {a.shape}, b {b.shape} and {len(groups)} groups "
                     "must be three [N] sequences")
  labels, index = np.unique(np.asarray(groups), return_inverse=True)
  d = a - b
  sums = np.bincount(index, weights=d, minlength=len(labels))
  counts = np.bincount(index, minlength=len(labels)).astype(np.float64)
  better = int(np.sum(sums / counts > 0.0))
  if not np.isfinite(d).all():
    return {"diff": float(d.mean()), "ci95": None, "p_le_0": None, "groups_better": better,
            "groups": len(labels)}
  draws = np.random.default_rng(seed).integers(0, len(labels), (resamples, len(labels)))
  boot = sums[draws].sum(axis=1) / counts[draws].sum(axis=1)
  lo, hi = np.percentile(boot, [2.5, 97.5])
  return {"diff": float(d.mean()), "ci95": [float(lo), float(hi)],
          "p_le_0": float(np.mean(boot <= 0.0)),
          "groups_better": better, "groups": len(labels)}
