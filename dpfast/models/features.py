"""A small Fashion-MNIST classifier whose penultimate layer is dpfast's feature space.

:func:`dpfast.metrics.fd` fits Gaussians to these features and reports the Fréchet
distance between them: the FID recipe, with a network that knows Fashion-MNIST in
place of an ImageNet Inception network (whose features say little about 32×32
grayscale clothes). The weights ship in ``dpfast/assets/fmnist_features.safetensors``;
``python -m dpfast.train_features`` retrains them (see ``docs/MODEL_CARD.md``).

Architecture (155,898 parameters, 0.62 MB in float32)::

    (B, 1, 32, 32) in [-1, 1]
    conv3×3  1→16, BatchNorm, ReLU, max-pool 2    -> (B, 16, 16, 16)
    conv3×3 16→32, BatchNorm, ReLU, max-pool 2    -> (B, 32,  8,  8)
    conv3×3 32→64, BatchNorm, ReLU, max-pool 2    -> (B, 64,  4,  4)
    flatten, linear 1024→128, ReLU                -> (B, 128)   = features(x)
    dropout, linear 128→10                         -> (B, 10)    = forward(x), logits
"""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn

FEATURE_NETWORK_ASSET = Path(__file__).resolve().parent.parent / "assets" / "fmnist_features.safetensors"
FEATURE_DIMENSION = 128
NUMBER_OF_CLASSES = 10
IMAGE_SHAPE = (1, 32, 32)


def _convolution_block(in_channels: int, out_channels: int) -> nn.Sequential:
    # The convolution has no bias: the BatchNorm that follows has its own shift.
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(2),
    )


class FashionFeatureNetwork(nn.Module):
    """CNN classifier for 1×32×32 Fashion-MNIST images in [-1, 1].

    ``features(x)`` gives the 128-dimensional penultimate activations used by
    :func:`dpfast.metrics.fd`; ``forward(x)`` gives the 10 class logits (class names in
    :data:`dpfast.data.FASHION_MNIST_CLASSES`). A fresh instance holds random weights;
    :func:`load_feature_network` returns the trained one.

    Example::

        >>> network = FashionFeatureNetwork().eval()
        >>> network.features(torch.zeros(2, 1, 32, 32)).shape
        torch.Size([2, 128])
    """

    def __init__(self, dropout: float = 0.3):
        super().__init__()
        self.convolutions = nn.Sequential(
            _convolution_block(1, 16),
            _convolution_block(16, 32),
            _convolution_block(32, 64),
        )
        self.embedding = nn.Sequential(
            nn.Flatten(),
            nn.Linear(64 * 4 * 4, FEATURE_DIMENSION),
            nn.ReLU(inplace=True),
        )
        self.classifier = nn.Sequential(nn.Dropout(dropout), nn.Linear(FEATURE_DIMENSION, NUMBER_OF_CLASSES))

    def _check_input(self, x: torch.Tensor) -> None:
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"x must be a torch.Tensor of shape (B, 1, 32, 32), got {type(x).__name__}")
        if x.ndim != 4 or tuple(x.shape[1:]) != IMAGE_SHAPE:
            raise ValueError(f"x must have shape (B, 1, 32, 32) (images in [-1, 1]), got {tuple(x.shape)}")

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate-layer activations.

        ``x``: float ``(B, 1, 32, 32)`` in [-1, 1], on the network's device and dtype.
        Returns ``(B, 128)`` (non-negative: they follow a ReLU).

        Example::

            >>> load_feature_network().features(torch.full((4, 1, 32, 32), -1.0)).shape  # doctest: +SKIP
            torch.Size([4, 128])
        """
        self._check_input(x)
        return self.embedding(self.convolutions(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class logits ``(B, 10)`` for images ``x`` of shape ``(B, 1, 32, 32)`` in [-1, 1].

        Example::

            >>> images, labels = dpfast.data.load_fashion_mnist("test", limit=8)  # doctest: +SKIP
            >>> load_feature_network()(images).argmax(1)  # mostly equal to labels
        """
        return self.classifier(self.features(x))


def load_feature_network(
    path: str | Path | None = None, device: str | torch.device = "cpu"
) -> FashionFeatureNetwork:
    """The trained feature network, in eval mode with gradients switched off.

    ``path`` defaults to the shipped ``dpfast/assets/fmnist_features.safetensors``; any
    file written by ``python -m dpfast.train_features`` works. The weights are float32
    and are moved to ``device``. A missing file raises FileNotFoundError saying how to
    make one; a file whose tensors do not match the architecture raises ValueError
    naming the missing and unexpected keys.

    Example::

        >>> network = load_feature_network()
        >>> network.features(torch.zeros(1, 1, 32, 32)).shape
        torch.Size([1, 128])
    """
    from safetensors.torch import load_file

    path = FEATURE_NETWORK_ASSET if path is None else Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"feature network weights not found at {str(path)!r}; the package ships them as "
            f"{FEATURE_NETWORK_ASSET}, or train new ones with\n"
            f"    python -m dpfast.train_features --out {path}"
        )
    state = load_file(str(path))
    network = FashionFeatureNetwork()
    expected = set(network.state_dict())
    missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
    if missing or unexpected:
        raise ValueError(
            f"{path} does not hold FashionFeatureNetwork weights: missing keys {missing}, "
            f"unexpected keys {unexpected}"
        )
    network.load_state_dict(state, strict=True)
    network.eval().requires_grad_(False)
    return network.to(device)


def classification_accuracy(
    network: FashionFeatureNetwork, images: torch.Tensor, labels: torch.Tensor, batch_size: int = 500
) -> float:
    """Fraction of ``images`` (``(N, 1, 32, 32)`` in [-1, 1]) whose arg-max logit equals ``labels`` (``(N,)``).

    Runs ``network`` as given (put it in eval mode first) without gradients, ``batch_size``
    images at a time. Returns a float in [0, 1].

    Example::

        >>> images, labels = dpfast.data.load_fashion_mnist("test")  # doctest: +SKIP
        >>> classification_accuracy(load_feature_network(), images, labels)
        0.91
    """
    if not isinstance(labels, torch.Tensor) or labels.ndim != 1 or labels.shape[0] != images.shape[0]:
        shape = tuple(labels.shape) if isinstance(labels, torch.Tensor) else type(labels).__name__
        raise ValueError(f"labels must be a tensor of shape ({images.shape[0]},) to match images, got {shape}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    correct = 0
    with torch.no_grad():
        for start in range(0, images.shape[0], batch_size):
            logits = network(images[start : start + batch_size])
            correct += int((logits.argmax(dim=1) == labels[start : start + batch_size].to(logits.device)).sum())
    return correct / max(images.shape[0], 1)
