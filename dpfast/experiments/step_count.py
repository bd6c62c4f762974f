"""Does λ = 0's deficit on the built-in model shrink with more reverse steps?

With DPS guidance the demo's DP check (tests/test_demo.py, 40 steps) fails because λ = 0
has a higher MSE than λ = 1 (the demo has used x̂0 guidance since, where it passes). With an exact score the λ-process's end point does not depend on the step
count in the limit, but a coarse chain is not that limit: each respaced λ = 0 step is a
large deterministic jump of a chain that amplifies small changes (``sensitivity``). This
experiment restores the DPS-guided demo's three tasks (``DPS_DEMO_TASKS``: the bundled
test images, their step sizes, seed 0) at λ ∈ {0, 1} for each step count in :data:`STEP_COUNTS` and reports MSE
and FD per point. Nothing but ``steps`` changes, as for a user who raises it: the
β-scaled steps (denoising, SR) keep their total pull over the chain, while deblurring's
constant ζ adds up to ``steps`` × ζ, so its pull grows with the step count.
"""
from __future__ import annotations

import time
from pathlib import Path

from dpfast.demo import DPS_DEMO_TASKS
from dpfast.experiments import common
from dpfast.experiments.image_tasks import dp_rows, traverse_task

NAME = "step_count"
LAMS = (0.0, 1.0)
STEP_COUNTS = (25, 50, 100, 200, 400)
QUICK_STEP_COUNTS = (3, 6)


def run(out_dir, quick: bool = False, seed: int = 0) -> dict:
    """Restore the DPS-guided demo's measurements at every step count; write JSON, a figure and a table.

    Full: the 8 bundled test images, the three tasks of ``DPS_DEMO_TASKS``, :data:`STEP_COUNTS` (about
    20 minutes on 2 cores). ``quick``: 2 images, the denoising task, 3 and 6 steps.
    """
    from dpfast.data import load_demo_images
    from dpfast.models.loading import load_builtin

    started = time.perf_counter()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    step_counts, tasks = (QUICK_STEP_COUNTS, DPS_DEMO_TASKS[:1]) if quick else (STEP_COUNTS, DPS_DEMO_TASKS)
    model = load_builtin()
    truth = load_demo_images()[0][: 2 if quick else 8]
    progress = common.Progress(NAME, len(tasks) * len(step_counts))
    rows = []
    for task in tasks:
        y = task.measure(truth, seed=seed)
        for steps in step_counts:
            point_started = time.perf_counter()
            restored = traverse_task(model, task, y, LAMS, steps, seed=seed)
            seconds = time.perf_counter() - point_started
            for row in dp_rows(truth, restored, LAMS):
                rows.append(dict(task=task.name, zeta=task.zeta_text, steps=steps, lam=row["lam"], mse=row["mse"],
                                 fd=row["fd"], seconds=seconds))
            progress.step(f"{task.name}, {steps} steps")
    results = {"images": int(truth.shape[0]), "lams": list(LAMS), "step_counts": list(step_counts), "rows": rows,
               "figures": [f"{NAME}.png"], "meta": common.run_metadata(NAME, quick, seed, started)}
    _plot(rows, tasks, out_dir / f"{NAME}.png")
    common.print_table(
        f"the DPS-guided demo's tasks, {truth.shape[0]} test images, λ ∈ {list(LAMS)}: MSE and FD against the step count",
        ("task", "steps", "λ", "MSE", "FD"),
        [(row["task"], row["steps"], row["lam"], row["mse"], row["fd"]) for row in rows],
    )
    common.write_json(out_dir / f"{NAME}.json", results)
    return results


def _plot(rows: list[dict], tasks, path: Path) -> None:
    plt = common.pyplot()
    from matplotlib.ticker import ScalarFormatter

    figure, axes = plt.subplots(2, len(tasks), figsize=(4.2 * len(tasks), 6.4), squeeze=False)
    for column, task in enumerate(tasks):
        for row_index, metric in enumerate(("mse", "fd")):
            axis = axes[row_index][column]
            for lam, style in zip(LAMS, ("o-", "s--")):
                points = [row for row in rows if row["task"] == task.name and row["lam"] == lam]
                axis.plot([row["steps"] for row in points], [row[metric] for row in points], style, label=f"λ = {lam:g}")
            axis.set_xscale("log")
            axis.set_xticks(sorted({row["steps"] for row in rows}))
            axis.xaxis.set_major_formatter(ScalarFormatter())
            axis.minorticks_off()
            axis.set_xlabel("reverse steps")
            axis.set_ylabel(metric.upper())
            if row_index == 0:
                axis.set_title(f"{task.name} ({task.zeta_text})", fontsize=9)
            axis.legend(fontsize=8)
    figure.tight_layout()
    common.save_figure(figure, path)
