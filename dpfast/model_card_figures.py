"""Figures for the built-in model's card: the training loss curve and a grid of samples.

``python -m dpfast.model_card_figures --run RUN_DIR -o docs/figures`` reads the run's
``log.csv`` (one row per logged step: the mean loss since the previous row) and draws
unconditional samples from the installed built-in weights (guidance "none", λ = 1,
fixed seeds), writing ``builtin_loss.png`` and ``builtin_samples.png``.
"""
from __future__ import annotations

import argparse
import csv
from pathlib import Path

import numpy as np
import torch

from dpfast.experiments.common import pyplot, save_figure


def read_loss_log(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Steps and losses from a training ``log.csv`` (a resumed run may repeat steps: the last row wins)."""
    rows = {}
    with open(path, newline="") as handle:
        for row in csv.DictReader(handle):
            rows[int(row["step"])] = float(row["loss"])
    steps = np.array(sorted(rows))
    return steps, np.array([rows[step] for step in steps])


def plot_loss(log_path: str | Path, out: Path) -> Path:
    steps, losses = read_loss_log(log_path)
    plt = pyplot()
    figure, axis = plt.subplots(figsize=(5, 3.2))
    axis.plot(steps, losses, lw=0.6, color="tab:gray", label="logged mean")
    window = min(25, len(losses))
    if window > 1:
        smooth = np.convolve(losses, np.ones(window) / window, mode="valid")
        axis.plot(steps[window - 1 :], smooth, lw=1.5, color="tab:blue", label=f"running mean of {window}")
    axis.set_yscale("log")
    axis.set_xlabel("optimizer step (batch 64)")
    axis.set_ylabel("ε-prediction MSE")
    axis.set_title("built-in model: training loss", fontsize=9)
    axis.legend(fontsize=7)
    figure.tight_layout()
    return save_figure(figure, out)


def plot_samples(out: Path, count: int = 64, steps: int = 250, seed: int = 0) -> Path:
    from dpfast.models.loading import load_builtin
    from dpfast.sampler import Sampler

    model = load_builtin()
    samples = Sampler(model, None, steps=steps, guidance="none", progress=True).sample(count, lam=1.0, seed=seed)
    side = int(np.ceil(np.sqrt(count)))
    tiles = torch.full((side * 32, side * 32), -1.0)
    for index, image in enumerate(samples[:, 0].clamp(-1, 1)):
        row, column = divmod(index, side)
        tiles[row * 32 : (row + 1) * 32, column * 32 : (column + 1) * 32] = image
    plt = pyplot()
    figure, axis = plt.subplots(figsize=(5, 5))
    axis.imshow(tiles.numpy(), cmap="gray", vmin=-1, vmax=1, interpolation="nearest")
    axis.set_axis_off()
    axis.set_title(f"built-in model: {count} unconditional samples ({steps} steps, λ = 1, seed {seed})", fontsize=8)
    figure.tight_layout()
    return save_figure(figure, out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dpfast.model_card_figures", description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, required=True, help="the training run directory (holds log.csv)")
    parser.add_argument("-o", "--out", type=Path, default=Path("docs/figures"))
    parser.add_argument("--steps", type=int, default=250, help="sampling steps for the grid (default 250)")
    args = parser.parse_args(argv)
    print(plot_loss(args.run / "log.csv", args.out / "builtin_loss.png"))
    print(plot_samples(args.out / "builtin_samples.png", steps=args.steps))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
