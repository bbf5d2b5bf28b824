"""BSD (guidance/bsd.py, guidance/bsd_cache.py) on a pixel-space base (denoiser_base.PixelDenoiser).

The base is a small pure-jnp ε network, so every step compiles in about a second; the UNet
specific parts (LoRA, camera embedding) are tested on the tiny SD UNet in test_lora.py.
Checks: the cycle schedule against the reference's step logic (§4) at given steps; the FIFO;
the BSD gradient against its formula evaluated with the network called directly; the
texture stand-in's gradient in closed form (the codec x = 2·image - 1 has Jacobian 2I);
AdamW's first step on both trained copies against its closed form with independently
computed gradients; the augmentation swap from the frozen base to φ_DB; DS's masked
augmentation and silhouette band; the config section.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from configs import texture_section
from dc3d_jax.guidance import bsd, bsd_cache
from dc3d_jax.priors.denoiser_base import PixelDenoiser
from dc3d_jax.priors.trainable import JaxTrainablePrior

SIZE, C = 8, 6             # 8x8 pixels; conditioning vectors of width C


def apply_fn(p, x, t, cond):
  """ε(x_t, t, c) [N, 8, 8, 3] from a per-pixel MLP with time and condition inputs."""
  temb = jnp.sin(t[:, None] / 300.0 * p["tf"])
  h = jnp.tanh(x @ p["w1"] + (temb + cond @ p["wc"])[:, None, None, :])
  return h @ p["w2"]


def base_params(seed=0):
  rng = np.random.default_rng(seed)
  shapes = {"w1": (3, 16), "w2": (16, 3), "tf": (16,), "wc": (C, 16)}
  return {k: jnp.asarray(rng.standard_normal(s) / np.sqrt(s[0]), jnp.float32)
          for k, s in shapes.items()}


BASE = PixelDenoiser(apply_fn=apply_fn, size=SIZE)
PARAMS = base_params()
COND, UNCOND, COND_VI = (jnp.full((1, C), v, jnp.float32) for v in (0.7, 0.0, -0.4))


def make_bsd(**settings) -> bsd.BSD:
  prior = JaxTrainablePrior(base=BASE, mode="full", lr=1e-3)
  return bsd.BSD(base=BASE, dreambooth=prior, estimator=prior,
                 settings=bsd.BSDSettings(**settings))


def image(seed):
  return jnp.asarray(np.random.default_rng(seed).uniform(0.1, 0.9, (1, SIZE, SIZE, 3)),
                     jnp.float32)


def perturbed(copy, seed=9):
  """A trained copy whose network differs from the base."""
  net = jax.tree_util.tree_map(lambda w: w + 0.3 * jax.random.normal(jax.random.key(seed),
                                                                     w.shape), copy.params["net"])
  return copy.replace(params=dict(copy.params, net=net))


# ----------------------------------------------------------------------------- schedule

def test_cycle_schedule_matches_the_reference():
  s = bsd.BSDSettings()
  want = {0: "DA", 24: "D", 25: "DA", 175: "DA", 199: "D", 200: "R", 201: "B", 202: "R",
          999: "B", 1000: "DA", 1025: "DA", 1199: "D", 1200: "R", 4999: "B"}
  for step, code in want.items():
    got = bsd.what_happens(step, s)
    assert got == {"dreambooth": "D" in code, "augment": "A" in code, "ref": "R" in code,
                   "bsd": "B" in code}, step
  # 5 phases of 200 DreamBooth steps with 8 augmentations each; 2000 ref and 2000 BSD steps.
  counts = {k: sum(bsd.what_happens(i, s)[k] for i in range(5000)) for k in got}
  assert counts == {"dreambooth": 1000, "augment": 40, "ref": 2000, "bsd": 2000}
  ds = bsd.BSDSettings(cycle_steps=10, dreambooth_steps=2, augment_every=10)
  assert [bsd.what_happens(i, ds)["dreambooth"] for i in range(12)] == [1, 1] + [0] * 8 + [1, 1]


def test_noise_level_anneal_and_augmentation_start():
  s = bsd.BSDSettings()
  levels = [int(bsd.max_timestep(step, s)) for step in (0, 2500, 5000, 6000)]
  assert levels == [500, 350, 200, 200]
  from dc3d_jax.priors.dpm_solver import start_index
  assert [int(start_index(t, 25)) for t in levels[:3]] == [13, 17, 20]


def test_fifo_cache_keeps_the_last_ten_and_draws_filled_slots():
  cache = bsd_cache.empty_cache(10, 2, 2)
  for i in range(12):
    cache = bsd_cache.push(cache, jnp.full((2, 2, 3), float(i)))
  assert int(cache.count) == 10 and int(cache.write) == 2
  assert sorted(np.asarray(cache.images[:, 0, 0, 0]).tolist()) == list(range(2, 12))
  few = bsd_cache.empty_cache(10, 1, 1)
  for i in range(3):
    few = bsd_cache.push(few, jnp.full((1, 1, 3), i + 1.0))
  draws = jax.vmap(lambda k: bsd_cache.draw(few, k)[0, 0, 0, 0])(
      jax.random.split(jax.random.key(0), 300))
  assert set(np.asarray(draws).tolist()) == {1.0, 2.0, 3.0}


# ----------------------------------------------------------------------------- BSD gradient

def test_bsd_gradient_is_the_weighted_prior_difference():
  m = make_bsd()
  state = m.init_state(PARAMS, jax.random.key(0), (SIZE, SIZE))
  state = state.replace(dreambooth=perturbed(state.dreambooth))
  z_t = jnp.asarray(np.random.default_rng(1).standard_normal((1, SIZE, SIZE, 3)), jnp.float32)
  t = jnp.array([321])
  g = m.gradient_at(state, PARAMS, z_t, t, COND, UNCOND, COND_VI)
  db = state.dreambooth.params["net"]
  eps_c, eps_u = apply_fn(db, z_t, t, COND), apply_fn(db, z_t, t, UNCOND)
  want = (1 - BASE.alphas_cumprod()[321]) * (eps_u + 2.0 * (eps_c - eps_u)
                                             - apply_fn(PARAMS, z_t, t, COND_VI))
  np.testing.assert_allclose(g, want, rtol=1e-5, atol=1e-6)


def test_bsd_loss_moves_the_texture_along_minus_g():
  """The stand-in texture X renders to z = 2X - 1: ∂loss/∂X = 2g/B exactly, and a small
  step against it lowers the loss towards the fixed target sg(z - g)."""
  m = make_bsd()
  state = m.init_state(PARAMS, jax.random.key(0), (SIZE, SIZE))
  state = state.replace(dreambooth=perturbed(state.dreambooth))
  x = image(2)
  g, metrics = jax.jit(lambda st, z: m.bsd_gradient(st, PARAMS, z, COND, UNCOND, COND_VI,
                                                    jax.random.key(3), 201))(
      state, BASE.encode({}, x, None))
  assert 50 <= float(metrics["t"]) <= 500 and float(jnp.max(jnp.abs(g))) > 1e-3
  loss = lambda img: bsd.stop_gradient_target_loss(BASE.encode({}, img, None), g)
  grad = jax.grad(loss)(x)
  np.testing.assert_allclose(grad, 2.0 * g, rtol=1e-6)
  fixed = lambda img: 0.5 * jnp.sum((BASE.encode({}, img, None) - (BASE.encode({}, x, None)
                                                                    - g)) ** 2)
  assert float(fixed(x - 0.05 * grad)) < float(fixed(x))


# ----------------------------------------------------------------------------- updates

def _adamw_first_step(theta, grad, lr, eps=1e-4, wd=0.01):
  return theta - lr * (grad / (jnp.abs(grad) + eps) + wd * theta)


@pytest.mark.parametrize("weight", [0.1, 1.0])
def test_mse_update_is_adamw_on_the_weighted_epsilon_mse(weight):
  """Both copies step along their own ε-MSE gradient (computed here with the network called
  directly), and the weight matters through AdamW's eps."""
  prior = JaxTrainablePrior(base=BASE, mode="full", lr=1e-3)
  copy = prior.init(PARAMS, jax.random.key(0))
  x0 = BASE.encode({}, image(4), None)
  noise = jax.random.normal(jax.random.key(5), x0.shape)
  t = jnp.array([400])
  new, metrics = jax.jit(lambda c: prior.mse_update(c, PARAMS, x0, t, noise, COND,
                                                     weight=weight))(copy)
  a = BASE.alphas_cumprod()[400]
  mse = lambda p: jnp.mean((apply_fn(p, np.sqrt(a) * x0 + np.sqrt(1 - a) * noise, t, COND)
                            - noise) ** 2)
  grads = jax.grad(lambda p: weight * mse(p))(PARAMS)
  want = jax.tree_util.tree_map(lambda w, g: _adamw_first_step(w, g, 1e-3), PARAMS, grads)
  for k in PARAMS:
    np.testing.assert_allclose(new.params["net"][k], want[k], rtol=1e-5, atol=1e-7)
  assert float(mse(new.params["net"])) < float(metrics["mse"])
  np.testing.assert_allclose(metrics["mse"], mse(PARAMS), rtol=1e-6)


def test_estimator_and_dreambooth_updates_move_their_own_copy():
  m = make_bsd()
  state = m.init_state(PARAMS, jax.random.key(0), (SIZE, SIZE))
  state = state.replace(cache=bsd_cache.push(state.cache, image(6)[0]))
  est, _ = m.estimator_update(state, PARAMS, BASE.encode({}, image(7), None), COND_VI,
                              jax.random.key(8))
  db, _ = m.dreambooth_update(state, PARAMS, {}, COND, jax.random.key(9))
  changed = lambda a, b: any(bool(jnp.any(x != y)) for x, y in
                             zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)))
  assert changed(est.estimator.params, state.estimator.params)
  assert not changed(est.dreambooth.params, state.dreambooth.params)
  assert changed(db.dreambooth.params, state.dreambooth.params)
  assert not changed(db.estimator.params, state.estimator.params)


def test_a_fresh_state_can_be_donated():
  """The stage jits its steps with the state donated: no buffer may appear twice in it."""
  m = make_bsd()
  state = m.init_state(PARAMS, jax.random.key(0), (SIZE, SIZE))
  step = jax.jit(lambda st, k: m.estimator_update(st, PARAMS, BASE.encode({}, image(7), None),
                                                  COND_VI, k)[0], donate_argnums=0)
  state = step(step(state, jax.random.key(1)), jax.random.key(2))
  assert int(state.estimator.updates) == 2 and int(state.estimator.skipped) == 0


def test_dreambooth_update_reads_filled_slots_and_drops_prompts():
  base_state = make_bsd().init_state(PARAMS, jax.random.key(0), (SIZE, SIZE))
  cache = bsd_cache.push(base_state.cache, image(10)[0])
  junk = cache.replace(images=cache.images.at[1:].set(0.5))    # unfilled slots differ
  run = jax.jit(lambda st, cond, k, p: make_bsd(prompt_dropout=p).dreambooth_update(
      st, PARAMS, {}, cond, k)[0].dreambooth.params["net"]["w1"], static_argnums=3)
  key = jax.random.key(11)
  w_cache = run(base_state.replace(cache=cache), COND, key, 0.0)
  np.testing.assert_array_equal(w_cache, run(base_state.replace(cache=junk), COND, key, 0.0))
  # Dropout 1 trains on the zeroed prompt (reference: zeros, not the negative prompt).
  np.testing.assert_array_equal(run(base_state.replace(cache=cache), COND, key, 1.0),
                                run(base_state.replace(cache=cache), 0 * COND, key, 0.0))
  assert bool(jnp.any(w_cache != run(base_state.replace(cache=cache), 0 * COND, key, 0.0)))
  dropped = bsd.prompt_dropout(jax.random.key(12), 0.1, 4000)
  assert 0.09 < float(jnp.mean(dropped)) < 0.11           # p = 0.1 (± 3.3 σ)


# ----------------------------------------------------------------------------- augmentation

def test_augmentations_come_from_the_frozen_base_first_then_from_dreambooth():
  """Fails if the swap is missing in either direction: the first augmentation must equal
  what the frozen base samples, the second what φ_DB samples, and the two differ."""
  m = make_bsd()
  state = m.init_state(PARAMS, jax.random.key(0), (SIZE, SIZE))
  state = state.replace(dreambooth=perturbed(state.dreambooth))
  z = BASE.encode({}, image(13), None)
  key = jax.random.key(14)
  sample = jax.jit(lambda st: m.sample_augmentation(st, PARAMS, {}, z, COND, UNCOND, key, 0))
  frozen_copy = state.dreambooth.replace(params=dict(state.dreambooth.params, net=PARAMS))
  from_base = sample(state.replace(dreambooth=frozen_copy, augmentations=jnp.int32(1)))
  from_db = sample(state.replace(augmentations=jnp.int32(1)))
  assert float(jnp.max(jnp.abs(from_base - from_db))) > 1e-2
  augment = jax.jit(lambda st: m.augment(st, PARAMS, {}, z, COND, UNCOND, key, 0))
  state1, first = augment(state)
  state2, second = augment(state1)
  np.testing.assert_allclose(first, from_base, atol=1e-6)
  np.testing.assert_allclose(second, from_db, atol=1e-6)
  assert int(state2.augmentations) == 2 and int(state2.cache.count) == 2
  np.testing.assert_array_equal(state2.cache.images[:2], jnp.concatenate([first, second]))


def test_masked_augmentation_keeps_the_region_seen_from_the_reference():
  m = make_bsd(masked_augmentation=True)
  state = m.init_state(PARAMS, jax.random.key(0), (SIZE, SIZE))
  x = image(15)
  visibility = jnp.zeros((1, SIZE, SIZE, 1)).at[:, :, SIZE // 2:].set(1.0)  # right unseen
  out = m.sample_augmentation(state, PARAMS, {}, BASE.encode({}, x, None), COND, UNCOND,
                              jax.random.key(16), 0, visibility)
  np.testing.assert_allclose(out[:, :, :SIZE // 2], x[:, :, :SIZE // 2], atol=1e-5)
  assert float(jnp.max(jnp.abs(out[:, :, SIZE // 2:] - x[:, :, SIZE // 2:]))) > 1e-2


def test_visibility_mask_resize_matches_torch_antialiased_bilinear():
  """DS resizes the mask with F.interpolate(bilinear, antialias=True) to the latent size."""
  mask = (np.random.default_rng(17).uniform(size=(1, 64, 64, 1)) > 0.5).astype(np.float32)
  ours = jax.image.resize(mask, (1, 8, 8, 1), "linear", antialias=True)
  theirs = torch.nn.functional.interpolate(torch.tensor(mask).permute(0, 3, 1, 2), (8, 8),
                                           mode="bilinear", antialias=True)
  np.testing.assert_allclose(ours, theirs.permute(0, 2, 3, 1).numpy(), atol=1e-5)


def test_silhouette_band_detach_matches_brute_force():
  opacity = np.zeros((1, 24, 24, 1), np.float32)
  opacity[:, 4:20, 6:22] = 1.0
  images = jnp.asarray(np.random.default_rng(18).uniform(size=(1, 24, 24, 3)), jnp.float32)
  grad = jax.grad(lambda im: jnp.sum(bsd.detach_silhouette_band(im, opacity, 11)))(images)
  want = np.zeros((24, 24))
  for i in range(24):
    for j in range(24):   # gradient only where all of the 11x11 window is opaque
      want[i, j] = float(np.all(opacity[0, max(i - 5, 0):i + 6, max(j - 5, 0):j + 6] >= 0.5))
  np.testing.assert_array_equal(grad[0, :, :, 0], want)
  assert want.sum() == 6 * 6 and np.all(np.asarray(grad[0, :, :, 0:1]) == grad[0])
  off, on = make_bsd(), make_bsd(silhouette_band=11)      # the flag picks it
  for m, ones in ((off, 24 * 24), (on, 6 * 6)):
    g = jax.grad(lambda im: jnp.sum(m.guidance_input(im, opacity)))(images)
    assert float(jnp.sum(g[..., 0])) == ones


# ----------------------------------------------------------------------------- config

def test_config_section_gives_the_reference_settings_and_the_ds_flags():
  cfg = texture_section.texture_config()
  assert bsd.settings_from_config(cfg) == bsd.BSDSettings()
  ds = bsd.settings_from_config(texture_section.ds_variant(cfg))
  assert (ds.camera_condition, ds.masked_augmentation, ds.silhouette_band,
          ds.prompt_dropout) == (True, True, 11, 0.0)
