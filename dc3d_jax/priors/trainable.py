"""One interface for a trained copy of a diffusion prior (BSD's DreamBooth prior φ_DB and
score estimator φ_est, reference §4), and its JAX implementation.

A trained copy starts from a frozen base (denoiser_base.py) and is either
  "full": a full copy of the base network's params (the reference: two full SD UNets), or
  "lora": LoRA adapters on the attention projections over the shared frozen base (lora.py),
plus, with camera conditioning (DS's variant), a class-embedding MLP of the flattened c2w.
Its ε-MSE update is the DDPM training loss
  L = w · mean‖ε_φ(√ᾱ_t x_0 + √(1-ᾱ_t) ε, t, c) - ε‖²     (F.mse_loss, reduction mean)
followed by AdamW (decoupled weight decay, PyTorch's and optax's AdamW agree exactly).

Precision (reference §10; docs/texture_bsd.md): trained params are float32 master weights.
The base network runs in its module's dtype (bf16 on GPU, guidance.precision): Flax casts
the float32 masters to it inside each layer, so the forward and backward compute in bf16
while every AdamW update lands in float32. The reference instead keeps fp16 weights and
updates them in place (eps 1e-4): at lr 1e-5 an update is below half the fp16 spacing for
|w| > ~0.03, so most of its weights never move. This port follows the fp32-master
semantics; learning rates are therefore stronger than DC's at equal values (see the config).

  TrainedCopy      flax.struct state: params {"net", "camera"}, opt_state, update counts
  TrainablePrior   the protocol a second backend (PyTorch diffusers via a torch bridge) can
                   implement: init, eps_fn (ε calls, optionally with the trained part
                   switched off), mse_update
  JaxTrainablePrior  this module's implementation on a DenoiserBase
"""

import dataclasses
from typing import Any, Callable, Optional, Protocol

import jax
import jax.numpy as jnp
import optax
from flax import struct

from dc3d_jax.core import numerics
from dc3d_jax.errors import ConfigError
from dc3d_jax.priors import camera_embedding, lora
from dc3d_jax.priors.denoiser_base import DenoiserBase
from dc3d_jax.priors.remat import checkpointed

MODES = ("full", "lora")

# eps_fn(x_t [N, h, w, c], t [N] int32, cond (N rows), camera [N, 16] | None) -> ε
EpsFn = Callable[[jax.Array, jax.Array, Any, Optional[jax.Array]], jax.Array]


@struct.dataclass
class TrainedCopy:
  """params: {"net": full float32 params | LoRA adapters, "camera": class-embedding MLP or
  {}}; opt_state: the optimizer's state of params; updates: ε-MSE steps taken; skipped:
  steps dropped for non-finite gradients (params and opt_state kept)."""
  params: Any
  opt_state: Any
  updates: jax.Array
  skipped: jax.Array


class TrainablePrior(Protocol):
  """A trainable denoiser over a frozen base; stateless, its state is a TrainedCopy."""

  def init(self, base_params, key: jax.Array) -> TrainedCopy:
    """A fresh copy: equal to the base (full copy, or adapters with b = 0)."""

  def eps_fn(self, params, base_params, use_trained=True) -> EpsFn:
    """ε of the copy (use_trained True) or of the frozen base (False; may be traced). The
    base ignores `camera`; so does the copy when camera conditioning is off."""

  def mse_update(self, copy: TrainedCopy, base_params, x0: jax.Array, t: jax.Array,
                 noise: jax.Array, cond, camera: Optional[jax.Array] = None, *,
                 weight=1.0) -> tuple:
    """One optimizer step on w·ε-MSE at (x0, t, noise) -> (TrainedCopy, {"mse", "grad_norm"})."""


@dataclasses.dataclass(frozen=True)
class JaxTrainablePrior:
  """A trained copy of `base` in JAX. lora_alpha / lora_rank is LoRA's scale s."""
  base: DenoiserBase
  mode: str = "full"
  lr: float = 1e-5
  b1: float = 0.9
  b2: float = 0.99
  eps: float = 1e-4
  weight_decay: float = 0.01
  lora_rank: int = 4
  lora_alpha: float = 4.0
  lora_targets: tuple = lora.TARGETS
  camera_condition: bool = False
  remat: bool = False

  def __post_init__(self):
    if self.mode not in MODES:
      raise ConfigError(f"config texture.prior.memory_mode={self.mode!r}; expected one of "
                        f"{MODES}")
    if self.camera_condition and self.base.class_embed_dim is None:
      raise ConfigError(f"config texture.bsd.camera_condition=True, but the base "
                        f"{type(self.base).__name__} has no class embedding; set it False")

  def optimizer(self) -> optax.GradientTransformation:
    return optax.adamw(self.lr, b1=self.b1, b2=self.b2, eps=self.eps,
                       weight_decay=self.weight_decay)

  def init(self, base_params, key):
    k_net, k_cam = jax.random.split(key)
    if self.mode == "full":   # a float32 copy (never aliasing the base, which is not donated)
      net = jax.tree_util.tree_map(lambda w: jnp.array(w, jnp.float32, copy=True), base_params)
    else:
      net = lora.init(base_params, k_net, self.lora_rank, self.lora_targets)
    camera = (camera_embedding.init(k_cam, self.base.class_embed_dim)
              if self.camera_condition else {})
    params = {"net": net, "camera": camera}
    # Two arrays, not one twice: a donated state must not hold a buffer twice.
    return TrainedCopy(params=params, opt_state=self.optimizer().init(params),
                       updates=jnp.zeros((), jnp.int32), skipped=jnp.zeros((), jnp.int32))

  def net_params(self, params, base_params, use_trained=True):
    """Network params for base.apply, in the base params' dtypes. use_trained False (or a
    traced False) gives the base's own values."""
    net = params["net"]
    if self.mode == "lora":
      scale = self.lora_alpha / self.lora_rank
      if use_trained is not True:
        scale = scale * jnp.asarray(use_trained, jnp.float32)
      return lora.merge(base_params, net, scale)
    if use_trained is True:
      return net       # float32 masters; the module casts them to its dtype per layer
    return jax.tree_util.tree_map(
        lambda w, b: jnp.where(use_trained, w.astype(b.dtype), b), net, base_params)

  def eps_fn(self, params, base_params, use_trained=True, *, for_grad=False):
    net = self.net_params(params, base_params, use_trained)
    cam_on = self.camera_condition and use_trained is not False
    apply = checkpointed(self.base.apply) if (for_grad and self.remat) else self.base.apply

    def eps(x_t, t, cond, camera=None):
      class_emb = None
      if cam_on and camera is not None:
        class_emb = camera_embedding.embed(params["camera"], camera)
        if use_trained is not True:     # the frozen base has no class embedding
          class_emb = class_emb * jnp.asarray(use_trained, class_emb.dtype)
      return apply(net, x_t, t, cond, class_emb)
    return eps

  def mse_update(self, copy, base_params, x0, t, noise, cond, camera=None, *, weight=1.0):
    a = jnp.asarray(self.base.alphas_cumprod())[t].reshape((-1,) + (1,) * (x0.ndim - 1))
    x_t = jax.lax.stop_gradient(jnp.sqrt(a) * x0 + jnp.sqrt(1.0 - a) * noise)

    def loss_fn(params):
      eps = self.eps_fn(params, base_params, for_grad=True)(x_t, t, cond, camera)
      mse = jnp.mean((eps.astype(jnp.float32) - noise.astype(jnp.float32)) ** 2)
      return weight * mse, mse

    (_, mse), grads = jax.value_and_grad(loss_fn, has_aux=True)(copy.params)
    return self.apply_gradients(copy, grads), {"mse": mse, "grad_norm": optax.tree.norm(grads)}

  def apply_gradients(self, copy: TrainedCopy, grads) -> TrainedCopy:
    """One AdamW step; non-finite gradients keep the old params and state (counted)."""
    updates, opt_state = self.optimizer().update(grads, copy.opt_state, copy.params)
    params = optax.apply_updates(copy.params, updates)
    ok = numerics.all_finite(grads)
    pick = lambda new, old: jax.tree_util.tree_map(lambda n, o: jnp.where(ok, n, o), new, old)
    return TrainedCopy(params=pick(params, copy.params),
                       opt_state=pick(opt_state, copy.opt_state), updates=copy.updates + 1,
                       skipped=copy.skipped + (1 - ok.astype(jnp.int32)))
