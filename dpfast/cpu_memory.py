"""Keep freed memory inside the process (Linux, glibc), so big CPU tensors are not mapped and
unmapped at every sampler step.

glibc serves every allocation above its mmap threshold (at most 32 MiB) with a fresh
``mmap`` and returns it with ``munmap`` when freed, and trims the top of its heap back to
the OS. A DPS step on the CPU allocates the network's activations for its VJP and frees them
at the end of the step, so at large batches every step faults in gigabytes of new pages:
with the built-in model the network's forward+VJP took 28.8 ms per image at batch 320
against 12.0 ms with freed memory kept (16.7 against 11.8 at batch 160, 12.8 against 11.9
at 64; 2-core AVX-512 EPYC, 2026-11-29, docs/BENCHMARKS.md), with bit-identical results.
The price: the process keeps its peak heap for as long as it lives.

:func:`keep_freed_memory` sets that for the whole process (glibc's settings are global);
the ``dpfast`` commands, ``python -m dpfast.experiments`` and ``python -m dpfast.train`` do it
first unless ``DPFAST_KEEP_FREED_MEMORY=0``. Outside Python the same is
``MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=100000000000`` in the environment.
"""
from __future__ import annotations

import ctypes
import os
import sys

# mallopt parameters (glibc's malloc.h)
M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4
_kept = False


def kept() -> bool:
    """Whether :func:`keep_freed_memory` took effect in this process (it cannot be undone)."""
    return _kept


def keep_freed_memory() -> bool:
    """Make glibc keep freed memory for reuse: no ``mmap`` for large blocks, no heap trimming.

    Returns whether it took effect: False off Linux or without glibc's ``mallopt`` (musl,
    for one), where nothing is changed."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    # mallopt returns 1 on success; a trim threshold of -1 disables trimming (man 3 mallopt)
    global _kept
    _kept = mallopt(M_MMAP_MAX, 0) == 1 and mallopt(M_TRIM_THRESHOLD, -1) == 1
    return _kept


def keep_freed_memory_for_commands() -> bool:
    """What the ``dpfast`` commands call first: :func:`keep_freed_memory`, unless the environment
    has ``DPFAST_KEEP_FREED_MEMORY=0``."""
    if os.environ.get("DPFAST_KEEP_FREED_MEMORY", "1").strip() == "0":
        return False
    return keep_freed_memory()
