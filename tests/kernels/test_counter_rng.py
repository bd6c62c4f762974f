"""The in-kernel counter RNG draws exactly dpfast.noise.counter_normal_ref's numbers."""
from __future__ import annotations

import math

import pytest
import torch

from dpfast.kernels import available_backends, reverse_step
from dpfast.noise import INITIAL_NOISE_STEP, counter_normal_ref, seed_tensor
from kernel_cases import SHAPES, device_backends, param

# The integer part (hash, key, counters) is exact; the float part (log, cos, sqrt) uses
# the kernels' own polynomials, within 3 ulps of torch's log/cos over all 2^24 inputs.
ULPS = 4
FLOAT32_EPS = torch.finfo(torch.float32).eps
# A coefficient row that makes x'_prev = 0 + (1·1)·z exactly: the step returns its noise.
NOISE_ONLY_ROW = torch.tensor([0.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 1.0])


def in_kernel_noise(seed_words: torch.Tensor, step, sample_shape, device: str, backend: str) -> torch.Tensor:
    batch = seed_words.numel()
    x = torch.zeros((batch, *sample_shape), device=device)
    _, z = reverse_step(
        x, x, NOISE_ONLY_ROW.to(device), torch.ones(batch, device=device), seed_words=seed_words.to(device),
        step=step, clip_denoised=False, backend=backend,
    )
    return z


def assert_within_ulps(actual: torch.Tensor, expected: torch.Tensor) -> None:
    torch.testing.assert_close(
        actual.cpu(), expected.cpu(), rtol=ULPS * FLOAT32_EPS, atol=ULPS * FLOAT32_EPS
    )


@pytest.mark.parametrize("device, backend", [param(d, b, id=f"{d}-{b}", skip=s) for d, b, s in device_backends()])
@pytest.mark.parametrize("shape_name", ["image_odd", "vector_odd"])
@pytest.mark.parametrize("step", [0, 731, INITIAL_NOISE_STEP], ids=["step0", "step731", "initial_noise_step"])
def test_in_kernel_noise_matches_counter_normal_ref(device, backend, shape_name, step):
    shape = SHAPES[shape_name]
    words = seed_tensor(2024, shape[0])
    z = in_kernel_noise(words, torch.tensor(step), shape[1:], device, backend)
    assert_within_ulps(z, counter_normal_ref(words, step, shape[1:]))


def test_same_seed_gives_same_numbers_on_every_backend():
    words = seed_tensor([3, 2**40 + 5, 11], 3)
    draws = {
        f"{device}-{backend}": in_kernel_noise(words, torch.tensor(17), (4, 33, 3), device, backend).cpu()
        for device, backend, skip in device_backends()
        if skip is None
    }
    reference = counter_normal_ref(words, 17, (4, 33, 3))
    for name, z in draws.items():
        assert_within_ulps(z, reference)
    if "cpu-cpp" in draws and "cpu-triton" in draws:
        # Same polynomials, same operation order, no contraction: identical bits.
        assert torch.equal(draws["cpu-cpp"], draws["cpu-triton"])


@pytest.mark.parametrize("backend", [b for b in available_backends("cpu")])
def test_noise_of_a_sample_does_not_depend_on_its_batch(backend):
    words = seed_tensor(99, 5)
    batched = in_kernel_noise(words, torch.tensor(5), (2, 9, 7), "cpu", backend)
    alone = in_kernel_noise(words[3:4], torch.tensor(5), (2, 9, 7), "cpu", backend)
    assert torch.equal(batched[3:4], alone)


def _best_cpu_backend() -> str:
    return available_backends("cpu")[0]


def test_noise_differs_between_steps_and_seeds():
    backend = _best_cpu_backend()
    n = 1 << 14
    words = seed_tensor(0, 2)
    z_step_a = in_kernel_noise(words, torch.tensor(10), (n,), "cpu", backend)
    z_step_b = in_kernel_noise(words, torch.tensor(11), (n,), "cpu", backend)
    # |correlation| of independent draws exceeds 5/sqrt(n) with probability < 1e-6.
    bound = 5.0 / math.sqrt(n)
    for a, b in [(z_step_a[0], z_step_b[0]), (z_step_a[0], z_step_a[1])]:
        assert abs(float(torch.corrcoef(torch.stack([a, b]))[0, 1])) < bound


def test_in_kernel_noise_is_standard_normal():
    # Sample size 2^20 (16 seeds × 2^16 elements), seed fixed; every statistic must lie
    # within 5 standard errors of its value under N(0, 1) i.i.d.
    backend = _best_cpu_backend()
    seeds, per_seed = 16, 1 << 16
    z = in_kernel_noise(seed_tensor(31337, seeds), torch.tensor(250), (per_seed,), "cpu", backend).double()
    n = z.numel()
    flat = z.reshape(-1)
    mean = float(flat.mean())
    variance = float(flat.var())
    assert abs(mean) < 5.0 / math.sqrt(n), f"mean {mean}"
    assert abs(variance - 1.0) < 5.0 * math.sqrt(2.0 / n), f"variance {variance}"
    # Neighbouring elements of a sample, and the same element of neighbouring seeds.
    lag_one = float((z[:, 1:] * z[:, :-1]).mean())
    across_seeds = float((z[1:] * z[:-1]).mean())
    assert abs(lag_one) < 5.0 / math.sqrt(seeds * (per_seed - 1)), f"lag-1 correlation {lag_one}"
    assert abs(across_seeds) < 5.0 / math.sqrt((seeds - 1) * per_seed), f"across-seed correlation {across_seeds}"
    # Tails: P(|z| > 3) = 0.0026998; its count is binomial.
    p = math.erfc(3.0 / math.sqrt(2.0))
    tail = float((flat.abs() > 3.0).double().mean())
    assert abs(tail - p) < 5.0 * math.sqrt(p * (1 - p) / n), f"P(|z| > 3) = {tail}"
