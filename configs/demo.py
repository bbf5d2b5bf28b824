"""The CPU demo: the method on an object the testbed prior never saw. A held-out testbed object
(data.object = "cow", dc3d_jax/testbed/catalog.py HELD_OUT) gives the reference image; coarse
NeRF -> NeuS -> DMTet -> texture run with the testbed prior (the learned 32² view-conditioned
model in weights/testbed_prior.safetensors, issue 10) as the only prior, in the slot Zero123
fills in the reference, with the same weights and t ranges; the textured DMTet mesh is
exported (GLB, OBJ) and scored against the object's own mesh (novel views, Chamfer, F-score,
volume IoU in metrics.json). No downloaded weights: the prior's weights are in the repo.

Run:
  python -m experiments.run --config=configs/demo.py
  python -m experiments.run --config=configs/demo.py --config.data.object=duck
Outputs land in outputs/demo/ (metrics.json, export/model.glb and .obj, a turntable per stage,
samples, checkpoints). configs/oracle.py is the same stages with the oracle prior and the
built-in toy: the plumbing check (what the oracle proves is said there).

Guided against unguided over held-out objects and seeds (docs/RESULTS.md), on the coarse-NeRF
stage alone at 1000 steps (the variant "nerf": twelve runs must fit on a 2-core machine; each
step-based schedule is scaled to the 1000 steps as below for 2000):
  python -m experiments.compare_guidance --config=configs/demo.py:nerf \
      --objects=cow,bunny00,duck --seeds=0,1 --root=outputs/compare_guidance_mirrorref \
      --out=benchmarks/results/heldout_guidance_mirrorref.json

Differences from configs/dreamcraft3d.py beyond the sizes below: guidance.prior_2d = "none"
(no text-to-image model can be had here; SD needs weights) and prior_3d = "testbed".

It is configs/dreamcraft3d.py with these changes, all for CPU time:
  - fewer steps, with every step-based schedule scaled by the same factor 2000/5000: band
    growth, loss-weight changes, timestep annealing (over 80 steps instead of 200) and the
    progressive view range (progressive_until 80 instead of 200); one training resolution
    (64²) instead of 128² then 384²;
  - a smaller hash grid (12 levels, 2^16 entries, finest level 512);
  - a coarser render step (192 steps across the box diagonal instead of 512), tight sample
    budgets, and transmittance pruning of samples hidden behind the surface;
  - the normal-based regularizers (orient, normal_smooth_2d, normal_smooth_3d) are off: their
    finite-difference normals cost 3-7 extra field queries per sample (3-4x the step time on
    CPU);
  - no field chunking or recomputation (at 64² memory is not the limit; they cost 8-40% here);
  - evaluation at 128² with a 60-frame turntable.
The texture section (stage 3) of build() uses plain SDS through the prior
(texture.guidance.kind = "sds"; configs/oracle.py); get_config() runs BSD with the testbed
prior as its base model instead (_bsd_on_testbed), at 64² on the previous stage's
mesh (the DMTet surface; texture.mesh_resolution = 64 applies when a volume stage precedes
it), TEXTURE_STEPS
steps, with its t range's anneal scaled onto them (~70 s with its turntable and export,
measured alone from a finished NeuS work dir; not in the three-stage figures below).
The coarse_neus section is shrunk the same way (NEUS_STEPS steps at 64², the cosine anneal over
the whole stage as in the reference, the same render step, budgets and transmittance pruning;
orient stays on: NeuS needs the normals for its alpha anyway). The geometry section:
GEOMETRY_STEPS steps at 128² instead of 5000 at 1024² (a 1024² step is minutes on this CPU,
benchmarks/RESULTS.md), a 64 tet grid (32 cells across the fitted box) instead of 128 with
budgets to match (the toy's mesh has ~20k faces there), the normal-consistency ramp scaled to
the stage's length (10 until step 40, to 1 at step 80), no albedo chunking or recomputation.

Stage times at these sizes with the oracle prior (configs/oracle.py), measured 2026-12-01 by
running each stage alone with few steps
(--config.stages=<stage> --config.<stage>.train.steps=N, each from the previous one's work dir
through init_from) on the 2-core machine while other sessions loaded it (load average 8-10):
  stage         per step   first step (compile)   turntable + export + evaluation (as last)
  coarse_nerf   0.40 s     ~26 s                   140 s
  coarse_neus   0.87 s     ~34 s                   160 s
  geometry      1.6 s      ~64 s                   150 s
The same NeRF step takes 0.136 s on a quiet machine (benchmarks/RESULTS.md), so these are
~2.9x a quiet machine's. Extrapolated: 800 + 260 + 320 s of steps, ~120 s of compiles, two
turntables and the final evaluation: ~28 min under that load, ~10 min on a quiet machine.
The whole demo then ran (same day, python -m experiments.run --config=configs/demo.py, load
average 5-10, part of it this task's own benchmarks): 27 min 10 s (NeRF 15 min, NeuS 4 min,
DMTet 3.5 min, turntables and evaluation the rest), Chamfer 0.0075 of the GT diagonal,
F-score 0.936 at 2% and 0.981 at 5%, novel-view PSNR 24.6 dB, mask IoU 0.962
(benchmarks/results/demo_three_stages_metrics_cpu.json). The NeRF-only demo took 6-7 min on a
quiet machine (RESULTS.md), so the three stages should take ~10 min there; under heavy sharing
they exceed 20 min.
The demo as it is now (the held-out cow, the testbed prior in every stage, BSD on it in the
texture stage) ran in 20 min 24 s, peak RSS 5.1 GB (2026-12-01, the guidance sweep beside it at
nice 10; stages 435 / 186 / 202 / 197 s; benchmarks/results/demo_heldout_cpu.json); with the
testbed weights trained with the mirror input (2026-12-02) in 23 min 43 s beside an
evaluation (benchmarks/results/demo_heldout_cpu_2026-12-02_mirrorref.json).
"""

from configs import dreamcraft3d

STEPS = 2000
# A NeuS step costs what a NeRF step with normals costs (3 extra field queries per sample for
# the SDF gradient): ~2x the demo's NeRF step here (the docstring's table). 300 steps keep the
# three stages within 20 minutes.
NEUS_STEPS = 300
# A DMTet step at 128² costs ~4x the demo's NeRF step (two rasterized views and the mesh).
GEOMETRY_STEPS = 200
TEXTURE_STEPS = 200


def _shrink_neus(n) -> None:
  n.train.update(steps=NEUS_STEPS, resolutions=(64,), resolution_milestones=(), log_every=20,
                 checkpoint_every=200, sample_every=250)
  # The pre-pass sees the whole occupied interior of the initial sphere (its simplified alpha
  # is ~0.5 there): 16 per ray cut 45% of the candidates at the start, 32 cuts none.
  n.render.update(num_steps_diagonal=192, samples_per_ray=8.0, prepass_samples_per_ray=32.0,
                  transmittance_threshold=1e-3, field_chunk=0, remat=False,
                  cos_anneal_end=NEUS_STEPS)


def _shrink_geometry(g) -> None:
  g.train.update(steps=GEOMETRY_STEPS, resolutions=(128,), resolution_milestones=(),
                 log_every=20, checkpoint_every=100, sample_every=100)
  g.tets.update(resolution=64, max_vertices=2**15, max_faces=2**16)
  g.render.update(field_chunk=0, remat=False)
  s0, v0, v1, s1 = g.loss.normal_consistency       # (1000, 10, 1, 2000) of 5000 steps
  scale = GEOMETRY_STEPS / 5000
  g.loss.normal_consistency = (int(round(s0 * scale)), v0, v1, int(round(s1 * scale)))


def _shrink_texture(t) -> None:
  t.guidance.kind = "sds"
  t.train.update(steps=TEXTURE_STEPS, log_every=20, checkpoint_every=100, sample_every=100)
  t.update(resolution=64, mesh_resolution=64)
  for slot in ("sds_2d", "sds_3d"):        # t_max 0.5 -> 0.2 over the stage, as over 5000
    s0, v0, v1, _ = t.guidance[slot].t_max
    t.guidance[slot].t_max = (s0, v0, v1, TEXTURE_STEPS)


def shrink_nerf(n, steps: int) -> None:
  """The coarse-NeRF section at `steps` steps, 64², with every step-based schedule (band
  growth, loss-weight changes, timestep annealing, progressive views) scaled by steps/5000."""
  at = lambda step: int(round(step * steps / 5000))
  n.train.update(steps=steps, resolutions=(64,), resolution_milestones=(), log_every=20,
                 checkpoint_every=200, sample_every=300)
  n.field.grid.update(n_levels=12, log2_table_size=16, per_level_scale=1.3703509847201236)
  n.field.update(band_start_level=6, band_start_step=at(2000), band_update_steps=at(500))
  n.render.update(num_steps_diagonal=192, samples_per_ray=8.0, prepass_samples_per_ray=16.0,
                  transmittance_threshold=1e-3, field_chunk=0, remat=False)
  for name in ("sparsity", "opaque"):
    s0, v0, v1, _ = n.loss[name]
    n.loss[name] = dreamcraft3d.step_change(v0, v1, at=at(s0))
  for slot in ("sds_2d", "sds_3d"):        # timestep annealing (0, v0, v1, 200) -> 80 steps
    for name in ("t_min", "t_max"):
      s0, v0, v1, s1 = n.guidance[slot][name]
      n.guidance[slot][name] = (at(s0), v0, v1, at(s1))
  n.views.progressive_until = at(n.views.progressive_until)
  for name in ("orient", "normal_smooth_2d", "normal_smooth_3d"):
    n.loss[name] = dreamcraft3d.const(0)


def build(nerf_steps: int = STEPS):
  """The demo's sizes with the oracle prior on the built-in toy (configs/oracle.py), unlocked,
  its coarse-NeRF section at `nerf_steps` steps."""
  c = dreamcraft3d.base_config()
  c.workdir = "outputs/demo"
  c.stages = ("coarse_nerf", "coarse_neus", "geometry", "texture")
  # The embedded default: the oracle prior knows the built-in toy; no weights needed.
  c.guidance.prior_2d, c.guidance.prior_3d = "oracle", "none"
  c.data.image_size = 256
  shrink_nerf(c.coarse_nerf, nerf_steps)
  _shrink_neus(c.coarse_neus)
  _shrink_geometry(c.geometry)
  _shrink_texture(c.texture)
  c.eval.update(resolution=128, orbit_views=60)
  c.export.update(mesh_resolution=128, texture_size=512)
  return c


NERF_STEPS = 1000   # the "nerf" variant's coarse-NeRF steps


def _bsd_on_testbed(t) -> None:
  """The texture stage's BSD with the testbed prior as its base (priors/testbed_base.py), the
  reference's 1000-step cycle scaled onto TEXTURE_STEPS: DreamBooth phase 200 -> 40 steps, an
  augmentation every 25 -> 5 steps (8 per phase, as the reference's 8), t_max's anneal over
  the stage."""
  scale = TEXTURE_STEPS / t.bsd.cycle_steps
  t.guidance.kind = "bsd"
  t.prior.update(base="testbed", memory_mode="full")
  t.bsd.update(cycle_steps=TEXTURE_STEPS,
               dreambooth_steps=int(round(t.bsd.dreambooth_steps * scale)),
               augment_every=int(round(t.bsd.augment_every * scale)))
  s0, v0, v1, _ = t.bsd.t_max
  t.bsd.t_max = (s0, v0, v1, TEXTURE_STEPS)


def get_config(arg: str | None = None):
  if arg not in (None, "", "nerf"):
    raise ValueError(f"configs/demo.py: unknown variant {arg!r}; expected 'nerf'")
  c = build(NERF_STEPS if arg == "nerf" else STEPS)
  c.data.object = "cow"
  c.guidance.update(prior_2d="none", prior_3d="testbed")
  if arg == "nerf":
    c.stages = ("coarse_nerf",)
  else:
    _bsd_on_testbed(c.texture)
  c.lock()
  return c
