"""Measurement operators A (SPEC §7): y = A(x0) + σ_n·n.

Every operator is a differentiable torch function of a batch ``(B, *image_shape)``
and reports the measurement shape for an input shape, so a wrong ``y`` is caught
before sampling starts. Adjoints come from autograd (see :func:`adjoint`).
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch
import torch.nn.functional as F

from dpfast.noise import MEASUREMENT_NOISE_STEP, counter_normal_ref, seed_tensor
from dpfast.validation import check_number, check_positive_int, check_tensor


def _as_int(value) -> int | None:
    """A Python, NumPy or 0-dim tensor integer as an int; None for anything else."""
    if isinstance(value, bool) or not hasattr(value, "__index__"):
        return None
    try:
        return int(value.__index__())
    except (TypeError, RuntimeError):  # e.g. a float tensor
        return None


def _as_float(value) -> float | None:
    """One finite real number (Python, NumPy or a one-element tensor) as a float; None otherwise."""
    try:
        return check_number("value", value)
    except (TypeError, ValueError):
        return None


def _image_shape(name: str, image_shape: Sequence[int]) -> tuple[int, int, int]:
    sizes = [_as_int(size) for size in image_shape] if isinstance(image_shape, Sequence) else []
    if len(sizes) != 3 or any(size is None or size < 1 for size in sizes):
        raise ValueError(f"{name} must be an image shape (C, H, W) of positive ints, got {image_shape!r}")
    return tuple(sizes)


class Operator:
    """Base class: ``__call__(x) -> y`` plus shape reporting and checks.

    ``output_bound``: the largest ``|A(x)|`` over images ``x`` in [-1, 1], or None when
    unknown (then the sampler does not check the range of y).
    """

    output_bound: float | None = None

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def output_shape(self, input_shape: Sequence[int]) -> tuple[int, ...]:
        """Shape of ``A(x)`` for ``x`` of shape ``input_shape`` (batch dim included)."""
        self.check_input_shape(tuple(input_shape)[1:])
        return tuple(input_shape)

    def check_input_shape(self, image_shape: Sequence[int]) -> None:
        """Raise ``ValueError`` if samples of ``image_shape`` cannot be measured."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class Identity(Operator):
    """Denoising: A(x) = x."""

    output_bound = 1.0

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return x


def gaussian_kernel_1d(kernel_size: int, sigma: float) -> torch.Tensor:
    """Normalised 1-D Gaussian taps, float64, centred on the middle tap."""
    offsets = torch.arange(kernel_size, dtype=torch.float64) - (kernel_size - 1) / 2
    taps = torch.exp(-(offsets**2) / (2.0 * sigma**2))
    return taps / taps.sum()


class GaussianBlur(Operator):
    """Depthwise Gaussian blur with reflect padding, output the size of the input.

    The 2-D kernel is the normalised Gaussian on a ``kernel_size``² grid (it sums to 1);
    since it is the outer product of two 1-D kernels it is applied as two 1-D passes,
    which is the same linear map at a fraction of the cost. ``kernel_size=61,
    sigma=3.0`` is the DPS setting. Needs ``H, W > kernel_size // 2`` (reflect padding).
    """

    output_bound = 1.0  # a weighted mean: non-negative taps summing to 1

    def __init__(self, kernel_size: int = 61, sigma: float = 3.0):
        size, width = _as_int(kernel_size), _as_float(sigma)
        if size is None or size < 1 or size % 2 == 0:
            raise ValueError(f"kernel_size must be a positive odd int, got {kernel_size!r}")
        if width is None or width <= 0:
            raise ValueError(f"sigma must be a positive finite number, got {sigma!r}")
        self.kernel_size = size
        self.sigma = width
        self.taps = gaussian_kernel_1d(kernel_size, self.sigma)

    @property
    def kernel(self) -> torch.Tensor:
        """The full 2-D kernel (float64), for inspection and tests."""
        return torch.outer(self.taps, self.taps)

    def check_input_shape(self, image_shape: Sequence[int]) -> None:
        if len(image_shape) != 3:
            raise ValueError(f"GaussianBlur needs images (C, H, W), got sample shape {tuple(image_shape)}")
        pad = self.kernel_size // 2
        if min(image_shape[1:]) <= pad:
            raise ValueError(
                f"GaussianBlur(kernel_size={self.kernel_size}) needs H and W > {pad} for reflect "
                f"padding, got {tuple(image_shape[1:])}"
            )

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        channels = x.shape[1]
        pad = self.kernel_size // 2
        taps = self.taps.to(device=x.device, dtype=x.dtype)
        horizontal = taps.view(1, 1, 1, -1).expand(channels, 1, 1, -1)
        vertical = taps.view(1, 1, -1, 1).expand(channels, 1, -1, 1)
        padded = F.pad(x, (pad, pad, pad, pad), mode="reflect")
        out = F.conv2d(padded, horizontal, groups=channels)
        return F.conv2d(out, vertical, groups=channels)

    def __repr__(self) -> str:
        return f"GaussianBlur(kernel_size={self.kernel_size}, sigma={self.sigma})"


class SuperResolution(Operator):
    """Downsampling by an integer ``factor``: antialiased bicubic (default) or average pooling.

    ``mode="bicubic"`` is ``F.interpolate(x, size=(H/f, W/f), mode="bicubic",
    antialias=True)``; ``mode="avgpool"`` averages each f×f block. H and W must be
    divisible by ``factor``.
    """

    MODES = ("bicubic", "avgpool")
    # avgpool averages; the antialiased bicubic taps have absolute sums up to 1.19 per axis
    # (factors 2-8, measured), so up to 1.41 in 2-D
    BOUNDS = {"bicubic": 1.5, "avgpool": 1.0}

    def __init__(self, factor: int = 4, mode: str = "bicubic"):
        if _as_int(factor) is None or _as_int(factor) < 1:
            raise ValueError(f"factor must be a positive int, got {factor!r}")
        if mode not in self.MODES:
            raise ValueError(f"mode must be one of {self.MODES}, got {mode!r}")
        self.factor = _as_int(factor)
        self.mode = mode
        self.output_bound = self.BOUNDS[mode]

    def check_input_shape(self, image_shape: Sequence[int]) -> None:
        if len(image_shape) != 3:
            raise ValueError(f"SuperResolution needs images (C, H, W), got sample shape {tuple(image_shape)}")
        height, width = image_shape[1:]
        if height % self.factor or width % self.factor:
            raise ValueError(f"image size {height}x{width} is not divisible by factor {self.factor}")

    def output_shape(self, input_shape: Sequence[int]) -> tuple[int, ...]:
        self.check_input_shape(tuple(input_shape)[1:])
        batch, channels, height, width = input_shape
        return (batch, channels, height // self.factor, width // self.factor)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.mode == "avgpool":
            return F.avg_pool2d(x, self.factor)
        size = (x.shape[2] // self.factor, x.shape[3] // self.factor)
        return F.interpolate(x, size=size, mode="bicubic", antialias=True, align_corners=False)

    def __repr__(self) -> str:
        return f"SuperResolution(factor={self.factor}, mode={self.mode!r})"


class Inpainting(Operator):
    """Elementwise mask: A(x) = mask ⊙ x (1 keeps a pixel, 0 removes it).

    ``mask`` has shape ``(H, W)``, ``(1, H, W)`` or ``(C, H, W)``; it broadcasts over
    the batch. Build one with :meth:`box` or :meth:`random_pixels`.
    """

    output_bound = 1.0

    def __init__(self, mask: torch.Tensor):
        if not isinstance(mask, torch.Tensor):
            raise TypeError(f"mask must be a torch.Tensor, got {type(mask).__name__}")
        if mask.dim() == 2:
            mask = mask.unsqueeze(0)
        if mask.dim() != 3 or mask.numel() == 0:
            raise ValueError(f"mask must have shape (H, W), (1, H, W) or (C, H, W) with H, W >= 1, got {tuple(mask.shape)}")
        if mask.dtype == torch.bool:
            mask = mask.float()
        if not torch.all((mask == 0) | (mask == 1)):
            values = torch.unique(mask.detach().cpu().float()).tolist()
            raise ValueError(f"mask must hold only 0 and 1, got values {values[:6]}{' ...' if len(values) > 6 else ''}")
        self.mask = mask.float()

    @classmethod
    def box(cls, image_shape: Sequence[int], size: int | tuple[int, int]) -> "Inpainting":
        """A centred box of ``size`` (pixels, int or (h, w)) removed from ``(C, H, W)`` images."""
        _, height, width = _image_shape("image_shape", image_shape)
        sides = [_as_int(size)] * 2 if _as_int(size) is not None else [_as_int(side) for side in size] if isinstance(size, Sequence) else []
        if len(sides) != 2 or None in sides:
            raise TypeError(f"size must be an int or a pair (h, w) of ints, got {size!r}")
        box_h, box_w = sides
        if not (0 < box_h <= height and 0 < box_w <= width):
            raise ValueError(f"box size {(box_h, box_w)} must fit in the image {height}x{width}")
        mask = torch.ones(1, height, width)
        top, left = (height - box_h) // 2, (width - box_w) // 2
        mask[:, top : top + box_h, left : left + box_w] = 0
        return cls(mask)

    @classmethod
    def random_pixels(cls, image_shape: Sequence[int], fraction_missing: float, seed: int = 0) -> "Inpainting":
        """Remove a seeded random ``fraction_missing`` of pixel positions (all channels)."""
        fraction = _as_float(fraction_missing)
        if fraction is None or not 0.0 <= fraction < 1.0:
            raise ValueError(f"fraction_missing must be a number in [0, 1), got {fraction_missing!r}")
        _, height, width = _image_shape("image_shape", image_shape)
        generator = torch.Generator().manual_seed(check_positive_int("seed", seed, 0, 2**63 - 1))
        keep = torch.rand(1, height, width, generator=generator) >= fraction
        return cls(keep)

    def check_input_shape(self, image_shape: Sequence[int]) -> None:
        if len(image_shape) != 3:
            raise ValueError(f"Inpainting needs images (C, H, W), got sample shape {tuple(image_shape)}")
        channels, height, width = image_shape
        mask_channels, mask_h, mask_w = self.mask.shape
        if (mask_h, mask_w) != (height, width):
            raise ValueError(f"mask size {mask_h}x{mask_w} does not match the image size {height}x{width}")
        if mask_channels not in (1, channels):
            raise ValueError(f"mask has {mask_channels} channels but the model's images have {channels}")

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.mask.to(device=x.device, dtype=x.dtype)

    def __repr__(self) -> str:
        return f"Inpainting(mask {tuple(self.mask.shape)}, {int(self.mask.sum())} kept)"


class MatrixOperator(Operator):
    """A linear map on vectors: A(x) = x Aᵀ for samples ``(d,)`` and a matrix ``(m, d)``."""

    def __init__(self, matrix: torch.Tensor):
        matrix = torch.as_tensor(matrix)
        if matrix.dim() != 2:
            raise ValueError(f"matrix must be 2-D (m, d), got shape {tuple(matrix.shape)}")
        if not torch.isfinite(matrix).all():
            raise ValueError(f"matrix must hold finite values, got {int((~torch.isfinite(matrix)).sum())} NaN or Inf")
        self.matrix = matrix.to(torch.float64)

    def check_input_shape(self, image_shape: Sequence[int]) -> None:
        if tuple(image_shape) != (self.matrix.shape[1],):
            raise ValueError(
                f"MatrixOperator with a {tuple(self.matrix.shape)} matrix needs samples of shape "
                f"({self.matrix.shape[1]},), got {tuple(image_shape)}"
            )

    def output_shape(self, input_shape: Sequence[int]) -> tuple[int, ...]:
        self.check_input_shape(tuple(input_shape)[1:])
        return (input_shape[0], self.matrix.shape[0])

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self.matrix.to(device=x.device, dtype=x.dtype).T

    def __repr__(self) -> str:
        return f"MatrixOperator({tuple(self.matrix.shape)})"


class FunctionOperator(Operator):
    """Wraps a user callable ``A(x) -> y``; its output shape is found by tracing on 'meta'."""

    def __init__(self, function: Callable[[torch.Tensor], torch.Tensor]):
        if not callable(function):
            raise TypeError(f"operator must be callable, got {type(function).__name__}")
        self.function = function

    def output_shape(self, input_shape: Sequence[int]) -> tuple[int, ...]:
        probe = torch.zeros(tuple(input_shape), device="meta")
        try:
            out = self.function(probe)
        except Exception:  # not every user function runs on meta tensors
            try:
                out = self.function(torch.zeros((1,) + tuple(input_shape)[1:]))
            except Exception as error:
                raise ValueError(f"operator {self!r} failed on a zero image of shape {(1,) + tuple(input_shape)[1:]}: "
                                 f"{type(error).__name__}: {error}") from error
            if not isinstance(out, torch.Tensor):
                raise TypeError(f"operator {self!r} must return a torch.Tensor, got {type(out).__name__}")
            return (input_shape[0],) + tuple(out.shape[1:])
        if not isinstance(out, torch.Tensor):
            raise TypeError(f"operator must return a torch.Tensor, got {type(out).__name__}")
        return tuple(out.shape)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.function(x)

    def __repr__(self) -> str:
        return f"FunctionOperator({getattr(self.function, '__name__', repr(self.function))})"


def as_operator(operator) -> Operator | None:
    """Accept an :class:`Operator`, a matrix-free callable, or ``None``."""
    if operator is None or isinstance(operator, Operator):
        return operator
    if callable(operator):
        return FunctionOperator(operator)
    raise TypeError(f"operator must be a dpfast Operator, a callable or None, got {type(operator).__name__}")


def adjoint(operator: Operator, y: torch.Tensor, input_shape: Sequence[int]) -> torch.Tensor:
    """Aᵀy through autograd (the exact adjoint of a linear operator's implementation)."""
    x = torch.zeros(tuple(input_shape), dtype=y.dtype, device=y.device, requires_grad=True)
    with torch.enable_grad():
        out = as_operator(operator)(x)
        (result,) = torch.autograd.grad(out, x, grad_outputs=y)
    return result


def measure(x: torch.Tensor, operator, sigma_n: float, seed: int | Sequence[int] = 0) -> torch.Tensor:
    """y = A(x) + σ_n·n with per-sample seeded noise (sample i uses seed + i).

    Args:
        x: clean images or vectors, float ``(B, *S)``.
        operator: an :class:`Operator` or callable.
        sigma_n: noise standard deviation in the units of x (≥ 0).
        seed: an int (sample i gets ``seed + i``) or one seed per sample.
    """
    check_tensor("x", x)
    if x.ndim < 1 or x.shape[0] < 1:
        raise ValueError(f"x must have a leading batch dimension of size >= 1, got shape {tuple(x.shape)}")
    noise_level = _as_float(sigma_n)
    if noise_level is None or noise_level < 0:
        raise ValueError(f"sigma_n must be a finite number >= 0, got {sigma_n!r}")
    operator = as_operator(operator) or Identity()
    operator.check_input_shape(tuple(x.shape[1:]))
    with torch.no_grad():
        clean = operator(x)
        words = seed_tensor(seed, x.shape[0], device=x.device)
        noise = counter_normal_ref(words, MEASUREMENT_NOISE_STEP, clean.shape[1:])
    y = clean + noise_level * noise.to(clean.dtype)
    if not torch.isfinite(y).all():
        raise ValueError(
            f"y = A(x) + sigma_n * n is not finite in {clean.dtype} (sigma_n={sigma_n!r}, or A(x) overflowed); "
            "expected values that fit the dtype"
        )
    return y
