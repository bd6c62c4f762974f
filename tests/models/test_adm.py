"""The ADM UNet: guided-diffusion layout, strict loading, numerics (SPEC §8)."""
from __future__ import annotations

import math

import pytest
import torch

from dpfast.models.adm import (
    ADMConfig,
    ADMScoreModel,
    AttentionBlock,
    adm_config,
    load_adm_checkpoint,
    timestep_embedding,
)
from dpfast.testing import assert_close

safetensors_torch = pytest.importorskip("safetensors.torch")

SMALL_CONFIG = ADMConfig(
    image_size=32,
    in_channels=3,
    model_channels=32,
    num_res_blocks=1,
    attention_resolutions=(16,),
    channel_mult=(1, 2),
    num_head_channels=32,
    use_scale_shift_norm=True,
    resblock_updown=True,
    learn_sigma=True,
)


def meta_model(config) -> ADMScoreModel:
    with torch.device("meta"):
        return ADMScoreModel(config)


def randomised_small_model(seed: int = 0) -> ADMScoreModel:
    # ADM zero-initialises the output convs; random values everywhere make the
    # round-trip comparison meaningful.
    model = ADMScoreModel(SMALL_CONFIG).eval()
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.normal_(0.0, 0.05, generator=generator)
    return model


def small_inputs(batch: int = 2):
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(batch, 3, 32, 32, generator=generator)
    t = torch.tensor([0, 999, 417, 58][:batch], dtype=torch.int64)
    return x, t


@pytest.mark.parametrize(
    "preset, tensors, parameters",
    [
        ("adm-ffhq256", 362, 93_563_910),
        ("adm-imagenet256-uncond", 566, 552_814_086),
    ],
)
def test_preset_has_guided_diffusion_tensor_and_parameter_counts(preset, tensors, parameters):
    model = meta_model(preset)
    assert len(model.unet.state_dict()) == tensors
    assert sum(p.numel() for p in model.parameters()) == parameters


def test_ffhq_preset_key_names_follow_guided_diffusion():
    shapes = {key: tuple(value.shape) for key, value in meta_model("adm-ffhq256").unet.state_dict().items()}
    expected = {
        "time_embed.0.weight": (512, 128),
        "time_embed.2.weight": (512, 512),
        "input_blocks.0.0.weight": (128, 3, 3, 3),
        "input_blocks.1.0.in_layers.0.weight": (128,),
        "input_blocks.1.0.in_layers.2.weight": (128, 128, 3, 3),
        "input_blocks.1.0.emb_layers.1.weight": (256, 512),
        "input_blocks.1.0.out_layers.3.weight": (128, 128, 3, 3),
        "input_blocks.2.0.in_layers.2.weight": (128, 128, 3, 3),  # down res block
        "input_blocks.5.0.skip_connection.weight": (256, 128, 1, 1),
        "input_blocks.9.1.qkv.weight": (1536, 512, 1),  # 16×16 attention
        "input_blocks.9.1.proj_out.weight": (512, 512, 1),
        "input_blocks.9.1.norm.weight": (512,),
        "input_blocks.10.0.in_layers.2.weight": (512, 512, 3, 3),  # 16 -> 8 down res block
        "middle_block.1.qkv.weight": (1536, 512, 1),
        "middle_block.2.emb_layers.1.weight": (1024, 512),
        "output_blocks.0.0.skip_connection.weight": (512, 1024, 1, 1),
        "output_blocks.3.1.qkv.weight": (1536, 512, 1),
        "output_blocks.3.2.in_layers.2.weight": (512, 512, 3, 3),  # 16 -> 32 up res block
        "output_blocks.5.0.in_layers.2.weight": (256, 512, 3, 3),
        "out.0.weight": (128,),
        "out.2.weight": (6, 128, 3, 3),
    }
    for key, shape in expected.items():
        assert shapes.get(key) == shape, key
    assert not any(".op." in key or "h_upd" in key or "label_emb" in key for key in shapes)


def test_plain_resample_layers_use_op_and_conv_names():
    config = ADMConfig(**{**SMALL_CONFIG.to_dict(), "resblock_updown": False})
    keys = meta_model(config).unet.state_dict().keys()
    assert "input_blocks.2.0.op.weight" in keys
    assert "output_blocks.1.2.conv.weight" in keys


def test_timestep_embedding_puts_cos_half_first():
    embedding = timestep_embedding(torch.tensor([0, 3]), 8)
    torch.testing.assert_close(embedding[0], torch.tensor([1.0] * 4 + [0.0] * 4))
    frequencies = torch.exp(-math.log(10000.0) * torch.arange(4) / 4)
    torch.testing.assert_close(embedding[1, :4], torch.cos(3 * frequencies))
    torch.testing.assert_close(embedding[1, 4:], torch.sin(3 * frequencies))


def test_attention_splits_qkv_per_head_in_legacy_order():
    torch.manual_seed(0)
    block = AttentionBlock(64, num_heads=2)
    with torch.no_grad():
        for parameter in block.parameters():
            parameter.normal_(0.0, 0.2)
    x = torch.randn(2, 64, 4, 4)
    # Definition: channels [h*96, (h+1)*96) of qkv belong to head h, as [q | k | v].
    flat = x.reshape(2, 64, 16)
    qkv = block.qkv(block.norm(flat)).reshape(2 * 2, 3 * 32, 16)
    query, key, value = qkv.split(32, dim=1)
    weights = torch.softmax(torch.einsum("bct,bcs->bts", query, key) / math.sqrt(32), dim=-1)
    attended = torch.einsum("bts,bcs->bct", weights, value).reshape(2, 64, 16)
    expected = (flat + block.proj_out(attended)).reshape(2, 64, 4, 4)
    torch.testing.assert_close(block(x), expected)


def test_score_model_interface_and_output_shape():
    model = ADMScoreModel(SMALL_CONFIG)
    model.check_interface()
    assert model.learned_variance and model.default_variance == "learned_range"
    assert model.image_shape == (3, 32, 32) and model.default_clip_denoised
    assert model.schedule.num_timesteps == 1000
    x, t = small_inputs()
    assert model(x, t).shape == (2, 6, 32, 32)
    builtin = meta_model("builtin-fmnist")
    assert not builtin.learned_variance and builtin.default_variance == "fixed_small"
    assert 1_000_000 <= sum(p.numel() for p in builtin.parameters()) <= 3_000_000


@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_plain_state_dict_round_trip_gives_identical_outputs(tmp_path, suffix):
    model = randomised_small_model()
    path = tmp_path / f"small{suffix}"
    if suffix == ".pt":
        torch.save(model.unet.state_dict(), path)
    else:
        safetensors_torch.save_file(model.unet.state_dict(), str(path))
    loaded = load_adm_checkpoint(path, SMALL_CONFIG)
    assert not loaded.training
    x, t = small_inputs()
    with torch.no_grad():
        expected, actual = model(x, t), loaded(x, t)
    assert expected.abs().max() > 1e-3  # not a trivially zero network
    torch.testing.assert_close(actual, expected, rtol=0, atol=0)


def _remove(state, key):
    del state[key]


def _rename(state, key):
    state[key.replace("qkv", "qkv_renamed")] = state.pop(key)


def _reshape(state, key):
    state[key] = state[key].reshape(-1)


@pytest.mark.parametrize(
    "corrupt, key, words",
    [
        (_remove, "middle_block.0.in_layers.2.weight", ["missing"]),
        (_rename, "middle_block.1.qkv.weight", ["missing", "unexpected", "middle_block.1.qkv_renamed.weight"]),
        (_reshape, "output_blocks.1.0.emb_layers.1.weight", ["mis-shaped", "(128, 128)", "(16384,)"]),
    ],
    ids=["removed", "renamed", "reshaped"],
)
def test_corrupted_state_dict_fails_naming_the_key(tmp_path, corrupt, key, words):
    state = dict(randomised_small_model().unet.state_dict())
    corrupt(state, key)
    path = tmp_path / "corrupt.pt"
    torch.save(state, path)
    with pytest.raises(ValueError) as error:
        load_adm_checkpoint(path, SMALL_CONFIG)
    message = str(error.value)
    for word in [key, *words]:
        assert word in message


def test_wrapped_training_checkpoint_is_rejected_with_what_was_found(tmp_path):
    state = randomised_small_model().unet.state_dict()
    path = tmp_path / "wrapped.pt"
    torch.save({"state_dict": state, "step": torch.tensor(3)}, path)
    with pytest.raises(ValueError, match="'state_dict'"):
        load_adm_checkpoint(path, SMALL_CONFIG)


def test_module_prefix_is_stripped_with_a_warning(tmp_path):
    model = randomised_small_model()
    path = tmp_path / "ddp.pt"
    torch.save({f"module.{key}": value for key, value in model.unet.state_dict().items()}, path)
    with pytest.warns(UserWarning, match="module."):
        loaded = load_adm_checkpoint(path, SMALL_CONFIG)
    torch.testing.assert_close(loaded.unet.middle_block[1].qkv.weight, model.unet.middle_block[1].qkv.weight)


def test_wrong_config_lists_the_mismatches(tmp_path):
    path = tmp_path / "small.safetensors"
    safetensors_torch.save_file(randomised_small_model().unet.state_dict(), str(path))
    with pytest.raises(ValueError, match="missing keys: .*and \\d+ more"):
        load_adm_checkpoint(path, "adm-ffhq256")


def test_unknown_preset_lists_presets():
    with pytest.raises(ValueError, match="adm-ffhq256"):
        adm_config("ffhq")


def test_attention_resolution_the_network_never_reaches_is_rejected():
    with pytest.raises(ValueError, match="attention_resolutions"):
        ADMConfig(**{**SMALL_CONFIG.to_dict(), "attention_resolutions": (4,)})


def test_bf16_forward_is_finite_and_close_to_float64():
    # Tolerances, against a float64 run: elementwise, the shared bf16 row of
    # dpfast.testing (measured max error 8e-4 against its 8e-3); relative L2 error
    # ≤ 1e-2, i.e. 5× bf16's unit roundoff 2**-9 (measured 3.7e-3 for both bf16 weights
    # and autocast; fp32 gets 5e-7, checked at ≤ 1e-5).
    model = randomised_small_model()
    x, t = small_inputs(batch=2)
    with torch.no_grad():
        reference = model.double()(x.double(), t)
        model.float()
        float32 = model(x, t)
        bfloat16 = model.to(torch.bfloat16)(x, t)
        model.float()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            autocast = model(x, t)

    def relative_error(output):
        return ((output.double() - reference).norm() / reference.norm()).item()

    assert bfloat16.dtype == torch.float32  # returned in the input's dtype
    for output in (bfloat16, autocast):
        assert torch.isfinite(output).all()
        assert relative_error(output) <= 1e-2
        assert_close(output, reference, torch.bfloat16)
    assert relative_error(float32) <= 1e-5


def test_half_precision_group_norm_stays_finite_for_large_activations():
    model = randomised_small_model()
    x, t = small_inputs()
    with torch.no_grad():
        output = model.to(torch.bfloat16)(x * 300.0, t)
    assert torch.isfinite(output).all()


def test_loaded_model_is_frozen_but_differentiable_in_its_input(tmp_path):
    path = tmp_path / "small.safetensors"
    safetensors_torch.save_file(randomised_small_model().unet.state_dict(), str(path))
    model = load_adm_checkpoint(path, SMALL_CONFIG)
    assert not any(parameter.requires_grad for parameter in model.parameters())
    x, t = small_inputs()
    x.requires_grad_(True)
    (gradient,) = torch.autograd.grad(model(x, t).square().sum(), x)
    assert torch.isfinite(gradient).all() and gradient.abs().max() > 0


def test_func_vjp_under_bf16_autocast_matches_autograd():
    """The compiled DPS step differentiates the network with torch.func.vjp, under autocast
    when dtype is bf16. Through SDPA that raised "expected scalar type Float but found
    BFloat16" on the CPU (torch 2.14) — in eager as in the compiled graph, so the compiled
    bf16 sampler could not run an ADM model at all; attention now runs with autocast off."""
    model = randomised_small_model()
    x, t = small_inputs(batch=2)
    cotangent = torch.randn(x.shape[0], 6, 32, 32, generator=torch.Generator().manual_seed(2))

    def network(x_in):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return model(x_in, t)

    output, vjp_fn = torch.func.vjp(network, x)
    (functional,) = vjp_fn(cotangent)
    x_grad = x.clone().requires_grad_(True)
    (autograd,) = torch.autograd.grad(network(x_grad), x_grad, cotangent)
    assert output.dtype == torch.float32 and torch.isfinite(functional).all()
    # The two differentiate through different kernels (they differ by 3e-8 in float32 too);
    # in bf16 the gap is one rounding (measured relative L2 7e-3): the shared bf16 row.
    assert_close(functional, autograd, torch.bfloat16)
