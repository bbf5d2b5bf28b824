"""The testbed prior (issue 10): Stable-Zero123's relative camera, the Prior protocol and an
SDS step through it, DDIM, weights files, and the training script (2 steps, resume, export)."""

import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import testbed_tiny
from configs import testbed as testbed_config
from dc3d_jax import cameras
from dc3d_jax.errors import ModelError
from dc3d_jax.guidance import registry
from dc3d_jax.guidance.sds import SDSGuidance
from dc3d_jax.priors import ddim, testbed
from dc3d_jax.priors.testbed_unet import Architecture
from dc3d_jax.testbed import albedo
from experiments import train_prior

TINY = Architecture(resolution=16, channels=(16,), attention_levels=(), emb_dim=32,
                    groups=4)


def test_relative_pose_matches_hand_computed_values():
  # Target (elevation 30°, azimuth 90°) from the reference (0°, 0°): polar 60° vs 90°.
  np.testing.assert_allclose(testbed.relative_pose(jnp.array([30.0]), jnp.array([90.0])),
                             [[-math.pi / 6, 1.0, 0.0, math.pi / 2]], atol=1e-6)
  # Target (-10°, -135°) from (20°, 0°): polar 100° vs 70°; Stable-Zero123's 4th entry is
  # the reference's own polar angle, 70° = 1.22173 rad.
  h = math.sqrt(0.5)
  np.testing.assert_allclose(
      testbed.relative_pose(jnp.array([-10.0]), jnp.array([-135.0]), 20.0, 0.0),
      [[math.pi / 6, -h, -h, math.radians(70.0)]], atol=1e-6)
  # The reference view itself: T = [0, 0, 1, θ_ref].
  np.testing.assert_allclose(testbed.relative_pose(jnp.array([0.0]), jnp.array([0.0])),
                             [[0.0, 0.0, 1.0, math.pi / 2]], atol=1e-6)


def test_ddim_returns_the_known_clean_image_under_an_exact_denoiser():
  alphas = testbed.alphas_cumprod()
  x0 = jnp.linspace(-0.9, 0.9, 2 * 4 * 4 * 3).reshape(2, 4, 4, 3)
  a_of = lambda t: jnp.asarray(alphas)[t][:, None, None, None]
  # The exact ε and v of x_t when the data is the single image x0 (v = √ᾱ ε − √(1−ᾱ) x0).
  eps = lambda x_t, t: (x_t - jnp.sqrt(a_of(t)) * x0) / jnp.sqrt(1.0 - a_of(t))
  v = lambda x_t, t: jnp.sqrt(a_of(t)) * eps(x_t, t) - jnp.sqrt(1.0 - a_of(t)) * x0
  noise = jax.random.normal(jax.random.key(0), x0.shape)
  out_v = ddim.sample(ddim.v_denoiser(v, alphas), noise, alphas, 10)
  np.testing.assert_allclose(out_v, x0, atol=1e-4)
  # ε-prediction at t = 999 (ᾱ = 2.4e-9) divides by √ᾱ; it still works with an exact ε
  # after clipping x̂_0, but only to a looser tolerance.
  out_eps = ddim.sample(ddim.eps_denoiser(eps, alphas), noise, alphas, 10)
  np.testing.assert_allclose(out_eps, x0, atol=1e-2)
  np.testing.assert_array_equal(ddim.timesteps(4, 1000), [999, 749, 499, 249])


def _reference_rgba():
  obj = testbed_tiny.tiny_object()
  from dc3d_jax.testbed import render
  return render.render_views(obj, render.place(obj.vertices, 0.0, 0.0), 0.0, 0.0, 32, 1)[0]


def test_prior_protocol_cfg_and_one_sds_step():
  params = testbed.init_params(TINY, jax.random.key(1))
  # A non-zero output layer (it starts at zero), so ε_c and ε_u differ and CFG is tested.
  last = sorted(k for k in params if k.startswith("Conv_"))[-1]
  params[last]["kernel"] = 0.1 * jax.random.normal(jax.random.key(2),
                                                   params[last]["kernel"].shape)
  model = testbed.TestbedModel(arch=TINY, params=params, card={})
  prior, params = testbed.make_testbed_prior(model, _reference_rgba(), guidance_scale=3.0)
  assert prior.alphas_cumprod().shape == (1000,)
  cams = cameras.make_camera(jnp.array([10.0, 30.0]), jnp.array([45.0, -120.0]), 3.8, 20.0,
                             32, 32)
  renders = jnp.full((2, 32, 32, 3), 0.5)
  guidance = SDSGuidance(prior=prior, t_min=(0.02,), t_max=(0.98,))

  @jax.jit
  def everything(params, renders):
    x = prior.encode(params, renders, None)
    cond = prior.condition(params, cams)
    t, x_t = jnp.array([100, 700]), jax.random.normal(jax.random.key(3), x.shape)
    eps_c = testbed.apply(params["unet"], x_t, t, cond, TINY)
    eps_u = testbed.apply(params["unet"], x_t, t, testbed.null_conditioning(cond), TINY)
    guided = prior.predict_noise(params, x_t, t, cond)
    # ε̂ = √(1−ᾱ) x_t + √ᾱ v̂ of the network's v̂.
    a = jnp.asarray(prior.alphas_cumprod())[t][:, None, None, None]
    v_c = testbed.apply_v(params["unet"], x_t, t, cond, TINY)
    eps_from_v = jnp.sqrt(1.0 - a) * x_t + jnp.sqrt(a) * v_c
    loss_fn = lambda r: guidance.loss(params, r, cams, 0, jax.random.key(4))[0]
    return x, cond, eps_c, eps_u, guided, eps_from_v, jax.value_and_grad(loss_fn)(renders)

  results = everything(params, renders)
  x, cond = results[:2]
  assert x.shape == (2, 16, 16, 3) and np.allclose(x, 0.0)     # 0.5 grey -> 0 in [-1, 1]
  assert cond["ref"].shape == (2, 16, 16, 3) and cond["pose"].shape == (2, 4)
  np.testing.assert_allclose(cond["pose"], testbed.relative_pose(cams.elevation_deg,
                                                                 cams.azimuth_deg), atol=1e-6)
  x, cond, eps_c, eps_u, guided, eps_from_v, (loss, grad) = results
  np.testing.assert_allclose(eps_c, eps_from_v, atol=1e-6)
  assert float(jnp.abs(eps_c - eps_u).max()) > 1e-3
  np.testing.assert_allclose(guided, eps_u + 3.0 * (eps_c - eps_u), atol=1e-5)
  assert np.isfinite(float(loss)) and grad.shape == renders.shape
  assert np.isfinite(np.asarray(grad)).all() and float(jnp.abs(grad).max()) > 0


def test_registry_builds_the_testbed_prior_from_the_config(tmp_path):
  from configs import dreamcraft3d
  path = tmp_path / "tiny.safetensors"
  testbed.save_model(path, TINY, testbed.init_params(TINY, jax.random.key(0)), {"steps": 0})
  cfg = dreamcraft3d.get_config("quick")
  with cfg.unlocked():
    cfg.guidance.update(prior_2d="none", prior_3d="testbed", testbed_model=str(path),
                        testbed_guidance_scale=2.5)
  store = registry.PriorStore(cfg.guidance)
  terms, params = registry.build(cfg, "coarse_nerf", store, {"rgba": _reference_rgba()})
  prior = terms["sds_3d"].prior
  assert isinstance(prior, testbed.TestbedPrior) and prior.guidance_scale == 2.5
  assert params["sds_3d"]["ref"].shape == (1, 16, 16, 3)
  assert store.testbed() is store.testbed()           # loaded once per run


def _corrupt(path, tensors: dict, metadata: dict):
  import safetensors.numpy
  safetensors.numpy.save_file(tensors, str(path), metadata=metadata)


def test_loading_rejects_corrupt_or_mismatched_weights(tmp_path):
  good = tmp_path / "good.safetensors"
  testbed.save_model(good, TINY, testbed.init_params(TINY, jax.random.key(0)), {})
  assert testbed.load_model(good).arch == TINY
  garbage = tmp_path / "garbage.safetensors"
  garbage.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all}")
  with pytest.raises(ModelError, match="garbage.safetensors"):
    testbed.load_model(garbage)
  import safetensors
  with safetensors.safe_open(str(good), "numpy") as f:
    tensors = {k: f.get_tensor(k) for k in f.keys()}
    metadata = f.metadata()
  wrong_shape = dict(tensors)
  name = sorted(tensors)[0]
  wrong_shape[name] = np.zeros(tensors[name].shape[:-1] + (tensors[name].shape[-1] + 1,),
                               np.float32)
  _corrupt(tmp_path / "shape.safetensors", wrong_shape, metadata)
  with pytest.raises(ModelError, match="shape.safetensors.*do not match"):
    testbed.load_model(tmp_path / "shape.safetensors")
  _corrupt(tmp_path / "other.safetensors", tensors, {**metadata, "format": "something-else"})
  with pytest.raises(ModelError, match="other.safetensors.*not a testbed prior"):
    testbed.load_model(tmp_path / "other.safetensors")
  nan = dict(tensors, **{name: np.full(tensors[name].shape, np.nan, np.float32)})
  _corrupt(tmp_path / "nan.safetensors", nan, metadata)
  with pytest.raises(ModelError, match="NaN"):
    testbed.load_model(tmp_path / "nan.safetensors")


def test_training_script_runs_resumes_and_writes_loadable_weights(tmp_path):
  """Starts from an init_weights file, which the resumed run no longer needs."""
  from dc3d_jax.testbed import training
  train, heldout = testbed_tiny.tiny_sets()
  cfg = testbed_config.get_config("quick")
  run = tmp_path / "run"
  start = tmp_path / "start.safetensors"
  arch = training.Settings.from_config(cfg).arch
  testbed.save_model(start, arch, _perturbed(testbed.init_params(arch, jax.random.key(3)), 4),
                     {})
  with cfg.unlocked():
    cfg.run_dir = str(run)
    cfg.init_weights = str(start)
    cfg.train.update(steps=3, checkpoint_every=2, sample_every=2)
  card = train_prior.run(cfg, train, heldout, command="test")
  weights = run / train_prior.WEIGHTS_NAME
  uninterrupted = testbed.load_model(weights)
  assert uninterrupted.arch.resolution == 16 and uninterrupted.card["steps"] == 3
  assert set(card["heldout"]) >= {"prior", "reference", "mirrored"}
  init = testbed.init_params(uninterrupted.arch, jax.random.key(0))
  moved = jax.tree_util.tree_map(lambda a, b: float(jnp.abs(a - b).max()),
                                 uninterrupted.params, init)
  assert max(jax.tree_util.tree_leaves(moved)) > 0
  # Interrupt after step 2: drop the last checkpoint, the export and the init file; run again.
  import shutil
  shutil.rmtree(run / "checkpoints" / "3")
  weights.unlink()
  start.unlink()
  train_prior.run(cfg, train, heldout, command="test")
  resumed = testbed.load_model(weights)
  jax.tree_util.tree_map(np.testing.assert_array_equal, resumed.params, uninterrupted.params)
  steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]
  assert steps == [1, 2, 3]
  held = [json.loads(line) for line in (run / "heldout.jsonl").read_text().splitlines()]
  assert [h["step"] for h in held] == [2] and 0.0 <= held[0]["prior/mask_iou"] <= 1.0
  assert (run / "samples" / "step_000002.png").is_file()


def test_evaluation_scores_samples_and_the_unguided_posterior_mean(monkeypatch):
  """With an exact denoiser of a flat image (grey 0.6 unguided, 0.9 under CFG), DDIM returns
  that image, so each row's PSNR is the closed form of a flat image against the targets."""
  from dc3d_jax.eval import metrics
  from dc3d_jax.testbed import evaluation
  alphas = jnp.asarray(testbed.alphas_cumprod())

  def exact_v(params, x_t, t, cond, guidance_scale, arch):
    x0 = jnp.where(guidance_scale == 1.0, 0.2, 0.8) * jnp.ones_like(x_t)
    a = alphas[jnp.broadcast_to(t, (x_t.shape[0],))][:, None, None, None]
    eps = (x_t - jnp.sqrt(a) * x0) / jnp.sqrt(1.0 - a)
    return jnp.sqrt(a) * eps - jnp.sqrt(1.0 - a) * x0

  monkeypatch.setattr(evaluation.testbed, "guided_v", exact_v)
  evaluation._sample.clear_cache()
  try:
    _, heldout = testbed_tiny.tiny_sets()
    params = testbed.init_params(TINY, jax.random.key(0))
    result, samples = evaluation.evaluate(params, TINY, heldout, jax.random.key(1),
                                          ddim_steps=3, guidance_scale=3.0, seeds=(0, 1))
  finally:
    evaluation._sample.clear_cache()
  target = heldout["targets"][0, ..., :3].astype(np.float32) / 255.0
  flat = lambda v: np.mean([metrics.psnr(np.full_like(t, v), t) for t in target])
  np.testing.assert_allclose(samples, 0.9, atol=1e-5)
  assert result["prior"]["psnr"] == pytest.approx(flat(0.9), abs=1e-3)
  assert result["prior_mean"]["psnr"] == pytest.approx(flat(0.6), abs=1e-3)
  assert result["prior_mean"]["n"] == len(target)
  per_view = [metrics.psnr(np.full_like(t, 0.6), t) for t in target]
  np.testing.assert_allclose(result["per_view"]["prior_mean"]["psnr"], per_view, atol=1e-3)
  ref_gap = result["paired"]["prior_mean-reference"]["psnr"]["diff"]
  assert ref_gap == pytest.approx(flat(0.6) - result["reference"]["psnr"], abs=1e-3)


def test_median_of_three_samples_undoes_one_corrupted_sample_per_pixel(monkeypatch):
  """Three 'samples' of each view: its ground truth with a third of the pixels corrupted
  (white or black), a different third in each. The per-pixel median of three with at most
  one corrupted value is the ground truth exactly, so the median row scores mask IoU 1 and
  infinite PSNR while each sample loses both; with two seeds there is no median row."""
  from dc3d_jax.testbed import evaluation
  _, heldout = testbed_tiny.tiny_sets()
  _, _, target, _ = evaluation.flat_inputs(heldout)
  third = np.array_split(np.random.default_rng(0).permutation(target[..., 0].size), 3)
  draws = []
  for s in range(3):
    sample = target[..., :3].copy().reshape(-1, 3)
    sample[third[s]] = (s % 2) * 1.0          # seed 1 whitens its third, seeds 0, 2 blacken
    draws.append(sample.reshape(target[..., :3].shape))
  calls = iter(draws + [draws[0]])            # three seeds, then the posterior mean's call
  monkeypatch.setattr(evaluation, "sample_views", lambda *a, **k: next(calls))
  params = testbed.init_params(TINY, jax.random.key(0))
  result, _ = evaluation.evaluate(params, TINY, heldout, jax.random.key(1), ddim_steps=2,
                                  guidance_scale=3.0, seeds=(0, 1, 2))
  assert result["prior_median"]["mask_iou"] == 1.0
  assert result["prior_median"]["psnr"] == float("inf")
  assert result["prior"]["mask_iou"] < 0.9 and np.isfinite(result["prior"]["psnr"])
  vote = evaluation.per_image(evaluation.vote_readout(np.stack(draws)), target)
  np.testing.assert_allclose(result["per_view"]["prior_vote"]["psnr"], vote["psnr"])
  assert "prior_vote-mirrored" in result["paired"]
  # the posterior mean's call returned seed 0's draw: inside the majority mask (the ground
  # truth's foreground, since each pixel is corrupted in one draw of three) it is that draw
  fg = albedo.foreground(target[..., :3])[..., None] > 0
  vote_mean = evaluation.per_image(np.where(fg, draws[0], 1.0), target)
  np.testing.assert_allclose(result["per_view"]["prior_vote_mean"]["psnr"], vote_mean["psnr"])
  np.testing.assert_allclose(result["per_view"]["prior_vote_mean"]["mask_iou"],
                             vote_mean["mask_iou"])
  assert "prior_vote_mean-reference" in result["paired"]
  calls = iter(draws[:2] + [draws[0]])
  result, _ = evaluation.evaluate(params, TINY, heldout, jax.random.key(1), ddim_steps=2,
                                  guidance_scale=3.0, seeds=(0, 1))
  assert not set(evaluation.SAMPLE_SETS) & set(result)


def test_vote_readout_against_a_per_pixel_loop():
  """Brute force: for each pixel, count the samples whose smallest channel is below 0.9;
  more than half -> the plain mean of those samples' colours, else white."""
  from dc3d_jax.testbed import evaluation
  rng_ = np.random.default_rng(3)
  samples = rng_.uniform(0.0, 1.0, (5, 2, 6, 7, 3)).astype(np.float32)
  samples[rng_.uniform(size=samples.shape[:-1]) < 0.4] = 1.0     # white background in places
  got = evaluation.vote_readout(samples)
  want = np.ones(samples.shape[1:], np.float32)
  for idx in np.ndindex(*samples.shape[1:-1]):
    fg = [s[idx] for s in samples if min(s[idx]) < 0.9]
    if len(fg) > len(samples) / 2:
      want[idx] = sum(fg) / len(fg)
  assert 0 < np.mean(np.all(want < 1.0, -1)) < 1      # both cases occur
  np.testing.assert_allclose(got, want, atol=1e-6)


def test_vote_mean_readout_against_a_per_pixel_loop():
  """Brute force: for each pixel, more than half of the samples with smallest channel below
  0.9 -> the posterior mean's colour there, else white."""
  from dc3d_jax.testbed import evaluation
  rng_ = np.random.default_rng(4)
  samples = rng_.uniform(0.0, 1.0, (4, 2, 6, 7, 3)).astype(np.float32)
  samples[rng_.uniform(size=samples.shape[:-1]) < 0.4] = 1.0
  mean = rng_.uniform(0.0, 1.0, samples.shape[1:]).astype(np.float32)
  got = evaluation.vote_mean_readout(samples, mean)
  want = np.ones(samples.shape[1:], np.float32)
  for idx in np.ndindex(*samples.shape[1:-1]):
    if sum(min(s[idx]) < 0.9 for s in samples) > 2:     # more than half of four: 3 or 4
      want[idx] = mean[idx]
  assert 0 < np.mean(np.all(want < 1.0, -1)) < 1
  np.testing.assert_allclose(got, want, atol=1e-7)


def test_vote_readout_takes_the_majority_silhouette_and_the_foreground_mean_colour():
  """Nine samples of one image: a disk in colour c in k of them (k = 5: a majority) and
  background in the rest, plus a square in colour d in 4 (a minority). The vote is the disk
  in c exactly, without the square; with the disk's colour varying as c ± a across the
  samples, it is c (the mean), where the median of nine per channel is the middle value."""
  from dc3d_jax.testbed import evaluation
  yy, xx = np.mgrid[:16, :16]
  disk, square = (yy - 8) ** 2 + (xx - 8) ** 2 < 20, (yy < 4) & (xx < 4)   # disjoint
  c, d = np.array([0.2, 0.5, 0.7]), np.array([0.1, 0.1, 0.1])
  samples = np.ones((9, 16, 16, 3))
  shift = np.array([-0.1, 0.1, -0.1, 0.1, 0.1])           # mean 0.02, middle value 0.1
  for s in range(5):
    samples[s][disk] = c + shift[s]
  for s in range(5, 9):
    samples[s][square] = d
  got = evaluation.vote_readout(samples)
  np.testing.assert_allclose(got[disk], np.broadcast_to(c + 0.02, got[disk].shape), atol=1e-6)
  np.testing.assert_allclose(got[~disk], 1.0)
  median = np.median(samples, axis=0)
  np.testing.assert_allclose(median[disk], np.broadcast_to(c + 0.1, median[disk].shape))


def test_a_work_dir_made_with_other_testbed_weights_is_not_resumed(tmp_path):
  """Retrained weights at the same path would otherwise resume a run half made with the old
  ones: the provenance keeps the weights' sha256 and --check refuses the other file."""
  from conftest import tiny_config
  from dc3d_jax import pipeline, workdir
  from dc3d_jax.errors import ResumeError
  for name, seed in (("a", 0), ("b", 1)):
    testbed.save_model(tmp_path / f"{name}.safetensors", TINY,
                       testbed.init_params(TINY, jax.random.key(seed)), {})
  cfg = tiny_config(tmp_path / "run")
  with cfg.unlocked():
    cfg.guidance.update(prior_3d="testbed", testbed_model=str(tmp_path / "a.safetensors"))
  inputs = pipeline.preflight(cfg)
  inputs.workdir.mkdir(parents=True)
  workdir.write_provenance(inputs.workdir, inputs.provenance)
  assert pipeline.check(cfg)["complete"] is False          # the same weights: resumable
  with cfg.unlocked():
    cfg.guidance.testbed_model = str(tmp_path / "b.safetensors")
  with pytest.raises(ResumeError, match="prior testbed_sha256"):
    pipeline.check(cfg)


def test_mirror_augmentation_flips_both_images_and_negates_the_azimuth():
  from dc3d_jax.testbed import training
  rng_np = np.random.default_rng(0)
  data = {"rgba": jnp.asarray(rng_np.integers(0, 256, (3, 4, 8, 8, 4)), jnp.uint8),
          "elevation": jnp.asarray(rng_np.uniform(-10, 45, (3, 4)), jnp.float32),
          "azimuth": jnp.asarray(rng_np.uniform(0, 360, (3, 4)), jnp.float32),
          "ref_elevation": jnp.asarray(rng_np.uniform(-10, 30, (3,)), jnp.float32)}
  key = jax.random.key(3)
  x0, ref, pose = training.sample_batch(data, key, 64)
  mx0, mref, mpose = training.sample_batch(data, key, 64, 1.0, jax.random.key(4))
  np.testing.assert_array_equal(mx0, x0[:, :, ::-1])
  np.testing.assert_array_equal(mref, ref[:, :, ::-1])
  # T = (Δelevation, sin Δazimuth, cos Δazimuth, ...): the azimuth's sine changes sign only.
  np.testing.assert_allclose(mpose * jnp.array([1.0, -1.0, 1.0, 1.0]), pose, atol=1e-5)
  half = training.sample_batch(data, key, 64, 0.5, jax.random.key(4))[0]
  flipped = np.all(np.asarray(half) == np.asarray(x0[:, :, ::-1]), axis=(1, 2, 3))
  kept = np.all(np.asarray(half) == np.asarray(x0), axis=(1, 2, 3))
  assert np.all(flipped | kept) and 10 < flipped.sum() < 54


def _random_inputs(arch, n=3, seed=0):
  k = jax.random.split(jax.random.key(seed), 3)
  r = arch.resolution
  x = jax.random.normal(k[0], (n, r, r, 3))
  ref = jax.random.uniform(k[1], (n, r, r, 3), minval=-1.0, maxval=1.0)
  return x, jnp.array([7, 400, 990][:n]), testbed.conditioning(ref, jax.random.normal(k[2],
                                                                                    (n, 4)))


def _perturbed(params, seed):
  """Every leaf moved by noise, so zero-initialised output layers do not hide the inputs."""
  from jax.flatten_util import ravel_pytree
  flat, unravel = ravel_pytree(params)
  return unravel(flat + 0.2 * jax.random.normal(jax.random.key(seed), flat.shape))


def test_widening_to_the_mirror_input_keeps_the_narrow_models_outputs(tmp_path):
  """train_prior with init_weights = a narrow model's file and model.mirror_ref on."""
  import dataclasses
  from dc3d_jax.testbed import training
  narrow = _perturbed(testbed.init_params(TINY, jax.random.key(0)), 1)
  testbed.save_model(tmp_path / "narrow.safetensors", TINY, narrow, {})
  cfg = testbed_config.get_config("quick")
  with cfg.unlocked():
    cfg.init_weights = str(tmp_path / "narrow.safetensors")
    cfg.model.mirror_ref = True
  settings = training.Settings.from_config(cfg)
  wide_arch = settings.arch
  assert wide_arch == dataclasses.replace(TINY, mirror_ref=True)
  state = train_prior._init_state(cfg, settings, jax.random.key(2))
  wide = training.params_tree(state.params, wide_arch)
  np.testing.assert_array_equal(state.params, state.buffers["ema"])
  x, t, cond = _random_inputs(TINY)
  np.testing.assert_array_equal(testbed.apply_v(wide, x, t, cond, wide_arch),
                                testbed.apply_v(narrow, x, t, cond, TINY))
  stem = wide["Conv_0"]["kernel"]
  assert stem.shape[2] == 9 and not np.any(np.asarray(stem[:, :, 6:]))
  # Weights of another architecture are refused with the tensor's name, not broadcast.
  other = testbed.init_params(dataclasses.replace(TINY, channels=(8,), groups=4),
                              jax.random.key(0))
  with pytest.raises(ValueError, match=r"init weights' \S+ has shape \(8\b.*only a conv's input"):
    training.widen(other, wide_arch)
  with pytest.raises(ValueError, match="tensors this architecture lacks"):
    training.widen({**narrow, "Conv_99": narrow["Conv_0"]}, wide_arch)


def test_the_mirror_input_is_the_reference_flipped_left_to_right():
  """A stem that reads only the added channels computes lax.conv of the flipped reference."""
  import dataclasses
  arch = dataclasses.replace(TINY, mirror_ref=True)
  params = testbed.init_params(arch, jax.random.key(0))
  kernel = jax.random.normal(jax.random.key(5), params["Conv_0"]["kernel"].shape)
  kernel = kernel.at[:, :, :6].set(0.0)
  params = {**params, "Conv_0": {**params["Conv_0"], "kernel": kernel}}
  x, t, cond = _random_inputs(arch)
  from dc3d_jax.priors.testbed_unet import TestbedUNet
  _, inter = TestbedUNet(arch).apply({"params": params}, x, t, cond["ref"], cond["pose"],
                                     capture_intermediates=True)
  stem_out = inter["intermediates"]["Conv_0"]["__call__"][0]
  want = jax.lax.conv_general_dilated(
      cond["ref"][:, :, ::-1], kernel[:, :, 6:], (1, 1), "SAME",
      dimension_numbers=("NHWC", "HWIO", "NHWC")) + params["Conv_0"]["bias"]
  np.testing.assert_allclose(stem_out, want, atol=1e-5)
  # And the plain model's stem has the 6 channels of [x_t, reference] only.
  assert testbed.init_params(TINY, jax.random.key(0))["Conv_0"]["kernel"].shape[2] == 6


def test_prior_input_weights_reports_each_inputs_stem_norm(tmp_path, capsys):
  import dataclasses
  from experiments import prior_input_weights
  arch = dataclasses.replace(TINY, mirror_ref=True)
  params = testbed.init_params(arch, jax.random.key(0))
  kernel = jnp.zeros(params["Conv_0"]["kernel"].shape).at[:, :, 3:6].set(1.0)
  params = {**params, "Conv_0": {**params["Conv_0"], "kernel": kernel}}
  testbed.save_model(tmp_path / "m.safetensors", arch, params, {})
  prior_input_weights.main([str(tmp_path / "m.safetensors")])
  # 3 x 3 taps x 3 channels x 16 output channels of ones: norm sqrt(432).
  norms = json.loads(capsys.readouterr().out)[str(tmp_path / "m.safetensors")]
  assert norms == {"x_t": 0.0, "reference": round(math.sqrt(432), 4),
                   "mirrored_reference": 0.0}
