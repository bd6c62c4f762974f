"""Training script and Fashion-MNIST loader: checkpoint, resume, export (SPEC §8)."""
from __future__ import annotations

import csv
import gzip
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from dpfast import data
from dpfast.models.adm import ADMConfig, load_adm_checkpoint
from dpfast.train import CHECKPOINT_NAME, LOG_NAME, TrainConfig, batch_indices, export_ema, load_checkpoint, main, train

# A smaller network than builtin-fmnist (same layer types) keeps each test a few seconds.
TINY_CONFIG = ADMConfig(
    image_size=32,
    in_channels=1,
    model_channels=32,
    num_res_blocks=1,
    attention_resolutions=(16,),
    channel_mult=(1, 2),
    num_head_channels=32,
    learn_sigma=False,
)


def synthetic_images(count: int = 24) -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    return torch.rand(count, 1, 32, 32, generator=generator) * 2 - 1


def tiny_run(out, steps, **options) -> TrainConfig:
    # One thread: on a shared 2-core machine two OpenMP threads can run 10× slower.
    return TrainConfig(out=out, steps=steps, batch=4, warmup=2, log_every=1, precision="fp32", threads=1, **options)


def test_training_checkpoints_resumes_and_exports(tmp_path):
    images = synthetic_images()
    first = train(tiny_run(tmp_path / "run", 5), images=images, model_config=TINY_CONFIG)
    assert first["step"] == 5 and np.isfinite(first["loss"])
    checkpoint = load_checkpoint(tmp_path / "run")
    assert checkpoint["step"] == 5
    assert {"model", "ema", "optimizer", "generator_state", "torch_rng_state"} <= set(checkpoint)

    with open(tmp_path / "run" / LOG_NAME, "a") as file:  # as if logged after the checkpoint, then killed
        file.write("6,0.5,2e-4,1.0,1.0\n")
    resumed = train(tiny_run(tmp_path / "run", 10), images=images, model_config=TINY_CONFIG)
    assert resumed["step"] == 10
    with open(tmp_path / "run" / LOG_NAME) as file:
        rows = list(csv.DictReader(file))
    assert [int(row["step"]) for row in rows] == list(range(1, 11))

    # Resuming takes exactly the steps an uninterrupted run takes (same data, t, noise).
    train(tiny_run(tmp_path / "straight", 10), images=images, model_config=TINY_CONFIG)
    straight = load_checkpoint(tmp_path / "straight")
    after_resume = load_checkpoint(tmp_path / "run")
    for key, value in straight["model"].items():
        torch.testing.assert_close(after_resume["model"][key], value, rtol=0, atol=0, msg=key)

    exported = export_ema(tmp_path / "run", tmp_path / "tiny.safetensors")
    model = load_adm_checkpoint(exported, TINY_CONFIG)
    for key, value in after_resume["ema"].items():
        torch.testing.assert_close(model.unet.state_dict()[key], value, rtol=0, atol=0, msg=key)
    with torch.no_grad():
        output = model(images[:2], torch.tensor([10, 900]))
    assert output.shape == (2, 1, 32, 32) and torch.isfinite(output).all()
    from safetensors import safe_open

    with safe_open(str(exported), framework="pt") as file:
        metadata = file.metadata()
    assert metadata["step"] == "10" and json.loads(metadata["adm_config"])["model_channels"] == 32


def test_builtin_preset_trains_in_bf16_and_exports_from_the_command_line(tmp_path, monkeypatch):
    images = synthetic_images(8)
    monkeypatch.setattr(data, "load_fashion_mnist", lambda split, limit=None: (images[:limit], torch.zeros(8)))
    out = tmp_path / "builtin"
    main(["--out", str(out), "--steps", "2", "--batch", "2", "--limit", "4", "--precision", "bf16", "--log-every", "1",
          "--threads", "1"])
    assert (out / CHECKPOINT_NAME).is_file()
    main(["--out", str(out), "--export", str(tmp_path / "builtin.safetensors")])  # export only
    model = load_adm_checkpoint(tmp_path / "builtin.safetensors", "builtin-fmnist")
    with torch.no_grad():
        output = model(images[:2], torch.tensor([0, 999]))
    assert torch.isfinite(output).all()


def test_checkpoint_of_another_config_is_not_resumed(tmp_path):
    images = synthetic_images(8)
    train(tiny_run(tmp_path, 1), images=images, model_config=TINY_CONFIG)
    other = ADMConfig(**{**TINY_CONFIG.to_dict(), "model_channels": 64})
    with pytest.raises(ValueError, match="model config"):
        train(tiny_run(tmp_path, 2), images=images, model_config=other)


def test_batch_indices_visit_every_example_once_per_epoch():
    seen = torch.cat([batch_indices(step, batch=4, size=10, seed=3) for step in range(5)])  # two epochs
    assert sorted(seen[:10].tolist()) == list(range(10))
    assert sorted(seen[10:].tolist()) == list(range(10))
    assert not torch.equal(seen[:10], seen[10:])


def _write_idx(path, array: np.ndarray, type_code: int) -> None:
    header = bytes([0, 0, type_code, array.ndim]) + np.asarray(array.shape, dtype=">u4").tobytes()
    with gzip.open(path, "wb") as file:
        file.write(header + array.astype(array.dtype.newbyteorder(">")).tobytes())


def test_fashion_mnist_loader_pads_with_background_and_scales_to_unit_range(tmp_path):
    pixels = np.random.default_rng(0).integers(0, 256, size=(3, 28, 28), dtype=np.uint8)
    pixels[0, 0, 0], pixels[0, 0, 1] = 0, 255
    _write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", pixels, 0x08)
    _write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", np.array([9, 2, 1], dtype=np.uint8), 0x08)
    images, labels = data.load_fashion_mnist("test", root=tmp_path)
    assert images.shape == (3, 1, 32, 32) and images.dtype == torch.float32
    assert labels.tolist() == [9, 2, 1] and labels.dtype == torch.int64
    torch.testing.assert_close(images[:, 0, 2:30, 2:30], torch.from_numpy(pixels.astype(np.float32) / 127.5 - 1))
    border = torch.ones(3, 1, 32, 32, dtype=torch.bool)
    border[:, :, 2:30, 2:30] = False
    assert (images[border] == -1).all()
    assert images[0, 0, 2, 2] == -1 and images[0, 0, 2, 3] == 1


def test_missing_fashion_mnist_names_the_apt_command(tmp_path):
    with pytest.raises(FileNotFoundError, match="apt-get install -y dataset-fashion-mnist"):
        data.load_fashion_mnist("train", root=tmp_path)


def test_real_fashion_mnist_splits_when_installed():
    if not (data.FASHION_MNIST_DIR / data.FASHION_MNIST_FILES["test"][0]).is_file():
        pytest.skip("Debian package dataset-fashion-mnist is not installed")
    images, labels = data.load_fashion_mnist("test")
    assert images.shape == (10000, 1, 32, 32) and labels.shape == (10000,)
    assert images.min() == -1 and images.max() == 1
    assert labels[:3].tolist() == [9, 2, 1] and set(labels.tolist()) == set(range(10))


def test_sigterm_stops_after_the_step_in_flight_and_checkpoints_it(tmp_path):
    """A time-limited run (timeout, a scheduler) keeps every finished step."""
    import subprocess
    import sys
    import textwrap

    script = textwrap.dedent(f"""
        import os, signal, torch
        from tests.test_train import TINY_CONFIG, synthetic_images, tiny_run
        from dpfast.train import train, update_ema
        import dpfast.train as module
        calls = []
        def update_then_signal(*args):
            update_ema(*args)
            calls.append(1)
            if len(calls) == 3:
                os.kill(os.getpid(), signal.SIGTERM)
        module.update_ema = update_then_signal
        summary = train(tiny_run({str(tmp_path / 'run')!r}, 50), images=synthetic_images(), model_config=TINY_CONFIG)
        print("STEP", summary["step"])
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                          cwd=str(Path(__file__).resolve().parent.parent))
    assert done.returncode == 0, done.stderr[-2000:]
    assert "STEP 3" in done.stdout and "stopped by signal SIGTERM" in done.stdout
    assert load_checkpoint(tmp_path / "run")["step"] == 3


@pytest.mark.parametrize("native", [False, True], ids=["avx2-only", "avx512-bf16"])
def test_auto_precision_trains_in_bf16_only_on_a_cpu_with_native_bf16(monkeypatch, native):
    from dpfast.train import use_bf16

    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: native)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
    assert use_bf16("auto", torch.device("cpu")) is native
    assert use_bf16("fp32", torch.device("cpu")) is False and use_bf16("bf16", torch.device("cpu")) is True


def test_a_run_initialised_from_exported_weights_continues_their_step_count_and_resumes(tmp_path):
    images = synthetic_images()
    train(tiny_run(tmp_path / "first", 4), images=images, model_config=TINY_CONFIG)
    weights = export_ema(tmp_path / "first", tmp_path / "first.safetensors")
    exported = load_adm_checkpoint(weights, TINY_CONFIG).unet.state_dict()

    # No training steps yet: model and EMA are the exported weights, the count starts at their step.
    with pytest.raises(ValueError, match=r"steps must exceed .*\(4\), got 4"):
        train(tiny_run(tmp_path / "more", 4, init_from=weights), images=images, model_config=TINY_CONFIG)
    summary = train(tiny_run(tmp_path / "more", 6, init_from=weights), images=images, model_config=TINY_CONFIG)
    assert summary["step"] == 6
    state = load_checkpoint(tmp_path / "more")
    assert state["init_from"] == {"path": str(weights), "step": 4}
    with open(tmp_path / "more" / LOG_NAME) as file:
        rows = list(csv.DictReader(file))
    assert [int(row["step"]) for row in rows] == [5, 6]
    # warmup=2 restarts at the init: the first step runs at half the learning rate
    assert float(rows[0]["lr"]) == pytest.approx(TrainConfig(out=".", steps=0).lr / 2, rel=1e-3)
    moved = [key for key, value in state["model"].items() if not torch.equal(value, exported[key])]
    assert moved, "training from the exported weights changed nothing"

    # Resuming that run (with or without repeating init_from) continues it; another init_from is refused.
    train(tiny_run(tmp_path / "more", 7, init_from=weights), images=images, model_config=TINY_CONFIG)
    train(tiny_run(tmp_path / "more", 8), images=images, model_config=TINY_CONFIG)
    assert load_checkpoint(tmp_path / "more")["step"] == 8
    with pytest.raises(ValueError, match="continues a run started from"):
        train(tiny_run(tmp_path / "more", 9, init_from="builtin"), images=images, model_config=TINY_CONFIG)
    with pytest.raises(ValueError, match="random weights"):
        train(tiny_run(tmp_path / "first", 9, init_from=weights), images=images, model_config=TINY_CONFIG)

    again = export_ema(tmp_path / "more", tmp_path / "more.safetensors")
    from safetensors import safe_open

    with safe_open(str(again), framework="pt") as file:
        metadata = file.metadata()
    assert (metadata["step"], metadata["init_from"], metadata["init_step"]) == ("8", "first.safetensors", "4")


def test_init_from_weights_of_another_network_names_the_problem(tmp_path):
    images = synthetic_images(8)
    # The shipped weights are builtin-fmnist's, not the tiny config's: refused by their recorded config.
    with pytest.raises(ValueError, match="holds a network with config"):
        train(tiny_run(tmp_path / "a", 2, init_from="builtin"), images=images, model_config=TINY_CONFIG)
    # A plain state_dict without metadata, one tensor missing: refused by key.
    from dpfast.models.adm import ADMScoreModel

    state = ADMScoreModel(TINY_CONFIG).unet.state_dict()
    state.pop("out.2.bias")
    torch.save(state, tmp_path / "partial.pt")
    with pytest.raises(ValueError, match=r"out\.2\.bias"):
        train(tiny_run(tmp_path / "b", 2, init_from=tmp_path / "partial.pt"), images=images, model_config=TINY_CONFIG)
    assert not (tmp_path / "b" / CHECKPOINT_NAME).exists()


def test_init_from_builtin_on_the_command_line_starts_at_the_shipped_step(tmp_path, monkeypatch):
    images = synthetic_images(8)
    monkeypatch.setattr(data, "load_fashion_mnist", lambda split, limit=None: (images[:limit], torch.zeros(8)))
    from safetensors import safe_open

    from dpfast.models.loading import BUILTIN_ASSET

    with safe_open(str(BUILTIN_ASSET), framework="pt") as file:
        shipped_step = int(file.metadata()["step"])
    out = tmp_path / "more"
    main(["--out", str(out), "--init-from", "builtin", "--steps", str(shipped_step + 1), "--batch", "2",
          "--limit", "4", "--precision", "fp32", "--log-every", "1", "--threads", "1"])
    state = load_checkpoint(out)
    assert state["step"] == shipped_step + 1 and state["init_from"] == {"path": "builtin", "step": shipped_step}
