"""Sampler benchmarks: full restorations side by side (pytest-benchmark; `make bench`).

Run: ``python -m pytest bench/bench_sampler.py -q`` (CPU, or CUDA when visible;
``DPFAST_BENCH_DEVICE=cpu|cuda`` forces one). On a busy shared CPU:
``DPFAST_BENCH_THREADS=1 ... --benchmark-timer=time.thread_time`` (see bench_kernels.py).
For every workload of the registry below the providers are:

- ``eager-fp32``, ``eager-bf16``, ``compile-fp32`` (and ``cudagraph-fp32`` on CUDA): a
  prepared :class:`dpfast.Sampler` restoring the batch (λ = 0.5) in that mode and precision;
- ``naive-fp32``: the same restoration as a loop of :func:`dpfast.naive_dps.naive_dps_step`,
  the original DPS code's way (autograd through the whole step, unfused elementwise ops).

Before every timed round two references run, timed but outside the round: the
network's forward and VJP with respect to its input alone, in the provider's precision
(the floor a DPS step cannot go below), and the eager-fp32 restoration. The load of a
shared machine drifts between tests by more than the differences measured, so overhead
and speedup only ever compare figures taken in the same rounds. The module ends with a
table: ms/step and images/s from the fastest round, the median ms/step, the network's
forward+VJP (fastest), the overhead total / (steps × network forward+VJP) − 1, the
speedup over eager-fp32 (fastest against fastest) and, for the compiled sampler, its
compile time (paid once, in ``prepare``).
``DPFAST_BENCH_TABLE=path`` also writes the table to a file.
"""
from __future__ import annotations

import datetime
import os
import platform
from dataclasses import dataclass

import pytest
from reporting import report_table
import torch
from pytest_benchmark.utils import load_timer

from dpfast.guidance import autograd_vjp
from dpfast.models.adm import ADMScoreModel
from dpfast.models.toy import ToyConvScore
from dpfast.naive_dps import naive_dps_step
from dpfast.noise import INITIAL_NOISE_STEP, counter_normal_ref
from dpfast.operators import GaussianBlur, measure
from dpfast.sampler import Sampler

DEVICE = os.environ.get("DPFAST_BENCH_DEVICE") or ("cuda" if torch.cuda.is_available() else "cpu")
if os.environ.get("DPFAST_BENCH_THREADS"):
    # On a shared CPU, OpenMP barriers wait out whole scheduler slices whenever a peer
    # thread is preempted (a toy step measured 100× slower with two threads).
    torch.set_num_threads(int(os.environ["DPFAST_BENCH_THREADS"]))

LAM = 0.5


@dataclass(frozen=True)
class Workload:
    network: str  # "toy" (ToyConvScore, hidden 32) or "adm-fmnist" (ADMScoreModel("builtin-fmnist"))
    image: tuple[int, int, int]
    batch: int
    steps: int  # few: the per-step cost is what is measured
    rounds: int


# The ADM UNet keeps its random initialisation (speed does not depend on the weights);
# bf16 on an AVX2 CPU costs ~13 s per step at batch 16, hence the short runs there.
WORKLOADS = {
    "toy-1x32x32-b16": Workload("toy", (1, 32, 32), batch=16, steps=10, rounds=7),
    "toy-3x64x64-b4": Workload("toy", (3, 64, 64), batch=4, steps=10, rounds=7),
    "adm-fmnist-b1": Workload("adm-fmnist", (1, 32, 32), batch=1, steps=4, rounds=5),
    "adm-fmnist-b16": Workload("adm-fmnist", (1, 32, 32), batch=16, steps=2, rounds=2),
}
PROVIDERS = ["eager-fp32", "eager-bf16", "compile-fp32", "naive-fp32"]
if DEVICE == "cuda":
    PROVIDERS.append("cudagraph-fp32")  # untested on hardware: no GPU where this was written
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}

_MODELS: dict[str, torch.nn.Module] = {}
_RESULTS: dict[tuple[str, str], dict] = {}


def _model(name: str) -> torch.nn.Module:
    if name not in _MODELS:
        workload = WORKLOADS[name]
        if workload.network == "toy":
            model = ToyConvScore(workload.image, hidden=32)
        else:
            model = ADMScoreModel("builtin-fmnist")
        _MODELS[name] = model.to(DEVICE).eval()
    return _MODELS[name]


def _measurement(workload: Workload, operator) -> torch.Tensor:
    clean = torch.rand(workload.batch, *workload.image, generator=torch.Generator().manual_seed(0)) * 2 - 1
    return measure(clean.to(DEVICE), operator, 0.05, seed=0)


def _synchronized(function):
    if DEVICE != "cuda":
        return function

    def run():
        out = function()
        torch.cuda.synchronize()
        return out

    return run


def _network_call(model, workload: Workload, dtype: torch.dtype):
    """One forward and one VJP with respect to the input, as a DPS step needs them."""
    x = torch.randn(workload.batch, *workload.image, generator=torch.Generator().manual_seed(1)).to(DEVICE)
    t = torch.full((workload.batch,), 500, device=DEVICE)

    def run():
        with torch.autocast(DEVICE, dtype=dtype, enabled=dtype != torch.float32, cache_enabled=False):
            output, vjp_fn = autograd_vjp(lambda x_in: model(x_in, t)[:, : x.shape[1]], x)
        return vjp_fn(torch.ones_like(output))

    return run


def _naive_restoration(sampler: Sampler, model, operator, y: torch.Tensor):
    """The restoration as a loop of naive autograd DPS steps (same seeds, λ, schedule)."""
    batch = sampler._prepare(y, [LAM] * y.shape[0], list(range(y.shape[0])))
    learned = sampler.variance == "learned_range"

    def run():
        x = counter_normal_ref(batch.seed_words, INITIAL_NOISE_STEP, sampler.image_shape)
        for k in range(sampler.steps - 1, -1, -1):
            x = naive_dps_step(
                model, operator, x, y, sampler.timesteps[k].expand(y.shape[0]), sampler.coefficients[k],
                batch.noise_scale, batch.zeta[k], batch.seed_words, k, sampler.clip_denoised, learned,
            )
        return x

    return run


def _restoration(workload: Workload, model, operator, y: torch.Tensor, provider: str):
    """A prepared restoration for ``provider`` and the compile/capture seconds it cost."""
    kind, precision = provider.rsplit("-", 1)
    mode = kind if kind in ("compile", "cudagraph") else "eager"
    sampler = Sampler(model, operator, steps=workload.steps, zeta=1.0, dtype=DTYPES[precision], mode=mode)
    if kind == "naive":
        restoration = _naive_restoration(sampler, model, operator, y)
        restoration()
    else:
        sampler.prepare(workload.batch)
        restoration = lambda: sampler.restore(y, lam=LAM, seed=0)  # noqa: E731
    return _synchronized(restoration), sampler.last_compile_seconds or sampler.last_capture_seconds


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("workload_name", list(WORKLOADS))
def test_restoration_speed(benchmark, request, workload_name, provider):
    workload = WORKLOADS[workload_name]
    model = _model(workload_name)
    operator = GaussianBlur(9, 1.5)
    y = _measurement(workload, operator)
    restoration, compile_seconds = _restoration(workload, model, operator, y, provider)
    # The network alone (same precision) and the eager-fp32 restoration run, timed, before
    # every round, so overhead and speedup compare figures taken side by side.
    paired = {"network": _synchronized(_network_call(model, workload, DTYPES[provider.rsplit("-", 1)[1]]))}
    if provider != "eager-fp32":
        paired["eager-fp32"] = _restoration(workload, model, operator, y, "eager-fp32")[0]
    paired_seconds = {name: [] for name in paired}
    timer = load_timer(str(request.config.getoption("benchmark_timer"))).target

    def time_the_paired_references():
        for name, function in paired.items():
            start = timer()
            function()
            paired_seconds[name].append(timer() - start)

    time_the_paired_references()  # warm-up, not counted
    for times in paired_seconds.values():
        times.clear()
    benchmark.group = workload_name
    benchmark.pedantic(restoration, setup=time_the_paired_references, rounds=workload.rounds, iterations=1)
    stats = benchmark.stats.stats
    network = min(paired_seconds["network"])
    eager = min(paired_seconds["eager-fp32"]) if provider != "eager-fp32" else stats.min
    per_step = stats.min / workload.steps
    _RESULTS[(workload_name, provider)] = dict(
        seconds=stats.min, median=stats.median, network=network, eager=eager, compile_seconds=compile_seconds
    )
    benchmark.extra_info.update(
        device=_device_name(), torch=torch.__version__, threads=torch.get_num_threads(),
        ms_per_step=1e3 * per_step, images_per_second=workload.batch / stats.min,
        network_ms=1e3 * network, overhead=per_step / network - 1, speedup_vs_eager_fp32=eager / stats.min,
        compile_seconds=compile_seconds,
    )


def _device_name() -> str:
    if DEVICE == "cuda":
        return torch.cuda.get_device_name()
    try:
        with open("/proc/cpuinfo") as handle:
            model = next((line.split(":", 1)[1].strip() for line in handle if line.startswith("model name")), platform.processor())
    except OSError:
        model = platform.processor()
    return f"{model}, {os.cpu_count()} CPUs, torch threads {torch.get_num_threads()}, ISA {torch.backends.cpu.get_cpu_capability()}"


def summary_table(results: dict[tuple[str, str], dict], timer: str = "time.perf_counter") -> list[str]:
    """Markdown rows per (workload, provider), from the fastest round (the least
    disturbed one: these machines are shared) with the median beside it."""
    lines = [
        f"device: {DEVICE} ({_device_name()}); torch {torch.__version__}; timer {timer}; {datetime.date.today()}",
        "",
        "| workload | steps | provider | ms/step | median ms/step | images/s | network fwd+VJP ms | overhead | "
        "speedup vs eager-fp32 | compile s |",
        "| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for (workload_name, provider), r in results.items():
        workload = WORKLOADS[workload_name]
        per_step = r["seconds"] / workload.steps
        speedup = f"{r['eager'] / r['seconds']:.2f}x"
        compile_seconds = "-" if r["compile_seconds"] is None else f"{r['compile_seconds']:.0f}"
        lines.append(
            f"| {workload_name} | {workload.steps} | {provider} | {1e3 * per_step:.1f} | "
            f"{1e3 * r['median'] / workload.steps:.1f} | {workload.batch / r['seconds']:.2f} | "
            f"{1e3 * r['network']:.1f} | {per_step / r['network'] - 1:+.0%} | {speedup} | {compile_seconds} |"
        )
    return lines


@pytest.fixture(scope="module", autouse=True)
def _print_summary(request):
    yield
    if not _RESULTS:
        return
    lines = summary_table(_RESULTS, str(request.config.getoption("benchmark_timer", "time.perf_counter")))
    report_table(request, lines)
