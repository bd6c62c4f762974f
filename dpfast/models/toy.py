"""A tiny randomly initialised convolutional ε-network for tests and benchmarks.

It is not a useful denoiser; it has the shape and autograd behaviour of one (time
conditioning, nonlinearities, an optional variance head), which is what the sampler's
machinery needs to be exercised quickly.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from dpfast.models.base import ScoreModel
from dpfast.schedule import Schedule


class ToyConvScore(ScoreModel):
    """Conv3×3 → SiLU → (+ time embedding) → Conv3×3 → SiLU → Conv3×3, seeded init.

    Args:
        image_shape: ``(C, H, W)``.
        hidden: hidden channels.
        learned_variance: add C output channels holding a ``learned_range`` value in [-1, 1].
        seed: parameter initialisation seed.
    """

    def __init__(self, image_shape=(1, 16, 16), hidden: int = 16, learned_variance: bool = False, seed: int = 0):
        super().__init__()
        channels = image_shape[0]
        self.schedule = Schedule.linear(1000)
        self.image_shape = tuple(image_shape)
        self.learned_variance = learned_variance
        self.default_variance = "learned_range" if learned_variance else "fixed_small"
        self.default_clip_denoised = True
        generator_state = torch.random.get_rng_state()
        torch.manual_seed(seed)
        self.conv_in = nn.Conv2d(channels, hidden, 3, padding=1)
        self.time = nn.Linear(hidden, hidden)
        self.conv_mid = nn.Conv2d(hidden, hidden, 3, padding=1)
        self.conv_out = nn.Conv2d(hidden, channels * (2 if learned_variance else 1), 3, padding=1)
        torch.random.set_rng_state(generator_state)
        self.hidden = hidden

    def time_features(self, t: torch.Tensor) -> torch.Tensor:
        half = self.hidden // 2
        frequencies = torch.exp(-math.log(10000.0) * torch.arange(half, device=t.device) / half)
        angles = t.float().unsqueeze(-1) * frequencies
        return torch.cat([torch.cos(angles), torch.sin(angles)], dim=-1)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        h = torch.nn.functional.silu(self.conv_in(x))
        h = h + self.time(self.time_features(t)).to(h.dtype)[:, :, None, None]
        h = torch.nn.functional.silu(self.conv_mid(h))
        out = self.conv_out(h)
        if not self.learned_variance:
            return out
        channels = x.shape[1]
        return torch.cat([out[:, :channels], torch.tanh(out[:, channels:])], dim=1)
