import numpy as np
import pytest
import torch

from dpfast.schedule import (
    COLUMN,
    Schedule,
    coefficient_table_tensor,
    cosine_betas,
    linear_betas,
    space_timesteps,
)


def test_linear_betas_match_the_ddpm_endpoints():
    betas = linear_betas(1000)
    assert betas.dtype == np.float64
    assert betas[0] == pytest.approx(1e-4) and betas[-1] == pytest.approx(0.02)
    assert linear_betas(250)[-1] == pytest.approx(0.08)  # scaled by 1000 / T


def test_cosine_alpha_bar_follows_the_cosine_law():
    betas = cosine_betas(1000)
    alpha_bar = np.cumprod(1 - betas)
    f = lambda u: np.cos((u + 0.008) / 1.008 * np.pi / 2) ** 2
    t = np.arange(1, 900)
    np.testing.assert_allclose(alpha_bar[t - 1], f(t / 1000) / f(0), rtol=1e-6)
    assert betas.max() <= 0.999


def test_space_timesteps_keeps_both_ends_evenly():
    kept = space_timesteps(1000, 10)
    assert kept[0] == 0 and kept[-1] == 999 and len(kept) == 10
    np.testing.assert_array_equal(kept, np.round(np.arange(10) * 999 / 9).astype(int))
    np.testing.assert_array_equal(space_timesteps(1000, 1000), np.arange(1000))
    np.testing.assert_array_equal(space_timesteps(1000, 1), [0])


@pytest.mark.parametrize("steps", [0, 1001, -3])
def test_space_timesteps_rejects_out_of_range_steps(steps):
    with pytest.raises(ValueError, match="steps must be between 1 and"):
        space_timesteps(1000, steps)


@pytest.mark.parametrize("steps", [1, 7, 100, 1000])
def test_respaced_chain_is_itself_a_vp_chain(steps):
    schedule = Schedule.linear(1000)
    chain = schedule.respace(steps)
    # ᾱ of the kept chain equals the original ᾱ at the kept timesteps
    np.testing.assert_allclose(chain.alphas_cumprod, schedule.alphas_cumprod[chain.timesteps], rtol=1e-12)
    assert np.all((chain.betas > 0) & (chain.betas < 1))


@pytest.mark.parametrize("steps", [10, 1000])
@pytest.mark.parametrize("variance", ["fixed_small", "fixed_large", "learned_range"])
def test_coefficient_table_reproduces_the_posterior_algebra(steps, variance):
    chain = Schedule.linear(1000).respace(steps)
    table = chain.coefficient_table(variance)
    alpha_bar, alpha_bar_prev, betas = chain.alphas_cumprod, chain.alphas_cumprod_prev, chain.betas
    # μ = c0 x0 + c1 x_t is the mean of q(x_prev | x_t, x0): check it on x_t built from x0
    x0, eps = 0.3, -1.2
    x_t = np.sqrt(alpha_bar) * x0 + np.sqrt(1 - alpha_bar) * eps
    recovered = x_t * table[:, COLUMN["sqrt_recip_alpha_bar"]] - eps * table[:, COLUMN["sqrt_recip_alpha_bar_minus_one"]]
    np.testing.assert_allclose(recovered, x0, rtol=1e-9, atol=1e-9)
    c0, c1 = table[:, COLUMN["mean_coef_x0"]], table[:, COLUMN["mean_coef_xt"]]
    # the coefficients of a Gaussian product: c0 + c1 sqrt(ᾱ_t) = sqrt(ᾱ_prev)
    np.testing.assert_allclose(c0 + c1 * np.sqrt(alpha_bar), np.sqrt(alpha_bar_prev), rtol=1e-9)
    # the final step has no noise and returns x0 exactly
    assert table[0, COLUMN["noise_mask"]] == 0 and table[0, COLUMN["sigma"]] == 0
    assert c0[0] == pytest.approx(1.0) and c1[0] == pytest.approx(0.0)
    posterior_variance = betas * (1 - alpha_bar_prev) / (1 - alpha_bar)
    if variance == "fixed_small":
        np.testing.assert_allclose(table[1:, COLUMN["sigma"]] ** 2, posterior_variance[1:], rtol=1e-9)
    elif variance == "fixed_large":
        # ADM: β with only its first entry replaced by β̃_1; that entry is the noiseless final step
        np.testing.assert_allclose(table[1:, COLUMN["sigma"]] ** 2, betas[1:], rtol=1e-9)
    else:
        np.testing.assert_allclose(table[:, COLUMN["log_variance_max"]], np.log(betas))
        np.testing.assert_allclose(table[1:, COLUMN["log_variance_min"]], np.log(posterior_variance[1:]))


def test_coefficient_table_tensor_is_float32_on_the_device():
    table = coefficient_table_tensor(Schedule.linear(1000).respace(50), "fixed_small")
    assert table.dtype == torch.float32 and table.shape == (50, len(COLUMN)) and table.is_contiguous()


def test_unknown_variance_and_schedule_names_are_rejected():
    with pytest.raises(ValueError, match="variance must be one of"):
        Schedule.linear().respace(10).coefficient_table("fixed_tiny")
    with pytest.raises(ValueError, match="schedule must be 'linear' or 'cosine'"):
        Schedule.named("quadratic")
