"""deepinv's ``DPS`` sampler driving a dpfast ε-network (the ``deepinv-*`` benchmark providers).

deepinv samples a continuous-time VP SDE (linear β from 0.1 to 20, the continuous form of
the discrete linear T = 1000 schedule) and asks a *denoiser* D(x, σ) for x̂0 from
x = x0 + σ n in [0, 1] image units. :class:`EpsilonDenoiser` answers with the ε-network:
in dpfast's [-1, 1] units the noise level is 2σ, the VP state is x_t = √ᾱ (2x − 1) with
ᾱ = 1 / (1 + 4σ²), the network runs at the discrete t whose ᾱ_t is nearest, and
x̂0 = (2x − 1) − 2σ ε̂, mapped back to [0, 1]. deepinv keeps its state in float64 by
default and always runs the denoiser in float32.
"""
from __future__ import annotations

from typing import Callable

import torch

from dpfast.models.base import ScoreModel


def deepinv_available() -> bool:
    """Whether deepinv can be imported (without importing it: it is slow to import)."""
    import importlib.util

    return importlib.util.find_spec("deepinv") is not None


def _deepinv():
    try:
        import deepinv
    except ImportError as error:
        raise ImportError("the deepinv baseline needs `pip install dpfast[bench]` (deepinv, torchvision)") from error
    return deepinv


def epsilon_denoiser(model: ScoreModel):
    """A ``deepinv.models.Denoiser`` computing x̂0 with ``model``'s ε prediction."""
    deepinv = _deepinv()

    class EpsilonDenoiser(deepinv.models.Denoiser):
        def __init__(self):
            super().__init__()
            self.model = model
            alphas_cumprod = torch.as_tensor(model.schedule.alphas_cumprod, dtype=torch.float64)
            self.register_buffer("alphas_cumprod", alphas_cumprod)

        def forward(self, x: torch.Tensor, sigma, *args, **kwargs) -> torch.Tensor:
            x = x.to(torch.float32)
            batch = x.shape[0]
            noise_level = 2.0 * torch.as_tensor(sigma, dtype=torch.float64, device=x.device).reshape(-1).expand(batch)
            alpha_bar = 1.0 / (1.0 + noise_level**2)
            t = (self.alphas_cumprod.to(x.device)[None, :] - alpha_bar[:, None]).abs().argmin(dim=1)
            state = 2.0 * x - 1.0
            view = (-1,) + (1,) * (x.dim() - 1)
            x_t = state * alpha_bar.sqrt().to(torch.float32).view(view)
            eps = self.model(x_t, t)[:, : x.shape[1]].to(torch.float32)
            x0 = state - noise_level.to(torch.float32).view(view) * eps
            return (x0 + 1.0) / 2.0

    return EpsilonDenoiser().to(next(iter(model.parameters()), torch.zeros(())).device)


def deepinv_restoration(
    model: ScoreModel,
    operator,
    y: torch.Tensor,
    steps: int,
    dtype: torch.dtype = torch.float64,
    weight: float = 1.0,
    solver: str = "ddpm",
    alpha: float = 1.0,
    seed: int = 0,
) -> Callable[[], torch.Tensor]:
    """A callable running deepinv's ``DPS`` on ``y``; it returns the restoration in dpfast's [-1, 1] units.

    ``steps`` counts guided network evaluations, as dpfast's sampler does: deepinv's
    ``num_steps`` counts time points (a grid from t = 1 to its end), one more than the
    evaluations it makes, so it gets ``steps + 1``.

    ``operator`` and ``y`` are dpfast's (the operator acts on [-1, 1] images). The defaults
    are deepinv's own (DDPM solver, norm guidance, float64 state) except the clamp of x̂0,
    set to the image range (deepinv 0.5 clamps [0, 1] images to [-1, 1]). ``solver="ancestral"``
    with ``alpha`` ∈ [0, 1] is deepinv's knob between the deterministic DDIM sampler
    (α = 0) and ancestral DDPM (α = 1): unlike dpfast's λ, it keeps every state at its
    timestep's noise level. ``weight`` is deepinv's step on ∇‖y − A x̂0‖, taken in its
    own [0, 1] units and SDE form: search it rather than converting a dpfast ζ.
    """
    deepinv = _deepinv()
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    sampler = deepinv.sampling.DPS(
        epsilon_denoiser(model), num_steps=steps + 1, weight=weight, solver=solver, alpha=alpha, device=y.device,
        dtype=dtype, rng=torch.Generator(y.device),  # without a generator deepinv ignores the seed
    )
    # deepinv 0.5's DPS clips x̂0 to [-1, 1] in its data-fidelity term, which receives the
    # denoiser's [0, 1] images (its state lives in [-1, 1]): so it clamped x̂0 to [-3, 1] in
    # dpfast's units and kept background pixels below -1. Its clip set to the image range
    # makes it clamp as dpfast's sampler does (x̂0 to [-1, 1]) — in the guidance and in the
    # score it builds from the same x̂0.
    sampler.data_fidelity.clip = [0.0, 1.0]
    physics = deepinv.physics.Physics(A=lambda unit: operator(2.0 * unit - 1.0))  # deepinv's x is in [0, 1]

    def run() -> torch.Tensor:
        with torch.enable_grad():
            unit = sampler(y.to(dtype), physics, x_init=tuple(y.shape[:1]) + tuple(model.image_shape), seed=seed)
        return 2.0 * unit - 1.0

    return run
