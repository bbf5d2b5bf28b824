"""How much weight a testbed prior's first conv puts on each of its inputs.

  python -m experiments.prior_input_weights A.safetensors [B.safetensors ...]

Prints JSON: per file, the Frobenius norm of the stem kernel's slice for x_t, the reference
and (with Architecture.mirror_ref) the mirrored reference. An input whose slice stays near
zero after training is one the network does not use.
"""

import json
import sys

import numpy as np

INPUTS = ("x_t", "reference", "mirrored_reference")


def stem_norms(path) -> dict:
  from dc3d_jax.priors import testbed
  kernel = np.asarray(testbed.load_model(path).params["Conv_0"]["kernel"])
  return {name: round(float(np.linalg.norm(kernel[:, :, 3 * i:3 * i + 3])), 4)
          for i, name in enumerate(INPUTS[:kernel.shape[2] // 3])}


def main(paths) -> None:
  if not paths:
    raise SystemExit(__doc__)
  print(json.dumps({p: stem_norms(p) for p in paths}, indent=1))


if __name__ == "__main__":
  main(sys.argv[1:])
