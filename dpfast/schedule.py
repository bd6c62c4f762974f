"""VP noise schedules, respacing and the per-step coefficient table (SPEC §3, §4).

All schedule arithmetic runs once in float64 on the host; the sampler only ever sees
the finished table, one row per kept step, stored on its device.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

VARIANCE_TYPES = ("fixed_small", "fixed_large", "learned_range")

# Columns of the coefficient table. Kernels index rows by these positions, so the
# order is part of the kernels' contract: append, never reorder.
COEFFICIENT_COLUMNS = (
    "sqrt_recip_alpha_bar",  # 1 / sqrt(ᾱ_t)
    "sqrt_recip_alpha_bar_minus_one",  # sqrt(1/ᾱ_t - 1)
    "mean_coef_x0",  # c0 = β_t sqrt(ᾱ_prev) / (1 - ᾱ_t)
    "mean_coef_xt",  # c1 = sqrt(1 - β_t)(1 - ᾱ_prev) / (1 - ᾱ_t)
    "sigma",  # σ_t of a fixed variance type, 0 at the final step
    "log_variance_min",  # log β̃_t (clipped), learned_range lower end
    "log_variance_max",  # log β_t, learned_range upper end
    "noise_mask",  # 1, or 0 at the final step (no noise there)
)
COLUMN = {name: index for index, name in enumerate(COEFFICIENT_COLUMNS)}


def linear_betas(num_timesteps: int = 1000) -> np.ndarray:
    """Linear β schedule of DDPM/ADM, scaled so any T matches the 1000-step one."""
    _check_num_timesteps(num_timesteps)
    scale = 1000.0 / num_timesteps
    return np.linspace(1e-4 * scale, 0.02 * scale, num_timesteps, dtype=np.float64)


def cosine_betas(num_timesteps: int = 1000, max_beta: float = 0.999) -> np.ndarray:
    """Cosine schedule of Nichol & Dhariwal (2021), β clipped at ``max_beta``."""
    _check_num_timesteps(num_timesteps)

    def alpha_bar(u: float) -> float:
        return math.cos((u + 0.008) / 1.008 * math.pi / 2) ** 2

    steps = np.arange(num_timesteps, dtype=np.float64)
    betas = [
        min(1.0 - alpha_bar((i + 1) / num_timesteps) / alpha_bar(i / num_timesteps), max_beta)
        for i in steps
    ]
    return np.asarray(betas, dtype=np.float64)


def space_timesteps(num_timesteps: int, steps: int) -> np.ndarray:
    """Evenly spaced kept timesteps, ADM ``space_timesteps`` semantics (one section).

    Returns the sorted original timesteps ``t_0 = 0 < ... < t_{N-1} = T - 1``
    (``round(i (T-1)/(N-1))``); ``steps == 1`` keeps only ``t = 0`` as ADM does.
    """
    if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)):
        raise TypeError(f"steps must be an int, got {type(steps).__name__} {steps!r}")
    if not 1 <= steps <= num_timesteps:
        raise ValueError(
            f"steps must be between 1 and the model's T = {num_timesteps}, got {steps}"
        )
    if steps == 1:
        return np.zeros(1, dtype=np.int64)
    stride = (num_timesteps - 1) / (steps - 1)
    kept = np.array([round(i * stride) for i in range(steps)], dtype=np.int64)
    if len(np.unique(kept)) != steps:  # cannot happen for steps <= T, kept as a guard
        raise ValueError(f"cannot space {num_timesteps} timesteps into {steps} distinct steps")
    return kept


@dataclass(frozen=True)
class Schedule:
    """A VP diffusion schedule on the original T timesteps.

    ``betas`` is a float64 array of length T. Use :meth:`respace` to get the chain a
    sampler with fewer steps runs, and :meth:`coefficient_table` for its per-step rows.
    """

    betas: np.ndarray

    def __post_init__(self):
        betas = np.asarray(self.betas, dtype=np.float64)
        if betas.ndim != 1 or betas.size < 1:
            raise ValueError(f"betas must be a non-empty 1-D array, got shape {betas.shape}")
        if not np.all((betas > 0) & (betas < 1)):
            raise ValueError("betas must lie in (0, 1)")
        object.__setattr__(self, "betas", betas)

    @classmethod
    def linear(cls, num_timesteps: int = 1000) -> "Schedule":
        return cls(linear_betas(num_timesteps))

    @classmethod
    def cosine(cls, num_timesteps: int = 1000) -> "Schedule":
        return cls(cosine_betas(num_timesteps))

    @classmethod
    def named(cls, name: str, num_timesteps: int = 1000) -> "Schedule":
        if name == "linear":
            return cls.linear(num_timesteps)
        if name == "cosine":
            return cls.cosine(num_timesteps)
        raise ValueError(f"schedule must be 'linear' or 'cosine', got {name!r}")

    @property
    def num_timesteps(self) -> int:
        return int(self.betas.size)

    @property
    def alphas_cumprod(self) -> np.ndarray:
        return np.cumprod(1.0 - self.betas)

    def respace(self, steps: int) -> "RespacedChain":
        """The VP chain over ``steps`` evenly kept timesteps (SPEC §3)."""
        kept = space_timesteps(self.num_timesteps, steps)
        alpha_bar = self.alphas_cumprod[kept]
        alpha_bar_prev = np.concatenate([[1.0], alpha_bar[:-1]])
        betas = 1.0 - alpha_bar / alpha_bar_prev
        return RespacedChain(timesteps=kept, betas=betas)


@dataclass(frozen=True)
class RespacedChain:
    """The chain a sampler actually runs: kept original ``timesteps`` and their β'_k."""

    timesteps: np.ndarray  # int64, increasing, the t the network is called with
    betas: np.ndarray  # float64, β'_k = 1 - ᾱ_{t_k} / ᾱ_{t_{k-1}}

    @property
    def steps(self) -> int:
        return int(self.timesteps.size)

    @property
    def alphas_cumprod(self) -> np.ndarray:
        return np.cumprod(1.0 - self.betas)

    @property
    def alphas_cumprod_prev(self) -> np.ndarray:
        return np.concatenate([[1.0], self.alphas_cumprod[:-1]])

    @property
    def posterior_variance(self) -> np.ndarray:
        """β̃_k = β'_k (1 - ᾱ_prev) / (1 - ᾱ_k); zero at k = 0."""
        return self.betas * (1.0 - self.alphas_cumprod_prev) / (1.0 - self.alphas_cumprod)

    @property
    def posterior_log_variance_clipped(self) -> np.ndarray:
        variance = self.posterior_variance
        if variance.size == 1:
            # A one-step chain only has the final, noiseless step; any finite value works.
            return np.log(self.betas)
        return np.log(np.concatenate([[variance[1]], variance[1:]]))

    def coefficient_table(self, variance: str = "fixed_small") -> np.ndarray:
        """Per-step coefficients, shape ``(steps, len(COEFFICIENT_COLUMNS))``, float64.

        Row ``k`` holds what the reverse step from ``t_k`` needs (columns listed in
        ``COEFFICIENT_COLUMNS``). ``variance`` picks σ_t: ``fixed_small`` (β̃, log
        clipped as in ADM), ``fixed_large`` (β with its first entry replaced by β̃_1),
        or ``learned_range`` (σ comes from the network; the table keeps both ends).
        """
        if variance not in VARIANCE_TYPES:
            raise ValueError(f"variance must be one of {VARIANCE_TYPES}, got {variance!r}")
        alpha_bar = self.alphas_cumprod
        alpha_bar_prev = self.alphas_cumprod_prev
        betas = self.betas
        log_variance_min = self.posterior_log_variance_clipped
        log_variance_max = np.log(betas)
        if variance == "fixed_small":
            log_variance = log_variance_min
        elif variance == "fixed_large":
            large = np.concatenate([[self.posterior_variance[1]], betas[1:]]) if betas.size > 1 else betas
            log_variance = np.log(large)
        else:
            log_variance = np.full_like(betas, np.nan)  # unused: σ is per element
        noise_mask = np.ones_like(betas)
        noise_mask[0] = 0.0
        sigma = np.exp(0.5 * log_variance) * noise_mask if variance != "learned_range" else np.zeros_like(betas)

        table = np.empty((betas.size, len(COEFFICIENT_COLUMNS)), dtype=np.float64)
        table[:, COLUMN["sqrt_recip_alpha_bar"]] = np.sqrt(1.0 / alpha_bar)
        table[:, COLUMN["sqrt_recip_alpha_bar_minus_one"]] = np.sqrt(1.0 / alpha_bar - 1.0)
        table[:, COLUMN["mean_coef_x0"]] = betas * np.sqrt(alpha_bar_prev) / (1.0 - alpha_bar)
        table[:, COLUMN["mean_coef_xt"]] = np.sqrt(1.0 - betas) * (1.0 - alpha_bar_prev) / (1.0 - alpha_bar)
        table[:, COLUMN["sigma"]] = sigma
        table[:, COLUMN["log_variance_min"]] = log_variance_min
        table[:, COLUMN["log_variance_max"]] = log_variance_max
        table[:, COLUMN["noise_mask"]] = noise_mask
        return table


def coefficient_table_tensor(
    chain: RespacedChain, variance: str, device: torch.device | str = "cpu"
) -> torch.Tensor:
    """The float64 host table cast once to a float32 device tensor."""
    table = chain.coefficient_table(variance)
    return torch.as_tensor(table, dtype=torch.float32, device=device).contiguous()


def _check_num_timesteps(num_timesteps: int) -> None:
    if isinstance(num_timesteps, bool) or not isinstance(num_timesteps, (int, np.integer)) or num_timesteps < 1:
        raise ValueError(f"num_timesteps must be a positive int, got {num_timesteps!r}")
