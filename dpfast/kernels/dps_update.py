"""The DPS guidance update (SPEC §4, step 4, in its decomposed form).

With x̃0 = a·x_t − b·ε(x_t) (a = 1/sqrt(ᾱ_t), b = sqrt(1/ᾱ_t − 1)) and
d = ∂(½‖r‖²)/∂x̂0 (the operator's VJP, masked where the clamp was active),

    ∇_{x_t} ‖r‖ = (a·d − b·J_εᵀ d) / ‖r‖,

so one VJP through the network with cotangent d plus this elementwise update gives
the guided step. ``dps_update_ref`` is the one definition of the update. Then, in
order: the Triton kernels (per-sample partial sums of r², then the update), the
registered ops ``dpfast::dps_update_triton`` and the fake of the C++/CUDA
``dpfast::dps_update``, and the public wrapper :func:`dps_update`.
"""
from __future__ import annotations

from typing import Optional

import torch

from dpfast import _extension
from dpfast.kernels import backends
from dpfast.kernels.reverse_step import register_triton_op, tile_budget, tile_shape, triton
from dpfast.schedule import COEFFICIENT_COLUMNS, COLUMN

if triton is not None:
    import triton.language as tl

    from dpfast.kernels.reverse_step import (
        COLUMN_SQRT_RECIP_ALPHA_BAR,
        COLUMN_SQRT_RECIP_ALPHA_BAR_MINUS_ONE,
        _to_float32,
    )

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


# ---------------------------------------------------------------------------------
# Argument checks shared by the wrapper, the Triton op and the C++ op's fake.


def _check_dps_update_arguments(x_prime, data_grad, network_vjp, residual, zeta, coefficients) -> None:
    if x_prime.dim() < 1:
        raise ValueError("x_prime must be (B, ...), got a 0-dim tensor")
    if data_grad.shape != x_prime.shape:
        raise ValueError(f"data_grad must have the shape of x_prime {tuple(x_prime.shape)}, got {tuple(data_grad.shape)}")
    if network_vjp is not None and network_vjp.shape != x_prime.shape:
        raise ValueError(
            f"network_vjp must have the shape of x_prime {tuple(x_prime.shape)}, got {tuple(network_vjp.shape)}"
        )
    if residual.dim() < 1 or residual.shape[0] != x_prime.shape[0]:
        raise ValueError(f"residual must be (B, ...) with B = {x_prime.shape[0]}, got {tuple(residual.shape)}")
    if zeta.numel() != x_prime.shape[0]:
        raise ValueError(f"zeta must hold one value per sample ({x_prime.shape[0]}), got shape {tuple(zeta.shape)}")
    if coefficients.dim() != 1 or coefficients.shape[0] < len(COEFFICIENT_COLUMNS):
        raise ValueError(
            f"coefficients must be one row of the coefficient table ({len(COEFFICIENT_COLUMNS)} columns), "
            f"got shape {tuple(coefficients.shape)}"
        )


# ---------------------------------------------------------------------------------
# Triton kernels: 1) per-sample partial sums of r² over column chunks, 2) the update,
# which first reduces its rows' partial sums (a fixed order: deterministic).

if triton is not None:

    @triton.jit
    def _residual_partial_sums_kernel(
        residual_ptr, partial_ptr, batch, residual_numel, num_chunks,
        ROWS: tl.constexpr, COLUMNS: tl.constexpr,
    ):
        rows = tl.program_id(0) * ROWS + tl.arange(0, ROWS)
        columns = tl.program_id(1) * COLUMNS + tl.arange(0, COLUMNS)
        row_mask = rows < batch
        mask = row_mask[:, None] & (columns[None, :] < residual_numel)
        offsets = rows.to(tl.int64)[:, None] * residual_numel + columns[None, :]
        r = _to_float32(tl.load(residual_ptr + offsets, mask=mask, other=0.0))
        partial = tl.sum(r * r, axis=1)
        tl.store(partial_ptr + rows * num_chunks + tl.program_id(1), partial, mask=row_mask)

    @triton.jit
    def _dps_update_kernel(
        x_prime_ptr, data_grad_ptr, vjp_ptr, partial_ptr, zeta_ptr, coefficient_ptr, x_prev_ptr,
        batch, sample_numel, num_chunks,
        ROWS: tl.constexpr, COLUMNS: tl.constexpr, CHUNKS: tl.constexpr, HAS_VJP: tl.constexpr,
    ):
        rows = tl.program_id(0) * ROWS + tl.arange(0, ROWS)
        columns = tl.program_id(1) * COLUMNS + tl.arange(0, COLUMNS)
        row_mask = rows < batch
        chunks = tl.arange(0, CHUNKS)
        partial = tl.load(
            partial_ptr + rows[:, None] * num_chunks + chunks[None, :],
            mask=row_mask[:, None] & (chunks[None, :] < num_chunks), other=0.0,
        )
        sum_of_squares = tl.sum(partial, axis=1)
        floored = tl.where(sum_of_squares < 1e-20, 1e-20, sum_of_squares)
        zeta = tl.load(zeta_ptr + rows, mask=row_mask, other=0.0)
        factor = zeta * tl.math.div_rn(1.0, tl.sqrt_rn(floored))

        mask = row_mask[:, None] & (columns[None, :] < sample_numel)
        offsets = rows.to(tl.int64)[:, None] * sample_numel + columns[None, :]
        x_prime = _to_float32(tl.load(x_prime_ptr + offsets, mask=mask, other=0.0))
        direction = _to_float32(tl.load(data_grad_ptr + offsets, mask=mask, other=0.0))
        if HAS_VJP:
            vjp = _to_float32(tl.load(vjp_ptr + offsets, mask=mask, other=0.0))
            direction = (
                direction * tl.load(coefficient_ptr + COLUMN_SQRT_RECIP_ALPHA_BAR)
                - vjp * tl.load(coefficient_ptr + COLUMN_SQRT_RECIP_ALPHA_BAR_MINUS_ONE)
            )
        tl.store(x_prev_ptr + offsets, x_prime - factor[:, None] * direction, mask=mask)


# ---------------------------------------------------------------------------------
# Registered ops.


def _dps_update_fake(x_prime, data_grad, network_vjp, residual, zeta, coefficients):
    _check_dps_update_arguments(x_prime, data_grad, network_vjp, residual, zeta, coefficients)
    return x_prime.new_empty(x_prime.shape, dtype=torch.float32)


def _dps_update_triton(
    x_prime: torch.Tensor,
    data_grad: torch.Tensor,
    network_vjp: Optional[torch.Tensor],
    residual: torch.Tensor,
    zeta: torch.Tensor,
    coefficients: torch.Tensor,
) -> torch.Tensor:
    _check_dps_update_arguments(x_prime, data_grad, network_vjp, residual, zeta, coefficients)
    x_prev = x_prime.new_empty(x_prime.shape, dtype=torch.float32)
    if x_prime.numel() == 0:
        return x_prev
    batch = x_prime.shape[0]
    sample_numel = x_prime.numel() // batch
    residual_numel = residual.numel() // batch
    budget = tile_budget(x_prime.device)

    rows, columns = tile_shape(batch, residual_numel, budget)
    num_chunks = max(1, triton.cdiv(residual_numel, columns))
    partial_sums = torch.zeros((batch, num_chunks), dtype=torch.float32, device=x_prime.device)
    if residual_numel > 0:
        torch.library.wrap_triton(_residual_partial_sums_kernel)[(triton.cdiv(batch, rows), num_chunks)](
            residual.contiguous(), partial_sums, batch, residual_numel, num_chunks, ROWS=rows, COLUMNS=columns
        )

    rows, columns = tile_shape(batch, sample_numel, budget)
    chunks = triton.next_power_of_2(num_chunks)
    rows = max(1, min(rows, budget // chunks))
    grid = (triton.cdiv(batch, rows), triton.cdiv(sample_numel, columns))
    torch.library.wrap_triton(_dps_update_kernel)[grid](
        x_prime.contiguous(), data_grad.contiguous(),
        network_vjp.contiguous() if network_vjp is not None else x_prime,
        partial_sums, zeta.to(torch.float32).contiguous(), coefficients.to(torch.float32).contiguous(), x_prev,
        batch, sample_numel, num_chunks,
        ROWS=rows, COLUMNS=columns, CHUNKS=chunks, HAS_VJP=network_vjp is not None,
    )
    return x_prev


if triton is not None:
    register_triton_op("dpfast::dps_update_triton", _dps_update_triton, _dps_update_fake)

if _extension.cpu_extension_loaded():
    torch.library.register_fake("dpfast::dps_update", _dps_update_fake)


# ---------------------------------------------------------------------------------
# Public wrapper.


def dps_update(
    x_prime: torch.Tensor,
    data_grad: torch.Tensor,
    network_vjp: torch.Tensor | None,
    residual: torch.Tensor,
    zeta: torch.Tensor,
    coefficients: torch.Tensor,
    backend: str = "auto",
) -> torch.Tensor:
    """The DPS guidance update (SPEC §4 step 4), fused: :func:`dps_update_ref` in one pass per tensor.

    Computes x_prev = x'_prev − ζ_b·(a·d − b·J_εᵀd)/‖r_b‖ with per-sample residual norms:
    one pass over ``residual`` (sums of squares per sample), one over the other tensors.

    Args:
        x_prime: x'_prev ``(B, *S)``; float32, bfloat16 or float16.
        data_grad: d ``(B, *S)``.
        network_vjp: J_εᵀd ``(B, *S)``, or None for the ``"x0"`` mode (a = 1, b = 0).
        residual: r = y − A(x̂0) ``(B, *M)`` (the measurement's shape).
        zeta: ``(B,)`` step sizes ζ_b.
        coefficients: the step's coefficient-table row, on the device of ``x_prime``.
        backend: ``"auto"``, ``"cuda"``, ``"triton"``, ``"cpp"`` or ``"torch"``.

    Returns:
        x_prev, float32 (contiguous) of the shape of ``x_prime``.

    Example::

        >>> x_prev = dps_update(x_prime, d, vjp, y - A(pred_x0.clamp(-1, 1)), zeta, table[k])
    """
    _check_dps_update_arguments(x_prime, data_grad, network_vjp, residual, zeta, coefficients)
    dtypes = tuple(t.dtype for t in (x_prime, data_grad, network_vjp, residual) if t is not None)
    chosen = backends.resolve_backend(backend, x_prime.device, dtypes)
    if chosen == "torch":
        return dps_update_ref(x_prime, data_grad, network_vjp, residual, zeta, coefficients)
    op = torch.ops.dpfast.dps_update_triton.default if chosen == "triton" else torch.ops.dpfast.dps_update.default
    return op(x_prime, data_grad, network_vjp, residual, zeta, coefficients)
