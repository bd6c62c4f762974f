from dpfast.demo import run_demo


def test_demo_moves_along_the_dp_tradeoff(tmp_path):
    """2 000 samples, 60 steps, fixed seeds: MSE rises and W2 falls from λ = 0 to λ = 1."""
    rows = run_demo(tmp_path, samples=2_000, steps=60)
    by_lam = {row["lam"]: row for row in rows}
    assert by_lam[0.0]["exact_mse"] < by_lam[0.5]["exact_mse"] < by_lam[1.0]["exact_mse"]
    assert by_lam[0.0]["exact_w2"] > by_lam[0.5]["exact_w2"] > by_lam[1.0]["exact_w2"]
    assert (tmp_path / "demo.png").stat().st_size > 10_000
