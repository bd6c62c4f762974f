"""Shared cases for the kernel tests and benchmarks: named shapes, dtypes, λ sets,
coefficient rows and the (device, backend) pairs this machine can run."""
from __future__ import annotations

import itertools
import math

import pytest
import torch

from dpfast.kernels import available_backends
from dpfast.noise import seed_tensor
from dpfast.schedule import COLUMN, Schedule

# (B, C, H, W) images and (B, d) analytic vectors.
SHAPES = {
    "image_pow2": (2, 3, 16, 16),
    "image_odd": (3, 3, 7, 5),
    "batch1": (1, 1, 8, 8),
    "vector": (6, 2),
    "vector_odd": (5, 13),
}
# The Triton interpreter costs ~0.1 s per launch: a few small shapes only.
TRITON_SHAPES = ("image_odd", "vector")

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}

# λ per sample (cycled over the batch); the noise scale is s(λ) = sqrt(λ).
LAMBDAS = {
    "lam0": [0.0],
    "lam0.3": [0.3],
    "lam1": [1.0],
    "lam_mixed": [0.0, 0.3, 1.0, 0.6],
}

NUM_TIMESTEPS = 1000
MIDDLE_STEP = 500


def coefficient_row(variance: str, step: int = MIDDLE_STEP, device="cpu") -> torch.Tensor:
    """Row ``step`` of the 1000-step linear schedule's table, float32."""
    table = Schedule.linear(NUM_TIMESTEPS).respace(NUM_TIMESTEPS).coefficient_table(variance)
    return torch.as_tensor(table[step], dtype=torch.float32, device=device)


def noise_scale(lambda_name: str, batch: int, device="cpu") -> torch.Tensor:
    values = LAMBDAS[lambda_name]
    lam = torch.tensor([values[b % len(values)] for b in range(batch)], dtype=torch.float32)
    return lam.sqrt().to(device)


def device_backends() -> list[tuple[str, str, str | None]]:
    """``(device, backend, skip_reason)`` for every backend that runs here; the CUDA
    ones appear once, with a skip reason, when no GPU is visible."""
    cases = [("cpu", name, None) for name in available_backends("cpu")]
    if torch.cuda.is_available():
        cases += [("cuda", name, None) for name in available_backends("cuda")]
    else:
        cases += [("cuda", name, "no CUDA device visible") for name in ("cuda", "triton")]
    return cases


def opcheck_devices() -> list:
    """pytest params ``(op kind, device)`` for opcheck: the C++ op on CPU (and CUDA where
    it runs), the Triton op where Triton runs (CPU under the interpreter, else CUDA)."""
    from dpfast.kernels.reverse_step import TRITON_INTERPRETED

    cases = [param("cpp_op", "cpu", id="cpp_op-cpu")]
    cuda_backends = available_backends("cuda") if torch.cuda.is_available() else []
    if "cuda" in cuda_backends:
        cases.append(param("cpp_op", "cuda", id="cpp_op-cuda"))
    if TRITON_INTERPRETED:
        cases.append(param("triton_op", "cpu", id="triton_op-cpu"))
    elif "triton" in cuda_backends:
        cases.append(param("triton_op", "cuda", id="triton_op-cuda"))
    else:
        cases.append(param("triton_op", "cuda", id="triton_op", skip="Triton runs neither interpreted nor on a GPU here"))
    return cases


def param(*values, id: str, skip: str | None = None):
    return pytest.param(*values, id=id, marks=[pytest.mark.skip(reason=skip)] if skip else [])


def step_inputs(
    shape, dtype, learned: bool, noise_kind: str, lambda_name: str, device="cpu", step: int = MIDDLE_STEP, seed: int = 0
) -> dict:
    """reverse_step arguments with realistic magnitudes: x_t = sqrt(ᾱ)·x0 + sqrt(1-ᾱ)·ε with
    x0 in [-1.2, 1.2] and a model ε off by 0.1·N(0,1), so x̃0 straddles the clamp."""
    generator = torch.Generator().manual_seed(seed)
    row = coefficient_row("learned_range" if learned else "fixed_small", step)
    alpha_bar = 1.0 / float(row[COLUMN["sqrt_recip_alpha_bar"]]) ** 2
    x0 = torch.rand(shape, generator=generator) * 2.4 - 1.2
    eps_true = torch.randn(shape, generator=generator)
    x = math.sqrt(alpha_bar) * x0 + math.sqrt(1.0 - alpha_bar) * eps_true
    eps = eps_true + 0.1 * torch.randn(shape, generator=generator)
    model_output = torch.cat([eps, torch.rand(shape, generator=generator) * 2 - 1], dim=1) if learned else eps
    batch = shape[0]
    return dict(
        x=x.to(dtype).to(device),
        model_output=model_output.to(dtype).to(device),
        coefficients=row.to(device),
        noise_scale=noise_scale(lambda_name, batch, device),
        noise=torch.randn(shape, generator=generator).to(dtype).to(device) if noise_kind == "tensor" else None,
        seed_words=seed_tensor(1234 + seed, batch, device) if noise_kind == "rng" else None,
        step=torch.tensor(step, device=device),
        clip_denoised=True,
        learned_variance=learned,
    )


def as_float64(arguments: dict) -> dict:
    """The same arguments with every floating input upcast exactly to float64 (the oracle)."""
    out = dict(arguments)
    for key in ("x", "model_output", "noise", "x_prime", "data_grad", "network_vjp", "residual"):
        if out.get(key) is not None:
            out[key] = out[key].to(torch.float64)
    return out


# reverse_step combinations: noise kind × λ × variance × clip. Without noise, λ is unused.
def reverse_step_combinations() -> list[tuple[str, str, bool, bool]]:
    combos = [("none", "lam0", learned, clip) for learned in (False, True) for clip in (True, False)]
    for noise_kind, lambda_name, learned, clip in itertools.product(
        ("tensor", "rng"), LAMBDAS, (False, True), (True, False)
    ):
        combos.append((noise_kind, lambda_name, learned, clip))
    return combos


# A covering subset for the Triton interpreter: every value of every axis appears.
TRITON_COMBINATIONS = [
    ("none", "lam0", False, True),
    ("tensor", "lam_mixed", True, True),
    ("tensor", "lam0.3", False, False),
    ("rng", "lam1", True, False),
    ("rng", "lam_mixed", False, True),
    ("rng", "lam0", True, True),
]


def combination_id(noise_kind: str, lambda_name: str, learned: bool, clip: bool) -> str:
    parts = [f"noise_{noise_kind}"]
    if noise_kind != "none":
        parts.append(lambda_name)
    parts.append("learned" if learned else "fixed")
    parts.append("clip" if clip else "noclip")
    return "-".join(parts)
