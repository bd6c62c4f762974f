import json

import numpy as np
import pytest
import torch

diffusers = pytest.importorskip("diffusers", reason="the diffusers adapter needs `pip install dpfast[diffusers]`")

from dpfast.models.diffusers import DiffusersScoreModel, load_diffusers, schedule_from_scheduler_config  # noqa: E402
from dpfast.operators import Identity  # noqa: E402
from dpfast.sampler import Sampler  # noqa: E402


def _tiny_unet(out_channels=1):
    torch.manual_seed(0)
    return diffusers.UNet2DModel(
        sample_size=16,
        in_channels=1,
        out_channels=out_channels,
        layers_per_block=1,
        block_out_channels=(16, 32),
        down_block_types=("DownBlock2D", "AttnDownBlock2D"),
        up_block_types=("AttnUpBlock2D", "UpBlock2D"),
        norm_num_groups=8,
    ).eval()


def _save_bare(tmp_path, unet, **scheduler_options):
    unet.save_pretrained(tmp_path)
    diffusers.DDPMScheduler(**scheduler_options).save_config(tmp_path)
    return tmp_path


def test_adapter_gives_the_unets_own_epsilon(tmp_path):
    unet = _tiny_unet()
    model = load_diffusers(_save_bare(tmp_path, unet, variance_type="fixed_large", clip_sample=False))
    x = torch.randn(3, 1, 16, 16)
    t = torch.tensor([0, 500, 999])
    with torch.no_grad():
        torch.testing.assert_close(model(x, t), unet(x, t).sample)
    assert model.image_shape == (1, 16, 16)
    assert model.default_variance == "fixed_large" and model.default_clip_denoised is False


@pytest.mark.parametrize(
    "options",
    [
        dict(beta_schedule="linear", beta_start=1e-4, beta_end=0.02, num_train_timesteps=1000),
        dict(beta_schedule="scaled_linear", beta_start=1e-4, beta_end=0.02, num_train_timesteps=500),
        dict(beta_schedule="squaredcos_cap_v2", num_train_timesteps=1000),
    ],
    ids=["linear", "scaled-linear", "cosine"],
)
def test_schedule_equals_the_scheduler_config(options):
    scheduler = diffusers.DDPMScheduler(**options)
    schedule, variance, clip, prediction = schedule_from_scheduler_config(dict(scheduler.config))
    # diffusers keeps its betas in float32; dpfast recomputes them in float64
    np.testing.assert_allclose(schedule.betas, scheduler.betas.double().numpy(), rtol=2e-6, atol=1e-9)
    np.testing.assert_allclose(schedule.alphas_cumprod, scheduler.alphas_cumprod.double().numpy(), rtol=1e-5, atol=1e-8)
    assert (variance, clip, prediction) == ("fixed_small", True, "epsilon")


def test_pipeline_directory_layout_loads(tmp_path):
    unet = _tiny_unet()
    diffusers.DDPMPipeline(unet=unet, scheduler=diffusers.DDPMScheduler()).save_pretrained(tmp_path)
    model = load_diffusers(tmp_path)
    x, t = torch.randn(2, 1, 16, 16), torch.tensor([10, 20])
    with torch.no_grad():
        torch.testing.assert_close(model(x, t), unet(x, t).sample)


def test_learned_range_unet_exposes_its_variance_channel(tmp_path):
    model = load_diffusers(_save_bare(tmp_path, _tiny_unet(out_channels=2), variance_type="learned_range"))
    assert model.learned_variance and model.default_variance == "learned_range"
    sampler = Sampler(model, Identity(), steps=3)
    out = sampler.restore(torch.zeros(1, 1, 16, 16), lam=1.0, seed=0)
    assert out.shape == (1, 1, 16, 16) and torch.isfinite(out).all()


def test_v_prediction_is_converted_to_epsilon():
    unet = _tiny_unet()
    config = dict(diffusers.DDPMScheduler(prediction_type="v_prediction").config)
    model = DiffusersScoreModel(unet, config)
    x, t = torch.randn(2, 1, 16, 16), torch.tensor([100, 800])
    alpha_bar = model.alphas_cumprod[t].view(-1, 1, 1, 1)
    with torch.no_grad():
        v = unet(x, t).sample
        torch.testing.assert_close(model(x, t), alpha_bar.sqrt() * v + (1 - alpha_bar).sqrt() * x)


def test_missing_scheduler_config_is_a_clear_error(tmp_path):
    _tiny_unet().save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="has no scheduler_config.json"):
        load_diffusers(tmp_path)


def test_unsupported_scheduler_settings_name_the_setting():
    with pytest.raises(ValueError, match="variance_type 'learned' is not supported"):
        schedule_from_scheduler_config({"variance_type": "learned"})
    with pytest.raises(ValueError, match="beta_schedule 'sigmoid' is not supported"):
        schedule_from_scheduler_config({"beta_schedule": "sigmoid"})
