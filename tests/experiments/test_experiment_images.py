"""`dpfast reproduce images --quick`: 4 held-out test images, 8 steps, one task (denoising σ_n = 0.1).

Needs the built-in model's weights and the Fashion-MNIST dataset (`.ci/run` installs it).
"""
import importlib.util
import math

import pytest

from dpfast.data import FASHION_MNIST_DIR
from dpfast.experiments import images

pytestmark = pytest.mark.skipif(not (FASHION_MNIST_DIR / "t10k-images-idx3-ubyte.gz").is_file(),
                                reason="Fashion-MNIST is not installed (apt-get install dataset-fashion-mnist)")


def test_quick_run_writes_every_series_and_the_figure(tmp_path):
    results = images.run(tmp_path, quick=True)
    (task,) = results["tasks"].values()
    assert [row["lam"] for row in task["lam_sweep"]] == [0.0, 1.0]
    assert [row["samples"] for row in task["averaging"]] == [1, 2]
    assert [row["eta"] for row in task["ddim"]] == [0.0]
    assert set(task["zeta"]) == {"0.0", "1.0"}
    assert all(schedule in ("beta", "constant") for schedule, _ in task["zeta"].values())
    if importlib.util.find_spec("deepinv") is not None:  # a test extra; `.ci/run` installs it
        (deepinv_row,) = task["deepinv"]
        assert deepinv_row["alpha"] == 1.0 and deepinv_row["weight"] in (3.0, 30.0)
        assert math.isfinite(deepinv_row["mse"]) and math.isfinite(deepinv_row["fd"])
    else:
        assert "deepinv" not in task
    for series in ("lam_sweep", "averaging", "ddim"):
        for row in task[series]:
            assert row["mse"] > 0 and row["fd"] >= 0 and 0 < row["ssim"] <= 1
    assert (tmp_path / "images.json").is_file() and (tmp_path / "images_dp_curve.png").stat().st_size > 5_000
    # averaging one λ = 1 draw is the λ = 1 point itself
    assert task["averaging"][0]["mse"] == pytest.approx(task["lam_sweep"][-1]["mse"], rel=1e-6)
