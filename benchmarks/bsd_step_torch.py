"""benchmarks/bsd_step.py's steps in PyTorch diffusers, for the JAX / PyTorch ratio on one device.

As the reference's BSD guidance (DC): trainable UNets with gradient checkpointing, AdamW
(β 0.9/0.99, eps 1e-4, weight decay 0.01), ε-MSE with reduction mean, DPM-Solver++ for the
augmentation. Weights are float32 (bf16 autocast for --precision bf16), matching the JAX
side's float32 masters rather than DC's fp16 weights. "lora": diffusers' LoRALinearLayer on
every attention projection (forward hooks; one adapter set per trained copy) over a frozen base.
"""

import copy

import torch
import torch.nn.functional as F

PROJECTIONS = ("to_q", "to_k", "to_v", "to_out.0")


def _projections(unet):
  return [(n, m) for n, m in unet.named_modules()
          if n.endswith(PROJECTIONS) and isinstance(m, torch.nn.Linear)]


def trained_copies(mode: str, unet_config: dict, device: str, rank: int):
  """-> ({"db", "est"}: (run(x, t, context), params)), where run calls that copy."""
  from diffusers import UNet2DConditionModel
  base = UNet2DConditionModel(**unet_config).to(device).train()
  base.enable_gradient_checkpointing()
  if mode == "full":
    other = copy.deepcopy(base)
    return {name: (lambda x, t, c, u=u: u(x, t, c).sample, list(u.parameters()))
            for name, u in (("db", base), ("est", other))}
  from diffusers.models.lora import LoRALinearLayer
  base.requires_grad_(False)
  active = {"name": None}
  adapters = {"db": {}, "est": {}}
  for path, module in _projections(base):
    for name in adapters:
      adapters[name][path] = LoRALinearLayer(module.in_features, module.out_features,
                                             rank).to(device)
    module.register_forward_hook(
        lambda m, i, o, path=path: o + adapters[active["name"]][path](i[0]))

  def runner(name):
    def run(x, t, c):
      active["name"] = name
      return base(x, t, c).sample
    return run
  return {name: (runner(name), [p for a in adapters[name].values() for p in a.parameters()])
          for name in adapters}


def make_step(mode: str, which: str, precision: str, rank: int, setup: dict):
  """-> (step(), device): one bsd, dreambooth or augment step as bsd_step.py describes."""
  from diffusers import AutoencoderKL, DDPMScheduler
  device = "cuda" if torch.cuda.is_available() else "cpu"
  vae = AutoencoderKL(**setup["vae"]).to(device).eval().requires_grad_(False)
  copies = trained_copies(mode, setup["unet"], device, rank)
  lr = 1e-5 if mode == "full" else 1e-4
  opts = {n: torch.optim.AdamW(p, lr=lr, betas=(0.9, 0.99), eps=1e-4, weight_decay=0.01)
          for n, (_, p) in copies.items()}
  alphas = DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085,
                         beta_end=0.012).alphas_cumprod.to(device)
  conds = [torch.randn((1,) + tuple(setup["context"]), device=device) for _ in range(3)]
  autocast = torch.autocast(device, dtype=torch.bfloat16, enabled=precision == "bf16")
  ctx = dict(vae=vae, copies=copies, opts=opts, alphas=alphas, conds=conds,
             autocast=autocast, device=device, setup=setup)
  step = {"bsd": _bsd_step, "dreambooth": _dreambooth_step, "augment": _augment_step}[which]
  return (lambda: step(**ctx)), device


def _noised(alphas, x0, t, noise):
  a = alphas[t].view(-1, 1, 1, 1)
  return a.sqrt() * x0 + (1 - a).sqrt() * noise


def _mse_update(copies, opts, alphas, name, x0, context, autocast):
  run, _ = copies[name]
  t = torch.randint(0, 1000, (1,), device=x0.device)
  noise = torch.randn_like(x0)
  with autocast:
    pred = run(_noised(alphas, x0, t, noise), t, context)
  loss = 0.1 * F.mse_loss(pred.float(), noise)
  loss.backward()
  opts[name].step()
  opts[name].zero_grad(set_to_none=True)


def _sync(device):
  if device == "cuda":
    torch.cuda.synchronize()


def _bsd_step(vae, copies, opts, alphas, conds, autocast, device, setup):
  render = torch.full((1, 3, setup["render"], setup["render"]), 0.5, device=device,
                      requires_grad=True)
  cond, uncond, cond_vi = conds
  with autocast:
    img = F.interpolate(render, (setup["vae_size"],) * 2, mode="bilinear", align_corners=False)
    lat = vae.encode(img * 2 - 1).latent_dist.sample().float() * 0.18215
  t = torch.randint(50, 501, (1,), device=device)
  noise = torch.randn_like(lat)
  with torch.no_grad(), autocast:
    z_t = _noised(alphas, lat.detach(), t, noise)
    eps_c, eps_u = copies["db"][0](torch.cat([z_t] * 2), torch.cat([t] * 2),
                                   torch.cat([cond, uncond])).float().chunk(2)
    eps_est = copies["est"][0](z_t, t, cond_vi).float()
    g = (1 - alphas[t].view(-1, 1, 1, 1)) * (eps_u + 2.0 * (eps_c - eps_u) - eps_est)
  (0.01 * 0.5 * ((lat - (lat - g).detach()) ** 2).sum()).backward()
  _mse_update(copies, opts, alphas, "est", lat.detach(), cond_vi, autocast)
  _sync(device)
  return render.grad


def _dreambooth_step(vae, copies, opts, alphas, conds, autocast, device, setup):
  cached = torch.full((1, 3, setup["vae_size"], setup["vae_size"]), 0.5, device=device)
  with torch.no_grad(), autocast:
    x0 = vae.encode(cached * 2 - 1).latent_dist.sample().float() * 0.18215
  _mse_update(copies, opts, alphas, "db", x0, conds[0], autocast)
  _sync(device)


def _augment_step(vae, copies, opts, alphas, conds, autocast, device, setup):
  from diffusers import DPMSolverMultistepScheduler
  sched = DPMSolverMultistepScheduler(beta_schedule="scaled_linear", beta_start=0.00085,
                                      beta_end=0.012)
  sched.set_timesteps(25)
  start = 25 - 25 * 500 // 1000                       # t' = 500: 12 steps
  render = torch.full((1, 3, setup["render"], setup["render"]), 0.5, device=device)
  with torch.no_grad(), autocast:
    img = F.interpolate(render, (setup["vae_size"],) * 2, mode="bilinear", align_corners=False)
    x0 = vae.encode(img * 2 - 1).latent_dist.sample().float() * 0.18215
    noise = torch.randn_like(x0)
    x = sched.add_noise(x0, noise, sched.timesteps[start:start + 1])
    for t in sched.timesteps[start:]:
      eps_c, eps_u = copies["db"][0](torch.cat([x] * 2), t,
                                     torch.cat(conds[:2])).float().chunk(2)
      x = sched.step(eps_u + 7.5 * (eps_c - eps_u), t, x).prev_sample
    images = vae.decode(x / 0.18215).sample
  _sync(device)
  return images
