"""eval/stats.py: the paired cluster bootstrap against closed forms and exact enumeration."""

import itertools

import numpy as np
import pytest

from dc3d_jax.eval import stats


def test_a_constant_difference_has_a_zero_width_interval():
  a = np.linspace(0.2, 0.8, 12)
  r = stats.paired_difference(a + 0.05, a, np.repeat(["x", "y", "z"], 4))
  assert r["diff"] == pytest.approx(0.05)
  assert r["ci95"] == pytest.approx([0.05, 0.05])
  assert r["p_le_0"] == 0.0 and r["groups_better"] == 3 and r["groups"] == 3


def test_resampled_groups_match_the_exact_enumeration_of_all_draws():
  """Three groups of unequal size: the 27 equally likely draws of three groups with
  replacement give the bootstrap distribution exactly; the item-weighted means of its draws
  set the fraction at or below zero and the percentile interval the sampler must reproduce."""
  d = np.array([0.3, 0.1, -0.4, -0.2, -0.3, 0.05])
  groups = np.array([0, 0, 1, 1, 1, 2])
  sums = np.array([d[groups == g].sum() for g in range(3)])
  counts = np.array([np.sum(groups == g) for g in range(3)])
  exact = np.array([sums[list(c)].sum() / counts[list(c)].sum()
                    for c in itertools.product(range(3), repeat=3)])
  r = stats.paired_difference(d, np.zeros_like(d), groups, resamples=40_000, seed=1)
  assert r["diff"] == pytest.approx(d.mean())                  # items, not groups, weigh
  assert r["p_le_0"] == pytest.approx(np.mean(exact <= 0.0), abs=0.01)
  assert r["groups_better"] == 2                              # groups 0 (+0.2) and 2
  lo, hi = np.sort(exact)[[0, -1]]
  assert lo <= r["ci95"][0] < r["ci95"][1] <= hi


def test_interval_of_independent_items_has_the_normal_half_width():
  """One item per group, N(0.1, 1) differences: the interval is mean ± 1.96 σ/√n to within
  Monte Carlo error (n = 2,000, so σ/√n ≈ 0.022)."""
  d = np.random.default_rng(0).normal(0.1, 1.0, 2000)
  r = stats.paired_difference(d, np.zeros_like(d), np.arange(d.size), resamples=4000)
  half = 1.96 * d.std() / np.sqrt(d.size)
  assert r["ci95"][0] == pytest.approx(d.mean() - half, abs=0.1 * half)
  assert r["ci95"][1] == pytest.approx(d.mean() + half, abs=0.1 * half)


def test_an_infinite_difference_has_no_interval():
  """An exact prediction's PSNR is +inf: the mean difference is +inf, the interval undefined."""
  r = stats.paired_difference([np.inf, 20.0], [10.0, 10.0], ["x", "y"])
  assert r["diff"] == np.inf and r["ci95"] is None and r["p_le_0"] is None
  assert r["groups_better"] == 2


def test_mismatched_inputs_are_refused():
  with pytest.raises(ValueError, match="three"):
    stats.paired_difference([1.0, 2.0], [1.0], [0, 1])
