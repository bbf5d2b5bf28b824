"""Prior weight loading: folders, the local HF cache, LDM checkpoints, errors, dtypes.

Tiny random models (experiments/tiny_models.py) are written once per module in every supported
format. Every test runs under a guard that makes socket connections raise and records
them, so a test passes only if loading never touched the network.
"""

import json
import shutil
import socket

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments import tiny_models
from dc3d_jax.priors.loading import UnsupportedModelError, load_stable_diffusion, load_zero123
from dc3d_jax.priors.models import NoiseScheduleConfig
from dc3d_jax.priors.resolve import ModelNotFoundError

SNAPSHOT = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture(scope="module", autouse=True)
def no_network():
  """Every connection attempt raises and is recorded; any attempt fails the module."""
  attempts = []

  def refuse(*args, **kwargs):
    attempts.append(args)
    raise ConnectionRefusedError(f"network access during a loading test: {args[1:]}")

  with pytest.MonkeyPatch.context() as mp:
    mp.setattr(socket.socket, "connect", refuse)
    mp.setattr(socket.socket, "connect_ex", refuse)
    mp.setattr(socket, "create_connection", refuse)
    mp.setattr(socket, "getaddrinfo", refuse)
    yield attempts
  assert not attempts, f"loading code tried to use the network: {attempts}"


@pytest.fixture(scope="module")
def models(tmp_path_factory):
  """Paths of the tiny models in every format (same seed: the same weights)."""
  root = tmp_path_factory.mktemp("tiny_priors")
  paths = {"sd": tiny_models.write_tiny_stable_diffusion(root / "sd"),
           "sd_bin": tiny_models.write_tiny_stable_diffusion(root / "sd_bin",
                                                             safetensors=False)}
  for fmt in tiny_models.FORMATS:
    paths[f"z_{fmt}"] = tiny_models.write_tiny_zero123(root / f"z_{fmt}", fmt=fmt)
  paths["z_ema"] = tiny_models.write_tiny_zero123(root / "z_ema.ckpt", fmt="ldm_ckpt",
                                                  ema=True)
  paths["z_no_clip"] = tiny_models.write_tiny_zero123(root / "z_no_clip.safetensors",
                                               fmt="ldm_safetensors", with_image_encoder=False)
  return paths


@pytest.fixture(scope="module")
def sd_ref(models):
  return load_stable_diffusion(str(models["sd"]))


@pytest.fixture(scope="module")
def z_ref(models):
  return load_zero123(str(models["z_diffusers"]))


def max_abs_diff(a, b) -> float:
  """Largest |a - b| over two params trees of the same structure (same names required)."""
  assert jax.tree_util.tree_structure(a) == jax.tree_util.tree_structure(b)
  diffs = jax.tree_util.tree_map(
      lambda x, y: float(np.max(np.abs(np.asarray(x, np.float32) - np.asarray(y, np.float32)))),
      a, b)
  return max(jax.tree_util.tree_leaves(diffs))


def fake_hub_cache(cache, repo_id: str, folder):
  """The real hub layout: blobs/, snapshots/<hash>/ of symlinks to them, refs/main."""
  repo = cache / ("models--" + repo_id.replace("/", "--"))
  snapshot = repo / "snapshots" / SNAPSHOT
  for i, src in enumerate(p for p in sorted(folder.rglob("*")) if p.is_file()):
    blob = repo / "blobs" / f"{i:040x}"
    blob.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, blob)
    link = snapshot / src.relative_to(folder)
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(blob)
  (repo / "refs").mkdir()
  (repo / "refs" / "main").write_text(SNAPSHOT)
  return snapshot


def test_network_guard_refuses_and_records(no_network):
  with pytest.raises(ConnectionRefusedError):
    socket.create_connection(("huggingface.co", 443), timeout=1)
  assert len(no_network) == 1
  no_network.clear()   # this one was on purpose


def test_stable_diffusion_from_folder(sd_ref, models):
  assert set(sd_ref.params) == {"unet", "vae", "text_encoder"}
  assert sd_ref.params["unet"]["conv_in"]["kernel"].shape == (3, 3, 4, 32)
  assert sd_ref.schedule == NoiseScheduleConfig("scaled_linear", 0.00085, 0.012, 1000)
  assert sd_ref.vae_scaling_factor == pytest.approx(0.18215)
  assert sd_ref.source == str(models["sd"].resolve())
  tokens = sd_ref.tokenizer("a photo of a red toy, front view").input_ids
  words = sd_ref.tokenizer.convert_ids_to_tokens(tokens)
  assert words[1:-1] == ["a</w>", "photo</w>", "of</w>", "a</w>", "red</w>", "toy</w>",
                         ",</w>", "front</w>", "view</w>"]


def test_model_id_from_hf_hub_cache(sd_ref, models, tmp_path, monkeypatch):
  snapshot = fake_hub_cache(tmp_path / "hub", "tiny-org/tiny-sd", models["sd"])
  monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
  loaded = load_stable_diffusion("tiny-org/tiny-sd")
  assert loaded.source == str(snapshot.resolve())
  assert max_abs_diff(loaded.params, sd_ref.params) == 0.0


def test_model_id_from_hf_home(z_ref, models, tmp_path, monkeypatch):
  fake_hub_cache(tmp_path / "home" / "hub", "tiny-org/tiny-zero123", models["z_diffusers"])
  monkeypatch.delenv("HF_HUB_CACHE", raising=False)
  monkeypatch.setenv("HF_HOME", str(tmp_path / "home"))
  assert max_abs_diff(load_zero123("tiny-org/tiny-zero123").params, z_ref.params) == 0.0


def test_missing_path_names_path_and_expected_files(tmp_path):
  missing = tmp_path / "no_such_model"
  with pytest.raises(ModelNotFoundError) as err:
    load_stable_diffusion(str(missing))
  assert str(missing) in str(err.value)
  for expected in ("unet/config.json", "vae/diffusion_pytorch_model.safetensors|.bin",
                   "text_encoder/model.safetensors|pytorch_model.bin", "tokenizer/merges.txt",
                   "scheduler/scheduler_config.json"):
    assert expected in str(err.value)


def test_uncached_model_id_names_cache_dir(tmp_path, monkeypatch):
  monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty_hub"))
  with pytest.raises(ModelNotFoundError) as err:
    load_zero123("stabilityai/stable-zero123")
  message = str(err.value)
  assert "'stabilityai/stable-zero123'" in message
  assert str(tmp_path / "empty_hub" / "models--stabilityai--stable-zero123") in message
  assert "cc_projection/diffusion_pytorch_model.safetensors|.bin" in message


def test_incomplete_folder_lists_exactly_the_missing_files(models, tmp_path):
  folder = shutil.copytree(models["sd"], tmp_path / "sd")
  (folder / "vae" / "diffusion_pytorch_model.safetensors").unlink()
  (folder / "tokenizer" / "merges.txt").unlink()
  with pytest.raises(ModelNotFoundError) as err:
    load_stable_diffusion(str(folder))
  message = str(err.value)
  listed = message.split("missing:\n")[1].split("\nA complete")[0].splitlines()
  assert [line.strip() for line in listed] == [
      "vae/diffusion_pytorch_model.safetensors|.bin (or .fp16 variant)", "tokenizer/merges.txt"]


def test_single_file_stable_diffusion_is_refused(tmp_path):
  with pytest.raises(ModelNotFoundError, match="single-file Stable Diffusion"):
    load_stable_diffusion(str(tmp_path / "v2-1_512-ema-pruned.ckpt"))


def test_bin_and_safetensors_give_identical_params(sd_ref, z_ref, models):
  assert max_abs_diff(load_stable_diffusion(str(models["sd_bin"])).params, sd_ref.params) == 0
  assert max_abs_diff(load_zero123(str(models["z_diffusers_bin"])).params, z_ref.params) == 0


@pytest.mark.parametrize("fmt", ["ldm_ckpt", "ldm_safetensors"])
def test_ldm_checkpoint_round_trips(z_ref, models, fmt):
  loaded = load_zero123(str(models[f"z_{fmt}"]))
  assert max_abs_diff(loaded.params, z_ref.params) == 0.0
  assert loaded.schedule == z_ref.schedule
  assert (loaded.clip_size, loaded.clip_mean, loaded.clip_std) == (
      z_ref.clip_size, z_ref.clip_mean, z_ref.clip_std)
  assert loaded.unet.attention_head_dim == z_ref.unet.attention_head_dim == 8
  assert loaded.image_encoder.config.num_attention_heads == 2


def test_ema_weights_are_preferred(z_ref, models, tmp_path):
  assert max_abs_diff(load_zero123(str(models["z_ema"])).params, z_ref.params) == 0.0
  # Without the EMA copy the same file's raw weights load, and they differ.
  state = tiny_models.zero123_ldm_state_dict(tiny_models.tiny_zero123_modules(0), ema=True)
  raw = tiny_models.save_ldm_checkpoint(
      {k: v for k, v in state.items() if not k.startswith("model_ema.")}, tmp_path / "raw.ckpt")
  assert max_abs_diff(load_zero123(str(raw)).params["unet"], z_ref.params["unet"]) > 0.01


def test_checkpoint_without_clip_needs_image_encoder(z_ref, models):
  with pytest.raises(ModelNotFoundError, match="image_encoder=") as err:
    load_zero123(str(models["z_no_clip"]))
  assert "openai/clip-vit-large-patch14" in str(err.value)
  loaded = load_zero123(str(models["z_no_clip"]),
                        image_encoder=str(models["z_diffusers"] / "image_encoder"))
  assert max_abs_diff(loaded.params, z_ref.params) == 0.0


def test_full_clip_model_id_as_image_encoder(z_ref, models, tmp_path, monkeypatch):
  """openai/clip-vit-large-patch14 is a whole CLIPModel: its vision tower is taken."""
  import torch
  from transformers import CLIPConfig, CLIPModel
  vision = tiny_models.tiny_image_encoder(0)
  config = CLIPConfig(text_config=dict(vocab_size=99, hidden_size=32, intermediate_size=64,
                                       num_hidden_layers=1, num_attention_heads=2),
                      vision_config=tiny_models.TINY_CLIP_VISION, projection_dim=32)
  clip = CLIPModel(config)
  with torch.no_grad():
    clip.vision_model.load_state_dict(vision.vision_model.state_dict())
    clip.visual_projection.load_state_dict(vision.visual_projection.state_dict())
  clip.save_pretrained(tmp_path / "clip")
  fake_hub_cache(tmp_path / "hub", "openai/clip-vit-large-patch14", tmp_path / "clip")
  monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
  loaded = load_zero123(str(models["z_no_clip"]), image_encoder="openai/clip-vit-large-patch14")
  assert max_abs_diff(loaded.params, z_ref.params) == 0.0


def test_bf16_casts_every_floating_param(z_ref, models):
  loaded = load_zero123(str(models["z_ldm_safetensors"]), dtype=jnp.bfloat16)
  dtypes = {x.dtype for x in jax.tree_util.tree_leaves(loaded.params)}
  assert dtypes == {jnp.dtype(jnp.bfloat16)}
  assert loaded.unet.dtype == loaded.vae.dtype == jnp.bfloat16
  expected = jax.tree_util.tree_map(lambda x: x.astype(jnp.bfloat16), z_ref.params)
  assert max_abs_diff(loaded.params, expected) == 0.0


def _edit_json(path, **changes):
  config = json.loads(path.read_text())
  config.update(changes)
  path.write_text(json.dumps(config))


@pytest.mark.parametrize("key,value", [("resnet_time_scale_shift", "scale_shift"),
                                       ("class_embed_type", "timestep"),
                                       ("encoder_hid_dim", 64),
                                       ("down_block_types", ["SimpleCrossAttnDownBlock2D",
                                                             "DownBlock2D"])])
def test_unet_config_the_flax_unet_cannot_hold_is_named(models, tmp_path, key, value):
  folder = shutil.copytree(models["sd"], tmp_path / "sd")
  _edit_json(folder / "unet" / "config.json", **{key: value})
  with pytest.raises(UnsupportedModelError, match=key):
    load_stable_diffusion(str(folder))


def test_v_prediction_sd_loads_other_kinds_are_refused(sd_ref, models, tmp_path):
  folder = shutil.copytree(models["sd"], tmp_path / "sd")
  _edit_json(folder / "scheduler" / "scheduler_config.json", prediction_type="v_prediction")
  loaded = load_stable_diffusion(str(folder))       # SD 2.1-768 style: the prior converts v
  assert loaded.schedule.prediction_type == "v_prediction"
  assert max_abs_diff(loaded.params, sd_ref.params) == 0.0
  _edit_json(folder / "scheduler" / "scheduler_config.json", prediction_type="sample")
  with pytest.raises(UnsupportedModelError, match="sample"):
    load_stable_diffusion(str(folder))
  zfolder = shutil.copytree(models["z_diffusers"], tmp_path / "z")
  _edit_json(zfolder / "scheduler" / "scheduler_config.json", prediction_type="v_prediction")
  with pytest.raises(UnsupportedModelError, match="Zero123 models predict"):
    load_zero123(str(zfolder))


def test_zero123_folder_defaults_and_bare_cc_projection(z_ref, models, tmp_path):
  """No scheduler/ -> §3.2's schedule; cc_projection saved as a bare Linear is accepted."""
  import safetensors.numpy
  folder = shutil.copytree(models["z_diffusers"], tmp_path / "z")
  shutil.rmtree(folder / "scheduler")
  weights = folder / "cc_projection" / "diffusion_pytorch_model.safetensors"
  state = safetensors.numpy.load_file(str(weights))
  safetensors.numpy.save_file({k.split(".")[-1]: v for k, v in state.items()}, str(weights))
  loaded = load_zero123(str(folder))
  assert loaded.schedule == NoiseScheduleConfig()
  assert loaded.params["cc_projection"]["kernel"].shape == (36, 32)
  assert max_abs_diff(loaded.params, z_ref.params) == 0.0


def test_fp16_variant_weights_are_read_exactly(z_ref, models, tmp_path):
  """`variant="fp16"` downloads leave only *.fp16.safetensors; values load bit-exactly."""
  import safetensors.numpy
  folder = shutil.copytree(models["z_diffusers"], tmp_path / "z")
  for path in folder.rglob("*.safetensors"):
    state = safetensors.numpy.load_file(str(path))
    path.unlink()
    safetensors.numpy.save_file({k: v.astype(np.float16) for k, v in state.items()},
                                str(path.with_suffix(".fp16.safetensors")))
  loaded = load_zero123(str(folder))
  expected = jax.tree_util.tree_map(lambda x: x.astype(jnp.float16).astype(jnp.float32),
                                    z_ref.params)
  assert max_abs_diff(loaded.params, expected) == 0.0
  assert max_abs_diff(loaded.params, z_ref.params) > 0.0   # the fp16 files were read
