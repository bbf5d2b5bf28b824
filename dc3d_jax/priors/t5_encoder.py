"""The T5 encoder (T5 v1.1, as DeepFloyd IF's T5-XXL) in Flax, loaded from transformers'
PyTorch weights, and prompt encoding as IF's pipelines do it (reference §3.1: 77 tokens,
padded to length, the attention mask passed to the encoder, last_hidden_state kept).

Symbols: ids [N, L] token ids; m [N, L] attention mask (1 token, 0 padding); h [N, L, d] the
hidden states; RMS(h) = w · h / √(mean(h²) + ε) (no mean subtraction, no bias).
  h_0 = E[ids]                                   (the "shared" embedding table)
  each layer: h += Attn(RMS(h)); h += FF(RMS(h))
  Attn(h) = W_o softmax(q kᵀ + b + (1 - m)·min) v   per head; no 1/√d (T5 folds it into init)
  b[head, i, j] = a learned per-head value of the bucket of the relative position j - i:
                  half the buckets for each sign, half of those exact distances, the rest
                  log-spaced up to max_distance; layer 0's table serves every layer
  FF(h) = W_o(act(W_0 h) · W_1 h) (gated, v1.1: act = tanh-GELU for "gated-gelu") or
          W_o act(W_i h)
  output RMS(h_last)                             (last_hidden_state [N, L, d])
Softmax and RMS statistics run in float32 whatever the compute dtype.

The encoder is only needed to embed a run's handful of prompts: `encode_texts` loads it,
encodes, and lets it go (the caller caches the embeddings, text_cache.py).
"""

import dataclasses
import math
import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax.traverse_util import flatten_dict, unflatten_dict

from dc3d_jax.priors.state_dicts import (UnsupportedModelError, check_param_names, read_json,
                                         read_state_dict)

ACTIVATIONS = {"relu": jax.nn.relu, "gelu": lambda x: jax.nn.gelu(x, approximate=False),
               "gelu_new": lambda x: jax.nn.gelu(x, approximate=True), "silu": jax.nn.silu}
MAX_LENGTH = 77             # the reference's prompt processor pads and truncates to 77


@dataclasses.dataclass(frozen=True)
class T5Settings:
  """The T5Config fields the encoder reads (config.json of a T5EncoderModel folder)."""
  vocab_size: int
  d_model: int
  d_kv: int
  d_ff: int
  num_layers: int
  num_heads: int
  num_buckets: int = 32
  max_distance: int = 128
  eps: float = 1e-6
  gated: bool = True
  act: str = "gelu_new"


def settings_from_config(path) -> T5Settings:
  """config.json -> T5Settings; UnsupportedModelError naming the file for other models."""
  c = read_json(path)
  proj = c.get("feed_forward_proj", "relu")
  parts = proj.split("-")
  act = "gelu_new" if proj == "gated-gelu" else parts[-1]   # transformers' T5Config rule
  if c.get("model_type", "t5") != "t5" or act not in ACTIVATIONS or len(parts) > 2:
    raise UnsupportedModelError(
        f"{path}: model_type={c.get('model_type')!r}, feed_forward_proj={proj!r}; expected a "
        f"T5 encoder with one of {tuple(ACTIVATIONS)} (gated or not)")
  return T5Settings(
      vocab_size=c["vocab_size"], d_model=c["d_model"], d_kv=c["d_kv"], d_ff=c["d_ff"],
      num_layers=c["num_layers"], num_heads=c["num_heads"],
      num_buckets=c.get("relative_attention_num_buckets", 32),
      max_distance=c.get("relative_attention_max_distance", 128),
      eps=c.get("layer_norm_epsilon", 1e-6), gated=parts[0] == "gated", act=act)


def relative_buckets(length: int, num_buckets: int, max_distance: int) -> np.ndarray:
  """[L, L] int32 bucket of the relative position j - i (bidirectional, as T5)."""
  rel = np.arange(length)[None, :] - np.arange(length)[:, None]
  half = num_buckets // 2
  exact = half // 2
  dist = np.abs(rel)
  with np.errstate(divide="ignore"):
    log_part = np.log(np.maximum(dist, 1) / exact) / math.log(max_distance / exact)
  large = np.minimum(exact + (log_part.astype(np.float32) * (half - exact)).astype(np.int32),
                     half - 1)
  return ((rel > 0) * half + np.where(dist < exact, dist, large)).astype(np.int32)


class RMSNorm(nn.Module):
  eps: float
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, h):
    w = self.param("scale", nn.initializers.ones, (h.shape[-1],))
    x = h.astype(jnp.float32)
    x = x * jax.lax.rsqrt(jnp.mean(x * x, axis=-1, keepdims=True) + self.eps)
    return (w * x).astype(self.dtype)


class SelfAttention(nn.Module):
  """Multi-head self-attention; layer 0 owns the relative-position table and makes the bias
  [1, heads, L, L] that every layer adds (with the mask term)."""
  s: T5Settings
  has_table: bool = False
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, h, bias, mask_bias):
    s = self.s
    n, length, _ = h.shape
    if self.has_table:
      table = nn.Embed(s.num_buckets, s.num_heads, name="relative_attention_bias")
      buckets = relative_buckets(length, s.num_buckets, s.max_distance)
      bias = jnp.transpose(table(jnp.asarray(buckets)), (2, 0, 1))[None].astype(jnp.float32)
    inner = s.num_heads * s.d_kv
    dense = lambda width, name: nn.Dense(width, use_bias=False, dtype=self.dtype, name=name)
    split = lambda x: x.reshape(n, length, s.num_heads, s.d_kv)
    q, k, v = (split(dense(inner, name)(h)) for name in "qkv")
    logits = jnp.einsum("nqhd,nkhd->nhqk", q, k).astype(jnp.float32) + bias + mask_bias
    weights = jax.nn.softmax(logits, axis=-1).astype(self.dtype)
    out = jnp.einsum("nhqk,nkhd->nqhd", weights, v).reshape(n, length, inner)
    return dense(s.d_model, "o")(out), bias


class FeedForward(nn.Module):
  s: T5Settings
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, h):
    dense = lambda width, name: nn.Dense(width, use_bias=False, dtype=self.dtype, name=name)
    act = ACTIVATIONS[self.s.act]
    if self.s.gated:
      h = act(dense(self.s.d_ff, "wi_0")(h)) * dense(self.s.d_ff, "wi_1")(h)
    else:
      h = act(dense(self.s.d_ff, "wi")(h))
    return dense(self.s.d_model, "wo")(h)


class AttentionLayer(nn.Module):
  s: T5Settings
  has_table: bool
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, h, bias, mask_bias):
    normed = RMSNorm(self.s.eps, self.dtype, name="layer_norm")(h)
    out, bias = SelfAttention(self.s, self.has_table, self.dtype,
                              name="SelfAttention")(normed, bias, mask_bias)
    return h + out, bias


class FeedForwardLayer(nn.Module):
  s: T5Settings
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, h):
    normed = RMSNorm(self.s.eps, self.dtype, name="layer_norm")(h)
    return h + FeedForward(self.s, self.dtype, name="DenseReluDense")(normed)


class Block(nn.Module):
  s: T5Settings
  has_table: bool
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, h, bias, mask_bias):
    h, bias = AttentionLayer(self.s, self.has_table, self.dtype,
                             name="layer_0")(h, bias, mask_bias)
    return FeedForwardLayer(self.s, self.dtype, name="layer_1")(h), bias


class T5Encoder(nn.Module):
  """ids [N, L] int, mask [N, L] -> last_hidden_state [N, L, d_model] float32 (module
  docstring). Parameter names follow transformers' T5EncoderModel without "encoder."."""
  s: T5Settings
  dtype: jnp.dtype = jnp.float32

  def init_weights(self, rng) -> dict:
    ids = jnp.zeros((1, 4), jnp.int32)
    return self.init(rng, ids, jnp.ones_like(ids))["params"]

  @nn.compact
  def __call__(self, ids, mask):
    h = nn.Embed(self.s.vocab_size, self.s.d_model, name="shared")(ids).astype(self.dtype)
    # Padding keys get the most negative float32 added (transformers' extended mask).
    mask_bias = ((1.0 - mask.astype(jnp.float32)) * jnp.finfo(jnp.float32).min)[:, None, None]
    bias = None
    for i in range(self.s.num_layers):
      h, bias = Block(self.s, i == 0, self.dtype, name=f"block_{i}")(h, bias, mask_bias)
    return RMSNorm(self.s.eps, self.dtype, name="final_layer_norm")(h).astype(jnp.float32)


# ------------------------------------------------------------------------------ loading

_EMBEDDINGS = ("shared", "relative_attention_bias")


def _flax_key(key: str) -> tuple:
  """"encoder.block.0.layer.1.DenseReluDense.wi_0.weight" ->
  ("block_0", "layer_1", "DenseReluDense", "wi_0", "kernel")."""
  key = re.sub(r"(\w+)\.(\d+)", r"\1_\2", key.removeprefix("encoder."))
  *path, leaf = key.split(".")
  if path[-1] in _EMBEDDINGS:
    return (*path, "embedding")
  return (*path, "scale" if path[-1].endswith("layer_norm") else "kernel")


def params_from_torch(state: dict, module: T5Encoder, origin) -> dict:
  """A T5EncoderModel state dict -> the module's params (Linear weights transposed); raises
  ModelError naming `origin` on missing, unknown or misshapen weights."""
  state = dict(state)
  tied = state.pop("encoder.embed_tokens.weight", None)   # the same table as shared.weight
  state.setdefault("shared.weight", tied)
  flat = {}
  for key, value in state.items():
    if value is not None:
      flax_key = _flax_key(key)
      flat[flax_key] = value.T if flax_key[-1] == "kernel" else value
  expected = flatten_dict(jax.eval_shape(module.init_weights, jax.random.key(0)))
  check_param_names(unflatten_dict(flat), unflatten_dict(expected), str(origin))
  bad = [".".join(k) for k in expected if tuple(flat[k].shape) != tuple(expected[k].shape)]
  if bad:
    raise UnsupportedModelError(f"{origin}: weights {bad[:4]} do not have the shapes the "
                                "config.json beside them gives")
  return unflatten_dict(flat)


@dataclasses.dataclass(frozen=True, eq=False)
class T5Model:
  """A loaded encoder: module (T5Encoder), params, tokenizer (transformers.T5Tokenizer)."""
  module: T5Encoder
  params: dict
  tokenizer: object


def load_t5(config_path, weights_path, tokenizer_dir, dtype=jnp.float32) -> T5Model:
  """T5 encoder from its config.json and weights file (or shard index), the SentencePiece
  tokenizer from its folder (spiece.model); params cast to dtype."""
  from transformers import T5Tokenizer
  from dc3d_jax.priors.state_dicts import cast_floating
  from dc3d_jax.priors.torch_semantics import quiet_libraries
  module = T5Encoder(settings_from_config(config_path), dtype=dtype)
  params = params_from_torch(read_state_dict(weights_path), module, weights_path)
  with quiet_libraries():
    tokenizer = T5Tokenizer.from_pretrained(str(tokenizer_dir), local_files_only=True)
  return T5Model(module, cast_floating(params, dtype), tokenizer)


def tokenize(tokenizer, texts, max_length: int = MAX_LENGTH):
  """[N] prompts -> (ids, mask) [N, max_length] int32: padded to length, truncated, with
  the end-of-sequence token (the reference's prompt processor)."""
  out = tokenizer(list(texts), padding="max_length", max_length=max_length, truncation=True,
                  add_special_tokens=True, return_tensors="np")
  return out.input_ids.astype(np.int32), out.attention_mask.astype(np.int32)


def encode_texts(model: T5Model, texts, max_length: int = MAX_LENGTH) -> np.ndarray:
  """[N] prompts -> [N, max_length, d_model] float32 last_hidden_state (mask applied inside
  the encoder, every position kept, as IF's UNet receives them)."""
  ids, mask = tokenize(model.tokenizer, texts, max_length)
  # A local jit: no compiled cache outlives the call that holds the encoder.
  run = jax.jit(lambda params, i, m: model.module.apply({"params": params}, i, m))
  return np.asarray(run(model.params, ids, mask), np.float32)
