"""Counter-based Gaussian noise keyed by (seed, step, element) — the reference definition.

Every random number dpfast draws (x_T, the per-step z, measurement noise) comes from
this function of integers, so

- a sample's noise depends only on its own seed, never on its position in a batch or
  on how many other samples run beside it (batch invariance, SPEC §9);
- no generator state is carried across steps (CUDA graphs can replay a step);
- the Triton, C++ and CUDA kernels reproduce the same numbers from the same integers.

The arithmetic is 32-bit unsigned. Torch has no full uint32 arithmetic on every
device, so here the values live in int64 tensors and are masked back to 32 bits after
every operation; the multipliers are below 2**31 so no product overflows int64.

Definition (all uint32, ``hash32`` is Wellons' "lowbias32" integer mixer):

    key   = hash32(seed ^ hash32(step * 0x9E3779B9 + 0x632BE5AB))
    h(c)  = hash32(key ^ hash32(c))
    u1    = ((h(2e) >> 8) + 1) * 2**-24            in (0, 1]
    u2    = (h(2e + 1) >> 8) * 2**-24              in [0, 1)
    z_e   = sqrt(-2 log u1) * cos(2π u2)            (Box–Muller, float32)

where ``e`` is the element's flat index inside its sample (row-major over the sample's
own shape) and ``step`` the step id (the coefficient-table row, or ``INITIAL_NOISE_STEP``
for x_T, ``MEASUREMENT_NOISE_STEP`` for measurement noise).
"""
from __future__ import annotations

import math
from typing import Sequence

import torch

from dpfast.validation import check_seeds

MASK32 = 0xFFFFFFFF
HASH_MULTIPLIER_1 = 0x21F0AAAD
HASH_MULTIPLIER_2 = 0x735A2D97
STEP_MULTIPLIER = 0x9E3779B9
STEP_OFFSET = 0x632BE5AB
INITIAL_NOISE_STEP = 0xFFFFFFFF
MEASUREMENT_NOISE_STEP = 0xFFFFFFFE
TWO_PI = 2.0 * math.pi


def hash32(x: torch.Tensor) -> torch.Tensor:
    """lowbias32 on uint32 values held in an int64 tensor."""
    x = x ^ (x >> 16)
    x = (x * HASH_MULTIPLIER_1) & MASK32
    x = x ^ (x >> 15)
    x = (x * HASH_MULTIPLIER_2) & MASK32
    return x ^ (x >> 15)


def hash32_int(x: int) -> int:
    """The same mixer on a Python int (host-side key derivation)."""
    x &= MASK32
    x ^= x >> 16
    x = (x * HASH_MULTIPLIER_1) & MASK32
    x ^= x >> 15
    x = (x * HASH_MULTIPLIER_2) & MASK32
    return x ^ (x >> 15)


def step_key(step: int) -> int:
    """The per-step part of the key, ``hash32(step * φ + c)``; a Python int in [0, 2**32)."""
    return hash32_int((step * STEP_MULTIPLIER + STEP_OFFSET) & MASK32)


def seed_words(seeds: int | Sequence[int], batch: int) -> list[int]:
    """Per-sample 32-bit seed words: an int ``s`` gives ``s, s+1, ..., s+B-1``.

    Each seed is folded to 32 bits by mixing its high and low halves, so seeds up to
    2**64 stay distinct in practice. Raises on negative or non-integer seeds
    (:func:`dpfast.validation.check_seeds`).
    """
    return [hash32_int(value & MASK32) ^ hash32_int((value >> 32) ^ 0x5BD1E995) for value in check_seeds(seeds, batch)]


def sample_keys(seed_words_tensor: torch.Tensor, step: int | torch.Tensor) -> torch.Tensor:
    """Per-sample stream keys for one step, int64 tensor ``(B,)`` of uint32 values."""
    if isinstance(step, torch.Tensor):
        mixed = hash32((step.to(torch.int64) * STEP_MULTIPLIER + STEP_OFFSET) & MASK32)
    else:
        mixed = step_key(int(step))
    return hash32(seed_words_tensor.to(torch.int64) ^ mixed)


def counter_normal_ref(
    seed_words_tensor: torch.Tensor,
    step: int | torch.Tensor,
    sample_shape: Sequence[int],
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Standard normal noise of shape ``(B, *sample_shape)`` from the counter RNG.

    ``seed_words_tensor``: int64 ``(B,)`` from :func:`seed_words`; ``step``: the step id.
    Computed in float32 and cast to ``dtype``.
    """
    keys = sample_keys(seed_words_tensor, step).view(-1, *([1] * len(sample_shape)))
    counters_1, counters_2 = _hashed_counters(tuple(sample_shape), seed_words_tensor.device)
    bits_1 = hash32(keys ^ counters_1)
    bits_2 = hash32(keys ^ counters_2)
    u1 = ((bits_1 >> 8) + 1).to(torch.float32) * (2.0**-24)
    u2 = (bits_2 >> 8).to(torch.float32) * (2.0**-24)
    radius = torch.sqrt(-2.0 * torch.log(u1))
    return (radius * torch.cos(TWO_PI * u2)).to(dtype)


_COUNTER_CACHE: dict = {}


def _hashed_counters(sample_shape: tuple, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """hash32(2e) and hash32(2e + 1) for every element e; they do not depend on the key."""
    cache_key = (sample_shape, str(device))
    if cache_key not in _COUNTER_CACHE:
        if len(_COUNTER_CACHE) > 16:
            _COUNTER_CACHE.clear()
        element = torch.arange(math.prod(sample_shape), device=device, dtype=torch.int64).view(*sample_shape)
        _COUNTER_CACHE[cache_key] = (hash32(2 * element), hash32(2 * element + 1))
    return _COUNTER_CACHE[cache_key]


def seed_tensor(seeds: int | Sequence[int], batch: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """:func:`seed_words` as an int64 device tensor."""
    return torch.tensor(seed_words(seeds, batch), dtype=torch.int64, device=device)
