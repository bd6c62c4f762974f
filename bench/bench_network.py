"""The network's forward + VJP alone on CUDA: precision × memory format × cuDNN autotuning.

Why: on the H200 (docs/BENCHMARKS.md, 2026-11-28) the FFHQ-256 ADM at batch 8 ran its
forward + VJP as fast in bf16 autocast as in float32 (TF32 convolutions), at 12 % of the
bf16 matmul ceiling, so the network, not the sampler, bounds a DPS step there. This module
measures which setting moves it: ``dtype`` (fp32 / bf16 autocast), the memory format
(contiguous NCHW / channels_last) and ``torch.backends.cudnn.benchmark`` (cuDNN's
heuristic algorithm choice / timed autotuning per shape), plus one candidate change measured
before it is made (the down-sampling pool as a reshape-mean). It ends with a table (ms, TFLOP/s,
share of the measured matmul ceiling in that dtype) and the ten costliest CUDA kernels of
the plain bf16 NCHW case.

Run: ``DPFAST_BENCH_DEVICE=cuda python -m pytest bench/bench_network.py -q`` (CUDA only;
bench/gpu_check.sh runs it). ``DPFAST_BENCH_TABLE=path`` also writes the table to a file.
"""
from __future__ import annotations

import os

import pytest
import torch
from reporting import report_table

from dpfast import benchmark as shared
from dpfast.guidance import autograd_vjp

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="a CUDA device is needed")

WORKLOAD = shared.Workload("adm-ffhq256", (3, 256, 256), batch=int(os.environ.get("DPFAST_BENCH_BATCH", "8")), steps=1, rounds=1)
REPEATS = 10
CASES = [(dtype, layout, autotune, "avg_pool2d") for dtype in ("fp32", "bf16") for layout in ("nchw", "channels_last")
         for autotune in (False, True)]
# A candidate change measured before it is made: the 2×2 pool of the res-block down-sampling
# as a mean over a (H/2, 2, W/2, 2) view (its backward one broadcast; avg_pool2d's backward
# kernel was 6 % of the bf16 call here). On the CPU the two were within noise (2026-11-28).
CASES.append(("bf16", "nchw", False, "reshape_mean"))
_RESULTS: list[dict] = []
_STATE: dict = {}


def _model() -> torch.nn.Module:
    if "model" not in _STATE:
        _STATE["model"] = shared.build_model(WORKLOAD.network, WORKLOAD.image, "cuda")
        _STATE["flops"] = shared.network_flops(_STATE["model"], WORKLOAD, "cuda")
    return _STATE["model"]


def forward_and_vjp(model, dtype: torch.dtype, channels_last: bool):
    """One forward and one VJP with respect to the input, as a DPS step runs them."""
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    model.to(memory_format=memory_format)
    x = torch.randn(WORKLOAD.batch, *WORKLOAD.image, device="cuda").contiguous(memory_format=memory_format)
    t = torch.full((WORKLOAD.batch,), 500, device="cuda")
    reduced = dtype != torch.float32

    def run():
        with torch.autocast("cuda", dtype=dtype, enabled=reduced, cache_enabled=False):
            output, vjp_fn = autograd_vjp(lambda x_in: model(x_in, t)[:, : x.shape[1]], x)
        return vjp_fn(torch.ones_like(output))

    return run


def time_ms(run, repeats: int = REPEATS) -> list[float]:
    """CUDA-event times of ``repeats`` calls (after three warm-ups)."""
    for _ in range(3):
        run()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        run()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return times


def reshape_mean_pool(x: torch.Tensor) -> torch.Tensor:
    height, width = x.shape[-2:]
    return x.unflatten(-1, (width // 2, 2)).unflatten(-3, (height // 2, 2)).mean(dim=(-3, -1))


def _set_pooling(model, pooling: str) -> None:
    from dpfast.models.adm import Downsample

    for module in model.modules():
        if isinstance(module, Downsample) and isinstance(module.op, torch.nn.AvgPool2d):
            if pooling == "reshape_mean":
                module.forward = reshape_mean_pool  # an instance attribute: nn.Module calls it
            else:
                module.__dict__.pop("forward", None)


@pytest.mark.parametrize("dtype,layout,autotune,pooling", CASES,
                         ids=[f"{d}-{l}-{'autotune' if a else 'heuristic'}-{p}" for d, l, a, p in CASES])
def test_network_forward_and_vjp(benchmark, dtype, layout, autotune, pooling):
    model = _model()
    _set_pooling(model, pooling)
    run = forward_and_vjp(model, shared.DTYPES[dtype], layout == "channels_last")
    try:
        with torch.backends.cudnn.flags(enabled=True, benchmark=autotune, deterministic=False, allow_tf32=torch.backends.cudnn.allow_tf32):
            times = time_ms(run)
            benchmark.pedantic(shared.synchronized(run, torch.device("cuda")), rounds=3, iterations=1)
    finally:
        _set_pooling(model, "avg_pool2d")
        model.to(memory_format=torch.contiguous_format)
    median = sorted(times)[len(times) // 2]
    ceiling = shared.matmul_ceiling("cuda", shared.DTYPES[dtype])
    _RESULTS.append(dict(dtype=dtype, layout=layout, autotune=autotune, pooling=pooling, min=min(times), median=median,
                         tflops=_STATE["flops"] / (min(times) / 1e3) / 1e12, ceiling=ceiling / 1e12))


def _top_kernels(count: int = 10) -> list[str]:
    """The costliest CUDA kernels of one bf16 NCHW forward+VJP (heuristic algorithms)."""
    from torch.profiler import ProfilerActivity, profile

    run = forward_and_vjp(_model(), torch.bfloat16, False)
    time_ms(run, repeats=1)
    with profile(activities=[ProfilerActivity.CUDA]) as profiler:
        run()
        torch.cuda.synchronize()
    events = sorted(profiler.key_averages(), key=lambda e: e.device_time_total, reverse=True)[:count]
    total = sum(e.device_time_total for e in profiler.key_averages()) or 1.0
    lines = ["", "costliest CUDA kernels, one bf16 NCHW forward+VJP (heuristic algorithms):", "",
             "| kernel | calls | ms | share |", "| --- | ---: | ---: | ---: |"]
    for event in events:
        lines.append(f"| {event.key[:90]} | {event.count} | {event.device_time_total / 1e3:.2f} | {event.device_time_total / total:.0%} |")
    return lines


@pytest.fixture(scope="module", autouse=True)
def _print_summary(request):
    yield
    if not _RESULTS:
        return
    lines = [
        f"network forward+VJP alone: {WORKLOAD.name}, {_STATE['flops'] / 1e12:.2f} TFLOP per call; "
        f"{shared.device_name('cuda')}; torch {torch.__version__}, CUDA {torch.version.cuda}, cuDNN {torch.backends.cudnn.version()}; "
        f"TF32 in cuDNN {torch.backends.cudnn.allow_tf32} (and then in float32's matmul ceiling too)",
        "",
        "| dtype | layout | cuDNN algorithms | 2×2 pool | min ms | median ms | TFLOP/s | of matmul ceiling |",
        "| --- | --- | --- | --- | ---: | ---: | ---: | ---: |",
    ]
    for r in _RESULTS:
        lines.append(f"| {r['dtype']} | {r['layout']} | {'autotuned' if r['autotune'] else 'heuristic'} | {r['pooling']} | {r['min']:.1f} | "
                     f"{r['median']:.1f} | {r['tflops']:.0f} | {r['tflops'] / r['ceiling']:.0%} |")
    try:
        lines += _top_kernels()
    except Exception as error:  # the profiler is a diagnosis, not the measurement
        lines += ["", f"(kernel profile unavailable: {type(error).__name__}: {error})"]
    report_table(request, lines)
