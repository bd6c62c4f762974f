"""What the experiments share: recording a trajectory, progress lines, tables, output files."""
from __future__ import annotations

import contextlib
import importlib.metadata
import io
import json
import math
import os
import platform
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch

from dpfast.noise import INITIAL_NOISE_STEP, counter_normal_ref
from dpfast.sampler import Sampler
from dpfast.validation import check_seeds

FIGURE_DPI = 90
FIGURE_COLOURS = 256  # palette PNGs: every figure stays well under 200 kB


def record_trajectory(
    sampler: Sampler, lams: Sequence[float], seeds, every: int = 10, y: torch.Tensor | None = None
) -> tuple[np.ndarray, torch.Tensor]:
    """Run the sampler's own loop and keep the state every ``every`` steps.

    The same start, steps and noise as :meth:`Sampler.run` (the last recorded state
    equals its output), through the sampler's ``_prepare``/``step``.

    Args:
        sampler: a :class:`~dpfast.Sampler`.
        lams: one λ per sample.
        seeds: an int (sample i uses ``seeds + i``) or one seed per sample.
        every: record after every ``every``-th step (and always x_T and x_0).
        y: measurements ``(B, *M)`` for guided samplers; ``None`` for guidance ``"none"``.

    Returns:
        ``(timesteps, states)``: the original timestep of each recorded state (int64
        ``(R,)``, x_T first, ``-1`` marks the end point x_0) and float32
        ``(R, B, *image_shape)``.
    """
    if every < 1:
        raise ValueError(f"every must be >= 1, got {every}")
    batch = sampler._prepare(y, list(lams), check_seeds(seeds, len(lams)))
    x = counter_normal_ref(batch.seed_words, INITIAL_NOISE_STEP, sampler.image_shape)
    timesteps, states = [int(sampler.timesteps[-1])], [x.clone()]
    for done, k in enumerate(range(sampler.steps - 1, -1, -1), start=1):
        x = sampler.step(x, k, batch)
        if done % every == 0 or k == 0:
            timesteps.append(int(sampler.timesteps[k - 1]) if k > 0 else -1)
            states.append(x.detach().clone())
    return np.asarray(timesteps, dtype=np.int64), torch.stack(states)


@contextlib.contextmanager
def torch_threads(count: int) -> Iterator[None]:
    """Run the block with ``count`` intra-op threads, then restore the previous setting.

    The analytic experiments step tensors of a few thousand floats: there, splitting
    every op over two threads costs more than it saves, and on a shared machine a
    second thread waits out whole scheduler slices (measured 3-10x slower).
    """
    previous = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


class Progress:
    """One line per unit of work: ``[name] i/n what (seconds)``, flushed at once."""

    def __init__(self, name: str, total: int):
        self.name, self.total, self.done = name, total, 0
        self.started = time.perf_counter()

    def step(self, what: str) -> None:
        self.done += 1
        seconds = time.perf_counter() - self.started
        print(f"[{self.name}] {self.done}/{self.total} {what} ({seconds:.1f} s)", flush=True)

    def skip(self, units: int, what: str) -> None:
        """Count ``units`` of work done earlier (a resumed run) with one line."""
        self.done += units - 1
        self.step(what)


def print_table(title: str, columns: Sequence[str], rows: Sequence[Sequence], digits: int = 4,
                markdown: bool = False) -> None:
    """A plain fixed-width table on stdout (numbers rounded to ``digits`` decimals); with
    ``markdown``, a Markdown table under the title (what docs/RESULTS.md pastes)."""

    def cell(value) -> str:
        if isinstance(value, float):
            return f"{value:.{digits}f}"
        return str(value)

    texts = [[cell(value) for value in row] for row in rows]
    print(f"\n{title}")
    if markdown:
        print()
        for line in (columns, ["---"] * len(columns), *texts):
            print("| " + " | ".join(line) + " |")
        return
    widths = [max([len(column), *(len(row[i]) for row in texts)]) for i, column in enumerate(columns)]
    print("  ".join(column.rjust(width) for column, width in zip(columns, widths)))
    for row in texts:
        print("  ".join(value.rjust(width) for value, width in zip(row, widths)))


def run_metadata(name: str, quick: bool, seed: int, started: float, size_flag: str | None = "",
                 device: torch.device | None = None) -> dict:
    """Versions, device, command and wall time of one experiment run, for its JSON.

    ``size_flag`` is the command-line flag of a size other than quick/full (``"--medium"``);
    ``None`` marks settings no flag gives (the JSON's ``settings`` then say what ran).
    ``device``: where the chains ran; a CUDA device is named in the command and the device
    field.
    """
    import dpfast

    versions = {
        "python": platform.python_version(),
        "dpfast": dpfast.__version__,
        "torch": torch.__version__,
        "numpy": np.__version__,
    }
    cuda = torch.device(device) if device is not None and torch.device(device).type == "cuda" else None
    try:  # the installed version, without importing POT (slow to import)
        versions["POT"] = importlib.metadata.version("POT")
    except importlib.metadata.PackageNotFoundError:
        pass
    return {
        "experiment": name,
        "command": (f"python -m dpfast.experiments {name} -o OUT"
                    + (" --quick" if quick else f" {size_flag}" if size_flag else "") + f" --seed {seed}"
                    + (" --device cuda" if cuda else "")
                    + (" (custom settings: see the JSON's settings)" if size_flag is None else "")),
        "argv": sys.argv,
        "quick": quick,
        "seed": seed,
        "versions": versions,
        "device": device_description(cuda),
        "wall_seconds": round(time.perf_counter() - started, 2),
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
    }


def device_description(device: torch.device | str | None = None) -> str:
    """Where chains run, as the JSON records it: the GPU, or the CPU with the instruction set
    torch's kernels use (their rounding differs between AVX2 and AVX-512) and the thread count."""
    device = torch.device(device) if device is not None else torch.device("cpu")
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)} (CUDA {torch.version.cuda}); host {_cpu_name()}"
    return f"{_cpu_name()} ({torch.backends.cpu.get_cpu_capability()}), {torch.get_num_threads()} torch thread(s)"


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return "CPU " + line.split(":", 1)[1].strip()
    except OSError:
        pass
    return f"CPU {platform.processor() or platform.machine()}"


def write_json(path: Path, payload: dict) -> Path:
    """Write ``payload`` as indented JSON; NaN and infinity become ``null``.

    Written to a temporary file first and renamed into place, so a run killed mid-write
    leaves the previous file whole (the images run resumes from its partial file).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = path.with_name(path.name + ".tmp")
    staging.write_text(json.dumps(_finite(payload), indent=2) + "\n")
    os.replace(staging, path)
    return path


def _finite(value):
    if isinstance(value, dict):
        return {str(key): _finite(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(item) for item in value]
    if isinstance(value, (np.floating, np.integer)):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def pyplot():
    """matplotlib's pyplot on the file-only Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(figure, path: Path) -> Path:
    """Save as a PNG with a 256-colour palette (line plots lose nothing visible; files shrink ~3×)."""
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    figure.savefig(buffer, dpi=FIGURE_DPI, format="png")
    pyplot().close(figure)
    buffer.seek(0)
    with Image.open(buffer) as image:
        image.convert("RGB").quantize(colors=FIGURE_COLOURS).save(path, optimize=True)
    return path
