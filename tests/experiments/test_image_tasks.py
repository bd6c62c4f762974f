"""ImageTask step-size choices: β-scaled and constant ζ, alone or mixed across λ."""
import numpy as np
import pytest
import torch

from dpfast.experiments.image_tasks import ImageTask, best_step_sizes, step_size_errors, traverse_task
from dpfast.guidance import beta_scaled_zeta
from dpfast.models.toy import ToyConvScore


@pytest.fixture(scope="module")
def model():
    return ToyConvScore((1, 32, 32), hidden=8).eval()


def test_a_mapping_of_pairs_mixes_schedules_and_interpolates_per_step(model):
    task = ImageTask("deblur", 0.05, {0.0: ("beta", 160.0), 1.0: ("constant", 3.0)})
    zeta = task.sampler_zeta(model, steps=10)
    beta = beta_scaled_zeta(160.0, model.schedule, 10)(1.0)
    np.testing.assert_allclose(zeta(0.0), beta)
    np.testing.assert_allclose(zeta(1.0), np.full(10, 3.0))
    np.testing.assert_allclose(zeta(0.25), 0.75 * beta + 0.25 * 3.0)
    with pytest.raises(ValueError, match=r"lam=1.5 is outside"):
        zeta(1.5)
    assert task.zeta_text == "λ 0: c 160, λ 1: ζ 3"


def test_a_single_pair_and_a_plain_number_give_the_same_steps(model):
    plain = ImageTask("denoise", 0.1, 2.0, zeta_schedule="constant").sampler_zeta(model, 5)
    pair = ImageTask("denoise", 0.1, ("constant", 2.0)).sampler_zeta(model, 5)
    np.testing.assert_allclose(pair, np.full(5, float(plain)))


@pytest.mark.parametrize("zeta", [("linear", 1.0), ("beta",), {0.0: ("beta", 1.0, 2.0)}])
def test_a_malformed_pair_is_rejected(zeta):
    with pytest.raises(ValueError, match="a zeta pair must be"):
        ImageTask("denoise", 0.1, zeta)


def test_search_over_both_schedules_returns_the_lowest_mse_choice_per_lam(model):
    images = torch.rand(2, 1, 32, 32) * 2 - 1
    lines = []
    choices = [("beta", 10.0), ("constant", 0.1), ("constant", 1.0)]
    errors = step_size_errors(model, ImageTask("denoise", 0.1, 1.0), images, [0.0, 1.0], choices, steps=3,
                              log=lines.append)
    chosen = best_step_sizes(errors, [0.0, 1.0])
    assert set(chosen) == {0.0, 1.0} and set(chosen.values()) <= set(choices)
    assert [line.split(":")[0] for line in lines] == ["denoise σn=0.1 c 10", "denoise σn=0.1 ζ 0.1", "denoise σn=0.1 ζ 1"]
    mse = {choice: [float(value.split("MSE ")[1]) for value in line.split(": ", 1)[1].split(", ")]
           for choice, line in zip(choices, lines)}
    for index, lam in enumerate([0.0, 1.0]):
        assert mse[chosen[lam]][index] == min(values[index] for values in mse.values())


def test_ddim_baseline_at_eta_one_is_the_samplers_lam_one_with_clipping(model):
    # The images experiment's DDIM-η baseline clamps x̂0 as the sampler does (the toy image
    # model defaults to clipping); at η = 1 it must reproduce the λ = 1 chain.
    from dpfast import Sampler
    from dpfast.experiments.pinwheel import ddim_dps_sample
    from dpfast.operators import Identity

    assert model.default_clip_denoised
    y = torch.rand(2, 1, 32, 32) * 2 - 1
    ddim = ddim_dps_sample(model, Identity(), y, 1.0, 0.5, 6, seeds=[3, 4])
    sampler = Sampler(model, Identity(), steps=6, zeta=0.5)
    torch.testing.assert_close(ddim, sampler.restore(y, lam=1.0, seed=[3, 4]), atol=2e-4, rtol=1e-4)
    unclipped = ddim_dps_sample(model, Identity(), y, 1.0, 0.5, 6, seeds=[3, 4], clip_denoised=False)
    assert not torch.allclose(unclipped, ddim, atol=1e-3)


def test_ddim_baseline_takes_a_per_step_schedule_in_the_samplers_order(model):
    """The images experiment gives DDIM λ = 1's chosen schedule step for step (a β-scaled one
    grows 100-fold over the chain, so the order matters): at η = 1 it is the λ = 1 chain."""
    from dpfast import Sampler
    from dpfast.experiments.pinwheel import ddim_dps_sample
    from dpfast.guidance import beta_scaled_zeta
    from dpfast.operators import Identity

    y = torch.rand(2, 1, 32, 32) * 2 - 1
    schedule = beta_scaled_zeta(8.0, model.schedule, 6)(1.0)  # execution order
    assert schedule[0] != schedule[-1]
    ddim = ddim_dps_sample(model, Identity(), y, 1.0, schedule, 6, seeds=[3, 4])
    sampler = Sampler(model, Identity(), steps=6, zeta=list(schedule))
    # equal up to rounding; threaded reductions round differently from run to run, and an element
    # whose x̂0 sits on the clamp's edge can then land ~1e-3 away (seen: 1 of 2048, 8e-4)
    difference = (ddim - sampler.restore(y, lam=1.0, seed=[3, 4])).abs()
    assert difference.max() < 2e-3 and (difference > 2e-4).float().mean() < 0.01, difference.max()
    reversed_order = ddim_dps_sample(model, Identity(), y, 1.0, schedule[::-1].copy(), 6, seeds=[3, 4])
    assert not torch.allclose(reversed_order, ddim, atol=1e-3)
    with pytest.raises(ValueError, match=r"one value per step \(6\)"):
        ddim_dps_sample(model, Identity(), y, 1.0, schedule[:5], 6, seeds=[3, 4])


def test_a_task_names_its_guidance_unless_it_is_dps_and_refuses_others():
    assert ImageTask("deblur", 0.05, 3.0).name == "deblur σn=0.05"
    assert ImageTask("deblur", 0.05, 3.0, guidance="x0").name == "deblur σn=0.05, x0 guidance"
    with pytest.raises(ValueError, match=r"guidance must be one of \('dps', 'x0'\), got 'none'"):
        ImageTask("deblur", 0.05, 3.0, guidance="none")


def test_traverse_task_runs_the_tasks_guidance(monkeypatch, model):
    from dpfast.experiments import image_tasks

    seen = []
    real = image_tasks.Sampler
    monkeypatch.setattr(image_tasks, "Sampler", lambda *args, **kwargs: seen.append(kwargs["guidance"]) or real(*args, **kwargs))
    images = torch.rand(2, 1, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1
    for guidance in ("dps", "x0"):
        task = ImageTask("denoise", 0.1, 1.0, guidance=guidance)
        traverse_task(model, task, task.measure(images), [0.0], steps=2)
    assert seen == ["dps", "x0"]
