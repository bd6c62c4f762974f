import gc
import math
import weakref

import numpy as np
import pytest
import torch

import dpfast as dp
from dpfast.models.toy import ToyConvScore
from dpfast.naive_dps import naive_dps_step
from dpfast.operators import GaussianBlur, Identity, Inpainting, SuperResolution, measure
from dpfast.sampler import Sampler

IMAGE = (1, 16, 16)
# Convolutions block their work by batch size, so float32 rounding differs between a
# batch and its slices and accumulates over the steps: same results to ~1e-5 per step.
ACROSS_BATCH = dict(rtol=1e-4, atol=1e-4)


def _measurement(operator, batch=3, image=IMAGE, sigma_n=0.05):
    x = torch.rand(batch, *image, generator=torch.Generator().manual_seed(1)) * 2 - 1
    return measure(x, operator, sigma_n, seed=100)


@pytest.mark.parametrize("learned_variance", [False, True], ids=["fixed-variance", "learned-range"])
@pytest.mark.parametrize("clip", [True, False], ids=["clip", "no-clip"])
def test_decomposed_dps_step_equals_naive_autograd_dps(learned_variance, clip):
    """The sampler's VJP decomposition (SPEC §4) equals ∇‖r‖ through the whole graph."""
    model = ToyConvScore((2, 16, 16), learned_variance=learned_variance)
    operator = SuperResolution(2, "bicubic")
    sampler = Sampler(model, operator, steps=20, zeta=0.7, clip_denoised=clip)
    y = _measurement(operator, image=(2, 16, 16))
    batch = sampler._prepare(y, [0.0, 0.3, 1.0], [4, 5, 6])
    x = torch.randn(3, 2, 16, 16, generator=torch.Generator().manual_seed(2)) * 1.5
    for k in (19, 10, 0):
        fused = sampler.step(x, k, batch)
        naive = naive_dps_step(
            model, operator, x, y, sampler.timesteps[k].expand(3), sampler.coefficients[k],
            batch.noise_scale, batch.zeta[k], batch.seed_words, k, clip, learned_variance,
        )
        torch.testing.assert_close(fused, naive, rtol=2e-5, atol=2e-5)


def test_batch_invariance_sample_i_alone_equals_sample_i_in_the_batch():
    model = ToyConvScore(IMAGE)
    operator = GaussianBlur(9, 1.5)
    sampler = Sampler(model, operator, steps=15, zeta=0.5)
    y = _measurement(operator, batch=4)
    together = sampler.restore(y, lam=0.7, seed=10)
    for i in range(4):
        alone = sampler.restore(y[i : i + 1], lam=0.7, seed=10 + i)
        torch.testing.assert_close(alone[0], together[i], **ACROSS_BATCH)


def test_traverse_equals_separate_restore_calls_per_lambda():
    model = ToyConvScore(IMAGE)
    operator = Inpainting.box(IMAGE, 6)
    sampler = Sampler(model, operator, steps=12, zeta={0.0: 0.5, 1.0: 1.5})
    y = _measurement(operator, batch=2)
    lams = [0.0, 0.4, 1.0]
    strip = sampler.traverse(y, lams, seed=3)
    assert strip.shape == (3, 2) + IMAGE
    for index, lam in enumerate(lams):
        torch.testing.assert_close(strip[index], sampler.restore(y, lam=lam, seed=3), **ACROSS_BATCH)


def test_same_seed_same_result_different_seed_different_result():
    sampler = Sampler(ToyConvScore(IMAGE), Identity(), steps=8)
    y = _measurement(Identity(), batch=1)
    first = sampler.restore(y, lam=1.0, seed=0)
    assert torch.equal(first, sampler.restore(y, lam=1.0, seed=0))
    assert not torch.allclose(first, sampler.restore(y, lam=1.0, seed=1))


def test_lambda_zero_draws_no_per_step_noise(monkeypatch):
    import dpfast.sampler as sampler_module

    calls = []
    original = sampler_module.reverse_step

    def spy(*args, **kwargs):
        calls.append(kwargs.get("seed_words") is not None or kwargs.get("noise") is not None)
        return original(*args, **kwargs)

    monkeypatch.setattr(sampler_module, "reverse_step", spy)
    sampler = Sampler(ToyConvScore(IMAGE), Identity(), steps=6)
    y = _measurement(Identity(), batch=2)
    sampler.restore(y, lam=0.0, seed=0)
    assert calls == [False] * 6
    calls.clear()
    sampler.restore(y, lam=0.5, seed=0)
    assert calls == [True] * 6


def test_no_autograd_graph_survives_a_step():
    """Memory cannot grow with the number of steps: nothing of a step's graph is kept."""
    model = ToyConvScore(IMAGE)
    activations = []
    model.conv_mid.register_forward_hook(lambda module, inputs, output: activations.append(weakref.ref(output)))
    sampler = Sampler(model, GaussianBlur(9, 1.5), steps=10)
    y = _measurement(GaussianBlur(9, 1.5), batch=2)
    out = sampler.restore(y, lam=1.0, seed=0)
    gc.collect()
    assert not out.requires_grad and out.grad_fn is None
    assert len(activations) == 10
    assert all(reference() is None for reference in activations)


@pytest.mark.parametrize("guidance", ["x0", "none"])
def test_other_guidance_modes_run_without_a_network_vjp(guidance):
    model = ToyConvScore(IMAGE)
    sampler = Sampler(model, None if guidance == "none" else Identity(), steps=5, guidance=guidance)
    if guidance == "none":
        out = sampler.sample(3, lam=1.0, seed=0)
    else:
        out = sampler.restore(_measurement(Identity()), lam=1.0, seed=0)
    assert out.shape == (3,) + IMAGE and torch.isfinite(out).all()


def test_zeta_forms_resolve_to_the_same_table():
    from dpfast.guidance import zeta_table

    lams = [0.0, 0.5, 1.0]
    constant = zeta_table(1.5, lams, 4)
    assert (constant == 1.5).all() and constant.shape == (4, 3)
    mapping = zeta_table({0.0: 1.0, 1.0: 2.0}, lams, 4)
    assert mapping[0].tolist() == [1.0, 1.5, 2.0]
    assert (zeta_table(lambda lam: 1.0 + lam, lams, 4) == mapping).all()
    per_step = zeta_table([4.0, 3.0, 2.0, 1.0], lams, 4)  # execution order: first step first
    assert per_step[:, 0].tolist() == [1.0, 2.0, 3.0, 4.0]  # table row k, k = 0 is the last step


def test_noise_scaling_std_shrinks_the_spread_like_lambda_not_sqrt_lambda():
    prior = dp.models.GaussianScore(torch.zeros(2), torch.eye(2))
    posterior = prior.posterior(torch.eye(2), 1.0, torch.zeros(2))  # N(0, 0.5 I)
    n, lam = 20_000, 0.25
    spread = {}
    for scaling in ("variance", "std"):
        sampler = Sampler(posterior, None, steps=200, guidance="none", noise_scaling=scaling)
        spread[scaling] = float(sampler.sample(n, lam=lam, seed=0).var(0).mean())
    # variance scaling: λ·0.5 = 0.125; std scaling: λ²·0.5 ≈ 0.031 (sampling error ~1 %)
    assert spread["variance"] == pytest.approx(0.125, rel=0.05)
    assert spread["std"] == pytest.approx(0.03125, rel=0.08)


@pytest.mark.slow
def test_dps_with_lambda_one_lands_near_the_exact_gaussian_posterior():
    """DPS is an approximation: it must land near, not on, the posterior.

    Prior N(0, I) in d = 4, identity operator, σ_n = 0.1, y fixed; the exact posterior
    is N(y/(1+σ²), σ²/(1+σ²) I) = N(0.990 y, 0.0099 I). DPS never sees σ_n: its step is
    normalised by ‖r‖, so it fits y itself (mean y, 1 % off the posterior mean here) and
    its end-point spread is set by ζ (measured var ≈ 0.072 ζ² per coordinate: ζ = 0.4
    gives 0.0117, 18 % above the posterior's). 10 000 samples (mean SE ≈ 0.001 per
    coordinate, covariance SE ≈ 1.4 %), 1000 steps; margins: 2 % on the mean, 30 % on
    the covariance (relative norms).
    """
    prior = dp.models.GaussianScore(torch.zeros(4), torch.eye(4))
    y = torch.tensor([[0.8, -0.4, 0.2, 1.2]])
    exact = prior.posterior(torch.eye(4), 0.1, y[0])
    sampler = Sampler(prior, Identity(), steps=1000, zeta=0.4, clip_denoised=False)
    n = 10_000
    out = sampler.run(y.expand(n, 4), [1.0] * n, list(range(n))).double()
    mean_error = float((out.mean(0) - exact.mean()).norm() / exact.mean().norm())
    cov_error = float((torch.cov(out.T) - exact.covariance()).norm() / exact.covariance().norm())
    assert mean_error < 0.02, mean_error
    assert cov_error < 0.30, cov_error


# ----------------------------------------------------------------- bad input
@pytest.fixture(scope="module")
def image_sampler():
    return Sampler(ToyConvScore(IMAGE), SuperResolution(4), steps=3)


def _y(shape=(2, 1, 4, 4), **kwargs):
    return torch.zeros(shape, **kwargs)


@pytest.mark.parametrize(
    "call, error, message",
    [
        (lambda s: s.restore(_y(), lam=1.5), ValueError, r"lam must lie in \[0.0, 1.0\], got 1.5"),
        (lambda s: s.restore(_y(), lam=-0.1), ValueError, r"lam must lie in"),
        (lambda s: s.restore(_y(), lam=float("nan")), ValueError, "lam must be finite"),
        (lambda s: s.restore(_y(), lam="high"), TypeError, "lam must be a real number"),
        (lambda s: s.traverse(_y(), lams=[0.0, 2.0]), ValueError, r"lams\[1\] must lie in"),
        (lambda s: s.traverse(_y(), lams=[]), ValueError, "lams must hold at least one value"),
        (lambda s: s.restore(_y(), sigma_n=-0.05), ValueError, "sigma_n must lie in"),
        (lambda s: s.restore(_y((2, 1, 16, 16))), ValueError, r"y has shape \(2, 1, 16, 16\) but SuperResolution"),
        (lambda s: s.restore(_y((2, 3, 4, 4))), ValueError, "y has shape"),
        (lambda s: s.restore(_y().fill_(float("nan"))), ValueError, "y holds 32 NaN or Inf values"),
        (lambda s: s.restore(_y().fill_(float("inf"))), ValueError, "NaN or Inf"),
        (lambda s: s.restore(torch.zeros(2, 1, 4, 4, dtype=torch.int64)), TypeError, "y must have a floating-point dtype"),
        (lambda s: s.restore([[0.0]]), TypeError, "y must be a torch.Tensor"),
        (lambda s: s.restore(_y(), seed=-1), ValueError, r"seed must lie in \[0, 18446744073709551615\], got -1"),
        (lambda s: s.restore(_y(), seed=[1, 2, 3]), ValueError, "one seed per sample"),
        (lambda s: s.restore(_y(), seed=1.5), TypeError, "seed must be an int, got float 1.5"),
        (lambda s: s.restore(_y(), lam=torch.tensor([0.2, 0.8])), TypeError, r"lam must be one number, got a Tensor of shape \(2,\)"),
        (lambda s: s.restore(_y().fill_(255.0)), ValueError, r"y reaches \|y\| = 255, .*scale the images to \[-1, 1\]"),
        (lambda s: s.restore(_y().fill_(2.0), sigma_n=0.05), ValueError, r"y reaches \|y\| = 2, .*within 1\.9"),
        (lambda s: s.prepare(1, 5), TypeError, "measurement_shape must be a shape"),
    ],
    ids=[
        "lam-above-1", "lam-below-0", "lam-nan", "lam-string", "lams-out-of-range", "lams-empty",
        "negative-sigma-n", "y-wrong-size", "y-wrong-channels", "y-nan", "y-inf", "y-integer",
        "y-not-tensor", "negative-seed", "seed-count", "seed-float", "lam-several", "y-8-bit-scale",
        "y-beyond-its-noise", "prepare-shape-not-a-sequence",
    ],
)
def test_bad_input_raises_a_clear_error_before_sampling(image_sampler, call, error, message, monkeypatch):
    monkeypatch.setattr(image_sampler, "run", lambda *a, **k: pytest.fail("sampling started"))
    with pytest.raises(error, match=message):
        call(image_sampler)


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        (dict(steps=0), ValueError, r"steps must lie in \[1, 1000\], got 0"),
        (dict(steps=1001), ValueError, r"steps must lie in \[1, 1000\], got 1001"),
        (dict(steps=2.5), TypeError, "steps must be an int"),
        (dict(guidance="ddim"), ValueError, "guidance must be one of"),
        (dict(variance="learned_range"), ValueError, "needs a model with a variance output"),
        (dict(noise_scaling="sqrt"), ValueError, "noise_scaling must be one of"),
        (dict(zeta=-1.0), ValueError, "zeta for lam=0.0 must be finite and >= 0"),
        (dict(zeta=[1.0, 2.0]), ValueError, r"one value per step \(3\)"),
        (dict(schedule="quadratic"), ValueError, "schedule must be 'linear' or 'cosine'"),
        (dict(operator=Inpainting(torch.ones(3, 16, 16))), ValueError, "mask has 3 channels but the model's images have 1"),
        (dict(operator=GaussianBlur(61, 3.0)), ValueError, "needs H and W > 30"),
        (dict(operator="blur"), TypeError, "operator must be a dpfast Operator"),
        (dict(clip_denoised="False"), TypeError, "clip_denoised must be True or False, got str 'False'"),
        (dict(progress="no"), TypeError, "progress must be True or False"),
        (dict(zeta={"a": 1.0}), TypeError, "zeta mapping key 'a' must be a real number"),
    ],
)
def test_bad_sampler_configuration_is_rejected(kwargs, error, message):
    operator = kwargs.pop("operator", Identity())
    kwargs.setdefault("steps", 3)
    with pytest.raises(error, match=message):
        Sampler(ToyConvScore(IMAGE), operator, **kwargs)


def test_number_like_arguments_are_taken_as_the_numbers_they_are():
    """NumPy and 0-dim tensor scalars for seed and zeta mean what the Python number would."""
    y, model = _measurement(Identity(), batch=2), ToyConvScore(IMAGE)
    reference = Sampler(model, Identity(), steps=3, zeta=1.0).restore(y, lam=0.5, seed=3)
    for zeta, seed in ((np.float32(1.0), np.int64(3)), (torch.tensor(1.0), torch.tensor(3)), (np.array(1.0), [3, 4])):
        restored = Sampler(model, Identity(), steps=3, zeta=zeta).restore(y, lam=0.5, seed=seed)
        torch.testing.assert_close(restored, reference, rtol=0, atol=0)


def test_a_measurement_that_requires_grad_gives_a_plain_restoration():
    y = _measurement(Identity(), batch=1).requires_grad_()
    out = Sampler(ToyConvScore(IMAGE), Identity(), steps=3).restore(y, lam=1.0)
    assert not out.requires_grad and out.grad_fn is None


def test_non_model_is_rejected():
    with pytest.raises(TypeError, match="model must be a dpfast ScoreModel"):
        Sampler(torch.nn.Conv2d(1, 1, 3), Identity())


def test_one_liner_restore_matches_the_sampler():
    model = ToyConvScore(IMAGE)
    y = _measurement(Identity(), batch=1)
    expected = Sampler(model, Identity(), steps=4).restore(y, lam=0.5, seed=2)
    torch.testing.assert_close(dp.restore(model, Identity(), y, lam=0.5, seed=2, steps=4), expected)


def test_respaced_sampler_runs_the_kept_timesteps():
    sampler = Sampler(ToyConvScore(IMAGE), Identity(), steps=10)
    assert sampler.timesteps.tolist() == [round(i * 999 / 9) for i in range(10)]
    assert math.isclose(float(sampler.coefficients[0, 2]), 1.0, rel_tol=1e-6)


def test_gaussian_fast_path_equals_the_general_mixture_score():
    factor = torch.tensor([[1.0, 0.0, 0.0], [0.5, 0.8, 0.0], [-0.3, 0.2, 0.6]], dtype=torch.float64)
    prior = dp.models.GaussianScore(torch.tensor([0.3, -0.5, 0.8]), factor @ factor.T)
    x = torch.randn(64, 3, dtype=torch.float64)
    for t in (0, 10, 500, 999):
        shared = prior(x, torch.full((64,), t))
        mixed_t = torch.full((64,), t)
        mixed_t[0] = 0 if t else 1  # forces the per-sample path for the rest
        general = prior(x, mixed_t)
        torch.testing.assert_close(shared[1:], general[1:], rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("backend", ["torch", "cpp", "triton"])
def test_every_backend_gives_the_same_restorations(backend):
    from dpfast.kernels import available_backends
    from dpfast.testing import assert_close

    if backend not in available_backends("cpu"):
        pytest.skip(f"backend {backend!r} cannot run on this machine's CPU")
    model = ToyConvScore((1, 8, 8), learned_variance=True)
    operator = SuperResolution(2, "avgpool")
    y = _measurement(operator, batch=2, image=(1, 8, 8))
    lams = [0.0, 0.5, 1.0]
    reference = Sampler(model, operator, steps=6, backend="torch").traverse(y, lams, seed=4)
    fused = Sampler(model, operator, steps=6, backend=backend).traverse(y, lams, seed=4)
    assert_close(fused, reference, torch.float32)


def test_unknown_or_unavailable_backend_is_rejected():
    with pytest.raises(ValueError, match="backend must be one of"):
        Sampler(ToyConvScore(IMAGE), Identity(), steps=2, backend="metal")
    with pytest.raises(RuntimeError, match="backend='cuda' cannot run on cpu tensors"):
        Sampler(ToyConvScore(IMAGE), Identity(), steps=2, backend="cuda")


def test_beta_scaled_zeta_follows_the_chain_and_interpolates_its_scale():
    from dpfast.guidance import beta_scaled_zeta, zeta_table
    from dpfast.schedule import Schedule

    schedule = Schedule.linear()
    chain = schedule.respace(20)
    zeta = beta_scaled_zeta({0.0: 400.0, 1.0: 100.0}, schedule, steps=20)
    expected_row_order = 100.0 * chain.betas / np.sqrt(1.0 - chain.betas)
    np.testing.assert_allclose(zeta(1.0)[::-1], expected_row_order)
    np.testing.assert_allclose(zeta(0.5), 2.5 * zeta(1.0))
    assert zeta(1.0)[0] > zeta(1.0)[-1]  # execution order: the noisiest (largest β') step first
    table = zeta_table(zeta, [0.0, 1.0], 20)  # what the sampler builds: (rows, batch)
    np.testing.assert_allclose(table[:, 1], expected_row_order)
    with pytest.raises(ValueError, match="zeta mapping covers lam in"):
        zeta(1.5)
    with pytest.raises(ValueError, match="must be finite and >= 0"):
        beta_scaled_zeta(-1.0, schedule, 20)


def test_a_callable_zeta_is_checked_at_construction_and_used_per_lam():
    prior = dp.models.GaussianScore(torch.zeros(3), torch.eye(3))
    by_callable = dp.Sampler(prior, None, steps=5, zeta=lambda lam: 0.2 + lam)
    by_mapping = dp.Sampler(prior, None, steps=5, zeta={0.0: 0.2, 1.0: 1.2})
    y = torch.ones(2, 3)
    torch.testing.assert_close(by_callable.traverse(y, [0.0, 0.5]), by_mapping.traverse(y, [0.0, 0.5]))
    with pytest.raises(ValueError, match="must be finite and >= 0"):
        dp.Sampler(prior, None, steps=5, zeta=lambda lam: 1.0 - 2.0 * lam)  # negative at λ = 1
