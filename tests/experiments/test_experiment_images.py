"""`dpfast reproduce images`: the quick run (4 held-out test images, 8 steps, denoising σ_n = 0.1)
writes every series, and a 30-step run of the same task on 8 images checks the tradeoff itself.

Needs the built-in model's weights and the Fashion-MNIST dataset (`.ci/run` installs it).
"""
import json
import math
from dataclasses import replace

import pytest
import torch

from dpfast.baselines.deepinv_dps import deepinv_available
from dpfast.data import fashion_mnist_dir
from dpfast.experiments import images

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
    assert set(task["zeta"]) == {"0.0", "1.0"}
    assert all(schedule in ("beta", "constant") for schedule, _ in task["zeta"].values())
    if deepinv_available():  # a test extra; `.ci/run` installs it
        (deepinv_row,) = task["deepinv"]
        assert deepinv_row["alpha"] == 1.0 and deepinv_row["weight"] in (3.0, 30.0)
        assert math.isfinite(deepinv_row["mse"]) and math.isfinite(deepinv_row["fd"])
    else:
        assert "deepinv" not in task
    for series in ("lam_sweep", "averaging", "ddim"):
        for row in task[series]:
            assert row["mse"] > 0 and row["fd"] >= 0 and 0 < row["ssim"] <= 1
    assert (tmp_path / "images.json").is_file() and (tmp_path / "images_dp_curve.png").stat().st_size > 5_000
    assert not (tmp_path / "images.partial.json").exists()  # removed once the run is complete
    assert results["meta"]["command"] == "python -m dpfast.experiments images -o OUT --quick --seed 0"
    # averaging one λ = 1 draw is the λ = 1 point itself
    assert task["averaging"][0]["mse"] == pytest.approx(task["lam_sweep"][-1]["mse"], rel=1e-6)


# Issue #6's image check at a size that restores at all (the 8-step quick run does not: MSE ~0.3).
TRADEOFF = replace(images.QUICK, images=8, steps=30, zeta_factors=(1.0, 2.0, 4.0), constant_zetas=(1.0,), search_images=4,
                   average_counts=(1,), deepinv_alphas=())


@pytest.fixture(scope="module")
def tradeoff_sweep(tmp_path_factory):
    """8 test images, denoising σ_n = 0.1, 30 steps, ζ per λ searched on 4 training images, seed 0."""
    (task,) = images.run(tmp_path_factory.mktemp("tradeoff"), settings=TRADEOFF)["tasks"].values()
    return task["lam_sweep"]


def test_lam_one_has_the_lower_fd(tradeoff_sweep):
    """Shipped weights (step 14,467): FD 64.5 (λ = 1) < 76.4 (λ = 0)."""
    zero, one = tradeoff_sweep
    assert one["fd"] < zero["fd"], tradeoff_sweep


@pytest.mark.xfail(strict=True, reason=(
    "not met with the shipped weights (step 14,467): MSE 0.0337 at λ = 0 against 0.0232 at λ = 1 on these 8 "
    "images. The 4-image version this test had passed (0.0143 < 0.0213) with 2 torch threads and failed with 1 "
    "(0.0127 / FD 43.7 at λ = 0: the λ = 0 chain amplifies rounding, docs/RESULTS.md 'sensitivity'), and the "
    "medium run (32 images, 50 steps) has λ = 0 at 0.0080 against 0.0035; issue #6 stays open on it"))
def test_lam_zero_has_the_lower_mse(tradeoff_sweep):
    zero, one = tradeoff_sweep
    assert zero["mse"] < one["mse"], tradeoff_sweep


# Two denoising tasks, 2 images, 4 steps, no deepinv: the smallest run with something to resume.
TWO_TASKS = replace(images.QUICK, images=2, steps=4, zeta_factors=(1.0,), constant_zetas=(), search_images=2,
                    average_counts=(1,), deepinv_alphas=(), tasks=images.TASKS[:2])


def test_an_interrupted_run_resumes_without_redoing_finished_tasks(tmp_path, monkeypatch):
    real_run_task, calls = images._run_task, []

    def interrupted_after_the_first_task(model, task, *args):
        calls.append(task.name)
        if len(calls) == 2:
            raise KeyboardInterrupt("killed part-way")
        return real_run_task(model, task, *args)

    monkeypatch.setattr(images, "_run_task", interrupted_after_the_first_task)
    with pytest.raises(KeyboardInterrupt):
        images.run(tmp_path, settings=TWO_TASKS)
    partial = json.loads((tmp_path / "images.partial.json").read_text())
    assert list(partial["tasks"]) == [images.TASKS[0].name]

    def counted(model, task, *args):
        calls.append(task.name)
        return real_run_task(model, task, *args)

    calls.clear()
    monkeypatch.setattr(images, "_run_task", counted)
    results = images.run(tmp_path, settings=TWO_TASKS)
    assert calls == [images.TASKS[1].name]  # the first task was read back, not recomputed
    assert results["tasks"][images.TASKS[0].name] == partial["tasks"][images.TASKS[0].name]
    assert all(entry["seconds"] > 0 for entry in results["tasks"].values())
    assert results["meta"]["command"].endswith("(custom settings: see the JSON's settings)")
    assert not (tmp_path / "images.partial.json").exists()


STALE = json.dumps({"key": {"settings": {}, "seed": 0, "model_sha256": "0"}, "tasks": {images.TASKS[0].name: {"lam_sweep": []}}})


@pytest.mark.parametrize("stale, message", [(STALE, "from a run with other settings"), (STALE[:40], "cannot be read")],
                         ids=["other-settings", "cut-short"])
def test_a_partial_file_from_other_settings_or_broken_is_not_reused(tmp_path, monkeypatch, capsys, stale, message):
    (tmp_path / "images.partial.json").write_text(stale)
    calls = []
    real_run_task = images._run_task
    monkeypatch.setattr(images, "_run_task", lambda model, task, *args: calls.append(task.name) or real_run_task(model, task, *args))
    images.run(tmp_path, settings=TWO_TASKS, seed=3)
    assert calls == [task.name for task in images.TASKS[:2]]
    assert message in capsys.readouterr().out


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_quick_run_on_cuda_chooses_the_same_steps_and_lands_near_the_cpu_run(quick_run, tmp_path):
    """The GPU path of the full run (bench/gpu_check.sh, images_full): same choices, MSE within 10 %
    (TF32 convolutions and the chains' amplification of rounding keep it from being exact)."""
    _, cpu = quick_run
    gpu = images.run(tmp_path, quick=True, device="cuda")
    assert "--device cuda" in gpu["meta"]["command"] and "CUDA" in gpu["meta"]["device"]
    (cpu_task,), (gpu_task,) = cpu["tasks"].values(), gpu["tasks"].values()
    assert gpu_task["zeta"] == cpu_task["zeta"]
    for series in ("lam_sweep", "averaging", "ddim"):
        for cpu_row, gpu_row in zip(cpu_task[series], gpu_task[series], strict=True):
            assert gpu_row["mse"] == pytest.approx(cpu_row["mse"], rel=0.1), (series, cpu_row, gpu_row)
