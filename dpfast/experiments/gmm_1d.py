"""The paper's first example: a 1-D two-component Gaussian-mixture prior and one observation.

Problem (stated once here, used everywhere below):

- prior p(x0) = ½ N(−1, 0.05) + ½ N(+1, 0.05) (variances; standard deviation 0.224);
- measurement y = x0 + σ_n n with σ_n = 1.0, observed y = −0.6;
- exact posterior (``GMMScore.posterior``): weights 0.758 / 0.242 on components
  N(−0.981, 0.0476) and N(0.924, 0.0476); mean −0.520, variance 0.713 (the MMSE).

The λ-process runs with the exact conditional score: guidance ``"none"`` on the exact
posterior model (SPEC §5), 1000 steps (100 in quick mode). Outputs:

- ``gmm_1d_trajectories.png``: x_T → x_0 paths for λ ∈ {0, 0.3, 0.8, 1};
- ``gmm_1d_endpoints.png``: histograms of the end points against the posterior density;
- ``gmm_1d_dp_curves.png``: W2-vs-MSE and KL-vs-MSE over a λ grid, with the optimal
  conditional MSE–W2 curve D(P) = Var + (√Var − P)² (Freirich et al. 2021, SPEC §6);
- ``gmm_1d.json``: every number.

Estimators (conditional on y):

- MSE: E[(x̂ − x)²] with x ~ p(x|y) independent of x̂, computed exactly given the
  end points as mean((x̂ − m)²) + Var[x|y] (m the posterior mean) — the same
  expectation as pairing with independent posterior draws, without their noise (that
  paired version is reported too, as ``mse_vs_draws``).
- W2: sorted coupling of the n end points with the posterior's n quantiles
  F⁻¹((i − ½)/n) (``distances.wasserstein2_to_mixture``).
- KL(p̂_λ ‖ p(x|y)): histogram plug-in on 0.025-wide bins over [−3, 3] plus two overflow
  bins, with the exact bin masses of the posterior (``distances.histogram_kl_to_mixture``).
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from dpfast.experiments import common, distances
from dpfast.models.analytic import GMMScore
from dpfast.sampler import Sampler

NAME = "gmm_1d"
PRIOR_WEIGHTS = (0.5, 0.5)
PRIOR_MEANS = (-1.0, 1.0)
PRIOR_VARIANCE = 0.05
OBSERVATION = -0.6
NOISE_STD = 1.0
TRAJECTORY_LAMS = (0.0, 0.3, 0.8, 1.0)
KL_BIN_EDGES = np.linspace(-3.0, 3.0, 241)  # 0.025-wide bins
PLOT_RANGE = (-2.2, 2.2)
TRUTH_SEED_OFFSET = 1_000_003  # independent posterior draws use seeds far from the sampler's


@dataclass(frozen=True)
class Settings:
    samples: int  # end points per λ
    steps: int
    lams: tuple[float, ...]
    trajectories: int  # paths drawn per λ in the trajectory figure
    record_every: int


FULL = Settings(
    samples=20_000, steps=1000, lams=(0.0, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0),
    trajectories=32, record_every=20,
)
QUICK = Settings(samples=10_000, steps=100, lams=(0.0, 0.25, 0.5, 0.75, 1.0), trajectories=24, record_every=2)


def prior() -> GMMScore:
    """½ N(−1, 0.05) + ½ N(1, 0.05) on the standard linear schedule (T = 1000)."""
    means = [[mean] for mean in PRIOR_MEANS]
    covs = [[[PRIOR_VARIANCE]] for _ in PRIOR_MEANS]
    return GMMScore(PRIOR_WEIGHTS, means, covs)


def posterior() -> GMMScore:
    """The exact posterior p(x0 | y = −0.6) for y = x0 + 1.0 n."""
    return prior().posterior([[1.0]], NOISE_STD, [OBSERVATION])


def measure_endpoints(end_points: torch.Tensor, target: GMMScore, truth: torch.Tensor) -> dict:
    """Distortion and perception of λ-process end points ``(n, 1)`` against the posterior."""
    x = end_points.double().flatten()
    mean, variance = float(target.mean()), float(target.covariance())
    return {
        "mse": float(((x - mean) ** 2).mean()) + variance,
        "mse_vs_draws": float(((x - truth.flatten()) ** 2).mean()),
        "w2": distances.wasserstein2_to_mixture(x, target),
        "kl": distances.histogram_kl_to_mixture(x, target, KL_BIN_EDGES),
        "mean": float(x.mean()),
        "std": float(x.std()),
    }


def run(out_dir, quick: bool = False, seed: int = 0) -> dict:
    """Run the experiment; write figures and ``gmm_1d.json`` into ``out_dir``; return the numbers.

    Args:
        out_dir: output folder (created).
        quick: the small version (10 000 samples, 100 steps, 5 values of λ) for tests.
        seed: sample i of every λ uses seed ``seed + i``.

    Returns:
        ``{"problem": ..., "settings": ..., "sweep": [one row per λ], "meta": ...}``.
    """
    with common.torch_threads(1):
        return _run(out_dir, quick, seed)


def _run(out_dir, quick: bool, seed: int) -> dict:
    started = time.perf_counter()
    out_dir = Path(out_dir)
    settings = QUICK if quick else FULL
    target = posterior()
    variance = float(target.covariance())
    sampler = Sampler(target, None, steps=settings.steps, guidance="none", clip_denoised=False)
    truth = target.sample_prior(settings.samples, seed=seed + TRUTH_SEED_OFFSET)
    progress = common.Progress(NAME, len(settings.lams) + 1)

    sweep, end_points = [], {}
    for lam in settings.lams:
        lam_started = time.perf_counter()
        ends = sampler.sample(settings.samples, lam=lam, seed=seed)
        end_points[lam] = ends
        row = {"lam": lam, **measure_endpoints(ends, target, truth), "seconds": time.perf_counter() - lam_started}
        sweep.append(row)
        progress.step(f"λ = {lam:.2f}: {settings.samples} samples, {settings.steps} steps")

    lams, seeds = [], []
    for lam in TRAJECTORY_LAMS:
        lams += [lam] * settings.trajectories
        seeds += list(range(seed, seed + settings.trajectories))
    timesteps, states = common.record_trajectory(sampler, lams, seeds, every=settings.record_every)
    paths = states[..., 0].view(len(timesteps), len(TRAJECTORY_LAMS), settings.trajectories)
    trajectory_ends = {}
    for lam in TRAJECTORY_LAMS:  # the end-point histograms of the trajectory figure's λ
        if lam not in end_points:
            end_points[lam] = sampler.sample(settings.samples, lam=lam, seed=seed)
        trajectory_ends[lam] = end_points[lam]
    progress.step(f"trajectories for λ in {TRAJECTORY_LAMS}")

    results = {
        "problem": {
            "prior": {"weights": list(PRIOR_WEIGHTS), "means": list(PRIOR_MEANS), "variance": PRIOR_VARIANCE},
            "observation": OBSERVATION,
            "noise_std": NOISE_STD,
            "posterior": {
                "weights": target.weights.tolist(),
                "means": target.means[:, 0].tolist(),
                "variances": target.covs[:, 0, 0].tolist(),
                "mean": float(target.mean()),
                "variance": variance,
            },
            "optimal_curve": "D(P) = Var + (sqrt(Var) - P)^2, Freirich et al. 2021",
        },
        "settings": settings.__dict__,
        "sweep": sweep,
    }
    _plot_trajectories(timesteps, paths, target, out_dir / f"{NAME}_trajectories.png")
    _plot_endpoints(trajectory_ends, target, out_dir / f"{NAME}_endpoints.png")
    _plot_dp_curves(sweep, variance, out_dir / f"{NAME}_dp_curves.png")
    results["figures"] = [f"{NAME}_trajectories.png", f"{NAME}_endpoints.png", f"{NAME}_dp_curves.png"]
    results["meta"] = common.run_metadata(NAME, quick, seed, started)
    common.write_json(out_dir / f"{NAME}.json", results)
    _print_summary(results)
    return results


def _print_summary(results: dict) -> None:
    post = results["problem"]["posterior"]
    settings = results["settings"]
    print(f"\nprior ½N(-1, 0.05) + ½N(1, 0.05); y = x0 + {NOISE_STD} n, y = {OBSERVATION}; posterior weights "
          f"{np.round(post['weights'], 3).tolist()}, mean {post['mean']:.3f}, variance {post['variance']:.3f}")
    rows = [
        (row["lam"], row["mse"], row["mse_vs_draws"], row["w2"], row["kl"], row["mean"], row["std"])
        for row in results["sweep"]
    ]
    common.print_table(
        f"{settings['samples']} samples per λ, {settings['steps']} steps (MMSE = {post['variance']:.4f})",
        ("lambda", "MSE", "MSE(draws)", "W2", "KL", "mean", "std"),
        rows,
    )
    print(f"wall time {results['meta']['wall_seconds']:.1f} s")


def _posterior_curve(target: GMMScore):
    grid = np.linspace(*PLOT_RANGE, 500)
    return grid, distances.mixture_density(target, grid)


def _plot_trajectories(timesteps: np.ndarray, paths: torch.Tensor, target: GMMScore, path: Path) -> None:
    plt = common.pyplot()
    grid, density = _posterior_curve(target)
    time_axis = np.where(timesteps < 0, 0, timesteps)  # x_0 plotted at t = 0
    figure, axes = plt.subplots(1, len(TRAJECTORY_LAMS), figsize=(12, 3.2), sharey=True)
    for index, (axis, lam) in enumerate(zip(axes, TRAJECTORY_LAMS)):
        axis.plot(time_axis, paths[:, index].numpy(), color="tab:blue", lw=0.6, alpha=0.6)
        scale = 0.25 * time_axis.max() / density.max()
        axis.fill_betweenx(grid, 0, -scale * density, color="black", alpha=0.25, lw=0)
        axis.axhline(float(target.mean()), color="tab:red", ls=":", lw=1.3)
        axis.set_xlim(time_axis.max(), -0.27 * time_axis.max())
        axis.set_ylim(-3, 3)
        axis.set_title(f"λ = {lam}", fontsize=10)
        axis.set_xlabel("timestep t (T → 0)")
    axes[0].set_ylabel("x_t")
    figure.suptitle("λ-process paths with the exact conditional score; grey: posterior density, red: posterior mean",
                    fontsize=10)
    figure.tight_layout()
    common.save_figure(figure, path)


def _plot_endpoints(end_points: dict, target: GMMScore, path: Path) -> None:
    plt = common.pyplot()
    grid, density = _posterior_curve(target)
    figure, axes = plt.subplots(1, len(end_points), figsize=(12, 2.8), sharex=True)
    for axis, (lam, ends) in zip(axes, end_points.items()):
        axis.hist(ends.numpy().ravel(), bins=110, range=PLOT_RANGE, density=True, color="tab:blue", alpha=0.7,
                  histtype="stepfilled")
        axis.plot(grid, density, color="black", lw=1)
        axis.axvline(float(target.mean()), color="tab:red", ls=":", lw=1)
        axis.set_title(f"λ = {lam}", fontsize=10)
        axis.set_yticks([])
    figure.suptitle("end points (blue) vs the exact posterior density (black); red: posterior mean", fontsize=10)
    figure.tight_layout()
    common.save_figure(figure, path)


def _plot_dp_curves(sweep: list[dict], variance: float, path: Path) -> None:
    plt = common.pyplot()
    mse = np.array([row["mse"] for row in sweep])
    w2 = np.array([row["w2"] for row in sweep])
    kl = np.array([row["kl"] for row in sweep])
    perception = np.linspace(0.0, np.sqrt(variance), 200)
    figure, (left, right) = plt.subplots(1, 2, figsize=(10, 3.8))
    left.plot(distances.optimal_distortion(perception, variance, np.sqrt(variance)), perception, color="black", lw=1,
              label="optimal D(P) = Var + (√Var − P)²")
    left.plot([variance], [np.sqrt(variance)], "*", color="black", ms=9, label="posterior mean (MMSE)")
    left.plot(mse, w2, "o-", color="tab:blue", label="λ-process (exact score)")
    left.set_ylabel("W2 to the posterior")
    right.plot(mse, kl, "o-", color="tab:blue")
    right.set_ylabel("KL(p̂_λ ‖ posterior), nats (histogram)")
    for axis, values in ((left, w2), (right, kl)):
        for row, value in zip(sweep, values):
            axis.annotate(f"{row['lam']:g}", (row["mse"], value), textcoords="offset points", xytext=(4, 3), fontsize=7)
        axis.axvline(variance, color="grey", ls=":", lw=1)
        axis.axvline(2 * variance, color="grey", ls=":", lw=1)
        axis.set_xlabel("MSE (conditional on y)")
    left.legend(fontsize=8)
    figure.suptitle("distortion–perception traversal by λ (labels: λ; dotted: MMSE and 2·MMSE)", fontsize=10)
    figure.tight_layout()
    common.save_figure(figure, path)
