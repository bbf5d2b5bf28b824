"""Training and held-out render sets of the testbed (issue 10), cached once as .npz.

Training set: for each object of catalog.TRAIN (and any generated objects, procedural.py),
`instances` placements (yaw ψ about Z,
reference elevation e_ref; instance 0 is the catalog front at e_ref = 0, half the others keep
e_ref = 0 as the pipeline does, the rest draw e_ref ~ U[-10°, 30°]). Each placement is framed
for its reference view (render.place: 90% fill, centred) and rendered from that view and from
`views` random cameras: elevation in [-10°, 45°] (half uniform in degrees, half uniform on the
sphere, as cameras.random_cameras), azimuth uniform. Camera azimuths are stored in the
placement's frame, where the reference camera is at azimuth 0, so Δazimuth = azimuth.

Held-out set: each catalog.HELD_OUT object at its catalog front (e_ref = 0) and the novel
views EVAL_VIEWS (the reference config's eval.novel_* grid), never the reference view itself.

Arrays: rgba uint8 [..., R, R, 4], RGB composited on white, alpha = coverage.
"""

import dataclasses
import hashlib
import json
from pathlib import Path

import numpy as np

from dc3d_jax.io import writers
from dc3d_jax.testbed import catalog, objects, procedural, render

EVAL_AZIMUTHS_DEG = (45.0, 90.0, 135.0, 180.0, 225.0, 270.0, 315.0)
EVAL_ELEVATIONS_DEG = (0.0, 30.0)
DATA_VERSION = 3   # bump when rendering or albedo changes: cached renders are then rebuilt


@dataclasses.dataclass(frozen=True)
class RenderSettings:
  resolution: int = 32
  supersample: int = 2
  instances: int = 10
  views: int = 9
  elevation_range_deg: tuple = (-10.0, 45.0)
  ref_elevation_range_deg: tuple = (-10.0, 30.0)
  seed: int = 0

  def key(self, names) -> str:
    text = json.dumps([DATA_VERSION, dataclasses.asdict(self), list(names)], sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def from_config(data) -> tuple[RenderSettings, tuple]:
  """A config's `data` section -> (render settings, training object names): catalog.TRAIN
  plus `data.procedural` generated objects (procedural.py; absent or 0: none)."""
  fields = {k: tuple(v) if isinstance(v, (list, tuple)) else v for k, v in dict(data).items()}
  count = int(fields.pop("procedural", 0))
  return RenderSettings(**fields), catalog.TRAIN + procedural.names(count)


def _to_uint8(rgba: np.ndarray) -> np.ndarray:
  return np.round(np.clip(rgba, 0.0, 1.0) * 255.0).astype(np.uint8)


def _elevations(rng, n: int, lo: float, hi: float) -> np.ndarray:
  """Half uniform in degrees, half uniform on the sphere (cameras._sample_elevation)."""
  u = rng.uniform(size=n)
  on_sphere = np.rad2deg(np.arcsin(np.sin(np.deg2rad(lo)) + u * (np.sin(np.deg2rad(hi)) -
                                                                  np.sin(np.deg2rad(lo)))))
  return np.where(rng.uniform(size=n) < 0.5, lo + u * (hi - lo), on_sphere)


def placements(name: str, settings: RenderSettings) -> tuple[np.ndarray, np.ndarray]:
  """[I] yaws and [I] reference elevations (degrees) of an object's training instances."""
  rng = np.random.default_rng([settings.seed, objects.albedo.object_seed(name)])
  n = settings.instances
  yaw = np.concatenate([[0.0], rng.uniform(-180.0, 180.0, n - 1)])
  lo, hi = settings.ref_elevation_range_deg
  ref_elev = np.where(np.arange(n) % 2 == 1, rng.uniform(lo, hi, n), 0.0)
  return yaw, ref_elev


def render_object(obj: render.ObjectModel, settings: RenderSettings) -> dict:
  """One object's training renders: rgba [I, 1 + K, R, R, 4] (view 0 = the reference view),
  elevation / azimuth [I, 1 + K] degrees, ref_elevation [I]."""
  rng = np.random.default_rng([settings.seed, 1, objects.albedo.object_seed(obj.name)])
  yaws, ref_elev = placements(obj.name, settings)
  out = {"rgba": [], "elevation": [], "azimuth": []}
  for yaw, e_ref in zip(yaws, ref_elev):
    k = settings.views
    elev = np.concatenate([[e_ref], _elevations(rng, k, *settings.elevation_range_deg)])
    azim = np.concatenate([[0.0], rng.uniform(-180.0, 180.0, k)])
    placed = render.place(obj.vertices, yaw, e_ref)
    images = render.render_views(obj, placed, elev, azim, settings.resolution,
                                 settings.supersample)
    out["rgba"].append(_to_uint8(images))
    out["elevation"].append(elev)
    out["azimuth"].append(azim)
  arrays = {key: np.stack(v) for key, v in out.items()}
  return {**arrays, "ref_elevation": ref_elev.astype(np.float32)}


def build_training_set(settings: RenderSettings, names=catalog.TRAIN, root=None,
                       cache_dir=None, progress=None) -> dict:
  """Renders every training object (each cached as cache_dir/objects-<key>/<name>.npz when a
  cache dir is given, keyed by the render settings alone: an interrupted build resumes, and a
  set that adds objects renders only the new ones). Refuses held-out names before reading
  any mesh."""
  names = catalog.check_training_names(names)
  parts = []
  for name in names:
    parts.append(cached_npz(None if cache_dir is None else
                         Path(cache_dir) / f"objects-{settings.key(())}" / f"{name}.npz",
                         lambda: render_object(objects.load_object(name, root), settings)))
    if progress is not None:
      progress(name)
  data = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
  data["object"] = np.repeat(np.arange(len(names)), settings.instances).astype(np.int32)
  data["names"] = np.array(names)
  return data


def cached_npz(path, build) -> dict:
  """build() once, stored at `path` (.npz, atomic); later calls read it. path None: no cache."""
  if path is not None and Path(path).is_file():
    with np.load(path) as f:
      return dict(f)
  data = build()
  if path is not None:
    with writers.atomic_path(path) as tmp:
      np.savez(tmp, **data)
  return data


def load_or_build(cache_dir, settings: RenderSettings, names=catalog.TRAIN, root=None,
                  progress=None) -> dict:
  """The training set from `cache_dir/renders-<key>.npz`, rendering it on the first call."""
  path = Path(cache_dir) / f"renders-{settings.key(names)}.npz"
  return cached_npz(path, lambda: build_training_set(settings, names, root, cache_dir, progress))


def build_heldout_set(settings: RenderSettings, names=catalog.HELD_OUT, root=None) -> dict:
  """ref rgba [N, R, R, 4] (catalog front, e_ref = 0), targets rgba [N, V, R, R, 4] at
  EVAL_VIEWS, elevation / azimuth [V] degrees."""
  elev, azim = (np.array(a, np.float32).ravel() for a in
                np.meshgrid(EVAL_ELEVATIONS_DEG, EVAL_AZIMUTHS_DEG, indexing="ij"))
  refs, targets = [], []
  for name in names:
    obj = objects.load_object(name, root)
    placed = render.place(obj.vertices, 0.0, 0.0)
    images = render.render_views(obj, placed, np.concatenate([[0.0], elev]),
                                 np.concatenate([[0.0], azim]), settings.resolution,
                                 settings.supersample)
    refs.append(_to_uint8(images[0]))
    targets.append(_to_uint8(images[1:]))
  return {"ref": np.stack(refs), "targets": np.stack(targets), "elevation": elev,
          "azimuth": azim, "names": np.array(names)}
