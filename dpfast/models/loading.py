"""``dp.load_model``: one entry point for every model source (SPEC §8, §9)."""
from __future__ import annotations

from pathlib import Path

import torch

from dpfast import validation
from dpfast.models.base import ScoreModel

BUILTIN_ASSET = Path(__file__).resolve().parent.parent / "assets" / "builtin_fmnist.safetensors"
BUILTIN_PRESET = "builtin-fmnist"


def load_builtin(device: str | torch.device | None = None) -> ScoreModel:
    """The built-in Fashion-MNIST model (1×32×32, ε-prediction, linear T = 1000)."""
    from dpfast.models.adm import load_adm_checkpoint

    if not BUILTIN_ASSET.is_file():
        raise FileNotFoundError(
            f"the built-in model's weights are not in this installation ({BUILTIN_ASSET}); "
            "train them with `python -m dpfast.train` and export them there (docs/MODEL_CARD.md)"
        )
    model = load_adm_checkpoint(BUILTIN_ASSET, BUILTIN_PRESET)
    return model.to(device) if device is not None else model


def load_model(source: str | Path, config=None, device: str | torch.device | None = None) -> ScoreModel:
    """Load a score model for the sampler.

    Args:
        source: ``"builtin"``; ``"diffusers:<dir or hub id>"`` (a pixel-space
            ``UNet2DModel`` with its scheduler config); or a path to an ADM /
            guided-diffusion checkpoint (``.pt``, ``.pth`` or ``.safetensors``).
        config: for ADM checkpoints, a preset name (``"adm-ffhq256"``,
            ``"adm-imagenet256-uncond"``, ``"builtin-fmnist"``) or an ``ADMConfig``.
        device: where to put the model (default CPU).

    Example:
        >>> model = dp.load_model("ffhq_10m.pt", config="adm-ffhq256")   # doctest: +SKIP
    """
    if device is not None:
        device = validation.check_device("device", device)
    if isinstance(source, str) and source == "builtin":
        if config is not None:
            raise ValueError(f"config is not used with the built-in model, got {config!r}")
        return load_builtin(device)
    if isinstance(source, str) and source.startswith("diffusers:"):
        if config is not None:
            raise ValueError(f"config is read from the diffusers directory, got {config!r}")
        from dpfast.models.diffusers import load_diffusers

        return load_diffusers(source[len("diffusers:"):], device=device)
    if not isinstance(source, (str, Path)):
        raise TypeError(f"source must be 'builtin', 'diffusers:<dir>' or a checkpoint path, got {type(source).__name__}")
    path = Path(source)
    if path.is_dir():
        raise ValueError(f"checkpoint {str(path)!r} is a folder; for a diffusers model directory use "
                         f"'diffusers:{path}', for an ADM checkpoint give its file")
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {str(path)!r} does not exist (or use 'builtin' / 'diffusers:<dir>')")
    if config is None:
        raise ValueError(
            f"loading the ADM checkpoint {path.name} needs config=, e.g. 'adm-ffhq256' or 'adm-imagenet256-uncond'"
        )
    from dpfast.models.adm import load_adm_checkpoint

    model = load_adm_checkpoint(path, config)
    return model.to(device) if device is not None else model
