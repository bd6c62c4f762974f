"""ADM (guided-diffusion) UNet, state_dict-compatible with its checkpoints (SPEC §8).

The module tree reproduces the parameter names and shapes of guided-diffusion's
``UNetModel`` exactly (``time_embed.0``, ``input_blocks.N.M.in_layers.2``,
``middle_block.1.qkv``, ``output_blocks.N.M.out_layers.3``, ``out.2``, ...), so a
checkpoint such as DPS's ``ffhq_10m.pt`` or OpenAI's ``256x256_diffusion_uncond.pt``
loads with a strict ``load_state_dict``. The forward pass computes the same function;
attention runs through :func:`torch.nn.functional.scaled_dot_product_attention` and
every GroupNorm is evaluated in float32, so bfloat16/float16 runs stay finite.

Public names: :class:`ADMConfig`, :data:`ADM_PRESETS`, :func:`adm_config`,
:class:`ADMUNet`, :class:`ADMScoreModel`, :func:`read_state_dict`,
:func:`load_adm_checkpoint`.
"""
from __future__ import annotations

import dataclasses
import math
import pickle
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from dpfast.models.base import ScoreModel
from dpfast.schedule import Schedule

GROUP_NORM_GROUPS = 32
GROUP_NORM_EPS = 1e-5
MAX_LISTED_KEYS = 10


@dataclass(frozen=True)
class ADMConfig:
    """Hyper-parameters of an ADM UNet, named as in guided-diffusion's ``create_model``.

    ``attention_resolutions`` holds feature-map **resolutions in pixels** (the values of
    guided-diffusion's ``--attention_resolutions 32,16,8`` flag), not downsample factors:
    ``(16,)`` on a 256×256 model puts attention where the feature maps are 16×16
    (downsample factor 16). Each must be a resolution the network actually reaches.

    ``out_channels`` defaults to ``in_channels`` (ε only) or ``2 * in_channels`` when
    ``learn_sigma`` (ε, then the ``learned_range`` value v). ``num_head_channels = -1``
    means "use ``num_heads`` heads"; otherwise it fixes the width of every head.
    """

    image_size: int
    in_channels: int = 3
    model_channels: int = 128
    out_channels: int | None = None
    num_res_blocks: int = 2
    attention_resolutions: tuple[int, ...] = (16,)
    channel_mult: tuple[float, ...] = (1, 1, 2, 2, 4, 4)
    num_head_channels: int = 64
    num_heads: int = 1
    use_scale_shift_norm: bool = True
    resblock_updown: bool = True
    conv_resample: bool = True
    learn_sigma: bool = True
    dropout: float = 0.0
    num_classes: int | None = None

    def __post_init__(self):
        object.__setattr__(self, "attention_resolutions", tuple(int(r) for r in self.attention_resolutions))
        object.__setattr__(self, "channel_mult", tuple(self.channel_mult))
        expected_out = self.in_channels * (2 if self.learn_sigma else 1)
        if self.out_channels is None:
            object.__setattr__(self, "out_channels", expected_out)
        elif self.out_channels != expected_out:
            raise ValueError(
                f"out_channels must be {expected_out} for in_channels={self.in_channels} and "
                f"learn_sigma={self.learn_sigma} (ε, plus v when learn_sigma), got {self.out_channels}"
            )
        if self.num_classes is not None:
            raise ValueError(
                f"num_classes={self.num_classes}: class-conditional ADM models are not supported "
                "(dpfast restores with unconditional priors); use num_classes=None"
            )
        levels = len(self.channel_mult)
        if levels < 1:
            raise ValueError("channel_mult must hold at least one multiplier")
        if self.image_size % (2 ** (levels - 1)) != 0:
            raise ValueError(
                f"image_size={self.image_size} must be divisible by 2**(len(channel_mult) - 1) = "
                f"{2 ** (levels - 1)} for channel_mult={self.channel_mult}"
            )
        reached = [self.image_size // 2**level for level in range(levels)]
        for resolution in self.attention_resolutions:
            if resolution not in reached:
                raise ValueError(
                    f"attention_resolutions holds {resolution}, but the feature maps of this network "
                    f"are {reached} pixels wide (attention_resolutions are resolutions, not downsample factors)"
                )
        for width in self.level_channels:
            if width % GROUP_NORM_GROUPS != 0:
                raise ValueError(
                    f"every level width must be divisible by {GROUP_NORM_GROUPS} (GroupNorm groups); "
                    f"model_channels={self.model_channels} with channel_mult={self.channel_mult} gives {width}"
                )
            if self.num_head_channels != -1 and width % self.num_head_channels != 0:
                raise ValueError(
                    f"num_head_channels={self.num_head_channels} must divide every level width, got {width}"
                )
            if self.num_head_channels == -1 and width % self.num_heads != 0:
                raise ValueError(f"num_heads={self.num_heads} must divide every level width, got {width}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must lie in [0, 1), got {self.dropout}")

    @property
    def level_channels(self) -> tuple[int, ...]:
        return tuple(int(mult * self.model_channels) for mult in self.channel_mult)

    @property
    def attention_downsample_factors(self) -> tuple[int, ...]:
        """``attention_resolutions`` as downsample factors (what ``UNetModel`` itself takes)."""
        return tuple(self.image_size // resolution for resolution in self.attention_resolutions)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: Mapping) -> "ADMConfig":
        known = {field.name for field in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown ADMConfig fields {unknown}; known fields are {sorted(known)}")
        return cls(**values)


ADM_PRESETS: dict[str, ADMConfig] = {
    # DPS's FFHQ-256 model (ffhq_10m.pt): 362 tensors, 93,563,910 parameters.
    "adm-ffhq256": ADMConfig(
        image_size=256,
        in_channels=3,
        model_channels=128,
        num_res_blocks=1,
        attention_resolutions=(16,),
        channel_mult=(1, 1, 2, 2, 4, 4),
        num_head_channels=64,
        use_scale_shift_norm=True,
        resblock_updown=True,
        learn_sigma=True,
    ),
    # OpenAI's 256x256_diffusion_uncond.pt.
    "adm-imagenet256-uncond": ADMConfig(
        image_size=256,
        in_channels=3,
        model_channels=256,
        num_res_blocks=2,
        attention_resolutions=(32, 16, 8),
        channel_mult=(1, 1, 2, 2, 4, 4),
        num_head_channels=64,
        use_scale_shift_norm=True,
        resblock_updown=True,
        learn_sigma=True,
    ),
    # dpfast's own Fashion-MNIST model (dpfast.train), 32×32 grayscale, ε only:
    # 1,921,601 parameters (64 base channels would give 7.7 M and 4× the CPU cost).
    "builtin-fmnist": ADMConfig(
        image_size=32,
        in_channels=1,
        model_channels=32,
        num_res_blocks=2,
        attention_resolutions=(8,),
        channel_mult=(1, 2, 2),
        num_head_channels=32,
        use_scale_shift_norm=True,
        resblock_updown=True,
        learn_sigma=False,
    ),
}


def adm_config(config: str | ADMConfig) -> ADMConfig:
    """Resolve a preset name (a key of :data:`ADM_PRESETS`) or pass an ``ADMConfig`` through.

    Example::

        >>> adm_config("adm-ffhq256").model_channels
        128
    """
    if isinstance(config, ADMConfig):
        return config
    if isinstance(config, str):
        if config not in ADM_PRESETS:
            raise ValueError(f"unknown ADM preset {config!r}; presets are {sorted(ADM_PRESETS)}")
        return ADM_PRESETS[config]
    raise TypeError(f"config must be a preset name or an ADMConfig, got {type(config).__name__}")


# --------------------------------------------------------------------------- layers


def timestep_embedding(timesteps: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding ``[cos(t f_i), sin(t f_i)]`` (cos half first), float32 ``(B, dim)``."""
    half = dim // 2
    exponents = torch.arange(half, dtype=torch.float32, device=timesteps.device) / half
    frequencies = torch.exp(-math.log(max_period) * exponents)
    angles = timesteps.to(torch.float32)[:, None] * frequencies[None, :]
    embedding = torch.cat([torch.cos(angles), torch.sin(angles)], dim=1)
    if dim % 2:
        embedding = F.pad(embedding, (0, 1))
    return embedding


class GroupNorm32(nn.GroupNorm):
    """GroupNorm evaluated in float32 whatever the input/weight dtype, cast back after."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = self.weight.float() if self.weight is not None else None
        bias = self.bias.float() if self.bias is not None else None
        return F.group_norm(x.float(), self.num_groups, weight, bias, self.eps).to(x.dtype)


def _norm(channels: int) -> GroupNorm32:
    return GroupNorm32(GROUP_NORM_GROUPS, channels, eps=GROUP_NORM_EPS)


def _zeroed(module: nn.Module) -> nn.Module:
    # Residual branches start as the identity, as in ADM's initialisation.
    for parameter in module.parameters():
        nn.init.zeros_(parameter)
    return module


class TimestepBlock(nn.Module):
    """A block whose forward also takes the timestep embedding."""

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


class TimestepSequential(nn.Sequential):
    """``nn.Sequential`` that hands the embedding to the children that take it."""

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        for layer in self:
            x = layer(x, emb) if isinstance(layer, TimestepBlock) else layer(x)
        return x


class Downsample(nn.Module):
    """Halve H and W: a stride-2 3×3 conv (``op``) or a 2×2 average pool."""

    def __init__(self, channels: int, use_conv: bool):
        super().__init__()
        if use_conv:
            self.op = nn.Conv2d(channels, channels, 3, stride=2, padding=1)
        else:
            self.op = nn.AvgPool2d(kernel_size=2, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.op(x)


class Upsample(nn.Module):
    """Double H and W by nearest neighbour, then an optional 3×3 conv (``conv``)."""

    def __init__(self, channels: int, use_conv: bool):
        super().__init__()
        self.use_conv = use_conv
        if use_conv:
            self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x, scale_factor=2.0, mode="nearest")
        return self.conv(x) if self.use_conv else x


class ResBlock(TimestepBlock):
    """ADM residual block: ``in_layers``, ``emb_layers``, ``out_layers``, ``skip_connection``.

    With ``up``/``down`` both the main path (after GN+SiLU, before the conv) and the
    skip path are resampled (nearest ×2 / 2×2 average pool).
    """

    def __init__(
        self,
        channels: int,
        emb_channels: int,
        dropout: float,
        out_channels: int | None = None,
        use_scale_shift_norm: bool = True,
        up: bool = False,
        down: bool = False,
    ):
        super().__init__()
        out_channels = out_channels or channels
        self.use_scale_shift_norm = use_scale_shift_norm
        self.resample = up or down
        self.in_layers = nn.Sequential(_norm(channels), nn.SiLU(), nn.Conv2d(channels, out_channels, 3, padding=1))
        if up:
            self.h_upd, self.x_upd = Upsample(channels, False), Upsample(channels, False)
        elif down:
            self.h_upd, self.x_upd = Downsample(channels, False), Downsample(channels, False)
        else:
            self.h_upd = self.x_upd = nn.Identity()
        emb_out = 2 * out_channels if use_scale_shift_norm else out_channels
        self.emb_layers = nn.Sequential(nn.SiLU(), nn.Linear(emb_channels, emb_out))
        self.out_layers = nn.Sequential(
            _norm(out_channels),
            nn.SiLU(),
            nn.Dropout(p=dropout),
            _zeroed(nn.Conv2d(out_channels, out_channels, 3, padding=1)),
        )
        if out_channels == channels:
            self.skip_connection = nn.Identity()
        else:
            self.skip_connection = nn.Conv2d(channels, out_channels, 1)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        norm_in, act_in, conv_in = self.in_layers
        h = act_in(norm_in(x))
        if self.resample:
            h = self.h_upd(h)
            x = self.x_upd(x)
        h = conv_in(h)
        emb_out = self.emb_layers(emb).to(h.dtype)[:, :, None, None]
        norm_out, act_out, dropout, conv_out = self.out_layers
        if self.use_scale_shift_norm:
            scale, shift = emb_out.chunk(2, dim=1)
            h = norm_out(h) * (1 + scale) + shift
        else:
            h = norm_out(h + emb_out)
        h = conv_out(dropout(act_out(h)))
        return self.skip_connection(x) + h


class AttentionBlock(nn.Module):
    """Spatial self-attention with a residual: ``norm``, ``qkv`` (1×1 Conv1d), ``proj_out``.

    The 3C ``qkv`` channels are grouped per head as ``[q, k, v]`` (guided-diffusion's
    legacy order, ``QKVAttentionLegacy``), each of width C / heads.
    """

    def __init__(self, channels: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.norm = _norm(channels)
        self.qkv = nn.Conv1d(channels, 3 * channels, 1)
        self.proj_out = _zeroed(nn.Conv1d(channels, channels, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, channels, height, width = x.shape
        flat = x.reshape(batch, channels, height * width)
        qkv = self.qkv(self.norm(flat))
        head_width = channels // self.num_heads
        qkv = qkv.reshape(batch, self.num_heads, 3, head_width, height * width)
        query, key, value = (part.transpose(-1, -2) for part in qkv.unbind(dim=2))
        # q, k, v share qkv's dtype already, so autocast has nothing to cast here, and with
        # it on, torch.func.vjp's backward through SDPA mixes float32 and bf16 and fails on
        # the CPU (torch 2.14; the compiled DPS step uses func.vjp). Off, results are the same bits.
        with torch.autocast(x.device.type, enabled=False):
            attended = F.scaled_dot_product_attention(query, key, value)  # scale 1/sqrt(head_width)
        attended = attended.transpose(-1, -2).reshape(batch, channels, height * width)
        return (flat + self.proj_out(attended)).reshape(batch, channels, height, width)


def _attention_heads(config: ADMConfig, channels: int) -> int:
    if config.num_head_channels == -1:
        return config.num_heads
    return channels // config.num_head_channels


# --------------------------------------------------------------------------- network


class ADMUNet(nn.Module):
    """The guided-diffusion ``UNetModel`` (unconditional), same state_dict names and shapes.

    ``forward(x, timesteps)`` takes ``x`` ``(B, in_channels, H, W)`` and ``timesteps``
    ``(B,)`` (integers or floats) and returns ``(B, out_channels, H, W)`` in ``x``'s
    dtype; the network itself runs in the dtype of its parameters (or under autocast).

    Example::

        >>> unet = ADMUNet(adm_config("builtin-fmnist"))
        >>> unet(torch.zeros(2, 1, 32, 32), torch.tensor([0, 999])).shape
        torch.Size([2, 1, 32, 32])
    """

    def __init__(self, config: ADMConfig):
        super().__init__()
        self.config = config
        base = config.model_channels
        emb_channels = 4 * base
        attention_at = set(config.attention_downsample_factors)

        def res_block(channels: int, out_channels: int | None = None, **resample) -> ResBlock:
            return ResBlock(
                channels, emb_channels, config.dropout, out_channels, config.use_scale_shift_norm, **resample
            )

        def attention(channels: int) -> AttentionBlock:
            return AttentionBlock(channels, _attention_heads(config, channels))

        self.time_embed = nn.Sequential(nn.Linear(base, emb_channels), nn.SiLU(), nn.Linear(emb_channels, emb_channels))

        channels = config.level_channels[0]
        self.input_blocks = nn.ModuleList([TimestepSequential(nn.Conv2d(config.in_channels, channels, 3, padding=1))])
        skip_channels = [channels]
        factor = 1
        last_level = len(config.channel_mult) - 1
        for level, width in enumerate(config.level_channels):
            for _ in range(config.num_res_blocks):
                layers: list[nn.Module] = [res_block(channels, width)]
                channels = width
                if factor in attention_at:
                    layers.append(attention(channels))
                self.input_blocks.append(TimestepSequential(*layers))
                skip_channels.append(channels)
            if level != last_level:
                if config.resblock_updown:
                    down: nn.Module = res_block(channels, channels, down=True)
                else:
                    down = Downsample(channels, config.conv_resample)
                self.input_blocks.append(TimestepSequential(down))
                skip_channels.append(channels)
                factor *= 2

        self.middle_block = TimestepSequential(res_block(channels), attention(channels), res_block(channels))

        self.output_blocks = nn.ModuleList()
        for level in reversed(range(len(config.channel_mult))):
            width = config.level_channels[level]
            for index in range(config.num_res_blocks + 1):
                layers = [res_block(channels + skip_channels.pop(), width)]
                channels = width
                if factor in attention_at:
                    layers.append(attention(channels))
                if level > 0 and index == config.num_res_blocks:
                    if config.resblock_updown:
                        layers.append(res_block(channels, channels, up=True))
                    else:
                        layers.append(Upsample(channels, config.conv_resample))
                    factor //= 2
                self.output_blocks.append(TimestepSequential(*layers))

        self.out = nn.Sequential(
            _norm(channels), nn.SiLU(), _zeroed(nn.Conv2d(channels, config.out_channels, 3, padding=1))
        )

    def forward(self, x: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        compute_dtype = self.time_embed[0].weight.dtype
        emb = self.time_embed(timestep_embedding(timesteps, self.config.model_channels).to(compute_dtype))
        h = x.to(compute_dtype)
        skips = []
        for block in self.input_blocks:
            h = block(h, emb)
            skips.append(h)
        h = self.middle_block(h, emb)
        for block in self.output_blocks:
            h = block(torch.cat([h, skips.pop()], dim=1), emb)
        return self.out(h).to(x.dtype)


class ADMScoreModel(ScoreModel):
    """An :class:`ADMUNet` presented as a :class:`~dpfast.models.base.ScoreModel`.

    The UNet lives in ``self.unet``, so ``model.unet.state_dict()`` is exactly a
    guided-diffusion state_dict (no prefix). ``forward(x, t)`` takes ``x``
    ``(B, C, H, W)`` and int64 original timesteps ``t`` ``(B,)`` and returns ε
    ``(B, C, H, W)``, or ``(B, 2C, H, W)`` (ε, then v) when ``config.learn_sigma``.

    ``schedule`` defaults to the linear 1000-step schedule every standard ADM
    checkpoint was trained with. ``default_variance`` is ``learned_range`` for
    learn_sigma models and ``fixed_small`` otherwise.

    Example::

        >>> model = ADMScoreModel("builtin-fmnist")
        >>> model(torch.zeros(4, 1, 32, 32), torch.full((4,), 500)).shape
        torch.Size([4, 1, 32, 32])
    """

    def __init__(self, config: str | ADMConfig, schedule: Schedule | None = None):
        super().__init__()
        config = adm_config(config)
        self.config = config
        self.unet = ADMUNet(config)
        self.schedule = schedule if schedule is not None else Schedule.linear(1000)
        self.image_shape = (config.in_channels, config.image_size, config.image_size)
        self.learned_variance = config.learn_sigma
        self.default_variance = "learned_range" if config.learn_sigma else "fixed_small"
        self.default_clip_denoised = True

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or tuple(x.shape[1:]) != self.image_shape:
            raise ValueError(f"x must have shape (B, {', '.join(map(str, self.image_shape))}), got {tuple(x.shape)}")
        if t.dim() != 1 or t.shape[0] != x.shape[0]:
            raise ValueError(f"t must have shape ({x.shape[0]},) to match x, got {tuple(t.shape)}")
        return self.unet(x, t)


# --------------------------------------------------------------------------- loading

WRAPPER_KEYS = ("state_dict", "model", "ema", "ema_model", "model_ema", "params", "module", "net")
PICKLE_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt")


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a plain state_dict from ``.pt``/``.pth`` (safe ``weights_only`` unpickling) or ``.safetensors``.

    Tensors land on the CPU in their stored dtype. A file holding a wrapper dict (e.g.
    ``{"state_dict": ..., "ema": ...}``) or any non-tensor entry is rejected with a
    ValueError saying what was found. Keys that all start with ``module.`` (a
    DataParallel save) are accepted, the prefix is stripped and a warning says so.

    Example::

        >>> state = read_state_dict("ffhq_10m.pt")   # doctest: +SKIP
        >>> len(state)
        362
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint path {str(path)!r} does not exist or is not a file")
    suffix = path.suffix.lower()
    if suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            loaded: object = load_file(str(path), device="cpu")
        except SafetensorError as error:
            raise ValueError(f"cannot read {path} as a .safetensors file (corrupt or truncated?): {error}") from error
    elif suffix in PICKLE_SUFFIXES:
        try:
            loaded = torch.load(str(path), map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as error:
            if "Unsupported global" not in str(error):  # bytes that are no pickle of tensors at all
                raise ValueError(f"cannot read {path} as a torch checkpoint (corrupt or not a checkpoint?): {error}") from error
            raise ValueError(
                f"{path} holds Python objects other than tensors, which dpfast refuses to unpickle "
                f"(torch.load(weights_only=True) failed: {error}). Save a plain state_dict "
                "(torch.save(model.state_dict(), path)) or a .safetensors file instead."
            ) from error
        except (EOFError, KeyError, RuntimeError, ValueError) as error:  # what torch.load raises on bad bytes
            raise ValueError(f"cannot read {path} as a torch checkpoint (corrupt, truncated or not a checkpoint): "
                             f"{type(error).__name__}: {error}") from error
    else:
        raise ValueError(
            f"checkpoint path {str(path)!r} has suffix {suffix!r}; expected .safetensors or one of {PICKLE_SUFFIXES}"
        )
    return _plain_state_dict(loaded, path)


def _plain_state_dict(loaded: object, path: Path) -> dict[str, torch.Tensor]:
    if not isinstance(loaded, Mapping):
        raise ValueError(f"{path} holds a {type(loaded).__name__}, expected a state_dict (a dict of tensors)")
    not_tensors = [key for key, value in loaded.items() if not isinstance(value, torch.Tensor)]
    if not_tensors:
        wrappers = [key for key in not_tensors if key in WRAPPER_KEYS]
        found = ", ".join(f"{key!r}: {type(loaded[key]).__name__}" for key in not_tensors[:MAX_LISTED_KEYS])
        hint = (
            f" It looks like a training checkpoint wrapping the weights under {wrappers}; extract the one you "
            f"want (e.g. torch.save(torch.load(path)[{wrappers[0]!r}], 'weights.pt')) and load that."
            if wrappers
            else ""
        )
        raise ValueError(
            f"{path} is not a plain state_dict: {len(not_tensors)} entries are not tensors ({found}).{hint}"
        )
    state = {str(key): value for key, value in loaded.items()}
    if state and all(key.startswith("module.") for key in state):
        warnings.warn(
            f"{path}: every key starts with 'module.' (a DataParallel/DDP save); stripping the prefix",
            stacklevel=3,
        )
        state = {key[len("module."):]: value for key, value in state.items()}
    return state


def _listed(keys: list[str]) -> str:
    shown = ", ".join(keys[:MAX_LISTED_KEYS])
    more = len(keys) - MAX_LISTED_KEYS
    return shown + (f", ... and {more} more" if more > 0 else "")


def check_state_dict(module: nn.Module, state: Mapping[str, torch.Tensor], source: str = "state_dict") -> None:
    """Raise a ValueError naming every missing, unexpected or mis-shaped key of ``state``."""
    expected = {key: tuple(value.shape) for key, value in module.state_dict().items()}
    missing = [key for key in expected if key not in state]
    unexpected = [key for key in state if key not in expected]
    misshaped = [
        f"{key} (file {tuple(state[key].shape)}, model {expected[key]})"
        for key in expected
        if key in state and tuple(state[key].shape) != expected[key]
    ]
    not_float = [key for key in expected if key in state and not state[key].is_floating_point()]
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing keys: {_listed(missing)}")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected keys: {_listed(unexpected)}")
    if misshaped:
        problems.append(f"{len(misshaped)} mis-shaped keys: {_listed(misshaped)}")
    if not_float:
        problems.append(f"{len(not_float)} non-floating-point tensors: {_listed(not_float)}")
    if problems:
        hint = ""
        if len(missing) == len(expected):
            hint = " None of the expected keys is present"
            if any(key.startswith(("down_blocks.", "up_blocks.", "conv_in.")) for key in state):
                hint += " (these look like diffusers UNet2DModel weights: load them with 'diffusers:<dir>')"
            hint += "."
        raise ValueError(
            f"{source} does not match the ADM config ({len(expected)} tensors expected, {len(state)} found): "
            + "; ".join(problems)
            + "."
            + hint
        )


def load_adm_checkpoint(
    path: str | Path, config: str | ADMConfig, schedule: Schedule | None = None
) -> ADMScoreModel:
    """Load a guided-diffusion UNet checkpoint strictly into an :class:`ADMScoreModel`.

    ``path``: a ``.pt``/``.pth`` file (read with ``torch.load(weights_only=True)``) or a
    ``.safetensors`` file holding a plain, unprefixed state_dict. ``config``: a preset
    name of :data:`ADM_PRESETS` or an :class:`ADMConfig`. Every missing, unexpected or
    mis-shaped key raises a ValueError naming the keys; random weights are never kept.
    The model comes back on the CPU, float32, in eval mode, with ``requires_grad=False``
    on its parameters (gradients with respect to the *input*, as DPS takes them, still
    flow; call ``requires_grad_(True)`` to fine-tune).

    Example::

        >>> model = load_adm_checkpoint("ffhq_10m.pt", "adm-ffhq256")   # doctest: +SKIP
        >>> model.learned_variance, model.default_variance
        (True, 'learned_range')
    """
    config = adm_config(config)
    state = read_state_dict(path)
    with torch.device("meta"):
        model = ADMScoreModel(config, schedule)
    check_state_dict(model.unet, state, source=str(path))
    state = {key: value.to(torch.float32).contiguous() for key, value in state.items()}
    model.unet.load_state_dict(state, strict=True, assign=True)
    on_meta = [name for name, tensor in model.state_dict().items() if tensor.is_meta]
    if on_meta:  # cannot happen after a strict load; guards against keeping uninitialised weights
        raise ValueError(f"{path}: tensors left uninitialised after loading: {_listed(on_meta)}")
    return model.eval().requires_grad_(False)
