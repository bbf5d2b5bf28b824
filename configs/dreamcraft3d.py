"""DreamCraft3D reference settings (../shared/reference/dreamcraft3d.md §1-3).

Run (an RGBA reference image; weights from local folders or the local Hugging Face cache):
  python -m experiments.run --config=configs/dreamcraft3d.py \
      --config.data.image=path/to/object_rgba.png --config.prompt="a ..." \
      --config.guidance.zero123_model=path/to/stable_zero123.ckpt
From a prompt alone (stage 0 draws the reference image):
  python -m experiments.run --config=configs/dreamcraft3d.py --config.prompt="a ..." \
      --config.guidance.zero123_model=path/to/stable_zero123.ckpt
Smoke run (a few steps at tiny resolution; the same model flags):
  python -m experiments.run --config=configs/dreamcraft3d.py:quick ...

Deviations from the reference are marked DEVIATION below and listed in docs/ARCHITECTURE.md.
"""

import ml_collections

from configs import texture_section

# Scalar schedules (loss weights, t ranges) are tuples: (v,) a constant, (s0, v0, v1, s1)
# linear from v0 at step s0 to v1 at s1. On the command line: =500 or =(0,1,10,2000).
STEP_AT_2000 = 2000


def const(value: float) -> tuple:
  return (float(value),)


def step_change(before: float, after: float, at: int = STEP_AT_2000) -> tuple:
  return (at, float(before), float(after), at + 1)


def data_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.image = ""              # RGBA reference image; empty: render the oracle's object
  c.object = ""             # or a ground-truth object: 'primitives' | testbed catalog name
  c.depth = ""              # optional depth map (grey PNG) for the depth_rel loss
  c.depth_kind = "depth"    # "depth": near = dark (the reference's Omnidata maps);
                            # "disparity": near = bright (MiDaS-style), flipped on load
  c.remove_background = False
  c.recenter = True         # tight crop resized to `fill` of the canvas (preprocess --recenter)
  c.fill = 0.9
  c.image_size = 1024       # canvas size of the preprocessed reference
  c.ref_elevation_deg = 0.0
  c.ref_azimuth_deg = 0.0
  c.ref_distance = 3.8
  c.fovy_deg = 20.0         # Zero123's fixed field of view
  c.elevation_range_deg = (-10.0, 45.0)
  c.azimuth_range_deg = (-180.0, 180.0)
  # Random views per step over all devices; 0 = one per device. The published results used
  # 8 GPUs x 1 view = 8 views per step (gradients averaged, reference §9): on one device,
  # batch_size=8 gives that effective batch (the SDS loss is the mean over the 8 views).
  c.batch_size = 0
  # Reference-view rays get one N(0, s²) offset of origin and direction per resolution.
  c.rays_noise_scale = 2e-3
  return c


def guidance_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  # Hybrid score distillation (reference §3): a 2D text-to-image prior and the view-conditioned
  # Zero123, weighted by <stage>.loss.sds_2d / sds_3d. "none" empties a slot, so 2D-only,
  # 3D-only and hybrid runs are config choices; "oracle" knows the built-in test object.
  # DEVIATION: the reference's 2D prior is DeepFloyd IF-I-XL (pixel space, 64², CFG 20),
  # ported as "deepfloyd" (guidance.if_model); Stable Diffusion 2.1-base ("sd", latents of 512²
  # renders) stands in by default.
  c.prior_2d = "sd"           # "sd" | "deepfloyd" | "oracle" | "none"
  c.prior_3d = "zero123"      # "zero123" | "testbed" | "oracle" | "none"
  # DEVIATION: the reference runs Stable-Zero123 in fp32 (and IF in fp16); "auto" runs both
  # priors in bf16 on a GPU (docs/ARCHITECTURE.md). "fp32": the reference's Zero123 numerics.
  c.precision = "auto"        # "auto" (bf16 on GPU, fp32 on CPU) | "fp32" | "bf16"
  c.sd_model = "stabilityai/stable-diffusion-2-1-base"  # diffusers folder or cached model id
  # threestudio's SDS configs for SD use CFG 100; IF's 20 is too weak for SD's latents.
  c.sd_guidance_scale = 100.0
  # DEVIATION: the t ranges below are IF's. "snr_matched_if" queries SD at the step whose
  # ᾱ_SD equals ᾱ_IF of the drawn IF step (t = 500 -> t' = 359; docs/ARCHITECTURE.md has the
  # table); "if_fractions" at the same step, where SD's input is far noisier (§10).
  c.sd_t_schedule = "snr_matched_if"
  c.sd_perp_neg = True        # on in every IF stage of the reference (sd and deepfloyd)
  c.sd_render_size = 512      # renders are resized to this before the VAE
  # DeepFloyd IF stage I (prior_2d = "deepfloyd"): the reference's 2D prior, queried at the
  # stages' own t ranges (sd_t_schedule does not apply); T5-XXL embeddings cached per prompt.
  c.if_model = "DeepFloyd/IF-I-XL-v1.0"   # diffusers folder or cached model id
  c.if_guidance_scale = 20.0
  c.if_render_size = 64       # bilinear resize of renders (no antialias), IF-I's size
  c.negative_prompt = ""
  c.front_threshold_deg = 45.0    # view-dependent prompt suffixes (the IF stages' thresholds)
  c.back_threshold_deg = 45.0
  c.overhead_threshold_deg = 60.0
  c.zero123_model = ""        # stable_zero123.ckpt / zero123-xl.ckpt / diffusers folder / id
  c.zero123_image_encoder = ""    # CLIP ViT-L/14, only for checkpoints that lack one
  c.zero123_variant = "stable"    # "stable" (Stable-Zero123) | "xl": the 4th pose entry
  c.zero123_guidance_scale = 5.0
  c.zero123_render_size = 256
  # The testbed prior (issue 10): a small Zero123-style pixel model trained in-project on
  # ground-truth meshes (experiments/train_prior.py); relative paths fall back to the repo.
  c.testbed_model = "weights/testbed_prior.safetensors"
  c.testbed_guidance_scale = 3.0
  c.oracle_object = "primitives"
  c.oracle_resolution = 64    # pixel-space, like DeepFloyd IF stage I's 64²
  return c


def stage0_config() -> ml_collections.ConfigDict:
  """Stage 0: with a prompt and no data.image, Stable Diffusion (guidance.sd_model) draws
  the reference image, u2netp removes its background and it is recentred."""
  c = ml_collections.ConfigDict()
  c.steps = 50
  c.guidance_scale = 7.5
  c.size = 512
  c.seed = 0
  return c


def hash_grid_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.n_levels = 16
  c.n_features = 2
  c.log2_table_size = 19
  c.base_resolution = 16
  c.per_level_scale = 1.447269237440378   # finest level 4096
  return c


def coarse_nerf_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.train = ml_collections.ConfigDict(dict(
      steps=5000,
      resolutions=(128, 384),            # render size of ref and random views ...
      resolution_milestones=(3000,),     # ... switching at these steps
      substeps="alternate",              # even steps: reference view; odd: guidance
      log_every=10, checkpoint_every=500, sample_every=200, keep_checkpoints=2))
  c.views = ml_collections.ConfigDict(dict(progressive_until=200))
  c.field = ml_collections.ConfigDict(dict(
      radius=2.0, hidden=64, blob_scale=10.0, blob_std=0.5,
      grid=hash_grid_config(),
      band_start_level=8, band_start_step=2000, band_update_steps=500))
  c.render = ml_collections.ConfigDict(dict(
      num_steps_diagonal=512, stratified=True,
      # Static sample budgets per ray (averaged over all rays of a view; cost follows them).
      prepass_samples_per_ray=128.0, samples_per_ray=48.0,
      alpha_threshold=0.01, transmittance_threshold=0.0,
      # Field queries per chunk, each recomputed in the backward pass: bounds memory at 384².
      field_chunk=2**18, remat=True,
      occupancy_resolution=32, occupancy_threshold=0.01, occupancy_decay=0.95,
      occupancy_every=16))
  c.guidance = ml_collections.ConfigDict(dict(
      sds_2d=dict(t_min=(0, 0.7, 0.2, 200), t_max=(0, 0.85, 0.5, 200)),
      sds_3d=dict(t_min=(0, 0.7, 0.2, 200), t_max=(0, 0.85, 0.5, 200))))
  c.optim = ml_collections.ConfigDict(dict(
      lr=dict(hash_table=0.01, density_mlp=0.01, feature_mlp=0.01),
      b1=0.9, b2=0.99, eps=1e-8))
  c.loss = ml_collections.ConfigDict(dict(
      rgb=const(1000), mask=const(100), depth_rel=const(0.05), sds_2d=const(0.1),
      sds_3d=const(0.1), normal_smooth_2d=const(1), normal_smooth_3d=step_change(5.0, 1.0),
      orient=step_change(1.0, 10.0), sparsity=step_change(0.1, 10.0),
      opaque=step_change(0.1, 10.0)))
  return c


def coarse_neus_config() -> ml_collections.ConfigDict:
  """Stage 1b (reference §1b, §3 NeuS column, §10). The hash grid, box radius and occupancy
  resolution are coarse_nerf's: the warm start carries the table and the grid over."""
  c = ml_collections.ConfigDict()
  # Where the coarse NeRF's final state is read when coarse_nerf is not in this run's stages:
  # empty = this work dir; or the work dir of a run whose coarse_nerf stage finished.
  c.init_from = ""
  c.train = ml_collections.ConfigDict(dict(
      steps=5000,
      # 256² reference and random views (DC). DS's NeuS config trains at 128² (eval 256²), and
      # the reference README suggests 128² to save memory.
      resolutions=(256,), resolution_milestones=(),
      substeps="alternate",              # even steps: reference view; odd: guidance
      log_every=10, checkpoint_every=500, sample_every=200, keep_checkpoints=2))
  c.views = ml_collections.ConfigDict(dict(progressive_until=0))   # full range from step 1
  c.field = ml_collections.ConfigDict(dict(
      hidden=64,
      sphere_radius=0.5,        # f = MLP(h) + (|x| - 0.5)
      variance_init=0.3))       # inv_std = exp(10·v) ≈ 20 at the start
  c.render = ml_collections.ConfigDict(dict(
      num_steps_diagonal=512, stratified=True,
      # Static sample budgets per ray. The pre-pass prunes by NeuS's simplified alpha < 0.01,
      # which is ~1 everywhere inside the surface, so the whole interior is kept (as in the
      # reference): more live samples than NeRF's. At the start (the radius-0.5 sphere, 256²)
      # 49 per ray are live (benchmarks/results/coarse_neus_step_256_cpu.json).
      prepass_samples_per_ray=128.0, samples_per_ray=64.0,
      alpha_threshold=0.01, transmittance_threshold=0.0,
      field_chunk=2**18, remat=True,
      occupancy_threshold=0.01, occupancy_decay=0.95, occupancy_every=16,
      cos_anneal_end=5000))     # cosine-anneal ratio = min(1, step / 5000)
  c.guidance = ml_collections.ConfigDict(dict(
      sds_2d=dict(t_min=const(0.2), t_max=const(0.5)),
      sds_3d=dict(t_min=const(0.2), t_max=const(0.5))))
  c.optim = ml_collections.ConfigDict(dict(
      lr=dict(hash_table=0.01, sdf_mlp=1e-3, feature_mlp=1e-3, variance=1e-3),
      b1=0.9, b2=0.99, eps=1e-15))
  c.loss = ml_collections.ConfigDict(dict(
      rgb=const(1000), mask=const(100), depth_rel=const(0.05), sds_2d=const(0.1),
      sds_3d=const(0.1), normal_smooth_2d=const(0), normal_smooth_3d=const(0),
      orient=const(10), sparsity=const(0.1), opaque=const(0.1), eikonal=const(0)))
  return c


def geometry_config() -> ml_collections.ConfigDict:
  """Stage 2, DMTet (reference §1 "2 Geometry", §3 geometry column, §10 "DMTet (2)"). The hash
  grid and box radius are coarse_nerf's and the colour MLP's width coarse_neus's: the warm
  start carries the table and the MLP over."""
  c = ml_collections.ConfigDict()
  # Where the coarse NeuS's final state is read when coarse_neus is not in this run's stages:
  # empty = this work dir; or the work dir of a run whose coarse_neus stage finished.
  c.init_from = ""
  c.train = ml_collections.ConfigDict(dict(
      steps=5000,
      resolutions=(1024,), resolution_milestones=(),   # 1024² reference and random views
      substeps="accumulate",             # reference view and guidance every step
      n_rgb=4,                           # RGB steps: step % 4 == 0; normal maps otherwise
      log_every=10, checkpoint_every=500, sample_every=200, keep_checkpoints=2))
  c.views = ml_collections.ConfigDict(dict(progressive_until=0))   # full range from step 1
  c.tets = ml_collections.ConfigDict(dict(
      resolution=128,                    # the reference's 128 grid: 64 cells per axis
      # Static marching-tets budgets: an object filling the fitted box has ~1e5 faces at 128
      # (a sphere: 8e4); more overflows and is reported (metrics mesh_overflow, kept_frac).
      max_vertices=2**17, max_faces=2**18,
      bbox_margin=0.1))                  # the tight box of the NeuS surface + 10% per side
  c.render = ml_collections.ConfigDict(dict(
      rasterizer="auto",                 # nvdiffrast where it can run (a GPU), else jax
      # The JAX rasterizer's tiled visibility budget, (16² tile, triangle) pairs; candidates
      # beyond it are reported (raster_overflow/<substep>, kept_frac).
      max_pairs=2**21,
      field_chunk=2**18, remat=True))    # albedo queries per chunk, recomputed in backward
  c.guidance = ml_collections.ConfigDict(dict(
      sds_2d=dict(t_min=const(0.02), t_max=const(0.5)),
      sds_3d=dict(t_min=const(0.2), t_max=const(0.5))))
  c.optim = ml_collections.ConfigDict(dict(
      lr=dict(sdf=0.005, deformation=0.005, hash_table=0.005, feature_mlp=0.005),
      b1=0.9, b2=0.99, eps=1e-15))
  c.loss = ml_collections.ConfigDict(dict(
      rgb=const(1000), mask=const(100), depth_rel=const(0), sds_2d=const(0.1),
      sds_3d=const(0.1),
      normal_consistency=(1000, 10.0, 1.0, 2000),   # 10 until step 1000, then to 1 at 2000
      laplacian=const(0)))
  return c


def eval_config() -> ml_collections.ConfigDict:
  """The evaluation protocol (eval/protocol.py; ../shared/reference/evaluation.md)."""
  c = ml_collections.ConfigDict()
  c.resolution = 512        # render size of the turntables and the metrics
  c.orbit_views = 120       # reference test pass: 120 views at the reference elevation, 30 fps
  c.fps = 30
  c.novel_stride = 1        # score every s-th orbit view against the ground truth
  c.high_elevation_deg = 30.0   # and these views, which see the top of the object
  c.high_azimuths_deg = (0.0, 45.0, 90.0, 135.0, 180.0, 225.0, 270.0, 315.0)
  c.fscore_thresholds = (0.01, 0.02, 0.05)   # fractions of the GT bounding-box diagonal
  c.geometry_points = 100_000
  c.volume_resolution = 64
  c.lpips = True            # LPIPS-AlexNet (weights fetched by `make assets`)
  c.clip_model = ""         # CLIP folder for clip_similarity (none ship here)
  c.vgg19_weights = ""      # VGG19 state dict for the contextual distance (none ship here)
  c.chunk_rays = 8192
  return c


def export_config() -> ml_collections.ConfigDict:
  """The last stage's asset (export/): reference §5 and §10 "Export"."""
  c = ml_collections.ConfigDict()
  c.enabled = True
  c.mesh_resolution = 256   # marching-cubes grid of the volume stages (NeRF, NeuS)
  c.texture_size = 1024     # the reference bakes at 1024²
  # Remove connected components with fewer faces than this fraction of the largest (the
  # reference's texture stage: 0.01; its geometry export keeps floaters: 0).
  c.min_component_fraction = 0.0
  return c


def base_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.workdir = "outputs/dreamcraft3d"
  c.seed = 0
  c.prompt = ""
  c.stages = ("coarse_nerf",)
  c.data = data_config()
  c.guidance = guidance_config()
  c.stage0 = stage0_config()
  c.coarse_nerf = coarse_nerf_config()
  c.coarse_neus = coarse_neus_config()
  c.geometry = geometry_config()
  # Stage 3 (reference §4, §10): BSD on the fixed mesh; configs/texture_section.py.
  c.texture = texture_section.texture_config()
  c.eval = eval_config()
  c.export = export_config()
  return c


def shrink_for_smoke(c: ml_collections.ConfigDict) -> None:
  """A few steps at tiny resolution: checks the plumbing, not the result."""
  c.workdir = "outputs/dreamcraft3d_quick"
  c.data.image_size = 128
  t = c.coarse_nerf.train
  t.steps, t.resolutions, t.resolution_milestones = 6, (24, 32), (4,)
  t.log_every, t.checkpoint_every, t.sample_every = 1, 3, 3
  c.coarse_nerf.views.progressive_until = 2
  c.coarse_nerf.field.grid.log2_table_size = 12
  c.coarse_nerf.field.band_start_step, c.coarse_nerf.field.band_update_steps = 2, 1
  c.coarse_nerf.render.num_steps_diagonal = 96
  neus = c.coarse_neus
  neus.train.update(steps=4, resolutions=(32,), log_every=1, checkpoint_every=2, sample_every=2)
  neus.render.update(num_steps_diagonal=96, cos_anneal_end=4)
  geo = c.geometry
  geo.train.update(steps=4, resolutions=(32,), log_every=1, checkpoint_every=2, sample_every=2)
  geo.tets.update(resolution=32, max_vertices=2**12, max_faces=2**13)
  geo.loss.normal_consistency = (2, 10.0, 1.0, 4)
  c.guidance.oracle_resolution = 32
  c.guidance.sd_render_size, c.guidance.zero123_render_size = 64, 64
  c.stage0.steps, c.stage0.size = 2, 64
  c.eval.update(resolution=32, orbit_views=8, chunk_rays=1024, geometry_points=5000,
                volume_resolution=24, high_azimuths_deg=(0.0, 180.0))
  c.export.update(mesh_resolution=48, texture_size=128)
  tex = c.texture
  tex.train.update(steps=6, log_every=1, checkpoint_every=3, sample_every=3)
  tex.update(resolution=32, mesh_resolution=32)
  tex.bsd.update(cycle_steps=4, dreambooth_steps=2, augment_every=2, sampler_steps=4)
  tex.prior.render_size = 64


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  c = base_config()
  if arg == "quick":
    shrink_for_smoke(c)
  elif arg:
    raise ValueError(f"configs/dreamcraft3d.py: unknown variant {arg!r}; expected 'quick'")
  c.lock()
  return c
