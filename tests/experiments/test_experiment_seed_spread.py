"""`seed_spread`: the images run's single-chain points again with other seeds (quick version)."""
import copy
import json
import statistics
from dataclasses import replace

import pytest

from dpfast import metrics
from dpfast.baselines.deepinv_dps import deepinv_available
from dpfast.data import fashion_mnist_dir
from dpfast.experiments import images, seed_spread
from dpfast.experiments.image_tasks import traverse_task

needs_fashion_mnist = pytest.mark.skipif(not (fashion_mnist_dir() / "t10k-images-idx3-ubyte.gz").is_file(),
                                         reason="Fashion-MNIST is not installed (apt-get install dataset-fashion-mnist)")

TASK = "denoise σn=0.1"
# what an images run stores for a task (settings and the choices seed_spread reads), small steps for 8-step chains
SOURCE = {"key": {"settings": {"images": 256, "steps": 100, "block_images": 64}},
          "tasks": {TASK: {"zeta": {"0.0": ["beta", 40.0], "1.0": ["beta", 80.0]}, "x0_zeta": {"0.0": ["constant", 1.0]},
                           "deepinv": [{"alpha": 0.0, "weight": 3.0}, {"alpha": 1.0, "weight": 30.0}]}}}


@pytest.fixture(scope="module")
def lam_one_chains():
    """The quick λ = 1 chains seed_spread must run: the images run's own seeds, then draw 1's."""
    from dpfast.models.loading import load_builtin

    test, _ = images.held_out_images(4)
    task = images.TASKS_BY_NAME[TASK]
    y = task.measure(test, seed=images.TEST_SEED)
    return test, [traverse_task(load_builtin(), replace(task, zeta=("beta", 80.0)), y, [1.0], 8, seed=seed)[0]
                  for seed in (0, seed_spread.SPREAD_SEED)]


@pytest.fixture(scope="module")
def spread(tmp_path_factory):
    out = tmp_path_factory.mktemp("seed_spread")
    (out / "images.partial.json").write_text(json.dumps(SOURCE))
    return out, seed_spread.run(out, quick=True)


@needs_fashion_mnist
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
    # what each method ran with is in the JSON; the default source and draws make the command line complete
    assert results["settings"][TASK]["dpfast DPS λ = 1"] == f"{TASK} DPS λ 1, c 80"
    assert results["meta"]["command"] == "python -m dpfast.experiments seed_spread -o OUT --quick --seed 0"


@needs_fashion_mnist
def test_draw_zero_uses_the_runs_own_chain_seeds_and_draw_one_its_own(spread, lam_one_chains):
    _, results = spread
    test, (draw_zero, draw_one) = lam_one_chains
    rows = [row for row in results["tasks"][TASK]["rows"] if row["method"] == "dpfast DPS λ = 1"]
    assert [row["mse"] for row in rows] == pytest.approx([float(metrics.mse(chain, test).mean()) for chain in (draw_zero, draw_one)],
                                                         rel=1e-6)


@needs_fashion_mnist
def test_a_second_run_reads_the_stored_chains_back(spread, monkeypatch):
    out, results = spread
    monkeypatch.setattr(seed_spread, "traverse_task", lambda *args, **kwargs: pytest.fail("a stored chain was recomputed"))
    monkeypatch.setattr("dpfast.baselines.deepinv_dps.deepinv_restoration",
                        lambda *args, **kwargs: pytest.fail("a stored deepinv chain was recomputed"))
    again = seed_spread.run(out, quick=True)
    assert again["tasks"][TASK]["rows"] == results["tasks"][TASK]["rows"]
    assert (out / "seed_spread.json").is_file()


def test_bad_sources_and_arguments_are_refused_by_name(tmp_path):
    # (each is refused before any image is loaded: no dataset needed)
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
    no_lam_one = copy.deepcopy(SOURCE)
    del no_lam_one["tasks"][TASK]["zeta"]["1.0"]
    (tmp_path / "images.partial.json").write_text(json.dumps(no_lam_one))
    with pytest.raises(ValueError, match=r"has no λ = 1 in its zeta search \(λ searched: \[0.0\]\)"):
        seed_spread.run(tmp_path, quick=True)
    # a finished run's images.json wins over a partial file, and its seed must be the one asked for
    finished = {"settings": SOURCE["key"]["settings"], "tasks": SOURCE["tasks"], "meta": {"seed": 3}}
    (tmp_path / "images.json").write_text(json.dumps(finished))
    with pytest.raises(ValueError, match="seed=0: the images run in .* used seed 3; pass that seed"):
        seed_spread.run(tmp_path, quick=True)
    with_key = copy.deepcopy(SOURCE)
    with_key["key"]["model_sha256"] = "0" * 64
    (tmp_path / "images.json").unlink()
    (tmp_path / "images.partial.json").write_text(json.dumps(with_key))
    with pytest.raises(ValueError, match="model: its weights .* are not the ones the images run in .* used \\(000000000000…\\)"):
        seed_spread.run(tmp_path, quick=True)
