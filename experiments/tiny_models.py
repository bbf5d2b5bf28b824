"""Tiny random-weight Stable Diffusion and Zero123 models: the one home of the test fixtures.

The models are built with the PyTorch classes the real checkpoints come from (diffusers
UNet2DConditionModel / AutoencoderKL, transformers CLIPTextModel /
CLIPVisionModelWithProjection) and saved as
  - a diffusers folder, weights in `.safetensors` ("diffusers") or `.bin` ("diffusers_bin");
    Stable Diffusion as an ε- or a v-prediction model (`prediction_type`, SD 2.1-768 style);
  - an original LDM checkpoint, `.ckpt` ("ldm_ckpt") or `.safetensors` ("ldm_safetensors"),
    with the key names of `stable_zero123.ckpt` / `zero123-xl.ckpt`: model.diffusion_model.*,
    first_stage_model.*, cond_stage_model.model.visual.* (OpenAI CLIP), cc_projection.*,
    and optionally the LitEma copy model_ema.*.
The diffusers -> LDM key mapping (experiments/tiny_ldm_keys.py) is the inverse of what
diffusers' single-file converters read, so loading an LDM file can be checked against the
diffusers folder.

Tests that need no PyTorch reference take `flax_stable_diffusion`: the same tiny shapes as
Flax modules with random parameters drawn in NumPy (no PyTorch, no initialiser compiles).
`zero123_source` hands in-memory PyTorch Zero123 modules to the library's own builder.

The library does not use this module; tests and the README's commands do.

Run:  python -m experiments.tiny_models --kind sd|zero123 \
        --format diffusers|diffusers_bin|ldm_ckpt|ldm_safetensors \
        [--prediction-type epsilon|v_prediction] OUT
"""

import argparse
import json
import tempfile
from pathlib import Path

from dc3d_jax.priors.models import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD
# save_ldm_checkpoint is also the tests' LDM file writer, through this module.
from experiments.tiny_ldm_keys import save_ldm_checkpoint, zero123_ldm_state_dict

FORMATS = ("diffusers", "diffusers_bin", "ldm_ckpt", "ldm_safetensors")

# Words of the prompts the pipeline builds (view-dependent suffixes, demo prompts): each
# becomes one token. Other words fall apart into single characters, which are tokens too.
TINY_WORDS = (
    "a", "an", "the", "of", "on", "in", "with", "and", "photo", "picture", "image",
    "render", "3d", "model", "front", "side", "back", "overhead", "bottom", "view",
    "red", "green", "blue", "yellow", "white", "black", "toy", "car", "chair", "cat",
    "dog", "robot", "teddy", "bear", "cup", "high", "quality", "detailed", "dslr", "zoomed",
    "out", "animal", "wooden", "background", "blurry", ",", ".",
)

TINY_UNET = dict(
    sample_size=8, block_out_channels=(32, 64), layers_per_block=1,
    down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
    cross_attention_dim=32, attention_head_dim=8, norm_num_groups=32,
)
# Four blocks, like the SD kl-f8 VAE: 8x down-sampling, 4 latent channels.
TINY_VAE = dict(
    block_out_channels=(32, 32, 64, 64), layers_per_block=1, latent_channels=4,
    down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
    norm_num_groups=32, sample_size=64,
)
# OpenAI CLIP has width // 64 heads; 128 wide gives 2, so an LDM file can say it too.
TINY_CLIP_VISION = dict(
    hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=2,
    image_size=32, patch_size=8, projection_dim=32, hidden_act="quick_gelu",
)
# DeepFloyd IF stage I's UNet options (unet/config.json of IF-I-XL-v1.0) at tiny widths:
# the same block types, added-KV attention, text_proj, text-time embedding, scale-shift
# resnets with their own up/down-sampling, GELU, 6 output channels. Unlike IF-I-XL, the groups
# (16) differ from the cross-attention norm's fixed 32, so a mix-up would show.
TINY_IF_UNET = dict(
    sample_size=16, in_channels=3, out_channels=6, block_out_channels=(32, 64),
    layers_per_block=2,
    down_block_types=("ResnetDownsampleBlock2D", "SimpleCrossAttnDownBlock2D"),
    up_block_types=("SimpleCrossAttnUpBlock2D", "ResnetUpsampleBlock2D"),
    mid_block_type="UNetMidBlock2DSimpleCrossAttn", attention_head_dim=16,
    cross_attention_dim=32, encoder_hid_dim=24, encoder_hid_dim_type="text_proj",
    addition_embed_type="text", addition_embed_type_num_heads=2,
    cross_attention_norm="group_norm", resnet_time_scale_shift="scale_shift", act_fn="gelu",
    norm_num_groups=16, upcast_attention=False, use_linear_projection=False,
)
# IF's scheduler (scheduler/scheduler_config.json of IF-I-XL-v1.0).
IF_SCHEDULE = dict(beta_schedule="squaredcos_cap_v2", num_train_timesteps=1000,
                   prediction_type="epsilon", variance_type="learned_range", thresholding=True,
                   dynamic_thresholding_ratio=0.95, sample_max_value=1.5)
SCALED_LINEAR = dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                     num_train_timesteps=1000, prediction_type="epsilon", clip_sample=False)


def _randomize(module, seed: int, scale: float = 0.02):
  """Adds noise to every parameter, so zero-initialised biases and unit norms are tested."""
  import torch
  gen = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for p in module.parameters():
      p.add_(scale * torch.randn(p.shape, generator=gen, dtype=p.dtype))
  return module.eval()


def tiny_tokenizer_files(folder) -> Path:
  """Writes a hand-made CLIP BPE (vocab.json, merges.txt) in which TINY_WORDS are tokens."""
  from transformers.models.clip.tokenization_clip import bytes_to_unicode
  folder = Path(folder)
  folder.mkdir(parents=True, exist_ok=True)
  chars = list(bytes_to_unicode().values())
  vocab = chars + [c + "</w>" for c in chars]
  merges = []
  for word in TINY_WORDS:
    pieces = list(word[:-1]) + [word[-1] + "</w>"]
    while len(pieces) > 1:  # left-to-right merges: p h -> ph, ph o -> pho, ...
      merges.append(f"{pieces[0]} {pieces[1]}")
      pieces = [pieces[0] + pieces[1]] + pieces[2:]
      vocab.append(pieces[0])
  vocab = list(dict.fromkeys(vocab + ["<|startoftext|>", "<|endoftext|>"]))
  (folder / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(vocab)}))
  merges = list(dict.fromkeys(merges))
  (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
  return folder


def tiny_tokenizer(folder):
  from transformers import CLIPTokenizer
  folder = tiny_tokenizer_files(folder)
  return CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"),
                       model_max_length=77)


def tiny_unet(in_channels: int, use_linear_projection: bool, seed: int):
  import torch
  from diffusers import UNet2DConditionModel
  torch.manual_seed(seed)
  unet = UNet2DConditionModel(in_channels=in_channels, out_channels=4,
                              use_linear_projection=use_linear_projection, **TINY_UNET)
  return _randomize(unet, seed)


def tiny_vae(seed: int):
  import torch
  from diffusers import AutoencoderKL
  torch.manual_seed(seed)
  return _randomize(AutoencoderKL(**TINY_VAE), seed + 1)


def _text_config(vocab_size: int, eos_token_id: int) -> dict:
  return dict(vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
              num_attention_heads=4, max_position_embeddings=77, projection_dim=32,
              hidden_act="gelu", bos_token_id=vocab_size - 2, eos_token_id=eos_token_id,
              pad_token_id=eos_token_id)


def tiny_text_encoder(vocab_size: int, eos_token_id: int, seed: int):
  import torch
  from transformers import CLIPTextConfig, CLIPTextModel
  torch.manual_seed(seed)
  config = CLIPTextConfig(**_text_config(vocab_size, eos_token_id))
  return _randomize(CLIPTextModel(config), seed + 2)


def tiny_image_encoder(seed: int):
  import torch
  from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection
  torch.manual_seed(seed)
  model = CLIPVisionModelWithProjection(CLIPVisionConfig(**TINY_CLIP_VISION))
  return _randomize(model, seed + 3)


def tiny_cc_projection(seed: int):
  """Zero123's Linear(CLIP embedding + 4 pose numbers -> cross-attention dim)."""
  import torch
  torch.manual_seed(seed)
  dim = TINY_CLIP_VISION["projection_dim"]
  return _randomize(torch.nn.Linear(dim + 4, TINY_UNET["cross_attention_dim"]), seed + 4)


def tiny_if_unet(seed: int):
  """IF stage I's UNet2DConditionModel (TINY_IF_UNET), every weight perturbed."""
  import torch
  from diffusers import UNet2DConditionModel
  torch.manual_seed(seed)
  return _randomize(UNet2DConditionModel(**TINY_IF_UNET), seed + 5, scale=0.05)


def write_tiny_if_unet(folder, *, safetensors: bool = True, seed: int = 0) -> Path:
  """The tiny IF UNet saved by diffusers' save_pretrained (config.json and
  diffusion_pytorch_model.safetensors|.bin)."""
  tiny_if_unet(seed).save_pretrained(folder, safe_serialization=safetensors)
  return Path(folder)


# IF's text encoder is T5 v1.1 (gated GELU, relative position buckets) at d_model 4096; the
# tiny one's width is the tiny IF UNet's encoder_hid_dim. 8 buckets up to distance 20, so
# 77 tokens reach the log-spaced and the clipped buckets.
TINY_T5 = dict(d_model=TINY_IF_UNET["encoder_hid_dim"], d_kv=8, d_ff=48, num_layers=2,
               num_heads=3, relative_attention_num_buckets=8,
               relative_attention_max_distance=20, feed_forward_proj="gated-gelu",
               dropout_rate=0.0, is_encoder_decoder=False, use_cache=False)


def tiny_t5_tokenizer(folder):
  """A T5Tokenizer over a SentencePiece unigram model trained here on TINY_WORDS (T5's ids:
  pad 0, eos 1, unk 2; no extra ids), saved to `folder` as IF ships it (spiece.model)."""
  import io
  import sentencepiece
  from transformers import T5Tokenizer
  folder = Path(folder)
  folder.mkdir(parents=True, exist_ok=True)
  words = [w for w in TINY_WORDS if w not in (",", ".")]
  sentences = [" ".join(words[i:] + words[:i]) + ", view." for i in range(len(words))]
  model = io.BytesIO()
  sentencepiece.SentencePieceTrainer.train(
      sentence_iterator=iter(sentences), model_writer=model, vocab_size=96,
      model_type="unigram", pad_id=0, eos_id=1, unk_id=2, bos_id=-1, num_threads=1,
      hard_vocab_limit=False, character_coverage=1.0, minloglevel=2)
  (folder / "spiece.model").write_bytes(model.getvalue())
  tokenizer = T5Tokenizer(str(folder / "spiece.model"), extra_ids=0, model_max_length=77,
                          legacy=True)
  tokenizer.save_pretrained(str(folder))
  return tokenizer


def tiny_t5_encoder(vocab_size: int, seed: int):
  import torch
  from transformers import T5Config, T5EncoderModel
  torch.manual_seed(seed)
  model = T5EncoderModel(T5Config(vocab_size=vocab_size, **TINY_T5))
  return _randomize(model, seed + 6, scale=0.05)


def write_tiny_deepfloyd(out_dir, *, seed: int = 0, text_shard_size: str | None = None) -> Path:
  """An IF stage-I pipeline folder as IFPipeline.save_pretrained lays it out: unet/,
  text_encoder/ (T5EncoderModel; in shards of `text_shard_size` with an index if given),
  tokenizer/ (spiece.model), scheduler/ (IF's DDPMScheduler config), model_index.json."""
  from diffusers import DDPMScheduler
  out_dir = Path(out_dir)
  write_tiny_if_unet(out_dir / "unet", seed=seed)
  tokenizer = tiny_t5_tokenizer(out_dir / "tokenizer")
  kwargs = {} if text_shard_size is None else {"max_shard_size": text_shard_size}
  tiny_t5_encoder(len(tokenizer), seed).save_pretrained(str(out_dir / "text_encoder"), **kwargs)
  DDPMScheduler(**IF_SCHEDULE).save_pretrained(str(out_dir / "scheduler"))
  index = {"_class_name": "IFPipeline", "_diffusers_version": "0.39.0",
           "unet": ["diffusers", "UNet2DConditionModel"],
           "text_encoder": ["transformers", "T5EncoderModel"],
           "tokenizer": ["transformers", "T5Tokenizer"],
           "scheduler": ["diffusers", "DDPMScheduler"], "safety_checker": [None, None],
           "feature_extractor": [None, None], "watermarker": [None, None],
           "requires_safety_checker": False}
  (out_dir / "model_index.json").write_text(json.dumps(index, indent=2))
  return out_dir


PREDICTION_TYPES = ("epsilon", "v_prediction")


def write_tiny_stable_diffusion(out_dir, *, safetensors: bool = True, seed: int = 0,
                                prediction_type: str = "epsilon") -> Path:
  """A StableDiffusionPipeline folder (unet, vae, text_encoder, tokenizer, scheduler).

  prediction_type "v_prediction" writes what SD 2.1 (768 px) ships: the scheduler config says
  the UNet predicts v = √ᾱ ε - √(1-ᾱ) x_0 (the random weights do not care)."""
  from diffusers import DDPMScheduler, StableDiffusionPipeline
  if prediction_type not in PREDICTION_TYPES:
    raise ValueError(f"prediction_type {prediction_type!r}; expected one of {PREDICTION_TYPES}")
  schedule = dict(SCALED_LINEAR, prediction_type=prediction_type)
  with tempfile.TemporaryDirectory() as tmp:   # the tokenizer reads its files at init
    tokenizer = tiny_tokenizer(tmp)
  eos = tokenizer.convert_tokens_to_ids("<|endoftext|>")
  pipe = StableDiffusionPipeline(
      vae=tiny_vae(seed), text_encoder=tiny_text_encoder(len(tokenizer), eos, seed),
      tokenizer=tokenizer, unet=tiny_unet(4, use_linear_projection=True, seed=seed),
      scheduler=DDPMScheduler(steps_offset=1, **schedule), safety_checker=None,
      feature_extractor=None, requires_safety_checker=False)
  pipe.save_pretrained(out_dir, safe_serialization=safetensors)
  return Path(out_dir)


def tiny_zero123_modules(seed: int = 0) -> dict:
  """The PyTorch modules of the tiny Zero123: unet, vae, image_encoder, cc_projection."""
  return dict(unet=tiny_unet(8, use_linear_projection=False, seed=seed), vae=tiny_vae(seed),
              image_encoder=tiny_image_encoder(seed), cc_projection=tiny_cc_projection(seed))


def write_tiny_zero123(out, *, fmt: str = "diffusers", seed: int = 0, ema: bool = False,
                       with_image_encoder: bool = True) -> Path:
  """Writes the tiny Zero123 in `fmt`; returns the folder or checkpoint file written.

  For the LDM formats `out` is the file (a folder gets `tiny_zero123.ckpt|.safetensors`);
  ema=True stores the weights as the EMA copy and perturbed ones as the raw UNet, as a
  training checkpoint does; with_image_encoder=False leaves out the CLIP weights, as
  checkpoints that rely on the OpenAI CLIP download do.
  """
  if fmt not in FORMATS:
    raise ValueError(f"unknown format {fmt!r}; expected one of {FORMATS}")
  modules = tiny_zero123_modules(seed)
  if fmt.startswith("diffusers"):
    return _write_zero123_folder(Path(out), modules, safetensors=fmt == "diffusers")
  suffix = ".ckpt" if fmt == "ldm_ckpt" else ".safetensors"
  out = Path(out)
  if out.suffix != suffix:
    out = out / f"tiny_zero123{suffix}"
  state = zero123_ldm_state_dict(modules, ema=ema, with_image_encoder=with_image_encoder,
                                 seed=seed)
  return save_ldm_checkpoint(state, out)


def _write_zero123_folder(out_dir: Path, modules: dict, *, safetensors: bool) -> Path:
  """The layout of the public diffusers conversions (Zero1to3StableDiffusionPipeline)."""
  from diffusers import DDIMScheduler
  from transformers import CLIPImageProcessor
  for name in ("unet", "vae", "image_encoder"):
    modules[name].save_pretrained(out_dir / name, safe_serialization=safetensors)
  _save_cc_projection(modules["cc_projection"], out_dir / "cc_projection", safetensors)
  DDIMScheduler(set_alpha_to_one=False, steps_offset=1, **SCALED_LINEAR).save_pretrained(
      out_dir / "scheduler")
  size = TINY_CLIP_VISION["image_size"]
  CLIPImageProcessor(size={"shortest_edge": size}, crop_size={"height": size, "width": size},
                     image_mean=list(OPENAI_CLIP_MEAN), image_std=list(OPENAI_CLIP_STD)
                     ).save_pretrained(out_dir / "feature_extractor")
  index = {"_class_name": "Zero1to3StableDiffusionPipeline", "_diffusers_version": "0.39.0",
           "unet": ["diffusers", "UNet2DConditionModel"], "vae": ["diffusers", "AutoencoderKL"],
           "image_encoder": ["transformers", "CLIPVisionModelWithProjection"],
           "cc_projection": ["pipeline_zero1to3", "CCProjection"],
           "scheduler": ["diffusers", "DDIMScheduler"],
           "feature_extractor": ["transformers", "CLIPImageProcessor"],
           "safety_checker": [None, None], "requires_safety_checker": False}
  (out_dir / "model_index.json").write_text(json.dumps(index, indent=2))
  return out_dir


def _save_cc_projection(linear, folder: Path, safetensors: bool):
  # The public conversions wrap the Linear in a `CCProjection` module as `.projection`.
  import torch
  folder.mkdir(parents=True, exist_ok=True)
  config = {"_class_name": "CCProjection", "in_channel": linear.in_features,
            "out_channel": linear.out_features}
  (folder / "config.json").write_text(json.dumps(config, indent=2))
  state = {f"projection.{k}": v.detach().clone() for k, v in linear.state_dict().items()}
  if safetensors:
    import safetensors.torch
    safetensors.torch.save_file(state, folder / "diffusion_pytorch_model.safetensors")
  else:
    torch.save(state, folder / "diffusion_pytorch_model.bin")


# ---- Flax models with NumPy-drawn parameters, and in-memory PyTorch -> the library --------

def random_flax_params(init_fn, seed: int):
  """Params in the shapes `init_fn(key)` gives, without running it (the Flax initialisers
  cost tens of seconds of compiles on CPU): norm scales 1, biases 0, other weights
  N(0, 1/fan_in) with fan_in = all axes but the last."""
  import jax
  import jax.numpy as jnp
  import numpy as np
  shapes = jax.eval_shape(init_fn, jax.random.key(0))
  rng = np.random.default_rng(seed)

  def fill(path, leaf):
    name = str(getattr(path[-1], "key", ""))
    if name in ("scale", "bias"):
      return jnp.full(leaf.shape, 1.0 if name == "scale" else 0.0, leaf.dtype)
    fan_in = max(1, int(np.prod(leaf.shape[:-1])))
    return jnp.asarray(rng.standard_normal(leaf.shape) / np.sqrt(fan_in), leaf.dtype)

  return jax.tree_util.tree_map_with_path(fill, shapes)


def flax_stable_diffusion(folder, *, seed: int = 0, vae_blocks: int = 4,
                          max_tokens: int = 77, source: str = "tiny-random-sd"):
  """StableDiffusionModels of Flax modules in the tiny shapes (TINY_UNET, the first
  `vae_blocks` blocks of TINY_VAE: downsampling 2**(vae_blocks - 1)) with random params, and
  the tiny tokenizer written to `folder` (max_tokens long)."""
  from diffusers import FlaxAutoencoderKL, FlaxUNet2DConditionModel
  from transformers import CLIPTextConfig, FlaxCLIPTextModel
  from dc3d_jax.priors.models import NoiseScheduleConfig, StableDiffusionModels
  tokenizer = tiny_tokenizer(folder)
  tokenizer.model_max_length = max_tokens
  # from_config, as the loader builds them (it drops PyTorch-only keys like norm_num_groups).
  unet = FlaxUNet2DConditionModel.from_config(dict(TINY_UNET, in_channels=4, out_channels=4,
                                                   use_linear_projection=True))
  vae_config = dict(TINY_VAE, block_out_channels=TINY_VAE["block_out_channels"][:vae_blocks],
                    down_block_types=TINY_VAE["down_block_types"][:vae_blocks],
                    up_block_types=TINY_VAE["up_block_types"][:vae_blocks])
  vae = FlaxAutoencoderKL.from_config(vae_config)
  eos = tokenizer.convert_tokens_to_ids("<|endoftext|>")
  config = dict(_text_config(len(tokenizer), eos), max_position_embeddings=max_tokens)
  text = FlaxCLIPTextModel(CLIPTextConfig(**config), _do_init=False)
  params = {"unet": random_flax_params(unet.init_weights, seed),
            "vae": random_flax_params(vae.init_weights, seed + 1),
            "text_encoder": random_flax_params(
                lambda k: text.init_weights(k, (1, max_tokens)), seed + 2)}
  return StableDiffusionModels(unet=unet, vae=vae, text_encoder=text, tokenizer=tokenizer,
                               params=params, schedule=NoiseScheduleConfig(), source=source)


def zero123_source(modules: dict):
  """In-memory PyTorch modules (tiny_zero123_modules) -> the library's Zero123Source, for
  `dc3d_jax.priors.loading.build_zero123` (the converters a file load runs)."""
  from dc3d_jax.priors import models as prior_models
  from dc3d_jax.priors.ldm_checkpoint import ClipVisionSource, Zero123Source
  numpy = lambda m: {k: v.detach().numpy() for k, v in m.state_dict().items()}
  encoder = modules["image_encoder"]
  return Zero123Source(
      unet_config=dict(modules["unet"].config), unet_state=numpy(modules["unet"]),
      vae_config=dict(modules["vae"].config), vae_state=numpy(modules["vae"]),
      clip=ClipVisionSource(encoder.config, numpy(encoder), size=encoder.config.image_size),
      cc_projection=numpy(modules["cc_projection"]),
      schedule=prior_models.NoiseScheduleConfig())


def main(argv=None):
  parser = argparse.ArgumentParser(prog="python -m experiments.tiny_models",
                                   description=__doc__.split("\n")[0])
  parser.add_argument("--kind", choices=("sd", "zero123"), required=True)
  parser.add_argument("--format", choices=FORMATS, default="diffusers")
  parser.add_argument("--prediction-type", choices=PREDICTION_TYPES, default="epsilon",
                      help="Stable Diffusion only: epsilon (2.1-base) or v_prediction (2.1)")
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("out")
  args = parser.parse_args(argv)
  if args.kind == "sd":
    if args.format.startswith("ldm"):
      parser.error("single-file Stable Diffusion checkpoints are not supported; "
                   "use --format diffusers or diffusers_bin")
    path = write_tiny_stable_diffusion(args.out, safetensors=args.format == "diffusers",
                                       seed=args.seed, prediction_type=args.prediction_type)
  else:
    if args.prediction_type != "epsilon":
      parser.error("--prediction-type is for --kind sd (Zero123 predicts ε)")
    path = write_tiny_zero123(args.out, fmt=args.format, seed=args.seed)
  print(path)


if __name__ == "__main__":
  main()
