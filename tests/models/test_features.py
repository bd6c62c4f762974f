"""The shipped Fashion-MNIST feature network: loads, is small, classifies the test split, and its trainer runs."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors import safe_open

from dpfast.models.features import (
    FEATURE_DIMENSION,
    FEATURE_NETWORK_ASSET,
    FashionFeatureNetwork,
    classification_accuracy,
    load_feature_network,
)

DEMO_IMAGES_ASSET = FEATURE_NETWORK_ASSET.parent / "demo_images.npz"
ACCURACY_SUBSET_SIZE = 2000
MINIMUM_ACCURACY = 0.90


@pytest.fixture(scope="module")
def network() -> FashionFeatureNetwork:
    return load_feature_network()


@pytest.fixture(scope="module")
def test_split_subset():
    from dpfast.data import load_fashion_mnist

    try:
        return load_fashion_mnist("test", limit=ACCURACY_SUBSET_SIZE)
    except FileNotFoundError as error:
        pytest.skip(f"Fashion-MNIST is not installed (Debian package dataset-fashion-mnist): {error}")


def test_shipped_weights_file_is_at_most_one_megabyte():
    assert FEATURE_NETWORK_ASSET.is_file(), FEATURE_NETWORK_ASSET
    assert FEATURE_NETWORK_ASSET.stat().st_size <= 1_000_000


def test_shipped_weights_record_their_training_in_metadata():
    with safe_open(str(FEATURE_NETWORK_ASSET), framework="pt") as file:
        metadata = file.metadata()
    assert {"test_accuracy", "epochs", "seed", "train_seconds"} <= set(metadata)
    assert float(metadata["test_accuracy"]) >= MINIMUM_ACCURACY


def test_shipped_weights_load_in_eval_mode_without_gradients(network):
    assert not network.training
    assert not any(parameter.requires_grad for parameter in network.parameters())
    images = torch.full((3, 1, 32, 32), -1.0)
    assert network.features(images).shape == (3, FEATURE_DIMENSION)
    assert network(images).shape == (3, 10)


def test_network_reaches_ninety_percent_on_test_split_subset(network, test_split_subset):
    images, labels = test_split_subset
    accuracy = classification_accuracy(network, images, labels)
    assert accuracy >= MINIMUM_ACCURACY, f"accuracy {accuracy:.4f} on the first {ACCURACY_SUBSET_SIZE} test images"


def test_features_are_the_input_of_the_final_linear_layer(network):
    images = torch.rand(4, 1, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1
    logits_from_features = network.classifier(network.features(images))
    torch.testing.assert_close(logits_from_features, network(images))


def test_network_rejects_images_of_the_wrong_shape(network):
    with pytest.raises(ValueError, match=r"x must have shape \(B, 1, 32, 32\).*got \(2, 1, 28, 28\)"):
        network.features(torch.zeros(2, 1, 28, 28))


def test_missing_weights_file_raises_file_not_found_with_the_fix(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"python -m dpfast.train_features --out"):
        load_feature_network(tmp_path / "absent.safetensors")


def test_weights_of_another_architecture_are_rejected_by_key_name(tmp_path):
    from safetensors.torch import save_file

    path = tmp_path / "other.safetensors"
    save_file({"conv.weight": torch.zeros(1)}, str(path))
    with pytest.raises(ValueError, match=r"missing keys \[.*convolutions.*unexpected keys \['conv.weight'\]"):
        load_feature_network(path)


def test_demo_images_are_eight_test_images_of_distinct_classes():
    from dpfast.data import FASHION_MNIST_CLASSES

    demo = np.load(DEMO_IMAGES_ASSET)
    assert demo["images"].dtype == np.uint8 and demo["images"].shape == (8, 28, 28)
    assert len(set(demo["labels"].tolist())) == 8
    assert [FASHION_MNIST_CLASSES[label] for label in demo["labels"]] == demo["class_names"].tolist()
    assert demo["indices"].tolist() == [19, 2, 1, 13, 8, 9, 18, 0]


def test_demo_images_equal_the_test_split_at_their_indices():
    from dpfast.data import load_fashion_mnist

    demo = np.load(DEMO_IMAGES_ASSET)
    try:
        images, labels = load_fashion_mnist("test", limit=int(demo["indices"].max()) + 1)
    except FileNotFoundError as error:
        pytest.skip(f"Fashion-MNIST is not installed (Debian package dataset-fashion-mnist): {error}")
    indices = torch.from_numpy(demo["indices"])
    expected = torch.from_numpy(demo["images"]).float() / 127.5 - 1
    torch.testing.assert_close(images[indices, 0, 2:30, 2:30], expected)
    assert labels[indices].tolist() == demo["labels"].tolist()


def test_training_script_writes_loadable_weights_with_metadata(tmp_path):
    from dpfast.train_features import FeatureTrainingConfig, save_feature_network, train_feature_network

    generator = torch.Generator().manual_seed(0)
    images = torch.rand(64, 1, 32, 32, generator=generator) * 2 - 1
    labels = torch.randint(0, 10, (64,), generator=generator)
    config = FeatureTrainingConfig(epochs=1, batch_size=32, threads=1)
    network, summary = train_feature_network(config, images, labels, log=lambda line: None)
    assert summary["train_images"] == 64 and summary["epochs"] == 1
    path = save_feature_network(network, tmp_path / "features.safetensors", {**summary, "test_accuracy": 0.5})
    loaded = load_feature_network(path)
    probe = images[:4]
    torch.testing.assert_close(loaded(probe), network(probe))
    with safe_open(str(path), framework="pt") as file:
        assert file.metadata()["seed"] == "0"
