"""The testbed prior (priors/testbed.py) as BSD's frozen base model (denoiser_base.DenoiserBase).

The reference fine-tunes two copies of Stable Diffusion 2.1-base in latent space under text
prompts (§4). This base is the in-project testbed model instead (texture.prior.base =
"testbed"). DEVIATIONS, all from the model itself:
  pixel space   x = testbed.to_model_input(render) in [-1, 1] at R² (R = arch.resolution,
                32 for the committed weights): block means when R divides the render size,
                as the testbed's training renders; decode is (x + 1)/2 clipped. No VAE
                (codec_params are {}), so the augmentation cache holds R² images.
  no text       the conditioning is Stable-Zero123's (testbed.conditioning): the reference
                image c_ref [N, R, R, 3] and the relative camera T [N, 4] of each view,
                instead of the prompt table indexed by view direction.
  v-prediction  the network predicts v = √ᾱ ε − √(1−ᾱ) x_0; `apply` returns
                ε̂ = testbed.v_to_eps(v̂, x_t, t) = √(1−ᾱ) x_t + √ᾱ v̂, so BSD's gradient,
                the DPM-Solver++ augmentation and the trained copies' ε-MSE all see ε.
                The copies' loss is therefore an ε-loss on a v-network,
                ‖ε̂ − ε‖² = ᾱ_t‖v̂ − v‖² (x_t is fixed), which is what BSD's losses ask for
                (the reference's DDPM ε-MSE), not the v-loss the testbed was trained with.
  schedule      the testbed's cosine ᾱ (squaredcos_cap_v2, T = 1000), not SD's scaled-
                linear DDPM betas; BSD reads ᾱ only through `alphas_cumprod()`.
  no class emb. class_embed_dim None: DS's camera conditioning is refused (the camera is
                already an input of the network).

Per-view conditions (`view_conditions`, BSD's c_vd, u, c_vi; texture_steps.bsd_conditions):
  c_vd  {"ref": the reference at R² in [-1, 1], "pose": zero123.relative_camera of the view
        w.r.t. (data.ref_elevation_deg, data.ref_azimuth_deg), Stable-Zero123's variant},
        testbed.view_condition, as the 3D slot's TestbedPrior.condition.
  u     testbed.null_conditioning (c_ref = 0 and T = 0), the branch its training dropped to.
  c_vi  also the null condition. The reference's c_vi is the plain prompt, c_vd without its
        view suffix; the analogue "reference image without a pose" (c_ref, T = 0) never
        occurred in training (the testbed drops c_ref and T together, testbed/training.py),
        and "reference image with the reference pose" states a view. The null condition is
        the one view-free input the network knows, so φ_est starts as the base's
        unconditional model of all views and learns the renders' distribution from there;
        at the start (φ_est = φ_DB = base) g = (1−ᾱ)·s_bsd·(ε_c − ε_u), a pure CFG direction.
  The DreamBooth prompt dropout zeroes every leaf of c_vd's row, which is u here: the same
  joint drop the testbed was trained with.

  TestbedBase(arch, ref_elevation_deg, ref_azimuth_deg)   the base (static)
  make_testbed_base(model, ref_rgba, ...) -> (base, params, {"ref": [1, R, R, 3]})
"""

import dataclasses
from typing import Optional

import jax.numpy as jnp
import numpy as np

from dc3d_jax.core.types import Camera
from dc3d_jax.errors import ConfigError
from dc3d_jax.priors import testbed, zero123
from dc3d_jax.priors.testbed_unet import Architecture


@dataclasses.dataclass(frozen=True)
class TestbedBase:
  """DenoiserBase of a testbed model. params: the UNet's pytree; codec_params: unused ({});
  conditioning params (view_conditions): {"ref": [1, R, R, 3] in [-1, 1]}."""
  arch: Architecture = Architecture()
  ref_elevation_deg: float = 0.0
  ref_azimuth_deg: float = 0.0
  class_embed_dim: Optional[int] = None

  def alphas_cumprod(self) -> np.ndarray:
    """[1000] the testbed's cosine ᾱ_t."""
    return testbed.alphas_cumprod()

  def apply(self, params, x_t, t, cond, class_emb=None):
    """ε̂ = v_to_eps(v̂(x_t, t, cond), x_t, t) [N, R, R, 3] in x_t's dtype; t [N] int."""
    if class_emb is not None:
      raise ConfigError("config texture.bsd.camera_condition=True, but the testbed base has "
                        "no class embedding (its camera is an input already); set it False")
    v = testbed.apply_v(params, x_t, t, cond, self.arch)
    return testbed.v_to_eps(v.astype(jnp.float32), x_t.astype(jnp.float32), t).astype(x_t.dtype)

  def encode(self, codec_params, images, key=None):
    """[B, H, W, 3] renders in [0, 1] -> [B, R, R, 3] in [-1, 1] (differentiable)."""
    return testbed.to_model_input(images, self.arch.resolution)

  def decode(self, codec_params, x):
    return jnp.clip(0.5 * x.astype(jnp.float32) + 0.5, 0.0, 1.0)

  def view_conditions(self, cond_params, cameras: Camera) -> tuple:
    """[B] cameras -> (c_vd, u, c_vi), each {"ref": [B, R, R, 3], "pose": [B, 4]} (module
    docstring: c_vi = u = the null condition)."""
    c_vd = testbed.view_condition(cond_params["ref"], cameras, self.ref_elevation_deg,
                                  self.ref_azimuth_deg)
    u = testbed.null_conditioning(c_vd)
    return c_vd, u, u


def make_testbed_base(model: testbed.TestbedModel, ref_rgba: np.ndarray, *,
                      ref_elevation_deg: float = 0.0, ref_azimuth_deg: float = 0.0) -> tuple:
  """Loaded model + reference RGBA [H, W, 4] -> (TestbedBase, UNet params, conditioning
  params {"ref": [1, R, R, 3]}: the reference composited on white, area-resized, as the 3D
  slot's make_testbed_prior)."""
  base = TestbedBase(arch=model.arch, ref_elevation_deg=ref_elevation_deg,
                     ref_azimuth_deg=ref_azimuth_deg)
  ref = jnp.asarray(zero123.reference_image(ref_rgba, model.arch.resolution))
  return base, model.params, {"ref": ref}
