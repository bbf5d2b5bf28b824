"""PyTorch weight files -> numpy state dicts, and state dicts -> Flax params.

Files are read without torch where possible (safetensors.numpy) and with
`torch.load(..., weights_only=True)` otherwise; tensors keep their storage dtype. The
conversions call the libraries' own PyTorch -> Flax converters and check that every
parameter of the Flax model is present.
"""

import json
import pickle
import types
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from dc3d_jax.priors.models import NoiseScheduleConfig

DEFAULT_VAE_SCALING = 0.18215
BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2")   # noise_schedule.py


class UnsupportedModelError(ValueError):
  """A model whose configuration the Flax classes cannot represent."""


# ----------------------------------------------------------------------- reading files

def read_json(path) -> dict:
  return json.loads(Path(path).read_text())


def read_state_dict(path) -> dict:
  """A weights file -> {name: numpy array} in its storage dtype (bf16 via ml_dtypes)."""
  path = Path(path)
  if path.suffix == ".safetensors":
    import safetensors.numpy
    return safetensors.numpy.load_file(str(path))
  state = torch_load(path)
  if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
    state = state["state_dict"]   # Lightning checkpoints keep the weights under "state_dict"
  return {k: _torch_to_numpy(v) for k, v in state.items() if _is_tensor(v)}


def torch_load(path: Path):
  """torch.load without arbitrary code execution (weights_only), memory-mapped if possible."""
  import torch
  try:
    return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
  except RuntimeError as err:
    if "mmap" not in str(err):   # old (non-zip) serialization cannot be memory-mapped
      raise
    return torch.load(path, map_location="cpu", weights_only=True)
  except pickle.UnpicklingError as err:
    raise UnsupportedModelError(
        f"{path}: torch.load(weights_only=True) refused the file, which pickles more than "
        "tensors. If you trust it, re-save only its weights, e.g. "
        "safetensors.torch.save_file(torch.load(p, weights_only=False)['state_dict'], "
        f"'model.safetensors'), and pass that file.\n({err})") from None


def _is_tensor(value) -> bool:
  import torch
  return isinstance(value, torch.Tensor)


def _torch_to_numpy(tensor) -> np.ndarray:
  import torch
  tensor = tensor.detach().cpu()
  if tensor.dtype == torch.bfloat16:   # numpy has no bf16; reinterpret the bits exactly
    import ml_dtypes
    return tensor.view(torch.int16).numpy().view(ml_dtypes.bfloat16)
  return tensor.numpy()


def vae_scaling(vae_config: dict) -> float:
  """The latent scale of a diffusers AutoencoderKL config (SD's 0.18215 when unset)."""
  return float(vae_config.get("scaling_factor") or DEFAULT_VAE_SCALING)


PREDICTION_TYPES = ("epsilon", "v_prediction")   # what the priors turn into ε


def read_schedule(path) -> NoiseScheduleConfig:
  """scheduler_config.json -> NoiseScheduleConfig; absent: Zero123's (§3.2) scaled-linear.

  prediction_type "epsilon" (SD 2.1-base, Zero123) or "v_prediction" (SD 2.1 at 768 px,
  which the Stable Diffusion prior converts to ε); "sample" and others are refused."""
  if path is None:
    return NoiseScheduleConfig()
  config = read_json(path)
  schedule = NoiseScheduleConfig(
      beta_schedule=config.get("beta_schedule", "linear"),
      beta_start=float(config.get("beta_start", 0.0001)),
      beta_end=float(config.get("beta_end", 0.02)),
      num_train_timesteps=int(config.get("num_train_timesteps", 1000)),
      prediction_type=config.get("prediction_type", "epsilon"))
  if schedule.prediction_type not in PREDICTION_TYPES:
    raise UnsupportedModelError(
        f"{path}: prediction_type={schedule.prediction_type!r}; supported: "
        f"{PREDICTION_TYPES} (score distillation needs ε, which v converts to)")
  if schedule.beta_schedule not in BETA_SCHEDULES or config.get("trained_betas"):
    raise UnsupportedModelError(
        f"{path}: beta_schedule={schedule.beta_schedule!r} / trained_betas not supported; "
        f"expected one of {BETA_SCHEDULES}")
  return schedule


# ---------------------------------------------------------------- PyTorch state -> Flax

class _TensorLike:
  """diffusers' converter calls `.numpy()` on each value, as on a torch tensor."""
  __slots__ = ("value",)

  def __init__(self, value):
    self.value = value

  def numpy(self):
    return self.value


def _flat_keys(tree) -> dict:
  from flax.traverse_util import flatten_dict
  return flatten_dict(dict(tree))


def check_param_names(params, expected, what: str) -> dict:
  """Raises if a parameter is missing or unknown (the library converters pass both)."""
  got, want = _flat_keys(params), _flat_keys(expected)
  missing = sorted(".".join(k) for k in want.keys() - got.keys())
  unknown = sorted(".".join(k) for k in got.keys() - want.keys())
  if missing or unknown:
    raise UnsupportedModelError(
        f"{what}: weights do not match the model config: {len(missing)} missing "
        f"{missing[:8]}, {len(unknown)} unexpected {unknown[:8]}")
  return params


def diffusers_to_flax(state: dict, module, what: str) -> dict:
  """A diffusers PyTorch state dict -> params of the Flax `module` (checked)."""
  from diffusers.models.modeling_flax_pytorch_utils import convert_pytorch_state_dict_to_flax
  # The converter only reads the names and shapes of a random init; eval_shape gives
  # them without running the init (seconds and gigabytes for the real UNet).
  expected = jax.eval_shape(module.init_weights, jax.random.PRNGKey(0))
  shapes_only = types.SimpleNamespace(init_weights=lambda rng: expected)
  params = convert_pytorch_state_dict_to_flax(
      {k: _TensorLike(v) for k, v in state.items()}, shapes_only)
  return check_param_names(params, expected, what)


def transformers_to_flax(state: dict, model, what: str) -> dict:
  """A transformers PyTorch state dict -> params of the Flax `model` (built _do_init=False)."""
  from transformers.modeling_flax_pytorch_utils import convert_pytorch_state_dict_to_flax
  expected = jax.eval_shape(lambda rng: model.init_weights(rng, model.input_shape),
                            jax.random.PRNGKey(0))
  shapes_only = types.SimpleNamespace(base_model_prefix=model.base_model_prefix,
                                      params=expected)
  params = convert_pytorch_state_dict_to_flax(dict(state), shapes_only)
  return check_param_names(params, expected, what)


def cast_floating(tree, dtype):
  """Floating leaves -> dtype (diffusers' own to_bf16 no longer runs on this jax)."""
  def cast(x):
    x = jnp.asarray(x)
    return x.astype(dtype) if jnp.issubdtype(x.dtype, jnp.floating) else x
  return jax.tree_util.tree_map(cast, tree)


