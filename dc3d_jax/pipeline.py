"""Runs the configured stages in order with explicit hand-offs, then evaluates the result.

A run keeps this order, so that a failure leaves the work dir as it found it:
  1. `preflight` checks everything and writes nothing: the whole config (config_check, with
     each stage's rules from STAGES), the work dir path, the models (files present, headers
     intact), the reference image and depth (loaded, preprocessed, mask not empty).
  2. The work dir's lock is taken (workdir.Lock: one process per work dir). A work dir made
     from other inputs (provenance.json: reference hash, prompt, shape keys) is refused unless
     `restart`, which moves it aside. A run whose metrics.json was made by this very config is
     reported complete and nothing is redone.
  3. The models are loaded (a damaged file stops here, before anything is written).
  4. Then config.json (a diff against the previous config is printed), provenance.json and
     reference/ are written, and the stages run; each resumes from its newest checkpoint.
Work dir: docs/ARCHITECTURE.md "Work directory".
"""

import dataclasses
import errno
import hashlib
import json
import time
from pathlib import Path
from types import ModuleType
from typing import Callable

import jax
from tqdm.auto import tqdm

from dc3d_jax import config_check, errors, reference, results, workdir
from dc3d_jax.core import config_rules, devices, rng
from dc3d_jax.geometry import isosurface
from dc3d_jax.guidance import registry
from dc3d_jax.io import digest, writers
from dc3d_jax.priors import resolve, state_dicts, testbed
from dc3d_jax.stages import coarse_nerf, coarse_nerf_rules, coarse_nerf_run, coarse_neus
from dc3d_jax.stages import coarse_neus_rules, coarse_neus_run, loop, runner
from dc3d_jax.stages import geometry, geometry_rules, geometry_run
from dc3d_jax.stages import texture, texture_rules, texture_run


@dataclasses.dataclass(frozen=True)
class Stage:
  """A stage as the pipeline sees it: its runner, its config rules and its module (NAME,
  settings_from_config, init_state, render_image: what runner.load_final needs)."""
  run: Callable                 # (RunContext, previous Handoff or None) -> Handoff
  rules: config_rules.Section   # ranges, meanings and shape keys of cfg.<stage>
  module: ModuleType


# In pipeline order: each stage starts from the final state of the one before it, handed over
# in process, or read from <init_from or this work dir>/<previous stage>/ (runner.load_final).
STAGES = {"coarse_nerf": Stage(coarse_nerf_run.run, coarse_nerf_rules.RULES, coarse_nerf),
          "coarse_neus": Stage(coarse_neus_run.run, coarse_neus_rules.RULES, coarse_neus),
          "geometry": Stage(geometry_run.run, geometry_rules.RULES, geometry),
          "texture": Stage(texture_run.run, texture_rules.RULES, texture)}


def predecessor(stage: str) -> str | None:
  names = list(STAGES)
  i = names.index(stage)
  return names[i - 1] if i > 0 else None


def predecessor_source(cfg, stage: str, path: Path) -> Path:
  """Where `stage` finds its predecessor's final state: <stage>.init_from, else this work dir."""
  init_from = cfg[stage].get("init_from", "")
  return Path(init_from) if init_from else Path(path)


@dataclasses.dataclass
class RunContext:
  """What every stage runner receives."""
  cfg: object
  workdir: Path
  root_key: jax.Array
  reference: dict
  ground_truth: object      # primitives.Mesh of data.object / the oracle's object, else None
  parallel: devices.DataParallel
  priors: registry.PriorStore
  progress: bool = True


def config_sections() -> tuple:
  return (*config_check.run_sections(STAGES), *(s.rules for s in STAGES.values()))


def _check_stage_order(cfg) -> None:
  names, chosen = list(STAGES), list(cfg.stages)
  first = names.index(chosen[0])
  if chosen != names[first:first + len(chosen)]:
    raise errors.ConfigError(
        f"config stages={tuple(chosen)}: stages run in the order {tuple(names)} and each starts "
        "from the one before it, so give a contiguous run of them in that order, e.g. "
        f"--config.stages={','.join(names[first:first + 2])}")


def validate(cfg) -> None:
  """The one config validation pass (ConfigError on the first bad key)."""
  config_check.validate(cfg, config_sections())
  _check_stage_order(cfg)
  try:
    devices.views_per_step(cfg.data.batch_size, jax.local_device_count())
  except ValueError as err:
    raise errors.ConfigError(str(err)) from None


def describe_config(cfg) -> str:
  return config_check.describe(cfg, config_sections())


# ------------------------------------------------------------------------------ preflight

@dataclasses.dataclass
class Inputs:
  """What preflight found (nothing written yet)."""
  workdir: Path
  reference: dict | None     # None: stage 0 draws it once the models are loaded
  ground_truth: object
  models: dict               # resolve kind -> model argument
  provenance: dict


def _models(cfg) -> dict:
  g = cfg.guidance
  stage0 = not reference.object_name(cfg) and not cfg.data.image
  out = {}
  if g.prior_2d == "sd" or stage0:
    out["stable_diffusion"] = g.sd_model
  if g.prior_2d == "deepfloyd":
    out["deepfloyd"] = g.if_model
  if g.prior_3d == "zero123":
    out["zero123"] = g.zero123_model
    if g.zero123_image_encoder:
      out["clip_vision"] = g.zero123_image_encoder
  return out


def _texture_bsd_base(cfg) -> str | None:
  """texture.prior.base when the texture stage runs with BSD, else None."""
  if "texture" not in cfg.stages or cfg.texture.guidance.kind != "bsd":
    return None
  return cfg.texture.prior.base


def _texture_models(cfg) -> dict:
  """The frozen SD base of the texture stage's BSD, when that stage runs BSD on SD."""
  if _texture_bsd_base(cfg) != "sd":
    return {}
  return {"stable_diffusion": cfg.texture.prior.model}


def _check_models(models: dict) -> None:
  """Every model resolves to local files whose headers are intact (no tensors read)."""
  for kind, argument in models.items():
    found = resolve.resolve_model(argument, kind)
    for role, path in found.files.items():
      if path is not None and (role == "checkpoint" or role.endswith("weights")):
        state_dicts.check_weights_file(path)


def _render_sizes(cfg) -> set:
  sizes = {cfg.eval.resolution}
  for stage in cfg.stages:
    train = cfg[stage].get("train", {})
    sizes.update(train.get("resolutions", ()))
    if "resolution" in cfg[stage]:
      sizes.add(cfg[stage].resolution)
  return sizes


def _check_reference(cfg, ref: dict) -> None:
  """The mask must survive the resize to every render size the run uses."""
  for size in sorted(_render_sizes(cfg)):
    if not reference.at_resolution(ref, size)["mask"].any():
      raise errors.InputError(
          f"{ref['source']}: the object's mask is empty at the {size}x{size} render size; "
          "make the object larger in the image (data.recenter=True, data.fill) or raise the "
          "render resolution")


def _check_predecessor(cfg, path: Path) -> None:
  """The first stage's predecessor (if any) must have finished where the run looks for it."""
  first = cfg.stages[0]
  if (prev := predecessor(first)) is None:
    return
  source = predecessor_source(cfg, first, path)
  if loop.final_step(source / prev) is None:
    raise errors.ResumeError(runner.missing_predecessor(prev, source))


def preflight(cfg) -> Inputs:
  """Checks the config, work dir path, models and reference; writes nothing."""
  validate(cfg)
  path = workdir.check_path(cfg.workdir)
  models = _models(cfg)
  _check_models(models)
  _check_models(_texture_models(cfg))
  priors = {}
  if "testbed" in (cfg.guidance.prior_3d, _texture_bsd_base(cfg)):   # small: read it whole
    weights = testbed.resolve(cfg.guidance.testbed_model)
    testbed.load_model(weights)
    priors["testbed_sha256"] = digest.file_sha256(weights)   # retrained weights: not a resume
  gt = reference.ground_truth(cfg)
  ref = reference.load(cfg, gt)
  if ref is not None:
    _check_reference(cfg, ref)
  _check_predecessor(cfg, path)
  shape = config_check.shape_config(cfg, config_sections())
  prov = {"reference": reference.identity(cfg, gt), "prompt": cfg.prompt, "shape": shape,
          "priors": priors}
  return Inputs(path, ref, gt, models, prov)


def check(cfg) -> dict:
  """--check: everything a run checks before it writes, plus the work dir's state."""
  inputs = preflight(cfg)
  workdir.check_free(inputs.workdir)
  workdir.refuse_if_different(inputs.workdir, inputs.provenance)
  return {"workdir": str(inputs.workdir), "models": inputs.models,
          "reference": inputs.reference["source"] if inputs.reference else "stage 0",
          "complete": _completed(cfg, inputs.workdir) is not None}


# ---------------------------------------------------------------------------- the work dir

def _config_diff(old: dict, new: dict, prefix: str = "") -> list:
  keys = sorted(set(old) | set(new))
  out = []
  for k in keys:
    a, b = old.get(k), new.get(k)
    if isinstance(a, dict) and isinstance(b, dict):
      out += _config_diff(a, b, f"{prefix}{k}.")
    elif a != b:
      out.append(f"{prefix}{k}: {a!r} -> {b!r}")
  return out


def _config_json(cfg) -> dict:
  return json.loads(cfg.to_json())


def _config_sha(cfg) -> str:
  """The hash a finished run's metrics.json keeps: the config without the sections of stages
  after the last one run (nothing reads them; earlier stages' sections stay, since loading a
  predecessor's state reads its settings)."""
  conf = _config_json(cfg)
  names = list(STAGES)
  for later in names[names.index(cfg.stages[-1]) + 1:]:
    conf.pop(later, None)
  return hashlib.sha256(json.dumps(conf, sort_keys=True).encode()).hexdigest()


def write_config(cfg, path: Path) -> None:
  """Writes config.json, printing how it differs from a previous run's."""
  path = Path(path) / "config.json"
  new = _config_json(cfg)
  if path.exists():
    diff = _config_diff(json.loads(path.read_text()), new)
    if diff:
      tqdm.write(f"note: {path} differs from this run's config; resuming with the new one:\n  "
                 + "\n  ".join(diff[:20]))
  writers.save_json(path, new)


def _completed(cfg, path: Path) -> dict | None:
  """The metrics of a finished run of exactly this config, else None."""
  metrics = Path(path) / "metrics.json"
  if not metrics.exists():
    return None
  try:
    results = json.loads(metrics.read_text())
  except ValueError:
    return None
  return results if results.get("config_sha256") == _config_sha(cfg) else None


def _load_models(store: registry.PriorStore, models: dict) -> None:
  if "stable_diffusion" in models:
    store.stable_diffusion()
  if "zero123" in models:
    store.zero123()
  if "deepfloyd" in models:
    store.deepfloyd()


def _disk_error(err: BaseException, path: Path) -> errors.WorkdirError | None:
  """A full disk, a read-only file system or a permission error, as one WorkdirError."""
  if workdir.is_disk_full(err):
    return errors.WorkdirError(f"{path}: no space left on device while writing the run's "
                               "outputs; free some space (or choose another --config.workdir) "
                               "and re-run the same command to resume")
  if isinstance(err, OSError) and err.errno in (errno.EACCES, errno.EROFS):
    return errors.WorkdirError(f"{err.filename or path}: cannot write ({err.strerror}); "
                               "choose a writable --config.workdir")
  return None


# ------------------------------------------------------------------------------ the run

def make_context(cfg, inputs: Inputs, store, *, progress: bool = True) -> RunContext:
  """Writes provenance.json and reference/ (after config.json); the context every stage gets."""
  path = inputs.workdir
  workdir.write_provenance(path, inputs.provenance)
  ref = inputs.reference or reference.from_stage0(cfg, path, store)
  reference.save(ref, path)
  return RunContext(cfg=cfg, workdir=path, root_key=rng.root_key(cfg.seed), reference=ref,
                    ground_truth=inputs.ground_truth, parallel=devices.data_parallel(),
                    priors=store, progress=progress)


def open_context(cfg, *, progress: bool = True) -> RunContext:
  """The checks, models, config.json and context of `run`, without the lock and the provenance
  check: for tests and notebooks that drive stages one at a time."""
  inputs = preflight(cfg)
  store = registry.PriorStore(cfg.guidance, cache_dir=inputs.workdir / "cache")
  _load_models(store, inputs.models)
  write_config(cfg, inputs.workdir)
  return make_context(cfg, inputs, store, progress=progress)


def _stage_turntable(ctx: RunContext, stage: str, handoff, *, last: bool):
  """<stage>/turntable.mp4 (kept from an earlier invocation unless this is the last stage,
  whose orbit renders the evaluation needs)."""
  path = ctx.workdir / stage / "turntable.mp4"
  if last or not path.exists():
    return results.stage_turntable(path, handoff.render_fn, ctx.cfg)
  return None


def _finish(ctx: RunContext, stage: str, handoff) -> dict:
  """The last stage's turntable, mesh, export and metrics."""
  cfg = ctx.cfg
  renders = _stage_turntable(ctx, stage, handoff, last=True)
  out = {}
  try:
    mesh = results.final_mesh(STAGES[stage].module, handoff, cfg.export)
  except isosurface.NoSurfaceError as err:
    tqdm.write(f"note: [{stage}] {err}: no mesh to export or score")
    mesh, out["export"] = None, f"skipped: {err}"
  if mesh is not None and cfg.export.enabled:
    export_dir = ctx.workdir / "export"
    out["export"] = results.export_asset(export_dir, STAGES[stage].module, handoff, mesh,
                                         cfg.export)
    writers.copy_file(ctx.workdir / stage / "turntable.mp4", export_dir / "turntable.mp4")
  out.update(results.evaluate(ctx, handoff, renders, mesh))
  return out


def _train_and_evaluate(ctx: RunContext, started: float) -> dict:
  cfg = ctx.cfg
  handoff = None
  for stage in cfg.stages:
    if handoff is None and (prev := predecessor(stage)) is not None:
      source = predecessor_source(cfg, stage, ctx.workdir)
      handoff = runner.load_final(ctx, STAGES[prev].module, source)
    handoff = STAGES[stage].run(ctx, handoff)
    if stage != cfg.stages[-1]:
      _stage_turntable(ctx, stage, handoff, last=False)
  out = _finish(ctx, cfg.stages[-1], handoff)
  out.update(stage=cfg.stages[-1], steps=int(handoff.state.step),
             reference=ctx.reference["source"], devices=ctx.parallel.n_devices,
             device_kind=jax.devices()[0].device_kind, config_sha256=_config_sha(cfg),
             wall_time_s=round(workdir.total_wall_s(ctx.workdir) + time.time() - started, 1))
  writers.save_json(ctx.workdir / "metrics.json", out)
  return out


def _has_content(path: Path) -> bool:
  return path.is_dir() and any(p.name != workdir.LOCK for p in path.iterdir())


def run(cfg, *, progress: bool = True, restart: bool = False) -> dict:
  """Runs cfg.stages; returns (and writes to <workdir>/metrics.json) the final metrics.

  restart: start afresh, moving an existing work dir aside (<workdir>.old-<time>)."""
  started = time.time()
  inputs = preflight(cfg)
  lock = workdir.Lock(inputs.workdir).acquire()
  committed, outcome = False, "error"
  try:
    if not restart:
      workdir.refuse_if_different(inputs.workdir, inputs.provenance)
      if (done := _completed(cfg, inputs.workdir)) is not None:
        outcome = "complete"
        tqdm.write(f"{inputs.workdir} is complete: this config already ran to the end; its "
                   "metrics follow (--restart starts afresh)")
        return done
    store = registry.PriorStore(cfg.guidance, cache_dir=inputs.workdir / "cache")
    _load_models(store, inputs.models)
    if restart and _has_content(inputs.workdir):
      tqdm.write(f"--restart: moved the previous run to {lock.move_aside()}")
      lock = workdir.Lock(inputs.workdir).acquire()
    write_config(cfg, inputs.workdir)
    committed = True   # from here on the work dir holds this run
    results = _train_and_evaluate(make_context(cfg, inputs, store, progress=progress), started)
    outcome = "done"
    return results
  except (errors.Interrupted, KeyboardInterrupt):
    outcome = "interrupted"
    raise
  except Exception as err:
    outcome = f"error: {type(err).__name__}"
    mapped = _disk_error(err, inputs.workdir)
    if mapped is not None:
      raise mapped from err
    raise
  finally:
    if committed and outcome != "complete":
      try:
        workdir.log_invocation(inputs.workdir, started, outcome)
      except OSError:
        pass   # a full disk: the invocation's time is not counted
    lock.release(remove_created=not committed)
