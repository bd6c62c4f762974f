"""The network's forward+VJP on the CPU with glibc's default allocation against freed memory
kept in the process (:mod:`dpfast.cpu_memory`), at batches 64, 160 and 320, side by side in
one run.

Why: the images experiment's λ sweep restores 5 λ × 64 images as one batch of 320, and its
blocks took ~2× longer per image than the step-size search's batches of 80. glibc maps every
block above 32 MiB afresh and unmaps it when freed, so each step faulted in the activations
again. Keeping freed memory cannot be undone in a process, so every "default" row runs
before the first "kept" one (this module's order), and the default rows skip if something
earlier in the session already kept it. Ends with a table: ms per step, ms per image, and
kept's speedup at each batch.

Run: ``python -m pytest bench/bench_cpu_memory.py -q -s -o python_files='bench_*.py'``
(Linux with glibc; ``DPFAST_BENCH_TABLE=path`` also writes the table to a file).
"""
from __future__ import annotations

import sys

import pytest
import torch
from reporting import report_table

from dpfast import benchmark as shared
from dpfast import cpu_memory
from dpfast.models.loading import BUILTIN_ASSET

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's allocator: Linux only")

NETWORK = "builtin" if BUILTIN_ASSET.is_file() else "adm-fmnist"
BATCHES = (64, 160, 320)
CASES = [(mode, batch) for mode in ("default", "kept") for batch in BATCHES]  # every default row first
_SECONDS: dict[tuple[str, int], float] = {}


@pytest.fixture(scope="module")
def model():
    return shared.build_model(NETWORK, (1, 32, 32), "cpu")


@pytest.mark.parametrize("mode, batch", CASES, ids=[f"{mode}-b{batch}" for mode, batch in CASES])
def test_network_forward_vjp(benchmark, request, model, mode, batch):
    if mode == "default" and cpu_memory.kept():
        pytest.skip("freed memory is already kept in this process: the default rows cannot be measured")
    if mode == "kept" and not cpu_memory.keep_freed_memory():
        pytest.skip("glibc's mallopt is not available here")
    call = shared.network_call(model, shared.Workload(NETWORK, (1, 32, 32), batch, 1, 1), torch.float32, "cpu")
    call()  # warm-up: the first call also sizes oneDNN's primitives
    benchmark.pedantic(call, rounds=3, iterations=1)
    _SECONDS[(mode, batch)] = benchmark.stats.stats.min
    if (mode, batch) == CASES[-1]:
        _report(request)


def _report(request) -> None:
    lines = [f"CPU network forward+VJP ({NETWORK}, fp32, {torch.get_num_threads()} threads, "
             f"{torch.backends.cpu.get_cpu_capability()}); fastest of 3 rounds", "",
             "| batch | default ms/step | kept ms/step | default ms/image | kept ms/image | kept speedup |",
             "| ---: | ---: | ---: | ---: | ---: | ---: |"]
    for batch in BATCHES:
        default, kept = _SECONDS.get(("default", batch)), _SECONDS.get(("kept", batch))
        if default is None or kept is None:
            continue
        lines.append(f"| {batch} | {default * 1e3:.0f} | {kept * 1e3:.0f} | {default / batch * 1e3:.1f} | "
                     f"{kept / batch * 1e3:.1f} | {default / kept:.2f}x |")
    report_table(request, lines)
