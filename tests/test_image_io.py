"""Reading and writing image files: every pixel format read as what it shows, or refused by name."""
import numpy as np
import pytest
import torch
from PIL import Image

from dpfast.image_io import load_image, save_grid, save_image


def test_sixteen_bit_grayscale_is_scaled_not_saturated(tmp_path):
    values = (np.arange(32 * 32, dtype=np.uint32).reshape(32, 32) * 64).astype(np.uint16)  # 0 .. 65472
    path = tmp_path / "deep.png"
    Image.fromarray(values).save(path)
    assert Image.open(path).mode.startswith("I;16")
    expected = torch.from_numpy(values.astype(np.float32) / 65535.0 * 2.0 - 1.0)
    torch.testing.assert_close(load_image(path, 1)[0], expected, rtol=0, atol=1e-6)
    assert load_image(path, 3).shape == (3, 32, 32)


def test_transparency_is_refused_and_an_opaque_alpha_channel_is_not(tmp_path):
    pixels = np.zeros((32, 32, 4), np.uint8)
    pixels[..., 3] = 255
    Image.fromarray(pixels).save(tmp_path / "opaque.png")
    assert load_image(tmp_path / "opaque.png", 1).shape == (1, 32, 32)
    pixels[0, :3, 3] = 0
    Image.fromarray(pixels).save(tmp_path / "holes.png")
    with pytest.raises(ValueError, match=r"holes.png' has 3 transparent pixel\(s\); flatten it"):
        load_image(tmp_path / "holes.png", 1)


def test_modes_without_a_meaning_here_are_refused(tmp_path):
    Image.fromarray(np.zeros((8, 8), np.float32)).save(tmp_path / "float.tiff")
    (tmp_path / "float.png").write_bytes((tmp_path / "float.tiff").read_bytes())  # a TIFF under a .png name
    with pytest.raises(ValueError, match=r"has PIL mode 'F'; expected 8-bit"):
        load_image(tmp_path / "float.png", 1)


def test_writes_refuse_what_they_cannot_write_faithfully(tmp_path):
    image = torch.zeros(1, 8, 8)
    with pytest.raises(ValueError, match=r"its suffix must be one of \('.png', '.jpg', '.jpeg', '.npy'\)"):
        save_image(image, tmp_path / "out.tif")
    with pytest.raises(ValueError, match=r"one \(C, H, W\) image with C = 1 or 3, got \(1, 1, 8, 8\)"):
        save_image(image[None], tmp_path / "out.png")
    with pytest.raises(ValueError, match="holds 1 NaN or Inf"):
        save_image(image.clone().index_put_((torch.tensor(0),) * 3, torch.tensor(float("nan"))), tmp_path / "out.png")
    with pytest.raises(ValueError, match=r"save_grid writes a PNG: .*strip.jpg' must end in .png"):
        save_grid([[image]], tmp_path / "strip.jpg")
    assert list(tmp_path.iterdir()) == []
    save_grid([[image, image]], tmp_path / "strip.png")
    assert Image.open(tmp_path / "strip.png").size == (2 * 8 + 3 * 2, 8 + 2 * 2)
