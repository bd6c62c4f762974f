"""dps_update on every backend equals dps_update_ref (the definition)."""
from __future__ import annotations

import pytest
import torch

from dpfast.kernels import dps_update, dps_update_ref
from dpfast.kernels.dps_update import RESIDUAL_NORM_FLOOR
from dpfast.testing import assert_close, assert_error_at_most_torch
from kernel_cases import DTYPES, as_float64, coefficient_row, device_backends, opcheck_devices, param

# (x shape, residual shape): denoising, super-resolution, odd sizes, batch 1, vectors.
UPDATE_SHAPES = {
    "image_pow2": ((2, 3, 16, 16), (2, 3, 16, 16)),
    "image_superres": ((2, 3, 16, 16), (2, 3, 4, 4)),
    "image_odd": ((3, 1, 7, 5), (3, 1, 7, 5)),
    "batch1": ((1, 3, 8, 8), (1, 3, 8, 8)),
    "vector": ((6, 2), (6, 3)),
    "vector_odd": ((5, 13), (5, 1)),
}
TRITON_UPDATE_SHAPES = ("image_superres", "vector_odd")
MODES = ("dps", "x0")  # with the network VJP, or the x̂0-only approximation


def update_inputs(x_shape, residual_shape, dtype, mode: str, device="cpu", step: int = 500, seed: int = 0) -> dict:
    generator = torch.Generator().manual_seed(seed)
    batch = x_shape[0]
    residual = 0.05 * torch.randn(residual_shape, generator=generator)
    if batch > 1:
        residual[-1] = 0.0  # an exact fit: the floored norm gives a zero step
    return dict(
        x_prime=torch.randn(x_shape, generator=generator).to(dtype).to(device),
        data_grad=(0.1 * torch.randn(x_shape, generator=generator)).to(dtype).to(device),
        network_vjp=(0.1 * torch.randn(x_shape, generator=generator)).to(dtype).to(device) if mode == "dps" else None,
        residual=residual.to(dtype).to(device),
        zeta=(0.5 + torch.rand(batch, generator=generator)).to(device),
        coefficients=coefficient_row("fixed_small", step, device),
    )


def _check_against_reference(arguments: dict, backend: str, dtype: torch.dtype) -> None:
    expected = dps_update_ref(**arguments)
    actual = dps_update(**arguments, backend=backend)
    assert actual.dtype == torch.float32 and actual.shape == arguments["x_prime"].shape
    if dtype == torch.float32:
        assert_close(actual, expected, dtype)
    else:
        oracle = dps_update_ref(**as_float64(arguments))
        assert_close(actual, oracle, dtype)
        assert_error_at_most_torch(actual, expected, oracle)


def _matching_cases():
    cases = []
    for device, backend, skip in device_backends():
        if skip:
            cases.append(param(device, backend, "vector", "fp32", "dps", id=f"{device}-{backend}", skip=skip))
            continue
        shapes = TRITON_UPDATE_SHAPES if backend == "triton" else UPDATE_SHAPES
        dtypes = ("fp32",) if backend == "torch" else DTYPES
        for shape_name in shapes:
            for dtype_name in dtypes:
                for mode in MODES:
                    cases.append(param(device, backend, shape_name, dtype_name, mode,
                                       id=f"{device}-{backend}-{shape_name}-{dtype_name}-{mode}"))
    return cases


@pytest.mark.parametrize("device, backend, shape_name, dtype_name, mode", _matching_cases())
def test_dps_update_matches_reference(device, backend, shape_name, dtype_name, mode):
    x_shape, residual_shape = UPDATE_SHAPES[shape_name]
    dtype = DTYPES[dtype_name]
    _check_against_reference(update_inputs(x_shape, residual_shape, dtype, mode, device), backend, dtype)


@pytest.mark.parametrize(
    "device, backend", [param(d, b, id=f"{d}-{b}", skip=s) for d, b, s in device_backends() if b != "torch"]
)
@pytest.mark.parametrize("step", [0, 999], ids=["final_step", "step999"])
def test_dps_update_matches_reference_at_chain_ends(device, backend, step):
    arguments = update_inputs((3, 3, 8, 8), (3, 3, 4, 4), torch.float32, "dps", device, step=step)
    _check_against_reference(arguments, backend, torch.float32)


@pytest.mark.parametrize("device, backend", [param(d, b, id=f"{d}-{b}", skip=s) for d, b, s in device_backends()])
def test_dps_update_accepts_non_contiguous_inputs(device, backend):
    arguments = update_inputs((2, 3, 8, 8), (2, 3, 8, 8), torch.float32, "dps", device)
    for key in ("x_prime", "network_vjp", "residual"):
        arguments[key] = arguments[key].transpose(1, 3).contiguous().transpose(1, 3)
        assert not arguments[key].is_contiguous()
    _check_against_reference(arguments, backend, torch.float32)


@pytest.mark.parametrize("device, backend", [param(d, b, id=f"{d}-{b}", skip=s) for d, b, s in device_backends()])
def test_residual_norm_is_per_sample(device, backend):
    # Changing sample 1's residual must not move sample 0 (no batch-wide norm, SPEC §4).
    arguments = update_inputs((3, 2, 5, 5), (3, 2, 5, 5), torch.float32, "dps", device)
    before = dps_update(**arguments, backend=backend)
    arguments["residual"] = arguments["residual"].clone()
    arguments["residual"][1] *= 10.0
    after = dps_update(**arguments, backend=backend)
    assert torch.equal(before[0], after[0]) and torch.equal(before[2], after[2])
    assert not torch.equal(before[1], after[1])


@pytest.mark.parametrize("device, backend", [param(d, b, id=f"{d}-{b}", skip=s) for d, b, s in device_backends()])
def test_exact_fit_gives_zero_step(device, backend):
    arguments = update_inputs((2, 4), (2, 3), torch.float32, "x0", device)
    arguments["residual"] = torch.zeros_like(arguments["residual"])
    arguments["data_grad"] = torch.zeros_like(arguments["data_grad"])
    assert RESIDUAL_NORM_FLOOR > 0
    assert torch.equal(dps_update(**arguments, backend=backend), arguments["x_prime"].float())


@pytest.mark.parametrize("backend", ["cpp", "triton", "torch"])
def test_dps_update_rejects_bad_arguments_with_names(backend):
    arguments = update_inputs((2, 3, 4, 4), (2, 5), torch.float32, "dps")
    with pytest.raises(ValueError, match="residual"):
        dps_update(**{**arguments, "residual": torch.zeros(3, 5)}, backend=backend)
    with pytest.raises(ValueError, match="zeta"):
        dps_update(**{**arguments, "zeta": torch.ones(3)}, backend=backend)
    with pytest.raises(ValueError, match="network_vjp"):
        dps_update(**{**arguments, "network_vjp": torch.zeros(2, 3, 4, 5)}, backend=backend)


@pytest.mark.parametrize("op_kind, device", opcheck_devices())
@pytest.mark.parametrize("mode", MODES)
def test_dps_update_passes_opcheck(op_kind, device, mode):
    op_name = "dps_update" if op_kind == "cpp_op" else "dps_update_triton"
    if not hasattr(torch.ops.dpfast, op_name):
        pytest.skip(f"dpfast::{op_name} is not registered (extension or triton missing)")
    arguments = update_inputs((2, 3, 6, 6), (2, 3, 3, 3), torch.float32, mode, device)
    torch.library.opcheck(getattr(torch.ops.dpfast, op_name), tuple(arguments.values()))
