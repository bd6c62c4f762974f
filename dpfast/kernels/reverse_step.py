"""The λ-scaled reverse step (SPEC §4, steps 1–3).

``reverse_step_ref`` is the one definition of what the op computes; the sampler,
tests and benchmarks all use it (directly or as the oracle for the fused backends).
"""
from __future__ import annotations

import torch

from dpfast.noise import counter_normal_ref
from dpfast.schedule import COLUMN


def reverse_step_ref(
    x: torch.Tensor,
    model_output: torch.Tensor,
    coefficients: torch.Tensor,
    noise_scale: torch.Tensor,
    noise: torch.Tensor | None = None,
    seed_words: torch.Tensor | None = None,
    step: int | torch.Tensor = 0,
    clip_denoised: bool = True,
    learned_variance: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One λ-scaled DDPM reverse step without guidance.

    Args:
        x: the state x_t, float32 ``(B, *S)`` with ``S = (C, H, W)`` or ``(d,)``.
        model_output: ε, or ε and the ``learned_range`` value v stacked on dim 1
            (``(B, 2C, ...)``) when ``learned_variance``; any float dtype.
        coefficients: one row of the coefficient table (``dpfast.schedule.COLUMN``), float32.
        noise_scale: ``(B,)`` float32, s(λ_b): sqrt(λ) (variance scaling) or λ.
        noise: ``z`` of the shape of ``x``; if ``None`` and ``seed_words`` is given, z is
            drawn from the counter RNG keyed by ``(seed_words[b], step, element)``; if
            both are ``None`` no noise is added (every λ is 0).
        clip_denoised: clamp x̂0 to [-1, 1] before forming the mean.

    Returns:
        ``(pred_x0, x_prime)``: the *unclamped* Tweedie estimate
        x̃0 = (x_t - sqrt(1-ᾱ_t) ε) / sqrt(ᾱ_t) — the clamp mask is |x̃0| <= 1 — and
        x'_prev = c0·clamp(x̃0) + c1·x_t + s(λ)·σ_t·z, both float32 of the shape of ``x``.
    """
    channels = x.shape[1]
    model_output = model_output.float()
    eps = model_output[:, :channels]
    row = coefficients.float()
    pred_x0 = x * row[COLUMN["sqrt_recip_alpha_bar"]] - eps * row[COLUMN["sqrt_recip_alpha_bar_minus_one"]]
    x0_used = pred_x0.clamp(-1.0, 1.0) if clip_denoised else pred_x0
    mean = x0_used * row[COLUMN["mean_coef_x0"]] + x * row[COLUMN["mean_coef_xt"]]
    if noise is None and seed_words is None:
        return pred_x0, mean
    if noise is None:
        noise = counter_normal_ref(seed_words, step, x.shape[1:])
    if learned_variance:
        frac = (model_output[:, channels:] + 1.0) * 0.5
        log_variance = frac * row[COLUMN["log_variance_max"]] + (1.0 - frac) * row[COLUMN["log_variance_min"]]
        sigma = torch.exp(0.5 * log_variance) * row[COLUMN["noise_mask"]]
    else:
        sigma = row[COLUMN["sigma"]]
    scale = noise_scale.float().view(-1, *([1] * (x.dim() - 1)))
    return pred_x0, mean + scale * sigma * noise.float()
