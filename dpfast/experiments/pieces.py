"""Finished pieces of a long experiment, kept on disk so a killed run carries on where it stopped.

A long run (the images experiment at full size on a CPU takes longer than one working
session) is cut into pieces of a few minutes each — one step-size choice of a search, one
block of test images of one λ sweep — and every piece's result tensor is saved as soon as
it is computed. Started again with the same key (settings, seed, weights), the run reads
the finished pieces back and computes only the rest. A piece is written to a temporary
file and renamed into place, so a run killed mid-write leaves no half piece behind.

The pieces live in ``<folder>/<key digest>/``; :meth:`PieceStore.remove` deletes them
once the run has written its final results.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import time
from pathlib import Path
from typing import Callable

import torch


class PieceStore:
    """Result tensors of named pieces of one run (``key``: anything JSON-serialisable that fixes the results).

    :meth:`get` returns a stored piece (moved to ``device``) or computes, stores and returns
    it. ``computed_seconds`` / ``read_back_seconds`` sum the compute time of the pieces this
    process computed / read back (each piece stores the time it took), so a run resumed
    over several processes can still report what its work cost.
    """

    def __init__(self, folder, key, device: torch.device | str = "cpu", log: Callable[[str], None] = print):
        digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
        self.folder = Path(folder) / digest
        self.device = torch.device(device)
        self.log = log
        self.computed_seconds = 0.0
        self.read_back_seconds = 0.0
        self.read_back = 0

    def path(self, name: str) -> Path:
        """The file of piece ``name``: its characters outside ``[A-Za-z0-9._=-]`` become ``_``, and a
        digest of the name itself keeps two names apart that differ only there."""
        if not name:
            raise ValueError("a piece name must not be empty")
        readable = re.sub(r"[^A-Za-z0-9._=-]+", "_", name)
        return self.folder / f"{readable}-{hashlib.sha256(name.encode()).hexdigest()[:8]}.pt"

    def get(self, name: str, compute: Callable[[], torch.Tensor]) -> torch.Tensor:
        """Piece ``name``: read back if an earlier run stored it, else ``compute()``d and stored."""
        path = self.path(name)
        if path.exists():
            try:
                saved = torch.load(path, map_location="cpu", weights_only=True)
                tensor, seconds = saved["tensor"], float(saved["seconds"])
            except Exception as error:  # a damaged file is recomputed, never trusted
                self.log(f"piece {name!r} at {path} cannot be read ({type(error).__name__}: {error}): computing it again")
            else:
                self.read_back += 1
                self.read_back_seconds += seconds
                return tensor.to(self.device)
        started = time.perf_counter()
        tensor = compute()
        seconds = time.perf_counter() - started
        if not isinstance(tensor, torch.Tensor):
            raise TypeError(f"piece {name!r}: compute() must return a tensor, got {type(tensor).__name__}")
        self.folder.mkdir(parents=True, exist_ok=True)
        staging = path.with_name(path.name + ".tmp")
        torch.save({"tensor": tensor.detach().cpu(), "seconds": seconds}, staging)
        os.replace(staging, path)
        self.computed_seconds += seconds
        self.log(f"{name} ({seconds:.0f} s)")
        return tensor

    def in_blocks(self, name: str, count: int, block: int, compute: Callable[[int, int], torch.Tensor],
                  dim: int = 0) -> torch.Tensor:
        """``compute(start, stop)`` for each block of ``block`` items of ``count``, each a piece of its own,
        concatenated along ``dim`` (where the items are)."""
        parts = [self.get(label, lambda start=start, stop=stop: compute(start, stop))
                 for label, start, stop in _blocks(name, count, block)]
        return parts[0] if len(parts) == 1 else torch.cat(parts, dim=dim)

    def has_blocks(self, name: str, count: int, block: int) -> bool:
        """Whether every block :meth:`in_blocks` would make of ``name`` is stored (reads nothing back)."""
        return all(self.path(label).exists() for label, _, _ in _blocks(name, count, block))

    def stored(self) -> dict[str, float]:
        """File name → stored seconds (the wall time it took) of every readable piece in this run's folder."""
        found = {}
        for path in sorted(self.folder.glob("*.pt")):
            try:
                found[path.name] = float(torch.load(path, map_location="cpu", weights_only=True)["seconds"])
            except Exception:  # a damaged piece will be recomputed; it holds no finished work
                continue
        return found

    def remove(self) -> None:
        """Delete this run's pieces (call after the final results are written), and their folder
        when no other run's pieces are left in it."""
        shutil.rmtree(self.folder, ignore_errors=True)
        try:
            self.folder.parent.rmdir()
        except OSError:  # other runs' pieces, or already gone
            pass


def _blocks(name: str, count: int, block: int) -> list[tuple[str, int, int]]:
    """``(piece name, start, stop)`` of each block of ``block`` items of ``count``; one block keeps ``name``."""
    if count < 1 or block < 1:
        raise ValueError(f"count and block must be >= 1, got count={count}, block={block}")
    spans = [(start, min(start + block, count)) for start in range(0, count, block)]
    return [(name if (start, stop) == (0, count) else f"{name} items {start}-{stop - 1}", start, stop) for start, stop in spans]
