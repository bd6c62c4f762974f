"""Sampler benchmarks: full restorations side by side (pytest-benchmark; `make bench`).

Run: ``python -m pytest bench/bench_sampler.py -q`` (CPU, or CUDA when visible;
``DPFAST_BENCH_DEVICE=cpu|cuda`` forces one). On a busy shared CPU:
``DPFAST_BENCH_THREADS=1 ... --benchmark-timer=time.thread_time`` (see bench_kernels.py).
The providers and the paired timing are :mod:`dpfast.benchmark`'s (also behind
``dpfast bench``): dpfast's modes and precisions, the naive DPS loop (``naive-fp32``)
and deepinv's DPS on the same network (``deepinv-fp64``/``-fp32``, when installed).
Before every timed round the network's forward+VJP alone and the eager-fp32 restoration
run, timed but outside the round, so overhead (total / (steps × network) − 1) and speedup
only ever compare figures taken in the same rounds. The module ends with a table: ms/step
and images/s from the fastest round, the median, the network's forward+VJP, overhead,
speedup over eager-fp32, compile time, and the achieved TFLOP/s of the network's work
against the device's measured matmul ceiling in the network's dtype. ``DPFAST_BENCH_TABLE=path`` writes it to a file.
``DPFAST_BENCH_PROVIDERS=a,b`` and ``DPFAST_BENCH_WORKLOADS=name,...`` narrow a run (the
only way to select ``compile-bf16``, which is left out by default).
"""
from __future__ import annotations

import os

import pytest
import torch
from pytest_benchmark.utils import load_timer
from reporting import report_table

from dpfast import benchmark as shared
from dpfast import cpu_memory
from dpfast.models.loading import BUILTIN_ASSET
from dpfast.sampler import Sampler

DEVICE = os.environ.get("DPFAST_BENCH_DEVICE") or ("cuda" if torch.cuda.is_available() else "cpu")
if os.environ.get("DPFAST_BENCH_THREADS"):
    # On a shared CPU, OpenMP barriers wait out whole scheduler slices whenever a peer
    # thread is preempted (a toy step measured 100× slower with two threads).
    torch.set_num_threads(int(os.environ["DPFAST_BENCH_THREADS"]))

# Random ADM weights where the built-in ones are not installed (speed does not depend on
# them); bf16 on an AVX2 CPU costs ~13 s per step at batch 16, hence the short runs there.
FMNIST = "builtin" if BUILTIN_ASSET.is_file() else "adm-fmnist"
if DEVICE == "cuda":
    WORKLOADS = [
        shared.Workload("adm-ffhq256", (3, 256, 256), batch=1, steps=20, rounds=3),
        shared.Workload("adm-ffhq256", (3, 256, 256), batch=8, steps=10, rounds=3),
        shared.Workload(FMNIST, (1, 32, 32), batch=64, steps=20, rounds=3),
    ]
else:
    WORKLOADS = [
        shared.Workload("toy", (1, 32, 32), batch=16, steps=10, rounds=7),
        shared.Workload("toy", (3, 64, 64), batch=4, steps=10, rounds=7),
        shared.Workload(FMNIST, (1, 32, 32), batch=1, steps=4, rounds=5),
        shared.Workload(FMNIST, (1, 32, 32), batch=16, steps=2, rounds=2),
        shared.Workload(FMNIST, (1, 32, 32), batch=64, steps=2, rounds=2),  # eager-bf16 alone: ~4 min here
    ]
# x̂0 guidance (guidance="x0": no VJP through the network) against DPS, eager fp32, the demo's
# network at the demo's batch size (test_x0_guidance_speed_against_dps).
GUIDANCE_WORKLOAD = shared.Workload(FMNIST, (1, 32, 32), batch=40, steps=4, rounds=5)
PROVIDERS = [p for p in shared.PROVIDERS if shared.provider_available(p, DEVICE) is None]
PROVIDERS.remove("compile-bf16")  # the CPU emulates bf16 (minutes per compiled step); on a GPU: select it below
if DEVICE == "cuda":
    PROVIDERS.remove("compile-fp32")  # minutes of compile per shape: out of a 15-minute GPU budget
# Narrow a run (gpu_check.sh's compile section): comma-separated provider names / workload names.
if os.environ.get("DPFAST_BENCH_PROVIDERS"):
    PROVIDERS = shared.parse_providers(os.environ["DPFAST_BENCH_PROVIDERS"], DEVICE, "DPFAST_BENCH_PROVIDERS")
if os.environ.get("DPFAST_BENCH_WORKLOADS"):
    wanted = os.environ["DPFAST_BENCH_WORKLOADS"].split(",")
    known = [w.name for w in WORKLOADS] + [GUIDANCE_WORKLOAD.name]
    unknown = sorted(set(wanted) - set(known))
    if unknown:
        raise ValueError(f"DPFAST_BENCH_WORKLOADS: {unknown} not among {known}")
    WORKLOADS = [w for w in WORKLOADS if w.name in wanted]
    if GUIDANCE_WORKLOAD.name not in wanted:
        GUIDANCE_WORKLOAD = None

_MODELS: dict[str, torch.nn.Module] = {}
_RESULTS: list[dict] = []
_FLOPS: dict[str, int] = {}  # the network's forward+VJP operations per workload


def _model(workload: shared.Workload) -> torch.nn.Module:
    if workload.network not in _MODELS:
        _MODELS[workload.network] = shared.build_model(workload.network, workload.image, DEVICE)
    return _MODELS[workload.network]


@pytest.fixture(scope="module", autouse=True)
def memory_as_the_commands_keep_it():
    """Freed memory kept, as `dpfast bench` and the other commands run (dpfast/cpu_memory.py);
    the table's device line says which. A fixture, not an import-time call: bench_cpu_memory.py
    measures the default first in the same session."""
    cpu_memory.keep_freed_memory_for_commands()


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("workload", WORKLOADS, ids=[w.name for w in WORKLOADS])
def test_restoration_speed(benchmark, request, workload, provider):
    model = _model(workload)
    operator = shared.benchmark_operator(workload.image)
    y = shared.measurement(workload, operator, DEVICE)
    restoration, compile_seconds = shared.restoration(workload, model, operator, y, provider)
    timer = load_timer(str(request.config.getoption("benchmark_timer"))).target
    paired = shared.PairedTimer(shared.paired_references(workload, model, operator, y, provider, DEVICE), timer)
    paired()  # warm-up, not counted
    paired.reset()
    benchmark.group = workload.name
    benchmark.pedantic(restoration, setup=paired, rounds=workload.rounds, iterations=1)
    seconds = list(benchmark.stats.stats.data)
    if workload.name not in _FLOPS:
        _FLOPS[workload.name] = shared.network_flops(model, workload, DEVICE)
    ceiling = shared.matmul_ceiling(DEVICE, shared.network_dtype(provider))
    row = shared.result_row(workload, provider, seconds, paired, compile_seconds, shared.peak_memory(restoration, DEVICE),
                            flops=_FLOPS[workload.name], ceiling=ceiling)
    _RESULTS.append(row)
    per_step = row["seconds"] / workload.steps
    benchmark.extra_info.update(
        device=shared.device_name(DEVICE), torch=torch.__version__, threads=torch.get_num_threads(),
        ms_per_step=1e3 * per_step, images_per_second=workload.batch / row["seconds"],
        network_ms=1e3 * row["network"], overhead=per_step / row["network"] - 1,
        speedup_vs_eager_fp32=row["eager"] / row["seconds"], compile_seconds=compile_seconds,
        tflops=_FLOPS[workload.name] / per_step / 1e12, matmul_ceiling_tflops=ceiling / 1e12,
    )


@pytest.fixture(scope="module", autouse=True)
def _print_summary(request):
    yield
    if _RESULTS:
        timer = str(request.config.getoption("benchmark_timer", "time.perf_counter"))
        report_table(request, shared.summary_table(_RESULTS, DEVICE, timer))


def test_x0_guidance_speed_against_dps(benchmark, request):
    """One restoration with x̂0 guidance, timed; the DPS-guided one run right before each round
    (paired, like the table above). Left out of a run narrowed by DPFAST_BENCH_WORKLOADS /
    DPFAST_BENCH_PROVIDERS that does not name its workload / eager-fp32 (gpu_check.sh's compile section)."""
    workload = GUIDANCE_WORKLOAD
    if workload is None or "eager-fp32" not in PROVIDERS:
        pytest.skip("the run is narrowed to other workloads or providers (this one needs its workload and eager-fp32)")
    model = _model(workload)
    operator = shared.benchmark_operator(workload.image)
    y = shared.measurement(workload, operator, DEVICE)

    def restoration(guidance):
        sampler = Sampler(model, operator, steps=workload.steps, zeta=shared.ZETA, guidance=guidance)
        run = shared.synchronized(lambda: sampler.restore(y, lam=shared.LAM, seed=0), torch.device(DEVICE))
        run()  # warm-up
        return run

    timer = load_timer(str(request.config.getoption("benchmark_timer"))).target
    paired = shared.PairedTimer({"dps": restoration("dps")}, timer)
    paired.reset()
    benchmark.group = f"guidance {workload.name}"
    benchmark.pedantic(restoration("x0"), setup=paired, rounds=workload.rounds, iterations=1)
    x0, dps = min(benchmark.stats.stats.data), min(paired.seconds["dps"])
    benchmark.extra_info.update(device=shared.device_name(DEVICE), torch=torch.__version__, threads=torch.get_num_threads(),
                                x0_ms_per_step=1e3 * x0 / workload.steps, dps_ms_per_step=1e3 * dps / workload.steps,
                                speedup_x0_over_dps=dps / x0)
    print(f"\nguidance, {workload.name} batch {workload.batch}, {workload.steps} steps, eager fp32 on {shared.device_name(DEVICE)}: "
          f"x0 {1e3 * x0 / workload.steps:.0f} ms/step, dps {1e3 * dps / workload.steps:.0f} ms/step, x0 {dps / x0:.2f}× faster")
