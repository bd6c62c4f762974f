"""Fused per-step ops. Each module holds the op's reference definition and its kernels.

``reverse_step`` and ``dps_update`` run on the best available backend (compiled CUDA,
Triton, C++ CPU or the torch reference; see :mod:`dpfast.kernels.backends`).
"""
from dpfast.kernels.backends import available_backends, resolve_backend
from dpfast.kernels.dps_update import dps_update, dps_update_ref
from dpfast.kernels.reverse_step import reverse_step, reverse_step_ref

__all__ = [
    "available_backends",
    "dps_update",
    "dps_update_ref",
    "resolve_backend",
    "reverse_step",
    "reverse_step_ref",
]
