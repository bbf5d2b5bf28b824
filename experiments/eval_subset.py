"""An eval_prior result re-scored on a subset of its objects, or with objects clustered.

  python -m experiments.eval_subset --result=OUT.json --objects=cow,duck [--out=SUB.json]
  python -m experiments.eval_subset --result=OUT.json --cluster=bunny00+bunny10k_textured

No sampling: the means and the paired intervals are recomputed from the result's per-view
scores (evaluation.summary, evaluation.paired). --cluster names objects that the bootstrap
resamples together as one unit, for objects that are not independent draws (one shape with
two textures); each '+'-joined group is one cluster.
"""

import json
import shlex
import sys

import numpy as np
from absl import app, flags

_RESULT = flags.DEFINE_string("result", None, "an eval_prior result JSON", required=True)
_OBJECTS = flags.DEFINE_list("objects", [], "keep these objects (default: all of them)")
_CLUSTER = flags.DEFINE_list("cluster", [], "a+b: resample objects a and b as one unit")
_OUT = flags.DEFINE_string("out", "", "write the re-scored result JSON here")


def rescore(result: dict, objects=(), clusters=()) -> dict:
  """The rows, paired intervals and protocol of `result` restricted to `objects` (all when
  empty), with each group of `clusters` ('a+b') one resampling unit."""
  from dc3d_jax.testbed import evaluation
  names = result["protocol"]["objects"]
  views = result["protocol"]["views_per_object"]
  keep = list(objects) or names
  unknown = sorted(set(keep) - set(names))
  if unknown:
    raise app.UsageError(f"objects {unknown} are not in the result ({names})")
  label = {n: n for n in keep}
  for group in clusters:
    members = group.split("+")
    if not set(members) <= set(keep):
      raise app.UsageError(f"cluster {group!r}: every member must be among {keep}")
    label.update({m: group for m in members})
  index = np.concatenate([np.arange(views) + names.index(n) * views for n in keep])
  per = {row: {m: np.asarray(v[m])[index] for m in v} for row, v in result["per_view"].items()}
  # Clusters numbered in order of appearance, as evaluate() numbers objects, so the full set
  # without clusters draws the same resamples as the result's own intervals.
  order = list(dict.fromkeys(label[n] for n in keep))
  groups = np.repeat([order.index(label[n]) for n in keep], views)
  return {**{row: evaluation.summary(v) for row, v in per.items()},
          "paired": evaluation.paired(per, groups),
          "protocol": {**result["protocol"], "objects": keep,
                       "clusters": sorted(set(label.values()))},
          "weights": result.get("weights")}


def main(argv):
  del argv
  with open(_RESULT.value) as f:
    result = json.load(f)
  sub = rescore(result, _OBJECTS.value, _CLUSTER.value) | {"source": _RESULT.value}
  sub["command"] = " ".join(shlex.quote(a) for a in
                            ["python", "-m", "experiments.eval_subset"] + sys.argv[1:])
  from dc3d_jax.testbed import evaluation
  print(evaluation.markdown(sub, f"{len(sub['protocol']['objects'])} objects, "
                      f"{len(sub['protocol']['clusters'])} clusters"))
  if _OUT.value:
    from dc3d_jax.io import writers
    writers.save_json(_OUT.value, sub)


if __name__ == "__main__":
  app.run(main)
