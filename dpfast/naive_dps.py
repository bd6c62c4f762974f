"""A deliberately naive DPS step, written the way the original DPS code works.

Autograd builds the whole graph (network, Tweedie, clamp, operator, norm) every step,
the gradient is ∇_{x_t} of the non-squared per-sample norm, and every elementwise op
is separate. It is the independent check of the sampler's decomposed, fused step
(tests) and the "naive loop" baseline of the benchmarks; it is not used for sampling.
"""
from __future__ import annotations

import torch

from dpfast.noise import counter_normal_ref
from dpfast.schedule import COLUMN


def naive_dps_step(
    model,
    operator,
    x: torch.Tensor,
    y: torch.Tensor,
    t: torch.Tensor,
    row: torch.Tensor,
    noise_scale: torch.Tensor,
    zeta: torch.Tensor,
    seed_words: torch.Tensor | None,
    step: int,
    clip_denoised: bool = True,
    learned_variance: bool = False,
) -> torch.Tensor:
    """x_prev = μ + s(λ)σz − ζ_b ∇_{x_t}‖y_b − A(x̂0(x_t))‖, all through autograd."""
    expand = (-1,) + (1,) * (x.dim() - 1)
    x = x.detach().requires_grad_(True)
    output = model(x, t).float()
    channels = x.shape[1]
    eps = output[:, :channels]
    pred_x0 = x * row[COLUMN["sqrt_recip_alpha_bar"]] - eps * row[COLUMN["sqrt_recip_alpha_bar_minus_one"]]
    if clip_denoised:
        pred_x0 = pred_x0.clamp(-1.0, 1.0)
    mean = pred_x0 * row[COLUMN["mean_coef_x0"]] + x * row[COLUMN["mean_coef_xt"]]
    if learned_variance:
        frac = (output[:, channels:] + 1.0) / 2.0
        log_variance = frac * row[COLUMN["log_variance_max"]] + (1.0 - frac) * row[COLUMN["log_variance_min"]]
        sigma = torch.exp(0.5 * log_variance) * row[COLUMN["noise_mask"]]
    else:
        sigma = row[COLUMN["sigma"]]
    x_prime = mean
    if seed_words is not None:
        noise = counter_normal_ref(seed_words, step, x.shape[1:])
        x_prime = mean + noise_scale.view(expand) * sigma * noise
    residual = y - operator(pred_x0)
    norms = residual.reshape(x.shape[0], -1).norm(dim=1)
    (grad,) = torch.autograd.grad(norms.sum(), x)
    return (x_prime - zeta.view(expand) * grad).detach()
