"""The plumbing check: the CPU demo (configs/demo.py) under its own name and work dir.

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

It is the demo's config unchanged apart from the work dir, so the two stay one setting; the
demo's docstring lists what is shrunk for CPU time and the measured stage times.
"""

from configs import demo


def get_config(arg: str | None = None):
  c = demo.get_config(arg)
  with c.unlocked():
    c.workdir = "outputs/oracle"
  return c
