"""How far does a rounding-sized change of the network's output move a restoration, per λ?

On an H200 a bf16 restoration with the built-in model landed 26 % from the float32 one in
MSE at λ = 0 but 2 % at λ = 1 (docs/BENCHMARKS.md, "GPU"). Is that bf16, or the λ = 0
chain? This experiment stays in float32 on any device and multiplies every network output
by (1 + s·z), z standard normal drawn afresh at every call from a fixed seed, for s in
:data:`PERTURBATIONS` (2⁻⁹ is bf16's relative rounding, 2⁻¹² an eighth of it). Per guidance
(DPS through the network, and x̂0 guidance, which skips the network's Jacobian) and λ it
reports the MSE to the truth and the relative distance ‖x_s − x‖ / ‖x‖ of each perturbed
restoration x_s to the unperturbed one x (same measurements, same seeds). A chain that
damps such changes moves by about s; one that amplifies them moves by orders more.
"""
from __future__ import annotations

import time
from pathlib import Path
from dataclasses import replace
from typing import Sequence

import torch

from dpfast.demo import DPS_DEMO_TASKS
from dpfast.experiments import common
from dpfast.experiments.image_tasks import traverse_task
from dpfast.models.base import ScoreModel

NAME = "sensitivity"
LAMS = (0.0, 0.5, 1.0)
PERTURBATIONS = (2.0**-12, 2.0**-9)
DRAWS = 2
STEPS = 100
# The demo's deblurring task (blur 61/3.0, σ_n 0.05, ζ 3) with DPS guidance (the gradient through
# the network), and the same task with x̂0 guidance (the demo's guidance; its search chose ζ 3 too).
TASK = next(task for task in DPS_DEMO_TASKS if task.kind == "deblur")
TASKS = {"dps": TASK, "x0": replace(TASK, guidance="x0")}


class PerturbedScore(ScoreModel):
    """``model``'s output times (1 + ``scale``·z), z ~ N(0, 1) drawn per call from ``seed``'s stream."""

    def __init__(self, model: ScoreModel, scale: float, seed: int):
        super().__init__()
        if not scale >= 0:
            raise ValueError(f"scale must be >= 0, got {scale!r}")
        self.model, self.scale = model, float(scale)
        self.generator = torch.Generator().manual_seed(seed)
        self.schedule, self.image_shape = model.schedule, model.image_shape

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        output = self.model(x, t)
        if self.scale == 0:
            return output
        z = torch.randn(output.shape, generator=self.generator).to(device=output.device, dtype=output.dtype)
        return output * (1 + self.scale * z)


def run(out_dir, quick: bool = False, seed: int = 0, lams: Sequence[float] | None = None,
        guidances: Sequence[str] = ("dps", "x0")) -> dict:
    """Restore the demo's deblurring measurements unperturbed and perturbed, per guidance in
    ``guidances`` (keys of :data:`TASKS`); write JSON and a table.

    Full: the 8 bundled test images, 100 steps, λ ∈ {0, 0.5, 1}, two draws per
    perturbation size (on 2 cores beside other work: 1,586 s for DPS, 230 s for x̂0 guidance). ``quick``:
    2 images, 8 steps, λ ∈ {0, 1}, one draw of the larger size.
    """
    from dpfast.data import load_demo_images
    from dpfast.models.loading import load_builtin

    unknown = [guidance for guidance in guidances if guidance not in TASKS]
    if unknown or not guidances:
        raise ValueError(f"guidances must be a non-empty selection of {sorted(TASKS)}, got {list(guidances)!r}")
    started = time.perf_counter()
    out_dir = Path(out_dir)
    lams = list(lams if lams is not None else ((0.0, 1.0) if quick else LAMS))
    steps, draws = (8, 1) if quick else (STEPS, DRAWS)
    sizes = PERTURBATIONS[-1:] if quick else PERTURBATIONS
    network = load_builtin()
    truth = load_demo_images()[0][: 2 if quick else 8]
    y = TASK.measure(truth, seed=seed)
    progress = common.Progress(NAME, len(guidances) * (1 + len(sizes) * draws))
    rows = []
    for guidance in guidances:
        task = TASKS[guidance]
        base = traverse_task(network, task, y, lams, steps, seed=seed)
        progress.step(f"{guidance}: unperturbed")
        rows += [dict(guidance=guidance, perturbation=0.0, draw=0, lam=lam, mse=_mse(restored, truth), moved=0.0)
                 for lam, restored in zip(lams, base)]
        for size in sizes:
            for draw in range(draws):
                perturbed = traverse_task(PerturbedScore(network, size, seed=1000 * seed + draw), task, y, lams, steps, seed=seed)
                for lam, restored, reference in zip(lams, perturbed, base):
                    moved = float((restored - reference).norm() / reference.norm())
                    rows.append(dict(guidance=guidance, perturbation=size, draw=draw, lam=lam, mse=_mse(restored, truth),
                                     moved=moved))
                progress.step(f"{guidance}: s = {size:.2e}, draw {draw}")
    results = {
        "task": TASK.name, "guidances": list(guidances), "zeta": TASK.zeta_text, "steps": steps, "images": int(truth.shape[0]), "rows": rows,
        "meta": common.run_metadata(NAME, quick, seed, started),
    }
    common.print_table(
        f"{TASK.name} ({' and '.join(guidances)} guidance), {TASK.zeta_text}, {steps} steps, {truth.shape[0]} images: "
        "output × (1 + s·z)",
        ("guidance", "s", "draw", "λ", "MSE", "‖x_s − x‖/‖x‖"),
        [(row["guidance"], f"{row['perturbation']:.1e}", row["draw"], row["lam"], row["mse"], f"{row['moved']:.2e}")
         for row in rows],
    )
    common.write_json(out_dir / f"{NAME}.json", results)
    return results


def _mse(restored: torch.Tensor, truth: torch.Tensor) -> float:
    return float((restored - truth).pow(2).mean())
