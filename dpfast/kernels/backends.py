"""Which implementation of a fused op runs: capability-declared backend dispatch.

Every backend states the device types and dtypes it supports and, at run time, why it
cannot run (extension not built, no GPU, Triton missing). ``backend="auto"`` takes the
first backend of the preference order that can run, logging once (logger ``"dpfast"``)
why each better one was skipped; a forced backend that cannot run raises with the
reason. The environment variable ``DPFAST_BACKEND`` sets the backend used when the
caller passes ``"auto"``.

Preference: on CUDA tensors ``cuda`` (the compiled kernels), then ``triton``, then
``torch`` (the reference); on CPU tensors ``cpp``, then ``torch``. Triton runs CPU tensors
only through its interpreter (``TRITON_INTERPRET=1``), which is far too slow to be
picked automatically, so there it must be forced.
"""
from __future__ import annotations

import importlib
import logging
import os
from dataclasses import dataclass
from typing import Callable, Iterable

import torch

from dpfast import _extension

logger = logging.getLogger("dpfast")

BACKEND_NAMES = ("auto", "triton", "cuda", "cpp", "torch")
KERNEL_DTYPES = frozenset({torch.float32, torch.bfloat16, torch.float16})
ANY_FLOAT_DTYPES = frozenset({torch.float64, torch.float32, torch.bfloat16, torch.float16})
ENVIRONMENT_VARIABLE = "DPFAST_BACKEND"


@dataclass(frozen=True)
class Backend:
    """One implementation family of the fused ops and what it can run on."""

    name: str
    device_types: tuple[str, ...]  # devices it can run on at all
    auto_device_types: tuple[str, ...]  # devices "auto" may pick it for
    dtypes: frozenset  # floating input dtypes it accepts
    unavailable: Callable[[str], str | None]  # device type -> why it cannot run, or None


def _cuda_unavailable(device_type: str) -> str | None:
    if getattr(torch.version, "hip", None):
        return "torch is a ROCm build; the compiled CUDA kernels need a CUDA build"
    if not torch.cuda.is_available():
        return "no CUDA device is visible to torch"
    return _extension.extension_error("cuda")


def _triton_unavailable(device_type: str) -> str | None:
    # The module (not the function the package re-exports under the same name).
    reverse_step = importlib.import_module("dpfast.kernels.reverse_step")

    if reverse_step.TRITON_IMPORT_ERROR is not None:
        return f"triton is not importable ({reverse_step.TRITON_IMPORT_ERROR})"
    if device_type == "cpu":
        if not reverse_step.TRITON_INTERPRETED:
            return "Triton runs CPU tensors only through its interpreter: set TRITON_INTERPRET=1 before importing triton"
        return None
    if not torch.cuda.is_available():
        return "no GPU is visible to torch"
    if reverse_step.TRITON_INTERPRETED:
        return "TRITON_INTERPRET=1 is set, so Triton would interpret instead of compiling for the GPU"
    return None


def _cpp_unavailable(device_type: str) -> str | None:
    return _extension.extension_error("cpu")


BACKENDS: dict[str, Backend] = {
    "cuda": Backend("cuda", ("cuda",), ("cuda",), KERNEL_DTYPES, _cuda_unavailable),
    "triton": Backend("triton", ("cuda", "cpu"), ("cuda",), KERNEL_DTYPES, _triton_unavailable),
    "cpp": Backend("cpp", ("cpu",), ("cpu",), KERNEL_DTYPES, _cpp_unavailable),
    "torch": Backend("torch", (), (), ANY_FLOAT_DTYPES, lambda device_type: None),  # () = every device
}
PREFERENCE = ("cuda", "triton", "cpp", "torch")

_logged: set[str] = set()


def _log_once(level: int, message: str) -> None:
    if message not in _logged:
        _logged.add(message)
        logger.log(level, message)


def _device_type(device: torch.device | str) -> str:
    return torch.device(device).type


def _why_not(backend: Backend, device_type: str, dtypes: Iterable[torch.dtype]) -> str | None:
    """Why ``backend`` cannot run here, or None if it can."""
    if backend.device_types and device_type not in backend.device_types:
        return f"it runs on {' or '.join(backend.device_types)} tensors, not {device_type}"
    unsupported = sorted({str(d) for d in dtypes if d not in backend.dtypes})
    if unsupported:
        supported = ", ".join(sorted(str(d) for d in backend.dtypes))
        return f"it does not take {', '.join(unsupported)} inputs (supported: {supported})"
    return backend.unavailable(device_type)


def available_backends(device: torch.device | str) -> list[str]:
    """Backends that can run float32 ops on ``device``: those "auto" may pick, in its
    order of preference, then those that only run when forced.

    Example: ``available_backends("cpu")`` is ``["cpp", "torch", "triton"]`` with the C++
    extension built and under the Triton interpreter, ``["torch"]`` without either.
    """
    device_type = _device_type(device)

    def auto_eligible(name: str) -> bool:
        backend = BACKENDS[name]
        return not backend.auto_device_types or device_type in backend.auto_device_types

    runnable = [name for name in PREFERENCE if _why_not(BACKENDS[name], device_type, (torch.float32,)) is None]
    return [name for name in runnable if auto_eligible(name)] + [name for name in runnable if not auto_eligible(name)]


def requested_backend(name: str | None) -> str:
    """The backend a caller asked for: ``name``, with ``"auto"`` overridden by DPFAST_BACKEND."""
    if name is None:
        name = "auto"
    if not isinstance(name, str) or name not in BACKEND_NAMES:
        raise ValueError(f"backend must be one of {BACKEND_NAMES}, got {name!r}")
    if name == "auto":
        from_environment = os.environ.get(ENVIRONMENT_VARIABLE, "").strip().lower()
        if from_environment:
            if from_environment not in BACKEND_NAMES:
                raise ValueError(
                    f"{ENVIRONMENT_VARIABLE} must be one of {BACKEND_NAMES}, got {from_environment!r}"
                )
            name = from_environment
    return name


@torch.compiler.assume_constant_result
def resolve_backend(
    name: str | None, device: torch.device | str, dtypes: tuple[torch.dtype, ...] = (torch.float32,)
) -> str:
    """The backend that runs an op on ``device`` with floating inputs of ``dtypes``.

    Args:
        name: ``"auto"`` (or None), ``"triton"``, ``"cuda"``, ``"cpp"`` or ``"torch"``.
            ``"auto"`` is replaced by ``$DPFAST_BACKEND`` when that is set.
        device: the device of the op's tensors.
        dtypes: the dtypes of its floating inputs.

    Returns:
        A concrete backend name (never ``"auto"``).

    Raises:
        ValueError: ``name`` is not a backend name.
        RuntimeError: a forced backend cannot run here; the message says why.

    Example: ``resolve_backend("auto", "cpu")`` is ``"cpp"`` when the C++ extension is
    built, else ``"torch"`` (logging why ``"cpp"`` was skipped, once).

    The result depends only on the arguments and the environment, so torch.compile
    treats it as a constant (no graph break, no guard on the step).
    """
    key = (name, os.environ.get(ENVIRONMENT_VARIABLE), device, dtypes)
    cached = _resolved.get(key)
    if cached is None:
        cached = _resolved[key] = _resolve(name, _device_type(device), tuple(dtypes))
    return cached


# Resolution depends only on its arguments, the environment variable and what was
# loaded at import, so it is done once per combination (the ops are called per step).
_resolved: dict[tuple, str] = {}


def _resolve(name: str | None, device_type: str, dtypes: tuple[torch.dtype, ...]) -> str:
    name = requested_backend(name)
    if name != "auto":
        reason = _why_not(BACKENDS[name], device_type, dtypes)
        if reason is not None:
            raise RuntimeError(f"dpfast: backend={name!r} cannot run on {device_type} tensors: {reason}")
        return name
    for candidate in PREFERENCE:
        backend = BACKENDS[candidate]
        if backend.auto_device_types and device_type not in backend.auto_device_types:
            continue
        reason = _why_not(backend, device_type, dtypes)
        if reason is None:
            return candidate
        # A backend that exists for this device but is missing costs speed: warn.
        missing = backend.unavailable(device_type) is not None
        _log_once(
            logging.WARNING if missing else logging.INFO,
            f"dpfast: backend 'auto' skipped {candidate!r} on {device_type}: {reason}",
        )
    return "torch"  # unreachable: torch runs everywhere


def step_tensor(step: int | torch.Tensor, device: torch.device) -> torch.Tensor:
    """``step`` as the 0-dim int64 tensor on ``device`` that the ops take."""
    if isinstance(step, torch.Tensor):
        if step.dim() == 0 and step.dtype == torch.int64 and step.device == device:
            return step
        if step.numel() != 1 or step.dtype.is_floating_point or step.dtype == torch.bool:
            raise ValueError(f"step must be an int or a 0-dim integer tensor, got {step.dtype} {tuple(step.shape)}")
        return step.reshape(()).to(device=device, dtype=torch.int64)
    if isinstance(step, bool) or not hasattr(step, "__index__"):
        raise TypeError(f"step must be an int or a 0-dim integer tensor, got {type(step).__name__} {step!r}")
    return torch.tensor(int(step), dtype=torch.int64, device=device)
