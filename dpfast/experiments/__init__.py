"""Reproductions of the paper's experiments (issue #6): ``python -m dpfast.experiments <name> -o OUT``.

Each experiment is a module here with ``run(out_dir, quick=False, seed=0) -> dict``: it
prints a progress line per unit of work and a short table, writes its figures (PNG)
and a JSON of its numbers into ``out_dir``, and returns the numbers.

===============  ===================================================================
``gmm_1d``       1-D Gaussian-mixture prior, y = −0.6, exact conditional score:
                 trajectories, end points vs the posterior, W2/KL-vs-MSE curves
``gaussian``     Gaussian prior in d = 4, linear A: the λ sweep's (MSE, W2) points on
                 the theoretical curve D(P) = tr S + (√tr S − P)²
``pinwheel``     2-D pinwheel data, a small MLP ε-model, DPS: λ sweep against
                 averaging N posterior samples and a DDIM-η sweep
``images``       held-out Fashion-MNIST test images, the built-in model: denoising,
                 deblurring, ×4 SR; λ sweep (ζ per λ searched on training images),
                 with DPS and with x̂0 guidance, against averaging N DPS samples and
                 DDIM-η; MSE/PSNR/SSIM/FD. The
                 full size (256 images, 100 steps) is minutes of GPU work or ~20 h
                 on a 2-core CPU, resumable in pieces of minutes across sessions;
                 ``--medium`` (32 images, 50 steps) fits a CPU session; ``--quick``
                 is the tests' 4-image version
``score_swap``   the DPS-guided demo's denoising with four scores (the built-in network, the exact
                 score of a Gaussian fitted to the training set, and the two mixed at
                 t = 600 / 300): is λ = 0's poor MSE the method's fault or the network's?
``sensitivity``  the demo's deblurring, DPS- and x̂0-guided, with the network's output perturbed
                 by rounding-sized noise: how far each λ's restoration moves (bf16 vs float32)
``step_count``   the DPS-guided demo's three tasks at λ = 0 and 1 for 25–400 reverse steps: does
                 λ = 0's MSE deficit shrink with a finer chain?
``seed_spread``  the full images run's single-chain points (DPS λ = 1, x̂0 λ = 0, deepinv
                 α = 1) rerun with other seeds: how far one seed's numbers move
===============  ===================================================================
"""
from __future__ import annotations

import argparse
import importlib
import time
from pathlib import Path
from types import ModuleType

import torch

from dpfast.cpu_memory import keep_freed_memory_for_commands

EXPERIMENTS = {
    "gmm_1d": "dpfast.experiments.gmm_1d",
    "gaussian": "dpfast.experiments.gaussian",
    "pinwheel": "dpfast.experiments.pinwheel",
    "images": "dpfast.experiments.images",
    "score_swap": "dpfast.experiments.score_swap",
    "sensitivity": "dpfast.experiments.sensitivity",
    "step_count": "dpfast.experiments.step_count",
    "seed_spread": "dpfast.experiments.seed_spread",
}


def load(name: str) -> ModuleType:
    """The module of experiment ``name`` (one of :data:`EXPERIMENTS`)."""
    if name not in EXPERIMENTS:
        raise ValueError(f"experiment must be one of {sorted(EXPERIMENTS)}, got {name!r}")
    return importlib.import_module(EXPERIMENTS[name])


SIZED = {"images": "MEDIUM"}  # experiments with a size between --quick and the full run: its Settings name
ON_DEVICE = ("images",)  # experiments whose chains can run on a GPU (``device``)


def run(name: str, out_dir, quick: bool = False, seed: int = 0, medium: bool = False, device: str | None = None) -> dict:
    """Run experiment ``name``; see each module's ``run`` for what it writes and returns.

    ``medium`` picks the CPU-session size of the experiments in :data:`SIZED` (an error
    for the others, and together with ``quick``). ``device`` (``"cuda"``, ...) runs the
    chains of the experiments in :data:`ON_DEVICE` there; the others run on the CPU only,
    and asking them for another device is an error.

    Example:
        >>> from dpfast import experiments
        >>> results = experiments.run("gmm_1d", "out", quick=True)  # doctest: +SKIP
        >>> [row["lam"] for row in results["sweep"]]  # doctest: +SKIP
        [0.0, 0.25, 0.5, 0.75, 1.0]
    """
    on_device = {} if device is None or str(device) == "cpu" else {"device": device}
    if on_device and name not in ON_DEVICE:
        raise ValueError(f"device={device!r}: only {list(ON_DEVICE)} run off the CPU, got {name!r}")
    if medium:
        if quick:
            raise ValueError("quick and medium exclude each other: pick one size")
        if name not in SIZED:
            raise ValueError(f"medium: only {sorted(SIZED)} have a medium size, got {name!r}")
        module = load(name)
        return module.run(out_dir, seed=seed, settings=getattr(module, SIZED[name]), **on_device)
    return load(name).run(out_dir, quick=quick, seed=seed, **on_device)


def main(argv: list[str] | None = None, prog: str = "python -m dpfast.experiments") -> int:
    """``python -m dpfast.experiments NAME [NAME ...] -o OUT [--quick] [--seed S]``; ``all`` runs every one.
    ``prog``: the command name its help and errors show (``dpfast reproduce`` from the CLI)."""
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Reproduce the paper's experiments (figures and a JSON of numbers per experiment).",
        epilog="images keeps its finished work in OUT as it goes: run the same command again (same -o, size, "
               "seed) to continue an interrupted run where it stopped; `images --status -o OUT` shows how far it got.",
    )
    parser.add_argument("names", nargs="+", choices=[*EXPERIMENTS, "all"], metavar="NAME",
                        help=f"experiment(s) to run: {', '.join(EXPERIMENTS)} or all")
    parser.add_argument("-o", "--out", default="experiments_out", help="output folder (default: experiments_out)")
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="the small, fast version used by the tests")
    size.add_argument("--medium", action="store_true",
                      help=f"a size that fits a CPU session (only {', '.join(SIZED)}: 32 images, 50 steps; resumable)")
    parser.add_argument("--seed", type=int, default=0, help="base seed (default: 0)")
    parser.add_argument("--status", action="store_true",
                        help="images only: print what the run in OUT has finished so far and exit (computes nothing)")
    parser.add_argument("--markdown", action="store_true", help="with --status: print the tables as Markdown")
    parser.add_argument("--plot", action="store_true",
                        help="with --status: also draw an interrupted run's finished series into "
                             "OUT/images_dp_curve.partial.png")
    parser.add_argument("--device", default="cpu",
                        help=f"where the chains run (default: cpu); only {', '.join(ON_DEVICE)} can use a GPU, e.g. cuda")
    args = parser.parse_args(argv)
    keep_freed_memory_for_commands()  # the chains' large CPU batches (dpfast/cpu_memory.py)
    if args.seed < 0:
        parser.error(f"--seed must be >= 0, got {args.seed}")
    # registry order: seed_spread reads the images run that `images seed_spread` writes first
    names = [name for name in EXPERIMENTS if "all" in args.names or name in args.names]
    if args.status:
        if names != ["images"]:
            parser.error(f"--status: only images keeps a run's state, got {' '.join(names)}")
        load("images").status(args.out, markdown=args.markdown, plot=args.plot)
        return 0
    if args.markdown:
        parser.error("--markdown goes with --status (it formats the tables --status prints)")
    if args.plot:
        parser.error("--plot goes with --status (a run draws its own figure when it finishes)")
    if args.medium and any(name not in SIZED for name in names):
        parser.error(f"--medium: only {', '.join(SIZED)} have a medium size, got {' '.join(names)}")
    if args.device != "cpu":
        try:
            device = torch.device(args.device)
        except RuntimeError as error:
            parser.error(f"--device: {args.device!r} is not a torch device ({error})")
        if any(name not in ON_DEVICE for name in names):
            parser.error(f"--device {args.device}: only {', '.join(ON_DEVICE)} run off the CPU, got {' '.join(names)}")
        if device.type == "cuda" and not torch.cuda.is_available():
            parser.error(f"--device {args.device}: CUDA is not available here")
    if "seed_spread" in names and "images" not in names and not any(
            (Path(args.out) / f"images{suffix}.json").is_file() for suffix in ("", ".partial")):
        parser.error(f"seed_spread reruns the points of an images run in -o {args.out}, and there is none: "
                     f"run `images -o {args.out}` first (or both: `images seed_spread -o {args.out}`)")
    size = "quick" if args.quick else "medium" if args.medium else "full"
    size += "" if args.device == "cpu" else f", on {args.device}"
    for name in names:
        started = time.perf_counter()
        print(f"== {name} ({size}, seed {args.seed}) -> {args.out}", flush=True)
        run(name, args.out, quick=args.quick, seed=args.seed, medium=args.medium, device=args.device)
        print(f"== {name} done in {time.perf_counter() - started:.1f} s", flush=True)
    return 0
