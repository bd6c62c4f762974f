"""Fashion-MNIST from the Debian package ``dataset-fashion-mnist`` (SPEC §8).

The package installs the four gzip'd IDX files of the official release under
``/usr/share/datasets/fashion-mnist``. They are parsed here with numpy (no
torchvision) and returned in dpfast's image convention: float32 in [-1, 1], the 28×28
digits padded to 32×32 with -1 (the black background), shape ``(N, 1, 32, 32)``.
The "train" split (60,000 images) trains the built-in model; the "test" split
(10,000 images) is the only one used for held-out evaluation.
"""
from __future__ import annotations

import gzip
import os
from pathlib import Path

import numpy as np
import torch

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_DIR_ENV = "DPFAST_FASHION_MNIST_DIR"
APT_INSTALL_COMMAND = "sudo apt-get update && sudo apt-get install -y dataset-fashion-mnist"
FASHION_MNIST_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
FASHION_MNIST_SIZES = {"train": 60000, "test": 10000}
FASHION_MNIST_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)
IMAGE_SIZE = 32
PADDING = (IMAGE_SIZE - 28) // 2

# IDX type codes (the third byte of the magic number) and their big-endian dtypes.
IDX_DTYPES = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


def read_idx(path: str | Path) -> np.ndarray:
    """Read an IDX file (plain or ``.gz``) into a numpy array of its stored shape and dtype.

    Example::

        >>> read_idx("/usr/share/datasets/fashion-mnist/t10k-labels-idx1-ubyte.gz").shape  # doctest: +SKIP
        (10000,)
    """
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as file:
        raw = file.read()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in IDX_DTYPES:
        raise ValueError(f"{path} is not an IDX file (magic bytes {raw[:4].hex() or 'missing'})")
    dtype = IDX_DTYPES[raw[2]]
    ndim = raw[3]
    header = 4 + 4 * ndim
    shape = tuple(int(size) for size in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(raw) - header != expected:
        raise ValueError(f"{path}: header says shape {shape} ({expected} bytes) but {len(raw) - header} bytes follow")
    return np.frombuffer(raw, dtype=dtype, offset=header).reshape(shape).astype(dtype.newbyteorder("="))


def fashion_mnist_dir(root: str | Path | None = None) -> Path:
    """Where the IDX files are read: ``root``, else ``$DPFAST_FASHION_MNIST_DIR``, else the Debian path."""
    if root is not None:
        return Path(root)
    return Path(os.environ.get(FASHION_MNIST_DIR_ENV, FASHION_MNIST_DIR))


def load_fashion_mnist(
    split: str = "train", root: str | Path | None = None, limit: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Fashion-MNIST images and labels in dpfast's convention.

    Returns ``images`` float32 ``(N, 1, 32, 32)`` in [-1, 1] (28×28 padded by 2 pixels of
    -1 on each side) and ``labels`` int64 ``(N,)`` in ``0..9`` (names in
    :data:`FASHION_MNIST_CLASSES`), on the CPU. ``split`` is ``"train"`` (60,000) or
    ``"test"`` (10,000); ``limit`` keeps the first ``limit`` examples. Missing files raise
    FileNotFoundError with the apt command that installs them.

    Example::

        >>> images, labels = load_fashion_mnist("test", limit=16)   # doctest: +SKIP
        >>> images.shape, images.min().item(), labels[:3].tolist()
        (torch.Size([16, 1, 32, 32]), -1.0, [9, 2, 1])
    """
    if split not in FASHION_MNIST_FILES:
        raise ValueError(f"split must be one of {sorted(FASHION_MNIST_FILES)}, got {split!r}")
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be a positive int or None, got {limit!r}")
    directory = fashion_mnist_dir(root)
    paths = [directory / name for name in FASHION_MNIST_FILES[split]]
    missing = [str(path) for path in paths if not path.is_file()]
    if missing:
        raise FileNotFoundError(
            f"Fashion-MNIST {split!r} files not found: {missing}. Install the Debian package with\n"
            f"    {APT_INSTALL_COMMAND}\n"
            f"or point ${FASHION_MNIST_DIR_ENV} at a directory holding {list(FASHION_MNIST_FILES[split])}."
        )
    pixels, labels = read_idx(paths[0]), read_idx(paths[1])
    if pixels.ndim != 3 or pixels.shape[1:] != (28, 28) or labels.shape != (pixels.shape[0],):
        raise ValueError(f"unexpected Fashion-MNIST shapes: images {pixels.shape}, labels {labels.shape}")
    if limit is not None:
        pixels, labels = pixels[:limit], labels[:limit]
    return pixels_to_images(pixels), torch.from_numpy(labels.astype(np.int64))


def pixels_to_images(pixels: np.ndarray) -> torch.Tensor:
    """uint8 ``(N, 28, 28)`` Fashion-MNIST pixels → float32 ``(N, 1, 32, 32)`` in [-1, 1], padded with -1."""
    if pixels.ndim != 3 or pixels.shape[1:] != (28, 28) or pixels.dtype != np.uint8:
        raise ValueError(f"pixels must be uint8 (N, 28, 28), got {pixels.dtype} {pixels.shape}")
    images = pixels.astype(np.float32) * np.float32(2.0 / 255.0) - np.float32(1.0)
    images = np.pad(images, ((0, 0), (PADDING, PADDING), (PADDING, PADDING)), constant_values=-1.0)
    return torch.from_numpy(np.ascontiguousarray(images[:, None]))


DEMO_IMAGES = Path(__file__).resolve().parent / "assets" / "demo_images.npz"


def load_demo_images() -> tuple[torch.Tensor, list[str]]:
    """The eight bundled Fashion-MNIST *test* images (dpfast/assets/README.md) and their class names.

    Needs no dataset install: ``make demo`` runs on them.
    """
    with np.load(DEMO_IMAGES) as bundle:
        return pixels_to_images(bundle["images"]), [str(name) for name in bundle["class_names"]]
