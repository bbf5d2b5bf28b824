"""The benchmark scripts run and write their JSON (no timing is asserted)."""

import json

import pytest

from benchmarks import coarse_nerf_step, eval_protocol, sds_step


def test_coarse_nerf_step_benchmark_writes_json(tmp_path):
  out = tmp_path / "step.json"
  record = coarse_nerf_step.main([
      "--out", str(out), "--config", "configs.oracle", "--res", "16", "--warmup", "1",
      "--repeats", "1", "--set", "coarse_nerf.field.grid.log2_table_size=10"])
  saved = json.loads(out.read_text())
  assert saved["resolution"] == 16 and saved["overrides"]["coarse_nerf.field.grid."
                                                           "log2_table_size"] == "10"
  for part in ("ref", "guidance"):
    assert saved[part]["median_s"] > 0 and saved[part]["runs"] == 1
    assert 0.0 < saved[part]["kept_frac"] <= 1.0
  assert record["host_peak_rss_bytes"] > 0


def test_neus_step_benchmark_writes_json(tmp_path):
  out = tmp_path / "neus.json"
  coarse_nerf_step.main([
      "--stage", "coarse_neus", "--out", str(out), "--config", "configs.oracle", "--res", "16",
      "--warmup", "1", "--repeats", "1", "--set", "coarse_nerf.field.grid.log2_table_size=10"])
  saved = json.loads(out.read_text())
  assert saved["benchmark"] == "coarse_neus_step" and saved["resolution"] == 16
  for part in ("ref", "guidance"):
    assert saved[part]["median_s"] > 0 and 0.0 < saved[part]["kept_frac"] <= 1.0


def test_geometry_step_benchmark_writes_json(tmp_path):
  from benchmarks import geometry_step
  out = tmp_path / "geometry.json"
  geometry_step.main(["--out", str(out), "--config", "configs.oracle", "--res", "16",
                      "--warmup", "1", "--repeats", "1", "--variants", "rgb",  # one compile
                      "--set", "geometry.tets.resolution=8",
                      "--set", "coarse_nerf.field.grid.log2_table_size=10"])
  saved = json.loads(out.read_text())
  assert saved["tet_resolution"] == 8 and saved["resolution"] == 16 and "normal" not in saved
  row = saved["rgb"]
  assert row["median_s"] > 0 and row["cpu_s_per_call"] > 0 and row["mesh_faces"] > 0
  assert row["mesh_overflow"] == 0 and row["raster_overflow"] == 0


def test_sds_step_benchmark_runs_both_models_and_torch(tmp_path, monkeypatch):
  tiny_unet = dict(sample_size=8, in_channels=4, out_channels=4, layers_per_block=1,
                   block_out_channels=(32, 64), attention_head_dim=8, cross_attention_dim=32,
                   down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                   up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"))
  tiny_vae = dict(sds_step.SD_VAE, layers_per_block=1, block_out_channels=(32, 32, 32, 32))
  setups = {"sd": dict(unet=tiny_unet, render=64, context=(77, 32)),   # 8x8 latents
            "zero123": dict(unet=dict(tiny_unet, in_channels=8), render=64, context=(1, 32))}
  monkeypatch.setattr(sds_step, "SETUPS", setups)
  monkeypatch.setattr(sds_step, "SD_VAE", tiny_vae)
  for model in ("sd", "zero123"):
    out = tmp_path / f"{model}.json"
    record = sds_step.main(["--out", str(out), "--model", model, "--repeats", "1", "--torch"])
    saved = json.loads(out.read_text())
    assert saved["model"] == model and saved["jax"]["median_s"] > 0
    assert saved["torch"]["median_s"] > 0 and record["torch_over_jax"] > 0


def test_eval_protocol_benchmark_writes_json(tmp_path):
  out = tmp_path / "eval.json"
  eval_protocol.main(["--out", str(out), "--res", "16", "--views", "2", "--points", "2000",
                      "--no-lpips"])
  saved = json.loads(out.read_text())
  assert saved["orbit_views"] == 2 and saved["seconds"]["pairs_scored"] == 1 + 8
  assert saved["seconds"]["total"] > 0 and "lpips" not in saved["seconds"]


def test_marching_tets_benchmark_writes_json(tmp_path):
  from benchmarks import marching_tets
  out = tmp_path / "mt.json"
  marching_tets.main(["--out", str(out), "--resolutions", "8", "--repeats", "1",
                      "--parts", "extract"])             # one compile; the others are alike
  (row,) = json.loads(out.read_text())["rows"]
  assert row["num_tets"] == 6 * 4**3 and row["mesh_faces"] > 0 and not row["overflow"]
  assert row["extract_seconds"] > 0 and "consistency_grad_seconds" not in row


def test_rasterize_benchmark_writes_json(tmp_path):
  from benchmarks import rasterize
  out = tmp_path / "raster.json"
  rasterize.main(["--out", str(out), "--res", "24", "--faces", "60", "--repeats", "1"])
  saved = json.loads(out.read_text())
  run = saved["runs"][0]
  assert saved["backend"] == "jax" and run["faces"] == 48 and run["overflow"] == 0
  assert run["grad_finite"] and 0.2 < run["covered_fraction"] < 0.8
  assert run["forward"]["median_s"] > 0 and run["fwd_bwd"]["cpu_s_per_call"] > 0


@pytest.mark.filterwarnings("ignore:`LoRALinearLayer` is deprecated:FutureWarning")
def test_bsd_step_benchmark_runs_jax_and_torch(tmp_path, monkeypatch):
  """A one-level UNet and a one-block VAE (8x8 latents) in place of SD 2.1-base; lora mode,
  BSD step (every mode x step pair was run by hand with tiny models, benchmarks/RESULTS.md)."""
  from benchmarks import bsd_step
  unet = dict(sample_size=8, in_channels=4, out_channels=4, layers_per_block=1,
              block_out_channels=(32,), attention_head_dim=8, cross_attention_dim=32,
              down_block_types=("CrossAttnDownBlock2D",), up_block_types=("CrossAttnUpBlock2D",))
  vae = dict(bsd_step.SD_VAE, layers_per_block=1, block_out_channels=(32,),
             down_block_types=("DownEncoderBlock2D",), up_block_types=("UpDecoderBlock2D",))
  monkeypatch.setattr(bsd_step, "SETUP", dict(unet=unet, vae=vae, render=16, vae_size=8,
                                              context=(7, 32)))
  out = tmp_path / "bsd.json"
  record = bsd_step.main(["--out", str(out), "--mode", "lora", "--step", "bsd",
                          "--repeats", "1", "--torch"])
  saved = json.loads(out.read_text())
  assert saved["jax"]["median_s"] > 0 and saved["torch"]["median_s"] > 0
  assert saved["expected_bytes"]["trained_parameters_per_copy"] < saved["expected_bytes"][
      "unet_parameters"] and record["compiled"]["temp_size_in_bytes"] > 0
