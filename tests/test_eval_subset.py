"""experiments/eval_subset.py: an eval_prior result re-scored on some of its objects, or with
objects that are not independent draws resampled as one cluster."""

import numpy as np
import pytest
from absl import app

from experiments import eval_subset

ROWS = ("prior", "prior_mean", "reference", "mirrored")


def _result(diffs_per_object: dict, views: int = 2) -> dict:
  """A result whose prior rows beat both baselines by the given amount on every view of an
  object (baselines score 10 dB / IoU 0.5 everywhere)."""
  names = list(diffs_per_object)
  diffs = np.repeat([diffs_per_object[n] for n in names], views)
  base = {"psnr": np.full(len(diffs), 10.0), "mask_iou": np.full(len(diffs), 0.5)}
  better = {"psnr": base["psnr"] + diffs, "mask_iou": base["mask_iou"] + 0.01 * diffs}
  per_view = {row: {m: v.tolist() for m, v in (better if row.startswith("prior") else
                                              base).items()} for row in ROWS}
  return {"per_view": per_view, "weights": None,
          "protocol": {"objects": names, "views_per_object": views}}


def test_a_subset_keeps_only_its_objects_views():
  result = _result({"a": 1.0, "b": 2.0, "c": -4.0})
  sub = eval_subset.rescore(result, objects=["c", "a"])
  assert sub["prior"]["n"] == 4 and sub["protocol"]["objects"] == ["c", "a"]
  assert sub["prior"]["psnr"] == pytest.approx(10.0 + (1.0 - 4.0) / 2)
  assert sub["reference"]["psnr"] == pytest.approx(10.0)
  paired = sub["paired"]["prior-mirrored"]["psnr"]
  assert paired["diff"] == pytest.approx(-1.5) and paired["groups"] == 2
  assert paired["groups_better"] == 1


def test_a_cluster_is_resampled_as_one_unit():
  """Objects a, b (+1 on each view) and c (-3): a resample is three draws of objects, or two of
  the clusters {a+b, c}; its mean difference is <= 0 with probability 19/27 (any c among three
  equally sized draws) or 3/4 (any c among two draws, since (4 − 6)/6 < 0)."""
  result = _result({"a": 1.0, "b": 1.0, "c": -3.0})
  alone = eval_subset.rescore(result)["paired"]["prior-reference"]["psnr"]
  together = eval_subset.rescore(result, clusters=["a+b"])["paired"]["prior-reference"]["psnr"]
  assert alone["diff"] == together["diff"] == pytest.approx(-1.0 / 3.0)
  assert (alone["groups"], together["groups"]) == (3, 2)
  assert alone["p_le_0"] == pytest.approx(19 / 27, abs=0.02)
  assert together["p_le_0"] == pytest.approx(3 / 4, abs=0.02)


def test_unknown_objects_and_clusters_outside_the_subset_are_refused():
  result = _result({"a": 1.0, "b": 1.0})
  with pytest.raises(app.UsageError, match="not in the result"):
    eval_subset.rescore(result, objects=["a", "z"])
  with pytest.raises(app.UsageError, match="every member"):
    eval_subset.rescore(result, objects=["a"], clusters=["a+b"])
