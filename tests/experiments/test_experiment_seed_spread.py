"""`seed_spread`: the images run's single-chain points again with other seeds (quick version)."""
import json
import statistics
from dataclasses import replace

import pytest

from dpfast import metrics
from dpfast.baselines.deepinv_dps import deepinv_available
from dpfast.experiments import images, seed_spread
from dpfast.experiments.image_tasks import traverse_task

TASK = "denoise σn=0.1"
# what an images run stores for a task (settings and the choices seed_spread reads), small steps for 8-step chains
SOURCE = {"key": {"settings": {"images": 256, "steps": 100, "block_images": 64}},
          "tasks": {TASK: {"zeta": {"0.0": ["beta", 40.0], "1.0": ["beta", 80.0]}, "x0_zeta": {"0.0": ["constant", 1.0]},
                           "deepinv": [{"alpha": 0.0, "weight": 3.0}, {"alpha": 1.0, "weight": 30.0}]}}}


@pytest.fixture(scope="module")
def spread(tmp_path_factory):
    out = tmp_path_factory.mktemp("seed_spread")
    (out / "images.partial.json").write_text(json.dumps(SOURCE))
    return out, seed_spread.run(out, quick=True)


def test_each_method_gets_one_row_per_draw_and_the_summary_is_their_mean_and_spread(spread):
    _, results = spread
    rows = results["tasks"][TASK]["rows"]
    methods = ["dpfast DPS λ = 1", "dpfast x̂0 λ = 0"] + (["deepinv DPS α = 1"] if deepinv_available() else [])
    assert [(row["method"], row["draw"]) for row in rows] == [(method, draw) for method in methods for draw in (0, 1)]
    for method, summary in results["tasks"][TASK]["summary"].items():
        mse = [row["mse"] for row in rows if row["method"] == method]
        assert summary["mse"]["mean"] == pytest.approx(statistics.fmean(mse))
        assert summary["mse"]["std"] == pytest.approx(statistics.stdev(mse))
        assert mse[0] != mse[1]  # another seed, another chain
    assert results["images"] == 4 and results["steps"] == 8 and results["draws"] == 2


def test_draw_zero_repeats_the_runs_own_chain_seeds(spread):
    _, results = spread
    test, _ = images.test_and_reference(4)
    task = images.TASKS_BY_NAME[TASK]
    y = task.measure(test, seed=images.TEST_SEED)
    from dpfast.models.loading import load_builtin

    lam_one = traverse_task(load_builtin(), replace(task, zeta=("beta", 80.0)), y, [1.0], 8, seed=0)[0]
    draw_zero = next(row for row in results["tasks"][TASK]["rows"] if row["method"] == "dpfast DPS λ = 1")
    assert draw_zero["mse"] == pytest.approx(float(metrics.mse(lam_one, test).mean()), rel=1e-6)


def test_a_second_run_reads_the_stored_chains_back(spread, monkeypatch):
    out, results = spread
    monkeypatch.setattr(seed_spread, "traverse_task", lambda *args, **kwargs: pytest.fail("a stored chain was recomputed"))
    monkeypatch.setattr("dpfast.baselines.deepinv_dps.deepinv_restoration",
                        lambda *args, **kwargs: pytest.fail("a stored deepinv chain was recomputed"))
    again = seed_spread.run(out, quick=True)
    assert again["tasks"][TASK]["rows"] == results["tasks"][TASK]["rows"]
    assert (out / "seed_spread.json").is_file()


def test_bad_sources_and_arguments_are_refused_by_name(tmp_path):
    with pytest.raises(FileNotFoundError, match="no images run there"):
        seed_spread.run(tmp_path, quick=True)
    unfinished = {"key": SOURCE["key"], "tasks": {TASK: {"zeta": SOURCE["tasks"][TASK]["zeta"]}}}
    (tmp_path / "images.partial.json").write_text(json.dumps(unfinished))
    with pytest.raises(ValueError, match="has not finished its x0_zeta search"):
        seed_spread.run(tmp_path, quick=True)
    with pytest.raises(ValueError, match=r"task_names must be a non-empty selection of .*got \['denoise'\]"):
        seed_spread.run(tmp_path, quick=True, task_names=["denoise"])
    (tmp_path / "images.partial.json").write_text(json.dumps(SOURCE))
    with pytest.raises(ValueError, match="draws must be >= 2 .*got 1"):
        seed_spread.run(tmp_path, quick=True, draws=1)
