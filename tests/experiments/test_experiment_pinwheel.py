"""The pinwheel experiment with the shipped MLP: λ = 0 trades W2 for MSE, λ = 1 the reverse.

Quick version: 300 test points, 50 DPS steps, ζ(0) = 0.025 and ζ(1) = 0.1 (the tuned
values scaled to 50 steps), seed 0. The MSE difference is between paired estimates of the
same 300 points; its standard error is ≈ 0.015. W2 is exact OT between 300-point sets
(the floor between two clean sets of 300 is ≈ 0.15). Over 10 seeds (0, 10 000, ..., 90 000)
the gap MSE(λ=1) − MSE(λ=0) ranged over 0.099–0.130 and W2(λ=0) − W2(λ=1) over 0.103–0.146,
so the asserted margins (0.05 each) sit about half-way to zero; MSE(λ=0) was 1.04–1.11× the
oracle MMSE, and DDIM η = 1 differed from λ = 1 by at most 5e-4.
"""
import json

import pytest
import torch

from dpfast.experiments import pinwheel
from dpfast.sampler import Sampler

MSE_MARGIN = 0.05  # MSE(λ=1) − MSE(λ=0)
W2_MARGIN = 0.05  # W2(λ=0) − W2(λ=1)


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    out_dir = tmp_path_factory.mktemp("pinwheel")
    return out_dir, pinwheel.run(out_dir, quick=True, seed=0)


def _by_lam(numbers, key="lam_sweep"):
    return {row["lam"]: row for row in numbers[key]}


def test_lambda_zero_has_lower_mse_and_lambda_one_lower_w2(results):
    _, numbers = results
    rows = _by_lam(numbers)
    assert rows[1.0]["mse"] - rows[0.0]["mse"] > MSE_MARGIN, rows
    assert rows[0.0]["w2"] - rows[1.0]["w2"] > W2_MARGIN, rows


def test_lambda_zero_comes_close_to_the_oracle_mmse(results):
    _, numbers = results
    assert _by_lam(numbers)[0.0]["mse"] < 1.15 * numbers["oracle"]["mmse"]["mse"]


def test_averaging_posterior_samples_lowers_the_mse(results):
    _, numbers = results
    mse = [row["mse"] for row in numbers["averaging"]]
    assert mse == sorted(mse, reverse=True)


def test_ddim_eta_one_is_the_lambda_one_chain(results):
    """Same mean, variance and counter-based noise: the same samples up to float32 rounding."""
    _, numbers = results
    assert numbers["ddim_eta1_max_abs_difference_to_lam1"] < 1e-3
    assert numbers["ddim"][-1]["mse"] == pytest.approx(_by_lam(numbers)[1.0]["mse"], rel=1e-3)


def test_writes_small_figures_and_json(results):
    out_dir, numbers = results
    for name in numbers["figures"]:
        assert 5_000 < (out_dir / name).stat().st_size < 200_000, name
    written = json.loads((out_dir / "pinwheel.json").read_text())
    assert set(written) >= {"lam_sweep", "averaging", "ddim", "oracle", "floor", "meta"}


def test_shipped_weights_load_strictly_and_give_an_mlp_score_model():
    model = pinwheel.load_pinwheel_mlp()
    assert model.image_shape == (2,) and model.default_clip_denoised is False
    sampler = Sampler(model, None, steps=10, guidance="none")
    assert sampler.sample(4, lam=1.0, seed=0).shape == (4, 2)


def test_pinwheel_data_is_deterministic_in_its_seed():
    torch.testing.assert_close(pinwheel.pinwheel_samples(100, seed=3), pinwheel.pinwheel_samples(100, seed=3))
    assert not torch.equal(pinwheel.pinwheel_samples(100, seed=3), pinwheel.pinwheel_samples(100, seed=4))
