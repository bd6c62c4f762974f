"""`dpfast reproduce images`: the quick run (4 held-out test images, 8 steps, denoising σ_n = 0.1)
writes every series, and 16-image runs check the tradeoff itself — denoising σ_n 0.1 with DPS and
with x̂0 guidance (100 steps), deblurring with x̂0 guidance (40 steps) — on this CPU's kernels and
on torch's AVX2 kernels.

Needs the built-in model's weights and the Fashion-MNIST dataset (`.ci/run` installs it).
"""
import copy
import json
import math
import os
import platform
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from dpfast.baselines.deepinv_dps import deepinv_available
from dpfast.data import fashion_mnist_dir
from dpfast.experiments import images
from dpfast.experiments.image_tasks import ImageTask

pytestmark = pytest.mark.skipif(not (fashion_mnist_dir() / "t10k-images-idx3-ubyte.gz").is_file(),
                                reason="Fashion-MNIST is not installed (apt-get install dataset-fashion-mnist)")


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("images")
    return out, images.run(out, quick=True)


def test_quick_run_writes_every_series_and_the_figure(quick_run):
    tmp_path, results = quick_run
    (task,) = results["tasks"].values()
    assert [row["lam"] for row in task["lam_sweep"]] == [0.0, 1.0]
    assert [row["samples"] for row in task["averaging"]] == [1, 2]
    assert [row["eta"] for row in task["ddim"]] == [0.0]
    # DDIM's step is its own search's pick: the lowest training MSE at that η over the λ search's grid
    assert [entry["zeta"] for entry in task["ddim_search"]] == [entry["zeta"] for entry in task["search"]]
    (best,) = sorted(task["ddim_search"], key=lambda entry: entry["mse"][0])[:1]
    assert task["ddim"][0]["zeta"] == best["zeta"]
    assert set(task["zeta"]) == {"0.0", "1.0"}
    assert all(schedule in ("beta", "constant") for schedule, _ in task["zeta"].values())
    # the x̂0-guided sweep: its own search over the same grid, its own chains
    assert [row["lam"] for row in task["x0_lam_sweep"]] == [0.0, 1.0] and set(task["x0_zeta"]) == {"0.0", "1.0"}
    # its grid: two weaker β-scaled steps, then the DPS search's grid
    natural = images.TASKS[0].natural_scale((1, 32, 32))
    assert [entry["zeta"] for entry in task["x0_search"]] == (
        [["beta", factor * natural] for factor in images.X0_WEAKER_FACTORS] + [entry["zeta"] for entry in task["search"]])
    assert [entry["mse"] for entry in task["x0_search"][2:]] != [entry["mse"] for entry in task["search"]]
    for index, row in enumerate(task["x0_lam_sweep"]):
        assert row["zeta"] == task["x0_zeta"][str(row["lam"])]
        assert row["zeta"] == min(task["x0_search"], key=lambda entry: entry["mse"][index])["zeta"]
    assert task["x0_lam_sweep"] != task["lam_sweep"]
    if deepinv_available():  # a test extra; `.ci/run` installs it
        (deepinv_row,) = task["deepinv"]
        assert deepinv_row["alpha"] == 1.0 and deepinv_row["weight"] in (3.0, 30.0)
        assert math.isfinite(deepinv_row["mse"]) and math.isfinite(deepinv_row["fd"])
    else:
        assert "deepinv" not in task
    for series in ("lam_sweep", "x0_lam_sweep", "averaging", "ddim"):
        for row in task[series]:
            assert row["mse"] > 0 and row["fd"] >= 0 and 0 < row["ssim"] <= 1
    assert (tmp_path / "images.json").is_file() and (tmp_path / "images_dp_curve.png").stat().st_size > 5_000
    assert not (tmp_path / "images.partial.json").exists()  # removed once the run is complete
    assert results["meta"]["command"] == "python -m dpfast.experiments images -o OUT --quick --seed 0"
    # averaging one λ = 1 draw is the λ = 1 point itself
    assert task["averaging"][0]["mse"] == pytest.approx(task["lam_sweep"][-1]["mse"], rel=1e-6)


# Issue #6's image check, at a size where its outcome is the method's and not the CPU's: on 8
# images and 30 steps the λ = 0 chain's amplified rounding decided it — that version passed its FD
# check on an AVX2 CPU and failed it on an AVX-512 one (torch picks its kernels by instruction set;
# `ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2` reproduces the AVX2 numbers), with λ = 0's
# MSE 0.0337 there against 0.0191 here and λ = 1's 0.0232 on both.
TRADEOFF_IMAGES, TRADEOFF_STEPS = 16, 100
# The same check with torch's AVX2 kernels on any x86 CPU (those environment variables are read
# when torch starts, hence a fresh process): CI machines differ in their instruction sets.
AVX2_KERNELS = {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2"}


# The cases of issue #6's image check: (task, steps). Denoising σ_n 0.1 with the β-scaled step c
# at both ends, per guidance: DPS c = 320 (= √m/σ_n), which the full run's first search (AVX2, 16
# training images) chose for λ = 0 and λ = 1 (the restarted run's, on AVX-512, chose c 640 at
# λ = 0); x̂0 guidance c = 80, the full run's x̂0 search's choice at every λ (AVX-512, 2026-11-29;
# c 40 and 160 on either side were worse). Deblurring 61/3.0 with x̂0 guidance, constant ζ 3 (the
# full run's x̂0 search chose it at every λ; on its 256 test images MSE 0.0337 → 0.0512 and FD
# 45.7 → 12.2 from λ = 0 to 1), at 40 steps: measured 2026-11-30 (AVX-512) MSE 0.0415 / 0.0637 and
# FD 123.7 / 84.3 at λ = 0 / 1; seed 1 0.0404 / 0.0603 and 117.9 / 81.8; at 100 steps 0.0351 /
# 0.0447 and 105.9 / 55.4; on 8 images FD's margin shrank to 118.0 / 113.2, hence 16.
TRADEOFF_CASES = {
    "dps": (ImageTask("denoise", 0.1, 320.0), TRADEOFF_STEPS),
    "x0": (ImageTask("denoise", 0.1, 80.0, guidance="x0"), TRADEOFF_STEPS),
    "x0-deblur": (ImageTask("deblur", 0.05, 3.0, zeta_schedule="constant", guidance="x0"), 40),
}


def tradeoff_rows(case: str = "dps") -> list[dict]:
    """16 test images, seed 0, λ ∈ {0, 1}, the task and step count of :data:`TRADEOFF_CASES`."""
    from dpfast.data import load_fashion_mnist
    from dpfast.experiments.image_tasks import dp_rows, traverse_task
    from dpfast.models.loading import load_builtin

    task, steps = TRADEOFF_CASES[case]
    test, _ = load_fashion_mnist("test", limit=TRADEOFF_IMAGES)
    restored = traverse_task(load_builtin(), task, task.measure(test, seed=0), [0.0, 1.0], steps, seed=0)
    return dp_rows(test, restored, [0.0, 1.0])


def _tradeoff_on(kernels: str, case: str) -> list[dict]:
    if kernels == "this-cpu":
        return tradeoff_rows(case)
    if platform.machine() not in ("x86_64", "AMD64") or not torch.cpu._is_avx2_supported():
        pytest.skip("torch's AVX2 kernels need an x86 CPU with AVX2")
    code = ("import json, sys, torch; assert torch.backends.cpu.get_cpu_capability() == 'AVX2', torch.backends.cpu.get_cpu_capability(); "
            "sys.path.insert(0, sys.argv[1]); import test_experiment_images as t; print(json.dumps(t.tradeoff_rows(sys.argv[2])))")
    done = subprocess.run([sys.executable, "-c", code, str(Path(__file__).parent), case], capture_output=True, text=True,
                          env={**os.environ, **AVX2_KERNELS}, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def tradeoff_sweeps():
    """(kernels, case) → the two rows, each computed once per module."""
    computed = {}

    def rows(kernels: str, case: str) -> list[dict]:
        if (kernels, case) not in computed:
            computed[kernels, case] = _tradeoff_on(kernels, case)
        return computed[kernels, case]
    return rows


KERNELS = ("this-cpu", "avx2-kernels")
# DPS: FD λ = 1 / λ = 0 4.2 / 16.3 (AVX-512), 4.0 / 16.9 (AVX2); with seed 1 3.5 / 27.5 and 3.4 / 16.1.
X0_FD_NOT_MET = pytest.mark.xfail(strict=True, raises=AssertionError, reason=(
    "not met: with x̂0 guidance on this denoising task λ = 0 is better on both axes — FD λ = 0 / λ = 1 "
    "4.44 / 9.14 (AVX-512), 4.46 / 9.15 (AVX2 kernels), 2026-11-29: its λ = 1 restorations keep grain of the "
    "noisy measurement (as on the demo's denoising, docs/MODEL_CARD.md 'Demo'), so neither guidance meets "
    "both halves of issue #6's image check on this denoising task; deblurring with x̂0 guidance (case x0-deblur) does"))
# x̂0 guidance: MSE λ = 0 / λ = 1 0.0019 / 0.0036 on both kernel sets (2026-11-29).
DPS_MSE_NOT_MET = pytest.mark.xfail(strict=True, raises=AssertionError, reason=(
    "not met with the shipped weights (step 14,467): MSE at λ = 0 / λ = 1 0.0066 / 0.0026 (AVX-512 CPU), "
    "0.0042 / 0.0025 (AVX2), with seed 1 0.0089 / 0.0025 and 0.0051 / 0.0025; in the full run's 256 images "
    "(docs/RESULTS.md §4) λ = 0 has the higher MSE on all five tasks (denoising σ_n 0.1: "
    "0.0042 against 0.0029, deblurring 0.0838 against 0.0673, SR ×4 0.0566 against 0.0417). x̂0 guidance "
    "gives the low-MSE end: cases x0 and x0-deblur"))


@pytest.mark.parametrize("kernels", KERNELS)
@pytest.mark.parametrize("case", ["dps", pytest.param("x0", marks=X0_FD_NOT_MET), "x0-deblur"])
def test_lam_one_has_the_lower_fd(tradeoff_sweeps, kernels, case):
    zero, one = rows = tradeoff_sweeps(kernels, case)
    assert one["fd"] < zero["fd"], rows


@pytest.mark.parametrize("kernels", KERNELS)
@pytest.mark.parametrize("case", [pytest.param("dps", marks=DPS_MSE_NOT_MET), "x0", "x0-deblur"])
def test_lam_zero_has_the_lower_mse(tradeoff_sweeps, kernels, case):
    zero, one = rows = tradeoff_sweeps(kernels, case)
    assert zero["mse"] < one["mse"], rows


# Two denoising tasks, 2 images, 4 steps, no deepinv: the smallest run with something to resume.
TWO_TASKS = replace(images.QUICK, images=2, steps=4, zeta_factors=(1.0,), constant_zetas=(), search_images=2,
                    average_counts=(1,), deepinv_alphas=(), tasks=images.TASKS[:2])


def test_an_interrupted_run_resumes_without_redoing_finished_phases(tmp_path, monkeypatch):
    """Phase by phase over the tasks (every search and λ sweep, then both with x̂0 guidance, then the
    baselines), each finished one kept."""
    phases = ("_search", "_lam_sweep", "_averaging", "_ddim")
    real = {name: getattr(images, name) for name in phases}
    calls = []

    def counting(name, kill_at=None):
        def wrapped(model, task, *args):
            calls.append((name, task.name))
            if len(calls) == kill_at:
                raise KeyboardInterrupt("killed part-way")
            return real[name](model, task, *args)
        return wrapped

    for name in phases:
        monkeypatch.setattr(images, name, counting(name, kill_at=11 if name == "_averaging" else None))
    with pytest.raises(KeyboardInterrupt):  # in the second task's averaging
        images.run(tmp_path, settings=TWO_TASKS)
    first, second = (task.name for task in images.TASKS[:2])
    first_x0, second_x0 = (replace(task, guidance="x0").name for task in images.TASKS[:2])
    assert calls == [("_search", first), ("_lam_sweep", first), ("_search", second), ("_lam_sweep", second),
                     ("_search", first_x0), ("_lam_sweep", first_x0), ("_search", second_x0), ("_lam_sweep", second_x0),
                     ("_averaging", first), ("_ddim", first), ("_averaging", second)]
    partial = json.loads((tmp_path / "images.partial.json").read_text())
    assert "ddim" in partial["tasks"][first]
    assert set(partial["tasks"][second]) == {"zeta", "search", "lam_sweep", "x0_zeta", "x0_search", "x0_lam_sweep",
                                             "seconds", "phases"}
    # each finished phase says where and when it ran (a run spread over sessions may change machines)
    assert set(partial["tasks"][second]["phases"]) == {"zeta", "lam_sweep", "x0_zeta", "x0_lam_sweep"}
    assert all(torch.backends.cpu.get_cpu_capability() in phase["device"] and phase["seconds"] > 0
               for phase in partial["tasks"][second]["phases"].values())

    calls.clear()
    for name in phases:
        monkeypatch.setattr(images, name, counting(name))
    results = images.run(tmp_path, settings=TWO_TASKS)
    assert calls == [("_averaging", second), ("_ddim", second)]  # everything else was read back, not recomputed
    assert results["tasks"][first] == partial["tasks"][first]
    assert results["tasks"][second]["lam_sweep"] == partial["tasks"][second]["lam_sweep"]
    assert results["tasks"][second]["seconds"] > partial["tasks"][second]["seconds"] > 0  # both runs counted
    assert results["meta"]["command"].endswith("(custom settings: see the JSON's settings)")
    assert not (tmp_path / "images.partial.json").exists()


def test_a_run_resumed_without_its_pieces_reads_finished_phases_from_the_file_alone(tmp_path, monkeypatch):
    """The machine that ran the search and the sweep is gone with their pieces: both come back from
    the partial file, and the averaging runs only the λ = 1 chain again for its first draw."""
    settings = replace(BLOCKED, average_counts=(1, 2))
    whole = images.run(tmp_path / "whole", settings=settings)
    monkeypatch.setattr(images, "_averaging", lambda *args: (_ for _ in ()).throw(KeyboardInterrupt("killed")))
    with pytest.raises(KeyboardInterrupt):
        images.run(tmp_path / "moved", settings=settings)
    shutil.rmtree(tmp_path / "moved" / "images.pieces")
    monkeypatch.undo()
    traversed_lams = []
    real_traverse = images.traverse_task
    monkeypatch.setattr(images, "traverse_task", lambda model, task, y, lams, *args, **kwargs:
                        traversed_lams.append(list(lams)) or real_traverse(model, task, y, lams, *args, **kwargs))
    monkeypatch.setattr(images, "_search", lambda *args: pytest.fail("the search ran again"))
    monkeypatch.setattr(images, "_lam_sweep", lambda *args: pytest.fail("the λ sweep ran again"))
    (moved,), (reference,) = images.run(tmp_path / "moved", settings=settings)["tasks"].values(), whole["tasks"].values()
    assert traversed_lams == [[1.0]] * 4  # two blocks of the first draw again, two of the second draw
    assert moved["zeta"] == reference["zeta"] and moved["search"] == reference["search"]
    assert len(moved["search"]) == len(settings.zeta_factors) + len(settings.constant_zetas)
    assert moved["averaging_first_draw"] == "run again: the λ sweep's pieces were gone"
    assert reference["averaging_first_draw"] == "the λ sweep's λ = 1 pieces"
    for series in ("lam_sweep", "x0_lam_sweep", "ddim"):
        assert moved[series] == reference[series], series
    for row, reference_row in zip(moved["averaging"], reference["averaging"], strict=True):
        # the same chains, in batches of another make-up: equal up to rounding
        assert row["mse"] == pytest.approx(reference_row["mse"], rel=1e-4), (row, reference_row)


# One task, 4 images in blocks of 2, 4 steps: a task with pieces to resume inside it.
BLOCKED = replace(TWO_TASKS, images=4, tasks=images.TASKS[:1], block_images=2)


def test_ddim_at_eta_one_searches_like_lam_one(tmp_path):
    """DDIM η = 1 is the λ = 1 chain: on the same training measurements and seeds its search
    scores every step-size choice as λ = 1's does (up to rounding), so it chooses the same."""
    settings = replace(BLOCKED, etas=(1.0,), zeta_factors=(0.5, 2.0), constant_zetas=(0.3,))
    (task,) = images.run(tmp_path, settings=settings)["tasks"].values()
    lam_one = settings.lams.index(1.0)
    for ddim_entry, lam_entry in zip(task["ddim_search"], task["search"], strict=True):
        assert ddim_entry["zeta"] == lam_entry["zeta"]
        assert ddim_entry["mse"][0] == pytest.approx(lam_entry["mse"][lam_one], rel=1e-3), (ddim_entry, lam_entry)
    assert task["ddim"][0]["zeta"] == task["zeta"]["1.0"]


def test_a_run_killed_inside_a_task_reads_its_finished_pieces_back(tmp_path, monkeypatch):
    from dpfast.experiments import image_tasks

    whole = images.run(tmp_path / "whole", settings=BLOCKED)
    calls = {"search": 0, "chains": 0, "ddim": 0}
    real_search, real_traverse, real_ddim = image_tasks.traverse_task, images.traverse_task, images.ddim_dps_sample

    def counting(kind, real, kill_at=None):
        def wrapped(*args, **kwargs):
            calls[kind] += 1
            if calls[kind] == kill_at:
                raise KeyboardInterrupt("killed part-way")
            return real(*args, **kwargs)
        return wrapped

    monkeypatch.setattr(image_tasks, "traverse_task", counting("search", real_search))
    monkeypatch.setattr(images, "traverse_task", counting("chains", real_traverse))
    monkeypatch.setattr(images, "ddim_dps_sample", counting("ddim", real_ddim, kill_at=3))
    with pytest.raises(KeyboardInterrupt):  # DDIM's step-size search (one choice), its first block, killed in the second
        images.run(tmp_path / "resumed", settings=BLOCKED)
    assert calls == {"search": 4, "chains": 4, "ddim": 3}  # search (x̂0: two more choices) and sweep, DPS and x̂0
    partial = json.loads((tmp_path / "resumed" / "images.partial.json").read_text())
    assert "averaging" in partial["tasks"][images.TASKS[0].name] and "ddim" not in partial["tasks"][images.TASKS[0].name]

    calls.update(search=0, chains=0, ddim=0)
    monkeypatch.setattr(images, "ddim_dps_sample", counting("ddim", real_ddim))
    resumed = images.run(tmp_path / "resumed", settings=BLOCKED)
    # only the unfinished block was run again (the averaging's λ = 1 draw is the sweep's, read back)
    assert calls == {"search": 0, "chains": 0, "ddim": 1}
    (whole_task,), (resumed_task,) = whole["tasks"].values(), resumed["tasks"].values()
    for series in ("zeta", "lam_sweep", "x0_zeta", "x0_lam_sweep", "averaging", "ddim", "ddim_search"):
        assert resumed_task[series] == whole_task[series], series
    assert resumed_task["seconds"] > 0
    assert not (tmp_path / "resumed" / "images.pieces").exists()  # removed with the partial file at the end


def _killed_at_call(number: int, real):
    """``real``, except that its call ``number`` raises KeyboardInterrupt (a run killed there)."""
    calls = []

    def wrapped(*args, **kwargs):
        calls.append(1)
        if len(calls) == number:
            raise KeyboardInterrupt("killed part-way")
        return real(*args, **kwargs)
    return wrapped


def test_status_shows_a_killed_run_and_counts_the_pieces_a_whole_run_stores(tmp_path, monkeypatch, capsys):
    from dpfast.experiments.pieces import PieceStore

    monkeypatch.setattr(PieceStore, "remove", lambda self: None)  # keep the pieces to count them at the end
    assert images.status(tmp_path)["state"] == "none"
    real_ddim = images.ddim_dps_sample
    monkeypatch.setattr(images, "ddim_dps_sample", _killed_at_call(3, real_ddim))
    with pytest.raises(KeyboardInterrupt):  # in the DDIM run's second block (its search was the first call)
        images.run(tmp_path, settings=BLOCKED)
    capsys.readouterr()
    partial = images.status(tmp_path)
    printed = capsys.readouterr().out
    # one search choice (x̂0: three) and two sweep blocks each with DPS and x̂0 guidance, DDIM's one search
    # choice and first block; the λ = 1 draw is the sweep's
    assert (partial["state"], partial["stored_pieces"], partial["expected_pieces"]) == ("partial", 10, 11)
    assert (partial["finished_phases"], partial["phases"]) == (5, 6) and "phases finished: 5 of 6\n" in printed
    assert (f"{images.TASKS[0].name}: step-size search, λ sweep, x̂0 step-size search, x̂0 λ sweep, averaging\n" in printed
            and "pieces stored: 10 of the 11" in printed)
    images.status(tmp_path, markdown=True)  # the tables as docs/RESULTS.md pastes them
    printed = capsys.readouterr().out
    assert "| method | MSE | PSNR | SSIM | FD | FD unpaired |\n| --- | --- | --- | --- | --- | --- |\n| λ = 0 (" in printed
    drawn = images.status(tmp_path, plot=True)["figure"]  # the finished series, as the finished run would draw them
    assert drawn == tmp_path / "images_dp_curve.partial.png" and drawn.stat().st_size > 5_000
    assert "the finished series of 1 task(s) drawn in" in capsys.readouterr().out
    monkeypatch.setattr(images, "ddim_dps_sample", real_ddim)
    images.run(tmp_path, settings=BLOCKED)
    (folder,) = (tmp_path / "images.pieces").iterdir()
    assert len(list(folder.glob("*.pt"))) == partial["expected_pieces"]
    assert images.status(tmp_path)["state"] == "finished"


def test_status_counts_the_pieces_of_a_run_stopped_before_its_first_phase_ended(tmp_path, monkeypatch, capsys):
    from dpfast.experiments import image_tasks

    monkeypatch.setattr(image_tasks, "traverse_task", _killed_at_call(2, image_tasks.traverse_task))
    with pytest.raises(KeyboardInterrupt):  # in the search's second step-size choice
        images.run(tmp_path, settings=replace(BLOCKED, constant_zetas=(1.0,)))
    capsys.readouterr()
    assert images.status(tmp_path) == {"state": "started", "stored_pieces": 1}
    assert "has stored 1 piece(s) but finished no phase yet" in capsys.readouterr().out


def test_status_of_a_run_with_only_a_search_finished_prints_its_choices(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(images, "traverse_task", _killed_at_call(1, images.traverse_task))
    with pytest.raises(KeyboardInterrupt):  # in the λ sweep's first block, the search written
        images.run(tmp_path, settings=BLOCKED)
    capsys.readouterr()
    assert "figure" not in images.status(tmp_path, plot=True)
    printed = capsys.readouterr().out
    assert "nothing to draw yet: no task has finished its λ sweep" in printed and not (tmp_path / "images_dp_curve.partial.png").exists()
    chosen = json.loads((tmp_path / "images.partial.json").read_text())["tasks"][images.TASKS[0].name]["zeta"]
    assert f"{images.TASKS[0].name}: step-size search\n" in printed and "the search chose λ 0: " in printed, printed
    assert "    step-size search: 20" in printed and f"({torch.backends.cpu.get_cpu_capability()})" in printed
    assert len(chosen) == len(BLOCKED.lams)


def test_every_row_has_an_unpaired_fd_above_the_clean_floor_order_aside(quick_run):
    """fd_unpaired compares with *other* clean test images: a restoration of the very images is no help there."""
    _, results = quick_run
    (task,) = results["tasks"].values()
    assert results["fd_floor"] > 0
    for series in ("lam_sweep", "x0_lam_sweep", "averaging", "ddim"):
        for row in task[series]:
            assert math.isfinite(row["fd_unpaired"]) and row["fd_unpaired"] != row["fd"], (series, row)


def test_blocks_of_test_images_restore_what_one_batch_restores(tmp_path):
    """Image i keeps its seed in any block: only the batch's floating-point order differs."""
    (blocked,) = images.run(tmp_path / "blocked", settings=BLOCKED)["tasks"].values()
    (one_batch,) = images.run(tmp_path / "one", settings=replace(BLOCKED, block_images=4))["tasks"].values()
    assert blocked["zeta"] == one_batch["zeta"]
    # DDIM η = 0 with λ = 1's β-scaled schedule over these few steps diverges (MSE > 1), and a
    # diverging deterministic chain amplifies the batch's rounding ~10× more than the λ sweep
    for series, tolerance in (("lam_sweep", 1e-4), ("x0_lam_sweep", 1e-4), ("ddim", 1e-2)):
        for row, reference in zip(blocked[series], one_batch[series], strict=True):
            assert row["mse"] == pytest.approx(reference["mse"], rel=tolerance), (series, row, reference)


def test_a_sweep_stored_with_other_steps_is_not_read_back(tmp_path, monkeypatch):
    """A sweep's pieces are named by the step chosen per λ: one stored before the search chose
    differently (its grid changed under the same run key) is recomputed, the same steps read back."""
    from dpfast.experiments.pieces import PieceStore

    runs = []

    def traverse(model, tuned, y, lams, steps, seed):
        runs.append(tuned.zeta)
        return torch.full((len(lams), *y.shape), float(len(runs)))

    monkeypatch.setattr(images, "traverse_task", traverse)
    pieces = PieceStore(tmp_path, "key", log=lambda line: None)
    test = torch.zeros(2, 1, 28, 28)
    chosen = replace(images.TASKS[0], zeta={0.0: ("beta", 10.0), 1.0: ("constant", 1.0)})
    rechosen = replace(chosen, zeta={0.0: ("beta", 20.0), 1.0: ("constant", 1.0)})
    first = images._sweep_restorations(None, chosen, test, images.QUICK, 0, pieces)
    again = images._sweep_restorations(None, chosen, test, images.QUICK, 0, pieces)
    other = images._sweep_restorations(None, rechosen, test, images.QUICK, 0, pieces)
    assert runs == [chosen.zeta, rechosen.zeta]
    assert torch.equal(again, first) and not torch.equal(other, first)


STALE = json.dumps({"key": {"settings": {}, "seed": 0, "model_sha256": "0"}, "tasks": {images.TASKS[0].name: {"lam_sweep": []}}})


@pytest.mark.parametrize("stale, message", [(STALE, "from a run with other settings"), (STALE[:40], "cannot be read")],
                         ids=["other-settings", "cut-short"])
def test_a_partial_file_from_other_settings_or_broken_is_not_reused(tmp_path, monkeypatch, capsys, stale, message):
    (tmp_path / "images.partial.json").write_text(stale)
    calls = []
    real_search = images._search
    monkeypatch.setattr(images, "_search", lambda model, task, *args: calls.append(task.name) or real_search(model, task, *args))
    images.run(tmp_path, settings=TWO_TASKS, seed=3)
    # every search ran, with DPS and with x̂0 guidance: nothing was taken from the stale file
    assert calls == [task.name for guidance in ("dps", "x0") for task in (replace(task, guidance=guidance) for task in images.TASKS[:2])]
    assert message in capsys.readouterr().out


# TF32's rounding (10 mantissa bits), the scale of the relative error of the GPU's float32 convolutions
TF32_ROUNDING = 2.0**-11


def assert_lands_near(cpu_task: dict, other_task: dict, perturbed_tasks: list[dict]) -> None:
    """``other_task`` (the same quick run elsewhere) lands near ``cpu_task``: the same DPS step
    choices, the DPS-guided series within 10 % in MSE, and each x̂0-guided row within [½ min,
    2 max] of that row's MSEs over the CPU runs — ``cpu_task`` and ``perturbed_tasks`` (the
    network output perturbed at ``TF32_ROUNDING``) — that chose the same x̂0 steps as
    ``other_task`` (the x̂0 search runs the same chaotic chains, so its choice may move too).

    The quick x̂0 chains (8 steps, deterministic at λ = 0) are chaotic at rounding scale: in a
    session check on this CPU (2026-11-29) four such perturbations moved λ = 0's MSE from 0.0125
    to 0.0029–0.0045, and the H200 gave 0.0038 — a 10 % bound failed on it. The x̂0 bound
    catches a lost or inverted guidance, not a subtle error; the cudagraph-equals-eager tests
    (tests/test_sampler_modes.py) are there for those."""
    assert other_task["zeta"] == cpu_task["zeta"]
    for series in ("lam_sweep", "averaging", "ddim"):
        for cpu_row, other_row in zip(cpu_task[series], other_task[series], strict=True):
            assert other_row["mse"] == pytest.approx(cpu_row["mse"], rel=0.1), (series, cpu_row, other_row)
    alike = [task for task in (cpu_task, *perturbed_tasks) if task["x0_zeta"] == other_task["x0_zeta"]]
    assert alike, f"no CPU run, plain or perturbed, chose the x̂0 steps {other_task['x0_zeta']}"
    for index, other_row in enumerate(other_task["x0_lam_sweep"]):
        spread = [task["x0_lam_sweep"][index]["mse"] for task in alike]
        assert min(spread) / 2 <= other_row["mse"] <= 2 * max(spread), (other_row, spread)


def perturbed_quick_tasks(tmp_path: Path, seeds=(1, 2, 3)) -> list[dict]:
    """The quick run's task on the CPU, once per seed, with the network output perturbed at
    ``TF32_ROUNDING`` (deepinv's row left out: nothing compares it)."""
    from dpfast.experiments.sensitivity import PerturbedScore
    from dpfast.models.loading import load_builtin

    model = load_builtin()
    without_deepinv = replace(images.QUICK, deepinv_alphas=())  # its row is not compared
    return [next(iter(images.run(tmp_path / f"perturbed_{seed}", settings=without_deepinv,
                                 model=PerturbedScore(model, TF32_ROUNDING, seed=seed))["tasks"].values()))
            for seed in seeds]


def test_the_gpu_check_passes_a_rounding_perturbed_run_and_fails_a_doctored_one(quick_run, tmp_path):
    """:func:`assert_lands_near` on the CPU: a third perturbed run stands in for the GPU's."""
    _, cpu = quick_run
    (cpu_task,) = cpu["tasks"].values()
    *envelope, stand_in = perturbed_quick_tasks(tmp_path, seeds=(1, 2, 3))
    assert_lands_near(cpu_task, stand_in, envelope)
    for series, row, factor in (("x0_lam_sweep", 0, 20.0), ("lam_sweep", 1, 1.2)):
        doctored = copy.deepcopy(stand_in)
        doctored[series][row]["mse"] *= factor
        with pytest.raises(AssertionError):
            assert_lands_near(cpu_task, doctored, envelope)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_quick_run_on_cuda_chooses_the_same_steps_and_lands_near_the_cpu_run(quick_run, tmp_path):
    """The GPU path of the full run (bench/gpu_check.sh, images_full): the same choices, and numbers
    near the CPU's as :func:`assert_lands_near` sets out (TF32 convolutions and the chains'
    amplification of rounding keep them from being exact)."""
    _, cpu = quick_run
    gpu = images.run(tmp_path / "cuda", quick=True, device="cuda")
    assert "--device cuda" in gpu["meta"]["command"] and "CUDA" in gpu["meta"]["device"]
    (cpu_task,), (gpu_task,) = cpu["tasks"].values(), gpu["tasks"].values()
    assert_lands_near(cpu_task, gpu_task, perturbed_quick_tasks(tmp_path))
