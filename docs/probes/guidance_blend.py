"""The guidance-blend probe of docs/RESULTS.md §4 ("Blending the two guidances"), kept as run.

Each step's update is x_prev = (1 − w)·u_x̂0 + w·u_DPS: the x̂0-guided and the DPS-guided
update of the same x'_prev, each with its own searched step (``DEMO_TASKS`` and
``DPS_DEMO_TASKS`` in dpfast/demo.py). It wraps the sampler's ``dps_update`` for the length
of the run, so it is a record of how the numbers were made, not library code.

    python docs/probes/guidance_blend.py [STEPS IMAGES SEED]    # 60 8 0: the table in RESULTS.md

Prints MSE / paired FD per task and the three-task means for λ ∈ {0, 0.5, 1} × w ∈ {0, …, 1}.
"""
import sys
import time
from dataclasses import replace

import numpy as np
import torch

import dpfast.sampler as sampler_module
from dpfast.data import load_demo_images
from dpfast.demo import DEMO_TASKS, DPS_DEMO_TASKS
from dpfast.experiments.image_tasks import dp_rows, traverse_task
from dpfast.guidance import zeta_table
from dpfast.models.loading import load_builtin

LAMS = (0.0, 0.5, 1.0)
DPS_WEIGHTS = (0.0, 0.25, 0.5, 0.75, 1.0)
plain_update = sampler_module.dps_update
blend = {}  # per sample: "w" (the DPS update's weight) and "ratio" (DPS's ζ over x̂0's ζ)


def blended_update(x_prime, data_grad, network_vjp, residual, zeta, row, backend):
    x0_guided = plain_update(x_prime, data_grad, None, residual, zeta, row, backend=backend)
    dps_guided = plain_update(x_prime, data_grad, network_vjp, residual, zeta * blend["ratio"], row, backend=backend)
    weight = blend["w"].view(-1, *([1] * (x_prime.dim() - 1)))
    return (1 - weight) * x0_guided + weight * dps_guided


def main(steps: int = 60, images: int = 8, seed: int = 0) -> None:
    sampler_module.dps_update = blended_update
    model = load_builtin()
    truth = load_demo_images()[0][:images]
    combos = [(lam, w) for lam in LAMS for w in DPS_WEIGHTS]
    lams = [lam for lam, _ in combos]
    results = {}
    for x0_task, dps_task in zip(DEMO_TASKS, DPS_DEMO_TASKS, strict=True):
        started = time.perf_counter()
        y = x0_task.measure(truth, seed=seed)
        blend["w"] = torch.tensor([w for _, w in combos], dtype=torch.float32).repeat_interleave(images)
        # both tasks' ζ are numbers or λ → number mappings: one table row gives the value at each λ
        ratio = zeta_table(dps_task.zeta, lams, 1)[0] / zeta_table(x0_task.zeta, lams, 1)[0]
        blend["ratio"] = torch.tensor(ratio, dtype=torch.float32).repeat_interleave(images)
        # guidance="dps" so the sampler runs the network VJP the DPS half needs; ζ is the x̂0 task's
        restored = traverse_task(model, replace(x0_task, guidance="dps"), y, lams, steps, seed=seed)
        rows = dp_rows(truth, restored, lams)
        results[x0_task.kind] = [(row["mse"], row["fd"]) for row in rows]
        print(f"{x0_task.kind} ({time.perf_counter() - started:.0f} s)", flush=True)
        for lam in LAMS:
            cells = [f"w {w:g}: {mse:.4f} / {fd:.1f}" for (combo_lam, w), (mse, fd) in zip(combos, results[x0_task.kind])
                     if combo_lam == lam]
            print(f"  λ {lam:g}  " + " | ".join(cells), flush=True)
    print("mean over the tasks (MSE / FD)")
    for index, (lam, w) in enumerate(combos):
        mse = np.mean([results[kind][index][0] for kind in results])
        fd = np.mean([results[kind][index][1] for kind in results])
        print(f"  λ {lam:g}, w {w:g}: {mse:.4f} / {fd:.1f}")


if __name__ == "__main__":
    main(*(int(value) for value in sys.argv[1:4]))
