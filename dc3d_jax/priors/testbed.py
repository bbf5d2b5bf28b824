"""The testbed prior: a small view-conditioned pixel diffusion model trained in-project on
ground-truth meshes (issue 10), used through `guidance.sds.Prior` like Zero123.

Model (priors/testbed_unet.py): v̂ = UNet(x_t, t; c_ref, T) in pixel space at R² = 32², x in
[-1, 1] (RGB composited on white), cosine schedule (squaredcos_cap_v2, T = 1000: Nichol &
Dhariwal's schedule for low-resolution pixel models, also DeepFloyd IF's, whose SDS t ranges
the reference's configs use). v-prediction, v = √ᾱ ε − √(1−ᾱ) x_0 (Salimans & Ho 2022), and
ε̂ = √(1−ᾱ) x_t + √ᾱ v̂ for SDS. DEVIATION from the ε-prediction of Zero123: a first run with
ε-prediction (1000 steps) had learnt to ignore the reference (one-step x̂_0 from x_t at t = 900
scored 11.4 dB conditional vs 11.1 dB unconditional): the ε loss is tiny at the high noise
levels where the reference decides the layout. v-prediction weighs them like the rest.
Conditioning, as Stable-Zero123 (reference §3.2):
  c_ref  the reference image: composited on white, area-resized to R², in [-1, 1]
  T      [rad(θ − θ_ref), sin Δa, cos Δa, rad(θ_ref)], θ = 90° − elevation (zero123.py)
Unconditional: c_ref = 0 and T = 0 (T = 0 never occurs for a real pose, since sin² + cos² = 1).
CFG: ε̂ = ε_u + s(ε_c − ε_u).

Pure API for other stages (BSD uses it as a base model and score estimator):
  apply(params, x_t [B, R, R, 3], t [B], cond) -> ε̂ (conditional, no guidance)
  apply_v(params, x_t, t, cond) -> v̂, the network's own output (train on this)
  guided_noise(params, x_t, t, cond, scale) -> CFG ε̂; guided_v -> CFG v̂
  conditioning(ref [B, R, R, 3], pose [B, 4]) / null_conditioning(cond) -> cond dicts
  relative_pose(elevation_deg, azimuth_deg, ref_elevation_deg, ref_azimuth_deg) -> [B, 4]
`params` is the UNet's plain Flax parameter pytree; `arch` (static) comes with it from
`load_model` (weights: safetensors with the architecture in its metadata).
"""

import dataclasses
import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import safetensors
import safetensors.numpy
from flax import traverse_util

from dc3d_jax import cameras as cams
from dc3d_jax.core.types import Camera
from dc3d_jax.errors import ModelError, ModelNotFound
from dc3d_jax.priors import noise_schedule, zero123
from dc3d_jax.priors.testbed_unet import Architecture, TestbedUNet

SCHEDULE = ("squaredcos_cap_v2", 0.0, 0.0, 1000)   # kind, beta_start, beta_end (unused), T
FORMAT = "dc3d-testbed-prior-v2"   # v2: v-prediction
REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_WEIGHTS = "weights/testbed_prior.safetensors"   # committed, with its card (.json)


def resolve(path) -> Path:
  """A weights path as given, or relative to the repository (the committed default)."""
  path = Path(path or DEFAULT_WEIGHTS)
  return path if path.is_absolute() or path.exists() else REPO_ROOT / path


def alphas_cumprod() -> np.ndarray:
  return noise_schedule.alphas_cumprod(*SCHEDULE)


def relative_pose(elevation_deg, azimuth_deg, ref_elevation_deg=0.0,
                  ref_azimuth_deg=0.0) -> jax.Array:
  """[B] target angles (degrees) -> [B, 4] Stable-Zero123 T, via zero123.relative_camera."""
  camera = cams.make_camera(elevation_deg, azimuth_deg, 3.8, 20.0, 1, 1)
  return zero123.relative_camera(camera, ref_elevation_deg, ref_azimuth_deg, 3.8, "stable")


def conditioning(ref: jax.Array, pose: jax.Array) -> dict:
  """ref [B, R, R, 3] in [-1, 1], pose [B, 4] -> the conditional branch's inputs."""
  return {"ref": ref, "pose": pose}


def null_conditioning(cond: dict) -> dict:
  return jax.tree_util.tree_map(jnp.zeros_like, cond)


def apply_v(params, x_t: jax.Array, t: jax.Array, cond: dict,
            arch: Architecture = Architecture()) -> jax.Array:
  """The network's conditional v̂ [B, R, R, 3]; t [B] integer timesteps."""
  t = jnp.broadcast_to(jnp.asarray(t), (x_t.shape[0],))
  return TestbedUNet(arch).apply({"params": params}, x_t, t, cond["ref"], cond["pose"])


def v_to_eps(v: jax.Array, x_t: jax.Array, t: jax.Array) -> jax.Array:
  a = jnp.asarray(alphas_cumprod())[jnp.broadcast_to(t, (x_t.shape[0],))]
  a = a.reshape((-1,) + (1,) * (x_t.ndim - 1))
  return jnp.sqrt(1.0 - a) * x_t + jnp.sqrt(a) * v


def apply(params, x_t: jax.Array, t: jax.Array, cond: dict,
          arch: Architecture = Architecture()) -> jax.Array:
  """Conditional ε̂ [B, R, R, 3] (no guidance); t [B] integer timesteps."""
  return v_to_eps(apply_v(params, x_t, t, cond, arch), x_t, t)


def guided_v(params, x_t, t, cond: dict, guidance_scale: float,
             arch: Architecture = Architecture()) -> jax.Array:
  """CFG v̂ = v_u + s(v_c − v_u), one network call on the batch [uncond, cond]. (ε̂ is affine
  in v̂ with the same x_t, so guiding v or ε is the same.)"""
  both = jax.tree_util.tree_map(lambda u, c: jnp.concatenate([u, c]), null_conditioning(cond),
                                cond)
  t = jnp.broadcast_to(jnp.asarray(t), (x_t.shape[0],))
  v_u, v_c = jnp.split(apply_v(params, jnp.concatenate([x_t, x_t]), jnp.tile(t, 2), both,
                               arch), 2)
  return v_u + guidance_scale * (v_c - v_u)


def guided_noise(params, x_t, t, cond: dict, guidance_scale: float,
                 arch: Architecture = Architecture()) -> jax.Array:
  """CFG ε̂ = ε_u + s(ε_c − ε_u)."""
  return v_to_eps(guided_v(params, x_t, t, cond, guidance_scale, arch), x_t, t)


def to_model_input(images: jax.Array, resolution: int) -> jax.Array:
  """[B, H, W, 3] in [0, 1] -> [B, R, R, 3] in [-1, 1]: block means when R divides H and W
  (the area filter the training renders used), otherwise an antialiased linear resize."""
  b, h, w, c = images.shape
  if h % resolution == 0 and w % resolution == 0:
    x = images.reshape(b, resolution, h // resolution, resolution, w // resolution, c)
    x = x.mean(axis=(2, 4))
  else:
    x = jax.image.resize(images, (b, resolution, resolution, c), "linear", antialias=True)
  return 2.0 * x - 1.0


def view_condition(ref: jax.Array, cameras: Camera, ref_elevation_deg: float,
                   ref_azimuth_deg: float) -> dict:
  """ref [1, R, R, 3], [B] cameras -> {"ref": [B, R, R, 3], "pose": [B, 4]}: each camera's
  Stable-Zero123 T relative to the reference view (distance 3.8, the reference camera's)."""
  pose = zero123.relative_camera(cameras, ref_elevation_deg, ref_azimuth_deg, 3.8, "stable")
  return conditioning(jnp.broadcast_to(ref, (pose.shape[0],) + ref.shape[1:]), pose)


@dataclasses.dataclass(frozen=True)
class TestbedModel:
  """Loaded weights: arch (static), params (UNet pytree), card (the metadata's JSON card)."""
  arch: Architecture
  params: dict
  card: dict


@dataclasses.dataclass(frozen=True)
class TestbedPrior:
  """guidance.sds.Prior for the testbed model. params: {"unet": pytree, "ref": [1, R, R, 3]}."""
  arch: Architecture = Architecture()
  guidance_scale: float = 3.0
  ref_elevation_deg: float = 0.0
  ref_azimuth_deg: float = 0.0

  def alphas_cumprod(self) -> np.ndarray:
    return alphas_cumprod()

  def encode(self, params, images: jax.Array, key=None) -> jax.Array:
    return to_model_input(images, self.arch.resolution)

  def condition(self, params, cameras: Camera) -> dict:
    return view_condition(params["ref"], cameras, self.ref_elevation_deg, self.ref_azimuth_deg)

  def predict_noise(self, params, x_t, t, cond) -> jax.Array:
    return guided_noise(params["unet"], x_t, t, cond, self.guidance_scale, self.arch)


def make_testbed_prior(model: TestbedModel, ref_rgba: np.ndarray, *,
                       guidance_scale: float = 3.0, ref_elevation_deg: float = 0.0,
                       ref_azimuth_deg: float = 0.0):
  """Loaded model + reference RGBA [H, W, 4] -> (TestbedPrior, params)."""
  prior = TestbedPrior(arch=model.arch, guidance_scale=guidance_scale,
                       ref_elevation_deg=ref_elevation_deg, ref_azimuth_deg=ref_azimuth_deg)
  ref = jnp.asarray(zero123.reference_image(ref_rgba, model.arch.resolution))
  return prior, {"unet": model.params, "ref": ref}


def init_params(arch: Architecture, key) -> dict:
  r = arch.resolution
  x, t, p = jnp.zeros((1, r, r, 3)), jnp.zeros((1,), jnp.int32), jnp.zeros((1, 4))
  return TestbedUNet(arch).init(key, x, t, x, p)["params"]


def save_model(path, arch: Architecture, params, card: dict) -> None:
  """Writes float32 safetensors; metadata: format, architecture and card as JSON."""
  flat = traverse_util.flatten_dict(jax.device_get(params), sep="/")
  tensors = {k: np.ascontiguousarray(np.asarray(v, np.float32)) for k, v in flat.items()}
  metadata = {"format": FORMAT, "architecture": json.dumps(dataclasses.asdict(arch)),
              "card": json.dumps(card, sort_keys=True)}
  path = Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  tmp = path.with_name(f".{path.name}.tmp")
  safetensors.numpy.save_file(tensors, str(tmp), metadata=metadata)
  tmp.replace(path)


def _architecture(path, metadata: dict) -> Architecture:
  if metadata.get("format") != FORMAT:
    raise ModelError(f"{path}: not a testbed prior (metadata format "
                     f"{metadata.get('format')!r}, expected {FORMAT!r}); train one with "
                     "`python -m experiments.train_prior` or fix guidance.testbed_model")
  fields = json.loads(metadata["architecture"])
  return Architecture(**{k: tuple(v) if isinstance(v, list) else v for k, v in fields.items()})


def load_model(path) -> TestbedModel:
  """Reads and checks a testbed weights file (every tensor's name, shape and finiteness)."""
  path = Path(path)
  if not path.is_file():
    raise ModelNotFound(f"{path}: testbed prior weights not found; set guidance.testbed_model "
                        "or train them with `python -m experiments.train_prior`")
  try:
    with safetensors.safe_open(str(path), "numpy") as f:
      metadata = f.metadata() or {}
      tensors = {k: f.get_tensor(k) for k in f.keys()}
  except Exception as err:  # safetensors raises its own error types for corrupt headers
    raise ModelError(f"{path}: unreadable safetensors file ({err}); re-export or re-train "
                     "the testbed prior") from err
  arch = _architecture(path, metadata)
  expected = traverse_util.flatten_dict(
      jax.eval_shape(lambda: init_params(arch, jax.random.key(0))), sep="/")
  got = {k: tuple(v.shape) for k, v in tensors.items()}
  want = {k: tuple(v.shape) for k, v in expected.items()}
  if got != want:
    diff = sorted(set(got.items()) ^ set(want.items()))[:4]
    raise ModelError(f"{path}: tensors do not match the stored architecture {arch} "
                     f"(first differences {diff}); the file is corrupt or from another version")
  if not all(np.isfinite(v).all() for v in tensors.values()):
    raise ModelError(f"{path}: weights contain NaN or Inf")
  params = traverse_util.unflatten_dict({k: jnp.asarray(v) for k, v in tensors.items()}, sep="/")
  return TestbedModel(arch=arch, params=params, card=json.loads(metadata.get("card", "{}")))
