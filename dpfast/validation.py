"""Argument checks shared by the public entry points.

Each check raises ``TypeError`` (wrong kind of value) or ``ValueError`` (right kind,
wrong value) naming the argument, the value received and what was expected.
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch


def check_number(name: str, value, low: float | None = None, high: float | None = None) -> float:
    """A finite real number, optionally within ``[low, high]``."""
    if isinstance(value, (torch.Tensor, np.ndarray)):
        if (value.size if isinstance(value, np.ndarray) else value.numel()) != 1:
            raise TypeError(f"{name} must be one number, got a {type(value).__name__} of shape {tuple(value.shape)}")
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, (int, float)) and not hasattr(value, "__float__"):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__} {value!r}")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value}")
    if low is not None and value < low or high is not None and value > high:
        bounds = f"[{low if low is not None else '-inf'}, {high if high is not None else 'inf'}]"
        raise ValueError(f"{name} must lie in {bounds}, got {value}")
    return value


def check_lam(value, name: str = "lam") -> float:
    return check_number(name, value, 0.0, 1.0)


def check_lams(values, name: str = "lams") -> list[float]:
    if isinstance(values, torch.Tensor):
        values = values.tolist()
    if isinstance(values, (int, float)) or not isinstance(values, Sequence) and not hasattr(values, "__iter__"):
        raise TypeError(f"{name} must be a sequence of numbers in [0, 1], got {values!r}")
    values = list(values)
    if not values:
        raise ValueError(f"{name} must hold at least one value")
    return [check_lam(value, f"{name}[{index}]") for index, value in enumerate(values)]


def check_sigma_n(value) -> float | None:
    if value is None:
        return None
    return check_number("sigma_n", value, 0.0)


def check_tensor(name: str, value, shape: Sequence[int] | None = None) -> torch.Tensor:
    """A floating-point tensor with finite entries, of ``shape`` when given."""
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    if not value.is_floating_point():
        raise TypeError(f"{name} must have a floating-point dtype, got {value.dtype}")
    if shape is not None and tuple(value.shape) != tuple(shape):
        raise ValueError(f"{name} must have shape {tuple(shape)}, got {tuple(value.shape)}")
    if not torch.isfinite(value).all():
        bad = int((~torch.isfinite(value)).sum())
        raise ValueError(f"{name} holds {bad} NaN or Inf values")
    return value


def check_positive_int(name: str, value, low: int = 1, high: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int) and not hasattr(value, "__index__"):
        raise TypeError(f"{name} must be an int, got {type(value).__name__} {value!r}")
    value = int(value)
    if value < low or high is not None and value > high:
        raise ValueError(f"{name} must lie in [{low}, {high if high is not None else 'inf'}], got {value}")
    return value


def check_bool(name: str, value) -> bool:
    """A real ``True``/``False``: a string such as ``"False"`` would otherwise read as true."""
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be True or False, got {type(value).__name__} {value!r}")
    return bool(value)


SEED_LIMIT = 2**64  # seeds are folded to 32-bit words from at most 64 bits (dpfast/noise.py)


def check_seeds(seed, batch: int, name: str = "seed") -> list[int]:
    """Per-sample seeds in [0, 2**64): one int ``s`` (a Python, NumPy or 0-dim tensor integer)
    gives ``s, s + 1, ..., s + batch - 1``; a sequence (or 1-D tensor/array) holds one per sample."""
    if isinstance(seed, (torch.Tensor, np.ndarray)):
        seed = seed.tolist()  # a 0-dim one becomes a scalar
    if isinstance(seed, (str, bytes)) or not hasattr(seed, "__iter__"):
        first = check_positive_int(name, seed, 0, SEED_LIMIT - 1)
        seeds, names = [first + i for i in range(batch)], [f"{name} + {i}" for i in range(batch)]
    else:
        seeds = list(seed)
        if len(seeds) != batch:
            raise ValueError(f"{name} must be an int or hold one seed per sample ({batch}), got {len(seeds)}")
        names = [f"{name}[{i}]" for i in range(batch)]
    return [check_positive_int(where, value, 0, SEED_LIMIT - 1) for where, value in zip(names, seeds)]


def check_device(name: str, value) -> torch.device:
    """A torch device that exists here: its name parses and, for CUDA, torch sees that GPU."""
    try:
        device = torch.device(value)
    except (RuntimeError, TypeError) as error:
        raise ValueError(f"{name} {value!r} is not a device: {error}") from error
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"{name} {value!r} was asked for but torch sees no CUDA device")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(f"{name} {value!r}: torch sees {torch.cuda.device_count()} CUDA device(s)")
    return device


def check_choice(name: str, value, choices: Sequence[str]) -> str:
    if value not in choices:
        raise ValueError(f"{name} must be one of {tuple(choices)}, got {value!r}")
    return value
