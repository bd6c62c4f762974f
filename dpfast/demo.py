"""`make demo`: restore Fashion-MNIST test images with the built-in model across the λ knob.

The eight bundled test images (dpfast/assets/README.md; no dataset install needed) are
degraded three ways: additive noise (σ_n = 0.2), Gaussian blur (61×61, σ = 3.0) and ×4
bicubic downsampling (both with σ_n = 0.05). Each task restores every image at
λ ∈ {0, 0.25, 0.5, 0.75, 1} in one batched traversal with the built-in model, guided by the
gradient with respect to x̂0 (``guidance="x0"``): with this network the full DPS gradient,
through the network, left λ = 0 with a higher MSE than λ = 1, while the x̂0 gradient makes
λ = 0 the low-MSE end the method promises (docs/RESULTS.md §4, "x̂0 guidance"). The output
is ``grid.png`` (per task: truth, measurement, one row per λ), ``dp_curve.png`` (MSE against
FD per task, λ along each curve) and a table.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Sequence

import torch

from dpfast.data import load_demo_images
from dpfast.experiments.common import print_table, pyplot, save_figure
from dpfast.experiments.image_tasks import ImageTask, dp_rows, traverse_task
from dpfast.models.base import ScoreModel

LAMS = (0.0, 0.25, 0.5, 0.75, 1.0)
# The guidance step per task and λ (the sampler interpolates between λ = 0 and 1), each the
# lowest MSE of a small grid on 8 Fashion-MNIST *training* images at 60 steps with the shipped
# weights (docs/MODEL_CARD.md, "Demo"; `dpfast demo --search-step-sizes`): denoising and SR use
# the β-scaled step (dpfast.guidance.beta_scaled_zeta, scale c), deblurring a constant ζ (it beat
# every β-scaled c on the blur, with either guidance).
DEMO_TASKS = (
    ImageTask("denoise", sigma_n=0.2, zeta=40.0, guidance="x0"),
    ImageTask("deblur", sigma_n=0.05, zeta=3.0, zeta_schedule="constant", guidance="x0"),
    ImageTask("sr4", sigma_n=0.05, zeta={0.0: 40.0, 1.0: 80.0}, guidance="x0"),
)
# The same three tasks with the full DPS gradient (through the network) and their own searched
# steps: what the demo ran before it switched to x̂0 guidance, and what the `sensitivity`,
# `step_count` and `score_swap` studies (docs/RESULTS.md §4) measure.
DPS_DEMO_TASKS = (
    ImageTask("denoise", sigma_n=0.2, zeta={0.0: 320.0, 1.0: 160.0}),
    ImageTask("deblur", sigma_n=0.05, zeta=3.0, zeta_schedule="constant"),
    ImageTask("sr4", sigma_n=0.05, zeta={0.0: 160.0, 1.0: 80.0}),
)
DEFAULT_STEPS = 60  # 8 images × 5 λ × 3 tasks: 46 s on an idle 2-core AVX-512 CPU (x̂0 guidance needs no network VJP)
# The grids `dpfast demo --search-step-sizes` searches per task kind (DEMO_TASKS holds its winners).
SEARCH_GRIDS = {
    "denoise": tuple(("beta", c) for c in (5.0, 10.0, 20.0, 40.0, 80.0, 160.0)),
    "deblur": (*(("constant", z) for z in (1.0, 3.0, 10.0, 30.0)), *(("beta", c) for c in (40.0, 160.0, 640.0))),
    "sr4": tuple(("beta", c) for c in (20.0, 40.0, 80.0, 160.0, 320.0, 640.0)),
}
# The grids DPS_DEMO_TASKS were chosen from (with DPS guidance):
# search_demo_step_sizes(tasks=DPS_DEMO_TASKS, grids=DPS_SEARCH_GRIDS) searches them again.
DPS_SEARCH_GRIDS = {
    "denoise": tuple(("beta", c) for c in (40.0, 80.0, 160.0, 320.0, 640.0)),
    "deblur": tuple(("constant", z) for z in (0.3, 1.0, 3.0, 10.0)),
    "sr4": tuple(("beta", c) for c in (20.0, 40.0, 80.0, 160.0, 320.0)),
}
SEARCH_SEED = 1  # measurement noise of the search (the demo itself uses seed 0 on other images)


def run_demo(
    out_dir: str | Path = "demo_out",
    steps: int = DEFAULT_STEPS,
    images: int = 8,
    seed: int = 0,
    lams: Sequence[float] = LAMS,
    tasks: Sequence[ImageTask] = DEMO_TASKS,
    model: ScoreModel | None = None,
    progress: bool = True,
) -> dict[str, list[dict]]:
    """Run the demo and write its figures into ``out_dir``; returns ``{task name: dp_rows}``.

    ``model`` defaults to the built-in model; ``images`` (2..8) of the bundled test images
    are used; every λ of a task shares the per-image seeds ``seed + i``.
    """
    if model is None:
        from dpfast.models.loading import load_builtin

        model = load_builtin()
    truth, class_names = load_demo_images()
    if not 2 <= images <= truth.shape[0]:
        raise ValueError(f"images must be between 2 and {truth.shape[0]} (the bundled test images), got {images}")
    truth = truth[:images]
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    print(f"{images} Fashion-MNIST test images ({', '.join(class_names[:images])}); "
          f"λ ∈ {list(lams)}; {steps} steps; seed {seed}")
    started = time.perf_counter()
    results, panels = {}, []
    for number, task in enumerate(tasks, 1):
        task_started = time.perf_counter()
        print(f"[{number}/{len(tasks)}] {task.name}, ζ = {task.zeta_text}: "
              f"{images * len(lams)} restorations in one batch",
              flush=True)
        y = task.measure(truth, seed=seed)
        restored = traverse_task(model, task, y, lams, steps, seed=seed, progress=progress)
        results[task.name] = dp_rows(truth, restored, lams)
        panels.append((task, y, restored))
        print(f"      done in {time.perf_counter() - task_started:.0f} s", flush=True)
    _save_grid(truth, panels, lams, out_dir / "grid.png")
    _save_dp_curve(results, out_dir / "dp_curve.png")
    for name, rows in results.items():
        print_table(name, ("lambda", "MSE", "PSNR", "SSIM", "FD"),
                    [(row["lam"], row["mse"], row["psnr"], row["ssim"], row["fd"]) for row in rows])
    print(f"\nFD is between the {images} restorations and the {images} clean images (a coarse, few-image estimate).")
    print(f"wrote {out_dir / 'grid.png'} and {out_dir / 'dp_curve.png'} in {time.perf_counter() - started:.0f} s")
    return results


def search_demo_step_sizes(
    model: ScoreModel | None = None,
    images: torch.Tensor | None = None,
    steps: int = DEFAULT_STEPS,
    seed: int = SEARCH_SEED,
    tasks: Sequence[ImageTask] = DEMO_TASKS,
    grids: dict | None = None,
    log=print,
) -> dict[str, dict[float, tuple[str, float]]]:
    """Choose each demo task's guidance step at λ = 0 and λ = 1 by the lowest MSE on *training* images.

    ``images`` defaults to the first 8 Fashion-MNIST training images (needs the dataset);
    ``grids`` maps a task's kind to its ``(schedule, value)`` choices (default
    :data:`SEARCH_GRIDS`). Returns ``{task name: {λ: (schedule, value)}}``, the form
    ``DEMO_TASKS`` takes; ``log`` gets one line per choice (one batched traversal each).
    """
    from dpfast.experiments.image_tasks import best_step_sizes, step_size_errors

    if model is None:
        from dpfast.models.loading import load_builtin

        model = load_builtin()
    if images is None:
        from dpfast.data import load_fashion_mnist

        images, _ = load_fashion_mnist("train", limit=8)
    grids = SEARCH_GRIDS if grids is None else grids
    missing = [task.kind for task in tasks if task.kind not in grids]
    if missing:
        raise ValueError(f"grids has no choices for the task kind(s) {missing}; it has {sorted(grids)}")
    chosen = {}
    for task in tasks:
        started = time.perf_counter()
        errors = step_size_errors(model, task, images, (0.0, 1.0), grids[task.kind], steps, seed=seed,
                                  log=lambda line: log(f"  {line}"))
        chosen[task.name] = best_step_sizes(errors, (0.0, 1.0))
        log(f"{task.name}: chose {', '.join(f'λ {lam:g}: {task.choice_text(choice)}' for lam, choice in chosen[task.name].items())}"
            f" ({time.perf_counter() - started:.0f} s)")
        for lam, (schedule, value) in chosen[task.name].items():
            values = [choice_value for choice_schedule, choice_value in grids[task.kind] if choice_schedule == schedule]
            if len(values) > 1 and value in (min(values), max(values)):
                log(f"{task.name}: λ {lam:g}'s choice {task.choice_text((schedule, value))} is on the edge of its grid "
                    f"{sorted(values)}: widen SEARCH_GRIDS['{task.kind}'] before trusting it")
    return chosen


def _save_grid(truth: torch.Tensor, panels, lams: Sequence[float], path: Path) -> Path:
    """One column block per task: rows truth, measurement, then one per λ."""
    import torch.nn.functional as F

    plt = pyplot()
    row_labels = ["truth", "measurement", *[f"λ = {lam:g}" for lam in lams]]
    figure, axes = plt.subplots(1, len(panels), figsize=(2.2 + 2.6 * len(panels) * truth.shape[0] / 8, 1.0 + 0.42 * len(row_labels)))
    axes = [axes] if len(panels) == 1 else list(axes)
    for axis, (task, y, restored) in zip(axes, panels):
        if y.shape[-2:] != truth.shape[-2:]:
            y = F.interpolate(y, size=truth.shape[-2:], mode="nearest")
        rows = [truth, y, *restored]
        tiles = torch.cat([torch.cat(list(row[:, 0].clamp(-1, 1)), dim=1) for row in rows], dim=0)
        axis.imshow(tiles.numpy(), cmap="gray", vmin=-1, vmax=1, interpolation="nearest")
        axis.set_title(task.name, fontsize=9)
        size = truth.shape[-1]
        axis.set_yticks([size * (i + 0.5) for i in range(len(rows))])
        axis.set_yticklabels(row_labels, fontsize=7)
        axis.set_xticks([])
    figure.tight_layout()
    return save_figure(figure, path)


def _save_dp_curve(results: dict[str, list[dict]], path: Path) -> Path:
    plt = pyplot()
    figure, axis = plt.subplots(figsize=(5, 3.6))
    for name, rows in results.items():
        mse = [row["mse"] for row in rows]
        fd = [row["fd"] for row in rows]
        axis.plot(mse, fd, marker="o", label=name)
        for row in rows:
            axis.annotate(f"{row['lam']:g}", (row["mse"], row["fd"]), fontsize=6, xytext=(3, 3), textcoords="offset points")
    axis.set_xlabel("MSE (distortion)")
    axis.set_ylabel("FD to the clean images (perception)")
    axis.set_title("distortion–perception curve over λ (labels)", fontsize=9)
    axis.legend(fontsize=7)
    figure.tight_layout()
    return save_figure(figure, path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="dpfast demo", description=__doc__.splitlines()[0])
    parser.add_argument("-o", "--out", default="demo_out", help="output folder (default: demo_out)")
    parser.add_argument("--steps", type=int, default=DEFAULT_STEPS, help=f"reverse steps (default: {DEFAULT_STEPS})")
    parser.add_argument("--images", type=int, default=8, help="bundled test images to use, 2..8 (default: 8)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the measurement noise and the sampler (default: 0)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.add_argument("--search-step-sizes", action="store_true",
                        help="instead of the demo: choose each task's step at λ = 0 and 1 on 8 Fashion-MNIST *training* "
                             "images (needs the dataset; --steps applies) and print the winners for DEMO_TASKS")
    args = parser.parse_args(argv)
    if args.search_step_sizes:
        print(f"step-size search: 8 training images, measurement seed {SEARCH_SEED}, {args.steps} steps, λ ∈ {{0, 1}}", flush=True)
        search_demo_step_sizes(steps=args.steps, log=lambda line: print(line, flush=True))
        return 0
    run_demo(args.out, steps=args.steps, images=args.images, seed=args.seed, progress=not args.quiet)
    return 0
