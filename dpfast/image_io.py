"""Reading and writing images for the command line: PNG/JPEG/NPY ↔ tensors in [-1, 1].

Writes are atomic (a temporary file in the same folder, then a rename), so an
interrupted run never leaves a half-written output behind.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
import torch

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
SUPPORTED_SUFFIXES = IMAGE_SUFFIXES + (".npy",)


def collect_inputs(paths: list[str | Path]) -> list[Path]:
    """Expand files and folders (their supported files, sorted) into a list of files."""
    files: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            found = sorted(p for p in path.iterdir() if p.suffix.lower() in SUPPORTED_SUFFIXES and p.is_file())
            if not found:
                raise ValueError(f"input folder {str(path)!r} holds no {'/'.join(SUPPORTED_SUFFIXES)} files")
            files.extend(found)
        elif path.is_file():
            if path.suffix.lower() not in SUPPORTED_SUFFIXES:
                raise ValueError(f"input {str(path)!r} is not one of {SUPPORTED_SUFFIXES}")
            files.append(path)
        else:
            raise FileNotFoundError(f"input {str(path)!r} does not exist")
    if not files:
        raise ValueError("no input files given")
    names = [f.stem for f in files]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise ValueError(f"inputs share output names {duplicates[:5]}: rename them or run them separately")
    return files


def load_image(path: str | Path, channels: int) -> torch.Tensor:
    """An image file as a float32 ``(channels, H, W)`` tensor in [-1, 1].

    PNG/JPEG are converted to grayscale (``channels == 1``) or RGB (``channels == 3``);
    ``.npy`` files must already hold values in [-1, 1] shaped ``(H, W)`` or ``(C, H, W)``.
    """
    path = Path(path)
    if path.suffix.lower() == ".npy":
        try:
            array = np.load(path, allow_pickle=False)
        except (ValueError, OSError) as error:
            raise ValueError(f"cannot read {str(path)!r} as a .npy array: {error}") from error
        if array.ndim == 2:
            array = array[None]
        if array.ndim != 3 or array.shape[0] != channels:
            raise ValueError(f"{str(path)!r} has shape {array.shape}; expected (H, W) or ({channels}, H, W)")
        if not np.issubdtype(array.dtype, np.floating):
            raise ValueError(f"{str(path)!r} holds {array.dtype} values; expected floats in [-1, 1]")
        tensor = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))
        if not torch.isfinite(tensor).all() or tensor.abs().max() > 1.0 + 1e-6:
            raise ValueError(f"{str(path)!r} must hold finite values in [-1, 1]")
        return tensor
    from PIL import Image, UnidentifiedImageError

    if channels not in (1, 3):
        raise ValueError(f"image files can feed 1- or 3-channel models, this model has {channels}")
    try:
        with Image.open(path) as image:
            image.load()
            _check_opaque(image, path)
            if image.mode in SIXTEEN_BIT_MODES:  # convert("L") would saturate them: scale the 16 bits instead
                array = np.asarray(image).astype(np.float32)[None] / 65535.0 * 255.0
                return torch.from_numpy(np.repeat(array, channels, axis=0) / 127.5 - 1.0)
            if image.mode not in EIGHT_BIT_MODES:
                raise ValueError(f"image {str(path)!r} has PIL mode {image.mode!r}; expected 8-bit grayscale, RGB or "
                                 f"palette, or 16-bit grayscale ({', '.join(EIGHT_BIT_MODES + SIXTEEN_BIT_MODES)})")
            converted = image.convert("L" if channels == 1 else "RGB")
    except (UnidentifiedImageError, OSError) as error:
        raise ValueError(f"cannot read image {str(path)!r}: {error}") from error
    array = np.asarray(converted, dtype=np.float32)
    if channels == 1:
        array = array[None]
    else:
        array = array.transpose(2, 0, 1)
    return torch.from_numpy(array / 127.5 - 1.0)


# PIL modes read as they are: 8 bits per channel, and 16-bit grayscale (PNG), scaled from 0..65535
EIGHT_BIT_MODES = ("1", "L", "P", "RGB", "RGBA", "LA", "PA", "CMYK", "YCbCr")
SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L")


def _check_opaque(image, path: Path) -> None:
    """Restoration has no use for transparency, and dropping it would change what the image shows."""
    if image.mode in ("RGBA", "LA", "PA") or image.mode == "P" and "transparency" in image.info:
        alpha = np.asarray(image.convert("RGBA"))[..., 3]
        if (alpha < 255).any():
            raise ValueError(f"image {str(path)!r} has {int((alpha < 255).sum())} transparent pixel(s); "
                             "flatten it onto a background first")


def _atomic_write(path: Path, write) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(handle)
    try:
        write(temporary)
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.unlink(temporary)
        raise


def to_uint8(image: torch.Tensor) -> np.ndarray:
    """``(C, H, W)`` in [-1, 1] → ``(H, W)`` or ``(H, W, 3)`` uint8 (values outside are clamped for display)."""
    array = ((image.detach().float().cpu().clamp(-1, 1) + 1.0) * 127.5).round().to(torch.uint8).numpy()
    return array[0] if array.shape[0] == 1 else array.transpose(1, 2, 0)


def save_image(image: torch.Tensor, path: str | Path) -> None:
    """Write ``(C, H, W)`` in [-1, 1] to PNG/JPEG (8-bit) or NPY (float32, exact), atomically."""
    path = Path(path)
    if path.suffix.lower() not in SUPPORTED_SUFFIXES:
        raise ValueError(f"cannot write {str(path)!r}: its suffix must be one of {SUPPORTED_SUFFIXES}")
    if not isinstance(image, torch.Tensor) or image.dim() != 3 or image.shape[0] not in (1, 3):
        shape = tuple(image.shape) if isinstance(image, torch.Tensor) else type(image).__name__
        raise ValueError(f"save_image writes one (C, H, W) image with C = 1 or 3, got {shape}")
    if not torch.isfinite(image).all():
        raise ValueError(f"cannot write {str(path)!r}: the image holds {int((~torch.isfinite(image)).sum())} NaN or Inf values")
    if path.suffix.lower() == ".npy":
        array = image.detach().float().cpu().numpy()

        def write(temporary):
            with open(temporary, "wb") as handle:
                np.save(handle, array)

        _atomic_write(path, write)
        return
    from PIL import Image

    pil = Image.fromarray(to_uint8(image))
    _atomic_write(path, lambda temporary: pil.save(temporary, format="PNG" if path.suffix.lower() == ".png" else "JPEG"))


def save_grid(rows: list[list[torch.Tensor]], path: str | Path, padding: int = 2) -> None:
    """Tile ``rows`` of ``(C, H, W)`` images (same C; sizes may differ, smaller ones are
    upsampled to the largest by pixel repetition) into one PNG, atomically."""
    import torch.nn.functional as F

    if Path(path).suffix.lower() != ".png":
        raise ValueError(f"save_grid writes a PNG: {str(path)!r} must end in .png")

    height = max(image.shape[1] for row in rows for image in row)
    width = max(image.shape[2] for row in rows for image in row)
    channels = rows[0][0].shape[0]
    columns = max(len(row) for row in rows)
    canvas = torch.ones(channels, len(rows) * (height + padding) + padding, columns * (width + padding) + padding)
    for r, row in enumerate(rows):
        for c, image in enumerate(row):
            if image.shape[1:] != (height, width):
                image = F.interpolate(image[None].float(), size=(height, width), mode="nearest")[0]
            top, left = padding + r * (height + padding), padding + c * (width + padding)
            canvas[:, top : top + height, left : left + width] = image.detach().float().cpu()
    save_image(canvas, Path(path))
