"""Fused per-step ops. Each module holds the op's reference definition and its kernels."""
from dpfast.kernels.dps_update import dps_update_ref
from dpfast.kernels.reverse_step import reverse_step_ref

__all__ = ["dps_update_ref", "reverse_step_ref"]
