"""How well a score network denoises, measured against the best linear estimator.

At a diffusion time t the network sees x_t = √ᾱ_t x0 + √(1−ᾱ_t) ε and its ε prediction
gives x̂0 = (x_t − √(1−ᾱ_t) ε̂) / √ᾱ_t. The yardstick is the Wiener estimator: the best
*linear* (affine) map from x_t to x0 for data with mean m and covariance S,

    x̂0 = m + ᾱ_t^{1/2} S (ᾱ_t S + (1−ᾱ_t) I)^{-1} (x_t − √ᾱ_t m),

fitted on training images. A network that has learned more than second-order statistics
beats it; the built-in model's acceptance test (docs/MODEL_CARD.md) asks for an MSE at
least 30 % lower at t ∈ {100, 300}.

From the command line (the numbers of docs/MODEL_CARD.md; needs the Fashion-MNIST dataset)::

    python -m dpfast.denoising_quality                       # the shipped built-in weights
    python -m dpfast.denoising_quality --weights run.safetensors --images 512 --times 100 300 600
"""
from __future__ import annotations

import argparse
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from dpfast.models.base import ScoreModel
from dpfast.noise import counter_normal_ref, seed_tensor


@dataclass(frozen=True)
class WienerDenoiser:
    """The affine MMSE estimator of x0 from x_t for data with the given mean and covariance."""

    mean: torch.Tensor  # (d,) float64
    covariance: torch.Tensor  # (d, d) float64
    image_shape: tuple[int, ...]

    @classmethod
    def fit(cls, images: torch.Tensor) -> "WienerDenoiser":
        """Fit the mean and covariance of ``images`` (``(N, C, H, W)``, N > 1)."""
        if images.ndim != 4 or images.shape[0] < 2:
            raise ValueError(f"images must have shape (N>1, C, H, W), got {tuple(images.shape)}")
        flat = images.reshape(images.shape[0], -1).to(torch.float64)
        mean = flat.mean(0)
        centred = flat - mean
        covariance = centred.T @ centred / (flat.shape[0] - 1)
        return cls(mean, covariance, tuple(images.shape[1:]))

    def x0(self, x_t: torch.Tensor, alpha_bar: float) -> torch.Tensor:
        """The Wiener estimate of x0 from ``x_t`` at a time with cumulative ᾱ = ``alpha_bar``."""
        flat = x_t.reshape(x_t.shape[0], -1).to(torch.float64)
        d = self.mean.numel()
        if flat.shape[1] != d:
            raise ValueError(f"x_t has {flat.shape[1]} values per image, the denoiser was fitted on {d}")
        scale = alpha_bar**0.5
        system = alpha_bar * self.covariance + (1.0 - alpha_bar) * torch.eye(d, dtype=torch.float64)
        gain = scale * torch.linalg.solve(system, self.covariance).T  # S (ᾱS + (1−ᾱ)I)^{-1}, S symmetric
        estimate = self.mean + (flat - scale * self.mean) @ gain.T
        return estimate.reshape(x_t.shape).to(x_t.dtype)


@torch.no_grad()
def network_x0(model: ScoreModel, x_t: torch.Tensor, t: int, batch: int = 256) -> torch.Tensor:
    """The network's (unclipped) x̂0 at integer time ``t``, computed in chunks of ``batch``."""
    alpha_bar = float(model.schedule.alphas_cumprod[t])
    estimates = []
    for chunk in x_t.split(batch):
        eps = model(chunk, torch.full((chunk.shape[0],), t, dtype=torch.long))
        estimates.append((chunk - (1.0 - alpha_bar) ** 0.5 * eps.to(chunk.dtype)) / alpha_bar**0.5)
    return torch.cat(estimates)


def denoising_mse(
    model: ScoreModel,
    wiener: WienerDenoiser,
    images: torch.Tensor,
    times: tuple[int, ...] = (100, 300, 600),
    seed: int = 0,
) -> list[dict]:
    """Per-pixel x̂0 MSE of the network and of the Wiener estimator on ``images`` at each t.

    Both see the same noised inputs (counter-based noise, ``seed`` + image index).
    Returns one row per t: ``t``, ``network_mse``, ``wiener_mse``, ``ratio`` (network / Wiener).
    """
    images = images.to(torch.float32)
    seeds = seed_tensor([seed + i for i in range(images.shape[0])], images.shape[0])
    alphas_cumprod = model.schedule.alphas_cumprod
    rows = []
    for t in times:
        if not 0 <= t < model.schedule.num_timesteps:
            raise ValueError(f"times must lie in [0, {model.schedule.num_timesteps}), got {t}")
        alpha_bar = float(alphas_cumprod[t])
        noise = counter_normal_ref(seeds, t, images.shape[1:])
        x_t = alpha_bar**0.5 * images + (1.0 - alpha_bar) ** 0.5 * noise
        network_error = float(((network_x0(model, x_t, t) - images) ** 2).mean())
        wiener_error = float(((wiener.x0(x_t, alpha_bar) - images) ** 2).mean())
        rows.append(dict(t=t, network_mse=network_error, wiener_mse=wiener_error, ratio=network_error / wiener_error))
    return rows


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m dpfast.denoising_quality",
                                     description="x̂0 MSE of a built-in-architecture network against the Wiener "
                                                 "estimator on held-out Fashion-MNIST test images")
    parser.add_argument("--weights", type=Path, default=None,
                        help="exported EMA weights (.safetensors, the builtin-fmnist preset); default: the shipped ones")
    parser.add_argument("--images", type=int, default=512, help="held-out test images, the first ones (default 512)")
    parser.add_argument("--times", type=int, nargs="+", default=[100, 300, 600], help="diffusion times (default 100 300 600)")
    parser.add_argument("--seed", type=int, default=7, help="noise seed (default 7, as in the model card)")
    return parser


def main(argv: list[str] | None = None) -> list[dict]:
    import dpfast as dp
    from dpfast.data import load_fashion_mnist
    from dpfast.models.loading import BUILTIN_PRESET

    args = build_parser().parse_args(argv)
    if not 1 <= args.images <= 10_000:
        raise SystemExit(f"--images must be between 1 and 10000 (the test split), got {args.images}")
    model = dp.load_model("builtin") if args.weights is None else dp.load_model(args.weights, config=BUILTIN_PRESET)
    started = time.perf_counter()
    train, _ = load_fashion_mnist("train")
    test, _ = load_fashion_mnist("test", limit=args.images)
    rows = denoising_mse(model.eval(), WienerDenoiser.fit(train), test, tuple(args.times), seed=args.seed)
    print(f"{args.weights or 'shipped built-in weights'}: {args.images} test images, seed {args.seed}, "
          f"Wiener fitted on {train.shape[0]} training images ({time.perf_counter() - started:.0f} s)")
    print(f"{'t':>5} {'network MSE':>12} {'Wiener MSE':>11} {'ratio':>7}")
    for row in rows:
        print(f"{row['t']:>5} {row['network_mse']:>12.5f} {row['wiener_mse']:>11.5f} {row['ratio']:>7.3f}")
    return rows


if __name__ == "__main__":
    main()
