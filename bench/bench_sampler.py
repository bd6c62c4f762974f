"""Sampler benchmarks (pytest-benchmark; `make bench`, not part of `make test`).

Times one reference DPS step and a full restoration on the toy network, side by side
with the naive autograd DPS step, and prints images/s. Later work adds the built-in
model and the compiled / CUDA-graph modes to the same registry.
"""
import platform

import pytest
import torch

from dpfast.models.toy import ToyConvScore
from dpfast.naive_dps import naive_dps_step
from dpfast.operators import GaussianBlur, measure
from dpfast.sampler import Sampler

WORKLOADS = {
    "toy-1x32x32-b16": dict(image=(1, 32, 32), batch=16, hidden=32),
    "toy-3x64x64-b4": dict(image=(3, 64, 64), batch=4, hidden=32),
}
FULL_RUN_STEPS = 50


def _setup(name):
    spec = WORKLOADS[name]
    model = ToyConvScore(spec["image"], hidden=spec["hidden"])
    operator = GaussianBlur(9, 1.5)
    sampler = Sampler(model, operator, steps=FULL_RUN_STEPS, zeta=1.0)
    clean = torch.rand(spec["batch"], *spec["image"]) * 2 - 1
    y = measure(clean, operator, 0.05, seed=0)
    return spec, model, operator, sampler, y


def _describe(benchmark, spec, images_per_call):
    benchmark.extra_info.update(
        device=platform.processor() or "cpu",
        torch=torch.__version__,
        threads=torch.get_num_threads(),
        images_per_call=images_per_call,
    )


@pytest.mark.parametrize("workload", WORKLOADS)
@pytest.mark.parametrize("provider", ["dpfast-reference-step", "naive-autograd-step"])
def test_one_dps_step(benchmark, workload, provider):
    spec, model, operator, sampler, y = _setup(workload)
    batch = sampler._prepare(y, [1.0] * spec["batch"], list(range(spec["batch"])))
    x = torch.randn(spec["batch"], *spec["image"])
    k = FULL_RUN_STEPS // 2
    if provider == "dpfast-reference-step":
        run = lambda: sampler.step(x, k, batch)
    else:
        run = lambda: naive_dps_step(
            model, operator, x, y, sampler.timesteps[k].expand(spec["batch"]), sampler.coefficients[k],
            batch.noise_scale, batch.zeta[k], batch.seed_words, k,
        )
    benchmark(run)
    _describe(benchmark, spec, spec["batch"])


@pytest.mark.parametrize("workload", WORKLOADS)
def test_full_restoration(benchmark, workload):
    spec, _, _, sampler, y = _setup(workload)
    benchmark.pedantic(lambda: sampler.restore(y, lam=0.5, seed=0), rounds=3, iterations=1)
    _describe(benchmark, spec, spec["batch"])
    images_per_second = spec["batch"] / benchmark.stats.stats.mean
    benchmark.extra_info["images_per_second"] = images_per_second
    benchmark.extra_info["ms_per_step"] = 1e3 * benchmark.stats.stats.mean / FULL_RUN_STEPS
    print(f"\n{workload}: {images_per_second:.2f} images/s at {FULL_RUN_STEPS} steps "
          f"({1e3 * benchmark.stats.stats.mean / FULL_RUN_STEPS:.2f} ms/step)")
