"""Reference outputs for the multistep samplers, the timestep spacings and the schedules.

Writes tests/data/samplers_{unipc,dpmpp,lms,deis,grids,schedules}.npz, read by
tests/test_multistep_samplers.py, tests/test_grids.py and tests/test_schedules.py:

    /work/refvenv/bin/python tools/make_sampler_fixtures.py [--out tests/data]

(torch, diffusers and k-diffusion from the package index; the test suite needs none of them).
Every sampler runs in float64 on the exact denoiser of a 2-D Gaussian mixture, written here in
torch, from starting points (and, for the stochastic samplers, per-step noise) drawn with numpy
and saved with the outputs. Sampler states are stored in the EDM convention x = x0 + sigma n:
diffusers' variance-preserving samples x_t are divided by alpha = 1 / sqrt(1 + sigma^2). Each
diffusers scheduler's grid is its own `sigmas` (float32 values, run as float64); two diffusers
quirks are worked around so that its arithmetic is float64 too: `scheduler.sigmas` is upcast
after `set_timesteps`, and `DPMSolverMultistepScheduler.step`, which casts the sample and the
noise to float32, runs with its module's `torch.float32` read as float64.

One diffusers bug is corrected before its output is recorded: the D2 coefficient of the
sde-dpmsolver++ third-order update, ((1 - e^{-2h} - 2h) / (2h)^2 - 0.5), tends to -1 as h -> 0
instead of 0 (the Taylor term of the integral, k-diffusion's -phi_3 = ... + 0.5); the case
`diffusers_3m_sde` runs diffusers' own step with that one sign flipped (`_corrected_sde_3m`).
As released, diffusers 0.42.1 differs from it (and from k-diffusion's 3M SDE) by 0.34 here.
"""
from __future__ import annotations

import argparse
import json
import os

import numpy as np
import torch

torch.set_default_dtype(torch.float64)

WEIGHTS = np.array([0.3, 0.7])
MEANS = np.array([[-1.5, 0.5], [1.0, -0.5]])
COVS = np.array([[[0.3, 0.1], [0.1, 0.2]], [[0.2, -0.05], [-0.05, 0.4]]])
BATCH = 8


def mixture_denoiser(x: torch.Tensor, sigma) -> torch.Tensor:
    """E[x0 | x0 + sigma n = x] of the mixture: responsibilities under N(mu_k, C_k + sigma^2 I)
    times the per-component posterior means mu_k + C_k (C_k + sigma^2 I)^{-1} (x - mu_k)."""
    sigma = torch.as_tensor(sigma, dtype=torch.float64).reshape(-1)
    sigma = sigma.expand(x.shape[0])
    means, covs = torch.from_numpy(MEANS), torch.from_numpy(COVS)
    noisy = covs[None] + sigma[:, None, None, None] ** 2 * torch.eye(2)  # (B, K, 2, 2)
    diff = x[:, None, :] - means[None]
    solved = torch.linalg.solve(noisy, diff[..., None])[..., 0]
    log_resp = (torch.log(torch.from_numpy(WEIGHTS)) - 0.5 * (diff * solved).sum(-1)
                - 0.5 * torch.logdet(noisy))
    resp = torch.softmax(log_resp, dim=-1)
    post = means[None] + torch.einsum("kij,bkj->bki", covs, solved)
    return torch.einsum("bk,bkd->bd", resp, post)


def vp_output(x_t: torch.Tensor, sigma, kind: str) -> torch.Tensor:
    """The exact network output of `kind` at the VP sample x_t of EDM noise level sigma."""
    sigma = torch.as_tensor(sigma, dtype=torch.float64)
    alpha = 1.0 / torch.sqrt(1.0 + sigma**2)
    x = x_t / alpha
    x0 = mixture_denoiser(x, sigma)
    eps = (x - x0) / sigma
    if kind == "epsilon":
        return eps
    if kind == "v_prediction":
        return alpha * eps - alpha * sigma * x0
    raise ValueError(kind)


class _Float64Torch:
    """torch with `float32` read as `float64`, for a diffusers module that casts to float32."""

    def __getattr__(self, name):
        return torch.float64 if name == "float32" else getattr(torch, name)


def _corrected_sde_3m(scheduler) -> None:
    """Flip the sign of the 0.5 in the D2 coefficient of diffusers' sde-dpmsolver++ third-order
    update, on this scheduler instance (its own source, recompiled with that one change)."""
    import inspect
    import textwrap

    from diffusers.schedulers import scheduling_dpmsolver_multistep as module

    source = textwrap.dedent(inspect.getsource(
        module.DPMSolverMultistepScheduler.multistep_dpm_solver_third_order_update))
    wrong = "((1.0 - torch.exp(-2.0 * h) - 2.0 * h) / (2.0 * h) ** 2 - 0.5)) * D2"
    assert source.count(wrong) == 1, "diffusers' sde-dpmsolver++ third-order update changed"
    namespace = {}
    exec(source.replace(wrong, wrong.replace("- 0.5", "+ 0.5")), vars(module), namespace)
    scheduler.multistep_dpm_solver_third_order_update = (
        namespace["multistep_dpm_solver_third_order_update"].__get__(scheduler))


def run_vp_scheduler(scheduler, num_steps: int, rng, kind: str = "epsilon",
                     stochastic: bool = False):
    """A diffusers VP multistep scheduler from x at sigmas[0]: (sigmas, x_init, noise, out)."""
    scheduler.set_timesteps(num_steps)
    scheduler.sigmas = scheduler.sigmas.to(torch.float64)
    sigmas = scheduler.sigmas.numpy()
    x_init = sigmas[0] * rng.standard_normal((BATCH, 2))
    noise = rng.standard_normal((num_steps, BATCH, 2)) if stochastic else None
    x_t = torch.from_numpy(x_init) / np.sqrt(1.0 + sigmas[0] ** 2)
    for i, t in enumerate(scheduler.timesteps):
        output = vp_output(x_t, sigmas[i], kind)
        extra = {"variance_noise": torch.from_numpy(noise[i])} if stochastic else {}
        x_t = scheduler.step(output, t, x_t, **extra).prev_sample
    out = x_t.numpy() * np.sqrt(1.0 + sigmas[-1] ** 2)
    return sigmas, x_init, noise, out


def run_k_diffusion(sampler, sigmas, rng, stochastic: bool = False, **kwargs):
    """A k-diffusion sampler on the mixture denoiser: (sigmas, x_init, noise, out)."""
    num_steps = len(sigmas) - 1
    x_init = sigmas[0] * rng.standard_normal((BATCH, 2))
    noise = rng.standard_normal((num_steps, BATCH, 2)) if stochastic else None
    if stochastic:
        index = {float(s): i for i, s in enumerate(sigmas[:-1])}
        kwargs["noise_sampler"] = lambda sigma, sigma_next: torch.from_numpy(
            noise[index[float(sigma)]])
    out = sampler(lambda x, sigma: mixture_denoiser(x, sigma), torch.from_numpy(x_init),
                  torch.from_numpy(sigmas), disable=True, **kwargs)
    return sigmas, x_init, noise, out.numpy()


def save(path: str, cases: dict) -> None:
    arrays = {"mixture.weights": WEIGHTS, "mixture.means": MEANS, "mixture.covs": COVS}
    for name, (config, (sigmas, x_init, noise, out)) in cases.items():
        arrays.update({f"{name}.sigmas": np.asarray(sigmas, np.float64),
                       f"{name}.x_init": x_init, f"{name}.out": out,
                       f"{name}.reference": np.array(json.dumps(config))})
        if noise is not None:
            arrays[f"{name}.noise"] = noise
    np.savez_compressed(path, **arrays)
    print(f"{path}: {len(cases)} cases, {os.path.getsize(path)} bytes")


def unipc_cases(rng):
    from diffusers import UniPCMultistepScheduler

    cases = {}

    def add(name, num_steps=10, prediction_type="epsilon", **config):
        config = dict(num_train_timesteps=1000, prediction_type=prediction_type, **config)
        cases[name] = (dict(config, num_steps=num_steps), run_vp_scheduler(
            UniPCMultistepScheduler(**config), num_steps, rng, prediction_type))

    for order in (1, 2, 3):
        for variant in ("bh1", "bh2"):
            for predict_x0 in (True, False):
                add(f"order{order}_{variant}_{'data' if predict_x0 else 'noise'}",
                    solver_order=order, solver_type=variant, predict_x0=predict_x0,
                    final_sigmas_type="sigma_min")
    add("order2_bh2_data_zero", solver_order=2)
    add("order3_bh2_data_zero", solver_order=3)
    add("order3_no_lower_order_final", solver_order=3, lower_order_final=False,
        final_sigmas_type="sigma_min")
    add("order3_disable_corrector", solver_order=3, disable_corrector=[0, 3],
        final_sigmas_type="sigma_min")
    add("zero_snr_trailing_v", num_steps=8, prediction_type="v_prediction",
        beta_schedule="scaled_linear",
        beta_start=0.00085, beta_end=0.012, rescale_betas_zero_snr=True,
        timestep_spacing="trailing")
    return cases


def dpmpp_cases(rng):
    import k_diffusion.sampling as K
    from diffusers import DPMSolverMultistepScheduler
    from diffusers.schedulers import scheduling_dpmsolver_multistep

    scheduling_dpmsolver_multistep.torch = _Float64Torch()
    cases = {}

    def add(name, num_steps=10, **config):
        config = dict(num_train_timesteps=1000, solver_order=3, **config)
        scheduler = DPMSolverMultistepScheduler(**config)
        sde = config.get("algorithm_type") == "sde-dpmsolver++"
        if sde:
            _corrected_sde_3m(scheduler)
        cases[name] = (dict(config, num_steps=num_steps, corrected_d2_sign=sde),
                       run_vp_scheduler(scheduler, num_steps, rng, stochastic=sde))

    add("diffusers_3m_midpoint")
    add("diffusers_3m_heun", solver_type="heun")
    add("diffusers_3m_no_lower_order_final", lower_order_final=False)
    add("diffusers_3m_sigma_min", final_sigmas_type="sigma_min")
    add("diffusers_3m_16_steps", num_steps=16)
    add("diffusers_3m_sde", algorithm_type="sde-dpmsolver++", solver_type="heun",
        lower_order_final=False)

    karras = K.get_sigmas_karras(12, 0.002, 80.0).numpy()
    for name, eta in (("k_3m", 0.0), ("k_3m_sde", 1.0), ("k_3m_sde_eta_half", 0.5)):
        cases[name] = (dict(sampler="sample_dpmpp_3m_sde", eta=eta, karras=(12, 0.002, 80.0)),
                       run_k_diffusion(K.sample_dpmpp_3m_sde, karras, rng,
                                       stochastic=eta > 0, eta=eta))
    for name, eta in (("k_2s_ancestral", 1.0), ("k_2s_ancestral_eta_half", 0.5),
                      ("k_2s", 0.0)):
        cases[name] = (dict(sampler="sample_dpmpp_2s_ancestral", eta=eta,
                            karras=(12, 0.002, 80.0)),
                       run_k_diffusion(K.sample_dpmpp_2s_ancestral, karras, rng,
                                       stochastic=eta > 0, eta=eta))
    return cases


def lms_cases(rng):
    import k_diffusion.sampling as K
    from diffusers import LMSDiscreteScheduler

    cases = {}
    karras = K.get_sigmas_karras(12, 0.002, 80.0).numpy()
    for order in (3, 4):
        cases[f"k_lms_order{order}"] = (dict(sampler="sample_lms", order=order,
                                             karras=(12, 0.002, 80.0)),
                                        run_k_diffusion(K.sample_lms, karras, rng, order=order))
    scheduler = LMSDiscreteScheduler(num_train_timesteps=1000)
    scheduler.set_timesteps(10)
    scheduler.sigmas = scheduler.sigmas.to(torch.float64)
    sigmas = scheduler.sigmas.numpy()
    x_init = sigmas[0] * rng.standard_normal((BATCH, 2))
    x = torch.from_numpy(x_init)
    for i, t in enumerate(scheduler.timesteps):
        x_t = scheduler.scale_model_input(x, t)
        x = scheduler.step(vp_output(x_t, sigmas[i], "epsilon"), t, x).prev_sample
    cases["diffusers_lms"] = (dict(scheduler="LMSDiscreteScheduler", num_steps=10, order=4),
                              (sigmas, x_init, None, x.numpy()))
    return cases


def deis_cases(rng):
    from diffusers import DEISMultistepScheduler

    cases = {}
    for name, order, num_steps in (("order1", 1, 10), ("order2", 2, 10), ("order3", 3, 10),
                                   ("order3_16_steps", 3, 16)):
        config = dict(num_train_timesteps=1000, solver_order=order)
        cases[name] = (dict(config, num_steps=num_steps), run_vp_scheduler(
            DEISMultistepScheduler(**config), num_steps, rng))
    return cases


def grid_arrays():
    """diffusers' timesteps and sigmas of the 'leading' and 'trailing' spacings."""
    from diffusers import DDIMScheduler, LMSDiscreteScheduler

    arrays = {}
    for spacing, offset in (("leading", 0), ("leading", 1), ("trailing", 0)):
        for num_steps in (1, 7, 10, 50, 999):
            name = f"{spacing}_offset{offset}_{num_steps}"
            ddim = DDIMScheduler(num_train_timesteps=1000, timestep_spacing=spacing,
                                 steps_offset=offset)
            ddim.set_timesteps(num_steps)
            lms = LMSDiscreteScheduler(num_train_timesteps=1000, beta_schedule="scaled_linear",
                                       beta_start=0.00085, beta_end=0.012,
                                       timestep_spacing=spacing, steps_offset=offset)
            lms.set_timesteps(num_steps)
            arrays[f"{name}.ddim_timesteps"] = ddim.timesteps.numpy()
            arrays[f"{name}.lms_timesteps"] = lms.timesteps.numpy()
            arrays[f"{name}.lms_sigmas"] = lms.sigmas.numpy()
    return arrays


def schedule_arrays():
    """diffusers' alphas_cumprod (float32, as it computes them) and the float64 rescaling."""
    from diffusers import DDPMScheduler, UniPCMultistepScheduler
    from diffusers.schedulers.scheduling_ddpm import rescale_zero_terminal_snr

    arrays = {}
    for name, config in (("linear", {}),
                         ("scaled_linear", dict(beta_start=0.00085, beta_end=0.012)),
                         ("squaredcos_cap_v2", {})):
        for zero_snr in (False, True):
            scheduler = DDPMScheduler(num_train_timesteps=1000, beta_schedule=name,
                                      rescale_betas_zero_snr=zero_snr, **config)
            arrays[f"{name}_zero_snr{int(zero_snr)}.alphas_cumprod"] = (
                scheduler.alphas_cumprod.to(torch.float32).numpy())
    unipc = UniPCMultistepScheduler(num_train_timesteps=1000, beta_schedule="scaled_linear",
                                    beta_start=0.00085, beta_end=0.012,
                                    rescale_betas_zero_snr=True)
    arrays["unipc_scaled_linear_zero_snr.alphas_cumprod"] = (
        unipc.alphas_cumprod.to(torch.float32).numpy())
    betas64 = torch.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=torch.float64) ** 2
    arrays["scaled_linear_float64.betas"] = betas64.numpy()
    arrays["scaled_linear_float64.rescaled_betas"] = rescale_zero_terminal_snr(betas64).numpy()
    return arrays


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "..", "tests",
                                                      "data"))
    args = parser.parse_args()
    os.makedirs(args.out, exist_ok=True)
    for family, cases_fn, seed in (("unipc", unipc_cases, 0), ("dpmpp", dpmpp_cases, 1),
                                   ("lms", lms_cases, 2), ("deis", deis_cases, 3)):
        save(os.path.join(args.out, f"samplers_{family}.npz"),
             cases_fn(np.random.default_rng(seed)))
    for family, arrays in (("grids", grid_arrays()), ("schedules", schedule_arrays())):
        path = os.path.join(args.out, f"samplers_{family}.npz")
        np.savez_compressed(path, **arrays)
        print(f"{path}: {len(arrays)} arrays, {os.path.getsize(path)} bytes")


if __name__ == "__main__":
    main()
