"""reverse_step on every backend equals reverse_step_ref (the definition)."""
from __future__ import annotations

import pytest
import torch

from dpfast import _extension
from dpfast.kernels import reverse_step, reverse_step_ref
from dpfast.testing import assert_close, assert_error_at_most_torch
from kernel_cases import (
    DTYPES,
    SHAPES,
    TRITON_COMBINATIONS,
    TRITON_SHAPES,
    as_float64,
    coefficient_row,
    combination_id,
    device_backends,
    noise_scale,
    opcheck_devices,
    param,
    reverse_step_combinations,
    step_inputs,
)


def _matching_cases():
    cases = []
    for device, backend, skip in device_backends():
        if skip:  # one placeholder per missing device, not hundreds of skips
            cases.append(param(device, backend, "image_odd", "fp32", ("none", "lam0", False, True), id=f"{device}-{backend}", skip=skip))
            continue
        if backend == "triton":
            grid = [(s, d, c) for s in TRITON_SHAPES for d in DTYPES for c in TRITON_COMBINATIONS]
        elif backend == "torch":  # the reference itself: a smoke check of the wrapper
            grid = [("image_odd", "fp32", c) for c in reverse_step_combinations()]
        else:
            grid = [(s, d, c) for s in SHAPES for d in DTYPES for c in reverse_step_combinations()]
        for shape_name, dtype_name, combo in grid:
            cases.append(
                param(device, backend, shape_name, dtype_name, combo,
                      id=f"{device}-{backend}-{shape_name}-{dtype_name}-{combination_id(*combo)}")
            )
    return cases


def _check_against_reference(arguments: dict, backend: str, dtype: torch.dtype) -> None:
    """float32: equal to the reference within the float32 tolerance. Reduced precision:
    within the dtype's tolerance of the float64 oracle, and at most 2× the error of the
    reference run in that dtype (the kernels compute in float32)."""
    expected = reverse_step_ref(**arguments)
    actual = reverse_step(**arguments, backend=backend)
    oracle = reverse_step_ref(**as_float64(arguments)) if dtype != torch.float32 else (None, None)
    for name, got, want, exact in zip(("pred_x0", "x_prime"), actual, expected, oracle):
        if backend != "torch":
            assert got.dtype == torch.float32 and got.is_contiguous() and got.shape == arguments["x"].shape
        if exact is None:
            assert_close(got, want, dtype, msg=name)
        else:
            assert_close(got, exact, dtype, msg=name)
            assert_error_at_most_torch(got, want, exact, msg=name)


@pytest.mark.parametrize("device, backend, shape_name, dtype_name, combo", _matching_cases())
def test_reverse_step_matches_reference(device, backend, shape_name, dtype_name, combo):
    noise_kind, lambda_name, learned, clip = combo
    dtype = DTYPES[dtype_name]
    arguments = step_inputs(SHAPES[shape_name], dtype, learned, noise_kind, lambda_name, device)
    arguments["clip_denoised"] = clip
    _check_against_reference(arguments, backend, dtype)


@pytest.mark.parametrize(
    "device, backend",
    [param(d, b, id=f"{d}-{b}", skip=s) for d, b, s in device_backends() if b != "torch"],
)
@pytest.mark.parametrize("step", [0, 1, 999], ids=["final_step", "step1", "step999"])
@pytest.mark.parametrize("learned", [False, True], ids=["fixed", "learned"])
def test_reverse_step_matches_reference_at_chain_ends(device, backend, step, learned):
    # Step 0 has σ = 0 and noise_mask = 0; step 999 has 1/sqrt(ᾱ) ≈ 156 (large cancellation).
    arguments = step_inputs(SHAPES["image_odd"], torch.float32, learned, "rng", "lam_mixed", device, step=step)
    _check_against_reference(arguments, backend, torch.float32)


@pytest.mark.parametrize(
    "device, backend",
    [param(d, b, id=f"{d}-{b}", skip=s) for d, b, s in device_backends()],
)
@pytest.mark.parametrize("shape_name", ["image_pow2", "vector_odd"])
def test_reverse_step_accepts_non_contiguous_inputs(device, backend, shape_name):
    arguments = step_inputs(SHAPES[shape_name], torch.float32, True, "tensor", "lam_mixed", device)
    # x: every other column of a wider tensor; model output and noise: transposed copies.
    wide = torch.stack([arguments["x"], torch.full_like(arguments["x"], float("nan"))], dim=-1)
    arguments["x"] = wide[..., 0]
    arguments["model_output"] = arguments["model_output"].transpose(0, -1).contiguous().transpose(0, -1)
    arguments["noise"] = arguments["noise"].transpose(0, -1).contiguous().transpose(0, -1)
    assert not arguments["x"].is_contiguous() and not arguments["noise"].is_contiguous()
    _check_against_reference(arguments, backend, torch.float32)


@pytest.mark.parametrize(
    "device, backend",
    [param(d, b, id=f"{d}-{b}", skip=s) for d, b, s in device_backends() if b != "torch"],
)
def test_reverse_step_takes_int_step_and_empty_batch(device, backend):
    arguments = step_inputs(SHAPES["vector"], torch.float32, False, "rng", "lam1", device)
    arguments["step"] = 500
    _check_against_reference(arguments, backend, torch.float32)
    empty = {**arguments, "x": arguments["x"][:0], "model_output": arguments["model_output"][:0],
             "noise_scale": arguments["noise_scale"][:0], "seed_words": arguments["seed_words"][:0]}
    pred_x0, x_prime = reverse_step(**empty, backend=backend)
    assert pred_x0.shape == x_prime.shape == (0, 2)


@pytest.mark.parametrize("backend", ["cpp", "triton", "torch"])
def test_reverse_step_rejects_bad_arguments_with_names(backend):
    x = torch.zeros(2, 3, 4, 4)
    row = coefficient_row("fixed_small")
    with pytest.raises(ValueError, match="model_output"):
        reverse_step(x, torch.zeros(2, 5, 4, 4), row, noise_scale("lam1", 2), backend=backend)
    with pytest.raises(ValueError, match="learned_variance"):
        reverse_step(x, torch.zeros(2, 3, 4, 4), row, noise_scale("lam1", 2), learned_variance=True, backend=backend)
    with pytest.raises(ValueError, match="noise_scale"):
        reverse_step(x, torch.zeros(2, 3, 4, 4), row, noise_scale("lam1", 3), backend=backend)
    with pytest.raises(ValueError, match="coefficients"):
        reverse_step(x, torch.zeros(2, 3, 4, 4), row[:4], noise_scale("lam1", 2), backend=backend)


def test_cpp_op_checks_arguments_itself():
    # The op can be called without the wrapper: the C++ side must refuse bad shapes too.
    if not _extension.cpu_extension_loaded():
        pytest.skip(f"C++ extension unavailable: {_extension.extension_error('cpu')}")
    x = torch.zeros(2, 3, 4, 4)
    with pytest.raises(RuntimeError, match="noise must have the shape of x"):
        torch.ops.dpfast.reverse_step(
            x, x, coefficient_row("fixed_small"), torch.ones(2), torch.zeros(2, 3, 4, 5), None,
            torch.tensor(3), True, False,
        )
    with pytest.raises(RuntimeError, match="step must be a 0-dim integer tensor"):
        torch.ops.dpfast.reverse_step(
            x, x, coefficient_row("fixed_small"), torch.ones(2), None, torch.tensor([1, 2]),
            torch.tensor(3.0), True, False,
        )


@pytest.mark.parametrize("op_kind, device", opcheck_devices())
@pytest.mark.parametrize("noise_kind", ["tensor", "rng", "none"])
def test_reverse_step_passes_opcheck(op_kind, device, noise_kind):
    op_name = "reverse_step" if op_kind == "cpp_op" else "reverse_step_triton"
    if not hasattr(torch.ops.dpfast, op_name):
        pytest.skip(f"dpfast::{op_name} is not registered (extension or triton missing)")
    arguments = step_inputs(SHAPES["image_odd"], torch.float32, True, noise_kind, "lam_mixed", device)
    torch.library.opcheck(getattr(torch.ops.dpfast, op_name), tuple(arguments.values()))


@pytest.mark.parametrize(
    "device, backend",
    [param(d, b, id=f"{d}-{b}", skip=s) for d, b, s in device_backends() if b != "torch"],
)
@pytest.mark.parametrize("dtype_name", ["bf16", "fp16"])
@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")  # NumPy on inf/NaN (interpreter)
def test_every_half_precision_value_widens_exactly(device, backend, dtype_name):
    # All 2^16 bit patterns (subnormals, infinities, NaNs included) through x̃0 = 1·x - 0·ε.
    bits = torch.arange(-(2**15), 2**15, dtype=torch.int32).to(torch.int16)
    x = bits.view(DTYPES[dtype_name]).reshape(2, 2**15).to(device)
    row = torch.zeros(8, device=device)
    row[0] = 1.0
    pred_x0, _ = reverse_step(x, torch.zeros_like(x), row, torch.zeros(2, device=device), clip_denoised=False, backend=backend)
    torch.testing.assert_close(pred_x0, x.float(), rtol=0, atol=0, equal_nan=True)
