"""Gaussian prior in d = 4 and a linear measurement: the λ sweep lands on the optimal DP curve.

Problem: prior N(m₀, S₀) with m₀ = (0.3, −0.5, 0.8, 0.1) and S₀ = L Lᵀ (L below), measurement
y = A x0 + 0.4 n with the 2×4 matrix A below, observed y = (0.7, −0.2). The posterior
N(m, S) is exact (``GaussianScore.posterior``) and the λ-process runs with the exact
conditional score (guidance ``"none"`` on it, SPEC §5).

For each λ, conditional on y:

- distortion D = E‖x̂ − x‖² (summed over the d coordinates), x̂ the λ-process end point and
  x an *independent* exact posterior draw (one per end point);
- perception P = W2(N(mean(x̂), cov(x̂)), N(m, S)), the closed-form W2 between the
  Gaussian fitted to the end points and the posterior (the end points are Gaussian:
  the exact score is affine, so every step is a linear-Gaussian map).

SPEC §6: D(λ) = (1 + λ) tr S and P(λ) = (1 − √λ) √tr S, so the points lie on
D(P) = tr S + (√tr S − P)², the optimal conditional MSE–W2 curve. Also reported, without
sampling noise: the exact (D, P) of the discrete chain actually run (its end-point
moments propagated in float64 through the same coefficient table), which separates
what the finite-step chain does from what finite samples add.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from dpfast.experiments import common, distances
from dpfast.models.analytic import GaussianScore
from dpfast.sampler import Sampler
from dpfast.schedule import COLUMN

NAME = "gaussian"
PRIOR_MEAN = (0.3, -0.5, 0.8, 0.1)
PRIOR_COV_FACTOR = (  # L, lower triangular: S₀ = L Lᵀ
    (1.0, 0.0, 0.0, 0.0),
    (0.5, 0.8, 0.0, 0.0),
    (-0.3, 0.2, 0.6, 0.0),
    (0.2, -0.4, 0.1, 0.7),
)
MEASUREMENT = ((1.0, 0.5, 0.0, -0.3), (0.0, 1.0, -1.0, 0.4))  # A, 2×4
NOISE_STD = 0.4
OBSERVATION = (0.7, -0.2)
TRUTH_SEED_OFFSET = 1_000_003


@dataclass(frozen=True)
class Settings:
    samples: int  # end points per λ (and independent posterior draws)
    steps: int
    lams: tuple[float, ...]


FULL = Settings(samples=100_000, steps=1000, lams=(0.0, 0.02, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.85, 1.0))
QUICK = Settings(samples=20_000, steps=100, lams=(0.0, 0.25, 0.5, 1.0))


def problem() -> tuple[GaussianScore, GaussianScore]:
    """``(prior, posterior)`` of the stated problem, on the linear schedule (T = 1000)."""
    factor = torch.tensor(PRIOR_COV_FACTOR, dtype=torch.float64)
    prior = GaussianScore(torch.tensor(PRIOR_MEAN), factor @ factor.T)
    return prior, prior.posterior(torch.tensor(MEASUREMENT), NOISE_STD, torch.tensor(OBSERVATION))


def theoretical_point(trace: float, lam: float) -> tuple[float, float]:
    """SPEC §6 for ᾱ_T → 0 and the exact reverse covariance: (D(λ), P(λ))."""
    return (1.0 + lam) * trace, (1.0 - math.sqrt(lam)) * math.sqrt(trace)


def chain_endpoint_moments(sampler: Sampler, posterior: GaussianScore, lam: float) -> tuple[np.ndarray, np.ndarray]:
    """Exact mean and covariance of the end point of the chain ``sampler`` runs, float64.

    With a Gaussian posterior N(m, S), ε(x_t) = √(1−ᾱ) Σ_t⁻¹ (x_t − √ᾱ m) with
    Σ_t = ᾱ S + (1−ᾱ) I, so x̂0 and x'_prev are affine in x_t and each step maps
    (mean, cov) exactly; x_T ~ N(0, I). Noise scaling s(λ) = √λ (variance scaling).
    """
    mean_post, cov_post = posterior.mean().numpy(), posterior.covariance().numpy()
    dim = mean_post.size
    eye = np.eye(dim)
    table = sampler.chain.coefficient_table(sampler.variance)
    alpha_bars = sampler.chain.alphas_cumprod
    mean, cov = np.zeros(dim), eye.copy()
    for k in range(sampler.steps - 1, -1, -1):
        row, alpha_bar = table[k], alpha_bars[k]
        shrink = (1.0 - alpha_bar) * np.linalg.inv(alpha_bar * cov_post + (1.0 - alpha_bar) * eye)
        # x̂0 = G x_t + h
        gain = (eye - shrink) / math.sqrt(alpha_bar)
        offset = shrink @ mean_post
        transition = row[COLUMN["mean_coef_x0"]] * gain + row[COLUMN["mean_coef_xt"]] * eye
        mean = transition @ mean + row[COLUMN["mean_coef_x0"]] * offset
        cov = transition @ cov @ transition.T + lam * row[COLUMN["sigma"]] ** 2 * eye
    return mean, cov


def run(out_dir, quick: bool = False, seed: int = 0) -> dict:
    """Run the λ sweep; write ``gaussian_dp_curve.png`` and ``gaussian.json``; return the numbers.

    Args:
        out_dir: output folder (created).
        quick: the small version (20 000 samples, 100 steps, λ ∈ {0, .25, .5, 1}) for tests.
        seed: end point i uses seed ``seed + i``; the posterior draws use other seeds.

    Returns:
        ``{"problem", "settings", "sweep": [per λ: mse, w2, their theory, the exact-chain
        values and the relative gap to the curve], "meta"}``.
    """
    with common.torch_threads(1):
        return _run(out_dir, quick, seed)


def _run(out_dir, quick: bool, seed: int) -> dict:
    started = time.perf_counter()
    out_dir = Path(out_dir)
    settings = QUICK if quick else FULL
    _, posterior = problem()
    mean_post, cov_post = posterior.mean().numpy(), posterior.covariance().numpy()
    trace = float(np.trace(cov_post))
    sampler = Sampler(posterior, None, steps=settings.steps, guidance="none", clip_denoised=False)
    progress = common.Progress(NAME, len(settings.lams))

    sweep = []
    for index, lam in enumerate(settings.lams):
        lam_started = time.perf_counter()
        ends = sampler.sample(settings.samples, lam=lam, seed=seed).double().numpy()
        truth = posterior.sample_prior(settings.samples, seed=seed + TRUTH_SEED_OFFSET + index).numpy()
        squared_errors = np.sum((ends - truth) ** 2, axis=1)
        mse = float(squared_errors.mean())
        w2 = distances.gaussian_wasserstein2(ends.mean(0), np.cov(ends.T), mean_post, cov_post)
        curve = float(distances.optimal_distortion(w2, trace, math.sqrt(trace)))
        chain_mean, chain_cov = chain_endpoint_moments(sampler, posterior, lam)
        theory_mse, theory_w2 = theoretical_point(trace, lam)
        sweep.append({
            "lam": lam,
            "mse": mse,
            "mse_standard_error": float(squared_errors.std() / math.sqrt(settings.samples)),
            "w2": w2,
            "curve_mse_at_w2": curve,
            "relative_gap_to_curve": (mse - curve) / curve,
            "theory_mse": theory_mse,
            "theory_w2": theory_w2,
            "chain_mse": float(np.sum((chain_mean - mean_post) ** 2) + np.trace(chain_cov) + trace),
            "chain_w2": distances.gaussian_wasserstein2(chain_mean, chain_cov, mean_post, cov_post),
            "seconds": time.perf_counter() - lam_started,
        })
        progress.step(f"λ = {lam:.2f}: {settings.samples} samples, {settings.steps} steps")

    results = {
        "problem": {
            "prior_mean": list(PRIOR_MEAN),
            "prior_cov_factor": [list(row) for row in PRIOR_COV_FACTOR],
            "A": [list(row) for row in MEASUREMENT],
            "noise_std": NOISE_STD,
            "observation": list(OBSERVATION),
            "posterior_mean": mean_post.tolist(),
            "posterior_cov": cov_post.tolist(),
            "trace_posterior_cov": trace,
        },
        "settings": settings.__dict__,
        "sweep": sweep,
        "figures": [f"{NAME}_dp_curve.png"],
    }
    _plot(sweep, trace, out_dir / f"{NAME}_dp_curve.png")
    results["meta"] = common.run_metadata(NAME, quick, seed, started)
    common.write_json(out_dir / f"{NAME}.json", results)
    common.print_table(
        f"d = 4, tr S = {trace:.4f}; {settings.samples} samples per λ, {settings.steps} steps",
        ("lambda", "MSE", "W2", "D(W2)", "gap", "MSE theory", "W2 theory", "MSE chain", "W2 chain"),
        [(row["lam"], row["mse"], row["w2"], row["curve_mse_at_w2"], f"{100 * row['relative_gap_to_curve']:+.2f}%",
          row["theory_mse"], row["theory_w2"], row["chain_mse"], row["chain_w2"]) for row in sweep],
    )
    print(f"wall time {results['meta']['wall_seconds']:.1f} s")
    return results


def _plot(sweep: list[dict], trace: float, path: Path) -> None:
    plt = common.pyplot()
    perception = np.linspace(0.0, math.sqrt(trace), 200)
    figure, axis = plt.subplots(figsize=(5.6, 4.2))
    axis.plot(distances.optimal_distortion(perception, trace, math.sqrt(trace)), perception, color="black", lw=1,
              label="D(P) = tr S + (√tr S − P)²")
    axis.plot([row["theory_mse"] for row in sweep], [row["theory_w2"] for row in sweep], "s", mfc="none",
              color="grey", ms=8, label="SPEC §6 point for each λ")
    axis.plot([row["chain_mse"] for row in sweep], [row["chain_w2"] for row in sweep], "x", color="tab:orange",
              label="exact moments of the chain run")
    axis.plot([row["mse"] for row in sweep], [row["w2"] for row in sweep], "o", color="tab:blue", ms=4,
              label="sampled (MSE to posterior draws, W2 of Gaussian fit)")
    for row in sweep:
        axis.annotate(f"{row['lam']:g}", (row["mse"], row["w2"]), textcoords="offset points", xytext=(5, 3), fontsize=7)
    axis.set_xlabel("MSE  E‖x̂ − x‖² (conditional on y)")
    axis.set_ylabel("W2 to the posterior")
    axis.set_title("Gaussian posterior, d = 4: the λ sweep on the optimal DP curve", fontsize=10)
    axis.legend(fontsize=7)
    figure.tight_layout()
    common.save_figure(figure, path)
