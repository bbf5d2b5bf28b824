"""The method on an object the testbed prior never saw: the demo's stages and sizes, with a
held-out testbed object as the reference and the testbed prior as the only prior.

Run (needs the testbed prior's weights, weights/testbed_prior.safetensors, made by
experiments/train_prior.py and experiments/eval_prior.py --export; README "The testbed prior"):
  python -m experiments.run --config=configs/heldout.py
  python -m experiments.run --config=configs/heldout.py --config.data.object=duck
Guided against unguided over objects and seeds (docs/RESULTS.md):
  python -m experiments.compare_guidance --config=configs/heldout.py \
      --objects=cow,bunny00,duck --seeds=0,1 --out=benchmarks/results/heldout_guidance.json

Differences from configs/demo.py:
  - data.object = "cow" (dc3d_jax/testbed/catalog.py HELD_OUT): its render at the reference
    view is the reference image, and its mesh scores the run (novel views, Chamfer, F-score);
  - guidance.prior_2d = "none": no text-to-image model can be had here (SD needs weights);
  - guidance.prior_3d = "testbed": the learned 32² view-conditioned prior, CFG 3, in the slot
    Zero123 fills in the reference, with the same weights and t ranges.
"""

from configs import demo


def get_config(arg: str | None = None):
  c = demo.get_config()
  c.unlock()
  c.workdir = "outputs/heldout"
  c.data.object = "cow"
  c.guidance.update(prior_2d="none", prior_3d="testbed")
  if arg:
    raise ValueError(f"configs/heldout.py takes no variant, got {arg!r}")
  c.lock()
  return c
