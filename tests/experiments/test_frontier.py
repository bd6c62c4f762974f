"""The distortion–perception frontier that docs/RESULTS.md §4's reading of the images run rests on."""
import math

import pytest

from dpfast.experiments import images
from dpfast.experiments.frontier import dominated_by


def test_a_point_better_on_both_axes_dominates_and_the_frontier_is_left_alone():
    beaten = dominated_by([("low distortion", 1.0, 5.0), ("low perception", 5.0, 1.0), ("worse on both", 6.0, 6.0),
                           ("between", 3.0, 3.0)])
    assert beaten == {"low distortion": [], "low perception": [], "worse on both": ["low distortion", "low perception", "between"],
                      "between": []}


def test_equal_on_one_axis_and_better_on_the_other_dominates_but_a_tie_on_both_does_not():
    beaten = dominated_by([("a", 1.0, 2.0), ("b", 1.0, 3.0), ("twin of a", 1.0, 2.0)])
    assert beaten == {"a": [], "b": ["a", "twin of a"], "twin of a": []}


@pytest.mark.parametrize("points, message", [
    ([("a", 1.0, 1.0), ("a", 2.0, 2.0)], "labels must be unique"),
    ([("a", math.nan, 1.0)], "'a' has"),
    ([("a", 1.0, math.inf)], "expected finite"),
])
def test_bad_points_are_refused_with_the_offending_label(points, message):
    with pytest.raises(ValueError, match=message):
        dominated_by(points)


def _row(mse, fd, fd_unpaired, **knob):
    return {"mse": mse, "psnr": 0.0, "ssim": 0.0, "fd": fd, "fd_unpaired": fd_unpaired, **knob}


def test_the_images_reading_names_frontier_dominators_and_leaves_out_the_repeated_lambda_one_chain(capsys):
    task_results = {
        "lam_sweep": [_row(0.05, 30.0, 60.0, lam=0.0, zeta=["beta", 80.0]), _row(0.04, 10.0, 40.0, lam=1.0, zeta=["constant", 3.0])],
        "averaging": [_row(0.04, 10.0, 40.0, samples=1), _row(0.03, 20.0, 70.0, samples=2)],
        # λ = 1's chain with λ = 1's step, a rounding step better: a copy, not a competitor
        "ddim": [_row(0.04, 9.99, 40.0, eta=1.0, zeta=["constant", 3.0])],
    }
    beaten = images._print_frontier("task", task_results)
    # the mean of one sample and DDIM η = 1 with λ = 1's step repeat λ = 1's chain: left out
    assert "mean of 1" not in beaten["fd"] and "DDIM η 1" not in beaten["fd"]
    assert beaten["fd"] == {"DPS λ 0": ["DPS λ 1", "mean of 2"], "DPS λ 1": [], "mean of 2": []}
    # against the unpaired FD, mean of 2 (70) no longer beats λ = 0 (60); λ = 1 (40) still does
    assert beaten["fd_unpaired"] == {"DPS λ 0": ["DPS λ 1"], "DPS λ 1": [], "mean of 2": []}
    # among one-chain methods the mean of 2 samples is out, and λ = 1 alone beats λ = 0
    assert beaten["fd_one_chain"] == {"DPS λ 0": ["DPS λ 1"], "DPS λ 1": []}
    printed = capsys.readouterr().out
    assert "beaten by DPS λ 1, mean of 2" in printed and printed.count("frontier") == 5


def test_ddim_eta_one_with_its_own_step_stays_in_the_images_reading():
    task_results = {"lam_sweep": [_row(0.04, 10.0, 40.0, lam=1.0, zeta=["constant", 3.0])],
                    "ddim": [_row(0.03, 9.0, 39.0, eta=1.0, zeta=["constant", 1.0])]}
    assert images._print_frontier("task", task_results)["fd"] == {"DPS λ 1": ["DDIM η 1"], "DDIM η 1": []}


def test_the_summary_lists_each_tasks_frontier_points(capsys):
    task_results = {"lam_sweep": [_row(0.05, 30.0, 60.0, lam=0.0, zeta=["beta", 80.0]),
                                  _row(0.04, 10.0, 40.0, lam=1.0, zeta=["constant", 3.0])],
                    "averaging": [_row(0.04, 10.0, 40.0, samples=1), _row(0.03, 20.0, 70.0, samples=2)]}
    images._print_frontier_summary({"task a": task_results, "task b": {"lam_sweep": task_results["lam_sweep"][:1]}},
                                   markdown=True)
    printed = capsys.readouterr().out
    # task b has one point: no frontier to speak of, no line
    assert "| task a | DPS λ 1, mean of 2 | DPS λ 1, mean of 2 | DPS λ 1 |" in printed and "task b" not in printed


def test_without_a_lambda_one_point_the_mean_of_one_sample_is_a_chain_of_its_own():
    task_results = {"lam_sweep": [_row(0.05, 30.0, 60.0, lam=0.0, zeta=["beta", 80.0])],
                    "averaging": [_row(0.04, 10.0, 40.0, samples=1)]}
    beaten = images._print_frontier("task", task_results)
    assert beaten["fd"] == {"DPS λ 0": ["mean of 1"], "mean of 1": []}
    assert beaten["fd_one_chain"] == beaten["fd"]  # one sample is one chain


def test_a_point_beaten_through_a_chain_names_only_the_frontier_point(capsys):
    # λ 1 beats λ 0.5 beats λ 0: the table names λ 1, the frontier point, for λ 0
    task_results = {"lam_sweep": [_row(0.05, 30.0, 60.0, lam=0.0, zeta=["beta", 80.0]),
                                  _row(0.04, 20.0, 50.0, lam=0.5, zeta=["beta", 80.0]),
                                  _row(0.03, 10.0, 40.0, lam=1.0, zeta=["beta", 80.0])]}
    beaten = images._print_frontier("task", task_results, markdown=True)
    assert beaten["fd"]["DPS λ 0"] == ["DPS λ 0.5", "DPS λ 1"]
    lines = {line.split("|")[1].strip(): line for line in capsys.readouterr().out.splitlines() if line.startswith("| DPS")}
    assert "| beaten by DPS λ 1 |" in lines["DPS λ 0"] and "DPS λ 0.5," not in lines["DPS λ 0"]


def test_a_diverged_point_is_left_off_the_frontier_not_an_error(capsys):
    task_results = {"lam_sweep": [_row(math.nan, 30.0, None, lam=0.0, zeta=["beta", 80.0]),
                                  _row(0.04, 10.0, 40.0, lam=0.5, zeta=["beta", 80.0]),
                                  _row(0.03, 20.0, 50.0, lam=1.0, zeta=["beta", 80.0])]}
    beaten = images._print_frontier("task", task_results)
    assert "DPS λ 0" not in beaten["fd"] and beaten["fd"] == {"DPS λ 0.5": [], "DPS λ 1": []}
    row_of_lam_zero = next(line for line in capsys.readouterr().out.splitlines() if line.strip().startswith("DPS λ 0 "))
    assert row_of_lam_zero.split()[-3:] == ["-", "-", "-"]
