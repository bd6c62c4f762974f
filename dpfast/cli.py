"""The ``dpfast`` command line: ``restore``, ``traverse``, ``demo``, ``bench`` and ``reproduce``.

``dpfast restore INPUT... -o OUT`` restores image files or whole folders; ``dpfast
traverse IMAGE -o grid.png`` writes one image's distortion–perception strip. Each image's
seed is derived from its file name (and ``--seed``), so a result does not depend on the
batch size or on which other files run beside it.
"""
from __future__ import annotations

import argparse
import hashlib
import importlib
import sys
import tempfile
import time
from pathlib import Path

import torch

from dpfast import validation
from dpfast.cpu_memory import keep_freed_memory_for_commands

TASKS = ("denoise", "deblur", "sr", "inpaint", "custom")


def image_seed(name: str, seed: int) -> int:
    """A 63-bit seed from the file name and the run's base seed."""
    digest = hashlib.sha256(f"{seed}:{name}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def build_operator(task: str, image_shape: tuple[int, ...], args):
    """The measurement operator of a task, for the model's image shape."""
    from dpfast import operators

    if task == "denoise":
        return operators.Identity()
    if task == "deblur":
        return operators.GaussianBlur(args.blur_size, args.blur_sigma)
    if task == "sr":
        return operators.SuperResolution(args.factor, args.sr_mode)
    if task == "inpaint":
        size = args.box if args.box is not None else image_shape[1] // 2
        return operators.Inpainting.box(image_shape, size)
    if not args.operator or ":" not in args.operator:
        raise ValueError("--task custom needs --operator MODULE:FUNCTION (a differentiable torch callable)")
    module_name, function_name = args.operator.split(":", 1)
    try:
        function = getattr(importlib.import_module(module_name), function_name)
    except (ImportError, AttributeError) as error:
        raise ValueError(f"--operator {args.operator!r} cannot be imported: {error}") from error
    return operators.FunctionOperator(function)


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return validation.check_device("--device", name)


def check_writable(path: Path, flag: str = "-o") -> None:
    """Fail before any work if ``path`` (a folder to create or fill) cannot be written.

    Walks up to the nearest existing ancestor and writes (and removes) a probe file there,
    so nothing is left behind; permission checks alone would pass for root.
    """
    existing = path
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise ValueError(f"{flag} {str(path)!r} cannot be written: {str(existing)!r} is a file, not a folder")
    try:
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as error:
        raise ValueError(f"{flag} {str(path)!r} cannot be written: {error.strerror or error} in {str(existing)!r}") from error


def parse_zeta(text: str) -> float | dict[float, float]:
    """``--zeta``: one number, or ``LAM:VALUE`` pairs (``"0:320,1:160"``) the sampler interpolates in λ."""
    def number(value: str, where: str) -> float:
        try:
            return float(value) + 0.0  # + 0.0: "-0" reads as 0
        except ValueError:
            raise ValueError(f"--zeta must be a number, or LAM:VALUE pairs such as 0:320,1:160; got {text!r}"
                             f"{where}") from None

    if ":" not in text:
        return validation.check_number("--zeta", number(text, ""), 0.0)
    pairs = {}
    for part in text.split(","):
        where = f" (its part {part.strip()!r} is not LAM:VALUE)"
        lam_text, _, value_text = part.partition(":")
        lam = validation.check_lam(number(lam_text, where), f"--zeta's λ in {part.strip()!r}")
        if lam in pairs:
            raise ValueError(f"--zeta names λ {lam:g} twice in {text!r}")
        pairs[lam] = validation.check_number(f"--zeta's value at λ {lam:g}", number(value_text, where), 0.0)
    return pairs


def _sampler(args, model, operator):
    from dpfast.guidance import beta_scaled_zeta
    from dpfast.sampler import Sampler

    if args.steps > model.schedule.num_timesteps:
        raise ValueError(f"--steps must be between 1 and the model's T = {model.schedule.num_timesteps}, got {args.steps}")
    zeta = parse_zeta(args.zeta)
    if args.zeta_schedule == "beta":
        zeta = beta_scaled_zeta(zeta, model.schedule, args.steps)
    options = dict(steps=args.steps, zeta=zeta, guidance=args.guidance, progress=not args.quiet)
    if args.dtype != "float32":
        options["dtype"] = "auto" if args.dtype == "auto" else getattr(torch, args.dtype)
    return Sampler(model, operator, mode=args.mode, **options)


def _load(args):
    from dpfast.models.loading import load_model

    model = load_model(args.model, config=args.config, device=_device(args.device))
    return model


def _measurements(args, files, model, operator, seeds) -> torch.Tensor:
    """y for each file: the file itself, or (``--degrade``) A(x) + σ_n n of the clean file."""
    from dpfast.image_io import load_image
    from dpfast.operators import measure

    measured_shape = operator.output_shape((1,) + tuple(model.image_shape))[1:]
    expected = tuple(model.image_shape) if args.degrade else tuple(measured_shape)
    images = []
    for path in files:
        image = load_image(path, model.image_shape[0])
        if tuple(image.shape) != expected:
            what = "clean images (--degrade)" if args.degrade else f"{args.task} measurements"
            raise ValueError(f"{path.name} has shape {tuple(image.shape)}; this model's {what} are {expected}")
        images.append(image)
    stacked = torch.stack(images)
    if args.degrade:
        return measure(stacked, operator, args.sigma_n, seed=seeds)
    return stacked


def distributed_shard(files: list[Path]) -> tuple[list[Path], int, int]:
    """Under ``torchrun`` (RANK/WORLD_SIZE set): this rank's files, the rank, the world size.

    Files are dealt round-robin over the sorted list, so every input is restored exactly
    once; each file's seed comes from its name, so results do not depend on the world size.
    """
    import os

    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return files, 0, 1
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    rank = dist.get_rank()
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    return files[rank::world_size], rank, world_size


def cmd_restore(args) -> int:
    from tqdm.auto import tqdm

    from dpfast.image_io import collect_inputs, save_image

    files, rank, world_size = distributed_shard(collect_inputs(args.inputs))
    out_dir = Path(args.output)
    if out_dir.exists() and not out_dir.is_dir():
        raise ValueError(f"-o {str(out_dir)!r} exists and is not a folder")
    check_writable(out_dir)
    model = _load(args)
    operator = build_operator(args.task, tuple(model.image_shape), args)
    sampler = _sampler(args, model, operator)
    out_dir.mkdir(parents=True, exist_ok=True)
    outputs = {path: out_dir / (path.stem + (".npy" if path.suffix.lower() == ".npy" else ".png")) for path in files}
    for output in outputs.values():  # temporaries a killed run left behind (this rank's files only)
        for stale in out_dir.glob(f".{output.name}.*.tmp"):
            stale.unlink()
    todo = [path for path in files if args.overwrite or not outputs[path].exists()]
    if len(todo) < len(files) and not args.quiet:
        print(f"dpfast: {len(files) - len(todo)} outputs exist already (use --overwrite to redo them)")
    started = time.perf_counter()
    progress = tqdm(total=len(todo), desc=f"images (rank {rank})" if world_size > 1 else "images", unit="img",
                    disable=args.quiet)
    for start in range(0, len(todo), args.batch):
        chunk = todo[start : start + args.batch]
        seeds = [image_seed(path.name, args.seed) for path in chunk]
        y = _measurements(args, chunk, model, operator, seeds)
        restored = sampler.restore(y, lam=args.lam, sigma_n=args.sigma_n, seed=seeds)
        for path, image in zip(chunk, restored):
            save_image(image, outputs[path])
        progress.update(len(chunk))
    progress.close()
    elapsed = time.perf_counter() - started
    rate = len(todo) / elapsed if elapsed > 0 and todo else 0.0
    where = f" on rank {rank} of {world_size}" if world_size > 1 else ""
    print(f"dpfast: restored {len(todo)} images{where} in {elapsed:.1f} s ({rate:.2f} images/s) -> {out_dir}")
    if world_size > 1:
        import torch.distributed as dist

        dist.barrier()
        dist.destroy_process_group()
    return 0


def parse_lams(text: str) -> list[float]:
    """``--lams``: comma-separated λ values in [0, 1]."""
    try:
        return validation.check_lams([float(value) for value in text.split(",")], "--lams")
    except ValueError as error:
        raise ValueError(f"--lams must be comma-separated numbers in [0, 1], got {text!r} ({error})") from error


def cmd_traverse(args) -> int:
    from dpfast.image_io import collect_inputs, save_grid

    (path,) = collect_inputs([args.image])
    lams = parse_lams(args.lams)
    output = Path(args.output)
    if output.is_dir():
        raise ValueError(f"-o {args.output!r} is a folder; traverse writes one PNG file")
    if output.suffix.lower() != ".png":
        raise ValueError(f"-o {args.output!r}: traverse writes a PNG, so its name must end in .png")
    check_writable(output.parent)
    model = _load(args)
    operator = build_operator(args.task, tuple(model.image_shape), args)
    sampler = _sampler(args, model, operator)
    seed = image_seed(path.name, args.seed)
    y = _measurements(args, [path], model, operator, [seed])
    started = time.perf_counter()
    strip = sampler.traverse(y, lams, sigma_n=args.sigma_n, seed=[seed])
    row = [strip[index, 0] for index in range(len(lams))]
    rows = [row]
    if args.degrade:
        from dpfast.image_io import load_image

        rows = [[load_image(path, model.image_shape[0]), y[0]], row]
    save_grid(rows, args.output)
    print(f"dpfast: λ = {', '.join(f'{lam:g}' for lam in lams)} in {time.perf_counter() - started:.1f} s -> {args.output}")
    return 0


def _add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--task", choices=TASKS, default="denoise", help="measurement operator (default denoise)")
    parser.add_argument("--sigma-n", type=float, default=0.05, help="measurement noise std in [-1,1] units (default 0.05)")
    parser.add_argument("--steps", type=int, default=1000, help="reverse steps (default 1000)")
    parser.add_argument("--zeta", default="1.0",
                        help="guidance step size ζ (default 1.0): a number, or LAM:VALUE pairs such as 0:320,1:160 "
                             "(interpolated in λ: the deterministic end often needs another step than λ = 1)")
    parser.add_argument("--zeta-schedule", choices=("constant", "beta"), default="constant",
                        help="constant (default): ζ at every step; beta: --zeta is the scale c of the β-scaled step "
                             "ζ_k = c·β'_k/√(1−β'_k), β'_k the noise schedule respaced to --steps: strong early, weak "
                             "late (the built-in model's demo uses it for denoising and SR, c 40–80; "
                             "dpfast.guidance.beta_scaled_zeta)")
    parser.add_argument("--guidance", choices=("dps", "x0"), default="dps",
                        help="dps (default): the gradient through the network; x0: with respect to x̂0 only, no network "
                             "VJP (about 2× faster; with the built-in model the lower-MSE λ = 0 end, docs/RESULTS.md §4)")
    parser.add_argument("--model", default="builtin", help="builtin | PATH (ADM checkpoint) | diffusers:DIR")
    parser.add_argument("--config", default=None, help="ADM preset for a checkpoint path (e.g. adm-ffhq256)")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda[:N] (default auto)")
    parser.add_argument("--dtype", choices=("float32", "bfloat16", "float16", "auto"), default="float32",
                        help="the network's precision; auto: bfloat16 where the device runs it natively")
    parser.add_argument("--mode", choices=("auto", "eager", "compile", "cudagraph"), default="auto",
                        help="how each step runs; auto (default): cudagraph on CUDA, eager on the CPU")
    parser.add_argument("--seed", type=int, default=0, help="base seed; each image's seed also hashes its file name")
    parser.add_argument("--degrade", action="store_true", help="inputs are clean images: synthesise y = A(x) + σ_n n")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.add_argument("--threads", type=int, default=None,
                        help="CPU threads for torch (default: torch's, one per core); 1 on a CPU that other work shares")
    parser.add_argument("--blur-size", type=int, default=61, help="deblur: kernel size (default 61)")
    parser.add_argument("--blur-sigma", type=float, default=3.0, help="deblur: kernel sigma (default 3.0)")
    parser.add_argument("--factor", type=int, default=4, help="sr: downsampling factor (default 4)")
    parser.add_argument("--sr-mode", choices=("bicubic", "avgpool"), default="bicubic")
    parser.add_argument("--box", type=int, default=None, help="inpaint: side of the centred box (default H/2)")
    parser.add_argument("--operator", default=None, help="custom: MODULE:FUNCTION of a differentiable callable")


def check_arguments(args) -> None:
    """Reject out-of-range numbers by their flag before any model is loaded or file written."""
    if args.command == "restore":
        flag, lams = "--lam", [validation.check_lam(args.lam, "--lam")]
    else:
        flag, lams = "--lams", parse_lams(args.lams)
    validation.check_number("--sigma-n", args.sigma_n, 0.0)
    zeta = parse_zeta(args.zeta)
    if isinstance(zeta, dict):
        outside = [lam for lam in lams if not min(zeta) <= lam <= max(zeta)]
        if outside:
            raise ValueError(f"--zeta's pairs cover λ in [{min(zeta):g}, {max(zeta):g}]; {flag} asks for "
                             + ", ".join(f"{lam:g}" for lam in outside))
    validation.check_positive_int("--steps", args.steps)  # its upper end (the model's T) is checked once it is loaded
    if args.threads is not None:
        validation.check_positive_int("--threads", args.threads)
    # the operator's own flags, for the task that reads them (the model's size is checked once it is loaded)
    if args.task == "deblur":
        if validation.check_positive_int("--blur-size", args.blur_size) % 2 == 0:
            raise ValueError(f"--blur-size must be odd (a kernel centred on its pixel), got {args.blur_size}")
        if validation.check_number("--blur-sigma", args.blur_sigma, 0.0) == 0.0:
            raise ValueError("--blur-sigma must be > 0, got 0.0")
    if args.task == "sr":
        validation.check_positive_int("--factor", args.factor)
    if args.task == "inpaint" and args.box is not None:
        validation.check_positive_int("--box", args.box)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dpfast", description="Diffusion posterior sampling with a distortion–perception knob.")
    commands = parser.add_subparsers(dest="command", metavar="{restore,traverse,demo,bench,reproduce}")
    restore = commands.add_parser("restore", help="restore image files or folders")
    restore.add_argument("inputs", nargs="+", help="PNG/JPEG/NPY files or folders of them")
    restore.add_argument("-o", "--output", required=True, help="output folder")
    restore.add_argument("--lam", type=float, default=0.5, help="λ in [0, 1] (default 0.5)")
    restore.add_argument("--batch", type=int, default=16, help="images per batch (default 16)")
    restore.add_argument("--overwrite", action="store_true", help="redo outputs that exist already")
    _add_common(restore)
    traverse = commands.add_parser("traverse", help="one image's distortion–perception strip")
    traverse.add_argument("image", help="a PNG/JPEG/NPY file")
    traverse.add_argument("--lams", default="0,0.25,0.5,0.75,1", help="comma-separated λ values (default 0,0.25,0.5,0.75,1)")
    traverse.add_argument("-o", "--output", required=True, help="output PNG")
    _add_common(traverse)
    commands.add_parser("demo", help="restore bundled Fashion-MNIST test images across λ (the built-in model)", add_help=False)
    commands.add_parser("bench", help="restoration speed side by side: dpfast modes, a naive DPS loop, deepinv", add_help=False)
    commands.add_parser("reproduce", help="the paper's experiments and studies: gmm_1d, gaussian, pinwheel, images, score_swap, sensitivity, step_count, all", add_help=False)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    keep_freed_memory_for_commands()  # large CPU batches: up to 2.4x faster steps (dpfast/cpu_memory.py)
    if argv and argv[0] == "demo":
        from dpfast.demo import main as demo_main

        return demo_main(argv[1:])
    if argv and argv[0] == "bench":
        from dpfast.benchmark import main as bench_main

        return bench_main(argv[1:])
    if argv and argv[0] == "reproduce":
        from dpfast.experiments import main as reproduce_main

        return reproduce_main(argv[1:], prog="dpfast reproduce")
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    if args.command == "restore" and args.batch < 1:
        parser.error(f"--batch must be >= 1, got {args.batch}")
    try:
        check_arguments(args)
        if args.threads is not None:
            torch.set_num_threads(args.threads)
        return {"restore": cmd_restore, "traverse": cmd_traverse}[args.command](args)
    except (ValueError, TypeError, OSError, RuntimeError) as error:
        print(f"dpfast {args.command}: error: {error}", file=sys.stderr)
        return 2
