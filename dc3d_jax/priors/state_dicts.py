"""PyTorch weight files -> numpy state dicts, and state dicts -> Flax params.

Files are read without torch where possible (safetensors.numpy) and with
`torch.load(..., weights_only=True)` otherwise; tensors keep their storage dtype. A damaged
file, or one that pickles more than tensors, raises errors.ModelError naming it
(`check_weights_file` is the cheap header check a run makes before it writes anything). The
conversions call the libraries' own PyTorch -> Flax converters and check that every
parameter of the Flax model is present.
"""

import json
import pickle
import re
import types
import zipfile
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from dc3d_jax import errors
from dc3d_jax.priors.models import NoiseScheduleConfig

DEFAULT_VAE_SCALING = 0.18215
BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2")   # noise_schedule.py


class UnsupportedModelError(errors.ModelError):
  """A model whose configuration the Flax classes cannot represent."""


# ----------------------------------------------------------------------- reading files

_ZIP_MAGIC = b"PK\x03\x04"
# torch's legacy (pre-1.6) format opens with a pickled magic number (protocol 2, long1).
_LEGACY_MAGIC = b"\x80\x02\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19"


def _damaged(path, why: str) -> errors.ModelError:
  return errors.ModelError(f"{path}: cannot read the weights: {why.rstrip('. ')}. The file is "
                           "truncated or damaged; copy or download it again")


def read_json(path) -> dict:
  try:
    return json.loads(Path(path).read_text())
  except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
    raise errors.ModelError(f"{path}: not a readable JSON config ({err}); copy the model "
                            "folder again") from None


def _check_safetensors(path: Path, size: int) -> None:
  """The header is a little-endian u64 length, then JSON whose data_offsets end at EOF."""
  with open(path, "rb") as f:
    head = f.read(8)
    n = int.from_bytes(head, "little") if len(head) == 8 else -1
    if n <= 1 or 8 + n > size:
      raise _damaged(path, "no valid safetensors header")
    try:
      header = json.loads(f.read(n))
    except (UnicodeDecodeError, json.JSONDecodeError):
      raise _damaged(path, "its safetensors header is not JSON") from None
  ends = [v["data_offsets"][1] for k, v in header.items()
          if k != "__metadata__" and isinstance(v, dict) and "data_offsets" in v]
  if 8 + n + max(ends, default=0) > size:
    raise _damaged(path, f"the header describes {8 + n + max(ends)} bytes, the file has {size}")


def shard_files(index_path) -> list:
  """The shard files a sharded checkpoint's `*.index.json` names (its weight_map values), in
  its folder; ModelError naming the index if it is malformed or a shard is missing."""
  index_path = Path(index_path)
  weight_map = read_json(index_path).get("weight_map")
  if not isinstance(weight_map, dict) or not weight_map:
    raise errors.ModelError(f"{index_path}: no weight_map; not a sharded checkpoint index. "
                            "Copy the model folder again")
  shards = [index_path.parent / name for name in sorted(set(weight_map.values()))]
  missing = [s.name for s in shards if not s.is_file()]
  if missing:
    raise errors.ModelError(f"{index_path}: shard(s) {missing} missing from "
                            f"{index_path.parent}; copy every shard the index names")
  return shards


def check_weights_file(path) -> None:
  """Cheap integrity check (headers and sizes, no tensors read) of a .safetensors file, a
  zip-format PyTorch file or a legacy-pickle one (a shard index: of every shard); raises
  ModelError naming the file."""
  path = Path(path)
  if path.suffix == ".json":
    for shard in shard_files(path):
      check_weights_file(shard)
    return
  size = path.stat().st_size
  if path.suffix == ".safetensors":
    return _check_safetensors(path, size)
  with open(path, "rb") as f:
    head = f.read(len(_LEGACY_MAGIC))
  if head.startswith(_ZIP_MAGIC):
    try:
      with zipfile.ZipFile(path) as archive:
        archive.infolist()
    except (zipfile.BadZipFile, OSError) as err:
      raise _damaged(path, f"its zip archive is incomplete ({err})") from None
  elif head != _LEGACY_MAGIC:
    raise _damaged(path, "it is neither a PyTorch zip archive nor a legacy PyTorch pickle")


def read_state_dict(path) -> dict:
  """A weights file (or a shard index) -> {name: numpy array} in its storage dtype (bf16 via
  ml_dtypes)."""
  path = Path(path)
  if path.suffix == ".json":
    state = {}
    for shard in shard_files(path):
      state.update(read_state_dict(shard))
    return state
  check_weights_file(path)
  if path.suffix == ".safetensors":
    import safetensors.numpy
    try:
      return safetensors.numpy.load_file(str(path))
    except Exception as err:  # SafetensorError derives from Exception only
      raise _damaged(path, str(err)) from None
  state = torch_load(path)
  if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
    state = state["state_dict"]   # Lightning checkpoints keep the weights under "state_dict"
  if not isinstance(state, dict):
    raise errors.ModelError(f"{path}: holds a {type(state).__name__}, not a dict of weights")
  return {k: _torch_to_numpy(v) for k, v in state.items() if _is_tensor(v)}


def _refused_global(err) -> str:
  found = re.search(r"GLOBAL ([\w.]+)", str(err))
  return found.group(1) if found else "a Python object"


def torch_load(path: Path):
  """torch.load without arbitrary code execution (weights_only), memory-mapped if possible.

  A file that pickles more than tensors is refused (loading it could run its code), and a
  damaged file is named; neither message suggests turning weights_only off."""
  import torch
  try:
    try:
      return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError as err:
      if "mmap" not in str(err):   # old (non-zip) serialization cannot be memory-mapped
        raise
      return torch.load(path, map_location="cpu", weights_only=True)
  except pickle.UnpicklingError as err:
    if "Weights only load failed" not in str(err):
      raise _damaged(path, f"its pickle is broken ({str(err)[:120]})") from None
    raise errors.ModelError(
        f"{path}: the checkpoint pickles {_refused_global(err)}, not only tensors, and such "
        "objects are never unpickled here (unpickling can run arbitrary code). Use a "
        ".safetensors copy of the same weights, or a checkpoint that holds only tensors"
    ) from None
  except (RuntimeError, EOFError, OSError, KeyError, ValueError, AttributeError) as err:
    raise _damaged(path, f"{type(err).__name__}: {str(err)[:160]}") from None


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


