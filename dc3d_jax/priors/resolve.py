"""Model argument -> local files, never the network (docs/ARCHITECTURE.md
"Priors without downloads").

A model argument is one of:
  - a local folder in diffusers layout, checked for completeness for its kind;
  - a `.ckpt` / `.safetensors` file: an original LDM checkpoint (Zero123 only);
  - a Hugging Face model id ("org/name"), looked up in the local cache only
    (HF_HUB_CACHE, else HF_HOME/hub, else ~/.cache/huggingface/hub).

Kinds: "stable_diffusion", "zero123", "clip_vision" (a CLIP image encoder folder, the
fallback for LDM checkpoints that do not carry their CLIP weights), "deepfloyd" (an IF
stage-I pipeline folder: UNet, T5 encoder, SentencePiece tokenizer, scheduler) and
"deepfloyd_unet" (its unet/ folder alone).
Anything that cannot be found raises `ModelNotFoundError` naming the argument, where it
looked and which files it expected.
"""

import dataclasses
import os
import re
from pathlib import Path

from dc3d_jax import errors

KINDS = ("stable_diffusion", "zero123", "clip_vision", "deepfloyd", "deepfloyd_unet")
LDM_SUFFIXES = (".ckpt", ".safetensors")
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?$")

# Weight file names in order of preference: safetensors first (no pickle), full precision
# before the fp16 variants that `variant="fp16"` downloads leave in a cache.
_DIFFUSERS_WEIGHTS = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin",
                      "diffusion_pytorch_model.fp16.safetensors",
                      "diffusion_pytorch_model.fp16.bin")
_TRANSFORMERS_WEIGHTS = ("model.safetensors", "pytorch_model.bin", "model.fp16.safetensors",
                         "pytorch_model.fp16.bin")
# A large text encoder (IF's 4.7 B-parameter T5-XXL) is saved in shards named by an index.
_SHARDED_WEIGHTS = ("model.safetensors.index.json", "pytorch_model.bin.index.json",
                    "model.safetensors.index.fp16.json", "pytorch_model.bin.index.fp16.json")


@dataclasses.dataclass(frozen=True)
class Requirement:
  """One expected file of a layout: any of `names` (relative paths) satisfies it."""
  role: str
  names: tuple
  optional: bool = False

  def describe(self) -> str:
    """E.g. "unet/diffusion_pytorch_model.safetensors|.bin (or .fp16 variant)"."""
    first, *rest = self.names
    text = first
    if rest:
      second = Path(rest[0])
      text += "|" + (second.suffix if second.stem == Path(first).stem else second.name)
    if any(".fp16." in n for n in rest):
      text += " (or .fp16 variant)"
    if any(".index." in n for n in rest):
      text += " (or shards with their .index.json)"
    return text + (" (optional)" if self.optional else "")


def _component(folder: str, weights: tuple) -> tuple:
  return (Requirement(f"{folder}_config", (f"{folder}/config.json",)),
          Requirement(f"{folder}_weights", tuple(f"{folder}/{w}" for w in weights)))


_SCHEDULER = (Requirement("scheduler_config", ("scheduler/scheduler_config.json",), True),)

LAYOUTS = {
    "stable_diffusion": (
        Requirement("model_index", ("model_index.json",), optional=True),
        *_component("unet", _DIFFUSERS_WEIGHTS),
        *_component("vae", _DIFFUSERS_WEIGHTS),
        *_component("text_encoder", _TRANSFORMERS_WEIGHTS),
        Requirement("tokenizer_vocab", ("tokenizer/vocab.json",)),
        Requirement("tokenizer_merges", ("tokenizer/merges.txt",)),
        Requirement("scheduler_config", ("scheduler/scheduler_config.json",)),
    ),
    "zero123": (
        Requirement("model_index", ("model_index.json",), optional=True),
        *_component("unet", _DIFFUSERS_WEIGHTS),
        *_component("vae", _DIFFUSERS_WEIGHTS),
        *_component("image_encoder", _TRANSFORMERS_WEIGHTS),
        Requirement("cc_projection_weights",
                    tuple(f"cc_projection/{w}" for w in _DIFFUSERS_WEIGHTS)),
        *_SCHEDULER,
        Requirement("feature_extractor", ("feature_extractor/preprocessor_config.json",),
                    optional=True),
    ),
    "clip_vision": (
        Requirement("config", ("config.json",)),
        Requirement("weights", _TRANSFORMERS_WEIGHTS),
    ),
    "deepfloyd": (
        Requirement("model_index", ("model_index.json",), optional=True),
        *_component("unet", _DIFFUSERS_WEIGHTS),
        *_component("text_encoder", _TRANSFORMERS_WEIGHTS + _SHARDED_WEIGHTS),
        Requirement("tokenizer_model", ("tokenizer/spiece.model",)),
        Requirement("scheduler_config", ("scheduler/scheduler_config.json",)),
    ),
    "deepfloyd_unet": (
        Requirement("config", ("config.json",)),
        Requirement("weights", _DIFFUSERS_WEIGHTS),
    ),
}


# A model argument that resolves to no complete local model (errors.ModelNotFound: a
# ModelError and a FileNotFoundError), under the name this module has always used.
ModelNotFoundError = errors.ModelNotFound


@dataclasses.dataclass(frozen=True)
class ResolvedModel:
  """Where a model's files are. files: role -> path (None for a missing optional file)."""
  argument: str
  kind: str
  format: str          # "diffusers" (a folder) or "ldm" (one checkpoint file)
  path: Path
  files: dict


def expected_files(kind: str) -> str:
  """The expected layout of `kind`, one file per line, for error messages and the README."""
  lines = [f"  {r.describe()}" for r in LAYOUTS[kind]]
  if kind == "zero123":
    lines.append("or an original LDM checkpoint file: stable_zero123.ckpt, zero123-xl.ckpt "
                 "(.ckpt or .safetensors)")
  return "\n".join(lines)


def hf_cache_dir() -> Path:
  """The hub cache, read from the environment now (huggingface_hub reads it at import)."""
  if os.environ.get("HF_HUB_CACHE"):
    return Path(os.environ["HF_HUB_CACHE"]).expanduser()
  if os.environ.get("HF_HOME"):
    return Path(os.environ["HF_HOME"]).expanduser() / "hub"
  import huggingface_hub.constants
  return Path(huggingface_hub.constants.HF_HUB_CACHE)


def resolve_model(model: str, kind: str) -> ResolvedModel:
  """Resolves a model argument of `kind` to local files; raises ModelNotFoundError."""
  if kind not in KINDS:
    raise ValueError(f"unknown model kind {kind!r}; expected one of {KINDS}")  # a bug
  model = str(model)
  path = Path(model).expanduser()
  if path.suffix in LDM_SUFFIXES:
    return _resolve_checkpoint(model, path, kind)
  if path.is_dir():
    return _check_folder(model, path, kind)
  if _looks_like_path(model):
    raise ModelNotFoundError(
        f"{kind} model {model!r}: no folder at {path.resolve()}.\n"
        f"A {kind} folder holds:\n{expected_files(kind)}")
  return _check_folder(model, _cached_snapshot(model, kind), kind)


def _looks_like_path(model: str) -> bool:
  # A Hugging Face id is "name" or "org/name"; anything else is meant as a path.
  return model.startswith("~") or not _REPO_ID.match(model)


def _resolve_checkpoint(model: str, path: Path, kind: str) -> ResolvedModel:
  if kind == "stable_diffusion":
    raise ModelNotFoundError(
        f"stable_diffusion model {model!r}: single-file Stable Diffusion checkpoints are not "
        "supported; give a diffusers folder or a Hugging Face model id in the local cache "
        f"(e.g. stabilityai/stable-diffusion-2-1-base), holding:\n{expected_files(kind)}")
  if kind != "zero123":
    raise ModelNotFoundError(f"{kind} model {model!r}: checkpoint files are not supported; "
                             f"give a folder holding:\n{expected_files(kind)}")
  if not path.is_file():
    raise ModelNotFoundError(f"zero123 checkpoint {model!r}: no file at {path.resolve()}")
  return ResolvedModel(model, kind, "ldm", path.resolve(), {"checkpoint": path.resolve()})


def _cached_snapshot(model: str, kind: str) -> Path:
  """The snapshot folder of a model id in the local hub cache (no network: local_files_only)."""
  import huggingface_hub
  from huggingface_hub.errors import HFValidationError
  cache = hf_cache_dir()
  try:
    return Path(huggingface_hub.snapshot_download(model, cache_dir=cache,
                                                  local_files_only=True))
  except (HFValidationError, OSError, ValueError) as err:
    repo_dir = cache / ("models--" + model.replace("/", "--"))
    raise ModelNotFoundError(
        f"{kind} model {model!r}: no local folder {Path(model).resolve()}, and not in the "
        "local Hugging Face cache "
        f"({repo_dir} with refs/main and snapshots/<revision>/; cache dir from HF_HUB_CACHE / "
        f"HF_HOME). Nothing is downloaded: copy the model there or pass its folder. "
        f"Expected files:\n{expected_files(kind)}\n({type(err).__name__}: {err})") from None


def _check_folder(model: str, folder: Path, kind: str) -> ResolvedModel:
  """Finds each expected file; lists every missing required one at once."""
  files, missing = {}, []
  for req in LAYOUTS[kind]:
    found = next((folder / n for n in req.names if (folder / n).is_file()), None)
    files[req.role] = found
    if found is None and not req.optional:
      missing.append(req.describe())
  if missing:
    raise ModelNotFoundError(
        f"{kind} model {model!r} at {folder.resolve()} is incomplete; missing:\n"
        + "\n".join(f"  {m}" for m in missing)
        + f"\nA complete {kind} folder holds:\n{expected_files(kind)}")
  return ResolvedModel(model, kind, "diffusers", folder.resolve(), files)
