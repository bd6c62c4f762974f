"""Is λ = 0's poor showing on images the method's fault or the network's? Swap the score and see.

With the shipped built-in weights and DPS guidance, λ = 1 beats λ = 0 in MSE on every demo
task, against the method's promise (x̂0 guidance turns that around: docs/RESULTS.md §4).
This experiment restores the same measurements (the DPS-guided demo's denoising task) with
four scores and otherwise identical settings:

- ``network``: the built-in model;
- ``gaussian``: the *exact* score of a Gaussian prior N(m, S) fitted on the Fashion-MNIST
  training images (the prior behind the Wiener estimator) — no learning error at all;
- ``network, gaussian t≥600`` and ``network, gaussian t≥300``: the network below that
  original timestep, the exact Gaussian score above it.

It also tabulates why the deterministic chain is hard on a learned network: at λ = 0 the
step x_{t-1} = c0·x̂0 + c1·x_t, with x̂0 right, scales the noise left in x_t by
c1·√(1−ᾱ_t)/√(1−ᾱ_{t-1}) = √(1 − β_t/(1−ᾱ_t)) relative to what the next timestep's label
says (:func:`deterministic_noise_fraction`). After a few steps the network is asked
about inputs far cleaner than anything it was trained on at that label. An exact score
answers there as well as anywhere; a trained network has barely seen such inputs.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from dpfast.demo import DPS_DEMO_TASKS
from dpfast.experiments import common
from dpfast.denoising_quality import WienerDenoiser
from dpfast.experiments.image_tasks import dp_rows, traverse_task
from dpfast.models.analytic import GaussianScore
from dpfast.models.base import ScoreModel
from dpfast.schedule import Schedule

NAME = "score_swap"
LAMS = (0.0, 0.25, 0.5, 0.75, 1.0)
SWITCH_TIMESTEPS = (600, 300)
STEPS = 60
TASK = DPS_DEMO_TASKS[0]  # the DPS-guided demo's denoising task (σ_n 0.2, c 320 at λ = 0, 160 at λ = 1)


class GaussianImagePrior(ScoreModel):
    """The exact ε of a Gaussian prior over whole images: :class:`GaussianScore` on flattened pixels."""

    def __init__(self, images: torch.Tensor, schedule: Schedule, jitter: float = 1e-6):
        super().__init__()
        moments = WienerDenoiser.fit(images)  # the same mean and covariance as the linear yardstick
        covariance = moments.covariance + jitter * torch.eye(moments.mean.numel(), dtype=torch.float64)  # padding is constant
        self.prior = GaussianScore(moments.mean, covariance, schedule=schedule)
        self.schedule = schedule
        self.image_shape = tuple(images.shape[1:])

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.prior(x.reshape(x.shape[0], -1), t).reshape(x.shape)


class SwitchedScore(ScoreModel):
    """``low`` for original timesteps below ``switch``, ``high`` from ``switch`` up (same schedule)."""

    def __init__(self, low: ScoreModel, high: ScoreModel, switch: int):
        super().__init__()
        if low.image_shape != high.image_shape:
            raise ValueError(f"the two scores must share an image shape, got {low.image_shape} and {high.image_shape}")
        if not 0 < switch < low.schedule.num_timesteps:
            raise ValueError(f"switch must be in (0, {low.schedule.num_timesteps}), got {switch}")
        self.low, self.high, self.switch = low, high, switch
        self.schedule, self.image_shape = low.schedule, low.image_shape

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        above = t >= self.switch
        if bool(above.all()):
            return self.high(x, t).to(x.dtype)
        if not bool(above.any()):
            return self.low(x, t).to(x.dtype)
        choose = above.reshape(-1, *([1] * (x.ndim - 1)))
        return torch.where(choose, self.high(x, t).to(x.dtype), self.low(x, t).to(x.dtype))


def deterministic_noise_fraction(schedule: Schedule, steps: int) -> tuple[np.ndarray, np.ndarray]:
    """The λ = 0 chain's leftover noise relative to each timestep's label, with x̂0 exact.

    Returns ``(timesteps, fraction)``, from the first step's target timestep down: after
    the step into timestep t_k, x_{t_k} holds ``fraction`` × √(1−ᾱ_{t_k}) of noise, where
    the network was trained on exactly √(1−ᾱ_{t_k}).
    """
    chain = schedule.respace(steps)
    alphas_cumprod = np.asarray(chain.alphas_cumprod, dtype=np.float64)
    betas = np.asarray(chain.betas, dtype=np.float64)
    timesteps = np.asarray(chain.timesteps, dtype=np.int64)
    per_step = np.sqrt(1.0 - betas[1:] / (1.0 - alphas_cumprod[1:]))  # step k → k−1, for k = steps−1 … 1
    fraction = np.cumprod(per_step[::-1])
    return timesteps[:-1][::-1], fraction


def run(out_dir, quick: bool = False, seed: int = 0, lams: Sequence[float] | None = None) -> dict:
    """Restore the demo's denoising measurements with each score; write JSON, table, figure.

    Full: the 8 bundled test images, 60 steps, λ ∈ {0, .25, .5, .75, 1}, the Gaussian fitted
    on all 60,000 training images (about 5 minutes on 2 cores). ``quick``: 4 images, 10
    steps, λ ∈ {0, 1}, 2,000 training images.
    """
    from dpfast.data import load_demo_images, load_fashion_mnist
    from dpfast.models.loading import load_builtin

    started = time.perf_counter()
    out_dir = Path(out_dir)
    lams = list(lams if lams is not None else ((0.0, 1.0) if quick else LAMS))
    steps = 10 if quick else STEPS
    network = load_builtin()
    training, _ = load_fashion_mnist("train", limit=2000 if quick else None)
    gaussian = GaussianImagePrior(training, network.schedule)
    scores = {"network": network, "gaussian": gaussian}
    for switch in SWITCH_TIMESTEPS:
        scores[f"network, gaussian t≥{switch}"] = SwitchedScore(network, gaussian, switch)
    truth = load_demo_images()[0][: 4 if quick else 8]
    y = TASK.measure(truth, seed=seed)
    progress = common.Progress(NAME, len(scores))
    rows = {}
    for name, score in scores.items():
        restored = traverse_task(score, TASK, y, lams, steps, seed=seed)
        rows[name] = dp_rows(truth, restored, lams)
        progress.step(name)
    timesteps, fraction = deterministic_noise_fraction(network.schedule, steps)
    results = {
        "task": TASK.name, "zeta": TASK.zeta_text, "steps": steps, "images": int(truth.shape[0]),
        "training_images": int(training.shape[0]), "scores": rows,
        "lam0_noise_fraction": {"timesteps": timesteps.tolist(), "fraction": fraction.tolist()},
        "meta": common.run_metadata(NAME, quick, seed, started),
    }
    table = [(name, row["lam"], row["mse"], row["fd"]) for name, score_rows in rows.items() for row in score_rows]
    common.print_table(f"{TASK.name}, {TASK.zeta_text}, {steps} steps", ("score", "λ", "MSE", "FD"), table)
    common.write_json(out_dir / f"{NAME}.json", results)
    _plot(results, out_dir / f"{NAME}.png")
    return results


def _plot(results: dict, path: Path) -> Path:
    plt = common.pyplot()
    figure, (curves, noise) = plt.subplots(1, 2, figsize=(8.4, 3.4))
    for name, rows in results["scores"].items():
        curves.plot([row["mse"] for row in rows], [row["fd"] for row in rows], "o-", ms=4, lw=1, label=name)
        for end in (rows[0], rows[-1]):
            curves.annotate(f"λ={end['lam']:g}", (end["mse"], end["fd"]), fontsize=6, xytext=(3, 3),
                            textcoords="offset points")
    curves.set_xlabel("MSE")
    curves.set_ylabel("FD to the clean images")
    curves.set_title(f"{results['task']}: the same DPS, four scores", fontsize=9)
    curves.legend(fontsize=6)
    fraction = results["lam0_noise_fraction"]
    noise.semilogy(fraction["timesteps"], fraction["fraction"], ".-", ms=3, lw=1)
    noise.invert_xaxis()
    noise.set_xlabel("timestep t (the chain runs left to right)")
    noise.set_ylabel("noise in x_t / √(1−ᾱ_t)")
    noise.set_title("λ = 0: what the network is shown", fontsize=9)
    figure.tight_layout()
    return common.save_figure(figure, path)
