"""DeepFloyd IF stage I's UNet in Flax: what diffusers' PyTorch `UNet2DConditionModel` computes
with IF-I's options, with the same parameter names (weights load through diffusers' own
PyTorch -> Flax renaming, state_dicts.diffusers_to_flax).

IF-I-XL (unet/config.json): channels (704, 1408, 2112, 2816), 3 resnets per level, levels
64² 32² 16² 8²; down ResnetDownsampleBlock2D then 3 × SimpleCrossAttnDownBlock2D, mid
UNetMidBlock2DSimpleCrossAttn, up 3 × SimpleCrossAttnUpBlock2D then ResnetUpsampleBlock2D;
heads of 64 channels; cross-attention width 2816; GELU; GroupNorm 32 groups, ε 1e-5.

Symbols: x [B, H, W, 3] the noisy image (NHWC; diffusers' PyTorch model is NCHW); t [B]
integer timesteps; s [B, L, E] the T5 encoder states (E = encoder_hid_dim, 4096 for T5-XXL).
  emb = MLP(sinusoid(t)) + TextTime(s)        TextTime: LayerNorm, attention pooling of a
                                              mean token over [mean, s], Linear, LayerNorm
  c   = Linear(s)                              [B, L, cross_attention_dim] ("text_proj")
  resnet(h) = conv2(act(GN2(conv1(act(GN1(h)))) · (1 + a) + b)) + skip(h), (a, b) from emb
              ("scale_shift"), optionally with a 2× average-pool / nearest up-sample after
              the first activation (IF's resblock up/down-sampling), divided by the output
              scale factor
  attention(h) = h + W_o softmax(q kᵀ / √d) v, q = W_q GN(h), and keys / values are the
              projected text tokens concatenated with the image tokens: [W_k' GN_c(c),
              W_k GN(h)] ("added KV" attention; GN_c: 32-group GroupNorm over c's channels)
  output [B, H, W, 6]: ε (channels 0-2) and the learned variance interpolation (3-5)

Softmaxes run in float32 whatever the compute dtype (diffusers upcasts them too).
"""

import dataclasses
import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from dc3d_jax.priors.state_dicts import UnsupportedModelError

DOWN_BLOCKS = ("ResnetDownsampleBlock2D", "SimpleCrossAttnDownBlock2D")
UP_BLOCKS = ("ResnetUpsampleBlock2D", "SimpleCrossAttnUpBlock2D")
ACTIVATIONS = {"gelu": lambda x: jax.nn.gelu(x, approximate=False), "silu": jax.nn.silu,
               "swish": jax.nn.silu}
CROSS_NORM_GROUPS = 32      # diffusers' Attention: cross_attention_norm_num_groups default
ATTENTION_NORM_EPS = 1e-5   # diffusers' Attention: eps default (its group_norm and norm_cross)
LAYER_NORM_EPS = 1e-5       # torch.nn.LayerNorm default (TextTimeEmbedding)


@dataclasses.dataclass(frozen=True)
class IFUNetConfig:
  """The UNet2DConditionModel options IF uses (defaults: IF-I-XL-v1.0's unet/config.json)."""
  in_channels: int = 3
  out_channels: int = 6
  sample_size: int = 64
  block_out_channels: tuple = (704, 1408, 2112, 2816)
  layers_per_block: tuple = (3, 3, 3, 3)
  down_block_types: tuple = (DOWN_BLOCKS[0],) + (DOWN_BLOCKS[1],) * 3
  up_block_types: tuple = (UP_BLOCKS[1],) * 3 + (UP_BLOCKS[0],)
  attention_head_dim: int = 64
  cross_attention_dim: int = 2816
  encoder_hid_dim: int = 4096
  text_pool_heads: int = 64          # addition_embed_type_num_heads
  norm_num_groups: int = 32
  norm_eps: float = 1e-5
  act_fn: str = "gelu"
  time_scale_shift: bool = True      # resnet_time_scale_shift == "scale_shift"
  skip_time_act: bool = False
  resnet_out_scale_factor: float = 1.0
  mid_block_scale_factor: float = 1.0
  flip_sin_to_cos: bool = True
  freq_shift: float = 0.0
  cross_attention_norm: bool = True  # cross_attention_norm == "group_norm"


# Options of UNet2DConditionModel this port does not implement: only these values load.
_FIXED = dict(
    center_input_sample=False, class_embed_type=None, num_class_embeds=None,
    addition_embed_type="text", time_embedding_type="positional", time_embedding_dim=None,
    time_embedding_act_fn=None, timestep_post_act=None, time_cond_proj_dim=None,
    conv_in_kernel=3, conv_out_kernel=3, dual_cross_attention=False, only_cross_attention=False,
    mid_block_only_cross_attention=None, mid_block_type="UNetMidBlock2DSimpleCrossAttn",
    class_embeddings_concat=False, num_attention_heads=None, attention_type="default",
    downsample_padding=1, dropout=0.0)


def _check(ok: bool, path, key: str, value, expected: str) -> None:
  if not ok:
    raise UnsupportedModelError(
        f"{path}: {key}={value!r} is not supported by the DeepFloyd IF UNet port "
        f"(expected {expected}); IF stage I (IF-I-XL/L/M-v1.0) loads")


def _per_block(value, n: int) -> tuple:
  return tuple(value) if isinstance(value, (list, tuple)) else (value,) * n


def config_from_diffusers(config: dict, path="unet/config.json") -> IFUNetConfig:
  """A diffusers unet/config.json -> IFUNetConfig, or UnsupportedModelError naming `path`
  and the first option the port does not implement."""
  for key, value in _FIXED.items():
    got = config.get(key, value)
    _check(got == value or (key == "mid_block_only_cross_attention" and got is False),
           path, key, got, repr(value))
  down, up = tuple(config["down_block_types"]), tuple(config["up_block_types"])
  _check(all(b in DOWN_BLOCKS for b in down), path, "down_block_types", down, str(DOWN_BLOCKS))
  _check(all(b in UP_BLOCKS for b in up) and len(up) == len(down), path, "up_block_types", up,
         f"{len(down)} of {UP_BLOCKS}")
  hid_type = config.get("encoder_hid_dim_type") or "text_proj"
  _check(hid_type == "text_proj" and config.get("encoder_hid_dim"), path,
         "encoder_hid_dim(_type)", (config.get("encoder_hid_dim"), hid_type),
         "a T5 width with 'text_proj'")
  shift = config.get("resnet_time_scale_shift", "default")
  _check(shift in ("default", "scale_shift"), path, "resnet_time_scale_shift", shift,
         "'default' or 'scale_shift'")
  head = config.get("attention_head_dim", 8)
  _check(isinstance(head, int), path, "attention_head_dim", head, "one int")
  norm = config.get("cross_attention_norm")
  _check(norm in (None, "group_norm"), path, "cross_attention_norm", norm, "None or group_norm")
  act = config.get("act_fn", "silu")
  _check(act in ACTIVATIONS, path, "act_fn", act, str(tuple(ACTIVATIONS)))
  return IFUNetConfig(
      in_channels=config.get("in_channels", 3), out_channels=config.get("out_channels", 6),
      sample_size=config.get("sample_size") or 64,
      block_out_channels=tuple(config["block_out_channels"]),
      layers_per_block=_per_block(config.get("layers_per_block", 2), len(down)),
      down_block_types=down, up_block_types=up, attention_head_dim=head,
      cross_attention_dim=config["cross_attention_dim"],
      encoder_hid_dim=config["encoder_hid_dim"],
      text_pool_heads=config.get("addition_embed_type_num_heads", 64),
      norm_num_groups=config.get("norm_num_groups", 32), norm_eps=config.get("norm_eps", 1e-5),
      act_fn=act, time_scale_shift=shift == "scale_shift",
      skip_time_act=bool(config.get("resnet_skip_time_act", False)),
      resnet_out_scale_factor=float(config.get("resnet_out_scale_factor", 1.0)),
      mid_block_scale_factor=float(config.get("mid_block_scale_factor", 1.0)),
      flip_sin_to_cos=config.get("flip_sin_to_cos", True),
      freq_shift=float(config.get("freq_shift", 0)), cross_attention_norm=norm is not None)


# ------------------------------------------------------------------------------ pieces

def timestep_features(t: jax.Array, dim: int, flip_sin_to_cos: bool, shift: float):
  """[B] t -> [B, dim] float32 sinusoids, frequencies 10000^(-i / (dim/2 - shift)); (cos, sin)
  when flipped (diffusers' get_timestep_embedding)."""
  half = dim // 2
  freqs = jnp.exp(-math.log(10000.0) * jnp.arange(half, dtype=jnp.float32) / (half - shift))
  angles = jnp.asarray(t, jnp.float32)[:, None] * freqs[None]
  sin, cos = jnp.sin(angles), jnp.cos(angles)
  emb = jnp.concatenate([cos, sin] if flip_sin_to_cos else [sin, cos], -1)
  return jnp.pad(emb, ((0, 0), (0, dim % 2)))


def _group_norm(groups: int, eps: float, dtype, name: str):
  # Two-pass variance, as PyTorch's GroupNorm computes it.
  return nn.GroupNorm(num_groups=groups, epsilon=eps, use_fast_variance=False, dtype=dtype,
                      name=name)


def _heads_attention(q, k, v, heads: int):
  """[B, Lq, D], [B, Lk, D] x2 -> [B, Lq, D]: softmax(q kᵀ/√d) v per head (head-major D)."""
  b, lq, d = q.shape
  split = lambda x: x.reshape(x.shape[0], x.shape[1], heads, d // heads)
  logits = jnp.einsum("bqhd,bkhd->bhqk", split(q), split(k)).astype(jnp.float32)
  weights = jax.nn.softmax(logits / math.sqrt(d // heads), axis=-1).astype(v.dtype)
  return jnp.einsum("bhqk,bkhd->bqhd", weights, split(v)).reshape(b, lq, d)


class AttentionPooling(nn.Module):
  """[B, L, E] -> [B, E]: the mean token (+ a learned offset) attends over [mean, tokens]."""
  heads: int
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    width = x.shape[-1]
    pos = self.param("positional_embedding", nn.initializers.normal(width ** -0.5), (1, width))
    cls = jnp.mean(x, axis=1, keepdims=True) + pos.astype(x.dtype)
    tokens = jnp.concatenate([cls, x], axis=1)
    dense = lambda name: nn.Dense(width, dtype=self.dtype, name=name)
    out = _heads_attention(dense("q_proj")(cls), dense("k_proj")(tokens),
                           dense("v_proj")(tokens), self.heads)
    return out[:, 0]


class TextTimeEmbedding(nn.Module):
  """[B, L, E] encoder states -> [B, time_dim] added to the timestep embedding."""
  time_dim: int
  heads: int
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, states):
    norm = lambda name: nn.LayerNorm(epsilon=LAYER_NORM_EPS, use_fast_variance=False,
                                     dtype=self.dtype, name=name)
    pooled = AttentionPooling(self.heads, self.dtype, name="pool")(norm("norm1")(states))
    return norm("norm2")(nn.Dense(self.time_dim, dtype=self.dtype, name="proj")(pooled))


class TimestepEmbedding(nn.Module):
  """[B, F] sinusoids -> [B, dim]: Linear, activation, Linear."""
  dim: int
  act_fn: str
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, feats):
    h = ACTIVATIONS[self.act_fn](nn.Dense(self.dim, dtype=self.dtype, name="linear_1")(feats))
    return nn.Dense(self.dim, dtype=self.dtype, name="linear_2")(h)


class ResnetBlock(nn.Module):
  """diffusers' ResnetBlock2D (pre-norm, optional 2× down/up-sampling inside), NHWC."""
  config: IFUNetConfig
  out_channels: int
  output_scale: float
  resample: str | None = None       # None | "down" (2×2 average) | "up" (nearest 2×)
  dtype: jnp.dtype = jnp.float32

  def _resample(self, x):
    if self.resample == "down":
      return nn.avg_pool(x, (2, 2), strides=(2, 2))
    if self.resample == "up":
      return jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)
    return x

  @nn.compact
  def __call__(self, x, temb):
    c = self.config
    act = ACTIVATIONS[c.act_fn]
    conv = lambda n, k, name: nn.Conv(n, (k, k), padding=k // 2, dtype=self.dtype, name=name)
    h = act(_group_norm(c.norm_num_groups, c.norm_eps, self.dtype, "norm1")(x))
    x, h = self._resample(x), self._resample(h)
    h = conv(self.out_channels, 3, "conv1")(h)
    t = temb if c.skip_time_act else act(temb)
    width = 2 * self.out_channels if c.time_scale_shift else self.out_channels
    t = nn.Dense(width, dtype=self.dtype, name="time_emb_proj")(t)[:, None, None, :]
    norm2 = _group_norm(c.norm_num_groups, c.norm_eps, self.dtype, "norm2")
    if c.time_scale_shift:
      scale, shift = jnp.split(t, 2, axis=-1)
      h = norm2(h) * (1.0 + scale) + shift
    else:
      h = norm2(h + t)
    h = conv(self.out_channels, 3, "conv2")(act(h))
    if x.shape[-1] != self.out_channels:
      x = conv(self.out_channels, 1, "conv_shortcut")(x)
    return (x + h) / self.output_scale


class AddedKVAttention(nn.Module):
  """Self-attention over the image tokens with the text tokens' keys and values prepended."""
  config: IFUNetConfig
  channels: int
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x, context):
    c = self.config
    b, h, w, ch = x.shape
    heads = self.channels // c.attention_head_dim
    inner = heads * c.attention_head_dim
    if c.cross_attention_norm:
      context = _group_norm(CROSS_NORM_GROUPS, ATTENTION_NORM_EPS, self.dtype,
                            "norm_cross")(context)
    tokens = _group_norm(c.norm_num_groups, ATTENTION_NORM_EPS, self.dtype,
                         "group_norm")(x).reshape(b, h * w, ch)
    dense = lambda n, name: nn.Dense(n, dtype=self.dtype, name=name)
    k = jnp.concatenate([dense(inner, "add_k_proj")(context), dense(inner, "to_k")(tokens)], 1)
    v = jnp.concatenate([dense(inner, "add_v_proj")(context), dense(inner, "to_v")(tokens)], 1)
    out = _heads_attention(dense(inner, "to_q")(tokens), k, v, heads)
    return x + dense(ch, "to_out_0")(out).reshape(b, h, w, ch)


# ------------------------------------------------------------------------------ blocks

class DownBlock(nn.Module):
  """ResnetDownsampleBlock2D / SimpleCrossAttnDownBlock2D: layers of resnet (+ attention),
  then a down-sampling resnet unless last. Returns (h, the skips it adds)."""
  config: IFUNetConfig
  index: int
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, h, temb, context):
    c = self.config
    out = c.block_out_channels[self.index]
    attend = c.down_block_types[self.index] == DOWN_BLOCKS[1]
    skips = []
    for j in range(c.layers_per_block[self.index]):
      h = ResnetBlock(c, out, c.resnet_out_scale_factor, dtype=self.dtype,
                      name=f"resnets_{j}")(h, temb)
      if attend:
        h = AddedKVAttention(c, out, self.dtype, name=f"attentions_{j}")(h, context)
      skips.append(h)
    if self.index < len(c.block_out_channels) - 1:
      h = ResnetBlock(c, out, c.resnet_out_scale_factor, "down", self.dtype,
                      name="downsamplers_0")(h, temb)
      skips.append(h)
    return h, skips


class MidBlock(nn.Module):
  """UNetMidBlock2DSimpleCrossAttn: resnet, attention, resnet at the last width."""
  config: IFUNetConfig
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, h, temb, context):
    c = self.config
    width, scale = c.block_out_channels[-1], c.mid_block_scale_factor
    h = ResnetBlock(c, width, scale, dtype=self.dtype, name="resnets_0")(h, temb)
    h = AddedKVAttention(c, width, self.dtype, name="attentions_0")(h, context)
    return ResnetBlock(c, width, scale, dtype=self.dtype, name="resnets_1")(h, temb)


class UpBlock(nn.Module):
  """SimpleCrossAttnUpBlock2D / ResnetUpsampleBlock2D: each layer concatenates the newest
  remaining skip, then resnet (+ attention); an up-sampling resnet unless last."""
  config: IFUNetConfig
  index: int
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, h, skips, temb, context):
    c = self.config
    out = c.block_out_channels[::-1][self.index]
    attend = c.up_block_types[self.index] == UP_BLOCKS[1]
    for j, skip in enumerate(reversed(skips)):
      h = jnp.concatenate([h, skip], axis=-1)
      h = ResnetBlock(c, out, c.resnet_out_scale_factor, dtype=self.dtype,
                      name=f"resnets_{j}")(h, temb)
      if attend:
        h = AddedKVAttention(c, out, self.dtype, name=f"attentions_{j}")(h, context)
    if self.index < len(c.block_out_channels) - 1:
      h = ResnetBlock(c, out, c.resnet_out_scale_factor, "up", self.dtype,
                      name="upsamplers_0")(h, temb)
    return h


class IFUNet(nn.Module):
  """x [B, H, W, in], t [B], encoder states [B, L, E] -> [B, H, W, out] (NHWC; H and W
  divisible by 2^(levels - 1))."""
  config: IFUNetConfig
  dtype: jnp.dtype = jnp.float32

  def init_weights(self, rng) -> dict:
    """Random params (the shapes diffusers' PyTorch -> Flax converter reads)."""
    c = self.config
    x = jnp.zeros((1, c.sample_size, c.sample_size, c.in_channels), self.dtype)
    states = jnp.zeros((1, 1, c.encoder_hid_dim), self.dtype)
    return self.init(rng, x, jnp.zeros((1,), jnp.int32), states)["params"]

  def _embedding(self, t, states):
    c = self.config
    width = c.block_out_channels[0]
    feats = timestep_features(t, width, c.flip_sin_to_cos, c.freq_shift).astype(self.dtype)
    time = TimestepEmbedding(4 * width, c.act_fn, self.dtype, name="time_embedding")
    text = TextTimeEmbedding(4 * width, c.text_pool_heads, self.dtype, name="add_embedding")
    return time(feats) + text(states)

  @nn.compact
  def __call__(self, x, t, states):
    c = self.config
    states = states.astype(self.dtype)
    temb = self._embedding(t, states)
    context = nn.Dense(c.cross_attention_dim, dtype=self.dtype, name="encoder_hid_proj")(states)
    h = nn.Conv(c.block_out_channels[0], (3, 3), padding=1, dtype=self.dtype,
                name="conv_in")(x.astype(self.dtype))
    skips = [h]
    for i in range(len(c.down_block_types)):
      h, added = DownBlock(c, i, self.dtype, name=f"down_blocks_{i}")(h, temb, context)
      skips += added
    h = MidBlock(c, self.dtype, name="mid_block")(h, temb, context)
    for i in range(len(c.up_block_types)):
      n = c.layers_per_block[::-1][i] + 1
      h = UpBlock(c, i, self.dtype, name=f"up_blocks_{i}")(h, skips[-n:], temb, context)
      skips = skips[:-n]
    h = ACTIVATIONS[c.act_fn](_group_norm(c.norm_num_groups, c.norm_eps, self.dtype,
                                          "conv_norm_out")(h))
    return nn.Conv(c.out_channels, (3, 3), padding=1, dtype=self.dtype, name="conv_out")(h)
