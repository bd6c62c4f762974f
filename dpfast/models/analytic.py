"""Exact score models for Gaussian and Gaussian-mixture priors (SPEC §5).

These are the ground truth for the theory tests and the toy experiments: ε is exact at
every t, and ``posterior(A, sigma_n, y)`` gives the exact conditional model for a
linear A, so running the sampler with guidance ``"none"`` on it samples with the exact
conditional score (x_t ⊥ y | x0).
"""
from __future__ import annotations

import math

import torch

from dpfast.models.base import ScoreModel
from dpfast.schedule import Schedule


def _as_float64(value, name: str) -> torch.Tensor:
    tensor = torch.as_tensor(value, dtype=torch.float64)
    if not torch.isfinite(tensor).all():
        raise ValueError(f"{name} must be finite")
    return tensor


def _check_covariance(cov: torch.Tensor, name: str) -> torch.Tensor:
    cov = 0.5 * (cov + cov.transpose(-1, -2))
    eigenvalues = torch.linalg.eigvalsh(cov)
    if (eigenvalues < -1e-10).any():
        raise ValueError(f"{name} must be positive semi-definite, smallest eigenvalue {eigenvalues.min().item():.3g}")
    return cov


class GMMScore(ScoreModel):
    """Gaussian-mixture prior Σ_k w_k N(m_k, S_k) in d dimensions, exact ε at every t.

    At time t the marginal is Σ_k w_k N(sqrt(ᾱ_t) m_k, ᾱ_t S_k + (1 − ᾱ_t) I), and
    ε = −sqrt(1 − ᾱ_t) ∇ log p_t(x), with responsibilities from a log-sum-exp.

    Args:
        weights: ``(K,)`` non-negative, normalised here.
        means: ``(K, d)``.
        covs: ``(K, d, d)`` positive semi-definite.
        schedule: the VP schedule (default linear, T = 1000).

    Example:
        >>> prior = GMMScore([0.5, 0.5], [[-1.0], [1.0]], [[[0.1]], [[0.1]]])
        >>> prior(torch.zeros(4, 1), torch.full((4,), 999)).shape
        torch.Size([4, 1])
    """

    default_variance = "fixed_small"
    default_clip_denoised = False
    learned_variance = False

    def __init__(self, weights, means, covs, schedule: Schedule | None = None):
        super().__init__()
        weights = _as_float64(weights, "weights").reshape(-1)
        means = _as_float64(means, "means")
        covs = _as_float64(covs, "covs")
        if means.dim() != 2 or covs.dim() != 3 or covs.shape != (means.shape[0], means.shape[1], means.shape[1]):
            raise ValueError(
                f"means must be (K, d) and covs (K, d, d); got {tuple(means.shape)} and {tuple(covs.shape)}"
            )
        if weights.shape[0] != means.shape[0]:
            raise ValueError(f"weights has {weights.shape[0]} entries but means has {means.shape[0]} components")
        if (weights < 0).any() or weights.sum() <= 0:
            raise ValueError("weights must be non-negative with a positive sum")
        covs = _check_covariance(covs, "covs")
        self.schedule = schedule or Schedule.linear(1000)
        self.image_shape = (int(means.shape[1]),)
        eigenvalues, eigenvectors = torch.linalg.eigh(covs)
        self.register_buffer("weights", weights / weights.sum())
        self.register_buffer("means", means)
        self.register_buffer("covs", covs)
        self.register_buffer("eigenvalues", eigenvalues.clamp_min(0.0))
        self.register_buffer("eigenvectors", eigenvectors)
        self.register_buffer("alphas_cumprod", torch.as_tensor(self.schedule.alphas_cumprod, dtype=torch.float64))

    @property
    def dim(self) -> int:
        return self.image_shape[0]

    def log_prob_components(
        self, x: torch.Tensor, alpha_bar: torch.Tensor, with_log_prob: bool = True
    ) -> tuple[torch.Tensor | None, torch.Tensor]:
        """Per-component log densities of the time-t marginal and their scores, float64.

        ``x``: ``(B, d)``, ``alpha_bar``: ``(B,)``. Returns ``(log_p (B, K), score (B, K, d))``;
        ``log_p`` is ``None`` when ``with_log_prob`` is False (one component needs none).
        Σ_kt = ᾱ S_k + (1 − ᾱ) I shares S_k's eigenvectors, so each component costs two
        small matmuls (a loop over K keeps it cheap for 10⁵ samples).
        """
        scale = alpha_bar.sqrt().unsqueeze(-1)
        ab = alpha_bar.unsqueeze(-1)
        log_ps, scores = [], []
        for mean, eigenvalues, eigenvectors in zip(self.means, self.eigenvalues, self.eigenvectors):
            rotated = (x - scale * mean) @ eigenvectors  # (B, d) in the eigenbasis
            variances = ab * eigenvalues + (1.0 - ab)
            whitened = rotated / variances
            scores.append(-(whitened @ eigenvectors.T))
            if with_log_prob:
                log_ps.append(
                    -0.5 * ((rotated * whitened).sum(-1) + variances.log().sum(-1) + self.dim * math.log(2 * math.pi))
                )
        log_p = torch.stack(log_ps, dim=1) if with_log_prob else None
        return log_p, torch.stack(scores, dim=1)

    def score(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """∇_x log p_t(x), float64 ``(B, d)``."""
        alpha_bar = self.alphas_cumprod[t.long()]
        single = self.weights.shape[0] == 1
        log_p, score = self.log_prob_components(x.double(), alpha_bar, with_log_prob=not single)
        if single:
            return score[:, 0]
        responsibilities = torch.softmax(log_p + self.weights.log().unsqueeze(0), dim=1)
        return (responsibilities.unsqueeze(-1) * score).sum(1)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if self.weights.shape[0] == 1 and t.numel() > 0 and bool((t == t[0]).all()):
            return self._gaussian_eps_shared_t(x, int(t[0]))
        alpha_bar = self.alphas_cumprod[t.long()]
        eps = -(1.0 - alpha_bar).sqrt().unsqueeze(-1) * self.score(x, t)
        return eps.to(x.dtype)

    def _gaussian_eps_shared_t(self, x: torch.Tensor, t: int) -> torch.Tensor:
        """One Gaussian, one t for the whole batch: ε is affine in x, one small matmul."""
        alpha_bar = self.alphas_cumprod[t]
        eigenvectors = self.eigenvectors[0]
        inverse = (eigenvectors / (alpha_bar * self.eigenvalues[0] + 1.0 - alpha_bar)) @ eigenvectors.T
        slope = (1.0 - alpha_bar).sqrt() * inverse
        offset = -(alpha_bar.sqrt() * slope @ self.means[0])
        return torch.addmm(offset, x.double(), slope).to(x.dtype)

    def mean(self) -> torch.Tensor:
        return (self.weights.unsqueeze(-1) * self.means).sum(0)

    def covariance(self) -> torch.Tensor:
        mean = self.mean()
        centred = self.means - mean
        between = torch.einsum("k,ki,kj->ij", self.weights, centred, centred)
        return torch.einsum("k,kij->ij", self.weights, self.covs) + between

    def sample_prior(self, n: int, seed: int = 0) -> torch.Tensor:
        """``n`` exact draws from the prior (float64, ``(n, d)``), for tests and experiments."""
        generator = torch.Generator().manual_seed(seed)
        component = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        factors = self.eigenvectors * self.eigenvalues.sqrt().unsqueeze(1)  # U diag(sqrt λ)
        noise = torch.randn(n, self.dim, dtype=torch.float64, generator=generator)
        return self.means[component] + torch.einsum("nij,nj->ni", factors[component], noise)

    def posterior(self, A, sigma_n: float, y) -> "GMMScore":
        """The exact posterior for y = A x0 + σ_n n, a reweighted Gaussian mixture.

        Args:
            A: ``(m, d)`` matrix; sigma_n: noise std (≥ 0; 0 needs A S_k Aᵀ invertible);
            y: ``(m,)`` observation.
        """
        A, y = self._check_measurement(A, sigma_n, y)
        noise_cov = sigma_n**2 * torch.eye(A.shape[0], dtype=torch.float64)
        log_weights, means, covs = [], [], []
        for weight, mean, cov in zip(self.weights, self.means, self.covs):
            predicted_cov = A @ cov @ A.T + noise_cov
            gain = torch.linalg.solve(predicted_cov, A @ cov).T  # S Aᵀ (A S Aᵀ + σ² I)⁻¹
            innovation = y - A @ mean
            means.append(mean + gain @ innovation)
            covs.append(cov - gain @ A @ cov)
            log_evidence = torch.distributions.MultivariateNormal(A @ mean, predicted_cov).log_prob(y)
            log_weights.append(weight.log() + log_evidence)
        weights = torch.softmax(torch.stack(log_weights), dim=0)
        return GMMScore(weights, torch.stack(means), torch.stack(covs), schedule=self.schedule)

    def _check_measurement(self, A, sigma_n, y):
        A = _as_float64(A, "A")
        if A.dim() == 1:
            A = A.unsqueeze(0)
        if A.dim() != 2 or A.shape[1] != self.dim:
            raise ValueError(f"A must be a matrix (m, {self.dim}), got shape {tuple(A.shape)}")
        if isinstance(sigma_n, bool) or not isinstance(sigma_n, (int, float)) or not math.isfinite(sigma_n) or sigma_n < 0:
            raise ValueError(f"sigma_n must be a finite number >= 0, got {sigma_n!r}")
        y = _as_float64(y, "y").reshape(-1)
        if y.shape[0] != A.shape[0]:
            raise ValueError(f"y must have {A.shape[0]} entries to match A, got {y.shape[0]}")
        return A, y


class GaussianScore(GMMScore):
    """Gaussian prior N(m, S) in d dimensions, exact ε at every t (a one-component mixture).

    Example:
        >>> prior = GaussianScore(torch.zeros(3), torch.eye(3))
        >>> post = prior.posterior(torch.eye(3), 0.5, torch.ones(3))
        >>> post.mean()
        tensor([0.8000, 0.8000, 0.8000], dtype=torch.float64)
    """

    def __init__(self, mean, cov, schedule: Schedule | None = None):
        mean = _as_float64(mean, "mean").reshape(-1)
        cov = _as_float64(cov, "cov")
        if cov.shape != (mean.shape[0], mean.shape[0]):
            raise ValueError(f"cov must be ({mean.shape[0]}, {mean.shape[0]}) to match mean, got {tuple(cov.shape)}")
        super().__init__(torch.ones(1), mean.unsqueeze(0), cov.unsqueeze(0), schedule=schedule)

    def posterior(self, A, sigma_n: float, y) -> "GaussianScore":
        mixture = super().posterior(A, sigma_n, y)
        return GaussianScore(mixture.means[0], mixture.covs[0], schedule=self.schedule)
