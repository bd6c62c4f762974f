"""Fused per-step kernels against the eager torch chain and a plain copy, side by side.

Run: ``python -m pytest bench/bench_kernels.py -q`` (CPU; on a GPU machine the CUDA and
Triton kernels are measured on ``cuda``; ``DPFAST_BENCH_DEVICE=cpu|cuda`` forces one).
On a busy shared CPU: ``DPFAST_BENCH_THREADS=1 DPFAST_BENCH_MALLOC=pinned ...
--benchmark-timer=time.thread_time`` (see ``_pin_glibc_malloc``).
For every (op, shape, dtype) the providers are:

- ``torch``: the eager reference chain (``<op>_ref``, the definition);
- ``cpp`` (CPU) / ``cuda`` and ``triton`` (GPU): the fused kernels;
- ``copy``: ``dst.copy_(src)`` of as many bytes as the fused op must move (read + write),
  the bandwidth ceiling.

The module ends with a table: min and median ms, effective GB/s (the fused op's bytes
over the min time), % of the copy's GB/s and the speedup over the eager chain, plus the
device and versions (``DPFAST_BENCH_TABLE=path`` also writes it to a file).
"""
from __future__ import annotations

import ctypes
import datetime
import os

import pytest
from reporting import report_table
import torch

from dpfast import _extension
from dpfast.benchmark import device_name
from dpfast.kernels import available_backends, dps_update, dps_update_ref, reverse_step, reverse_step_ref
from dpfast.noise import seed_tensor
from dpfast.schedule import Schedule, coefficient_table_tensor

BENCH_SHAPES = {
    "ffhq256_batch8": (8, 3, 256, 256),
    "mnist32_batch64": (64, 1, 32, 32),
}
BENCH_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
# reverse_step with a materialised noise tensor (the headline), with the in-kernel RNG,
# and the DPS update (network VJP, residual of the image's shape).
OPS = ("reverse_step_noise", "reverse_step_rng", "dps_update")
STEP = 500
CUDA_ITERATIONS = 50  # launches per timed round on a GPU, one sync at the end


def _device() -> str:
    forced = os.environ.get("DPFAST_BENCH_DEVICE")
    if forced:
        return forced
    return "cuda" if torch.cuda.is_available() else "cpu"


DEVICE = _device()


def _pin_glibc_malloc() -> bool:
    """With ``DPFAST_BENCH_MALLOC=pinned``: keep freed blocks up to 32 MiB in glibc's heap
    instead of returning them to the OS.

    By default glibc's thresholds move with the allocation history, so whether an op's
    fresh outputs cost thousands of first-touch page faults per call (~8 ms for 12 MiB
    here) depends on which benchmark ran before. Pinned, every provider is timed in the
    same steady state. Opt-in because it lasts for the whole process (other benchmark
    modules in the same run included).
    """
    if DEVICE != "cpu" or os.environ.get("DPFAST_BENCH_MALLOC") != "pinned":
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    trim_threshold, mmap_threshold = -1, -3  # mallopt parameter numbers (malloc.h)
    return bool(libc.mallopt(mmap_threshold, 32 << 20)) and bool(libc.mallopt(trim_threshold, 1 << 30))


MALLOC_PINNED = _pin_glibc_malloc()
if os.environ.get("DPFAST_BENCH_THREADS"):
    # On a shared CPU, OpenMP barriers wait out whole scheduler slices whenever a peer
    # thread is preempted; one thread timed with --benchmark-timer=time.thread_time
    # measures the work itself.
    torch.set_num_threads(int(os.environ["DPFAST_BENCH_THREADS"]))


def _providers() -> list[str]:
    fused = [b for b in available_backends(DEVICE) if b != "torch"]
    if DEVICE == "cpu":
        fused = [b for b in fused if b != "triton"]  # the interpreter is not a fused kernel
    return ["torch", *fused, "copy"]


def _row() -> torch.Tensor:
    return coefficient_table_tensor(Schedule.linear(1000).respace(1000), "fixed_small", DEVICE)[STEP]


def _inputs(op: str, shape, dtype) -> tuple[dict, int]:
    """Arguments of ``op`` and the bytes a fused implementation must move."""
    generator = torch.Generator().manual_seed(0)

    def randn(*size, scale=1.0):
        return (scale * torch.randn(*size, generator=generator)).to(dtype).to(DEVICE)

    batch = shape[0]
    row = _row()
    if op.startswith("reverse_step"):
        arguments = dict(
            x=randn(*shape), model_output=randn(*shape), coefficients=row,
            noise_scale=torch.full((batch,), 0.5, device=DEVICE),
            noise=randn(*shape) if op == "reverse_step_noise" else None,
            seed_words=seed_tensor(0, batch, DEVICE) if op == "reverse_step_rng" else None,
            step=torch.tensor(STEP, device=DEVICE),
        )
        read = sum(t.numel() * t.element_size() for t in (arguments["x"], arguments["model_output"], arguments["noise"]) if t is not None)
        written = 2 * arguments["x"].numel() * 4  # pred_x0 and x_prime, float32
    else:
        arguments = dict(
            x_prime=randn(*shape), data_grad=randn(*shape, scale=0.1), network_vjp=randn(*shape, scale=0.1),
            residual=randn(*shape, scale=0.05), zeta=torch.ones(batch, device=DEVICE), coefficients=row,
        )
        read = sum(t.numel() * t.element_size() for k, t in arguments.items() if k in ("x_prime", "data_grad", "network_vjp", "residual"))
        written = arguments["x_prime"].numel() * 4
    return arguments, read + written


def _callable(op: str, provider: str, arguments: dict, total_bytes: int):
    if provider == "copy":
        source = torch.empty(total_bytes // 2, dtype=torch.uint8, device=DEVICE).random_(0, 255)
        destination = torch.empty_like(source)
        return lambda: destination.copy_(source)
    if op.startswith("reverse_step"):
        if provider == "torch":
            return lambda: reverse_step_ref(**arguments)
        return lambda: reverse_step(**arguments, backend=provider)
    if provider == "torch":
        return lambda: dps_update_ref(**arguments)
    return lambda: dps_update(**arguments, backend=provider)


_RESULTS: list[dict] = []


def _cases():
    for op in OPS:
        for shape_name in BENCH_SHAPES:
            for dtype_name in BENCH_DTYPES:
                for provider in _providers():
                    yield pytest.param(op, shape_name, dtype_name, provider, id=f"{op}-{shape_name}-{dtype_name}-{provider}")


@pytest.mark.parametrize("op, shape_name, dtype_name, provider", list(_cases()))
def test_kernel_throughput(benchmark, op, shape_name, dtype_name, provider):
    arguments, total_bytes = _inputs(op, BENCH_SHAPES[shape_name], BENCH_DTYPES[dtype_name])
    function = _callable(op, provider, arguments, total_bytes)
    benchmark.group = f"{op}-{shape_name}-{dtype_name}"
    benchmark.extra_info.update(bytes=total_bytes, device=DEVICE)
    if DEVICE == "cuda":
        def timed():
            for _ in range(CUDA_ITERATIONS):
                function()
            torch.cuda.synchronize()

        timed()
        benchmark.pedantic(timed, rounds=20, warmup_rounds=2)
        scale = 1.0 / CUDA_ITERATIONS
    else:
        function()
        benchmark(function)
        scale = 1.0
    stats = benchmark.stats.stats
    _RESULTS.append(
        dict(op=op, shape=shape_name, dtype=dtype_name, provider=provider,
             seconds=stats.min * scale, median=stats.median * scale, bytes=total_bytes)
    )


def _device_name() -> str:
    return device_name(DEVICE)


def summary_table(results: list[dict], timer: str = "time.perf_counter") -> list[str]:
    """Markdown rows per case: min and median ms; GB/s, % of the copy and speedup over
    eager from the min (the least disturbed run: these machines are shared)."""
    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = "absent"
    lines = [
        f"device: {DEVICE} ({_device_name()}); torch {torch.__version__}, triton {triton_version}, "
        f"C++ extension {'loaded' if _extension.cpu_extension_loaded() else 'missing'}; timer {timer}; "
        f"glibc malloc thresholds {'pinned' if MALLOC_PINNED else 'default'}; "
        f"{datetime.date.today()}",
        "",
        "| op | shape | dtype | provider | min ms | median ms | GB/s | % of copy | speedup vs eager |",
        "| --- | --- | --- | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    keyed = {(r["op"], r["shape"], r["dtype"], r["provider"]): r for r in results}
    for r in results:
        copy = keyed.get((r["op"], r["shape"], r["dtype"], "copy"))
        eager = keyed.get((r["op"], r["shape"], r["dtype"], "torch"))
        gbps = r["bytes"] / r["seconds"] / 1e9
        percent = f"{100 * gbps / (copy['bytes'] / copy['seconds'] / 1e9):.0f}%" if copy else "-"
        speedup = f"{eager['seconds'] / r['seconds']:.1f}x" if eager and r["provider"] != "copy" else "-"
        lines.append(
            f"| {r['op']} | {r['shape']} | {r['dtype']} | {r['provider']} | {r['seconds'] * 1e3:.3f} | {r['median'] * 1e3:.3f} | "
            f"{gbps:.1f} | {percent} | {speedup} |"
        )
    return lines


@pytest.fixture(scope="module", autouse=True)
def _print_summary(request):
    yield
    if not _RESULTS:
        return
    lines = summary_table(_RESULTS, str(request.config.getoption("benchmark_timer", "time.perf_counter")))
    report_table(request, lines)
