"""DPS guidance pieces: the step-size table ζ and the data-fit gradient at x̂0 (SPEC §4)."""
from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence

import numpy as np
import torch

from dpfast import validation

GUIDANCE_MODES = ("dps", "none", "x0")


def _check_zeta_value(value, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.floating, np.integer)):
        raise TypeError(f"zeta {where} must be a number, got {type(value).__name__} {value!r}")
    value = float(value)
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"zeta {where} must be finite and >= 0, got {value}")
    return value


def _interpolate_mapping(mapping: Mapping, lam: float) -> float:
    points = sorted((validation.check_number(f"zeta mapping key {key!r}", key), _check_zeta_value(value, f"for lam={key}"))
                    for key, value in mapping.items())
    if not points:
        raise ValueError("zeta mapping must hold at least one (lam, zeta) pair")
    keys = [key for key, _ in points]
    if not keys[0] <= lam <= keys[-1]:
        raise ValueError(f"zeta mapping covers lam in [{keys[0]}, {keys[-1]}], got lam={lam}")
    return float(np.interp(lam, keys, [value for _, value in points]))


def _per_step(values, steps: int, where: str) -> np.ndarray:
    values = np.asarray(values.detach().cpu() if isinstance(values, torch.Tensor) else values, dtype=np.float64)
    if values.shape != (steps,):
        raise ValueError(f"zeta {where} must hold one value per step ({steps}), got shape {values.shape}")
    if not np.all(np.isfinite(values)) or np.any(values < 0):
        raise ValueError(f"zeta {where} must be finite and >= 0")
    return values


def beta_scaled_zeta(scale, schedule, steps: int) -> Callable[[float], np.ndarray]:
    """A per-step ζ that follows the likelihood term of the exact conditional reverse step.

    With the exact conditional score, the likelihood's gradient enters the reverse mean
    with the weight β'_k / √α'_k of the (respaced) chain; DPS's step ζ ∇‖r‖ is that
    gradient divided by ‖r‖/σ_n². So ``ζ_k = c · β'_k / √(1 − β'_k)`` with
    ``c ≈ ‖r‖/σ_n² ≈ √m / σ_n`` (m values per measurement) matches it in size: strong early,
    weak late, where a constant ζ is the reverse. ``scale``: c as a number or a mapping
    λ → c (interpolated): the deterministic λ = 0 end needs a larger c than λ = 1
    (docs/RESULTS.md, "Images"). ``schedule``: the model's :class:`~dpfast.schedule.Schedule`;
    ``steps``: the sampler's step count.

    Returns a callable of λ giving the per-step sequence (execution order) that
    :class:`~dpfast.Sampler` takes as ``zeta``.

    Example:
        >>> from dpfast.schedule import Schedule
        >>> zeta = beta_scaled_zeta({0.0: 640.0, 1.0: 160.0}, Schedule.linear(), steps=100)
        >>> zeta(1.0).shape
        (100,)
    """
    chain = schedule.respace(steps)
    per_step = (chain.betas / np.sqrt(1.0 - chain.betas))[::-1].copy()  # execution order: noisiest first
    if isinstance(scale, Mapping):
        _interpolate_mapping(scale, float(min(scale)))  # fail early on bad values
    else:
        _check_zeta_value(scale, "scale")

    def zeta(lam: float) -> np.ndarray:
        factor = _interpolate_mapping(scale, lam) if isinstance(scale, Mapping) else float(scale)
        return factor * per_step

    return zeta


def zeta_table(zeta, lams: Sequence[float], steps: int) -> np.ndarray:
    """Resolve ``zeta`` to a float64 table ``(steps, B)`` indexed by table row k.

    ``zeta`` may be a number; a mapping λ → ζ (linear interpolation between its keys,
    an error outside them); a callable of λ returning a number or a per-step sequence;
    or a per-step sequence. Per-step sequences are in execution order: entry 0 is the
    first (noisiest) step, i.e. table row ``steps - 1``.
    """
    columns = []
    for lam in lams:
        if isinstance(zeta, Mapping):
            value = _interpolate_mapping(zeta, lam)
        elif callable(zeta):
            value = zeta(lam)
        else:
            value = zeta
        if isinstance(value, (np.ndarray, torch.Tensor)) and value.ndim == 0:
            value = value.item()  # a 0-dim array is one number, not a per-step sequence
        if isinstance(value, (Sequence, np.ndarray, torch.Tensor)) and not isinstance(value, str):
            column = _per_step(value, steps, f"for lam={lam}")[::-1]
        else:
            column = np.full(steps, _check_zeta_value(value, f"for lam={lam}"))
        columns.append(column)
    return np.stack(columns, axis=1) if columns else np.zeros((steps, 0))


def autograd_vjp(function: Callable, primal: torch.Tensor, has_aux: bool = False):
    """``torch.func.vjp``'s contract on plain autograd: ``(output, vjp_fn)`` or ``(output, vjp_fn, aux)``.

    ``function`` runs once on a fresh leaf copy of ``primal`` with gradients enabled;
    ``vjp_fn(cotangent)`` returns ``(Jᵀ·cotangent,)`` and frees the graph (call it once).
    ``output`` and ``aux`` come back detached. Eager sampling and CUDA-graph capture use
    it because it runs any differentiable code (``torch.func.vjp`` needs functorch-
    compatible ``autograd.Function``s); ``torch.compile(fullgraph=True)`` cannot trace
    ``torch.autograd.grad``, so compiled steps pass ``torch.func.vjp`` instead.

    Example::

        >>> output, vjp_fn = autograd_vjp(torch.sin, torch.zeros(3))
        >>> vjp_fn(torch.ones(3))[0]
        tensor([1., 1., 1.])
    """
    with torch.enable_grad():
        leaf = primal.detach().requires_grad_(True)
        result = function(leaf)
    output, aux = result if has_aux else (result, None)

    def vjp_fn(cotangent: torch.Tensor) -> tuple[torch.Tensor]:
        return torch.autograd.grad(output, leaf, grad_outputs=cotangent)

    if not has_aux:
        return output.detach(), vjp_fn
    return output.detach(), vjp_fn, aux.detach() if isinstance(aux, torch.Tensor) else aux


def data_fit_gradient(
    pred_x0: torch.Tensor, y: torch.Tensor, operator, clip_denoised: bool, vjp: Callable = autograd_vjp
) -> tuple[torch.Tensor, torch.Tensor]:
    """Residual r = y − A(x̂0) and d = ∂(½‖r‖²)/∂x̃0 through the operator (and the clamp).

    ``pred_x0`` is the unclamped Tweedie estimate x̃0; with ``clip_denoised`` the operator
    sees clamp(x̃0) and the VJP zeroes d where the clamp was active. ``vjp`` is
    :func:`autograd_vjp` (eager, CUDA graphs) or ``torch.func.vjp`` (inside
    ``torch.compile``); both give the same numbers.
    """

    def measured(x0: torch.Tensor) -> torch.Tensor:
        return operator(x0.clamp(-1.0, 1.0) if clip_denoised else x0)

    measurement, operator_vjp = vjp(measured, pred_x0)
    residual = y - measurement
    (grad,) = operator_vjp(-residual)
    return residual, grad
