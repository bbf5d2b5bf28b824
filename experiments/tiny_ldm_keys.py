"""Writer side of the LDM round trip for the tiny test models (experiments/tiny_models.py):
diffusers / transformers key names -> the original LDM checkpoints' (`stable_zero123.ckpt`,
`zero123-xl.ckpt`: model.diffusion_model.*, first_stage_model.*, cond_stage_model.model.visual.*
as OpenAI CLIP, cc_projection.*, model_ema.*), and the file writer.

The mapping is the inverse of what diffusers' single-file converters read, so loading an LDM
file can be checked against the diffusers folder the same modules were saved as. The library
does not use this module.
"""

from pathlib import Path


def save_ldm_checkpoint(state: dict, path: Path) -> Path:
  import torch
  path.parent.mkdir(parents=True, exist_ok=True)
  state = {k: v.detach().contiguous().clone() for k, v in state.items()}
  if path.suffix == ".ckpt":
    torch.save({"state_dict": state, "global_step": 0}, path)
  else:
    import safetensors.torch
    safetensors.torch.save_file(state, path)
  return path


_RESNET_TO_LDM = {"norm1": "in_layers.0", "conv1": "in_layers.2", "norm2": "out_layers.0",
                  "conv2": "out_layers.3", "time_emb_proj": "emb_layers.1",
                  "conv_shortcut": "skip_connection"}
_UNET_TOP_TO_LDM = {"time_embedding.linear_1": "time_embed.0",
                    "time_embedding.linear_2": "time_embed.2", "conv_in": "input_blocks.0.0",
                    "conv_norm_out": "out.0", "conv_out": "out.2"}


def unet_key_to_ldm(key: str, config) -> str:
  """A diffusers UNet2DConditionModel key -> its openaimodel.UNetModel key."""
  for top, ldm in _UNET_TOP_TO_LDM.items():
    if key.startswith(top + "."):
      return ldm + key[len(top):]
  parts = key.split(".")
  per_level = config["layers_per_block"] + 1   # LDM: res(+attn) layers, then the resampler
  if parts[0] == "mid_block":   # middle_block: res, attn, res
    return _ldm_layer(f"middle_block.{2 * int(parts[2]) + (parts[1] == 'attentions')}",
                      parts[1], parts[3:])
  block, part = int(parts[1]), parts[2]
  if parts[0] == "down_blocks":
    if part == "downsamplers":   # downsamplers.0.conv.weight -> input_blocks.N.0.op.weight
      return f"input_blocks.{(block + 1) * per_level}.0.op.{parts[-1]}"
    layer = 1 + block * per_level + int(parts[3])
    return _ldm_layer(f"input_blocks.{layer}.{int(part == 'attentions')}", part, parts[4:])
  last = block * per_level + per_level - 1
  if part == "upsamplers":   # after the res (and attention) module of the last layer
    slot = 2 if config["up_block_types"][block].startswith("CrossAttn") else 1
    return f"output_blocks.{last}.{slot}." + ".".join(parts[4:])
  layer = block * per_level + int(parts[3])
  return _ldm_layer(f"output_blocks.{layer}.{int(part == 'attentions')}", part, parts[4:])


def _ldm_layer(prefix: str, part: str, rest: list) -> str:
  if part == "resnets":
    rest = [_RESNET_TO_LDM[rest[0]]] + rest[1:]
  return f"{prefix}." + ".".join(rest)


_VAE_ATTN_TO_LDM = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v",
                    "to_out.0": "proj_out"}


def vae_key_to_ldm(key: str, num_blocks: int) -> str:
  """A diffusers AutoencoderKL key -> its ldm.models.autoencoder key."""
  key = key.replace("conv_norm_out", "norm_out").replace("conv_shortcut", "nin_shortcut")
  key = key.replace("mid_block.resnets.0", "mid.block_1").replace(
      "mid_block.resnets.1", "mid.block_2")
  if "mid_block.attentions.0." in key:
    key = key.replace("mid_block.attentions.0.", "mid.attn_1.")
    for name, ldm in _VAE_ATTN_TO_LDM.items():
      key = key.replace(f"attn_1.{name}.", f"attn_1.{ldm}.")
  parts = key.split(".")
  if parts[1] == "down_blocks":
    tail = ".".join(parts[3:]).replace("resnets.", "block.").replace(
        "downsamplers.0.", "downsample.")
    return f"encoder.down.{parts[2]}.{tail}"
  if parts[1] == "up_blocks":   # LDM numbers decoder levels from the finest
    tail = ".".join(parts[3:]).replace("resnets.", "block.").replace(
        "upsamplers.0.", "upsample.")
    return f"decoder.up.{num_blocks - 1 - int(parts[2])}.{tail}"
  return key


def clip_vision_to_openai(state: dict) -> dict:
  """CLIPVisionModelWithProjection state -> OpenAI CLIP `visual.*` names (fused qkv, proj)."""
  import torch
  p = "vision_model."
  out = {"conv1.weight": state[p + "embeddings.patch_embedding.weight"],
         "class_embedding": state[p + "embeddings.class_embedding"],
         "positional_embedding": state[p + "embeddings.position_embedding.weight"],
         "proj": state["visual_projection.weight"].T}
  for hf, openai in (("pre_layrnorm", "ln_pre"), ("post_layernorm", "ln_post")):
    for leaf in ("weight", "bias"):
      out[f"{openai}.{leaf}"] = state[f"{p}{hf}.{leaf}"]
  layers = {int(k.split(".")[3]) for k in state if k.startswith(p + "encoder.layers.")}
  for i in sorted(layers):
    src, dst = f"{p}encoder.layers.{i}.", f"transformer.resblocks.{i}."
    for leaf in ("weight", "bias"):
      out[f"{dst}attn.in_proj_{leaf}"] = torch.cat(
          [state[f"{src}self_attn.{n}_proj.{leaf}"] for n in "qkv"])
      for hf, openai in (("self_attn.out_proj", "attn.out_proj"), ("layer_norm1", "ln_1"),
                         ("layer_norm2", "ln_2"), ("mlp.fc1", "mlp.c_fc"),
                         ("mlp.fc2", "mlp.c_proj")):
        out[f"{dst}{openai}.{leaf}"] = state[f"{src}{hf}.{leaf}"]
  return out


def zero123_ldm_state_dict(modules: dict, *, ema: bool = False,
                           with_image_encoder: bool = True, seed: int = 0) -> dict:
  """The tiny Zero123 modules as one LDM LatentDiffusion state dict (torch tensors)."""
  import torch
  unet, vae = modules["unet"], modules["vae"]
  unet_state = {unet_key_to_ldm(k, unet.config): v for k, v in unet.state_dict().items()}
  state = {f"model.diffusion_model.{k}": v for k, v in unet_state.items()}
  for k, v in vae.state_dict().items():
    ldm_key = vae_key_to_ldm(k, len(vae.config.block_out_channels))
    # LDM's VAE attention uses 1x1 convolutions where diffusers has Linear layers.
    state[f"first_stage_model.{ldm_key}"] = v[..., None, None] if v.ndim == 2 else v
  if with_image_encoder:
    visual = clip_vision_to_openai(modules["image_encoder"].state_dict())
    state.update({f"cond_stage_model.model.visual.{k}": v for k, v in visual.items()})
    state["cond_stage_model.model.logit_scale"] = torch.tensor(4.6052)  # unused by Zero123
  state.update({f"cc_projection.{k}": v for k, v in modules["cc_projection"].state_dict().items()})
  if ema:   # LitEma buffers: the parameter name without dots; raw weights drift off them
    gen = torch.Generator().manual_seed(seed + 7)
    for k, v in unet_state.items():
      state["model_ema." + f"diffusion_model.{k}".replace(".", "")] = v
      state[f"model.diffusion_model.{k}"] = v + 0.1 * torch.randn(v.shape, generator=gen)
    state["model_ema.decay"] = torch.tensor(0.9999)
    state["model_ema.num_updates"] = torch.tensor(1000, dtype=torch.int32)
  return state
