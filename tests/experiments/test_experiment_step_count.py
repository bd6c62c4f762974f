"""`step_count`: the demo's tasks at λ = 0 and 1 for several step counts."""
from dpfast.experiments import step_count


def test_quick_run_reports_every_task_step_count_and_lam(tmp_path):
    results = step_count.run(tmp_path, quick=True)
    rows = results["rows"]
    expected = [(steps, lam) for steps in step_count.QUICK_STEP_COUNTS for lam in step_count.LAMS]
    assert [(row["steps"], row["lam"]) for row in rows] == expected
    assert {row["task"] for row in rows} == {"denoise σn=0.2"}
    assert all(0.0 < row["mse"] < 4.0 and row["fd"] > 0.0 and row["seconds"] > 0.0 for row in rows)
    # each step count is its own chain: 3 and 6 steps cannot give the same restorations
    assert rows[0]["mse"] != rows[2]["mse"]
    assert (tmp_path / "step_count.json").is_file() and (tmp_path / "step_count.png").stat().st_size > 5_000
