"""The one tolerance table for comparing dpfast's kernels with their references.

Keyed by the dtype of the inputs, used by every test. A comparison passes when, for
every element, ``|actual - expected| <= atol * scale + rtol * |expected|`` with
``scale = max(1, max |expected|)``: the absolute part is relative to the size of the
tensor, so a value that cancels to nearly zero (x̃0 = a·x - b·ε with a, b up to ~150 at
the start of a chain) is judged against the size of the terms that produced it.

For reduced precision the rule that matters is flash-attention's: the kernel's error
against a float64 oracle must be at most ``TORCH_ERROR_FACTOR`` (2×) the error of the
plain torch chain run in that dtype (:func:`assert_error_at_most_torch`).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Tolerance:
    rtol: float  # relative to each expected element
    atol: float  # relative to max(1, max |expected|)


# float32: the kernels repeat the reference's operations, so differences are a few
# ulps (polynomial exp/log/cos, the residual sum's order). bfloat16/float16: a few
# roundings of the reference's own intermediates (unit roundoff 2^-9 and 2^-11).
TOLERANCES: dict[torch.dtype, Tolerance] = {
    torch.float64: Tolerance(rtol=1e-12, atol=1e-12),
    torch.float32: Tolerance(rtol=1.3e-6, atol=1e-6),
    torch.bfloat16: Tolerance(rtol=1.6e-2, atol=8e-3),
    torch.float16: Tolerance(rtol=1e-3, atol=1e-3),
}
TORCH_ERROR_FACTOR = 2.0
# Slack of the 2× rule: a few float32 roundings of the result, which the float32
# outputs of the kernels and the reference both carry.
FLOAT32_SLACK = 2.0**-21


def tolerance(dtype: torch.dtype) -> Tolerance:
    """The tolerance for results computed from inputs of ``dtype``."""
    try:
        return TOLERANCES[dtype]
    except KeyError:
        raise KeyError(f"no tolerance for dtype {dtype}; known: {sorted(map(str, TOLERANCES))}") from None


def _scale(expected: torch.Tensor) -> float:
    return max(1.0, float(expected.detach().abs().max())) if expected.numel() else 1.0


def assert_close(actual: torch.Tensor, expected: torch.Tensor, dtype: torch.dtype, msg: str = "") -> None:
    """``torch.testing.assert_close`` in float64 with the table's tolerance for ``dtype``."""
    tol = tolerance(dtype)
    expected64 = expected.detach().to(torch.float64)
    torch.testing.assert_close(
        actual.detach().to(torch.float64),
        expected64,
        rtol=tol.rtol,
        atol=tol.atol * _scale(expected64),
        msg=(lambda default: f"{msg}\n{default}") if msg else None,
    )


def max_error(actual: torch.Tensor, oracle: torch.Tensor) -> float:
    """Largest absolute difference, in float64."""
    if actual.numel() == 0:
        return 0.0
    return float((actual.detach().to(torch.float64) - oracle.detach().to(torch.float64)).abs().max())


def assert_error_at_most_torch(
    actual: torch.Tensor, torch_result: torch.Tensor, oracle: torch.Tensor, msg: str = ""
) -> None:
    """The kernel's error against ``oracle`` (float64) is at most 2× plain torch's error
    in the same dtype, plus a few float32 roundings at the tensor's scale."""
    kernel_error = max_error(actual, oracle)
    torch_error = max_error(torch_result, oracle)
    bound = TORCH_ERROR_FACTOR * torch_error + FLOAT32_SLACK * _scale(oracle)
    if not kernel_error <= bound:
        raise AssertionError(
            f"{msg} kernel error {kernel_error:.3e} exceeds {TORCH_ERROR_FACTOR}x plain torch's "
            f"{torch_error:.3e} (+ slack; bound {bound:.3e})"
        )
