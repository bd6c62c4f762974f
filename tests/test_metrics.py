"""Image-quality metrics: MSE/PSNR by hand, SSIM against a direct float64 definition, FD against closed forms."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from dpfast.metrics import (
    feature_statistics,
    fd,
    frechet_distance,
    gaussian_window,
    mse,
    psnr,
    ssim,
)


def flatten_features(images: torch.Tensor) -> torch.Tensor:
    """The identity "network": each image's pixels are its features."""
    return images.flatten(1)


def random_images(batch: int, channels: int = 1, size: int = 32, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(batch, channels, size, size, generator=generator) * 2 - 1


def smooth_images(batch: int, channels: int = 1, size: int = 32, seed: int = 0) -> torch.Tensor:
    """Images with structure (blurred noise), so that SSIM reacts to added noise as on real images."""
    generator = torch.Generator().manual_seed(seed)
    noise = torch.randn(batch, channels, size + 6, size + 6, generator=generator)
    blurred = torch.nn.functional.avg_pool2d(noise, kernel_size=7, stride=1)
    return (blurred / blurred.abs().amax()).clamp(-1, 1)


# ---------------------------------------------------------------- MSE and PSNR


def test_mse_and_psnr_match_hand_computed_values():
    x = torch.zeros(2, 1, 2, 2)
    y = torch.tensor([[[[0.5, 0.5], [0.5, 0.5]]], [[[1.0, 0.0], [0.0, 0.0]]]])
    # Image 0: every error 0.5 -> MSE 0.25; image 1: one error of 1 in 4 pixels -> MSE 0.25.
    torch.testing.assert_close(mse(x, y), torch.tensor([0.25, 0.25]))
    # PSNR = 10 log10(2² / 0.25) = 10 log10(16) = 12.0412 dB.
    torch.testing.assert_close(psnr(x, y), torch.full((2,), 10 * math.log10(16.0)))
    # For [0, 1] images (data range 1): 10 log10(1 / 0.25) = 6.0206 dB.
    torch.testing.assert_close(psnr(x, y, data_range=1.0), torch.full((2,), 10 * math.log10(4.0)))


def test_mse_averages_over_channels_and_pixels_per_image():
    x = torch.zeros(3, 3, 4, 5)
    y = torch.zeros(3, 3, 4, 5)
    y[1, 2, 3, 4] = 6.0  # one error of 6 among 60 values -> 36 / 60
    torch.testing.assert_close(mse(x, y), torch.tensor([0.0, 0.6, 0.0]))


def test_psnr_of_identical_images_is_infinite():
    images = random_images(2)
    assert torch.isinf(psnr(images, images)).all()


def test_float64_inputs_give_float64_results():
    x = random_images(2).double()
    y = random_images(2, seed=1).double()
    assert mse(x, y).dtype == torch.float64
    assert psnr(x, y).dtype == torch.float64
    assert ssim(x, y).dtype == torch.float64


# ---------------------------------------------------------------- SSIM


def ssim_direct(x: np.ndarray, y: np.ndarray, data_range: float = 2.0) -> float:
    """SSIM of one (C, H, W) image by its definition: a loop over every full 11×11 window, float64."""
    offsets = np.arange(11) - 5.0
    weights_1d = np.exp(-(offsets**2) / (2 * 1.5**2))
    weights = np.outer(weights_1d, weights_1d)
    weights /= weights.sum()
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    channels, height, width = x.shape
    channel_means = []
    for channel in range(channels):
        values = []
        for top in range(height - 10):
            for left in range(width - 10):
                patch_x = x[channel, top : top + 11, left : left + 11]
                patch_y = y[channel, top : top + 11, left : left + 11]
                mean_x, mean_y = (weights * patch_x).sum(), (weights * patch_y).sum()
                variance_x = (weights * (patch_x - mean_x) ** 2).sum()
                variance_y = (weights * (patch_y - mean_y) ** 2).sum()
                covariance = (weights * (patch_x - mean_x) * (patch_y - mean_y)).sum()
                values.append(
                    (2 * mean_x * mean_y + c1) * (2 * covariance + c2)
                    / ((mean_x**2 + mean_y**2 + c1) * (variance_x + variance_y + c2))
                )
        channel_means.append(np.mean(values))
    return float(np.mean(channel_means))


@pytest.mark.parametrize("channels, height, width", [(1, 13, 14), (3, 12, 11)], ids=["gray-13x14", "rgb-12x11"])
def test_ssim_matches_direct_float64_definition(channels, height, width):
    generator = torch.Generator().manual_seed(3)
    x = torch.rand(2, channels, height, width, generator=generator, dtype=torch.float64) * 2 - 1
    y = (x + 0.3 * torch.randn(x.shape, generator=generator, dtype=torch.float64)).clamp(-1, 1)
    expected_values = [ssim_direct(x[index].numpy(), y[index].numpy()) for index in range(2)]
    expected = torch.tensor(expected_values, dtype=torch.float64)
    torch.testing.assert_close(ssim(x, y), expected, rtol=1e-10, atol=1e-12)
    # The float32 path agrees with the float64 definition to float32 rounding.
    torch.testing.assert_close(ssim(x.float(), y.float()), expected.float(), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("channels", [1, 3], ids=["gray", "rgb"])
def test_ssim_of_identical_images_is_one(channels):
    images = random_images(3, channels=channels)
    torch.testing.assert_close(ssim(images, images), torch.ones(3))


def test_ssim_decreases_as_noise_grows():
    clean = smooth_images(4)
    generator = torch.Generator().manual_seed(1)
    noise = torch.randn(clean.shape, generator=generator)
    scores = torch.stack([ssim(clean, clean + level * noise) for level in (0.0, 0.05, 0.1, 0.2, 0.4)])
    assert (scores[1:] < scores[:-1]).all(), scores


def test_ssim_averages_channels():
    x = random_images(2, channels=2)
    y = random_images(2, channels=2, seed=1)
    per_channel = torch.stack([ssim(x[:, [channel]], y[:, [channel]]) for channel in range(2)])
    torch.testing.assert_close(ssim(x, y), per_channel.mean(dim=0))


def test_gaussian_window_is_normalised_and_symmetric():
    window = gaussian_window()
    assert window.shape == (11,)
    torch.testing.assert_close(window.sum(), torch.tensor(1.0, dtype=torch.float64))
    torch.testing.assert_close(window, window.flip(0))
    assert window.argmax() == 5


# ---------------------------------------------------------------- input validation


@pytest.mark.parametrize("metric", [mse, psnr, ssim], ids=["mse", "psnr", "ssim"])
def test_distortion_metrics_reject_bad_inputs_naming_the_argument(metric):
    images = random_images(2)
    with pytest.raises(ValueError, match=r"y must have the shape of x"):
        metric(images, images[:1])
    with pytest.raises(TypeError, match=r"x must have a floating-point dtype"):
        metric(images.to(torch.int64), images)
    with pytest.raises(ValueError, match=r"y holds 1 NaN or Inf"):
        bad = images.clone()
        bad[0, 0, 0, 0] = float("nan")
        metric(images, bad)
    with pytest.raises(ValueError, match=r"x must have shape \(B, C, H, W\)"):
        metric(images[0], images[0])
    with pytest.raises(TypeError, match=r"x must be a torch.Tensor"):
        metric(images.numpy(), images)


def test_ssim_rejects_images_smaller_than_its_window():
    images = random_images(1, size=10)
    with pytest.raises(ValueError, match=r"at least 11x11 pixels.*got 10x10"):
        ssim(images, images)


def test_psnr_rejects_non_positive_data_range():
    images = random_images(1)
    with pytest.raises(ValueError, match=r"data_range must be positive"):
        psnr(images, images, data_range=0.0)
    with pytest.raises(ValueError, match=r"data_range must lie in"):
        psnr(images, images, data_range=-1.0)


@pytest.mark.parametrize("metric", [psnr, ssim])
def test_images_on_another_scale_than_data_range_are_refused(metric):
    clean = random_images(2)
    with pytest.raises(ValueError, match=r"more than data_range=2: pass the images' own scale"):
        metric((clean + 1) * 127.5, (clean.flip(0) + 1) * 127.5)
    assert torch.isfinite(metric((clean + 1) * 127.5, (clean.flip(0) + 1) * 127.5, data_range=255.0)).all()
    noisy = clean + 0.5 * torch.randn(clean.shape, generator=torch.Generator().manual_seed(1))
    assert torch.isfinite(metric(noisy, clean)).all()  # a noisy measurement against clean images is fine


def test_frechet_distance_refuses_a_non_symmetric_covariance():
    mean, skewed = torch.zeros(2), torch.tensor([[1.0, 0.5], [0.0, 1.0]])
    with pytest.raises(ValueError, match="covariance_b must be symmetric"):
        frechet_distance(mean, torch.eye(2), mean, skewed)


def test_fd_needs_two_images_per_set_and_matching_shapes():
    images = random_images(4)
    with pytest.raises(ValueError, match=r"images_b must hold at least 2 images.*got 1"):
        fd(images, images[:1], network=flatten_features)
    with pytest.raises(ValueError, match=r"images_b must hold images of the shape"):
        fd(images, random_images(4, size=16), network=flatten_features)
    with pytest.raises(ValueError, match=r"network must return features of shape \(4, F\)"):
        fd(images, images, network=lambda batch: batch)


# ---------------------------------------------------------------- Fréchet distance


def gaussian_samples(mean: torch.Tensor, covariance_root: torch.Tensor, count: int, seed: int) -> torch.Tensor:
    """``count`` samples of N(mean, R Rᵀ), whitened first so that their sample mean and
    covariance equal ``mean`` and ``R Rᵀ`` exactly, shaped as (count, d, 1, 1) images."""
    generator = torch.Generator().manual_seed(seed)
    dimension = mean.shape[0]
    noise = torch.randn(count, dimension, generator=generator, dtype=torch.float64)
    noise = noise - noise.mean(dim=0)
    sample_covariance = noise.T @ noise / (count - 1)
    whitened = noise @ torch.linalg.inv(torch.linalg.cholesky(sample_covariance)).T
    return (mean + whitened @ covariance_root.T)[:, :, None, None]


def test_fd_of_gaussians_matches_closed_form_with_identity_network():
    dimension, count = 6, 200
    generator = torch.Generator().manual_seed(0)
    mean_a = torch.randn(dimension, generator=generator, dtype=torch.float64)
    mean_b = torch.randn(dimension, generator=generator, dtype=torch.float64)
    root_a = torch.randn(dimension, dimension, generator=generator, dtype=torch.float64)
    root_b = torch.randn(dimension, dimension, generator=generator, dtype=torch.float64)
    covariance_a, covariance_b = root_a @ root_a.T, root_b @ root_b.T
    samples_a = gaussian_samples(mean_a, root_a, count, seed=1)
    samples_b = gaussian_samples(mean_b, root_b, count, seed=2)

    # Closed form through the symmetric root: tr (Σa Σb)^{1/2} = tr (Σa^{1/2} Σb Σa^{1/2})^{1/2}.
    eigenvalues, eigenvectors = torch.linalg.eigh(covariance_a)
    root_of_a = eigenvectors @ torch.diag(eigenvalues.sqrt()) @ eigenvectors.T
    cross_trace = torch.linalg.eigvalsh(root_of_a @ covariance_b @ root_of_a).clamp_min(0).sqrt().sum()
    expected = float((mean_a - mean_b).square().sum() + covariance_a.trace() + covariance_b.trace() - 2 * cross_trace)

    assert fd(samples_a, samples_b, network=flatten_features) == pytest.approx(expected, rel=1e-9)


def test_fd_of_isotropic_gaussians_is_mean_gap_plus_scale_gap():
    # N(m_a, a² I) vs N(m_b, b² I) in d dimensions: ‖m_a − m_b‖² + d (a − b)².
    dimension, count = 4, 100
    mean_a, mean_b = torch.zeros(dimension, dtype=torch.float64), torch.full((dimension,), 0.5, dtype=torch.float64)
    samples_a = gaussian_samples(mean_a, 1.0 * torch.eye(dimension, dtype=torch.float64), count, seed=1)
    samples_b = gaussian_samples(mean_b, 3.0 * torch.eye(dimension, dtype=torch.float64), count, seed=2)
    expected = dimension * 0.5**2 + dimension * (1.0 - 3.0) ** 2
    assert fd(samples_a, samples_b, network=flatten_features) == pytest.approx(expected, rel=1e-9)


def test_fd_of_a_set_with_itself_is_zero_and_fd_is_symmetric():
    images_a = random_images(64, size=4)
    images_b = random_images(64, size=4, seed=1) * 0.5
    assert fd(images_a, images_a, network=flatten_features) == pytest.approx(0.0, abs=1e-9)
    forward = fd(images_a, images_b, network=flatten_features)
    backward = fd(images_b, images_a, network=flatten_features)
    assert forward > 0
    assert backward == pytest.approx(forward, rel=1e-9)


def test_frechet_distance_handles_singular_covariances():
    # 5 samples in 16 dimensions: rank-4 covariances whose product has no clean root.
    images_a = random_images(5, size=4)
    images_b = random_images(5, size=4, seed=1)
    statistics_a = feature_statistics(images_a, flatten_features)
    statistics_b = feature_statistics(images_b, flatten_features)
    distance = frechet_distance(*statistics_a, *statistics_b)
    assert math.isfinite(distance) and distance > 0
    assert frechet_distance(*statistics_a, *statistics_a) == pytest.approx(0.0, abs=1e-6)


def test_feature_statistics_match_numpy_and_do_not_depend_on_batch_size():
    images = random_images(37, size=3)
    mean, covariance = feature_statistics(images, flatten_features, batch_size=5)
    features = images.flatten(1).double().numpy()
    np.testing.assert_allclose(mean.numpy(), features.mean(axis=0), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(covariance.numpy(), np.cov(features, rowvar=False), rtol=1e-10, atol=1e-12)
    mean_one_batch, covariance_one_batch = feature_statistics(images, flatten_features, batch_size=256)
    torch.testing.assert_close(mean_one_batch, mean)
    torch.testing.assert_close(covariance_one_batch, covariance)


def test_frechet_distance_rejects_mismatched_statistics():
    mean, covariance = torch.zeros(3), torch.eye(3)
    with pytest.raises(ValueError, match=r"covariance_b must have shape \(3, 3\)"):
        frechet_distance(mean, covariance, mean, torch.eye(4))
    with pytest.raises(ValueError, match=r"mean_a must be 1-dimensional"):
        frechet_distance(covariance, covariance, mean, covariance)


# ---------------------------------------------------------------- FD with the shipped feature network


@pytest.fixture(scope="module")
def fashion_test_images():
    from dpfast.data import load_fashion_mnist

    try:
        images, _ = load_fashion_mnist("test", limit=256)
    except FileNotFoundError as error:
        pytest.skip(f"Fashion-MNIST is not installed (Debian package dataset-fashion-mnist): {error}")
    return images


def test_fd_with_feature_network_grows_with_noise_and_blur(fashion_test_images):
    # 128 images per set: the estimate is biased upward at this size (about 35-60 between
    # two clean sets), but the same candidates with growing corruption still order cleanly
    # (measured 46 < 79 < 243 for noise, 46 < 154 < 290 for blur).
    from dpfast.models.features import load_feature_network

    network = load_feature_network().features
    reference, candidates = fashion_test_images[:128], fashion_test_images[128:]
    generator = torch.Generator().manual_seed(0)
    noise = torch.randn(candidates.shape, generator=generator)
    noisy = [(candidates + level * noise).clamp(-1, 1) for level in (0.1, 0.3)]
    blurred = [
        torch.nn.functional.avg_pool2d(candidates, size, stride=1, padding=size // 2, count_include_pad=False)
        for size in (3, 5)
    ]
    reference_statistics = feature_statistics(reference, network)
    clean_statistics = feature_statistics(candidates, network)
    clean_distance = frechet_distance(*clean_statistics, *reference_statistics)
    assert frechet_distance(*reference_statistics, *clean_statistics) == pytest.approx(clean_distance, rel=1e-6)
    for corrupted in (noisy, blurred):
        distances = [
            frechet_distance(*feature_statistics(images, network), *reference_statistics) for images in corrupted
        ]
        assert clean_distance < distances[0] < distances[1], (clean_distance, distances)


def test_fd_of_a_set_with_itself_is_zero_with_the_default_network(fashion_test_images):
    images = fashion_test_images[:64]
    assert fd(images, images) == pytest.approx(0.0, abs=1e-6)
