"""Train the Fashion-MNIST feature network behind :func:`dpfast.metrics.fd`: ``python -m dpfast.train_features``.

Cross-entropy on the 60,000-image training split, Adam with a one-cycle learning rate
(warm-up then cosine decay to ~0), random horizontal flips, a fixed seed. The
official 10,000-image test split is touched once, after training, to report the test
accuracy (it selects nothing). The weights go to a safetensors file whose metadata
records the test accuracy, epochs, seed, the other options and the wall time;
:func:`dpfast.models.features.load_feature_network` loads it.

Example::

    python -m dpfast.train_features --out dpfast/assets/fmnist_features.safetensors --epochs 8 --threads 1
"""
from __future__ import annotations

import argparse
import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from dpfast.data import load_fashion_mnist
from dpfast.models.features import FashionFeatureNetwork, classification_accuracy


@dataclass
class FeatureTrainingConfig:
    """Options of one training run (the CLI flags, same names with underscores).

    ``limit`` keeps only the first ``limit`` training images (for quick checks; the
    shipped weights use all 60,000). ``threads`` sets ``torch.set_num_threads`` (None:
    leave torch's default). It defaults to 1: on the shared 2-core machine where the
    shipped weights were trained, next to other jobs, one thread ran an epoch about 4×
    faster than two (OpenMP threads waiting on each other for a core).
    """

    epochs: int = 8
    batch_size: int = 128
    learning_rate: float = 3e-3
    weight_decay: float = 1e-4
    flip: bool = True
    seed: int = 0
    threads: int | None = 1
    limit: int | None = None

    def __post_init__(self):
        for name in ("epochs", "batch_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if not self.learning_rate > 0:
            raise ValueError(f"learning_rate must be positive, got {self.learning_rate!r}")
        if not self.weight_decay >= 0:
            raise ValueError(f"weight_decay must be >= 0, got {self.weight_decay!r}")
        if self.threads is not None and self.threads < 1:
            raise ValueError(f"threads must be a positive int or None, got {self.threads!r}")
        if self.limit is not None and self.limit < 2:
            raise ValueError(f"limit must be an int >= 2 or None, got {self.limit!r}")


def train_feature_network(
    config: FeatureTrainingConfig,
    images: torch.Tensor | None = None,
    labels: torch.Tensor | None = None,
    log=None,
) -> tuple[FashionFeatureNetwork, dict]:
    """Train a fresh :class:`FashionFeatureNetwork` on the CPU.

    ``images`` (float ``(N, 1, 32, 32)`` in [-1, 1]) and ``labels`` (int64 ``(N,)``)
    default to the Fashion-MNIST training split (first ``config.limit`` images when
    set). ``log`` receives one line per epoch (default: print and flush). torch's thread
    count is set to ``config.threads`` for the run and restored afterwards. Returns the
    network in eval mode and a summary dict (the config plus ``train_images``,
    ``train_seconds``, ``final_train_loss``, ``final_train_accuracy``). The same config
    and data give the same weights on the same torch build and thread count.

    Example::

        >>> network, summary = train_feature_network(FeatureTrainingConfig(epochs=1, limit=512))  # doctest: +SKIP
    """
    if log is None:
        log = lambda line: print(line, flush=True)  # noqa: E731
    if images is None or labels is None:
        images, labels = load_fashion_mnist("train", limit=config.limit)
    if images.ndim != 4 or labels.shape != (images.shape[0],):
        raise ValueError(
            f"images (N, 1, 32, 32) and labels (N,) must match, got {tuple(images.shape)} and {tuple(labels.shape)}"
        )
    previous_threads = torch.get_num_threads()
    if config.threads is not None:
        torch.set_num_threads(config.threads)
    try:
        return _train(config, images, labels, log)
    finally:
        torch.set_num_threads(previous_threads)


def _train(
    config: FeatureTrainingConfig, images: torch.Tensor, labels: torch.Tensor, log
) -> tuple[FashionFeatureNetwork, dict]:
    torch.manual_seed(config.seed)
    order_generator = torch.Generator().manual_seed(config.seed)
    network = FashionFeatureNetwork()
    optimizer = torch.optim.AdamW(network.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay)
    steps_per_epoch = (images.shape[0] + config.batch_size - 1) // config.batch_size
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=config.learning_rate, total_steps=config.epochs * steps_per_epoch, pct_start=0.15
    )
    started = time.perf_counter()
    for epoch in range(config.epochs):
        network.train()
        loss_sum = correct = seen = 0
        order = torch.randperm(images.shape[0], generator=order_generator)
        for start in range(0, images.shape[0], config.batch_size):
            indices = order[start : start + config.batch_size]
            batch, batch_labels = images[indices], labels[indices]
            if config.flip:
                flipped = torch.rand(batch.shape[0], generator=order_generator) < 0.5
                batch = torch.where(flipped[:, None, None, None], batch.flip(-1), batch)
            logits = network(batch)
            loss = F.cross_entropy(logits, batch_labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            loss_sum += float(loss.detach()) * batch.shape[0]
            correct += int((logits.argmax(dim=1) == batch_labels).sum())
            seen += batch.shape[0]
        log(
            f"epoch {epoch + 1}/{config.epochs}: train loss {loss_sum / seen:.4f}, "
            f"train accuracy {correct / seen:.4f}, {time.perf_counter() - started:.0f} s"
        )
    network.eval().requires_grad_(False)
    summary = {
        **asdict(config),
        "train_images": int(images.shape[0]),
        "train_seconds": round(time.perf_counter() - started, 1),
        "final_train_loss": round(loss_sum / seen, 5),
        "final_train_accuracy": round(correct / seen, 5),
    }
    return network, summary


def save_feature_network(network: FashionFeatureNetwork, path: str | Path, metadata: dict) -> Path:
    """Write ``network``'s state_dict as safetensors with string ``metadata``, atomically.

    Each metadata value is stored as ``str(value)`` (safetensors metadata is str → str).
    Returns the path written.

    Example::

        >>> save_feature_network(network, "features.safetensors", {"test_accuracy": 0.91})  # doctest: +SKIP
    """
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {name: tensor.detach().cpu().contiguous() for name, tensor in network.state_dict().items()}
    temporary = path.with_name(path.name + ".tmp")
    save_file(state, str(temporary), metadata={key: str(value) for key, value in metadata.items()})
    os.replace(temporary, path)
    return path


def main(argv: list[str] | None = None) -> dict:
    """Command-line entry point; returns the metadata written (see the module docstring)."""
    parser = argparse.ArgumentParser(prog="python -m dpfast.train_features", description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="safetensors file to write")
    parser.add_argument("--epochs", type=int, default=FeatureTrainingConfig.epochs)
    parser.add_argument("--batch-size", type=int, default=FeatureTrainingConfig.batch_size)
    parser.add_argument("--learning-rate", type=float, default=FeatureTrainingConfig.learning_rate)
    parser.add_argument("--weight-decay", type=float, default=FeatureTrainingConfig.weight_decay)
    parser.add_argument("--no-flip", dest="flip", action="store_false", help="no random horizontal flips")
    parser.add_argument("--seed", type=int, default=FeatureTrainingConfig.seed)
    parser.add_argument("--threads", type=int, default=FeatureTrainingConfig.threads, help="torch threads (default 1)")
    parser.add_argument("--limit", type=int, default=None, help="train on the first LIMIT images only")
    arguments = vars(parser.parse_args(argv))
    out = arguments.pop("out")
    config = FeatureTrainingConfig(**arguments)
    started = time.perf_counter()
    if config.threads is not None:
        torch.set_num_threads(config.threads)  # for the test-set evaluation too

    network, summary = train_feature_network(config)
    test_images, test_labels = load_fashion_mnist("test")
    test_accuracy = classification_accuracy(network, test_images, test_labels)
    metadata = {
        "format": "dpfast FashionFeatureNetwork",
        "test_accuracy": round(test_accuracy, 4),
        "test_images": int(test_images.shape[0]),
        **summary,
        "wall_seconds": round(time.perf_counter() - started, 1),
        "torch_version": torch.__version__,
    }
    save_feature_network(network, out, metadata)
    print(f"test accuracy {test_accuracy:.4f} on {test_images.shape[0]} test images; wrote {out}")
    print(json.dumps(metadata))
    return metadata


if __name__ == "__main__":
    main()
