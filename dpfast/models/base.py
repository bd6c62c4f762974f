"""The one interface every network presents to the sampler.

Adapters (ADM UNet, diffusers, the built-in model, analytic scores) subclass
:class:`ScoreModel`, so the sampler never needs to know which network it drives.
"""
from __future__ import annotations

import torch
from torch import nn

from dpfast.schedule import VARIANCE_TYPES, Schedule


class ScoreModel(nn.Module):
    """An ε-prediction network with its diffusion schedule.

    Subclasses implement :meth:`forward` and set, in ``__init__``:

    - ``schedule``: the :class:`~dpfast.schedule.Schedule` the network was trained with
      (its T original timesteps);
    - ``image_shape``: the shape of one sample, ``(C, H, W)`` for images or ``(d,)`` for
      vectors;
    - ``learned_variance``: whether the output has ``2C`` channels, the second half being
      the ``learned_range`` interpolation value v ∈ [-1, 1];
    - ``default_variance``, ``default_clip_denoised``: what a :class:`~dpfast.Sampler`
      uses when the caller does not say.
    """

    schedule: Schedule
    image_shape: tuple[int, ...]
    learned_variance: bool = False
    default_variance: str = "fixed_small"
    default_clip_denoised: bool = True

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Return ε (and v when ``learned_variance``) for ``x`` of shape ``(B, *image_shape)``.

        ``t`` is an int64 tensor of shape ``(B,)`` holding *original* timesteps in
        ``[0, T)``. The output has shape ``(B, C, ...)`` or ``(B, 2C, ...)``.
        """
        raise NotImplementedError

    @property
    def channels(self) -> int:
        return int(self.image_shape[0])

    def check_interface(self) -> None:
        """Raise a clear error if a subclass forgot part of the contract."""
        for name in ("schedule", "image_shape"):
            if not hasattr(self, name):
                raise TypeError(f"{type(self).__name__} must set `{name}` to be used as a ScoreModel")
        if not isinstance(self.schedule, Schedule):
            raise TypeError(
                f"{type(self).__name__}.schedule must be a dpfast.schedule.Schedule, "
                f"got {type(self.schedule).__name__}"
            )
        if self.default_variance not in VARIANCE_TYPES:
            raise ValueError(
                f"{type(self).__name__}.default_variance must be one of {VARIANCE_TYPES}, "
                f"got {self.default_variance!r}"
            )
        if self.default_variance == "learned_range" and not self.learned_variance:
            raise ValueError(f"{type(self).__name__} defaults to learned_range but has no variance output")
