"""The plumbing check: the CPU demo's stages and sizes (configs/demo.py) with the oracle prior
recovering the built-in ground-truth toy from its reference view.

Run:
  python -m experiments.run --config=configs/oracle.py
Outputs land in outputs/oracle/ (metrics.json with chamfer and fscore, export/model.glb/.obj,
a turntable per stage).

What it proves, and what it does not. The 2D prior is the oracle (priors/oracle.py): a
"denoiser" that renders the ground-truth toy from every sampled view (and its normal map on
the geometry stage's normal steps), so the score-distillation gradient pulls each render
straight toward the truth. That is ground-truth supervision of every view. A good score here
shows that the chain carries its state correctly (coarse NeRF -> NeuS -> DMTet warm starts, the
losses, cameras, rasterizer, mesh extraction, the glTF frame and the metrics), not that the
method reconstructs an unseen object: that needs the real priors (configs/dreamcraft3d.py).

It is demo.build(): the demo's sizes, so the two stay one setting (the demo's docstring lists
what is shrunk for CPU time and the measured stage times); only the prior and the object
differ. Measured: docs/RESULTS.md ("The oracle run").
"""

from configs import demo


def get_config(arg: str | None = None):
  if arg:
    raise ValueError(f"configs/oracle.py takes no variant, got {arg!r}")
  c = demo.build()
  c.workdir = "outputs/oracle"
  c.lock()
  return c
