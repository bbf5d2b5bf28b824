"""Held-out novel-view evaluation of the testbed prior, beside two baselines.

For each held-out object (dataset.build_heldout_set: catalog front at e_ref = 0) and each
novel view of dataset.EVAL_VIEWS, the prior draws a DDIM sample (η = 0, CFG s) from the
reference image and T; one sample per (view, seed). `prior_mean` is the prior's estimate of
the posterior mean E[x_0 | reference, T]: its x̂_0 at t = T − 1 from pure noise without
guidance (a one-step DDIM at CFG 1), the image that minimises expected squared error and the
target an SDS step pulls a render towards at high t. A sample is one draw of what the view may
be, the mean a blur of all of them, so PSNR favours the mean; both are reported. With three or
more seeds, `prior_median` scores the per-pixel, per-channel median of a view's samples: where
most samples put background the median is background, so its mask is close to the samples'
per-pixel majority vote (the mask that maximises expected per-pixel agreement), which neither
one sample (a single draw) nor the mean (a blur whose faint edges pass the foreground rule)
gives. `prior_vote` (also with three or more seeds) splits a view into where and what: the
same majority mask (foreground in more than half of the samples), and inside it the mean
colour of the samples that are foreground at that pixel, white outside. Given the mask, that
mean is the colour with the least expected squared error, where the median's per-channel
middle value is not; it is the read-out pre-registered in
benchmarks/results/testbed_prior_vote_prereg.md. `prior_vote_mean` keeps that mask and takes
the colour inside it from `prior_mean`: where from the guided samples' majority, what from the
model's least-squares estimate (chosen on validation objects among four such splits,
benchmarks/results/testbed_prior_vote_mean_prereg.md). Baselines:
`reference` predicts the reference image itself for every view, `mirrored` the reference
flipped left-right.

Scores per image, then averaged: PSNR (eval.metrics.psnr, RGB on white in [0, 1]) and mask
IoU (eval.metrics.mask_iou). A sample has no alpha, so every mask (prediction, baselines and
ground truth alike) is the RGB foreground albedo.foreground (smallest channel < 0.9; the
palette has no near-white colour); `gt_mask_agreement` reports that mask's IoU against the
ground truth's true alpha.

`per_view` keeps every row's per-view scores (the prior's averaged over its seeds) and
`paired` compares each prior row with each baseline view by view (eval.stats, resampling
objects), so a margin between two rows comes with its 95% interval.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from dc3d_jax.core import rng
from dc3d_jax.eval import metrics, stats
from dc3d_jax.io import writers
from dc3d_jax.priors import ddim, testbed
from dc3d_jax.testbed import albedo


ROWS = ("prior", "prior_mean", "reference", "mirrored")   # the scored predictions
CHUNK = 32                                                 # views per compiled sampler call
# the rows made from >= 3 samples a view, with the names markdown() gives them
SAMPLE_LABELS = {"prior_median": "median of the samples",
                 "prior_vote": "majority mask, mean colour",
                 "prior_vote_mean": "majority mask, posterior-mean colour"}
SAMPLE_SETS = tuple(SAMPLE_LABELS)
CARD_KEYS = ROWS + SAMPLE_SETS + ("paired", "gt_mask_agreement", "protocol")   # what a card keeps


def card_figures(result: dict) -> dict:
  """The figures of an evaluate() result that a weights card keeps (SAMPLE_SETS if scored)."""
  return {k: result[k] for k in CARD_KEYS if k in result}


@functools.partial(jax.jit, static_argnames=("arch", "ddim_steps", "guidance_scale"))
def _sample(params, ref, pose, noise, *, arch, ddim_steps, guidance_scale):
  cond = testbed.conditioning(ref, pose)
  v = lambda x, t: testbed.guided_v(params, x, t, cond, guidance_scale, arch)
  alphas = testbed.alphas_cumprod()
  return ddim.sample(ddim.v_denoiser(v, alphas), noise, alphas, ddim_steps)


def sample_views(params, arch, ref, pose, key, *, ddim_steps: int, guidance_scale: float,
                 chunk: int = CHUNK, bar=None) -> np.ndarray:
  """ref [N, R, R, 3] in [-1, 1], pose [N, 4] -> [N, R, R, 3] samples in [0, 1]. Chunks are
  padded to `chunk` (one compiled shape); noise comes from `key` per whole batch. `bar`: a
  tqdm bar advanced by one per chunk."""
  n = ref.shape[0]
  noise = jax.random.normal(key, ref.shape)
  out = []
  for s in range(0, n, chunk):
    take = np.minimum(np.arange(s, s + chunk), n - 1)
    x = _sample(params, ref[take], pose[take], noise[take], arch=arch, ddim_steps=ddim_steps,
                guidance_scale=float(guidance_scale))
    out.append(np.asarray(x)[:n - s])
    if bar is not None:
      bar.update()
  return np.clip((np.concatenate(out) + 1.0) / 2.0, 0.0, 1.0)


def flat_inputs(heldout: dict, views=None):
  """-> ref [N·V, R, R, 3] in [-1, 1], pose [N·V, 4], target rgba [N·V, R, R, 4] in [0, 1],
  ref rgb [N·V, R, R, 3] in [0, 1]; `views` picks a subset of the held-out views."""
  views = np.arange(heldout["targets"].shape[1]) if views is None else np.asarray(views)
  n = heldout["ref"].shape[0]
  ref_rgb = np.repeat(heldout["ref"][:, None, ..., :3], len(views), 1).reshape(
      (-1,) + heldout["ref"].shape[1:3] + (3,)).astype(np.float32) / 255.0
  target = heldout["targets"][:, views].reshape((-1,) + heldout["targets"].shape[2:])
  pose = testbed.relative_pose(np.tile(heldout["elevation"][views], n),
                               np.tile(heldout["azimuth"][views], n))
  return 2.0 * ref_rgb - 1.0, pose, target.astype(np.float32) / 255.0, ref_rgb


def per_image(pred_rgb: np.ndarray, target_rgba: np.ndarray) -> dict:
  """[N] PSNR and RGB-foreground mask IoU of each image."""
  target_rgb = target_rgba[..., :3]
  return {"psnr": np.array([metrics.psnr(p, t) for p, t in zip(pred_rgb, target_rgb)]),
          "mask_iou": np.array([metrics.mask_iou(albedo.foreground(p), albedo.foreground(t))
                                for p, t in zip(pred_rgb, target_rgb)])}


def summary(per: dict) -> dict:
  """Mean PSNR and mask IoU of per_image() scores."""
  return {"psnr": float(np.mean(per["psnr"])), "mask_iou": float(np.mean(per["mask_iou"])),
          "n": len(per["psnr"])}


def majority_mask(samples: np.ndarray) -> np.ndarray:
  """[S, ..., 3] samples in [0, 1] -> [..., 1] bool: foreground (albedo.foreground) in more
  than half of the samples."""
  return albedo.foreground(samples).mean(axis=0)[..., None] > 0.5


def vote_readout(samples: np.ndarray) -> np.ndarray:
  """[S, ..., 3] samples in [0, 1] -> [..., 3]: white outside majority_mask; inside it the
  mean colour of the samples foreground there."""
  fg = albedo.foreground(samples)[..., None]
  colour = (samples * fg).sum(axis=0) / np.maximum(fg.sum(axis=0), 1.0)
  return np.where(majority_mask(samples), colour, 1.0).astype(np.float32)


def vote_mean_readout(samples: np.ndarray, mean: np.ndarray) -> np.ndarray:
  """[S, ..., 3] samples and [..., 3] posterior mean in [0, 1] -> [..., 3]: the mean inside
  majority_mask(samples), white outside."""
  return np.where(majority_mask(samples), mean, 1.0).astype(np.float32)


def paired(per_view: dict, groups) -> dict:
  """Each prior row against each baseline, per metric: eval.stats.paired_difference over the
  views, resampling objects (views of one object are not independent)."""
  return {f"{row}-{base}": {m: stats.paired_difference(per_view[row][m], per_view[base][m],
                                                       groups)
                            for m in ("psnr", "mask_iou")}
          for row in ("prior", "prior_mean") + SAMPLE_SETS if row in per_view
          for base in ("reference", "mirrored")}


def evaluate(params, arch, heldout: dict, root_key, *, ddim_steps: int, guidance_scale: float,
             seeds=(0,), views=None, progress: bool = False) -> tuple[dict, np.ndarray]:
  """-> ({"prior", "prior_mean", "reference", "mirrored" (and SAMPLE_SETS with >= 3 seeds):
  scores, "per_view" (each row's [N·V] scores; the prior's averaged over seeds), "paired"
  (each prior row against each baseline: paired(), resampling objects),
  "gt_mask_agreement", "per_object"}, samples [S, N·V, R, R, 3] of every seed). progress:
  a bar over the sampled chunks (each seed's, then the posterior mean's)."""
  ref, pose, target, ref_rgb = flat_inputs(heldout, views)
  chunks = -(-ref.shape[0] // CHUNK)
  with tqdm(total=chunks * (len(seeds) + 1), desc="held-out views", unit="chunk",
            disable=not progress) as bar:
    samples = np.stack([sample_views(params, arch, jnp.asarray(ref), pose,
                                     rng.key_for(root_key, "testbed/eval", s),
                                     ddim_steps=ddim_steps, guidance_scale=guidance_scale,
                                     bar=bar)
                        for s in seeds])
    mean = sample_views(params, arch, jnp.asarray(ref), pose,
                        rng.key_for(root_key, "testbed/eval", seeds[0]), ddim_steps=1,
                        guidance_scale=1.0, bar=bar)
  n_obj = heldout["ref"].shape[0]
  per_view = target.shape[0] // n_obj
  draws = [per_image(x, target) for x in samples]
  per = {"prior": {m: np.mean([d[m] for d in draws], axis=0) for m in draws[0]},
         "prior_mean": per_image(mean, target), "reference": per_image(ref_rgb, target),
         "mirrored": per_image(ref_rgb[:, :, ::-1], target)}
  if len(seeds) >= 3:
    per["prior_median"] = per_image(np.median(samples, axis=0), target)
    per["prior_vote"] = per_image(vote_readout(samples), target)
    per["prior_vote_mean"] = per_image(vote_mean_readout(samples, mean), target)
  pooled = {m: np.concatenate([d[m] for d in draws]) for m in draws[0]}   # every sample
  rows = {k: summary(v) for k, v in per.items()} | {"prior": summary(pooled)}
  groups = np.repeat(np.arange(n_obj), per_view)
  pooled_groups = np.tile(groups, len(seeds))
  per_object = {str(name): summary({m: v[pooled_groups == i] for m, v in pooled.items()})
                for i, name in enumerate(heldout["names"])}
  agreement = np.mean([metrics.mask_iou(albedo.foreground(t[..., :3]), t[..., 3])
                       for t in target])
  result = {
      **rows,
      "per_view": {k: {m: v[m].tolist() for m in v} for k, v in per.items()},
      "paired": paired(per, groups),
      "gt_mask_agreement": float(agreement),
      "per_object": per_object,
      "protocol": {"ddim_steps": ddim_steps, "guidance_scale": guidance_scale,
                   "prior_mean": "one-step DDIM from t = T - 1, CFG 1, seed 0's noise",
                   "seeds": list(seeds), "views_per_object": per_view,
                   "objects": [str(n) for n in heldout["names"]]},
  }
  return result, samples


def _interval(r: dict, fmt: str) -> str:
  ci = "n/a" if r["ci95"] is None else ", ".join(format(v, "+" + fmt) for v in r["ci95"])
  return f"{format(r['diff'], '+' + fmt)} [{ci}]"


def markdown(result: dict, label: str) -> str:
  """The rows and paired differences of an evaluate() result as markdown tables."""
  named = {"prior": "DDIM samples", "prior_mean": "posterior mean", **SAMPLE_LABELS}
  rows = [(f"testbed prior ({label}): {name}", result[key])
          for key, name in named.items() if key in result]
  rows += [("baseline: reference image", result["reference"]),
           ("baseline: reference mirrored", result["mirrored"])]
  lines = ["| prediction | novel-view PSNR (dB) | mask IoU |", "|---|---|---|"]
  lines += [f"| {name} | {r['psnr']:.2f} | {r['mask_iou']:.3f} |" for name, r in rows]
  lines += ["", "| paired, per view (objects resampled) | PSNR diff [95% CI] | "
            "mask IoU diff [95% CI] | objects better (PSNR, IoU) |", "|---|---|---|---|"]
  for pair, r in result["paired"].items():
    p, m = r["psnr"], r["mask_iou"]
    lines.append(f"| {pair} | {_interval(p, '.2f')} | {_interval(m, '.3f')} | "
                 f"{p['groups_better']}, {m['groups_better']} of {m['groups']} |")
  return "\n".join(lines)


def sample_grid(heldout: dict, samples: np.ndarray, views=None, max_objects: int = 16,
                max_views: int = 7) -> np.ndarray:
  """Rows: per object [reference | predictions of the first views | ground truth of them]."""
  views = np.arange(heldout["targets"].shape[1]) if views is None else np.asarray(views)
  n_views = min(len(views), max_views)
  cells = []
  for i in range(min(heldout["ref"].shape[0], max_objects)):
    cells.append(heldout["ref"][i].astype(np.float32) / 255.0)
    cells += [samples[i * len(views) + k] for k in range(n_views)]
    cells += [heldout["targets"][i, views[k]].astype(np.float32) / 255.0
              for k in range(n_views)]
  return writers.image_grid(cells, 1 + 2 * n_views)
