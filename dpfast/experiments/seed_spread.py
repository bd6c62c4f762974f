"""How far do the full images run's numbers move with the chain seed? (``seed_spread``)

The full images run (docs/RESULTS.md §4) computes every point with one seed. Some of its
comparisons are close: on denoising σ_n 0.1 deepinv's DPS at α = 1 came out 7 % below
dpfast's λ = 1 in MSE and 30 % below in FD, and x̂0 guidance's λ = 0 5 % below the mean of 8
DPS samples in MSE. This experiment reruns three single-chain points with other seeds, on
the same test images and measurements and with the step sizes and weights the run chose
(read from its ``images.json``, or ``images.partial.json`` while it is unfinished; by
default the images run in the same output folder — ``python -m dpfast.experiments
seed_spread -o docs/full_run`` for the full run, and ``all`` runs it after ``images``):

- dpfast's DPS at λ = 1 (posterior sampling), the step its search chose for λ = 1;
- dpfast's x̂0 guidance at λ = 0 (the deterministic end), the step chosen for it;
- deepinv's DPS at α = 1 (ancestral solver), the weight chosen for it — when deepinv is
  installed.

Draw 0 uses the run's own chain seeds (so it repeats the run's point, up to the rounding of
another batch make-up); draw k ≥ 1 starts image i's chain from ``seed + k·SPREAD_SEED + i``
(deepinv: one generator per block of images, from the block's first image). Per method
and draw it reports MSE, FD and unpaired FD, then their mean and sample standard deviation
over the draws. Chains are stored in pieces (:class:`~dpfast.experiments.pieces.PieceStore`)
under ``seed_spread.pieces/`` in the output folder, so a stopped run resumes.

Full: ``DRAWS`` draws of each method on the run's test images (256) and steps (100) —
~5–6 min per draw and method on a 2-core CPU. ``quick``: 4 images, 8 steps, 2 draws, whatever
the source's size, so its draw 0 repeats the source's points only when the source ran at that
size too (the images run's ``--quick``, as in ``all --quick``). The pieces stay in the output
folder after the run (a second run reads them back instead of recomputing); delete
``seed_spread.pieces/`` to recompute.
"""
from __future__ import annotations

import json
import statistics
import time
from dataclasses import replace
from pathlib import Path
from typing import Callable, Sequence

import torch

from dpfast.baselines.deepinv_dps import deepinv_available
from dpfast.experiments import common, images
from dpfast.experiments.image_tasks import dp_rows, traverse_task
from dpfast.experiments.pieces import PieceStore

NAME = "seed_spread"
DRAWS = 4
SPREAD_SEED = 1_000_000  # far from the run's own chain seeds (seed + i, averaging's seed + 10,000·d + i)
TASK_NAMES = ("denoise σn=0.1",)
QUICK_IMAGES, QUICK_STEPS, QUICK_DRAWS = 4, 8, 2
METRICS = ("mse", "fd", "fd_unpaired")


def run(out_dir, quick: bool = False, seed: int = 0, source=None, task_names: Sequence[str] = TASK_NAMES,
        draws: int | None = None, model=None) -> dict:
    """Rerun the single-chain points of a finished (or unfinished) images run in ``source``
    with ``draws`` seeds each, for every task in ``task_names``; write ``seed_spread.json``
    and a table into ``out_dir``; return the numbers.

    ``source``: the folder of the images run whose choices are used (default ``out_dir``).
    ``seed`` must be the seed that run used, and ``model`` (default: the built-in model) its
    weights where the source records them (an unfinished run's key does): both are checked.

    Example:
        >>> from dpfast.experiments import seed_spread
        >>> spread = seed_spread.run("docs/full_run")  # doctest: +SKIP
        >>> mse = spread["tasks"]["denoise σn=0.1"]["summary"]["dpfast DPS λ = 1"]["mse"]  # doctest: +SKIP
        >>> round(mse["mean"], 5), round(mse["std"], 5)  # the full run, 4 draws  # doctest: +SKIP
        (0.00283, 8e-05)
    """
    started = time.perf_counter()
    source_given = source is not None
    source = Path(out_dir if source is None else source)
    settings, tasks, source_key = _read_source(source, task_names)
    if source_key.get("seed", seed) != seed:
        raise ValueError(f"seed={seed}: the images run in {str(source)!r} used seed {source_key['seed']}; pass that seed")
    draws = draws if draws is not None else (QUICK_DRAWS if quick else DRAWS)
    if draws < 2:
        raise ValueError(f"draws must be >= 2 (a spread needs two draws), got {draws}")
    n_images, steps = (QUICK_IMAGES, QUICK_STEPS) if quick else (settings["images"], settings["steps"])
    if model is None:
        from dpfast.models.loading import load_builtin

        model = load_builtin()
    digest = images.weights_digest(model)
    if source_key.get("model_sha256", digest) != digest:
        raise ValueError(f"model: its weights (sha256 {digest[:12]}…) are not the ones the images run in {str(source)!r} "
                         f"used ({source_key['model_sha256'][:12]}…)")
    test, reference = images.held_out_images(n_images)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    key = {"images": n_images, "steps": steps, "seed": seed, "model_sha256": digest, "spread_seed": SPREAD_SEED}
    pieces = PieceStore(out_dir / f"{NAME}.pieces", key, log=lambda line: print(f"[{NAME}]   piece: {line}", flush=True))
    with_deepinv = deepinv_available()
    if not with_deepinv:
        print(f"[{NAME}] deepinv is not installed (pip install dpfast[bench]): its α = 1 is skipped", flush=True)
    methods_per_task = {name: _methods(model, images.TASKS_BY_NAME[name], entry, steps, with_deepinv)
                        for name, entry in tasks.items()}
    progress = common.Progress(NAME, sum(len(methods) for methods in methods_per_task.values()) * draws)
    results = {"source": str(source), "images": n_images, "steps": steps, "draws": draws, "spread_seed": SPREAD_SEED,
               "settings": {name: {label: setting for label, setting, _ in methods} for name, methods in methods_per_task.items()},
               "tasks": {}}
    for name, methods in methods_per_task.items():
        task = images.TASKS_BY_NAME[name]
        y = task.measure(test, seed=seed + images.TEST_SEED)
        task_rows = []
        for label, piece_name, restore in methods:
            restored = []
            for draw in range(draws):
                draw_seed = seed + draw * SPREAD_SEED
                restored.append(pieces.in_blocks(
                    f"{piece_name}, draw {draw}", n_images, settings["block_images"],
                    compute=lambda start, stop, draw_seed=draw_seed: restore(y[start:stop], draw_seed + start)))
                progress.step(f"{name}: {label}, draw {draw}")
            rows = dp_rows(test, torch.stack(restored), [float(draw) for draw in range(draws)], reference=reference)
            task_rows += [{"method": label, "draw": draw, **{metric: row[metric] for metric in METRICS}}
                          for draw, row in enumerate(rows)]
        results["tasks"][name] = {"rows": task_rows, "summary": _summary(task_rows)}
        common.print_table(f"{name}: {n_images} test images, {steps} steps, {draws} seeds per method",
                           ("method", "draw", "MSE", "FD", "FD unpaired"),
                           [(row["method"], row["draw"], *(row[metric] for metric in METRICS)) for row in task_rows])
        common.print_table(f"{name}: mean ± sample standard deviation over the {draws} draws",
                           ("method", "MSE", "FD", "FD unpaired"),
                           [(label, *(f"{summary[metric]['mean']:.4f} ± {summary[metric]['std']:.4f}" for metric in METRICS))
                            for label, summary in results["tasks"][name]["summary"].items()])
    default_draws = QUICK_DRAWS if quick else DRAWS
    # the command line gives the default draws, source (OUT) and task only: other choices are in the JSON, not the command
    command_line = draws == default_draws and not source_given and tuple(task_names) == TASK_NAMES
    results["meta"] = common.run_metadata(NAME, quick, seed, started, size_flag="" if command_line else None)
    common.write_json(out_dir / f"{NAME}.json", results)
    return results


def _read_source(source: Path, task_names: Sequence[str]) -> tuple[dict, dict, dict]:
    """The settings, the named tasks' entries and what identifies the run (``seed``, and
    ``model_sha256`` where recorded) of the images run in ``source``."""
    final, partial = source / f"{images.NAME}.json", source / f"{images.NAME}.partial.json"
    if final.exists():
        saved = json.loads(final.read_text())
        settings, run_key = saved["settings"], {"seed": saved["meta"]["seed"]}
    elif partial.exists():
        saved = json.loads(partial.read_text())
        settings, run_key = saved["key"]["settings"], saved["key"]
    else:
        raise FileNotFoundError(f"source={str(source)!r}: no images run there (neither {final.name} nor {partial.name})")
    unknown = [name for name in task_names if name not in images.TASKS_BY_NAME]
    if unknown or not task_names:
        raise ValueError(f"task_names must be a non-empty selection of {sorted(images.TASKS_BY_NAME)}, got {list(task_names)!r}")
    tasks = {}
    for name in task_names:
        entry = saved["tasks"].get(name, {})
        missing = [series for series in ("zeta", "x0_zeta") if series not in entry]
        if missing:
            raise ValueError(f"source={str(source)!r}: task {name!r} has not finished its {' and '.join(missing)} search(es)")
        for series, lam in (("zeta", 1.0), ("x0_zeta", 0.0)):
            if lam not in images.chosen_steps(entry[series]):
                raise ValueError(f"source={str(source)!r}: task {name!r} has no λ = {lam:g} in its {series} search "
                                 f"(λ searched: {sorted(images.chosen_steps(entry[series]))})")
        tasks[name] = entry
    return settings, tasks, {key: run_key[key] for key in ("seed", "model_sha256") if key in run_key}


def _methods(model, task, entry: dict, steps: int, with_deepinv: bool) -> list[tuple[str, str, Callable]]:
    """(label, setting — the step or weight, also the piece name —, restore(y, seed)) of each
    single-chain point rerun for one task."""
    lam_one = replace(task, zeta=images.chosen_steps(entry["zeta"])[1.0])
    x0_lam_zero = replace(task, guidance="x0", zeta=images.chosen_steps(entry["x0_zeta"])[0.0])
    methods = [
        ("dpfast DPS λ = 1", f"{task.name} DPS λ 1, {lam_one.zeta_text}",
         lambda y, seed: traverse_task(model, lam_one, y, [1.0], steps, seed=seed)[0]),
        ("dpfast x̂0 λ = 0", f"{task.name} x0 λ 0, {x0_lam_zero.zeta_text}",
         lambda y, seed: traverse_task(model, x0_lam_zero, y, [0.0], steps, seed=seed)[0]),
    ]
    alpha_one = [row for row in entry.get("deepinv", []) if row["alpha"] == 1.0]
    if with_deepinv and alpha_one:
        weight = alpha_one[0]["weight"]
        methods.append(("deepinv DPS α = 1", f"{task.name} deepinv α 1, weight {weight:g}",
                        lambda y, seed: images.deepinv_chain(model, task, y, steps, 1.0, weight, seed)))
    elif with_deepinv:
        print(f"[{NAME}] {task.name}: the source has no deepinv α = 1 point yet: deepinv is skipped", flush=True)
    return methods


def _summary(rows: list[dict]) -> dict:
    """Per method: the mean and sample standard deviation of each metric over its draws."""
    summary = {}
    for label in dict.fromkeys(row["method"] for row in rows):
        values = {metric: [row[metric] for row in rows if row["method"] == label] for metric in METRICS}
        summary[label] = {metric: {"mean": statistics.fmean(column), "std": statistics.stdev(column)}
                          for metric, column in values.items()}
    return summary
