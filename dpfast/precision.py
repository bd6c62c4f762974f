"""Where bf16 is native: the one test behind ``dtype="auto"`` (sampler) and ``--precision auto`` (training).

Without native bf16 instructions a CPU emulates bf16 convolutions: 12–34× slower than
float32 for the sampler's forward+VJP and 4–7× for training steps on an AVX2 EPYC; with
AVX-512-bf16 the sampler measured 1.44–1.47× faster than float32 (docs/BENCHMARKS.md).
"""
from __future__ import annotations

import torch


def native_bf16(device: torch.device | str) -> tuple[bool, str]:
    """Whether ``device`` computes bf16 natively, and why.

    CUDA: ``torch.cuda.is_bf16_supported()``. CPU: AVX-512-bf16 or AMX, as torch detects
    them (the kernels it would run). Any other device: no."""
    device = torch.device(device)
    if device.type == "cuda":
        with torch.cuda.device(device):
            native = torch.cuda.is_bf16_supported()
        return native, "the GPU computes bf16 natively" if native else "this GPU has no native bf16"
    if device.type == "cpu":
        if torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported():
            return True, "the CPU has AVX-512-bf16 or AMX (bf16 measured 1.44-1.47x faster than float32 on such a CPU)"
        return False, "the CPU has no native bf16 (without AVX-512-bf16 or AMX bf16 measured 12-34x slower than float32)"
    return False, f"no bf16 probe for {device.type} devices"
