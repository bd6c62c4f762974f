"""Distances between distributions used by the experiments: W2 (1-D, Gaussian, exact OT) and KL.

Distortion and perception here follow the distortion–perception literature (Blau &
Michaeli 2018; Freirich, Michaeli & Meir 2021): distortion is the mean squared error to
the ground truth, perception the 2-Wasserstein distance W2 between the distribution of
the estimates and the distribution they should follow.
"""
from __future__ import annotations

import math

import numpy as np
import scipy.special
import torch

from dpfast.models.analytic import GMMScore

QUANTILE_BISECTION_STEPS = 80  # halves the bracket to ~1e-24 of its width: float64-exact


def _as_numpy(values) -> np.ndarray:
    if isinstance(values, torch.Tensor):
        values = values.detach().cpu().double().numpy()
    return np.asarray(values, dtype=np.float64)


# ----------------------------------------------------------------------------- 1-D mixtures
def mixture_parameters(mixture: GMMScore) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Weights, means and standard deviations of a 1-D :class:`GMMScore`, as numpy arrays."""
    if mixture.dim != 1:
        raise ValueError(f"mixture must be one-dimensional, got d = {mixture.dim}")
    weights = mixture.weights.numpy()
    means = mixture.means[:, 0].numpy()
    stds = np.sqrt(mixture.covs[:, 0, 0].numpy())
    return weights, means, stds


def mixture_density(mixture: GMMScore, x) -> np.ndarray:
    """Density of a 1-D Gaussian mixture at the points ``x``."""
    weights, means, stds = mixture_parameters(mixture)
    x = _as_numpy(x)[..., None]
    normal = np.exp(-0.5 * ((x - means) / stds) ** 2) / (stds * math.sqrt(2 * math.pi))
    return (weights * normal).sum(-1)


def mixture_cdf(mixture: GMMScore, x) -> np.ndarray:
    """Cumulative distribution function of a 1-D Gaussian mixture at the points ``x``."""
    weights, means, stds = mixture_parameters(mixture)
    x = _as_numpy(x)[..., None]
    return (weights * scipy.special.ndtr((x - means) / stds)).sum(-1)


def mixture_quantiles(mixture: GMMScore, probabilities) -> np.ndarray:
    """Quantile function F⁻¹(u) of a 1-D Gaussian mixture, by vectorised bisection."""
    probabilities = _as_numpy(probabilities)
    if np.any((probabilities <= 0) | (probabilities >= 1)):
        raise ValueError("probabilities must lie strictly between 0 and 1")
    _, means, stds = mixture_parameters(mixture)
    low = np.full_like(probabilities, (means - 40 * stds).min())
    high = np.full_like(probabilities, (means + 40 * stds).max())
    for _ in range(QUANTILE_BISECTION_STEPS):
        middle = 0.5 * (low + high)
        below = mixture_cdf(mixture, middle) < probabilities
        low = np.where(below, middle, low)
        high = np.where(below, high, middle)
    return 0.5 * (low + high)


def wasserstein2_1d(samples, reference) -> float:
    """W2 between two equal-size 1-D samples: the sorted (monotone) coupling is optimal."""
    samples, reference = np.sort(_as_numpy(samples).ravel()), np.sort(_as_numpy(reference).ravel())
    if samples.shape != reference.shape:
        raise ValueError(f"samples and reference must have the same size, got {samples.size} and {reference.size}")
    return float(np.sqrt(np.mean((samples - reference) ** 2)))


def wasserstein2_to_mixture(samples, mixture: GMMScore) -> float:
    """W2 between n 1-D samples and a 1-D mixture, coupling sorted sample i with F⁻¹((i − ½)/n).

    The reference is the mixture's stratified n-point sample (its quantiles at the
    midpoints), so the only sampling noise is that of ``samples``; for n → ∞ this is
    W2(empirical, mixture) = (∫₀¹ (F̂⁻¹ − F⁻¹)² du)^½ up to O(1/n).
    """
    samples = _as_numpy(samples).ravel()
    n = samples.size
    quantiles = mixture_quantiles(mixture, (np.arange(n) + 0.5) / n)
    return wasserstein2_1d(samples, quantiles)


def histogram_kl_to_mixture(samples, mixture: GMMScore, edges) -> float:
    """KL(p̂ ‖ p) in nats between the histogram of ``samples`` and a 1-D mixture on the same bins.

    Bins are ``edges`` plus two overflow bins (−∞, edges[0]) and (edges[-1], ∞). With
    p̂_i the fraction of samples in bin i and q_i the mixture's exact mass there
    (from its CDF), the estimate is Σ_i p̂_i log(p̂_i / q_i) over the occupied bins.
    This is the KL between the *binned* distributions, which never exceeds the KL of
    the continuous ones (data processing); its plug-in bias is about +(m − 1)/(2n)
    nats for m occupied bins and n samples. For a (nearly) deterministic output, as at
    λ = 0, it is ≈ −log q of the one bin hit: finite, growing as the bins narrow.
    """
    samples = _as_numpy(samples).ravel()
    edges = _as_numpy(edges)
    if edges.ndim != 1 or edges.size < 2 or np.any(np.diff(edges) <= 0):
        raise ValueError("edges must be an increasing 1-D array with at least two entries")
    all_edges = np.concatenate([[-np.inf], edges, [np.inf]])
    counts = np.histogram(samples, bins=all_edges)[0]
    estimate = counts / samples.size
    masses = np.diff(mixture_cdf(mixture, all_edges))
    occupied = estimate > 0
    return float(np.sum(estimate[occupied] * np.log(estimate[occupied] / masses[occupied])))


# ----------------------------------------------------------------------------- Gaussians
def symmetric_sqrt(matrix: np.ndarray) -> np.ndarray:
    """Square root of a symmetric positive semi-definite matrix (eigenvalues clipped at 0)."""
    eigenvalues, eigenvectors = np.linalg.eigh(0.5 * (matrix + matrix.T))
    return (eigenvectors * np.sqrt(np.clip(eigenvalues, 0.0, None))) @ eigenvectors.T


def gaussian_wasserstein2(mean_1, cov_1, mean_2, cov_2) -> float:
    """Closed-form W2 between N(m₁, S₁) and N(m₂, S₂).

    W2² = ‖m₁ − m₂‖² + tr(S₁ + S₂ − 2 (S₂^½ S₁ S₂^½)^½)  (Dowson & Landau 1982).
    """
    mean_1, mean_2 = _as_numpy(mean_1), _as_numpy(mean_2)
    cov_1, cov_2 = _as_numpy(cov_1), _as_numpy(cov_2)
    root_2 = symmetric_sqrt(cov_2)
    cross = symmetric_sqrt(root_2 @ cov_1 @ root_2)
    squared = np.sum((mean_1 - mean_2) ** 2) + np.trace(cov_1 + cov_2 - 2.0 * cross)
    return float(np.sqrt(max(squared, 0.0)))


# ----------------------------------------------------------------------------- sample sets
def empirical_wasserstein2(samples, reference) -> float:
    """Exact W2 between two point clouds ``(n, d)`` and ``(m, d)`` with uniform weights.

    Solves the discrete optimal-transport problem with squared Euclidean cost by the
    network simplex (POT's ``ot.emd2``); O(n³)-ish, fine up to a few thousand points.
    Needs ``pip install POT`` (the ``experiments`` extra).
    """
    try:
        import ot
    except ImportError as error:  # pragma: no cover - depends on the environment
        raise ImportError("exact W2 between sample sets needs POT: pip install 'dpfast[experiments]'") from error
    samples, reference = _as_numpy(samples), _as_numpy(reference)
    if samples.ndim != 2 or reference.ndim != 2 or samples.shape[1] != reference.shape[1]:
        raise ValueError(f"samples and reference must be (n, d) and (m, d), got {samples.shape} and {reference.shape}")
    cost = ot.dist(samples, reference, metric="sqeuclidean")
    uniform_a = np.full(samples.shape[0], 1.0 / samples.shape[0])
    uniform_b = np.full(reference.shape[0], 1.0 / reference.shape[0])
    squared = ot.emd2(uniform_a, uniform_b, cost, numItermax=10_000_000)
    return float(np.sqrt(max(float(squared), 0.0)))


# ----------------------------------------------------------------------------- DP curves
def optimal_distortion(perception, mmse: float, mmse_perception: float) -> np.ndarray:
    """The MSE–W2 distortion–perception function D(P) = D* + [(W2(p, p*) − P)₊]².

    Freirich, Michaeli & Meir (NeurIPS 2021), Theorem 1: ``mmse`` is D*, the MMSE
    estimator's distortion, and ``mmse_perception`` the W2 between the target
    distribution and the MMSE estimator's. Conditionally on y the MMSE estimate is
    the posterior mean m, so W2(p(x|y), δ_m) = (tr Cov[x|y])^½ and, with D* = tr Cov,
    D(P) = tr S + (√tr S − P)² (SPEC §6) — for any posterior, Gaussian or not.
    """
    perception = _as_numpy(perception)
    return mmse + np.clip(mmse_perception - perception, 0.0, None) ** 2
