"""Capability-declared backend dispatch: auto picks the best backend that can run,
says once why it skipped better ones, and forced backends fail with the reason."""
from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys

import pytest
import torch

from dpfast import _extension
from dpfast.kernels import available_backends, backends, resolve_backend, reverse_step, reverse_step_ref
from kernel_cases import SHAPES, step_inputs


def test_auto_prefers_cpp_on_cpu_and_never_the_interpreter():
    if not _extension.cpu_extension_loaded():
        pytest.skip(f"C++ extension unavailable: {_extension.extension_error('cpu')}")
    assert resolve_backend("auto", "cpu") == "cpp"
    assert available_backends("cpu")[0] == "cpp"


def test_auto_falls_back_to_torch_for_unsupported_dtypes_and_says_so_once(monkeypatch, caplog):
    monkeypatch.setattr(backends, "_logged", set())
    monkeypatch.setattr(backends, "_resolved", {})
    with caplog.at_level(logging.INFO, logger="dpfast"):
        assert resolve_backend("auto", "cpu", (torch.float64,)) == "torch"
        assert resolve_backend("auto", "cpu", (torch.float64,)) == "torch"
    skips = [r.getMessage() for r in caplog.records if "skipped" in r.getMessage()]
    if _extension.cpu_extension_loaded():
        assert len(skips) == 1 and "'cpp'" in skips[0] and "torch.float64" in skips[0]


def test_float64_inputs_run_on_the_reference():
    arguments = step_inputs(SHAPES["vector"], torch.float64, False, "rng", "lam1")
    for got, want in zip(reverse_step(**arguments), reverse_step_ref(**arguments)):
        assert torch.equal(got, want)


def test_forced_backend_that_cannot_run_raises_with_the_reason():
    with pytest.raises(RuntimeError, match=r"backend='cuda' cannot run on cpu tensors: it runs on cuda"):
        resolve_backend("cuda", "cpu")
    with pytest.raises(RuntimeError, match=r"backend='cpp' cannot run on cpu tensors: .*torch.float64"):
        resolve_backend("cpp", "cpu", (torch.float64,))
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="cannot run on cuda tensors"):
            resolve_backend("cuda", "cuda")


def test_unknown_backend_names_are_rejected(monkeypatch):
    with pytest.raises(ValueError, match="backend must be one of"):
        resolve_backend("fast", "cpu")
    monkeypatch.setenv("DPFAST_BACKEND", "fastest")
    with pytest.raises(ValueError, match="DPFAST_BACKEND must be one of"):
        resolve_backend("auto", "cpu")


def test_environment_variable_chooses_the_backend_for_auto(monkeypatch):
    monkeypatch.setenv("DPFAST_BACKEND", "torch")
    assert resolve_backend("auto", "cpu") == "torch"
    if "cpp" in available_backends("cpu"):
        assert resolve_backend("cpp", "cpu") == "cpp"  # an explicit choice wins


def test_import_works_and_falls_back_without_extensions():
    code = (
        "import dpfast, torch\n"
        "from dpfast.kernels import available_backends, reverse_step\n"
        "from dpfast import _extension\n"
        "assert not _extension.cpu_extension_loaded()\n"
        "assert 'cpp' not in available_backends('cpu'), available_backends('cpu')\n"
        "x = torch.zeros(2, 3)\n"
        "print(reverse_step(x, x, torch.ones(8), torch.ones(2))[1].shape)\n"
    )
    environment = {**os.environ, "DPFAST_NO_EXTENSIONS": "1", "TRITON_INTERPRET": "1"}
    result = subprocess.run([sys.executable, "-c", code], env=environment, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "torch.Size([2, 3])" in result.stdout


def _cuda_toolchain_present() -> bool:
    for opt_out in ("DPFAST_NO_CUDA", "DPFAST_NO_EXTENSIONS"):
        if os.environ.get(opt_out, "0") not in ("", "0"):
            return False
    if not torch.version.cuda:
        return False
    roots = [os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"]
    return shutil.which("nvcc") is not None or any(r and os.path.isfile(os.path.join(r, "bin", "nvcc")) for r in roots)


@pytest.mark.skipif(not _cuda_toolchain_present(), reason="no nvcc, torch is not a CUDA build, or the CUDA extension was opted out: it is not built")
def test_cuda_extension_is_built_and_registers_its_ops():
    assert _extension.cuda_extension_loaded(), _extension.extension_error("cuda")
    for op in ("dpfast::reverse_step", "dpfast::dps_update"):
        assert torch._C._dispatch_has_kernel_for_dispatch_key(op, "CUDA"), op
        assert torch._C._dispatch_has_kernel_for_dispatch_key(op, "CPU"), op


def test_cpu_kernels_baseline_variant_matches_reference():
    # The C++ loops are compiled for AVX2 and for baseline x86-64; CI hosts have AVX2,
    # so the baseline variant is forced here (it is picked once per process).
    if not _extension.cpu_extension_loaded():
        pytest.skip(f"C++ extension unavailable: {_extension.extension_error('cpu')}")
    code = (
        "import torch\n"
        "from dpfast.kernels import reverse_step, reverse_step_ref, dps_update, dps_update_ref\n"
        "from dpfast.noise import seed_tensor\n"
        "from dpfast.schedule import Schedule\n"
        "row = torch.tensor(Schedule.linear().respace(1000).coefficient_table('learned_range')[500], dtype=torch.float32)\n"
        "g = torch.Generator().manual_seed(0)\n"
        "x = torch.randn(3, 2, 9, 7, generator=g); out = torch.randn(3, 4, 9, 7, generator=g)\n"
        "args = (x, out, row, torch.tensor([0.0, 0.5, 1.0]))\n"
        "kw = dict(seed_words=seed_tensor(1, 3), step=torch.tensor(500), learned_variance=True)\n"
        "for got, want in zip(reverse_step(*args, **kw, backend='cpp'), reverse_step_ref(*args, **kw)):\n"
        "    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)\n"
        "half = (x.half(), out.half(), row, torch.ones(3))\n"
        "for got, want in zip(reverse_step(*half, backend='cpp'), reverse_step_ref(x.half().float(), out.half().float(), row, torch.ones(3))):\n"
        "    assert torch.equal(got, want)\n"
        "d = torch.randn_like(x); r = torch.randn(3, 5, generator=g)\n"
        "torch.testing.assert_close(dps_update(x, d, d, r, torch.ones(3), row, backend='cpp'), dps_update_ref(x, d, d, r, torch.ones(3), row), rtol=1e-6, atol=1e-6)\n"
        "print('baseline ok')\n"
    )
    environment = {**os.environ, "DPFAST_CPU_BASELINE": "1", "TRITON_INTERPRET": "1"}
    result = subprocess.run([sys.executable, "-c", code], env=environment, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "baseline ok" in result.stdout
