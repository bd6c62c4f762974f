"""Images: the λ knob on held-out Fashion-MNIST test images with the built-in model.

Tasks: denoising with σ_n ∈ {0.1, 0.3, 0.5}, Gaussian blur 61/3.0 and ×4 bicubic
super-resolution with σ_n = 0.05. Per task:

1. the DPS step size per λ, found by a small search on Fashion-MNIST *training* images
   (:func:`~dpfast.experiments.image_tasks.step_size_errors` and ``best_step_sizes``: the lowest MSE at each λ
   over the β-scaled step of :func:`~dpfast.guidance.beta_scaled_zeta` at multiples of the
   task's natural scale √m/σ_n, and a few constant ζ — the constant step won on the
   61/3 blur in the demo's search), so the held-out images choose nothing;
2. the λ sweep on the test images in one batched traversal per task;
   then both again with x̂0 guidance (``guidance="x0"``, no VJP through the network; its own
   search over the same grid and two weaker steps, the same training images and seeds), which
   the demo uses since it made
   λ = 0 the low-MSE end there (docs/RESULTS.md §4, "x̂0 guidance");
3. baselines with the same network, guidance and step count: the mean of N λ = 1 (DPS)
   samples, the PSCGAN-N way of moving toward the MMSE end, and DDIM-η with the same DPS
   correction (:func:`~dpfast.experiments.pinwheel.ddim_dps_sample`), its step size
   chosen per η by the same search on the same training images (η = 1 is the λ = 1 chain);
4. when deepinv is installed (``dpfast[bench]``), deepinv's own DPS driving the same
   network with its ``alpha`` knob (ancestral solver: α = 0 is DDIM, α = 1 DDPM; every
   state stays at its timestep's noise level, unlike dpfast's λ), its ``weight`` per α
   searched on the same training images;
5. per point: MSE, PSNR, SSIM against the truth and FD (the shipped feature network)
   between the restored and the clean test set — the very images restored, so FD falls
   with distortion as well — and ``fd_unpaired``, the FD to as many *other* clean test
   images (the next ones of the split), whose floor is ``fd_floor``, the FD between the
   two clean sets.

``FULL`` (256 test images, 100 steps) is sized for a GPU (``--device cuda``;
``bench/gpu_check.sh`` section ``images_full``): on a 2-core CPU it is ~20 hours of work
(~2.9 M image-steps at ~25 ms each, plus ~1 M forward-only ones for the x̂0-guidance
phases), so it runs there over several sessions. ``MEDIUM``
(32 images, 50 steps; ``--medium``) took 23–24 min per task on an idle 2-core CPU, about
2 h in all; ``QUICK`` is the tests' version.

The run goes phase by phase over the tasks — every task's search and λ sweep, then the
same with x̂0 guidance, then every task's averaging and DDIM baselines, then deepinv's — so a
run spread over sessions has the method's own numbers for all tasks first. Each of those
seven is a phase of its own
(the longest, a task's averaging draws, ~1.5 h on the 2-core CPU), written to the partial
file as soon as it finishes: a run that is stopped, its machine gone, resumes from that
file alone (docs/RESULTS.md §4: the full run's file is committed after each session).

Resuming: every chain is cut into pieces of a few minutes — one step-size choice of a
search, one block of ``block_images`` test images of a sweep, a DPS draw or a DDIM/deepinv
run (image i keeps its seed in any block) — stored under ``images.pieces/`` as soon as each
is done (:class:`~dpfast.experiments.pieces.PieceStore`), named by what fixes its result (task,
guidance, the step it ran with), and ``images.partial.json`` holds
every finished phase's numbers. Started again with the same settings, seed and weights, a
run reads both back and computes only the rest: a killed run loses at most the piece it
was in. A task's ``seconds`` (search, sweep and baselines) and ``deepinv_seconds`` add the
compute time of pieces read back (each stores what it cost), so they are the task's cost
over all the runs that did it. :func:`status` (``dpfast reproduce images --status -o OUT``)
prints how far a run got without computing anything.

Outputs: ``images.json`` and ``images_dp_curve.png`` (MSE against FD per task, with the
baselines).
"""
from __future__ import annotations

import hashlib
import json
import math
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch

from dpfast import metrics
from dpfast.baselines.deepinv_dps import deepinv_available
from dpfast.experiments import common, frontier
from dpfast.experiments.image_tasks import ImageTask, best_step_sizes, dp_rows, step_size_errors, traverse_task
from dpfast.experiments.pieces import PieceStore
from dpfast.experiments.pinwheel import ddim_dps_sample

NAME = "images"
SEARCH_PHASES = ("zeta", "x0_zeta")  # phases whose numbers are step-size choices, not a table
TASKS = (
    ImageTask("denoise", 0.1, 1.0),
    ImageTask("denoise", 0.3, 1.0),
    ImageTask("denoise", 0.5, 1.0),
    ImageTask("deblur", 0.05, 1.0),
    ImageTask("sr4", 0.05, 1.0),
)
TASKS_BY_NAME = {task.name: task for task in TASKS}
TEST_SEED, SEARCH_SEED, AVERAGE_SEED = 0, 100, 10_000
# x̂0 guidance searches the settings' grid and two weaker β-scaled steps below it (in units of
# the natural scale √m/σ_n): its gradient lacks the network's Jacobian, and on the full run's
# first task (denoising σ_n 0.1) it chose the grid's weakest c (0.25×) at every λ.
X0_WEAKER_FACTORS = (0.0625, 0.125)


@dataclass(frozen=True)
class Settings:
    images: int  # held-out test images (the first ones of the test split)
    steps: int
    lams: tuple[float, ...]
    zeta_factors: tuple[float, ...]  # the search grid of c, in units of the task's natural scale √m/σ_n
    constant_zetas: tuple[float, ...]  # constant ζ values searched alongside
    search_images: int  # training images for the ζ search
    average_counts: tuple[int, ...]  # N of the averaging baseline
    etas: tuple[float, ...]
    deepinv_alphas: tuple[float, ...]  # deepinv's DPS noise weight α (none, or deepinv missing: skipped)
    deepinv_weights: tuple[float, ...]  # its search grid of deepinv's guidance weight
    tasks: tuple[ImageTask, ...] = TASKS
    block_images: int = 64  # test images per stored piece of a chain (what a resumed run reads back)


FULL = Settings(images=256, steps=100, lams=(0.0, 0.25, 0.5, 0.75, 1.0), zeta_factors=(0.25, 0.5, 1.0, 2.0, 4.0, 8.0),
                constant_zetas=(0.3, 1.0, 3.0, 10.0), search_images=16, average_counts=(1, 2, 4, 8), etas=(0.0, 0.5, 1.0),
                deepinv_alphas=(0.0, 0.5, 1.0), deepinv_weights=(1.0, 3.0, 10.0, 30.0, 100.0, 300.0, 1000.0))
# The medium run's deepinv grid stays the one its published numbers used (docs/RESULTS.md §4,
# where both edges were hit: hence FULL's wider grid).
MEDIUM = replace(FULL, images=32, steps=50, search_images=8, deepinv_weights=(3.0, 10.0, 30.0, 100.0, 300.0))
QUICK = Settings(images=4, steps=8, lams=(0.0, 1.0), zeta_factors=(1.0, 4.0), constant_zetas=(0.3,), search_images=2, average_counts=(1, 2),
                 etas=(0.0,), deepinv_alphas=(1.0,), deepinv_weights=(3.0, 30.0), tasks=(TASKS[0],))


def run(out_dir, quick: bool = False, seed: int = 0, model=None, settings: Settings | None = None,
        device: str | torch.device | None = None) -> dict:
    """Run every task's λ sweep and baselines; write ``images.json`` and the DP figure; return the numbers.

    ``settings`` overrides ``quick`` (``FULL``, ``MEDIUM`` or your own); ``model`` defaults
    to the built-in model. ``device`` (default: the CPU) is where the network (moved there,
    in place) and every chain run; the metrics are computed on the CPU. A run resumes a partial file written on
    another device (the weights, settings and seed must match).
    """
    from dpfast.data import load_fashion_mnist

    started = time.perf_counter()
    settings = settings or (QUICK if quick else FULL)
    device = torch.device(device if device is not None else "cpu")
    if model is None:
        from dpfast.models.loading import load_builtin

        model = load_builtin()
    model = model.to(device)
    test, reference = held_out_images(settings.images)
    train, _ = load_fashion_mnist("train", limit=settings.search_images)
    test, train = test.to(device), train.to(device)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    with_deepinv = _runs_deepinv(settings.deepinv_alphas)
    if settings.deepinv_alphas and not with_deepinv:
        print(f"[{NAME}] deepinv is not installed (pip install dpfast[bench]): its α baseline is skipped", flush=True)
    progress = common.Progress(NAME, len(settings.tasks) * _phases_per_task(with_deepinv))  # one unit per phase
    results = {"tasks": {}, "settings": _settings_dict(settings), "fd_floor": metrics.fd(test.cpu(), reference)}
    partial_path = out_dir / f"{NAME}.partial.json"
    run_key = {"settings": results["settings"], "seed": seed, "model_sha256": weights_digest(model)}
    results["tasks"] = _resume(partial_path, run_key)
    pieces = PieceStore(out_dir / f"{NAME}.pieces", run_key, device, log=lambda line: print(f"[{NAME}]   piece: {line}", flush=True))
    # Groups of phases, each group task by task (a CPU run spread over sessions has every task's
    # λ sweep first); per phase: the key its numbers go under, what it is, the key of its seconds,
    # the work. Every finished phase is written to the partial file at once, so a run stopped
    # anywhere loses at most the phase it was in (less what its stored pieces keep).
    groups = [[("zeta", "step-size search", "seconds",
                lambda task, entry: _search(model, task, train, settings, seed, progress, pieces)),
               ("lam_sweep", "λ sweep", "seconds",
                lambda task, entry: _lam_sweep(model, task, entry, test, settings, seed, progress, pieces, reference))],
              [("x0_zeta", "x̂0-guidance step-size search", "seconds",
                lambda task, entry: _x0_search(model, task, train, settings, seed, progress, pieces)),
               ("x0_lam_sweep", "λ sweep with x̂0 guidance", "seconds",
                lambda task, entry: _x0_lam_sweep(model, task, entry, test, settings, seed, progress, pieces, reference))],
              [("averaging", "averaging baseline", "seconds",
                lambda task, entry: _averaging(model, task, entry, test, settings, seed, progress, pieces, reference)),
               ("ddim", "DDIM-η baseline", "seconds",
                lambda task, entry: _ddim(model, task, test, train, settings, seed, progress, pieces, reference))]]
    if with_deepinv:
        groups.append([("deepinv", "deepinv DPS α baseline", "deepinv_seconds", lambda task, entry: {
            "deepinv": _deepinv_series(model, task, test, train, settings, seed, progress, pieces, reference)})])
    for group in groups:
        for task in settings.tasks:
            for series, label, seconds_key, compute in group:
                entry = results["tasks"].setdefault(task.name, {})
                if series in entry:
                    progress.skip(1, f"{task.name}: {label} read back from {partial_path.name}")
                    continue
                started_phase, read_back = time.perf_counter(), pieces.read_back_seconds
                computed = compute(task, entry)
                entry.update(computed)
                # this run's time plus what the pieces it read back cost the runs that computed them
                seconds = time.perf_counter() - started_phase + pieces.read_back_seconds - read_back
                entry[seconds_key] = entry.get(seconds_key, 0.0) + seconds
                # a run spread over sessions may change machines: each phase says where it ran
                entry.setdefault("phases", {})[series] = {
                    "finished": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "device": common.device_description(device),
                    "torch": torch.__version__, "seconds": round(seconds, 1)}
                common.write_json(partial_path, {"key": run_key, "tasks": results["tasks"]})
                if series not in SEARCH_PHASES:
                    _print_rows(f"{task.name}: {label} ({settings.images} test images, {settings.steps} steps, {seconds:.0f} s)",
                                {series: entry[series]})
    _plot(results, out_dir / f"{NAME}_dp_curve.png")
    results["figures"] = [f"{NAME}_dp_curve.png"]
    size_flag = {"quick": "", "full": "", "medium": "--medium"}.get(_size_name(settings))
    results["meta"] = common.run_metadata(NAME, settings == QUICK, seed, started, size_flag, device)
    common.write_json(out_dir / f"{NAME}.json", results)
    partial_path.unlink(missing_ok=True)
    pieces.remove()
    for name, task_results in results["tasks"].items():
        _print_rows(f"{name}: {settings.images} test images, {settings.steps} steps", task_results)
        _print_frontier(f"{name}: which points another beats", task_results)
    _print_frontier_summary(results["tasks"])
    return results


def held_out_images(images: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The first ``images`` Fashion-MNIST test images (the ones restored), then the next
    ``images`` (the unpaired FD's reference): two ``(images, 1, 32, 32)`` float32 CPU tensors in
    [-1, 1]. Needs the dataset (:func:`dpfast.data.load_fashion_mnist`).

    Example:
        >>> test, reference = held_out_images(256)  # doctest: +SKIP
    """
    from dpfast.data import load_fashion_mnist

    test, _ = load_fashion_mnist("test", limit=2 * images)
    return test[:images], test[images:]


def status(out_dir, markdown: bool = False, plot: bool = False) -> dict:
    """What an images run in ``out_dir`` has finished, printed and returned; computes nothing.

    For an interrupted run: each task's finished phases (and their tables), how many of the
    run's phases are finished (``finished_phases`` of ``phases``), and the pieces
    stored so far (they stay until the run ends) against the number the whole run computes
    (``expected``, counting deepinv's when it is installed here), with the wall seconds
    they took. A finished run's ``images.json`` is summarised instead. ``markdown``: the
    tables in Markdown. ``plot``: an interrupted run's finished series are also drawn, as the
    finished run's figure would draw them, into ``images_dp_curve.partial.png`` in ``out_dir``
    (its path under ``"figure"``; a finished run has its figure already). Returns
    ``{"state": "none" | "started" | "partial" | "finished", ...}`` ("started": pieces stored, no
    phase finished yet).
    """
    out_dir = Path(out_dir)
    final, partial_path = out_dir / f"{NAME}.json", out_dir / f"{NAME}.partial.json"
    if final.exists():
        results = json.loads(final.read_text())
        print(f"[{NAME}] finished run in {out_dir} ({final.name}):", flush=True)
        for name, task_results in results["tasks"].items():
            _print_rows(name, task_results, markdown)
            _print_frontier(f"{name}: which points another beats", task_results, markdown)
        _print_frontier_summary(results["tasks"], markdown)
        if plot:
            print(f"[{NAME}] its figure: {out_dir / results['figures'][0]}", flush=True)
        return {"state": "finished", "tasks": results["tasks"]}
    if not partial_path.exists():
        early_pieces = sorted((out_dir / f"{NAME}.pieces").glob("*/*.pt"))
        if early_pieces:  # the partial file is written when the first phase ends
            print(f"[{NAME}] a run in {out_dir} has stored {len(early_pieces)} piece(s) but finished no phase yet "
                  f"(no {partial_path.name})", flush=True)
            return {"state": "started", "stored_pieces": len(early_pieces)}
        print(f"[{NAME}] no images run in {out_dir}: neither {final.name} nor {partial_path.name} is there", flush=True)
        return {"state": "none"}
    saved = json.loads(partial_path.read_text())
    key, tasks = saved["key"], saved["tasks"]
    settings = key["settings"]
    stored = PieceStore(out_dir / f"{NAME}.pieces", key).stored()
    counts_deepinv = _runs_deepinv(settings["deepinv_alphas"])
    expected = _expected_pieces(settings, counts_deepinv)
    series_names = {"zeta": "step-size search", "lam_sweep": "λ sweep", "x0_zeta": "x̂0 step-size search",
                    "x0_lam_sweep": "x̂0 λ sweep", "averaging": "averaging", "ddim": "DDIM-η", "deepinv": "deepinv"}
    print(f"[{NAME}] interrupted run in {out_dir}: {settings['images']} test images, {settings['steps']} steps, "
          f"seed {key['seed']}", flush=True)
    for name in settings["tasks"]:
        done = [label for series, label in series_names.items() if series in tasks.get(name, {})]
        print(f"[{NAME}]   {name}: {', '.join(done) if done else 'nothing finished'}", flush=True)
        for series, phase in tasks.get(name, {}).get("phases", {}).items():  # where each ran (runs before 2026-11-29 kept none)
            print(f"[{NAME}]     {series_names[series]}: {phase['finished']}, {phase['seconds']:.0f} s, {phase['device']}, "
                  f"torch {phase['torch']}", flush=True)
    phases_done = sum(series in tasks.get(name, {}) for name in settings["tasks"] for series in series_names)
    phases_all = len(settings["tasks"]) * _phases_per_task(counts_deepinv)
    not_counted = " (deepinv is not installed here: its phases are not counted)" if settings["deepinv_alphas"] and not counts_deepinv else ""
    print(f"[{NAME}] phases finished: {phases_done} of {phases_all}{not_counted}", flush=True)
    print(f"[{NAME}] pieces stored: {len(stored)} of the {expected} the whole run computes "
          f"({sum(stored.values()) / 3600:.1f} h, the wall time they took)", flush=True)
    for name, task_results in tasks.items():
        _print_rows(f"{name}: finished so far", task_results, markdown)
        _print_frontier(f"{name}: which finished points another beats", task_results, markdown)
    _print_frontier_summary(tasks, markdown)
    answer = {"state": "partial", "tasks": tasks, "stored_pieces": len(stored), "stored_seconds": sum(stored.values()),
              "expected_pieces": expected, "finished_phases": phases_done, "phases": phases_all}
    if plot:
        drawn = {name: task_results for name, task_results in tasks.items() if any(key in task_results for key, *_ in SERIES)}
        if drawn:
            test, reference = held_out_images(settings["images"])
            answer["figure"] = _plot({"tasks": drawn, "fd_floor": metrics.fd(test, reference)},
                                     out_dir / f"{NAME}_dp_curve.partial.png")
            print(f"[{NAME}] the finished series of {len(drawn)} task(s) drawn in {answer['figure']}", flush=True)
        else:
            print(f"[{NAME}] nothing to draw yet: no task has finished its λ sweep", flush=True)
    return answer


def _runs_deepinv(deepinv_alphas) -> bool:
    """Whether a run with these α values computes deepinv's phases here (it needs deepinv installed)."""
    return bool(deepinv_alphas) and deepinv_available()


def _phases_per_task(with_deepinv: bool) -> int:
    """search, λ sweep, both again with x̂0 guidance, averaging, DDIM-η, and deepinv's α series when it runs."""
    return 7 if with_deepinv else 6


def _expected_pieces(settings: dict, with_deepinv: bool) -> int:
    """How many pieces a whole run with these settings (as stored in its key) computes."""
    blocks = math.ceil(settings["images"] / settings["block_images"])
    extra_draws = max(settings["average_counts"]) - (1 if max(settings["lams"]) == 1.0 else 0)
    choices = len(settings["zeta_factors"]) + len(settings["constant_zetas"])  # one search piece each
    per_task = (2 * (choices + blocks) + len(X0_WEAKER_FACTORS)  # search and sweep, with DPS and with x̂0 guidance
                + extra_draws * blocks  # averaging
                + choices + len(settings["etas"]) * blocks)  # DDIM's own search, its blocks
    if with_deepinv:
        per_task += len(settings["deepinv_alphas"]) * (len(settings["deepinv_weights"]) + blocks)
    return per_task * len(settings["tasks"])


def _print_rows(title: str, task_results: dict, markdown: bool = False) -> None:
    """The table of whichever series ``task_results`` holds (a finished phase, or the whole task);
    with only a search finished, its choice per λ."""
    for search, sweep, which in (("zeta", "lam_sweep", "search"), ("x0_zeta", "x0_lam_sweep", "x̂0-guidance search")):
        if search in task_results and sweep not in task_results:
            chosen = replace(TASKS[0], zeta=chosen_steps(task_results[search])).zeta_text
            print(f"[{NAME}] {title}: the {which} chose {chosen}", flush=True)
    rows = _labelled_rows(task_results)
    if not rows:
        return
    common.print_table(title, ("method", "MSE", "PSNR", "SSIM", "FD", "FD unpaired"),
                       [(label, row["mse"], row["psnr"], row["ssim"], row["fd"], row.get("fd_unpaired", "-"))
                        for label, _, row in rows], markdown=markdown)


def _step_text(row: dict) -> str:
    return f"{'c' if row['zeta'][0] == 'beta' else 'ζ'} {row['zeta'][1]:g}"


def _labelled_rows(task_results: dict) -> list[tuple[str, str, dict]]:
    """Every finished point of a task as (label, short label, row), in the tables' order."""
    rows = [(f"λ = {row['lam']:g} ({_step_text(row)})", f"DPS λ {row['lam']:g}", row)
            for row in task_results.get("lam_sweep", [])]
    rows += [(f"λ = {row['lam']:g}, x̂0 guidance ({_step_text(row)})", f"x̂0 λ {row['lam']:g}", row)
             for row in task_results.get("x0_lam_sweep", [])]
    rows += [(f"mean of {row['samples']} DPS samples", f"mean of {row['samples']}", row)
             for row in task_results.get("averaging", [])]
    rows += [(f"DDIM η = {row['eta']:g}" + (f" ({_step_text(row)})" if "zeta" in row else ""), f"DDIM η {row['eta']:g}", row)
             for row in task_results.get("ddim", [])]
    rows += [(f"deepinv DPS α = {row['alpha']:g} (weight {row['weight']:g})", f"deepinv α {row['alpha']:g}", row)
             for row in task_results.get("deepinv", [])]
    return rows


FRONTIERS = {"fd": "(MSE, FD)", "fd_unpaired": "(MSE, FD unpaired)", "fd_one_chain": "(MSE, FD), one chain each"}


def _frontier_points(task_results: dict) -> tuple[list[tuple[str, dict]], dict[str, dict[str, list[str]]]]:
    """A task's points as (short label, row) and, per :data:`FRONTIERS` key, which points beat
    each (:func:`~dpfast.experiments.frontier.dominated_by`): in (MSE, FD), in (MSE, unpaired FD),
    and in (MSE, FD) among the methods that cost one chain per image (all but the means of
    N > 1 samples). Two repeats of the λ sweep's λ = 1 chain are left out, so that
    rounding-level differences between copies of one chain do not decide who is on the
    frontier: the mean of one DPS sample, and DDIM η = 1 when it chose λ = 1's step (it is
    then the same chain, batched differently or run elsewhere). Fewer than two points: no maps."""
    lam_one_step = next((row["zeta"] for row in task_results.get("lam_sweep", []) if row["lam"] == 1.0), None)

    def repeats_lam_one(short: str, row: dict) -> bool:  # a sweep without λ = 1 repeats nothing
        return lam_one_step is not None and (short == "mean of 1" or (short == "DDIM η 1" and row.get("zeta") == lam_one_step))

    points = [(short, row) for _, short, row in _labelled_rows(task_results) if not repeats_lam_one(short, row)]
    if len(points) < 2:
        return points, {}
    one_chain = [(short, row) for short, row in points if row.get("samples", 1) == 1]
    # a diverged point (NaN, stored as null) has no place on a frontier: left out, shown as "-"
    beaten = {name: frontier.dominated_by([(short, row["mse"], row[fd_key]) for short, row in chosen
                                           if _finite(row.get("mse")) and _finite(row.get(fd_key))])
              for name, fd_key, chosen in (("fd", "fd", points), ("fd_unpaired", "fd_unpaired", points),
                                           ("fd_one_chain", "fd", one_chain))}
    return points, beaten


def _finite(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def _print_frontier(title: str, task_results: dict, markdown: bool = False) -> dict[str, dict[str, list[str]]]:
    """:func:`_frontier_points` as a table: for each beaten point the frontier points that beat
    it (every beaten point has one). Returns the maps; nothing is printed for fewer than two points."""
    points, beaten = _frontier_points(task_results)
    if not beaten:
        return {}

    def verdict(name: str, short: str) -> str:
        if short not in beaten[name]:
            return "-"
        by_frontier = [other for other in beaten[name][short] if not beaten[name][other]]
        return f"beaten by {', '.join(by_frontier)}" if by_frontier else "frontier"

    common.print_table(title, ("method", "MSE", "FD", "FD unpaired", *FRONTIERS.values()),
                       [(short, row["mse"], row["fd"], row.get("fd_unpaired", "-"), *(verdict(name, short) for name in FRONTIERS))
                        for short, row in points], markdown=markdown)
    return beaten


def _print_frontier_summary(tasks: dict, markdown: bool = False) -> None:
    """One line per task: the points on each frontier of :func:`_frontier_points`."""
    rows = []
    for name, task_results in tasks.items():
        _, beaten = _frontier_points(task_results)
        if beaten:
            rows.append((name, *(", ".join(short for short, by in beaten[key].items() if not by) for key in FRONTIERS)))
    if rows:
        common.print_table("the frontiers: points no other point beats on both axes", ("task", *FRONTIERS.values()), rows,
                           markdown=markdown)


def _search(model, task: ImageTask, train, settings: Settings, seed: int, progress, pieces: PieceStore,
            weaker_factors: tuple[float, ...] = ()) -> dict:
    """The step size per λ: the lowest MSE on the training images over the task's grid (with
    β-scaled steps at ``weaker_factors`` × the natural scale in front).

    Returns the choice per λ (``zeta``) and every choice's MSE per λ (``search``)."""
    natural = task.natural_scale(model.image_shape)
    choices = [("beta", factor * natural) for factor in weaker_factors] + _step_choices(model, task, settings)
    errors = step_size_errors(model, task, train, settings.lams, choices, settings.steps,
                              seed=seed + SEARCH_SEED, log=lambda line: None, pieces=pieces)
    zeta_of_lam = best_step_sizes(errors, settings.lams)
    progress.step(f"{task.name}: step-size search on {train.shape[0]} training images -> "
                  f"{replace(task, zeta=zeta_of_lam).zeta_text}")
    return {"zeta": {str(lam): list(zeta) for lam, zeta in zeta_of_lam.items()},
            "search": [{"zeta": list(choice), "mse": mse} for choice, mse in errors.items()]}


def _step_choices(model, task: ImageTask, settings: Settings) -> list[tuple[str, float]]:
    """The step-size grid every search draws from: β-scaled steps at multiples of the task's
    natural scale, then constant ones."""
    natural = task.natural_scale(model.image_shape)
    return ([("beta", factor * natural) for factor in settings.zeta_factors]
            + [("constant", zeta) for zeta in settings.constant_zetas])


def _lam_sweep(model, task: ImageTask, entry: dict, test, settings: Settings, seed: int, progress, pieces: PieceStore,
               reference) -> dict:
    """The λ sweep on the test images with the step sizes ``entry``'s search chose."""
    zeta_of_lam = chosen_steps(entry["zeta"])
    restored = _sweep_restorations(model, replace(task, zeta=zeta_of_lam), test, settings, seed, pieces)
    lam_sweep = [dict(row, zeta=list(zeta_of_lam[row["lam"]]))
                 for row in dp_rows(test, restored, settings.lams, reference=reference)]
    progress.step(f"{task.name}: λ sweep")
    return {"lam_sweep": lam_sweep}


def chosen_steps(stored: dict) -> dict[float, tuple[str, float]]:
    """λ → (schedule, value) from a search's choices as stored (a task entry's ``zeta`` or
    ``x0_zeta``: JSON keys are strings, pairs are lists), ready for :class:`ImageTask`'s ``zeta``.

    Example:
        >>> chosen_steps({"0.0": ["beta", 80.0], "1.0": ["constant", 3.0]})
        {0.0: ('beta', 80.0), 1.0: ('constant', 3.0)}
    """
    return {float(lam): tuple(choice) for lam, choice in stored.items()}


def _x0_search(model, task: ImageTask, train, settings: Settings, seed: int, progress, pieces: PieceStore) -> dict:
    """:func:`_search` with x̂0 guidance (the same grid with :data:`X0_WEAKER_FACTORS` in front, the same
    training images and seeds): ``x0_zeta``, ``x0_search``."""
    found = _search(model, replace(task, guidance="x0"), train, settings, seed, progress, pieces, X0_WEAKER_FACTORS)
    return {"x0_zeta": found["zeta"], "x0_search": found["search"]}


def _x0_lam_sweep(model, task: ImageTask, entry: dict, test, settings: Settings, seed: int, progress, pieces: PieceStore,
                  reference) -> dict:
    """:func:`_lam_sweep` with x̂0 guidance and the step sizes its own search chose: ``x0_lam_sweep``."""
    swept = _lam_sweep(model, replace(task, guidance="x0"), {"zeta": entry["x0_zeta"]}, test, settings, seed, progress,
                       pieces, reference)
    return {"x0_lam_sweep": swept["lam_sweep"]}


def _sweep_restorations(model, tuned: ImageTask, test, settings: Settings, seed: int, pieces: PieceStore) -> torch.Tensor:
    """``(L, N, ...)``: the test images restored at every λ, a block of images per piece."""
    y = tuned.measure(test, seed=seed + TEST_SEED)
    # image i keeps its seed (seed + i) whichever block it is restored in
    return pieces.in_blocks(_sweep_piece_name(tuned), test.shape[0], settings.block_images, dim=1,
                            compute=lambda start, stop: traverse_task(model, tuned, y[start:stop], settings.lams,
                                                                      settings.steps, seed=seed + start))


def _sweep_piece_name(tuned: ImageTask) -> str:
    """The sweep's piece name: the task, its guidance and the step chosen per λ, so a sweep
    stored before a search chose differently (its grid changed) is never read back as this one
    (steps are written with 6 significant digits: choices closer than that share a name)."""
    return f"{tuned.name} sweep, {tuned.zeta_text}"


def _averaging(model, task: ImageTask, entry: dict, test, settings: Settings, seed: int, progress, pieces: PieceStore,
               reference) -> dict:
    """The mean of N DPS (λ = 1) samples, with the step size ``entry``'s search chose for λ = 1.

    The first draw is the λ sweep's λ = 1 chain (draw d uses seeds ``seed + AVERAGE_SEED·d + i``):
    read back from the sweep's pieces, or — where they are gone (a run resumed on another
    machine) — run again alone, the same chain up to the rounding of another batch make-up,
    at a fifth of the sweep's cost. ``averaging_first_draw`` says which."""
    zeta_of_lam = chosen_steps(entry["zeta"])
    y = task.measure(test, seed=seed + TEST_SEED)
    n_images, block = test.shape[0], settings.block_images
    zeta_one = zeta_of_lam[max(settings.lams)]
    tuned = replace(task, zeta=zeta_of_lam)
    draws, first_draw = [], "none: the sweep has no λ = 1"
    if max(settings.lams) == 1.0 and pieces.has_blocks(_sweep_piece_name(tuned), n_images, block):
        lam_one = list(settings.lams).index(1.0)
        draws, first_draw = [_sweep_restorations(model, tuned, test, settings, seed, pieces)[lam_one]], "the λ sweep's λ = 1 pieces"
    elif max(settings.lams) == 1.0:
        first_draw = "run again: the λ sweep's pieces were gone"
    while len(draws) < max(settings.average_counts):
        draw_seed = seed + AVERAGE_SEED * len(draws)
        draws.append(pieces.in_blocks(f"{task.name} DPS draw {len(draws)}, {task.choice_text(zeta_one)}", n_images, block, compute=lambda start, stop, draw_seed=draw_seed:
                                      traverse_task(model, replace(task, zeta=zeta_one), y[start:stop], [1.0], settings.steps,
                                                    seed=draw_seed + start)[0]))
    means = torch.stack([torch.stack(draws[:count]).mean(0) for count in settings.average_counts])
    averaging = [dict(row, samples=count) for row, count in
                 zip(dp_rows(test, means, settings.average_counts, reference=reference), settings.average_counts)]
    progress.step(f"{task.name}: averaging baseline (first draw: {first_draw})")
    return {"averaging": averaging, "averaging_first_draw": first_draw}


def _ddim(model, task: ImageTask, test, train, settings: Settings, seed: int, progress, pieces: PieceStore,
          reference) -> dict:
    """DDIM-η with the DPS correction, its step size chosen per η as the λ sweep's is per λ: the
    lowest MSE on the same training images (same measurements and chain seeds) over the same
    grid. η = 1 is the λ = 1 chain, so there it chooses what λ = 1 chose, up to rounding.

    Returns the rows (``ddim``, each with its ``zeta``) and every choice's training MSE per η
    (``ddim_search``)."""
    y_train = task.measure(train, seed=seed + SEARCH_SEED)
    train_seeds = [seed + SEARCH_SEED + index for index in range(train.shape[0])]
    errors = {}
    for choice in _step_choices(model, task, settings):
        zetas = task.step_sizes(model, settings.steps, choice)
        restored = pieces.get(f"{task.name} DDIM search {task.choice_text(choice)}", lambda zetas=zetas: torch.stack([
            ddim_dps_sample(model, task.operator(), y_train, eta, zetas, settings.steps, train_seeds) for eta in settings.etas]))
        errors[choice] = [float(metrics.mse(etas_restored, train).mean()) for etas_restored in restored]
    chosen = best_step_sizes(errors, settings.etas)
    y = task.measure(test, seed=seed + TEST_SEED)
    n_images, block = test.shape[0], settings.block_images
    seeds = [seed + index for index in range(n_images)]

    chosen_zetas = {eta: task.step_sizes(model, settings.steps, chosen[eta]) for eta in settings.etas}

    def restore(eta: float, start: int, stop: int) -> torch.Tensor:
        return ddim_dps_sample(model, task.operator(), y[start:stop], eta, chosen_zetas[eta], settings.steps, seeds[start:stop])

    ddim = torch.stack([pieces.in_blocks(f"{task.name} DDIM eta {eta:g} {task.choice_text(chosen[eta])}", n_images, block,
                                         compute=lambda start, stop, eta=eta: restore(eta, start, stop))
                        for eta in settings.etas])
    ddim_rows = [dict(row, eta=eta, zeta=list(chosen[eta]))
                 for row, eta in zip(dp_rows(test, ddim, settings.etas, reference=reference), settings.etas)]
    progress.step(f"{task.name}: DDIM-η baseline (steps chosen per η: "
                  + ", ".join(f"η {eta:g}: {task.choice_text(chosen[eta])}" for eta in settings.etas) + ")")
    return {"ddim": ddim_rows, "ddim_search": [{"zeta": list(choice), "mse": mse} for choice, mse in errors.items()]}


def deepinv_chain(model, task: ImageTask, y: torch.Tensor, steps: int, alpha: float, weight: float, seed: int) -> torch.Tensor:
    """deepinv's DPS on ``y`` as the images run's baseline runs it: the ancestral solver with
    ``alpha``, guidance ``weight``, float32, one generator from ``seed``
    (:func:`~dpfast.baselines.deepinv_dps.deepinv_restoration`); the restoration in ``y``'s dtype.

    Example:
        >>> restored = deepinv_chain(model, TASKS[0], y, 100, alpha=1.0, weight=300.0, seed=0)  # doctest: +SKIP
    """
    from dpfast.baselines.deepinv_dps import deepinv_restoration

    return deepinv_restoration(model, task.operator(), y, steps, torch.float32, weight=weight, solver="ancestral",
                               alpha=alpha, seed=seed)().to(y.dtype)


def _deepinv_series(model, task: ImageTask, test, train, settings: Settings, seed: int, progress,
                    pieces: PieceStore, reference) -> list[dict]:
    """deepinv's DPS at each α, its weight the lowest training-image MSE of the grid."""

    def restore(y, alpha, weight, run_seed):
        return deepinv_chain(model, task, y, settings.steps, alpha, weight, run_seed)

    y_train = task.measure(train, seed=seed + SEARCH_SEED)
    y_test = task.measure(test, seed=seed + TEST_SEED)
    restored, weights = [], []
    for alpha in settings.deepinv_alphas:
        errors = {}
        for weight in settings.deepinv_weights:
            trained = pieces.get(f"{task.name} deepinv alpha {alpha:g} search weight {weight:g}",
                                 lambda weight=weight: restore(y_train, alpha, weight, seed + SEARCH_SEED))
            errors[weight] = float(metrics.mse(trained, train).mean())
        weights.append(min(errors, key=lambda weight: errors[weight] if math.isfinite(errors[weight]) else math.inf))
        # deepinv draws one generator per call: a block's noise comes from seed + its first image
        restored.append(pieces.in_blocks(f"{task.name} deepinv alpha {alpha:g} weight {weights[-1]:g}", test.shape[0], settings.block_images,
                                         compute=lambda start, stop, alpha=alpha: restore(
                                             y_test[start:stop], alpha, weights[-1], seed + start)))
    rows = [dict(row, alpha=alpha, weight=weight) for row, alpha, weight in
            zip(dp_rows(test, torch.stack(restored), settings.deepinv_alphas, reference=reference), settings.deepinv_alphas,
                weights)]
    progress.step(f"{task.name}: deepinv DPS α baseline (weights {weights})")
    return rows


def weights_digest(model) -> str:
    """SHA-256 (hex) of ``model``'s parameters and buffers, by name, as float32 on the CPU: a
    resumed run (and ``seed_spread`` against its source) must use the same weights.

    Example:
        >>> from dpfast.models.loading import load_builtin
        >>> weights_digest(load_builtin())[:12]  # doctest: +SKIP
    """
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return digest.hexdigest()


def _resume(partial_path: Path, run_key: dict) -> dict:
    """Task name → the finished phases' numbers of an interrupted run with the same settings,
    seed and weights (else none). A run writes ``images.partial.json`` after every phase of
    every task; the work inside an unfinished phase comes back from its stored pieces.
    """
    if not partial_path.exists():
        return {}
    try:
        saved = json.loads(partial_path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        print(f"[{NAME}] {partial_path} cannot be read ({error}): starting afresh", flush=True)
        return {}
    if saved.get("key") != json.loads(json.dumps(run_key)):
        print(f"[{NAME}] {partial_path} is from a run with other settings, seed or weights: starting afresh", flush=True)
        return {}
    print(f"[{NAME}] resuming: finished phases of {len(saved['tasks'])} task(s) read back from {partial_path}", flush=True)
    return saved["tasks"]


def _size_name(settings: Settings) -> str:
    """``"quick"``, ``"medium"``, ``"full"`` or ``"custom"``."""
    return next((name for name, size in (("quick", QUICK), ("medium", MEDIUM), ("full", FULL)) if settings == size), "custom")


def _settings_dict(settings: Settings) -> dict:
    values = asdict(settings)
    values["tasks"] = [task.name for task in settings.tasks]
    return values


SERIES = (("lam_sweep", "lam", "λ sweep (ζ tuned per λ)", "o-"),
          ("x0_lam_sweep", "lam", "λ sweep, x̂0 guidance (ζ tuned per λ)", "D-"),
          ("averaging", "samples", "mean of N DPS samples", "s-"),
          ("ddim", "eta", "DDIM-η (ζ tuned per η)", "^-"), ("deepinv", "alpha", "deepinv DPS, α", "v--"))


def _mantissa(value: float) -> int:
    """The leading digit of a positive tick value (0.03 → 3)."""
    return int(round(value / 10 ** math.floor(math.log10(value))))


def _plot(results: dict, path: Path) -> Path:
    """MSE against FD per task; a second row against the unpaired FD (with the clean-set floor)
    when every point has one."""
    plt = common.pyplot()
    from matplotlib.ticker import FuncFormatter

    tasks = results["tasks"]
    every_row = [row for task_results in tasks.values() for key, *_ in SERIES for row in task_results.get(key, [])]
    perception = [("fd", "FD to the restored images' clean set (log)")]
    if every_row and all("fd_unpaired" in row for row in every_row):
        perception.append(("fd_unpaired", "FD to other clean test images (log)"))
    figure, axes = plt.subplots(len(perception), len(tasks), figsize=(3.6 * len(tasks), 3.4 * len(perception)),
                                squeeze=False)
    for axis_row, (fd_key, fd_label) in zip(axes, perception):
        for axis, (name, task_results) in zip(axis_row, tasks.items()):
            for key, knob, label, style in SERIES:
                rows = task_results.get(key, [])
                axis.plot([row["mse"] for row in rows], [row[fd_key] for row in rows], style, ms=4, lw=1, label=label)
                for row in rows:
                    axis.annotate(f"{row[knob]:g}", (row["mse"], row[fd_key]), fontsize=6, xytext=(3, 3),
                                  textcoords="offset points")
            if fd_key == "fd_unpaired" and results.get("fd_floor"):
                axis.axhline(results["fd_floor"], color="0.6", lw=0.8, ls=":", label="two clean sets")
            axis.set_title(name, fontsize=9)
            # log axes: a diverged baseline (FD in the thousands) would otherwise squash every other point
            axis.set_xscale("log")
            axis.set_yscale("log")
            # plain numbers; a panel spanning under two decades (most do) has one major tick or
            # none, so there its minor ticks are labelled too — all of them within half a decade,
            # else only 2, 3 and 5 × 10^k (all nine crowd each other over a decade)
            plain = FuncFormatter(lambda value, _: f"{value:.0f}" if value >= 100 else f"{value:.2g}")
            sparse = FuncFormatter(lambda value, _: plain(value) if _mantissa(value) in (2, 3, 5) else "")
            for log_axis, (low, high) in ((axis.xaxis, axis.get_xlim()), (axis.yaxis, axis.get_ylim())):
                log_axis.set_major_formatter(plain)
                minor = plt.NullFormatter() if high >= 100 * low else (plain if high < 5 * low else sparse)
                log_axis.set_minor_formatter(minor)
            axis.tick_params(which="both", labelsize=6)
            axis.set_xlabel("MSE (log)")
            axis.set_ylabel(fd_label, fontsize=8)
        axis_row[0].legend(fontsize=6)
    figure.tight_layout()
    return common.save_figure(figure, path)
