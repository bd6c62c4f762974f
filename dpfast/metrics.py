"""Image-quality metrics for restorations: distortion (MSE, PSNR, SSIM) and perception (FD).

Images follow dpfast's convention: float tensors ``(B, C, H, W)`` in [-1, 1], so the
data range (max − min of the pixel scale) is 2. ``mse``, ``psnr`` and ``ssim`` compare
two batches image by image and return one value per image, shape ``(B,)``.

``fd`` is the Fréchet distance between Gaussian fits of the feature statistics of two
image *sets*, the FID recipe (Heusel et al., 2017) with dpfast's Fashion-MNIST feature
network (:mod:`dpfast.models.features`) instead of Inception: a distribution-level
measure of perceptual quality, the "P" of the distortion–perception tradeoff.
:func:`feature_statistics` computes the (mean, covariance) of one set so a reference
set's statistics can be computed once and reused with :func:`frechet_distance`.
"""
from __future__ import annotations

import math

import warnings
from typing import Callable

import numpy as np
import scipy.linalg
import torch
import torch.nn.functional as F

from dpfast.validation import check_number, check_positive_int, check_tensor

IMAGE_DATA_RANGE = 2.0  # images in [-1, 1]
# psnr/ssim refuse images that both span more than this times data_range (a wrong scale)
DATA_RANGE_SLACK = 1.01

# SSIM constants of Wang, Bovik, Sheikh & Simoncelli (2004).
SSIM_WINDOW_SIZE = 11
SSIM_WINDOW_SIGMA = 1.5
SSIM_K1 = 0.01
SSIM_K2 = 0.03

# Relative size of the diagonal offset added to both covariances when the matrix square
# root of their product fails (see frechet_distance), and the largest imaginary part,
# relative to the covariances' scale, that is dropped as rounding noise.
COVARIANCE_OFFSET = 1e-6
IMAGINARY_TOLERANCE = 1e-3
# A covariance whose smallest eigenvalue is below this fraction of its largest is treated
# as singular up front, which spares a matrix square root that would fail.
SINGULAR_EIGENVALUE_RATIO = 1e-10

FeatureNetwork = Callable[[torch.Tensor], torch.Tensor]


def _check_image_pair(x, y, x_name: str = "x", y_name: str = "y") -> tuple[torch.Tensor, torch.Tensor]:
    check_tensor(x_name, x)
    check_tensor(y_name, y)
    if x.ndim != 4:
        raise ValueError(f"{x_name} must have shape (B, C, H, W), got {tuple(x.shape)}")
    if x.numel() == 0:
        raise ValueError(f"{x_name} must hold at least one image of at least one pixel, got shape {tuple(x.shape)}")
    if tuple(y.shape) != tuple(x.shape):
        raise ValueError(f"{y_name} must have the shape of {x_name}, {tuple(x.shape)}, got {tuple(y.shape)}")
    if y.device != x.device:
        raise ValueError(f"{y_name} must be on the device of {x_name}, {x.device}, got {y.device}")
    # Half-precision inputs are compared in float32; float64 stays float64.
    dtype = torch.promote_types(torch.promote_types(x.dtype, y.dtype), torch.float32)
    return x.to(dtype), y.to(dtype)


def mse(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Mean squared error of each image: ``mean over (C, H, W) of (x − y)²``.

    ``x``, ``y``: float ``(B, C, H, W)`` of the same shape and device, finite.
    Returns ``(B,)`` in float32 (float64 if either input is float64).

    Example::

        >>> mse(torch.zeros(2, 1, 4, 4), torch.full((2, 1, 4, 4), 0.5))
        tensor([0.2500, 0.2500])
    """
    x, y = _check_image_pair(x, y)
    return (x - y).square().flatten(1).mean(dim=1)


def _check_data_range(x: torch.Tensor, y: torch.Tensor, data_range) -> float:
    """A positive ``data_range`` that the images fit: when both ``x`` and ``y`` span more than
    it (a noisy measurement may; the clean images it is compared with do not), the scale is
    wrong — e.g. 8-bit images scored with the [-1, 1] default — and every score would mean nothing."""
    data_range = check_number("data_range", data_range, low=0.0)
    if data_range == 0.0:
        raise ValueError("data_range must be positive (max - min of the pixel scale), got 0.0")
    spans = [float(image.max() - image.min()) if image.numel() else 0.0 for image in (x, y)]
    if min(spans) > DATA_RANGE_SLACK * data_range:
        raise ValueError(f"x spans {spans[0]:g} and y {spans[1]:g}, more than data_range={data_range:g}: pass the "
                         "images' own scale (2 for [-1, 1], 1 for [0, 1], 255 for 8-bit)")
    return data_range


def psnr(x: torch.Tensor, y: torch.Tensor, data_range: float = IMAGE_DATA_RANGE) -> torch.Tensor:
    """Peak signal-to-noise ratio of each image in dB: ``10 log10(data_range² / mse(x, y))``.

    ``x``, ``y``: float ``(B, C, H, W)`` of the same shape and device, finite.
    ``data_range``: max − min of the pixel scale, 2 for dpfast's [-1, 1] images (use 1
    for [0, 1] images, 255 for 8-bit ones). Returns ``(B,)``; identical images give
    ``inf``.

    Example::

        >>> psnr(torch.zeros(1, 1, 4, 4), torch.full((1, 1, 4, 4), 0.2))  # 10 log10(4 / 0.04)
        tensor([20.])
    """
    x, y = _check_image_pair(x, y)
    data_range = _check_data_range(x, y, data_range)
    error = mse(x, y)
    # 20 log10(range) − 10 log10(mse): no underflow of range² for tiny ranges; mse = 0 gives +inf
    return 20.0 * math.log10(data_range) - 10.0 * torch.log10(error)


def gaussian_window(
    size: int = SSIM_WINDOW_SIZE, sigma: float = SSIM_WINDOW_SIGMA, dtype: torch.dtype = torch.float64
) -> torch.Tensor:
    """Normalised 1-D Gaussian of ``size`` taps centred on the middle tap, shape ``(size,)``.

    Example::

        >>> gaussian_window(3, 1.0).sum()
        tensor(1., dtype=torch.float64)
    """
    size = check_positive_int("size", size)
    sigma = check_number("sigma", sigma, low=0.0)
    if sigma == 0.0:
        raise ValueError("sigma must be positive, got 0.0")
    offsets = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    weights = torch.exp(-0.5 * (offsets / sigma) ** 2)
    return (weights / weights.sum()).to(dtype)


def _gaussian_filter_valid(images: torch.Tensor, window: torch.Tensor) -> torch.Tensor:
    # Separable depthwise filtering without padding ("valid"): only full windows count.
    channels = images.shape[1]
    size = window.numel()
    vertical = window.view(1, 1, size, 1).expand(channels, 1, size, 1)
    horizontal = window.view(1, 1, 1, size).expand(channels, 1, 1, size)
    filtered = F.conv2d(images, vertical, groups=channels)
    return F.conv2d(filtered, horizontal, groups=channels)


def ssim(x: torch.Tensor, y: torch.Tensor, data_range: float = IMAGE_DATA_RANGE) -> torch.Tensor:
    """Structural similarity of each image (Wang et al., 2004), averaged over channels.

    The standard definition: local means, variances and covariance under an 11-tap
    Gaussian window (σ = 1.5, normalised), ``C1 = (0.01 · data_range)²``,
    ``C2 = (0.03 · data_range)²``, population (biased) local variances, the SSIM map
    over the positions where the whole window fits inside the image ("valid", no
    padding), averaged over those positions and over the channels. This matches
    ``skimage.metrics.structural_similarity(..., gaussian_weights=True, sigma=1.5,
    use_sample_covariance=False)`` and pytorch-msssim's ``ssim``.

    ``x``, ``y``: float ``(B, C, H, W)``, same shape and device, finite, with
    ``H, W >= 11``; any number of channels (grayscale C = 1, RGB C = 3).
    ``data_range``: 2 for dpfast's [-1, 1] images. Returns ``(B,)`` in [-1, 1]; 1 means
    identical. Computed in float32 (float64 if either input is float64).

    Example::

        >>> clean = torch.rand(2, 1, 32, 32) * 2 - 1
        >>> ssim(clean, clean)
        tensor([1., 1.])
    """
    x, y = _check_image_pair(x, y)
    data_range = _check_data_range(x, y, data_range)
    height, width = x.shape[-2:]
    if height < SSIM_WINDOW_SIZE or width < SSIM_WINDOW_SIZE:
        raise ValueError(
            f"x must be at least {SSIM_WINDOW_SIZE}x{SSIM_WINDOW_SIZE} pixels (the SSIM window), "
            f"got {height}x{width}"
        )
    window = gaussian_window(dtype=x.dtype).to(x.device)
    c1 = (SSIM_K1 * data_range) ** 2
    c2 = (SSIM_K2 * data_range) ** 2

    mean_x = _gaussian_filter_valid(x, window)
    mean_y = _gaussian_filter_valid(y, window)
    variance_x = _gaussian_filter_valid(x * x, window) - mean_x.square()
    variance_y = _gaussian_filter_valid(y * y, window) - mean_y.square()
    covariance = _gaussian_filter_valid(x * y, window) - mean_x * mean_y

    luminance = (2 * mean_x * mean_y + c1) / (mean_x.square() + mean_y.square() + c1)
    contrast_structure = (2 * covariance + c2) / (variance_x + variance_y + c2)
    return (luminance * contrast_structure).flatten(1).mean(dim=1)


def _default_feature_network(device: torch.device) -> FeatureNetwork:
    from dpfast.models.features import load_feature_network

    return load_feature_network(device=device).features


def _check_image_set(name: str, images) -> torch.Tensor:
    check_tensor(name, images)
    if images.ndim < 2:
        raise ValueError(f"{name} must have a leading batch dimension, (N, ...), got shape {tuple(images.shape)}")
    if images.shape[0] < 2:
        raise ValueError(
            f"{name} must hold at least 2 images to estimate a covariance, got {images.shape[0]}"
        )
    return images


def feature_statistics(
    images: torch.Tensor, network: FeatureNetwork | None = None, batch_size: int = 256
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and covariance of the features of an image set, for :func:`frechet_distance`.

    ``images``: float ``(N, ...)`` with ``N >= 2``, finite. For the default network
    (``network=None``: the shipped Fashion-MNIST feature network's ``features``, built on
    ``images.device``) that is ``(N, 1, 32, 32)`` in [-1, 1]. ``network``: any callable
    mapping a batch ``(b, ...)`` to features ``(b, F)``; it is called as given (under
    ``torch.no_grad``), so an ``nn.Module`` should already be in eval mode and on
    ``images.device``; for other weights of the feature network pass
    ``load_feature_network(path).features`` (calling the network itself gives logits).
    ``batch_size``: images per network call.

    Returns ``(mean, covariance)``: float64 CPU tensors ``(F,)`` and ``(F, F)``; the
    covariance is the unbiased sample covariance (divides by N − 1), as ``numpy.cov``.

    Example::

        >>> images, _ = dpfast.data.load_fashion_mnist("test", limit=1000)  # doctest: +SKIP
        >>> mean, covariance = feature_statistics(images)
        >>> mean.shape, covariance.shape
        (torch.Size([128]), torch.Size([128, 128]))
    """
    images = _check_image_set("images", images)
    batch_size = check_positive_int("batch_size", batch_size)
    if network is None:
        network = _default_feature_network(images.device)
    elif not callable(network):
        raise TypeError(
            f"network must be a callable mapping images (b, ...) to features (b, F), got {type(network).__name__}"
        )
    batches = []
    with torch.no_grad():
        for start in range(0, images.shape[0], batch_size):
            batch = images[start : start + batch_size]
            features = network(batch)
            if not isinstance(features, torch.Tensor) or features.ndim != 2 or features.shape[0] != batch.shape[0]:
                shape = tuple(features.shape) if isinstance(features, torch.Tensor) else type(features).__name__
                raise ValueError(
                    f"network must return features of shape ({batch.shape[0]}, F) for a batch of "
                    f"{batch.shape[0]} images, got {shape}"
                )
            batches.append(features.detach().to(device="cpu", dtype=torch.float64))
    features = torch.cat(batches)
    if not torch.isfinite(features).all():
        raise ValueError("network returned NaN or Inf features")
    mean = features.mean(dim=0)
    centred = features - mean
    covariance = centred.T @ centred / (features.shape[0] - 1)
    return mean, covariance


def _as_float64_array(name: str, value, ndim: int) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        value = value.detach().to(device="cpu", dtype=torch.float64).numpy()
    array = np.asarray(value, dtype=np.float64)
    if array.ndim != ndim:
        raise ValueError(f"{name} must be {ndim}-dimensional, got shape {array.shape}")
    if not np.isfinite(array).all():
        raise ValueError(f"{name} holds {int((~np.isfinite(array)).sum())} NaN or Inf values")
    return array


def _square_root_of_product(
    covariance_a: np.ndarray, covariance_b: np.ndarray, singular_is_failure: bool
) -> np.ndarray | None:
    # sqrtm of a product of PSD matrices is real in exact arithmetic; rounding (above all
    # for singular covariances: N <= F, or features that never fire) gives imaginary
    # parts, NaNs, or scipy's "Matrix is singular" warning about the accuracy.
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", scipy.linalg.LinAlgWarning)
        root = scipy.linalg.sqrtm(covariance_a @ covariance_b)
    for warning in caught:
        if not issubclass(warning.category, scipy.linalg.LinAlgWarning):
            warnings.warn_explicit(warning.message, warning.category, warning.filename, warning.lineno)
    singular = any(issubclass(warning.category, scipy.linalg.LinAlgWarning) for warning in caught)
    if singular and singular_is_failure or not np.isfinite(root).all():
        return None
    scale = max(1.0, float(np.abs(root).max()))
    if np.iscomplexobj(root):
        if np.abs(root.imag).max() > IMAGINARY_TOLERANCE * scale:
            return None
        root = root.real
    return root


def _is_near_singular(covariance: np.ndarray) -> bool:
    eigenvalues = np.linalg.eigvalsh(covariance)
    return bool(eigenvalues[0] <= SINGULAR_EIGENVALUE_RATIO * max(eigenvalues[-1], np.finfo(np.float64).tiny))


def frechet_distance(mean_a, covariance_a, mean_b, covariance_b) -> float:
    """Fréchet (2-Wasserstein²) distance between N(mean_a, covariance_a) and N(mean_b, covariance_b).

    ``d² = ‖μa − μb‖² + tr(Σa + Σb − 2 (Σa Σb)^{1/2})``, with the matrix square root from
    ``scipy.linalg.sqrtm`` in float64. The root of a product of covariance matrices is
    real in exact arithmetic; its real part is kept, and imaginary parts up to 1e-3 of
    the root's largest entry are dropped as rounding noise. Near-singular covariances
    (fewer samples than feature dimensions, or features that never fire: the shipped
    network has some) make the root inaccurate, so when either covariance has its
    smallest eigenvalue below 1e-10 of its largest, or the root fails anyway (scipy
    reports the product singular, or the root has NaN/Inf or a larger imaginary part),
    ``ε I`` is added to both covariances before the root is taken, with ``ε = 1e-6 ×``
    the larger mean diagonal entry of the two. This moves the result by at most about
    ``F ε`` (for two Fashion-MNIST test-set halves: 1.05552 → 1.05551). Rounding can
    leave a tiny negative value for equal distributions; it is clamped to 0.

    ``mean_a``, ``mean_b``: ``(F,)``; ``covariance_a``, ``covariance_b``: ``(F, F)``;
    torch tensors (any device) or numpy arrays, finite. Returns a Python float in
    squared feature units.

    Example::

        >>> # N(0, I) vs N(1, 4 I) in 2-D: ‖0 − 1‖² + 2 (1 − 2)² = 4
        >>> frechet_distance(torch.zeros(2), torch.eye(2), torch.ones(2), 4 * torch.eye(2))
        4.0
        >>> reference = feature_statistics(reference_images)  # computed once  # doctest: +SKIP
        >>> frechet_distance(*feature_statistics(restored_images), *reference)  # doctest: +SKIP
    """
    mean_a = _as_float64_array("mean_a", mean_a, 1)
    mean_b = _as_float64_array("mean_b", mean_b, 1)
    covariance_a = _as_float64_array("covariance_a", covariance_a, 2)
    covariance_b = _as_float64_array("covariance_b", covariance_b, 2)
    dimension = mean_a.shape[0]
    for name, value, shape in (
        ("mean_b", mean_b, (dimension,)),
        ("covariance_a", covariance_a, (dimension, dimension)),
        ("covariance_b", covariance_b, (dimension, dimension)),
    ):
        if value.shape != shape:
            raise ValueError(f"{name} must have shape {shape} to match mean_a {mean_a.shape}, got {value.shape}")
    for name, covariance in (("covariance_a", covariance_a), ("covariance_b", covariance_b)):
        asymmetry = float(np.abs(covariance - covariance.T).max()) if covariance.size else 0.0
        if asymmetry > 1e-6 * max(float(np.abs(covariance).max()), 1e-300):
            raise ValueError(f"{name} must be symmetric (a covariance), got entries differing by {asymmetry:g} "
                             "from their transpose")

    root = None
    if not (_is_near_singular(covariance_a) or _is_near_singular(covariance_b)):
        root = _square_root_of_product(covariance_a, covariance_b, singular_is_failure=True)
    if root is None:
        offset = COVARIANCE_OFFSET * max(
            float(np.diag(covariance_a).mean()), float(np.diag(covariance_b).mean()), np.finfo(np.float64).tiny
        )
        identity = np.eye(dimension)
        covariance_a = covariance_a + offset * identity
        covariance_b = covariance_b + offset * identity
        root = _square_root_of_product(covariance_a, covariance_b, singular_is_failure=False)
        if root is None:
            raise ValueError(
                "the matrix square root of covariance_a @ covariance_b failed even after adding "
                f"{offset:.3g} I to both; are they symmetric positive semi-definite?"
            )
    difference = mean_a - mean_b
    distance = difference @ difference + np.trace(covariance_a) + np.trace(covariance_b) - 2.0 * np.trace(root)
    return max(float(distance), 0.0)


def fd(images_a: torch.Tensor, images_b: torch.Tensor, network: FeatureNetwork | None = None) -> float:
    """Fréchet distance between the feature distributions of two image sets (FID-style).

    Fits a Gaussian to the features of each set (:func:`feature_statistics`) and returns
    :func:`frechet_distance` between the fits. Lower is closer; 0 for identical sets. The
    value depends on the set sizes (the estimate is biased upward for small sets), so
    compare only numbers computed with equal sizes.

    ``images_a``: float ``(Na, ...)``, ``images_b``: float ``(Nb, ...)`` with the same
    per-image shape and ``Na, Nb >= 2``, finite. With the default network (the shipped
    Fashion-MNIST feature network) the images are ``(N, 1, 32, 32)`` in [-1, 1].
    ``network``: a callable mapping ``(b, ...)`` to ``(b, F)`` features, e.g.
    ``lambda x: x.flatten(1)`` for the distance between pixel-space Gaussians.
    Returns a Python float.

    Example::

        >>> clean, _ = dpfast.data.load_fashion_mnist("test", limit=500)  # doctest: +SKIP
        >>> fd(clean, clean)
        0.0
        >>> fd(clean, (clean + 0.2 * torch.randn_like(clean)).clamp(-1, 1)) > 0
        True
    """
    images_a = _check_image_set("images_a", images_a)
    images_b = _check_image_set("images_b", images_b)
    if tuple(images_b.shape[1:]) != tuple(images_a.shape[1:]):
        raise ValueError(
            f"images_b must hold images of the shape of images_a's, {tuple(images_a.shape[1:])}, "
            f"got {tuple(images_b.shape[1:])}"
        )
    if network is None:
        network = _default_feature_network(images_a.device)
    statistics_a = feature_statistics(images_a, network)
    statistics_b = feature_statistics(images_b, network)
    return frechet_distance(*statistics_a, *statistics_b)
