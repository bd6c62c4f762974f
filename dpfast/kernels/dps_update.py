"""The DPS guidance update (SPEC §4, step 4, in its decomposed form).

With x̃0 = a·x_t − b·ε(x_t) (a = 1/sqrt(ᾱ_t), b = sqrt(1/ᾱ_t − 1)) and
d = ∂(½‖r‖²)/∂x̂0 (the operator's VJP, masked where the clamp was active),

    ∇_{x_t} ‖r‖ = (a·d − b·J_εᵀ d) / ‖r‖,

so one VJP through the network with cotangent d plus this elementwise update gives
the guided step. ``dps_update_ref`` is the one definition of the update.
"""
from __future__ import annotations

import torch

from dpfast.schedule import COLUMN

# ‖r‖ is floored here so an exact fit (r = 0) gives a zero step, not NaN.
RESIDUAL_NORM_FLOOR = 1e-20


def dps_update_ref(
    x_prime: torch.Tensor,
    data_grad: torch.Tensor,
    network_vjp: torch.Tensor | None,
    residual: torch.Tensor,
    zeta: torch.Tensor,
    coefficients: torch.Tensor,
) -> torch.Tensor:
    """x_prev = x'_prev − ζ_b · (a·d − b·J_εᵀd) / ‖r_b‖, per sample b.

    Args:
        x_prime: x'_prev from the reverse step, float32 ``(B, *S)``.
        data_grad: d = ∂(½‖y − A(x̂0)‖²)/∂x̃0, float32 ``(B, *S)``.
        network_vjp: J_εᵀ d, ``(B, *S)``; ``None`` for the ``"x0"`` guidance mode, which
            takes the gradient with respect to x̂0 only (a = 1, b = 0: an approximation).
        residual: r = y − A(x̂0), ``(B, *M)`` (the measurement's shape).
        zeta: ``(B,)`` float32 step sizes ζ_b.
        coefficients: the step's coefficient-table row.

    Returns:
        x_prev, float32 ``(B, *S)``.
    """
    batch = x_prime.shape[0]
    expand = (-1,) + (1,) * (x_prime.dim() - 1)
    residual_sq = residual.float().reshape(batch, -1).pow(2).sum(dim=1)
    inv_norm = torch.rsqrt(residual_sq.clamp_min(RESIDUAL_NORM_FLOOR))
    if network_vjp is None:
        direction = data_grad.float()
    else:
        row = coefficients.float()
        direction = (
            data_grad.float() * row[COLUMN["sqrt_recip_alpha_bar"]]
            - network_vjp.float() * row[COLUMN["sqrt_recip_alpha_bar_minus_one"]]
        )
    return x_prime - (zeta.float() * inv_norm).view(expand) * direction
