"""The shipped built-in model: it loads, and it denoises better than any linear estimator.

The quality test needs the Fashion-MNIST dataset (``apt-get install dataset-fashion-mnist``;
`.ci/run` installs it). The Wiener estimator is fitted on all 60 000 training images;
both estimators see the same 512 held-out test images with the same noise.
"""
import pytest
import torch

import dpfast as dp
from dpfast.data import FASHION_MNIST_DIR, load_fashion_mnist
from dpfast.denoising_quality import WienerDenoiser, denoising_mse

HELD_OUT = 512


@pytest.fixture(scope="module")
def builtin():
    return dp.load_model("builtin")


def test_builtin_model_matches_its_preset(builtin):
    assert builtin.image_shape == (1, 32, 32)
    assert builtin.schedule.num_timesteps == 1000 and builtin.default_variance == "fixed_small"
    with torch.no_grad():
        eps = builtin(torch.zeros(2, 1, 32, 32), torch.tensor([0, 999]))
    assert eps.shape == (2, 1, 32, 32) and torch.isfinite(eps).all()


needs_dataset = pytest.mark.skipif(not (FASHION_MNIST_DIR / "t10k-images-idx3-ubyte.gz").is_file(),
                                   reason="Fashion-MNIST is not installed (apt-get install dataset-fashion-mnist)")


@pytest.fixture(scope="module")
def quality(builtin):
    train, _ = load_fashion_mnist("train")
    test, _ = load_fashion_mnist("test", limit=HELD_OUT)
    return {row["t"]: row for row in denoising_mse(builtin, WienerDenoiser.fit(train), test, (100, 300, 600), seed=7)}


@needs_dataset
def test_builtin_model_denoises_held_out_images_30_percent_better_than_wiener_at_t_100_and_300(quality):
    """x̂0 MSE at least 30 % below the Wiener estimator's (shipped weights, step 6094: 0.40 and 0.57)."""
    assert quality[100]["ratio"] <= 0.7, quality[100]
    assert quality[300]["ratio"] <= 0.7, quality[300]


@needs_dataset
def test_builtin_model_denoises_held_out_images_better_than_wiener_at_t_600(quality):
    """Met narrowly by the shipped weights (step 6094: ratio 0.992)."""
    assert quality[600]["ratio"] < 1.0, quality[600]


def test_wiener_estimator_is_the_exact_posterior_mean_for_gaussian_data():
    """On Gaussian data the affine estimator is the MMSE one: it matches GaussianScore's x̂0."""
    generator = torch.Generator().manual_seed(0)
    factor = torch.randn(4, 4, generator=generator, dtype=torch.float64)
    covariance = factor @ factor.T / 4 + 0.1 * torch.eye(4, dtype=torch.float64)
    mean = torch.randn(4, generator=generator, dtype=torch.float64)
    wiener = WienerDenoiser(mean, covariance, (1, 2, 2))
    prior = dp.models.GaussianScore(mean, covariance)
    t = 250
    alpha_bar = float(prior.schedule.alphas_cumprod[t])
    x_t = torch.randn(5, 4, generator=generator, dtype=torch.float64)
    eps = prior(x_t, torch.full((5,), t))
    exact = (x_t - (1 - alpha_bar) ** 0.5 * eps) / alpha_bar**0.5
    torch.testing.assert_close(wiener.x0(x_t.reshape(5, 1, 2, 2), alpha_bar).reshape(5, 4), exact)


@needs_dataset
def test_quality_command_prints_the_table_the_model_card_quotes(capsys, tmp_path):
    from safetensors.torch import save_file

    from dpfast.denoising_quality import main
    from dpfast.models.loading import BUILTIN_ASSET

    shipped = main(["--images", "8", "--times", "100", "600"])
    printed = capsys.readouterr().out
    assert [row["t"] for row in shipped] == [100, 600] and "shipped built-in weights: 8 test images, seed 7" in printed
    assert f"{shipped[1]['ratio']:.3f}" in printed.splitlines()[-1]
    # --weights loads a file with the built-in architecture: zeroed weights predict ε = 0, so x̂0 = x_t / √ᾱ_t
    zeros = {name: torch.zeros_like(value) for name, value in dp.load_model("builtin").unet.state_dict().items()}
    save_file(zeros, tmp_path / "zeros.safetensors")
    (row,) = main(["--weights", str(tmp_path / "zeros.safetensors"), "--images", "8", "--times", "600"])
    assert row["network_mse"] > 10 * shipped[1]["network_mse"]
    with pytest.raises(SystemExit, match="--images must be between 1 and 10000"):
        main(["--images", "0"])
