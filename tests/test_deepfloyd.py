"""DeepFloyd IF stage I in JAX (priors/deepfloyd_unet.py, t5_encoder.py, deepfloyd.py).

A tiny random IF folder (experiments/tiny_models.write_tiny_deepfloyd: TINY_IF_UNET, IF-I's
block types and options at tiny widths, built with diffusers' PyTorch UNet2DConditionModel; a
T5 v1.1 encoder from transformers saved in shards with an index; a SentencePiece tokenizer
trained here; IF's scheduler config) is loaded by the port, which must give the PyTorch
models' outputs on the same inputs to 1e-4: the UNet's 6 channels, the T5 states of padded
77-token prompts. Loading errors name the file; prompts are encoded once and cached.
"""

import json
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dc3d_jax.errors import ModelError
from dc3d_jax.priors import deepfloyd, loading, state_dicts, t5_encoder
from dc3d_jax.priors.text_cache import TextEmbeddingCache
from dc3d_jax.priors.resolve import ModelNotFoundError
from experiments import tiny_models

TOL = 1e-4
TIMESTEPS = np.array([20, 700], np.int32)
T5_WIDTH = tiny_models.TINY_IF_UNET["encoder_hid_dim"]


def inputs(seed: int, *shape):
  return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def max_error(ours, ref) -> float:
  ours, ref = np.asarray(ours, np.float32), np.asarray(ref, np.float32)
  assert ours.shape == ref.shape
  assert np.abs(ref).max() > 0.1          # a vanishing output would make the check empty
  err = float(np.abs(ours - ref).max())
  print(f"max abs {err:.2e} (output max {np.abs(ref).max():.2f})")
  return err


@pytest.fixture(scope="module")
def if_dir(tmp_path_factory):
  return tiny_models.write_tiny_deepfloyd(tmp_path_factory.mktemp("if") / "IF-I-tiny",
                                          text_shard_size="20KB")


@pytest.fixture(scope="module")
def unet_dir(if_dir):
  return if_dir / "unet"


@pytest.fixture(scope="module")
def models(if_dir):
  return loading.load_deepfloyd(str(if_dir))


@pytest.fixture(scope="module")
def loaded_unet(unet_dir):
  return loading.load_deepfloyd_unet(unet_dir)


def test_if_unet_matches_pytorch_diffusers(unet_dir, loaded_unet):
  """ε and the variance channels of the loaded UNet against diffusers' PyTorch forward
  (T5-style states of 77 tokens, two timesteps, NCHW on the PyTorch side)."""
  import torch
  from diffusers import UNet2DConditionModel
  unet, params = loaded_unet
  x, states = inputs(0, 2, 3, 16, 16), inputs(1, 2, 77, T5_WIDTH)
  ours = jax.jit(unet.apply)({"params": params}, jnp.transpose(x, (0, 2, 3, 1)),
                             TIMESTEPS, states)
  torch_unet = UNet2DConditionModel.from_pretrained(str(unet_dir)).eval()
  with torch.no_grad():
    ref = torch_unet(torch.from_numpy(x), torch.from_numpy(TIMESTEPS).long(),
                     encoder_hidden_states=torch.from_numpy(states)).sample.numpy()
  assert ref.shape == (2, 6, 16, 16)
  assert max_error(np.transpose(ours, (0, 3, 1, 2)), ref) < TOL
  # The text conditioning acts (through the added keys/values and the text-time embedding).
  other = jax.jit(unet.apply)({"params": params}, jnp.transpose(x, (0, 2, 3, 1)), TIMESTEPS,
                              inputs(2, 2, 77, T5_WIDTH))
  assert float(jnp.abs(other - ours).max()) > 1e-3


def test_if_unet_loads_bin_and_fp16_variants(loaded_unet, tmp_path):
  _, params = loaded_unet
  tiny_models.write_tiny_if_unet(tmp_path / "bin", safetensors=False)
  tiny_models.write_tiny_if_unet(tmp_path / "fp16", variant="fp16")
  assert (tmp_path / "fp16" / "diffusion_pytorch_model.fp16.safetensors").is_file()
  _, from_bin = loading.load_deepfloyd_unet(tmp_path / "bin")
  _, from_fp16 = loading.load_deepfloyd_unet(tmp_path / "fp16")
  leaves = lambda tree: jax.tree_util.tree_leaves(tree)
  assert all(np.array_equal(a, b) for a, b in zip(leaves(params), leaves(from_bin)))
  for a, b in zip(leaves(params), leaves(from_fp16)):   # fp16 storage, fp32 compute
    assert b.dtype == jnp.float32
    np.testing.assert_array_equal(np.asarray(a).astype(np.float16), b)


def _rewrite_weights(src, dst, change):
  import safetensors.numpy
  shutil.copytree(src, dst)
  path = dst / "diffusion_pytorch_model.safetensors"
  state = safetensors.numpy.load_file(str(path))
  change(state)
  safetensors.numpy.save_file(state, str(path))
  return path


def test_if_unet_loading_errors_name_the_file(unet_dir, tmp_path):
  missing = _rewrite_weights(unet_dir, tmp_path / "missing",
                             lambda s: s.pop("add_embedding.pool.positional_embedding"))
  with pytest.raises(ModelError, match=f"{missing}.*1 missing.*positional_embedding"):
    loading.load_deepfloyd_unet(missing.parent)
  extra = _rewrite_weights(unet_dir, tmp_path / "extra",
                           lambda s: s.update(class_embedding=np.zeros(3, np.float32)))
  with pytest.raises(ModelError, match=f"{extra}.*1 unexpected.*class_embedding"):
    loading.load_deepfloyd_unet(extra.parent)
  shape = _rewrite_weights(unet_dir, tmp_path / "shape",
                           lambda s: s.update({"conv_in.weight": np.zeros((32, 3, 1, 1),
                                                                          np.float32)}))
  with pytest.raises(ModelError, match=f"{shape}.*conv_in.weight"):
    loading.load_deepfloyd_unet(shape.parent)
  stage2 = tmp_path / "stage2"
  shutil.copytree(unet_dir, stage2)
  config = json.loads((stage2 / "config.json").read_text())
  (stage2 / "config.json").write_text(json.dumps(dict(config, class_embed_type="timestep")))
  with pytest.raises(state_dicts.UnsupportedModelError,
                     match=f"{stage2 / 'config.json'}: class_embed_type='timestep'"):
    loading.load_deepfloyd_unet(stage2)
  (tmp_path / "empty").mkdir()
  with pytest.raises(ModelNotFoundError, match="diffusion_pytorch_model.safetensors"):
    loading.load_deepfloyd_unet(tmp_path / "empty")


# ------------------------------------------------------------------------- T5 text encoder

PROMPTS = ["a photo of a red toy, front view", ""]


def test_t5_states_match_transformers(if_dir, models):
  """The T5 states IF's UNet gets: padded to 77 with the attention mask (the reference's
  prompt processor), against transformers' PyTorch T5EncoderModel on the sharded weights."""
  import torch
  from transformers import T5EncoderModel, T5Tokenizer
  assert models.text_encoder["weights_path"].name == "model.safetensors.index.json"
  ours = deepfloyd.encode_prompts(models, PROMPTS)
  tokenizer = T5Tokenizer.from_pretrained(str(if_dir / "tokenizer"))
  tokens = tokenizer(PROMPTS, padding="max_length", max_length=77, truncation=True,
                     return_tensors="pt")
  assert tokens.attention_mask[1].sum() == 1          # "": only </s>, 76 padding tokens
  encoder = T5EncoderModel.from_pretrained(str(if_dir / "text_encoder")).eval()
  with torch.no_grad():
    ref = encoder(tokens.input_ids, attention_mask=tokens.attention_mask)[0].numpy()
  assert ours.shape == (2, 77, T5_WIDTH)
  assert max_error(ours, ref) < TOL
  with torch.no_grad():                               # the mask matters at padded positions
    unmasked = encoder(tokens.input_ids)[0].numpy()
  assert np.abs(unmasked - ref).max() > 1e-3


def test_t5_embeddings_are_encoded_once_and_cached_on_disk(models, tmp_path, monkeypatch):
  cache = TextEmbeddingCache()
  first = deepfloyd.text_embeddings(models, ["a cat", "a cat, side view"], cache_dir=tmp_path,
                                    cache=cache)
  assert cache.encoded == 2 and first.shape == (2, 77, T5_WIDTH)
  assert len(list(tmp_path.glob("*.npy"))) == 2

  def no_encoder(*args, **kwargs):
    raise AssertionError("the T5 encoder was loaded although every prompt is cached")

  monkeypatch.setattr(t5_encoder, "load_t5", no_encoder)
  fresh = TextEmbeddingCache()
  again = deepfloyd.text_embeddings(models, ["a cat, side view", "a cat"], cache_dir=tmp_path,
                                    cache=fresh)
  assert fresh.encoded == 0
  np.testing.assert_array_equal(again, first[::-1])


def test_text_encoder_errors_name_the_file(if_dir, tmp_path):
  broken = tmp_path / "IF"
  shutil.copytree(if_dir, broken)
  shard = sorted((broken / "text_encoder").glob("model-*.safetensors"))[-1]
  shard.unlink()
  with pytest.raises(ModelError, match=f"model.safetensors.index.json.*{shard.name}"):
    state_dicts.check_weights_file(broken / "text_encoder" / "model.safetensors.index.json")
  config = json.loads((if_dir / "text_encoder" / "config.json").read_text())
  (broken / "text_encoder" / "config.json").write_text(json.dumps(dict(config, d_kv=4)))
  index = if_dir / "text_encoder" / "model.safetensors.index.json"
  with pytest.raises(ModelError, match=f"{index}: .*SelfAttention.k.kernel.*shapes"):
    t5_encoder.load_t5(broken / "text_encoder" / "config.json", index, if_dir / "tokenizer")
