"""`torchrun -m dpfast restore` shards a folder over ranks (gloo on CPU).

Two processes over 6 images: every input restored exactly once, byte-identical to a
one-process run; a run killed after its first outputs is completed by a re-run that
does not redo them.
"""
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from dpfast.models.adm import ADMScoreModel

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("dist")
    torch.manual_seed(0)
    checkpoint = root / "model.safetensors"
    save_file(ADMScoreModel("builtin-fmnist").unet.state_dict(), str(checkpoint))
    folder = root / "inputs"
    folder.mkdir()
    generator = np.random.default_rng(1)
    for index in range(6):
        Image.fromarray(generator.integers(0, 256, size=(32, 32), dtype=np.uint8)).save(folder / f"f{index}.png")
    return root, checkpoint, folder


def _command(nproc, folder, out, checkpoint, steps):
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}"]
    return launcher + ["-m", "dpfast", "restore", str(folder), "-o", str(out), "--model", str(checkpoint),
                       "--config", "builtin-fmnist", "--steps", str(steps), "--degrade", "--quiet", "--batch", "1"]


def _env():
    return dict(os.environ, OMP_NUM_THREADS="1")


def test_two_ranks_restore_each_image_once_identically_to_one_rank(setup):
    root, checkpoint, folder = setup
    for nproc, out in ((2, root / "two"), (1, root / "one")):
        done = subprocess.run(_command(nproc, folder, out, checkpoint, 3), env=_env(), capture_output=True, text=True,
                              timeout=600)
        assert done.returncode == 0, done.stderr[-3000:]
    two = sorted(p.name for p in (root / "two").iterdir())
    assert two == [f"f{i}.png" for i in range(6)]
    for name in two:
        assert (root / "two" / name).read_bytes() == (root / "one" / name).read_bytes(), name


def test_killed_run_is_completed_by_a_rerun_without_redoing_finished_images(setup):
    root, checkpoint, folder = setup
    out = root / "resumed"
    process = subprocess.Popen(_command(2, folder, out, checkpoint, 40), env=_env(), start_new_session=True,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and not (out.exists() and any(p.suffix == ".png" for p in out.iterdir())):
        time.sleep(0.2)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    finished = {p.name: p.stat().st_mtime_ns for p in out.iterdir() if p.suffix == ".png"}
    assert 1 <= len(finished) < 6, finished
    done = subprocess.run(_command(2, folder, out, checkpoint, 40), env=_env(), capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    after = {p.name: p.stat().st_mtime_ns for p in out.iterdir() if p.suffix == ".png"}
    assert sorted(after) == [f"f{i}.png" for i in range(6)]
    assert all(after[name] == mtime for name, mtime in finished.items())
    assert not [p for p in out.iterdir() if p.name.startswith(".")]
