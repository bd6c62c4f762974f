"""`score_swap`: the same DPS with the network, an exact Gaussian score, and the two mixed."""
import math

import numpy as np
import pytest
import torch

from dpfast import Sampler
from dpfast.data import FASHION_MNIST_DIR
from dpfast.experiments import score_swap
from dpfast.experiments.common import record_trajectory
from dpfast.models.analytic import GaussianScore
from dpfast.models.toy import ToyConvScore
from dpfast.schedule import Schedule

needs_fashion_mnist = pytest.mark.skipif(
    not (FASHION_MNIST_DIR / "train-images-idx3-ubyte.gz").is_file(),
    reason="Fashion-MNIST is not installed (apt-get install dataset-fashion-mnist)",
)


def test_noise_fraction_matches_the_sampler_on_a_point_mass_prior():
    # Prior N(0, 1e-10 I): x̂0 = 0 at every step, so x_t is pure leftover noise and its
    # norm over √(1−ᾱ_t) ‖x_T‖ is the fraction the formula predicts.
    schedule = Schedule.linear(1000)
    prior = GaussianScore(torch.zeros(256), 1e-10 * torch.eye(256), schedule=schedule)
    sampler = Sampler(prior, guidance="none", steps=20, clip_denoised=False)
    timesteps, states = record_trajectory(sampler, [0.0], 3, every=1)
    expected_t, fraction = score_swap.deterministic_noise_fraction(schedule, 20)
    np.testing.assert_array_equal(timesteps[1:-1], expected_t)
    alphas_cumprod = np.asarray(schedule.alphas_cumprod, dtype=np.float64)
    start = float(states[0].double().norm()) / math.sqrt(1.0 - alphas_cumprod[timesteps[0]])
    measured = [float(state.double().norm()) / math.sqrt(1.0 - alphas_cumprod[t]) / start
                for t, state in zip(timesteps[1:-1], states[1:-1])]
    np.testing.assert_allclose(measured, fraction, rtol=1e-3)
    assert fraction[0] < 1.0 and np.all(np.diff(fraction) < 0)


def test_switched_score_uses_each_model_on_its_side_of_the_switch():
    torch.manual_seed(0)
    low, high = ToyConvScore((1, 8, 8), seed=0), ToyConvScore((1, 8, 8), seed=1)
    switched = score_swap.SwitchedScore(low, high, switch=500)
    x = torch.randn(3, 1, 8, 8)
    t = torch.tensor([10, 500, 900])
    with torch.no_grad():
        out = switched(x, t)
        torch.testing.assert_close(out[0], low(x, t)[0])
        torch.testing.assert_close(out[1:], high(x, t)[1:])
        torch.testing.assert_close(switched(x, torch.full((3,), 999)), high(x, torch.full((3,), 999)))
    with pytest.raises(ValueError, match="switch must be in"):
        score_swap.SwitchedScore(low, high, switch=1000)


def test_gaussian_image_prior_is_the_flattened_gaussian_score():
    torch.manual_seed(1)
    images = torch.randn(50, 1, 4, 4)
    prior = score_swap.GaussianImagePrior(images, Schedule.linear(1000))
    x, t = torch.randn(2, 1, 4, 4), torch.tensor([100, 700])
    torch.testing.assert_close(prior(x, t), prior.prior(x.reshape(2, -1), t).reshape(2, 1, 4, 4))
    with pytest.raises(ValueError, match="images must have shape"):
        score_swap.GaussianImagePrior(images[:1], Schedule.linear(1000))


@needs_fashion_mnist
def test_quick_run_restores_with_every_score(tmp_path):
    results = score_swap.run(tmp_path, quick=True)
    assert list(results["scores"]) == ["network", "gaussian", "network, gaussian t≥600", "network, gaussian t≥300"]
    for rows in results["scores"].values():
        assert [row["lam"] for row in rows] == [0.0, 1.0]
        assert all(math.isfinite(row["mse"]) and math.isfinite(row["fd"]) for row in rows)
    # The exact score and the network give different restorations of the same measurements.
    assert results["scores"]["gaussian"][0]["mse"] != results["scores"]["network"][0]["mse"]
    assert (tmp_path / "score_swap.json").is_file() and (tmp_path / "score_swap.png").is_file()
