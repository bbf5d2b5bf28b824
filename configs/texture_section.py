"""Proposed `texture` config section (stage 3, BSD; ../shared/reference/dreamcraft3d.md §4, §10).

configs/dreamcraft3d.py holds `texture_config()` as `c.texture`. Defaults are
the reference's (DC) numbers; `ds_variant(c)` switches on the three DS flags together, and
guidance.bsd.settings_from_config(c) builds the static BSDSettings from the section.
Scalar schedules are tuples as everywhere: (v,) a constant, (s0, v0, v1, s1) a ramp.
"""

import ml_collections


def bsd_section() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  # The cycle (what_happens): the first `dreambooth_steps` of every `cycle_steps` train only
  # the DreamBooth prior; after that, ref L1 on steps % ref_every == 0, BSD on the others.
  c.cycle_steps = 1000           # DC only_pretrain_step (DS texture config: 10)
  c.dreambooth_steps = 200       # DC only_pretrain_step // 5 (DS: 2)
  c.augment_every = 25           # a new augmentation every 25 steps of the phase (DS: 10)
  c.ref_every = 2                # freq.n_ref: ref on even steps outside the phase
  c.cache_size = 10              # FIFO of augmented renders
  c.sampler_steps = 25           # DPM-Solver++(2M) grid of the augmentation
  c.augment_guidance_scale = 7.5
  c.bsd_guidance_scale = 2.0     # CFG of ε_DB in g (DS: 7.5)
  c.estimator_guidance_scale = 1.0
  c.prompt_dropout = 0.1         # DreamBooth ε-MSE: prompt zeroed with this probability (DS: 0)
  c.t_min = (0.05,)              # BSD t ~ U{⌊1000 t_min⌋ .. ⌊1000 t_max⌋}
  c.t_max = (0, 0.5, 0.2, 5000)  # also the augmentation's noise level t' (DS: (0.3,))
  # DS's variant (docs/texture_bsd.md); ds_variant() sets all three.
  c.camera_condition = False     # class embedding of the flattened c2w on both trained UNets
  c.masked_augmentation = False  # augmentations keep the region seen from the reference view
  c.silhouette_band = 0          # 11: no BSD gradient within an 11x11 band of the silhouette
  return c


def prior_section() -> ml_collections.ConfigDict:
  """The two trained UNets (priors/trainable.py). lr defaults: docs/texture_bsd.md."""
  c = ml_collections.ConfigDict()
  # The frozen base: "sd" (the reference: SD 2.1-base of `model`, latent space, text prompts)
  # or "testbed" (guidance.testbed_model, the in-project pixel-space model conditioned on the
  # reference image and relative camera; priors/testbed_base.py; memory_mode "full" only).
  c.base = "sd"
  c.model = "stabilityai/stable-diffusion-2-1-base"   # SD base (diffusers folder / id), "sd" only
  c.memory_mode = "full"         # "full": two full trainable UNets (DC) | "lora": adapters
  c.lora_rank = 4                # diffusers' LoRAAttnProcessor default rank (DS)
  c.lora_alpha = 4.0             # LoRA scale alpha / rank = 1, as diffusers without network_alpha
  # fp32 master weights (bf16 compute on GPU): DC's nominal 1e-5 on fp16 weights moved few
  # weights; here every update lands. DS trains the full UNets at 2e-5, its LoRA at 1e-4.
  c.lr_full = 1e-5               # DreamBooth and estimator UNets, "full" mode
  c.lr_lora = 1e-4               # adapters (and camera MLPs), "lora" mode
  c.b1 = 0.9
  c.b2 = 0.99
  c.eps = 1e-4                   # the reference's AdamW eps (chosen for fp16; kept)
  c.weight_decay = 0.01          # torch AdamW's default, which DC uses
  c.remat = False                # recompute UNet blocks in the backward pass (benchmarks/RESULTS.md)
  c.render_size = 512            # renders are resized to this before the VAE (64x64 latents)
  c.front_threshold_deg = 30.0   # view-dependent prompts of the texture stage
  c.back_threshold_deg = 30.0
  c.overhead_threshold_deg = 60.0
  return c


def texture_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  # Where the previous stage's final state is read when it is not in this run's stages:
  # empty = this work dir; or the work dir of a run whose previous stage finished.
  c.init_from = ""
  c.train = ml_collections.ConfigDict(dict(
      steps=5000, log_every=10, checkpoint_every=500, sample_every=200, keep_checkpoints=2))
  c.resolution = 1024            # ref and random-view renders
  # The fixed mesh: the previous stage's extract_mesh at this grid (marching cubes of the
  # volume stages; DMTet's surface ignores it), components below this fraction of the largest
  # component's faces removed (the reference's texture stage: 1%).
  c.mesh_resolution = 256
  c.min_component_fraction = 0.01
  c.erode_pixels = 4             # the ref L1's mask is eroded by 4 px (9x9 max-pool, §3)
  c.field = ml_collections.ConfigDict(dict(hidden=64))   # grid and box: coarse_nerf.field's
  c.render = ml_collections.ConfigDict(dict(
      rasterizer="auto",         # geometry/rasterize.py backend: auto | jax | nvdiffrast
      max_pairs=0,               # tiled visibility search budget (0: its default)
      field_chunk=0))            # colour queries per chunk (0: all at once)
  # "bsd": the BSD cycle on trained copies of texture.prior.model (the reference); "sds":
  # plain SDS through guidance.prior_2d / prior_3d (e.g. the oracle) with these t ranges.
  c.guidance = ml_collections.ConfigDict(dict(
      kind="bsd",
      sds_2d=dict(t_min=(0.05,), t_max=(0, 0.5, 0.2, 5000)),
      sds_3d=dict(t_min=(0.05,), t_max=(0, 0.5, 0.2, 5000))))
  c.bsd = bsd_section()
  c.prior = prior_section()
  # Texture parameters: AdamW (its weight decay also shrinks the hash grid, §10).
  c.optim = ml_collections.ConfigDict(dict(
      lr=dict(hash_table=0.01, feature_mlp=1e-3),    # DS texture config: hash grid 0.005
      b1=0.9, b2=0.99, eps=1e-4, weight_decay=0.01))
  # Loss weights by term name: rgb is the ref L1 on the mask eroded by 4 px; bsd the
  # stop-gradient-target BSD loss on the latent (DC lambda_sd; DS fast: 0.1); estimator and
  # dreambooth the trained UNets' ε-MSE (lambda_lora, lambda_pretrain); sds_2d / sds_3d the
  # SDS terms of guidance.kind = "sds" (λ_sd 0.1 of the earlier stages' pixel-space SDS; the
  # reference disables Zero123 in this stage).
  c.loss = ml_collections.ConfigDict(dict(
      rgb=(1000.0,), bsd=(0.01,), estimator=(0.1,), dreambooth=(0.1,), sds_2d=(0.1,),
      sds_3d=(0.0,)))
  return c


def ds_variant(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """DS's algorithm (reference §10): camera conditioning, masked augmentation, band detach,
  no prompt dropout."""
  c.bsd.camera_condition = True
  c.bsd.masked_augmentation = True
  c.bsd.silhouette_band = 11
  c.bsd.prompt_dropout = 0.0
  return c

