"""`make demo` on a few of the bundled test images with few steps, and the ζ search it documents."""
import numpy as np
import pytest
import torch

from dpfast.demo import DEMO_TASKS, DPS_DEMO_TASKS, run_demo, search_demo_step_sizes
from dpfast.experiments.image_tasks import ImageTask, dp_rows, search_zeta
from dpfast.models.toy import ToyConvScore


def _averaged_curve(results):
    mse = np.mean([[row["mse"] for row in rows] for rows in results.values()], axis=0)
    fd = np.mean([[row["fd"] for row in rows] for rows in results.values()], axis=0)
    return mse, fd


def test_demo_moves_along_the_dp_tradeoff(tmp_path):
    """All 8 bundled images (FD on 4 is too coarse to rank: there the most accurate end also had
    the lowest FD), 40 steps, seed 0: averaged over the three tasks, MSE rises and FD falls from
    λ = 0 to λ = 1. Measured (x̂0 guidance, the demo's; AVX-512 CPU, 2026-11-29): MSE 0.0199 / 0.0220 /
    0.0307, FD 60.0 / 63.9 / 54.8 at λ = 0 / 0.5 / 1 (torch's AVX2 kernels: the same MSE, FD 59.9 / 63.9 /
    54.6) — FD is not monotone in between (docs/MODEL_CARD.md, "Demo")."""
    lams = (0.0, 0.5, 1.0)
    assert all(task.guidance == "x0" for task in DEMO_TASKS) and all(task.guidance == "dps" for task in DPS_DEMO_TASKS)
    results = run_demo(tmp_path, steps=40, images=8, lams=lams, progress=False)
    assert list(results) == [task.name for task in DEMO_TASKS]
    mse, fd = _averaged_curve(results)
    numbers = dict(mse=mse.round(4).tolist(), fd=fd.round(1).tolist())
    assert mse[0] < mse[1] < mse[2], numbers
    assert fd[-1] < fd[0], numbers
    assert (tmp_path / "grid.png").stat().st_size > 5_000 and (tmp_path / "dp_curve.png").stat().st_size > 5_000


@pytest.mark.xfail(strict=True, raises=AssertionError, reason=(
    "DPS guidance (through the network), the demo's guidance until 2026-11-29: with the shipped weights (step "
    "14,467) the mean MSE at λ = 0 is 2–3× λ = 1's (0.107 vs 0.033 on an AVX2 CPU, 0.103 vs 0.039 on an AVX-512 "
    "one) while FD falls; more steps do not fix it (`dpfast reproduce step_count`), x̂0 guidance does "
    "(docs/RESULTS.md §4, 'x̂0 guidance')"))
def test_the_dps_guided_demo_settings_do_not_reach_the_mse_end(tmp_path):
    """The same check with DPS_DEMO_TASKS, 4 images, 40 steps: kept so that the DPS gap stays on record."""
    results = run_demo(tmp_path, steps=40, images=4, lams=(0.0, 0.5, 1.0), tasks=DPS_DEMO_TASKS, progress=False)
    mse, fd = _averaged_curve(results)
    if not fd[-1] < fd[0]:  # not the expected failure: pytest.fail is no AssertionError, so the xfail does not cover it
        pytest.fail(f"FD did not fall from λ = 0 to λ = 1: {fd.round(1).tolist()}")
    assert mse[0] < mse[-1], dict(mse=mse.round(4).tolist(), fd=fd.round(1).tolist())


def test_demo_rejects_an_image_count_it_does_not_have(tmp_path):
    with pytest.raises(ValueError, match="images must be between 2 and 8"):
        run_demo(tmp_path, images=9)


def test_zeta_search_picks_the_lowest_mse_per_lam():
    torch.manual_seed(0)
    model = ToyConvScore((1, 32, 32), hidden=8).eval()
    images = torch.rand(2, 1, 32, 32) * 2 - 1
    lines = []
    chosen = search_zeta(model, ImageTask("denoise", 0.1, 1.0), images, [0.0, 1.0], [0.1, 1.0], steps=3, log=lines.append)
    assert set(chosen) == {0.0, 1.0} and set(chosen.values()) <= {0.1, 1.0}
    assert len(lines) == 2 and "c 0.1" in lines[0]


def test_dp_rows_check_the_shapes():
    truth = torch.zeros(3, 1, 32, 32)
    with pytest.raises(ValueError, match=r"restorations must have shape \(2, \*\(3, 1, 32, 32\)\)"):
        dp_rows(truth, torch.zeros(3, 3, 1, 32, 32), [0.0, 1.0])


def test_demo_step_size_search_returns_each_tasks_winners_in_demo_tasks_form():
    torch.manual_seed(0)
    model = ToyConvScore((1, 32, 32), hidden=8).eval()
    images = torch.rand(2, 1, 32, 32) * 2 - 1
    tasks = (ImageTask("denoise", 0.2, 1.0), ImageTask("deblur", 0.05, 1.0, zeta_schedule="constant"))
    grids = {"denoise": (("beta", 1.0), ("beta", 100.0)), "deblur": (("constant", 0.1),)}
    lines = []
    chosen = search_demo_step_sizes(model, images, steps=3, tasks=tasks, grids=grids, log=lines.append)
    denoise, deblur = (task.name for task in tasks)
    assert set(chosen) == {denoise, deblur}
    assert set(chosen[denoise]) == {0.0, 1.0} and set(chosen[denoise].values()) <= set(grids["denoise"])
    assert chosen[deblur] == {0.0: ("constant", 0.1), 1.0: ("constant", 0.1)}
    assert lines[2].startswith(f"{denoise}: chose λ 0: c ")
    # two β-scaled choices: whichever wins is on the grid's edge, and the search says so; one constant choice is no grid
    assert sum("is on the edge of its grid [1.0, 100.0]" in line for line in lines) == 2
    assert not any("edge" in line and deblur in line for line in lines)
    ImageTask("denoise", 0.2, chosen[denoise])  # the winners are a valid zeta mapping
    with pytest.raises(ValueError, match=r"grids has no choices for the task kind\(s\) \['deblur'\]"):
        search_demo_step_sizes(model, images, steps=3, tasks=tasks, grids={"denoise": grids["denoise"]})
