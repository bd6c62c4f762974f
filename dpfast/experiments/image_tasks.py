"""Fashion-MNIST restoration tasks, shared by `make demo` and ``dpfast reproduce images``.

A task is an operator, a noise level σ_n, the guidance (DPS by default, or x̂0) and the
step size ζ used with it. The
measurement is y = A x0 + σ_n n with counter-based noise, so a task and a seed fix y.
:func:`traverse_task` restores every image at every λ in one batched run and
:func:`dp_rows` scores the restorations: MSE, PSNR, SSIM against the truth and FD (the
shipped Fashion-MNIST feature network) between the restored set and the clean set.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np
import torch

from dpfast import metrics
from dpfast.guidance import GUIDANCE_MODES, beta_scaled_zeta
from dpfast.models.base import ScoreModel
from dpfast.operators import GaussianBlur, Identity, Operator, SuperResolution, measure
from dpfast.sampler import Sampler

ZETA_SCHEDULES = ("beta", "constant")
# a restoration task needs the measurement, so not "none"
TASK_GUIDANCES = tuple(mode for mode in GUIDANCE_MODES if mode != "none")
OPERATORS = {
    "denoise": Identity,
    "deblur": lambda: GaussianBlur(61, 3.0),
    "sr4": lambda: SuperResolution(4),
}


@dataclass(frozen=True)
class ImageTask:
    """One restoration problem: ``kind`` (a key of :data:`OPERATORS`), σ_n and ζ.

    ``zeta``: a number, or a mapping λ → number (the sampler interpolates between its
    keys). With ``zeta_schedule="beta"`` (default) that number is the scale c of
    :func:`~dpfast.guidance.beta_scaled_zeta` (ζ_k = c β'_k/√α'_k, strong early, weak
    late); with ``"constant"`` it is ζ itself at every step. A ``(schedule, number)``
    pair in place of a number names its own schedule, so a mapping may pick the β-scaled
    step at one λ and a constant ζ at another (the per-step values are interpolated).

    ``guidance``: the sampler's guidance, ``"dps"`` (default; the gradient through the
    network) or ``"x0"`` (the gradient with respect to x̂0 only; cheaper, and with the
    built-in model the better deterministic end: docs/RESULTS.md §4, "x̂0 guidance").
    """

    kind: str
    sigma_n: float
    zeta: float | tuple[str, float] | Mapping[float, float | tuple[str, float]]
    zeta_schedule: str = "beta"
    guidance: str = "dps"

    def __post_init__(self):
        if self.kind not in OPERATORS:
            raise ValueError(f"kind must be one of {sorted(OPERATORS)}, got {self.kind!r}")
        if not self.sigma_n >= 0:
            raise ValueError(f"sigma_n must be >= 0, got {self.sigma_n}")
        if self.zeta_schedule not in ZETA_SCHEDULES:
            raise ValueError(f"zeta_schedule must be 'beta' or 'constant', got {self.zeta_schedule!r}")
        if self.guidance not in TASK_GUIDANCES:
            raise ValueError(f"guidance must be one of {TASK_GUIDANCES}, got {self.guidance!r}")
        for choice in (self.zeta.values() if isinstance(self.zeta, Mapping) else [self.zeta]):
            if isinstance(choice, tuple) and (len(choice) != 2 or choice[0] not in ZETA_SCHEDULES):
                raise ValueError(f"a zeta pair must be (schedule, value) with schedule 'beta' or 'constant', got {choice!r}")

    @property
    def name(self) -> str:
        """``"deblur σn=0.05"``; a task guided other than by DPS says so (``"deblur σn=0.05, x0 guidance"``)."""
        base = f"{self.kind} σn={self.sigma_n:g}"
        return base if self.guidance == "dps" else f"{base}, {self.guidance} guidance"

    @property
    def zeta_text(self) -> str:
        if isinstance(self.zeta, Mapping):
            return ", ".join(f"λ {lam:g}: {self.choice_text(zeta)}" for lam, zeta in sorted(self.zeta.items()))
        return self.choice_text(self.zeta)

    def choice_text(self, choice) -> str:
        """``"c 160"`` (β-scaled) or ``"ζ 3"`` (constant) for a number or a (schedule, number) pair."""
        schedule, value = choice if isinstance(choice, tuple) else (self.zeta_schedule, choice)
        return f"{'c' if schedule == 'beta' else 'ζ'} {value:g}"

    def natural_scale(self, image_shape: Sequence[int]) -> float:
        """c ≈ ‖r‖/σ_n² ≈ √m/σ_n for a measurement of m values: the β-scaled step's natural size."""
        m = math.prod(self.operator().output_shape((1, *image_shape))[1:])
        return math.sqrt(m) / max(self.sigma_n, 1e-3)

    def sampler_zeta(self, model: ScoreModel, steps: int, zeta=None):
        """What :class:`~dpfast.Sampler` gets as ``zeta`` (``zeta`` overrides the task's value)."""
        value = self.zeta if zeta is None else zeta
        if isinstance(value, tuple):
            return self.step_sizes(model, steps, value)
        if isinstance(value, Mapping) and any(isinstance(choice, tuple) for choice in value.values()):
            return _interpolated_steps({float(lam): self.step_sizes(model, steps, choice) for lam, choice in value.items()})
        if self.zeta_schedule == "beta":
            return beta_scaled_zeta(value, model.schedule, steps)
        return value

    def step_sizes(self, model: ScoreModel, steps: int, choice) -> np.ndarray:
        """The per-step ζ (execution order) of one choice: a number or a (schedule, number) pair."""
        schedule, value = choice if isinstance(choice, tuple) else (self.zeta_schedule, choice)
        if schedule == "beta":
            return beta_scaled_zeta(float(value), model.schedule, steps)(1.0)
        return np.full(steps, float(value))

    def operator(self) -> Operator:
        return OPERATORS[self.kind]()

    def measure(self, images: torch.Tensor, seed: int = 0) -> torch.Tensor:
        """y = A x0 + σ_n n (:func:`dpfast.operators.measure`: image i's noise from seed + i)."""
        return measure(images, self.operator(), self.sigma_n, seed=seed)


def traverse_task(
    model: ScoreModel,
    task: ImageTask,
    y: torch.Tensor,
    lams: Sequence[float],
    steps: int,
    seed: int = 0,
    progress: bool = False,
    zeta=None,
) -> torch.Tensor:
    """Restore the measurements ``y`` at every λ in one batched run: ``(L, N, C, H, W)``.

    ``zeta`` overrides the task's value (anything :class:`ImageTask` takes as ``zeta``).
    The sampler's ``mode="auto"``: eager on the CPU, one captured CUDA graph per call on a GPU
    (the small network is launch-bound there: 5.9× at batch 64 on an H200).
    """
    sampler = Sampler(model, task.operator(), steps=steps, zeta=task.sampler_zeta(model, steps, zeta), guidance=task.guidance,
                      progress=progress, mode="auto")
    return sampler.traverse(y, list(lams), seed=seed)


def dp_rows(truth: torch.Tensor, restorations: torch.Tensor, lams: Sequence[float], feature_network=None,
            reference: torch.Tensor | None = None) -> list[dict]:
    """Distortion and perception of each λ's restorations (``(L, N, ...)``) against ``truth`` (``(N, ...)``).

    MSE, PSNR and SSIM are means over images; FD compares the feature statistics of the
    restored set with those of the clean set (N ≥ 2; with few images it is a coarse,
    rank-limited estimate). That set holds the very images restored, so FD falls with
    distortion too; with ``reference`` — other clean images, disjoint from ``truth`` — each
    row also has ``fd_unpaired``, the FD of the restorations to that set, whose floor is the
    FD between two clean sets of that size. Computed on the CPU
    wherever the tensors live (a ``feature_network`` must be on the CPU too).
    """
    if restorations.shape[0] != len(lams) or restorations.shape[1:] != truth.shape:
        raise ValueError(
            f"restorations must have shape ({len(lams)}, *{tuple(truth.shape)}), got {tuple(restorations.shape)}"
        )
    truth, restorations = truth.cpu(), restorations.cpu()
    truth_statistics = metrics.feature_statistics(truth, feature_network)
    reference_statistics = None if reference is None else metrics.feature_statistics(reference.cpu(), feature_network)
    rows = []
    for lam, restored in zip(lams, restorations):
        restored_statistics = metrics.feature_statistics(restored, feature_network)
        rows.append(
            dict(
                lam=float(lam),
                mse=float(metrics.mse(restored, truth).mean()),
                psnr=float(metrics.psnr(restored, truth).mean()),
                ssim=float(metrics.ssim(restored, truth).mean()),
                fd=metrics.frechet_distance(*restored_statistics, *truth_statistics),
            )
        )
        if reference_statistics is not None:
            rows[-1]["fd_unpaired"] = metrics.frechet_distance(*restored_statistics, *reference_statistics)
    return rows


def _interpolated_steps(per_lam: Mapping[float, np.ndarray]):
    """λ → per-step ζ, linear between the keys of ``per_lam`` (an error outside them)."""
    keys = sorted(per_lam)

    def zeta(lam: float) -> np.ndarray:
        if not keys[0] <= lam <= keys[-1]:
            raise ValueError(f"lam={lam} is outside the step-size choices' range [{keys[0]}, {keys[-1]}]")
        upper = next(index for index, key in enumerate(keys) if key >= lam)
        if keys[upper] == lam or upper == 0:
            return per_lam[keys[upper]]
        low, high = keys[upper - 1], keys[upper]
        weight = (lam - low) / (high - low)
        return (1.0 - weight) * per_lam[low] + weight * per_lam[high]

    return zeta


def step_size_errors(
    model: ScoreModel,
    task: ImageTask,
    images: torch.Tensor,
    lams: Sequence[float],
    choices: Sequence[tuple[str, float]],
    steps: int,
    seed: int = 0,
    log=print,
    pieces=None,
) -> dict[tuple[str, float], list[float]]:
    """Each ``(schedule, value)`` of ``choices`` → the MSE on ``images`` (use *training* images) at
    each λ of ``lams``; :func:`best_step_sizes` then picks per λ (β-scaled and constant steps
    compete on equal terms).

    One batched traversal per choice; ``log`` gets one line per choice. With a
    :class:`~dpfast.experiments.pieces.PieceStore` as ``pieces`` each choice's traversal is a
    stored piece (a resumed run reads it back).
    """
    y = task.measure(images, seed=seed)
    errors = {}
    for choice in choices:
        choice = (choice[0], float(choice[1]))
        traverse = lambda choice=choice: traverse_task(model, task, y, lams, steps, seed=seed, zeta=choice)  # noqa: E731
        restored = traverse() if pieces is None else pieces.get(f"{task.name} search {task.choice_text(choice)}", traverse)
        errors[choice] = [float(metrics.mse(r, images).mean()) for r in restored]
        log(f"{task.name} {task.choice_text(choice)}: " + ", ".join(f"λ {lam:g} MSE {e:.4f}" for lam, e in zip(lams, errors[choice])))
    return errors


def best_step_sizes(errors: Mapping[tuple[str, float], Sequence[float]], lams: Sequence[float]) -> dict[float, tuple[str, float]]:
    """λ → the choice of ``errors`` (:func:`step_size_errors`) with the lowest finite MSE at that λ."""
    return {float(lam): min(errors, key=lambda choice: _finite_or_inf(errors[choice][index])) for index, lam in enumerate(lams)}


def _finite_or_inf(value: float) -> float:
    return value if math.isfinite(value) else math.inf


def search_zeta(
    model: ScoreModel,
    task: ImageTask,
    images: torch.Tensor,
    lams: Sequence[float],
    zetas: Sequence[float],
    steps: int,
    seed: int = 0,
    log=print,
) -> dict[float, float]:
    """For each λ, the value from ``zetas`` (ζ, or c for β-scaled tasks) with the lowest MSE
    on ``images`` (use *training* images).

    One batched traversal per value; returns the mapping λ → value (interpolated between
    its keys). ``log`` gets one line per value with each λ's MSE.
    """
    choices = [(task.zeta_schedule, float(zeta)) for zeta in zetas]
    chosen = best_step_sizes(step_size_errors(model, task, images, lams, choices, steps, seed=seed, log=log), lams)
    return {lam: value for lam, (_, value) in chosen.items()}
