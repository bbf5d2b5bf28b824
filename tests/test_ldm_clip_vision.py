"""The CLIP image encoder of a Zero123 LDM checkpoint, against a third-party OpenAI-style model.

Real checkpoints (stable_zero123.ckpt, zero123-xl.ckpt) hold OpenAI CLIP's ViT under
`cond_stage_model.model.visual.*`. A tiny open_clip VisionTransformer (open_clip's port of
OpenAI's model: the same parameter names, QuickGELU as OpenAI's checkpoints, width / 64
heads) is built in PyTorch, its state dict saved under that prefix in an LDM checkpoint with
the rest of the tiny Zero123 (experiments/tiny_models), loaded through
`dc3d_jax.priors.loading.load_zero123`, and its image embeddings compared with open_clip's.
The project's own OpenAI -> transformers mapping is thus checked against names it did not
write (tiny_ldm_keys.clip_vision_to_openai, its inverse, is not used here).

open_clip (PyPI open-clip-torch, installed without its dependencies) imports torchvision at
module import time, and PyPI's torchvision cannot load next to this machine's CPU torch.
`_import_open_clip` therefore puts a minimal stand-in for the torchvision names open_clip
imports (transforms, transforms.functional, ops.misc.FrozenBatchNorm2d: image preprocessing
and batch-norm freezing, never used by the model code) into sys.modules while open_clip is
imported, and takes it out again, so no other code sees it.
"""

import contextlib
import enum
import sys
import types

import jax
import numpy as np
import pytest
import torch

from dc3d_jax.priors.loading import load_zero123
from experiments import tiny_models

TORCHVISION_NAMES = {
    "torchvision": (),
    "torchvision.transforms": ("Normalize", "Compose", "RandomResizedCrop", "ToTensor",
                               "Resize", "CenterCrop", "ColorJitter", "Grayscale"),
    "torchvision.transforms.functional": (),
    "torchvision.ops": (),
    "torchvision.ops.misc": ("FrozenBatchNorm2d",),
}


class _InterpolationMode(enum.Enum):
  """torchvision.transforms.InterpolationMode: open_clip reads its members as defaults."""
  NEAREST = "nearest"
  BILINEAR = "bilinear"
  BICUBIC = "bicubic"
  LANCZOS = "lanczos"


class _NotTorchvision:
  def __init__(self, *args, **kwargs):
    raise RuntimeError("a torchvision stand-in (tests/test_ldm_clip_vision.py) was called")


@contextlib.contextmanager
def _torchvision_stand_in():
  import transformers  # noqa: F401  # imported first: its torchvision probe sees the truth
  added = []
  for name, classes in TORCHVISION_NAMES.items():
    if name in sys.modules:
      continue
    module = types.ModuleType(name)
    module.__path__ = []
    module.__dict__.update({c: type(c, (_NotTorchvision,), {}) for c in classes})
    sys.modules[name] = module
    added.append(name)
    parent, _, child = name.rpartition(".")
    if parent:
      setattr(sys.modules[parent], child, module)
  sys.modules["torchvision.transforms"].InterpolationMode = _InterpolationMode
  try:
    yield
  finally:
    for name in added:
      sys.modules.pop(name, None)


def _import_open_clip():
  """open_clip.transformer (requirements-nodeps.txt; `make test` installs it)."""
  with _torchvision_stand_in():
    import open_clip.transformer
  return open_clip.transformer


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
  oc = _import_open_clip()
  torch.manual_seed(0)
  tower = oc.VisionTransformer(image_size=32, patch_size=8, width=128, layers=2, heads=2,
                               mlp_ratio=2.0, output_dim=32, act_layer=oc.QuickGELU)
  with torch.no_grad():   # non-trivial norms, biases and embeddings
    for p in tower.parameters():
      p.add_(0.05 * torch.randn(p.shape))
  tower.eval()
  modules = tiny_models.tiny_zero123_modules(seed=0)
  state = tiny_models.zero123_ldm_state_dict(modules, with_image_encoder=False)
  state.update({f"cond_stage_model.model.visual.{k}": v for k, v in tower.state_dict().items()})
  path = tiny_models.save_ldm_checkpoint(state, tmp_path_factory.mktemp("ldm") / "z.ckpt")
  return tower, path


def test_ldm_clip_vision_matches_open_clip(checkpoint):
  tower, path = checkpoint
  models = load_zero123(str(path))
  pixels = np.random.default_rng(0).standard_normal((2, 3, 32, 32)).astype(np.float32)
  with torch.no_grad():
    want = tower(torch.from_numpy(pixels)).numpy()
  encode = jax.jit(lambda p, x: models.image_encoder(x, params=p["image_encoder"])
                   .pooler_output @ p["visual_projection"]["kernel"])
  got = np.asarray(encode(models.params, pixels))
  err = float(np.abs(got - want).max())
  print(f"LDM CLIP image embedding vs open_clip: max abs {err:.2e} "
        f"(output max {np.abs(want).max():.2f})")
  assert got.shape == want.shape == (2, 32) and np.abs(want).max() > 0.1
  assert err <= 1e-4
