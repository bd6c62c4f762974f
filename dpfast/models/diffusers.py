"""Adapter for pixel-space diffusers ``UNet2DModel`` checkpoints (SPEC §8).

``load_diffusers(path)`` reads a directory saved by ``save_pretrained`` — either a bare
UNet directory with a ``scheduler_config.json`` beside its ``config.json``, or a pipeline
directory with ``unet/`` and ``scheduler/`` subfolders — and turns the scheduler config
(β schedule, T, variance type, clipping, prediction type) into dpfast's schedule. Hub ids
work where the machine can reach the hub. Needs the optional extra ``dpfast[diffusers]``.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import torch

from dpfast.models.base import ScoreModel
from dpfast.schedule import Schedule, cosine_betas

VARIANCE_NAMES = {
    "fixed_small": "fixed_small",
    "fixed_small_log": "fixed_small",
    "fixed_large": "fixed_large",
    "fixed_large_log": "fixed_large",
    "learned_range": "learned_range",
}
PREDICTION_TYPES = ("epsilon", "sample", "v_prediction")


def schedule_from_scheduler_config(config: dict) -> tuple[Schedule, str, bool, str]:
    """(schedule, variance, clip_denoised, prediction_type) from a diffusers scheduler config.

    β schedules: ``linear``, ``scaled_linear``, ``squaredcos_cap_v2`` and ``trained_betas``;
    computed in float64 (diffusers itself rounds them to float32).
    """
    steps = int(config.get("num_train_timesteps", 1000))
    trained = config.get("trained_betas")
    name = config.get("beta_schedule", "linear")
    start, end = float(config.get("beta_start", 1e-4)), float(config.get("beta_end", 0.02))
    if trained is not None:
        betas = np.asarray(trained, dtype=np.float64)
    elif name == "linear":
        betas = np.linspace(start, end, steps, dtype=np.float64)
    elif name == "scaled_linear":
        betas = np.linspace(math.sqrt(start), math.sqrt(end), steps, dtype=np.float64) ** 2
    elif name == "squaredcos_cap_v2":
        betas = cosine_betas(steps)
    else:
        raise ValueError(f"scheduler beta_schedule {name!r} is not supported (linear, scaled_linear, squaredcos_cap_v2)")
    variance_name = config.get("variance_type", "fixed_small")
    if variance_name not in VARIANCE_NAMES:
        raise ValueError(f"scheduler variance_type {variance_name!r} is not supported ({sorted(VARIANCE_NAMES)})")
    prediction_type = config.get("prediction_type", "epsilon")
    if prediction_type not in PREDICTION_TYPES:
        raise ValueError(f"scheduler prediction_type {prediction_type!r} is not supported {PREDICTION_TYPES}")
    return Schedule(betas), VARIANCE_NAMES[variance_name], bool(config.get("clip_sample", True)), prediction_type


class DiffusersScoreModel(ScoreModel):
    """A ``UNet2DModel`` seen as a dpfast :class:`ScoreModel` (ε and optional variance).

    ``sample`` and ``v_prediction`` networks are converted to ε exactly:
    ε = (x − sqrt(ᾱ) x0)/sqrt(1 − ᾱ) and ε = sqrt(ᾱ) v + sqrt(1 − ᾱ) x.
    """

    def __init__(self, unet: torch.nn.Module, scheduler_config: dict):
        super().__init__()
        self.unet = unet
        schedule, variance, clip, prediction_type = schedule_from_scheduler_config(scheduler_config)
        self.schedule = schedule
        self.prediction_type = prediction_type
        config = unet.config
        size = config.sample_size
        height, width = (size, size) if isinstance(size, int) else tuple(size)
        self.image_shape = (int(config.in_channels), int(height), int(width))
        self.learned_variance = variance == "learned_range"
        if self.learned_variance and int(config.out_channels) != 2 * int(config.in_channels):
            raise ValueError(
                f"variance_type learned_range needs out_channels = 2 x in_channels, got {config.out_channels}"
            )
        self.default_variance = variance
        self.default_clip_denoised = clip
        self.register_buffer(
            "alphas_cumprod", torch.as_tensor(schedule.alphas_cumprod, dtype=torch.float32), persistent=False
        )

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        output = self.unet(x, t).sample
        if self.prediction_type == "epsilon":
            return output
        channels = x.shape[1]
        prediction, rest = output[:, :channels], output[:, channels:]
        alpha_bar = self.alphas_cumprod[t.long()].view(-1, 1, 1, 1).to(output.dtype)
        if self.prediction_type == "sample":
            eps = (x - alpha_bar.sqrt() * prediction) / (1.0 - alpha_bar).sqrt()
        else:
            eps = alpha_bar.sqrt() * prediction + (1.0 - alpha_bar).sqrt() * x
        return torch.cat([eps, rest], dim=1) if rest.shape[1] else eps


def _find_layout(path: Path) -> tuple[Path, Path | None]:
    """(unet directory, scheduler config file or None) for a local directory."""
    if (path / "unet" / "config.json").is_file():
        scheduler = path / "scheduler" / "scheduler_config.json"
        return path / "unet", scheduler if scheduler.is_file() else None
    if (path / "config.json").is_file():
        scheduler = path / "scheduler_config.json"
        return path, scheduler if scheduler.is_file() else None
    raise ValueError(f"{path} holds no diffusers UNet: expected config.json or unet/config.json")


def load_diffusers(source: str | Path, device: str | torch.device | None = None) -> DiffusersScoreModel:
    """Load a pixel-space ``UNet2DModel`` and its scheduler config.

    Args:
        source: a local directory (bare UNet + ``scheduler_config.json``, or a pipeline
            directory with ``unet/`` and ``scheduler/``) or a hub id.
        device: where to put the network (default CPU).
    """
    try:
        from diffusers import UNet2DModel
    except ImportError as error:
        raise ImportError("loading diffusers checkpoints needs `pip install dpfast[diffusers]`") from error
    path = Path(source)
    if path.exists():
        unet_dir, scheduler_file = _find_layout(path)
        unet = UNet2DModel.from_pretrained(unet_dir)
        if scheduler_file is None:
            raise ValueError(
                f"{path} has no scheduler_config.json (beside config.json or in scheduler/); "
                "dpfast needs it for the β schedule and variance type"
            )
        scheduler_config = json.loads(scheduler_file.read_text())
    else:  # a hub id: the root layout (e.g. google/ddpm-cifar10-32) or unet/ + scheduler/
        if path.is_absolute() or str(source).startswith(".") or str(source).count("/") != 1:
            raise FileNotFoundError(f"{str(source)!r} is neither an existing local directory nor a hub id (owner/name)")
        from diffusers import DDPMScheduler

        try:
            try:
                unet = UNet2DModel.from_pretrained(str(source))
                scheduler_config = dict(DDPMScheduler.load_config(str(source)))
            except OSError:
                unet = UNet2DModel.from_pretrained(str(source), subfolder="unet")
                scheduler_config = dict(DDPMScheduler.load_config(str(source), subfolder="scheduler"))
        except OSError as error:
            raise FileNotFoundError(
                f"{str(source)!r} is not a local directory and could not be loaded from the hub "
                f"(offline, or no UNet2DModel there): {error}"
            ) from error
    model = DiffusersScoreModel(unet, scheduler_config)
    return model.to(device) if device is not None else model
