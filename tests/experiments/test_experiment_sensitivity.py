"""`sensitivity`: restorations with the network's output perturbed by rounding-sized noise."""
import pytest
import torch

from dpfast.experiments import sensitivity
from dpfast.models.toy import ToyConvScore


def test_perturbed_score_scales_the_output_by_one_plus_s_z_and_is_exact_at_zero():
    model = ToyConvScore((1, 8, 8), seed=0)
    x, t = torch.randn(3, 1, 8, 8), torch.tensor([10, 500, 900])
    with torch.no_grad():
        clean = model(x, t)
        torch.testing.assert_close(sensitivity.PerturbedScore(model, 0.0, seed=0)(x, t), clean, rtol=0, atol=0)
        perturbed = sensitivity.PerturbedScore(model, 2.0**-9, seed=0)
        first, second = perturbed(x, t), perturbed(x, t)
    z = (first / clean - 1) / 2.0**-9  # the draws, recovered
    assert abs(float(z.mean())) < 0.1 and float(z.std()) == pytest.approx(1.0, rel=0.1)
    assert not torch.equal(first, second)  # a fresh draw per call
    with pytest.raises(ValueError, match="scale must be >= 0, got -1"):
        sensitivity.PerturbedScore(model, -1.0, seed=0)


def test_quick_run_reports_each_lam_unperturbed_and_perturbed(tmp_path):
    results = sensitivity.run(tmp_path, quick=True)
    rows = results["rows"]
    per_guidance = [(0.0, 0.0), (0.0, 1.0), (2.0**-9, 0.0), (2.0**-9, 1.0)]
    assert [(row["guidance"], row["perturbation"], row["lam"]) for row in rows] == [
        (guidance, *case) for guidance in ("dps", "x0") for case in per_guidance]
    for guidance_rows in (rows[:4], rows[4:]):
        assert all(row["moved"] == 0.0 for row in guidance_rows[:2]) and all(row["moved"] > 0.0 for row in guidance_rows[2:])
    assert all(0.0 < row["mse"] < 1.0 for row in rows)
    # the two guidances are different chains: their unperturbed restorations differ
    assert rows[0]["mse"] != rows[4]["mse"]
    assert (tmp_path / "sensitivity.json").is_file()


@pytest.mark.parametrize("guidances, shown", [(("none",), r"\['none'\]"), ((), r"\[\]")])
def test_an_unknown_or_empty_guidance_selection_is_refused(tmp_path, guidances, shown):
    with pytest.raises(ValueError, match=r"guidances must be a non-empty selection of \['dps', 'x0'\], got " + shown):
        sensitivity.run(tmp_path, quick=True, guidances=guidances)
