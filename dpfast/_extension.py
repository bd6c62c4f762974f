"""Loads dpfast's compiled kernels, if they were built; never raises.

``dpfast._C`` holds the op schemas and the CPU kernels, ``dpfast._C_cuda`` the CUDA
kernels (built only where nvcc and a CUDA torch exist). Both are empty Python modules
whose import registers the ``dpfast::*`` ops with torch's dispatcher; they link against
libtorch, so torch is imported first. Anything that goes wrong is kept as a reason
string for the backend dispatcher (``dpfast.kernels.backends``) to report.
"""
from __future__ import annotations

import importlib
import importlib.util
import os

import torch  # the extensions link against libtorch: it must be loaded first

_MODULES = {"cpu": "dpfast._C", "cuda": "dpfast._C_cuda"}
_loaded: dict[str, bool] = {}
_errors: dict[str, str] = {}


def _load(kind: str) -> bool:
    if kind in _loaded:
        return _loaded[kind]
    module = _MODULES[kind]
    ok = False
    if os.environ.get("DPFAST_NO_EXTENSIONS", "0") not in ("", "0"):
        _errors[kind] = "DPFAST_NO_EXTENSIONS is set"
    elif kind == "cuda" and not _load("cpu"):
        _errors[kind] = f"it needs {_MODULES['cpu']}, which is unavailable ({_errors['cpu']})"
    else:
        try:
            spec = importlib.util.find_spec(module)
        except (ImportError, ValueError):
            spec = None
        if spec is None:
            hint = " where nvcc and a CUDA build of torch exist" if kind == "cuda" else ""
            _errors[kind] = f"{module} was not built (install with `pip install --no-build-isolation -e .`{hint})"
        else:
            try:
                importlib.import_module(module)  # runs the op registrations
                ok = True
            except (ImportError, OSError, RuntimeError) as error:  # e.g. built against another torch
                _errors[kind] = f"{module} failed to load: {error}"
    _loaded[kind] = ok
    return ok


def cpu_extension_loaded() -> bool:
    """Whether ``dpfast._C`` (op schemas + CPU kernels) is loaded."""
    return _load("cpu")


def cuda_extension_loaded() -> bool:
    """Whether ``dpfast._C_cuda`` (CUDA kernels) is loaded."""
    return _load("cuda")


def extension_error(kind: str) -> str | None:
    """Why the ``"cpu"`` or ``"cuda"`` extension is unavailable, or None if it loaded."""
    return None if _load(kind) else _errors.get(kind, "unknown reason")
