"""Build script for dpfast's compiled kernels; the package itself is described in pyproject.toml.

- ``dpfast._C`` (always): the op schemas and the C++ CPU kernels (OpenMP).
- ``dpfast._C_cuda`` (when torch has CUDA and nvcc is found): the CUDA kernels. Without a
  visible GPU it is compiled for ``TORCH_CUDA_ARCH_LIST`` (default "8.0;9.0").
  ``DPFAST_NO_CUDA=1`` skips it.

Install with ``pip install --no-build-isolation -e .`` so the extensions compile against the
torch already installed. Without the extensions dpfast still imports and runs on its torch
reference path.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys

from setuptools import setup


def _log(message: str) -> None:
    print(f"dpfast setup: {message}", file=sys.stderr, flush=True)


def _locate_cuda_home() -> str | None:
    """CUDA_HOME/CUDA_PATH, else the toolkit of the nvcc on PATH, else /usr/local/cuda."""
    for variable in ("CUDA_HOME", "CUDA_PATH"):
        root = os.environ.get(variable)
        if root and os.path.isfile(os.path.join(root, "bin", "nvcc")):
            return root
    candidates = []
    nvcc = shutil.which("nvcc")
    if nvcc:
        # /usr/local/bin/nvcc may be a wrapper script, so the toolkit is checked by its headers.
        candidates.append(os.path.dirname(os.path.dirname(os.path.realpath(nvcc))))
    candidates.append("/usr/local/cuda")
    for root in candidates:
        if os.path.isfile(os.path.join(root, "bin", "nvcc")) and os.path.isfile(
            os.path.join(root, "include", "cuda_runtime.h")
        ):
            return root
    return None


def _nvcc_release(cuda_home: str) -> str | None:
    try:
        output = subprocess.run(
            [os.path.join(cuda_home, "bin", "nvcc"), "--version"], capture_output=True, text=True, timeout=60
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    match = re.search(r"release (\d+)\.(\d+)", output)
    return f"{match.group(1)}.{match.group(2)}" if match else None


def _cuda_skip_reason(torch) -> str | None:
    """Why the CUDA extension cannot be built here, or None if it can."""
    if os.environ.get("DPFAST_NO_CUDA", "0") not in ("", "0"):
        return "DPFAST_NO_CUDA is set"
    if getattr(torch.version, "hip", None):
        return f"torch is a ROCm build ({torch.version.hip}); the Triton kernels cover AMD GPUs"
    if not torch.version.cuda:
        return "torch is a CPU-only build (torch.version.cuda is None)"
    cuda_home = os.environ.get("CUDA_HOME")
    if not cuda_home:
        return "nvcc not found (set CUDA_HOME or put nvcc on PATH)"
    release = _nvcc_release(cuda_home)
    if release is None:
        return f"{cuda_home}/bin/nvcc did not report its version"
    if release.split(".")[0] != torch.version.cuda.split(".")[0]:
        return f"nvcc {release} does not match torch's CUDA {torch.version.cuda} (major versions differ)"
    return None


def _extensions():
    cuda_home = _locate_cuda_home()
    if cuda_home:
        # torch.utils.cpp_extension reads CUDA_HOME once, at import.
        os.environ["CUDA_HOME"] = cuda_home
    import torch
    from torch.utils.cpp_extension import BuildExtension, CppExtension, CUDAExtension

    os.environ.setdefault("MAX_JOBS", str(max(1, min(os.cpu_count() or 1, 8))))
    here = os.path.dirname(os.path.abspath(__file__))
    csrc = "csrc"
    # No contraction: the kernels then repeat the torch reference's roundings exactly.
    # -fno-math-errno (sqrt becomes one instruction) and -fno-trapping-math (branches
    # become selects) change no result; they only let the loops vectorise.
    cxx_flags = ["-O3", "-fopenmp", "-ffp-contract=off", "-fno-math-errno", "-fno-trapping-math"]
    extensions = [
        CppExtension(
            "dpfast._C",
            [os.path.join(csrc, "ops.cpp"), os.path.join(csrc, "kernels_cpu.cpp")],
            include_dirs=[os.path.join(here, "csrc")],
            extra_compile_args={"cxx": cxx_flags},
            extra_link_args=["-fopenmp"],
        )
    ]
    reason = _cuda_skip_reason(torch)
    if reason is None:
        if not torch.cuda.is_available() and not os.environ.get("TORCH_CUDA_ARCH_LIST"):
            os.environ["TORCH_CUDA_ARCH_LIST"] = "8.0;9.0"
        _log(
            f"building the CUDA extension with {cuda_home}/bin/nvcc for "
            f"TORCH_CUDA_ARCH_LIST={os.environ.get('TORCH_CUDA_ARCH_LIST', '(the visible GPUs)')}"
        )
        extensions.append(
            CUDAExtension(
                "dpfast._C_cuda",
                # The .cu holds only kernels (no torch headers: nvcc is quick); ops_cuda.cpp
                # holds the dispatcher glue and is compiled once, by the host compiler.
                [os.path.join(csrc, "ops_cuda.cpp"), os.path.join(csrc, "kernels_cuda.cu")],
                include_dirs=[os.path.join(here, "csrc")],
                extra_compile_args={
                    "cxx": ["-O3", "-ffp-contract=off"],
                    # --fmad=false: same roundings as the CPU kernels and the torch reference.
                    "nvcc": ["-O3", "--fmad=false", "-lineinfo"],
                },
            )
        )
    else:
        _log(f"skipping the CUDA extension: {reason}")
    return extensions, {"build_ext": BuildExtension.with_options(use_ninja=True)}


ext_modules, cmdclass = _extensions()
setup(ext_modules=ext_modules, cmdclass=cmdclass)
