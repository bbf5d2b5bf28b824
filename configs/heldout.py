"""The method on an object the testbed prior never saw: the demo's stages and sizes, with a
held-out testbed object as the reference and the testbed prior as the only prior.

Run (needs the testbed prior's weights, weights/testbed_prior.safetensors, made by
experiments/train_prior.py and experiments/eval_prior.py --export; README "The testbed prior"):
  python -m experiments.run --config=configs/heldout.py
  python -m experiments.run --config=configs/heldout.py --config.data.object=duck
Guided against unguided over objects and seeds (docs/RESULTS.md), on the coarse-NeRF stage
alone at 1000 steps (the variant "nerf": twelve runs must fit beside everything else on a
2-core machine; each step-based schedule is scaled to the 1000 steps as the demo scales its
2000):
  python -m experiments.compare_guidance --config=configs/heldout.py:nerf \
      --objects=cow,bunny00,duck --seeds=0,1 --root=outputs/compare_guidance \
      --out=benchmarks/results/heldout_guidance.json

Differences from configs/demo.py:
  - data.object = "cow" (dc3d_jax/testbed/catalog.py HELD_OUT): its render at the reference
    view is the reference image, and its mesh scores the run (novel views, Chamfer, F-score);
  - guidance.prior_2d = "none": no text-to-image model can be had here (SD needs weights);
  - guidance.prior_3d = "testbed": the learned 32² view-conditioned prior, CFG 3, in the slot
    Zero123 fills in the reference, with the same weights and t ranges.
"""

from configs import demo

NERF_STEPS = 1000   # the "nerf" variant's coarse-NeRF steps


def get_config(arg: str | None = None):
  if arg not in (None, "", "nerf"):
    raise ValueError(f"configs/heldout.py: unknown variant {arg!r}; expected 'nerf'")
  c = demo.build(NERF_STEPS if arg == "nerf" else demo.STEPS)
  c.workdir = "outputs/heldout"
  c.data.object = "cow"
  c.guidance.update(prior_2d="none", prior_3d="testbed")
  if arg == "nerf":
    c.stages = ("coarse_nerf",)
  c.lock()
  return c
