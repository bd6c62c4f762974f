"""Train the built-in ADM model on Fashion-MNIST (SPEC §8): ``python -m dpfast.train``.

Standard DDPM ε-prediction training: x0 from the training split (random horizontal
flips), t uniform in [0, T), ε ~ N(0, I), loss ``‖ε_θ(sqrt(ᾱ_t) x0 + sqrt(1-ᾱ_t) ε, t) − ε‖²``
averaged over pixels, on the linear T = 1000 schedule. AdamW with linear warmup,
gradient-norm clipping, an EMA copy of the weights (with the usual early-step warmup of
its decay), optional bf16 autocast. Runs on the CPU by default (``--device cuda`` moves
the network and each batch to a GPU; the random numbers are still drawn on the CPU).

Everything needed to continue lives in ``<out>/checkpoint.pt`` (model, EMA, optimizer,
step, RNG states), written atomically every few minutes and at the end; a run pointed
at the same ``--out`` resumes from it, and the data order depends only on (seed, step),
so a resumed run takes the same steps as an uninterrupted one. ``--export PATH``
writes the EMA weights as a plain guided-diffusion state_dict in safetensors, loadable
with :func:`dpfast.models.adm.load_adm_checkpoint`.

``--init-from WEIGHTS`` starts a new run from exported weights (``builtin`` for the
shipped ones) instead of a random network: model and EMA both start from them, the step
count continues from the step recorded in the file's metadata (0 if it has none), the
optimizer starts fresh and the learning rate warms up again from there. It is how the
shipped model is trained further when only its EMA weights survive.

Example::

    python -m dpfast.train --out runs/builtin --steps 20000 --batch 128 --threads 2 \\
        --export runs/builtin/builtin-fmnist.safetensors
    python -m dpfast.train --out runs/more --init-from builtin --steps 30000 --device cuda \\
        --export runs/more/builtin-fmnist.safetensors
"""
from __future__ import annotations

import argparse
import copy
import csv
import dataclasses
import json
import os
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from dpfast.cpu_memory import keep_freed_memory_for_commands
from dpfast.models.adm import ADMConfig, ADMScoreModel, adm_config, load_adm_checkpoint
from dpfast.models.loading import BUILTIN_ASSET
from dpfast.precision import native_bf16

CHECKPOINT_NAME = "checkpoint.pt"
LOG_NAME = "log.csv"
LOG_COLUMNS = ("step", "loss", "lr", "images_per_second", "elapsed_seconds")
PRECISIONS = ("auto", "bf16", "fp32")


@dataclass
class TrainConfig:
    """Options of one training run (the CLI flags, same names with underscores).

    ``steps`` is the total number of optimizer steps to reach (a resumed run continues
    up to it). ``precision`` is ``"bf16"`` (autocast), ``"fp32"`` or ``"auto"``: bf16 on
    a CUDA device that supports it, and on a CPU only where it has native bf16
    instructions (``avx512_bf16``/``amx_bf16``): without them bf16 convolutions are
    emulated and measured 4-7× slower than fp32. ``init_from``: exported weights (a
    ``.safetensors`` or ``.pt`` state_dict, or ``"builtin"``) to start a new run from, see
    the module docstring; only read when ``out`` holds no checkpoint yet.
    """

    out: Path
    steps: int
    batch: int = 128
    lr: float = 2e-4
    warmup: int = 500
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    ema_decay: float = 0.999
    precision: str = "auto"
    channels_last: bool = True
    flip: bool = True
    threads: int | None = None
    limit: int | None = None
    seed: int = 0
    checkpoint_minutes: float = 5.0
    log_every: int = 50
    preset: str = "builtin-fmnist"
    device: str = "cpu"
    init_from: str | Path | None = None

    def __post_init__(self):
        self.out = Path(self.out)
        if self.init_from is not None:
            self.init_from = str(self.init_from)
        if self.steps < 0:
            raise ValueError(f"steps must be >= 0, got {self.steps}")
        if self.batch < 1:
            raise ValueError(f"batch must be >= 1, got {self.batch}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {self.precision!r}")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ValueError(f"ema_decay must lie in [0, 1), got {self.ema_decay}")
        if self.log_every < 1:
            raise ValueError(f"log_every must be >= 1, got {self.log_every}")


def use_bf16(precision: str, device: torch.device) -> bool:
    if precision == "auto":
        return native_bf16(device)[0]
    return precision == "bf16"


def batch_indices(step: int, batch: int, size: int, seed: int) -> torch.Tensor:
    """Example indices of ``step``: consecutive slices of one seeded permutation per epoch.

    A pure function of its arguments, so resuming needs no data-loader state.
    """
    first = step * batch
    positions = torch.arange(first, first + batch)
    epochs = positions // size
    indices = torch.empty(batch, dtype=torch.int64)
    for epoch in torch.unique(epochs).tolist():
        generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
        permutation = torch.randperm(size, generator=generator)
        selected = epochs == epoch
        indices[selected] = permutation[positions[selected] % size]
    return indices


def learning_rate(step: int, base_lr: float, warmup: int) -> float:
    return base_lr * min(1.0, (step + 1) / warmup) if warmup > 0 else base_lr


def ema_decay_at(step: int, decay: float) -> float:
    # Early on the EMA would remember the random initialisation; (1+n)/(10+n) caps it.
    return min(decay, (1.0 + step) / (10.0 + step))


@torch.no_grad()
def update_ema(ema: torch.nn.Module, model: torch.nn.Module, decay: float) -> None:
    # One fused multi-tensor op instead of a Python loop over ~300 small tensors.
    torch._foreach_lerp_(list(ema.parameters()), [p.detach() for p in model.parameters()], 1.0 - decay)


def save_atomically(payload: dict, path: Path) -> None:
    """``torch.save`` to a temporary file in the same directory, fsync, then rename over ``path``."""
    temporary = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(temporary, "wb") as file:
            torch.save(payload, file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    finally:
        if temporary.exists():
            temporary.unlink()


def load_checkpoint(path: Path) -> dict:
    """Read a training checkpoint written by :func:`train` (safe ``weights_only`` load)."""
    if path.is_dir():
        path = path / CHECKPOINT_NAME
    if not path.is_file():
        raise FileNotFoundError(f"no training checkpoint at {path}")
    return torch.load(path, map_location="cpu", weights_only=True)


def _read_initial_weights(path: Path, network_config: ADMConfig) -> tuple[dict[str, torch.Tensor], int]:
    """The state_dict to start a run from (strictly checked) and the training step it records.

    A ``.safetensors`` file written by :func:`export_ema` carries its model config and step
    in its metadata: a config other than ``network_config`` is refused, the step is
    returned. Files without metadata count as step 0.
    """
    metadata = {}
    if path.suffix.lower() == ".safetensors" and path.is_file():  # a missing file: load_adm_checkpoint says so
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as file:
            metadata = file.metadata() or {}
    expected = json.loads(json.dumps(network_config.to_dict()))  # tuples become lists, as in the file
    if "adm_config" in metadata and json.loads(metadata["adm_config"]) != expected:
        raise ValueError(
            f"init_from {str(path)!r} holds a network with config {metadata['adm_config']}, "
            f"not the one being trained ({json.dumps(network_config.to_dict())})"
        )
    return load_adm_checkpoint(path, network_config).unet.state_dict(), int(metadata.get("step", 0))


def _model_config(preset: str | ADMConfig) -> ADMConfig:
    config = adm_config(preset)
    if config.learn_sigma:
        raise ValueError(
            f"preset {preset!r} learns the variance; dpfast.train only implements the ε-MSE loss "
            "(learn_sigma=False models)"
        )
    return config


def train(config: TrainConfig, images: torch.Tensor | None = None, model_config: ADMConfig | None = None) -> dict:
    """Train (or resume training) up to ``config.steps`` optimizer steps.

    ``images``: float32 ``(N, C, H, W)`` in [-1, 1] to train on; by default the
    Fashion-MNIST train split (:func:`dpfast.data.load_fashion_mnist`). ``model_config``
    overrides ``config.preset`` (tests use a smaller network). ``config.threads`` sets
    torch's intra-op threads for the run; the previous count is restored after it.
    Returns a summary dict
    with ``step``, ``loss`` (mean of the last logged interval, or None), ``images_per_second``
    and ``checkpoint`` (its path).

    Example::

        >>> summary = train(TrainConfig(out="runs/tiny", steps=10, batch=8), images=torch.rand(32, 1, 32, 32) * 2 - 1)  # doctest: +SKIP
        >>> summary["step"]
        10
    """
    previous_threads = torch.get_num_threads()
    if config.threads is not None:
        torch.set_num_threads(config.threads)
    try:
        return _train(config, images, model_config)
    finally:
        torch.set_num_threads(previous_threads)


def _train(config: TrainConfig, images: torch.Tensor | None, model_config: ADMConfig | None) -> dict:
    network_config = model_config or _model_config(config.preset)
    if images is None:
        from dpfast.data import load_fashion_mnist

        images, _ = load_fashion_mnist("train", limit=config.limit)
    elif config.limit is not None:
        images = images[: config.limit]
    expected_shape = (network_config.in_channels, network_config.image_size, network_config.image_size)
    if images.dim() != 4 or tuple(images.shape[1:]) != expected_shape:
        raise ValueError(f"images must have shape (N, {', '.join(map(str, expected_shape))}), got {tuple(images.shape)}")
    images = images.to(torch.float32).contiguous()
    config.out.mkdir(parents=True, exist_ok=True)
    checkpoint_path = config.out / CHECKPOINT_NAME
    device = torch.device(config.device)
    bf16 = use_bf16(config.precision, device)
    memory_format = torch.channels_last if config.channels_last else torch.contiguous_format

    torch.manual_seed(config.seed)
    model = ADMScoreModel(network_config).train().to(device=device, memory_format=memory_format)
    ema = copy.deepcopy(model.unet).requires_grad_(False).eval()
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay, foreach=True)
    generator = torch.Generator().manual_seed(config.seed)
    step = 0
    init = None  # {"path", "step"} of the weights this run started from, if not random
    if checkpoint_path.is_file():
        state = load_checkpoint(checkpoint_path)
        if state["model_config"] != network_config.to_dict():
            raise ValueError(
                f"{checkpoint_path} was trained with model config {state['model_config']}, "
                f"not {network_config.to_dict()}; use another --out"
            )
        init = state.get("init_from")
        started_from = None if init is None else init["path"]
        if config.init_from is not None and config.init_from != started_from:
            raise ValueError(
                f"init_from {str(config.init_from)!r} cannot apply: {checkpoint_path} continues a run started "
                f"from {'random weights' if started_from is None else repr(started_from)}; "
                "resume without init_from or use another --out"
            )
        model.unet.load_state_dict(state["model"])
        ema.load_state_dict(state["ema"])
        optimizer.load_state_dict(state["optimizer"])
        generator.set_state(state["generator_state"])
        torch.set_rng_state(state["torch_rng_state"])
        step = int(state["step"])
        print(f"resumed from {checkpoint_path} at step {step}", flush=True)
    elif config.init_from is not None:
        weights_path = BUILTIN_ASSET if config.init_from == "builtin" else Path(config.init_from)
        weights, step = _read_initial_weights(weights_path, network_config)
        if step >= config.steps:
            raise ValueError(
                f"steps must exceed the step the init_from weights record ({step}), got {config.steps}: "
                "steps counts the total, not the steps to add"
            )
        model.unet.load_state_dict(weights)
        ema.load_state_dict(weights)
        init = {"path": config.init_from, "step": step}
        print(f"starting from the weights in {config.init_from} (step {step}); fresh optimizer", flush=True)
    warmup_from = 0 if init is None else int(init["step"])  # the learning rate warms up again after an init

    alpha_bar = torch.as_tensor(model.schedule.alphas_cumprod, dtype=torch.float32)  # on the CPU, like the RNG
    num_timesteps = model.schedule.num_timesteps

    def write_checkpoint() -> None:
        save_atomically(
            {
                "model": model.unet.state_dict(),
                "ema": ema.state_dict(),
                "optimizer": optimizer.state_dict(),
                "step": step,
                "generator_state": generator.get_state(),
                "torch_rng_state": torch.get_rng_state(),
                "model_config": network_config.to_dict(),
                **({} if init is None else {"init_from": init}),
                "train_config": {key: str(value) if isinstance(value, Path) else value
                                 for key, value in dataclasses.asdict(config).items()},
            },
            checkpoint_path,
        )

    log_path = config.out / LOG_NAME
    _truncate_log(log_path, step)
    new_log = not log_path.is_file()
    summary = {"step": step, "loss": None, "images_per_second": None, "checkpoint": str(checkpoint_path)}
    if step >= config.steps:
        return summary
    print(
        f"training {config.preset if model_config is None else 'custom config'} "
        f"({sum(p.numel() for p in model.parameters()):,} parameters) on {images.shape[0]} images, "
        f"steps {step}->{config.steps}, batch {config.batch}, {'bf16 autocast' if bf16 else 'fp32'}, "
        f"{torch.get_num_threads()} threads, device {device}",
        flush=True,
    )
    started = time.perf_counter()
    last_checkpoint = interval_start = started
    interval_loss = torch.zeros((), dtype=torch.float64, device=device)
    interval_steps = 0
    stop = _StopRequest()
    with open(log_path, "a", newline="") as log_file, stop:
        log = csv.writer(log_file)
        if new_log:
            log.writerow(LOG_COLUMNS)
        while step < config.steps and not stop.requested:
            x0 = images[batch_indices(step, config.batch, images.shape[0], config.seed)]
            if config.flip:
                flipped = torch.rand(config.batch, generator=generator) < 0.5
                x0 = torch.where(flipped[:, None, None, None], x0.flip(-1), x0)
            t = torch.randint(0, num_timesteps, (config.batch,), generator=generator)
            noise = torch.randn(x0.shape, generator=generator)
            scale = alpha_bar[t].sqrt()[:, None, None, None]
            sigma = (1.0 - alpha_bar[t]).sqrt()[:, None, None, None]
            x_t = (scale * x0 + sigma * noise).to(device).contiguous(memory_format=memory_format)
            t, noise = t.to(device), noise.to(device)

            lr = learning_rate(step - warmup_from, config.lr, config.warmup)
            for group in optimizer.param_groups:
                group["lr"] = lr
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                prediction = model(x_t, t)
            loss = F.mse_loss(prediction.float(), noise)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if config.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip, foreach=True)
            optimizer.step()
            update_ema(ema, model.unet, ema_decay_at(step, config.ema_decay))
            step += 1
            interval_loss += loss.detach().double()
            interval_steps += 1

            now = time.perf_counter()
            if step % config.log_every == 0 or step == config.steps:
                mean_loss = interval_loss.item() / interval_steps
                seconds = now - interval_start
                steps_per_second = interval_steps / seconds
                images_per_second = steps_per_second * config.batch
                log.writerow((step, f"{mean_loss:.6f}", f"{lr:.3e}", f"{images_per_second:.2f}", f"{now - started:.1f}"))
                log_file.flush()
                print(
                    f"step {step}/{config.steps}  loss {mean_loss:.5f}  {steps_per_second:.3f} steps/s  "
                    f"{images_per_second:.1f} img/s  lr {lr:.2e}",
                    flush=True,
                )
                summary.update(loss=mean_loss, images_per_second=images_per_second)
                interval_loss.zero_()
                interval_steps = 0
                interval_start = now
            if now - last_checkpoint >= 60.0 * config.checkpoint_minutes and step < config.steps:
                write_checkpoint()
                last_checkpoint = time.perf_counter()
                interval_start += last_checkpoint - now  # keep checkpoint time out of the throughput
    write_checkpoint()
    summary["step"] = step
    why = f" (stopped by signal {stop.signal_name})" if stop.requested else ""
    print(f"saved {checkpoint_path} at step {step}{why}", flush=True)
    return summary


class _StopRequest:
    """SIGTERM/SIGINT during training: finish the current step, checkpoint, return.

    A killed or time-limited run (``timeout``, a scheduler, Ctrl-C) then loses nothing
    but the step in flight. Handlers are installed only in the main thread and restored
    on exit.
    """

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self):
        self.requested = False
        self.signal_name = None
        self._previous = {}

    def _handle(self, signum, frame):
        self.requested = True
        self.signal_name = signal.Signals(signum).name

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for signum in self.SIGNALS:
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc):
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        return False


def _truncate_log(path: Path, step: int) -> None:
    # Rows logged after the last checkpoint of a killed run would repeat once it resumes.
    if not path.is_file():
        return
    with open(path, newline="") as file:
        rows = list(csv.reader(file))
    kept = rows[:1] + [row for row in rows[1:] if row and int(row[0]) <= step]
    if len(kept) != len(rows):
        with open(path, "w", newline="") as file:
            csv.writer(file).writerows(kept)


def export_ema(checkpoint: str | Path, path: str | Path) -> Path:
    """Write the EMA weights of a training checkpoint as a plain ADM state_dict (safetensors).

    ``checkpoint`` is a ``checkpoint.pt`` or the ``--out`` directory holding it. The
    file's metadata records the model config (JSON) and the training step. Load it with
    ``load_adm_checkpoint(path, "builtin-fmnist")``.

    Example::

        >>> export_ema("runs/builtin", "builtin-fmnist.safetensors")   # doctest: +SKIP
    """
    from safetensors.torch import save_file

    state = load_checkpoint(Path(checkpoint))
    path = Path(path)
    if path.suffix != ".safetensors":
        raise ValueError(f"export path must end in .safetensors, got {str(path)!r}")
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {key: value.detach().to(torch.float32).contiguous().clone() for key, value in state["ema"].items()}
    metadata = {
        "format": "pt",
        "dpfast_model": "adm",
        "adm_config": json.dumps(state["model_config"]),
        "step": str(int(state["step"])),
        **({"init_from": Path(state["init_from"]["path"]).name, "init_step": str(int(state["init_from"]["step"]))}
           if "init_from" in state else {}),
    }
    temporary = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    save_file(tensors, str(temporary), metadata=metadata)
    os.chmod(temporary, 0o644)  # a model file to ship, readable like any other
    os.replace(temporary, path)
    print(f"exported EMA weights of step {state['step']} to {path}", flush=True)
    return path


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m dpfast.train",
        description="Train dpfast's built-in ADM model on Fashion-MNIST (resumes from <out>/checkpoint.pt).",
    )
    defaults = TrainConfig(out=Path("."), steps=0)
    parser.add_argument("--out", type=Path, required=True, help="run directory (checkpoint.pt, log.csv)")
    parser.add_argument("--steps", type=int, default=None,
                        help="total optimizer steps to reach; omit with --export to export only")
    parser.add_argument("--batch", type=int, default=defaults.batch)
    parser.add_argument("--lr", type=float, default=defaults.lr)
    parser.add_argument("--warmup", type=int, default=defaults.warmup, help="linear learning-rate warmup steps")
    parser.add_argument("--weight-decay", type=float, default=defaults.weight_decay)
    parser.add_argument("--grad-clip", type=float, default=defaults.grad_clip, help="max gradient norm (0: off)")
    parser.add_argument("--ema-decay", type=float, default=defaults.ema_decay)
    parser.add_argument("--precision", choices=PRECISIONS, default=defaults.precision,
                        help="bf16 autocast, fp32, or auto (bf16 on CUDA, and on CPUs with native bf16)")
    parser.add_argument("--no-bf16", dest="precision", action="store_const", const="fp32",
                        help="same as --precision fp32")
    parser.add_argument("--no-channels-last", dest="channels_last", action="store_false")
    parser.add_argument("--no-flip", dest="flip", action="store_false", help="no random horizontal flips")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    parser.add_argument("--limit", type=int, default=None, help="train on the first N images only")
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--checkpoint-minutes", type=float, default=defaults.checkpoint_minutes)
    parser.add_argument("--log-every", type=int, default=defaults.log_every)
    parser.add_argument("--preset", default=defaults.preset)
    parser.add_argument("--device", default=defaults.device, help="cpu (default) or cuda")
    parser.add_argument("--export", type=Path, default=None, help="write the EMA weights here (.safetensors)")
    parser.add_argument("--init-from", default=None, metavar="WEIGHTS",
                        help="start a new run from these exported weights ('builtin': the shipped ones); "
                             "steps continue from the step they record")
    return parser


def main(argv: list[str] | None = None) -> dict | None:
    args = build_parser().parse_args(argv)
    keep_freed_memory_for_commands()  # as every dpfast command (dpfast/cpu_memory.py)
    summary = None
    if args.steps is None:
        if args.export is None:
            raise SystemExit("give --steps N to train, or --export PATH to export an existing checkpoint")
    else:
        options = {field.name: getattr(args, field.name) for field in dataclasses.fields(TrainConfig)}
        summary = train(TrainConfig(**options))
    if args.export is not None:
        export_ema(args.out, args.export)
    return summary


if __name__ == "__main__":
    main()
