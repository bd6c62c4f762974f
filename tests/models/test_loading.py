from pathlib import Path

import pytest
import torch

import dpfast as dp
from dpfast.models.adm import ADMConfig, ADMScoreModel

SMALL = ADMConfig(
    image_size=16, in_channels=1, model_channels=32, num_res_blocks=1, attention_resolutions=(8,),
    channel_mult=(1, 2), num_head_channels=32, learn_sigma=True,
)


def test_load_model_reads_an_adm_checkpoint_with_its_config(tmp_path):
    model = ADMScoreModel(SMALL)
    path = tmp_path / "small.pt"
    torch.save(model.unet.state_dict(), path)
    loaded = dp.load_model(path, config=SMALL)
    x, t = torch.randn(2, 1, 16, 16), torch.tensor([3, 900])
    with torch.no_grad():
        torch.testing.assert_close(loaded(x, t), model(x, t), rtol=0, atol=0)
    assert loaded.default_variance == "learned_range"


def test_load_model_errors_name_what_is_wrong(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        dp.load_model(tmp_path / "missing.pt", config="adm-ffhq256")
    path = tmp_path / "small.pt"
    torch.save(ADMScoreModel(SMALL).unet.state_dict(), path)
    with pytest.raises(ValueError, match="needs config="):
        dp.load_model(path)
    with pytest.raises(ValueError, match="unknown ADM preset 'adm-ffhq512'"):
        dp.load_model(path, config="adm-ffhq512")
    with pytest.raises(TypeError, match="source must be"):
        dp.load_model(42)


def test_unreadable_checkpoints_and_bad_devices_are_named_errors(tmp_path):
    good = tmp_path / "good.pt"
    torch.save(ADMScoreModel(SMALL).unet.state_dict(), good)
    truncated, text, empty, garbage = (tmp_path / name for name in ("cut.pt", "text.pt", "empty.pt", "bad.safetensors"))
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    text.write_text("not a checkpoint at all")
    empty.write_bytes(b"")
    garbage.write_bytes(b"garbage")
    for path in (truncated, text, empty):
        with pytest.raises(ValueError, match=f"cannot read {path} as a torch checkpoint"):
            dp.load_model(path, config=SMALL)
    pickled = tmp_path / "objects.pt"
    torch.save({"weights": torch.zeros(1), "note": Path("not a tensor")}, pickled)
    with pytest.raises(ValueError, match="holds Python objects other than tensors, which dpfast refuses to unpickle"):
        dp.load_model(pickled, config=SMALL)
    with pytest.raises(ValueError, match=f"cannot read {garbage} as a .safetensors file"):
        dp.load_model(garbage, config=SMALL)
    with pytest.raises(ValueError, match=r"is a folder; for a diffusers model directory use 'diffusers:"):
        dp.load_model(tmp_path, config=SMALL)
    with pytest.raises(ValueError, match="device 'gpu' is not a device"):
        dp.load_model(good, config=SMALL, device="gpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="device 'cuda' was asked for but torch sees no CUDA device"):
            dp.load_model(good, config=SMALL, device="cuda")
