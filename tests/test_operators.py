import numpy as np
import pytest
import torch
import torch.nn.functional as F

import dpfast as dp
from dpfast.operators import (
    FunctionOperator,
    GaussianBlur,
    Identity,
    Inpainting,
    MatrixOperator,
    SuperResolution,
    adjoint,
    measure,
)

IMAGE = (2, 3, 64, 48)

OPERATORS = {
    "identity": Identity(),
    "blur-61-3": GaussianBlur(61, 3.0),
    "blur-9-1.5": GaussianBlur(9, 1.5),
    "sr-4-bicubic": SuperResolution(4, "bicubic"),
    "sr-2-avgpool": SuperResolution(2, "avgpool"),
    "inpaint-box": Inpainting.box(IMAGE[1:], 20),
    "inpaint-random": Inpainting.random_pixels(IMAGE[1:], 0.7, seed=3),
    "callable": FunctionOperator(lambda x: x[:, :, ::2, :] * 0.5),
}


@pytest.mark.parametrize("name", OPERATORS)
def test_adjoint_through_autograd_satisfies_the_inner_product_identity(name):
    operator = OPERATORS[name]
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(IMAGE, dtype=torch.float64, generator=generator)
    y = torch.randn(operator.output_shape(IMAGE), dtype=torch.float64, generator=generator)
    lhs = (operator(x) * y).sum()
    rhs = (x * adjoint(operator, y, IMAGE)).sum()
    assert torch.allclose(lhs, rhs, rtol=1e-10), (lhs, rhs)


@pytest.mark.parametrize("name", OPERATORS)
def test_reported_output_shape_is_the_real_output_shape(name):
    operator = OPERATORS[name]
    assert tuple(operator(torch.zeros(IMAGE)).shape) == operator.output_shape(IMAGE)


def test_blur_kernel_is_normalised_and_symmetric():
    kernel = GaussianBlur(61, 3.0).kernel
    assert kernel.shape == (61, 61)
    assert kernel.sum().item() == pytest.approx(1.0, abs=1e-12)
    assert torch.equal(kernel, kernel.flip(0)) and torch.equal(kernel, kernel.T)


def test_separable_blur_equals_a_full_2d_reflect_convolution():
    blur = GaussianBlur(15, 2.0)
    x = torch.randn(1, 2, 40, 40, dtype=torch.float64)
    kernel = blur.kernel.view(1, 1, 15, 15).expand(2, 1, 15, 15)
    reference = F.conv2d(F.pad(x, (7, 7, 7, 7), mode="reflect"), kernel, groups=2)
    assert torch.allclose(blur(x), reference, atol=1e-12)


def test_blur_preserves_constants_because_the_kernel_sums_to_one():
    x = torch.full((1, 1, 70, 70), 0.25, dtype=torch.float64)
    assert torch.allclose(GaussianBlur()(x), x, atol=1e-12)


def test_bicubic_downsampling_is_antialiased_interpolate():
    x = torch.randn(1, 3, 32, 32)
    expected = F.interpolate(x, size=(8, 8), mode="bicubic", antialias=True, align_corners=False)
    assert torch.equal(SuperResolution(4)(x), expected)


def test_inpainting_helpers_remove_what_they_say():
    box = Inpainting.box((3, 32, 32), 8)
    assert int((box.mask == 0).sum()) == 64
    random = Inpainting.random_pixels((3, 32, 32), 0.5, seed=1)
    assert torch.equal(random.mask, Inpainting.random_pixels((3, 32, 32), 0.5, seed=1).mask)
    assert 0.4 < float(1 - random.mask.mean()) < 0.6


def test_matrix_operator_on_vectors():
    A = torch.tensor([[1.0, 2.0, 0.0], [0.0, 1.0, -1.0]])
    op = MatrixOperator(A)
    x = torch.randn(5, 3)
    assert torch.allclose(op(x), x @ A.T)
    assert op.output_shape((5, 3)) == (5, 2)


@pytest.mark.parametrize(
    "operator, image_shape, message",
    [
        (GaussianBlur(61, 3.0), (1, 16, 16), "needs H and W > 30"),
        (SuperResolution(4), (1, 30, 32), "not divisible by factor 4"),
        (Inpainting(torch.ones(3, 8, 8)), (1, 8, 8), "mask has 3 channels but the model's images have 1"),
        (Inpainting(torch.ones(8, 8)), (1, 8, 9), "does not match the image size"),
        (MatrixOperator(torch.eye(3)), (4,), "needs samples of shape"),
    ],
)
def test_incompatible_image_shapes_are_rejected(operator, image_shape, message):
    with pytest.raises(ValueError, match=message):
        operator.check_input_shape(image_shape)


def test_bad_constructor_arguments_name_the_argument():
    with pytest.raises(ValueError, match="kernel_size must be a positive odd int"):
        GaussianBlur(60)
    with pytest.raises(ValueError, match="sigma must be a positive finite number"):
        GaussianBlur(61, -1.0)
    with pytest.raises(ValueError, match="mode must be one of"):
        SuperResolution(4, "nearest")
    with pytest.raises(ValueError, match="mask must hold only 0 and 1"):
        Inpainting(torch.full((4, 4), 0.5))


def test_number_like_constructor_arguments_mean_their_numbers():
    for blur in (GaussianBlur(np.int64(61), np.float32(3.0)), GaussianBlur(torch.tensor(61), torch.tensor(3.0))):
        assert (blur.kernel_size, blur.sigma) == (61, 3.0) and type(blur.kernel_size) is int
    assert SuperResolution(np.int64(4)).factor == 4
    x = torch.rand(2, 1, 8, 8)
    assert torch.equal(measure(x, Identity(), np.float32(0.1), seed=np.int64(5)), measure(x, Identity(), 0.1, seed=5))


@pytest.mark.parametrize(
    "build, error, message",
    [
        (lambda: Inpainting.box((1, 32, 32), 8.5), TypeError, r"size must be an int or a pair \(h, w\) of ints, got 8.5"),
        (lambda: Inpainting.box((32, 32), 8), ValueError, r"image_shape must be an image shape \(C, H, W\)"),
        (lambda: Inpainting.random_pixels((1, 8, 8), "0.5"), ValueError, "fraction_missing must be a number in"),
        (lambda: Inpainting.random_pixels((1, 8, 8), 0.5, seed=-1), ValueError, r"seed must lie in \[0, "),
        (lambda: Inpainting(torch.zeros(0, 0)), ValueError, r"with H, W >= 1, got \(1, 0, 0\)"),
        (lambda: Inpainting(torch.full((4, 4), 255.0)), ValueError, r"mask must hold only 0 and 1, got values \[255.0\]"),
        (lambda: MatrixOperator(torch.tensor([[1.0, float("nan")]])), ValueError, "matrix must hold finite values"),
    ],
    ids=["box-float-size", "box-2d-shape", "random-string-fraction", "random-negative-seed", "empty-mask",
         "mask-of-255", "matrix-nan"],
)
def test_bad_operator_arguments_name_what_is_wrong(build, error, message):
    with pytest.raises(error, match=message):
        build()


def test_measure_checks_x_against_the_operator():
    with pytest.raises(ValueError, match="image size 30x30 is not divisible by factor 4"):
        measure(torch.zeros(1, 1, 30, 30), SuperResolution(4), 0.1)
    with pytest.raises(ValueError, match=r"GaussianBlur needs images \(C, H, W\)"):
        measure(torch.zeros(2, 32), GaussianBlur(5, 1.0), 0.1)
    with pytest.raises(ValueError, match="mask size 16x16 does not match the image size 32x32"):
        measure(torch.zeros(1, 1, 32, 32), Inpainting(torch.ones(16, 16)), 0.1)


def test_a_custom_operator_that_fails_on_images_is_named():
    def takes_no_image():
        return torch.zeros(1)

    with pytest.raises(ValueError, match=r"operator FunctionOperator\(takes_no_image\) failed on a zero image"):
        FunctionOperator(takes_no_image).output_shape((1, 1, 8, 8))


def test_the_output_bound_holds_for_images_in_range():
    """Each operator's ``output_bound`` (the sampler's check of y) is at least max |A(x)| over x in [-1, 1]."""
    generator = torch.Generator().manual_seed(0)
    worst = torch.where(torch.rand(64, 1, 32, 32, generator=generator) < 0.5, -1.0, 1.0)  # sign patterns: the extremes
    checkerboard = (torch.arange(32)[:, None] + torch.arange(32)[None, :]) % 2 * 2.0 - 1.0
    worst = torch.cat([worst, checkerboard[None, None], -checkerboard[None, None]])
    for operator in (Identity(), GaussianBlur(9, 1.5), SuperResolution(2), SuperResolution(4), SuperResolution(4, "avgpool"),
                     Inpainting.box((1, 32, 32), 8)):
        assert float(operator(worst).abs().max()) <= operator.output_bound, operator
    assert MatrixOperator(torch.eye(2)).output_bound is None and FunctionOperator(torch.sin).output_bound is None


def test_measure_is_seeded_per_sample():
    x = torch.zeros(3, 1, 8, 8)
    y = measure(x, Identity(), 0.1, seed=5)
    assert torch.equal(y, measure(x, Identity(), 0.1, seed=5))
    assert torch.equal(y[1:2], measure(x[1:2], Identity(), 0.1, seed=6))
    assert 0.05 < float(y.std()) < 0.15
    with pytest.raises(ValueError, match="sigma_n must be a finite number >= 0"):
        measure(x, Identity(), -0.1)


def test_public_namespace_exposes_the_operators():
    assert dp.operators.GaussianBlur is GaussianBlur and dp.measure is measure
