"""The CLI with real model loading: tiny random models written by PyTorch diffusers /
transformers `save_pretrained` (not by dc3d-jax), passed by flags, guide the coarse stage.

  python -m experiments.run --config=configs/dreamcraft3d.py:quick
      --config.guidance.sd_model=DIR --config.guidance.zero123_model=DIR
      --config.data.image=IMG --config.prompt=TEXT --config.workdir=DIR
"""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from conftest import ROOT

WORDS = ("a", "red", "toy", "photo", "of", "front", "side", "back", "overhead", "view")


def _tokenizer(folder):
  """A CLIP BPE tokenizer over single characters (no merges): every prompt tokenizes."""
  from transformers import CLIPTokenizer
  letters = "abcdefghijklmnopqrstuvwxyz,."
  tokens = ["<|startoftext|>", "<|endoftext|>", "!"]
  tokens += list(letters) + [c + "</w>" for c in letters]
  (folder / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(tokens)}))
  (folder / "merges.txt").write_text("#version: 0.2\n")
  return CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"),
                       pad_token="!", model_max_length=77)


def _unet(in_channels, context_dim):
  from diffusers import UNet2DConditionModel
  return UNet2DConditionModel(
      sample_size=8, in_channels=in_channels, out_channels=4, layers_per_block=1,
      block_out_channels=(32, 64), down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
      up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=context_dim,
      attention_head_dim=8)


def _vae():
  from diffusers import AutoencoderKL
  return AutoencoderKL(block_out_channels=(32, 64), latent_channels=4,
                       down_block_types=("DownEncoderBlock2D",) * 2,
                       up_block_types=("UpDecoderBlock2D",) * 2)


def _write_sd(folder):
  from diffusers import DDPMScheduler, StableDiffusionPipeline
  from transformers import CLIPTextConfig, CLIPTextModel
  torch.manual_seed(0)
  folder.mkdir()
  text = CLIPTextModel(CLIPTextConfig(
      vocab_size=60, hidden_size=32, intermediate_size=37, num_hidden_layers=2,
      num_attention_heads=4, max_position_embeddings=77, pad_token_id=2))
  scheduler = DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)
  pipe = StableDiffusionPipeline(vae=_vae(), text_encoder=text, tokenizer=_tokenizer(folder),
                                 unet=_unet(4, 32), scheduler=scheduler, safety_checker=None,
                                 feature_extractor=None, requires_safety_checker=False)
  pipe.save_pretrained(folder)


def _write_zero123(folder):
  """The layout of the public diffusers conversions (unet/, vae/, image_encoder/,
  cc_projection/, scheduler/, feature_extractor/, model_index.json)."""
  from diffusers import ConfigMixin, DDIMScheduler, ModelMixin
  from diffusers.configuration_utils import register_to_config
  from transformers import (CLIPImageProcessor, CLIPVisionConfig,
                            CLIPVisionModelWithProjection)

  class CCProjection(ModelMixin, ConfigMixin):
    @register_to_config
    def __init__(self, in_channel=36, out_channel=32):
      super().__init__()
      self.projection = torch.nn.Linear(in_channel, out_channel)

  torch.manual_seed(1)
  _unet(8, 32).save_pretrained(folder / "unet")
  _vae().save_pretrained(folder / "vae")
  CLIPVisionModelWithProjection(CLIPVisionConfig(
      hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4,
      image_size=32, patch_size=8, projection_dim=32, hidden_act="quick_gelu")
  ).save_pretrained(folder / "image_encoder")
  CCProjection().save_pretrained(folder / "cc_projection")
  DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.00085,
                beta_end=0.012).save_pretrained(folder / "scheduler")
  CLIPImageProcessor(size=32, crop_size=32).save_pretrained(folder / "feature_extractor")
  index = {"_class_name": "Zero1to3StableDiffusionPipeline", "_diffusers_version": "0.39.0",
           "unet": ["diffusers", "UNet2DConditionModel"],
           "vae": ["diffusers", "AutoencoderKL"],
           "image_encoder": ["transformers", "CLIPVisionModelWithProjection"],
           "cc_projection": ["pipeline_zero1to3", "CCProjection"],
           "scheduler": ["diffusers", "DDIMScheduler"],
           "feature_extractor": ["transformers", "CLIPImageProcessor"]}
  (folder / "model_index.json").write_text(json.dumps(index))


@pytest.fixture(scope="module")
def models(tmp_path_factory):
  root = tmp_path_factory.mktemp("models")
  _write_sd(root / "sd")
  _write_zero123(root / "zero123")
  return root


def _reference_png(path):
  from dc3d_jax import cameras, reference
  from dc3d_jax.io import writers
  from dc3d_jax.priors import oracle
  views = cameras.ViewSettings()
  rgba, _ = reference.render_ground_truth(oracle.ground_truth_mesh("primitives"), views, 64)
  writers.save_png(path, rgba)
  return path


def _run(args, workdir):
  cmd = [sys.executable, "-m", "experiments.run", "--config=configs/dreamcraft3d.py:quick",
         f"--config.workdir={workdir}", "--config.coarse_nerf.train.resolutions=(32,)",
         "--config.coarse_nerf.train.resolution_milestones=()", *args]
  proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900)
  assert proc.returncode == 0, proc.stderr[-4000:]
  logged = [json.loads(line) for line in
            (workdir / "coarse_nerf" / "metrics.jsonl").read_text().splitlines()]
  return logged, json.loads((workdir / "metrics.json").read_text())


def test_cli_hybrid_guidance_with_models_given_by_flags(models, tmp_path):
  image = _reference_png(tmp_path / "toy_rgba.png")
  logged, final = _run([f"--config.guidance.sd_model={models / 'sd'}",
                        f"--config.guidance.zero123_model={models / 'zero123'}",
                        f"--config.data.image={image}", "--config.prompt=a red toy"],
                       tmp_path / "run")
  guided = [r for r in logged if "loss/sds_2d" in r]
  assert guided and all("loss/sds_3d" in r for r in guided)
  for r in guided:
    assert np.isfinite(r["loss/sds_2d"]) and r["loss/sds_2d"] > 0
    assert np.isfinite(r["loss/sds_3d"]) and r["loss/sds_3d"] > 0
    assert 0 <= r["sds_3d/t"] <= 1000
  assert final["steps"] == 6 and np.isfinite(final["ref_view_psnr"])
  assert "novel_view_psnr" not in final          # no ground truth for a user image


def test_cli_stage0_draws_the_reference_from_the_prompt(models, tmp_path):
  workdir = tmp_path / "run"
  _, final = _run([f"--config.guidance.sd_model={models / 'sd'}",
                   "--config.guidance.prior_3d=none", "--config.prompt=a red toy",
                   "--config.coarse_nerf.train.steps=1"], workdir)
  generated = sorted((workdir / "reference").glob("generated_*.png"))
  assert len(generated) == 1 and (workdir / "reference" / "rgba.png").is_file()
  assert final["reference"].startswith("stage 0: 'a red toy'")
