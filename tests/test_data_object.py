"""data.object: a ground-truth object (built in, or a testbed catalog object such as a held-out
one) is the run's reference image and scores the run."""

import numpy as np
import pytest

from configs import oracle
from dc3d_jax import errors, pipeline, reference
from dc3d_jax.testbed import dataset


def _config(**data):
  cfg = oracle.get_config()
  cfg.unlock()
  cfg.guidance.update(prior_2d="none", prior_3d="none")
  cfg.data.update(image_size=64, **data)
  return cfg


def test_held_out_object_is_rendered_as_the_testbed_frames_it(tmp_path):
  """The pipeline's reference of 'cow' (reference camera, rasterized from the ground-truth
  mesh) agrees with the testbed's own held-out reference view (dataset.build_heldout_set:
  placement, corner colours, its own renderer with 2x supersampling)."""
  cfg = _config(object="cow")
  cfg.workdir = str(tmp_path / "run")
  inputs = pipeline.preflight(cfg)
  rgba = inputs.reference["rgba"]
  assert inputs.ground_truth is not None and inputs.provenance["reference"] == {
      "oracle_object": "cow"}
  testbed = dataset.build_heldout_set(dataset.RenderSettings(resolution=64, supersample=2),
                                      names=("cow",))["ref"][0].astype(np.float32) / 255.0
  ours, theirs = rgba[..., 3] > 0.5, testbed[..., 3] > 0.5
  assert (ours & theirs).sum() / (ours | theirs).sum() > 0.95
  inside = ours & theirs
  assert np.abs(rgba[..., :3][inside] - testbed[..., :3][inside]).mean() < 0.05
  rows, cols = np.flatnonzero(ours.any(1)), np.flatnonzero(ours.any(0))
  longer = max(rows[-1] + 1 - rows[0], cols[-1] + 1 - cols[0])
  assert abs(longer - 0.9 * 64) <= 1.5     # framed like a recentred reference image


@pytest.mark.parametrize("data, guidance, match", [
    (dict(object="cow", image=__file__), {}, "either a reference image"),
    (dict(object="teapot"), {}, "unknown object 'teapot'"),
    (dict(object="proc-04x2"), {}, "unknown object 'proc-04x2'"),
    (dict(object="cow"), dict(prior_3d="oracle"), "the oracle prior knows only"),
])
def test_bad_object_settings_are_one_config_error(data, guidance, match):
  cfg = _config(**data)
  cfg.guidance.update(**guidance)
  with pytest.raises(errors.ConfigError, match=match):
    pipeline.validate(cfg)


def test_the_oracle_object_is_the_default_ground_truth():
  cfg = _config()
  assert reference.object_name(cfg) == ""          # no prior knows an object: stage 0
  cfg.guidance.prior_2d = "oracle"
  assert reference.object_name(cfg) == "primitives"


def test_a_generated_object_is_a_valid_ground_truth():
  """A generated validation object ('proc-NNNN', as eval_prior's --objects takes) passes the
  config check, and its ground truth is the generator's mesh."""
  from dc3d_jax.testbed import procedural
  cfg = _config(object="proc-0402")
  pipeline.validate(cfg)
  mesh = reference.ground_truth(cfg)
  assert mesh is not None
  faces = np.asarray(mesh.faces)
  real = faces[(faces != 0).any(axis=1)]           # padding faces are (0, 0, 0)
  assert len(real) == len(procedural.generate("proc-0402").faces)
