"""The testbed prior's network: a small pixel-space UNet with Zero123-style conditioning.

ε̂ = UNet(concat[x_t, c_ref], emb(t) + emb(T)): the reference image c_ref (in [-1, 1], or
zeros for the unconditional branch) is concatenated to the noisy image on the channel axis
(Zero123's c_concat) and the relative camera T (Stable-Zero123's [Δpolar, sin Δaz, cos Δaz,
polar_ref], zeros when unconditional) goes through an MLP whose output is added to the
timestep embedding; every residual block takes the sum as a scale and shift after its second
GroupNorm (adaptive GroupNorm, as in improved DDPM). Self-attention runs at the levels in
`attention_levels`, where the receptive field must span the whole object: a novel view moves
content across the image.

With `mirror_ref` the reference flipped left-right is a third input (9 channels in): the
view from behind at the reference elevation has the flipped reference's silhouette (exactly
so for an orthographic camera), which the mirrored-reference baseline exploits; a conv stack
can only move content across the image through its 8² attention, so this hands the network
the flipped copy at full resolution. The unconditional branch's zero reference flips to zero.

Layout NHWC. Levels halve the resolution: with resolution 32 and channels (32, 64, 96) the
levels are 32², 16², 8² (2.2 M parameters, 0.45 GFLOP per 32² image forward).
"""

import dataclasses
import math

import flax.linen as nn
import jax
import jax.numpy as jnp


@dataclasses.dataclass(frozen=True)
class Architecture:
  """Static shape of a testbed model (stored in its weights file's metadata)."""
  resolution: int = 32
  channels: tuple = (32, 64, 96)
  blocks: int = 1
  attention_levels: tuple = (2,)
  emb_dim: int = 256
  groups: int = 8
  heads: int = 4
  mirror_ref: bool = False     # also concatenate the reference flipped left-right (below)


def timestep_embedding(t: jax.Array, dim: int) -> jax.Array:
  """[B] timesteps -> [B, dim] sinusoidal features (cos | sin, periods up to 10⁴)."""
  half = dim // 2
  freqs = jnp.exp(-math.log(10000.0) * jnp.arange(half) / half)
  angles = jnp.asarray(t, jnp.float32)[:, None] * freqs[None]
  return jnp.concatenate([jnp.cos(angles), jnp.sin(angles)], -1)


class ResBlock(nn.Module):
  channels: int
  groups: int

  @nn.compact
  def __call__(self, x, emb):
    h = nn.Conv(self.channels, (3, 3))(nn.silu(nn.GroupNorm(self.groups)(x)))
    scale, shift = jnp.split(nn.Dense(2 * self.channels)(nn.silu(emb)), 2, axis=-1)
    h = nn.GroupNorm(self.groups)(h) * (1.0 + scale[:, None, None]) + shift[:, None, None]
    h = nn.Conv(self.channels, (3, 3), kernel_init=nn.initializers.zeros)(nn.silu(h))
    skip = x if x.shape[-1] == self.channels else nn.Conv(self.channels, (1, 1))(x)
    return skip + h


class Attention(nn.Module):
  groups: int
  heads: int

  @nn.compact
  def __call__(self, x):
    b, h, w, c = x.shape
    tokens = nn.GroupNorm(self.groups)(x).reshape(b, h * w, c)
    out = nn.MultiHeadDotProductAttention(self.heads, out_kernel_init=nn.initializers.zeros)(
        tokens, tokens)
    return x + out.reshape(b, h, w, c)


class TestbedUNet(nn.Module):
  arch: Architecture

  def _block(self, h, emb, channels, level):
    h = ResBlock(channels, self.arch.groups)(h, emb)
    if level in self.arch.attention_levels:
      h = Attention(self.arch.groups, self.arch.heads)(h)
    return h

  @nn.compact
  def __call__(self, x_t, t, ref, pose):
    """x_t, ref [B, R, R, 3]; t [B]; pose [B, 4] -> ε̂ [B, R, R, 3]."""
    a = self.arch
    emb = nn.Dense(a.emb_dim)(timestep_embedding(t, a.channels[0]))
    emb = nn.Dense(a.emb_dim)(nn.silu(emb))
    emb = emb + nn.Dense(a.emb_dim)(nn.silu(nn.Dense(a.emb_dim)(pose)))
    inputs = [x_t, ref] + ([ref[:, :, ::-1]] if a.mirror_ref else [])
    h = nn.Conv(a.channels[0], (3, 3))(jnp.concatenate(inputs, -1))
    skips = [h]
    for level, ch in enumerate(a.channels):
      for _ in range(a.blocks):
        h = self._block(h, emb, ch, level)
        skips.append(h)
      if level < len(a.channels) - 1:
        h = nn.Conv(ch, (3, 3), strides=(2, 2))(h)
        skips.append(h)
    h = ResBlock(a.channels[-1], a.groups)(h, emb)
    h = Attention(a.groups, a.heads)(h)
    h = ResBlock(a.channels[-1], a.groups)(h, emb)
    for level in reversed(range(len(a.channels))):
      for _ in range(a.blocks + 1):
        h = self._block(jnp.concatenate([h, skips.pop()], -1), emb, a.channels[level], level)
      if level > 0:
        b, r, _, c = h.shape
        h = nn.Conv(c, (3, 3))(jax.image.resize(h, (b, 2 * r, 2 * r, c), "nearest"))
    h = nn.silu(nn.GroupNorm(a.groups)(h))
    return nn.Conv(3, (3, 3), kernel_init=nn.initializers.zeros)(h)
