"""The λ-scaled reverse step (SPEC §4, steps 1–3).

``reverse_step_ref`` is the one definition of what the op computes; the sampler,
tests and benchmarks all use it (directly or as the oracle for the fused backends).
Then, in order: the Triton kernel ``_reverse_step_kernel`` (with the per-element math
it shares in spirit with ``csrc/step_math.h``), the registered ops
``dpfast::reverse_step_triton`` and the fake of the C++/CUDA ``dpfast::reverse_step``,
and the public wrapper :func:`reverse_step`, which picks a backend.
"""
from __future__ import annotations

from typing import Optional

import torch

from dpfast import _extension
from dpfast.kernels import backends
from dpfast.noise import counter_normal_ref
from dpfast.schedule import COEFFICIENT_COLUMNS, COLUMN

try:
    import triton
    import triton.language as tl
except ImportError as error:  # Triton is optional; the other backends do not need it
    triton = None
    TRITON_IMPORT_ERROR: str | None = str(error)
else:
    TRITON_IMPORT_ERROR = None


def reverse_step_ref(
    x: torch.Tensor,
    model_output: torch.Tensor,
    coefficients: torch.Tensor,
    noise_scale: torch.Tensor,
    noise: torch.Tensor | None = None,
    seed_words: torch.Tensor | None = None,
    step: int | torch.Tensor = 0,
    clip_denoised: bool = True,
    learned_variance: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One λ-scaled DDPM reverse step without guidance.

    Args:
        x: the state x_t, float32 ``(B, *S)`` with ``S = (C, H, W)`` or ``(d,)``.
        model_output: ε, or ε and the ``learned_range`` value v stacked on dim 1
            (``(B, 2C, ...)``) when ``learned_variance``; any float dtype.
        coefficients: one row of the coefficient table (``dpfast.schedule.COLUMN``), float32.
        noise_scale: ``(B,)`` float32, s(λ_b): sqrt(λ) (variance scaling) or λ.
        noise: ``z`` of the shape of ``x``; if ``None`` and ``seed_words`` is given, z is
            drawn from the counter RNG keyed by ``(seed_words[b], step, element)``; if
            both are ``None`` no noise is added (every λ is 0).
        clip_denoised: clamp x̂0 to [-1, 1] before forming the mean.

    Returns:
        ``(pred_x0, x_prime)``: the *unclamped* Tweedie estimate
        x̃0 = (x_t - sqrt(1-ᾱ_t) ε) / sqrt(ᾱ_t) — the clamp mask is |x̃0| <= 1 — and
        x'_prev = c0·clamp(x̃0) + c1·x_t + s(λ)·σ_t·z, both float32 of the shape of ``x``.
    """
    channels = x.shape[1]
    model_output = model_output.float()
    eps = model_output[:, :channels]
    row = coefficients.float()
    pred_x0 = x * row[COLUMN["sqrt_recip_alpha_bar"]] - eps * row[COLUMN["sqrt_recip_alpha_bar_minus_one"]]
    x0_used = pred_x0.clamp(-1.0, 1.0) if clip_denoised else pred_x0
    mean = x0_used * row[COLUMN["mean_coef_x0"]] + x * row[COLUMN["mean_coef_xt"]]
    if noise is None and seed_words is None:
        return pred_x0, mean
    if noise is None:
        noise = counter_normal_ref(seed_words, step, x.shape[1:])
    if learned_variance:
        frac = (model_output[:, channels:] + 1.0) * 0.5
        log_variance = frac * row[COLUMN["log_variance_max"]] + (1.0 - frac) * row[COLUMN["log_variance_min"]]
        sigma = torch.exp(0.5 * log_variance) * row[COLUMN["noise_mask"]]
    else:
        sigma = row[COLUMN["sigma"]]
    scale = noise_scale.float().view(-1, *([1] * (x.dim() - 1)))
    return pred_x0, mean + scale * sigma * noise.float()


# ---------------------------------------------------------------------------------
# Argument checks shared by the wrapper, the Triton op and the C++ op's fake.

def _check_reverse_step_arguments(
    x, model_output, coefficients, noise_scale, noise, seed_words, step, learned_variance
) -> None:
    if x.dim() < 2:
        raise ValueError(f"x must be (B, C, ...) or (B, d), got shape {tuple(x.shape)}")
    channels = x.shape[1]
    if (
        model_output.dim() != x.dim()
        or model_output.shape[0] != x.shape[0]
        or model_output.shape[2:] != x.shape[2:]
        or model_output.shape[1] not in (channels, 2 * channels)
    ):
        raise ValueError(
            f"model_output must have the shape of x {tuple(x.shape)} with C or 2C channels on dim 1, "
            f"got {tuple(model_output.shape)}"
        )
    if learned_variance and model_output.shape[1] != 2 * channels:
        raise ValueError(
            f"learned_variance needs model_output with 2C = {2 * channels} channels (ε then v), "
            f"got {tuple(model_output.shape)}"
        )
    if coefficients.dim() != 1 or coefficients.shape[0] < len(COEFFICIENT_COLUMNS):
        raise ValueError(
            f"coefficients must be one row of the coefficient table ({len(COEFFICIENT_COLUMNS)} columns), "
            f"got shape {tuple(coefficients.shape)}"
        )
    if noise_scale.numel() != x.shape[0]:
        raise ValueError(f"noise_scale must hold one value per sample ({x.shape[0]}), got shape {tuple(noise_scale.shape)}")
    if noise is not None and noise.shape != x.shape:
        raise ValueError(f"noise must have the shape of x {tuple(x.shape)}, got {tuple(noise.shape)}")
    if noise is None and seed_words is not None and seed_words.numel() != x.shape[0]:
        raise ValueError(f"seed_words must hold one word per sample ({x.shape[0]}), got shape {tuple(seed_words.shape)}")
    if isinstance(step, torch.Tensor) and step.numel() != 1:
        raise ValueError(f"step must be a 0-dim integer tensor, got shape {tuple(step.shape)}")


def _float_dtypes(*tensors) -> tuple[torch.dtype, ...]:
    return tuple(t.dtype for t in tensors if t is not None)


def _new_outputs(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return x.new_empty(x.shape, dtype=torch.float32), x.new_empty(x.shape, dtype=torch.float32)


# ---------------------------------------------------------------------------------
# Triton kernel. The per-element math repeats csrc/step_math.h operation for operation
# (same polynomials, same operation order), so all backends agree to within an ulp or
# two; IEEE division and square root (div_rn, sqrt_rn) keep the GPU build accurate.

NOISE_NONE, NOISE_TENSOR, NOISE_COUNTER = 0, 1, 2
# Elements per program: the interpreter's cost grows with the number of programs, so
# it gets few large blocks; a GPU gets blocks of 1024.
INTERPRETER_BLOCK = 1 << 16
GPU_BLOCK = 1024

if triton is not None:
    # Coefficient-table columns, as compile-time constants for the kernels.
    COLUMN_SQRT_RECIP_ALPHA_BAR = tl.constexpr(COLUMN["sqrt_recip_alpha_bar"])
    COLUMN_SQRT_RECIP_ALPHA_BAR_MINUS_ONE = tl.constexpr(COLUMN["sqrt_recip_alpha_bar_minus_one"])
    COLUMN_MEAN_COEF_X0 = tl.constexpr(COLUMN["mean_coef_x0"])
    COLUMN_MEAN_COEF_XT = tl.constexpr(COLUMN["mean_coef_xt"])
    COLUMN_SIGMA = tl.constexpr(COLUMN["sigma"])
    COLUMN_LOG_VARIANCE_MIN = tl.constexpr(COLUMN["log_variance_min"])
    COLUMN_LOG_VARIANCE_MAX = tl.constexpr(COLUMN["log_variance_max"])
    COLUMN_NOISE_MASK = tl.constexpr(COLUMN["noise_mask"])

    @triton.jit
    def _hash32(x):
        x ^= x >> 16
        x *= 0x21F0AAAD
        x ^= x >> 15
        x *= 0x735A2D97
        x ^= x >> 15
        return x

    @triton.jit
    def _to_float32(value):
        # bfloat16 widened by its bits (exact; the interpreter's own cast loses subnormals).
        if value.dtype == tl.bfloat16:
            return (value.to(tl.uint16, bitcast=True).to(tl.uint32) << 16).to(tl.float32, bitcast=True)
        return value.to(tl.float32)

    @triton.jit
    def _round_to_integer(value):
        # 1.5·2^23 added and removed: round to nearest for |value| < 2^22.
        return (value + 12582912.0) - 12582912.0

    @triton.jit
    def _log_positive(u):
        # u = m·2^e, m in [√½, √2); log(1+f) = f - s·(f - R), s = f/(2+f) (step_math.h).
        bits = u.to(tl.uint32, bitcast=True)
        exponent = (bits - 0x3F3504F3).to(tl.int32, bitcast=True) >> 23
        m = (bits - (exponent << 23).to(tl.uint32, bitcast=True)).to(tl.float32, bitcast=True)
        f = m - 1.0
        s = tl.math.div_rn(f, 2.0 + f)
        w = s * s
        r = w * (0.6666666865 + w * (0.4000000060 + w * (0.2857142985 + w * 0.2222222239)))
        log_m = f - s * (f - r)
        e = exponent.to(tl.float32)
        return e * 0.693145751953125 + (e * 1.428606765330187e-06 + log_m)

    @triton.jit
    def _cos_small_range(x):
        q = _round_to_integer(x * 0.6366197467)
        r = ((x - q * 1.5703125) - q * 4.8382580280303955e-4) - q * 9.920935184482005e-10
        r2 = r * r
        cos_r = 1.0 - r2 * (0.5 - r2 * (0.04166666791 - r2 * (1.388888923e-3 - r2 * (2.480158764e-5 - r2 * 2.755731998e-7))))
        sin_r = r - r * (r2 * (0.1666666716 - r2 * (8.333333768e-3 - r2 * (1.984127011e-4 - r2 * 2.755731884e-6))))
        quadrant = q.to(tl.int32)
        value = tl.where((quadrant & 1) != 0, sin_r, cos_r)
        return tl.where(((quadrant + 1) & 2) != 0, -value, value)

    @triton.jit
    def _exp_clamped(x):
        x = tl.where(x < -87.0, -87.0, x)
        x = tl.where(x > 88.0, 88.0, x)
        n = _round_to_integer(x * 1.442695022)
        n = tl.where(n == n, n, 0.0)
        r = (x - n * 0.693145751953125) - n * 1.428606765330187e-06
        poly = 1.0 + r * (1.0 + r * (0.5 + r * (0.1666666716 + r * (0.04166666791 + r * (8.333333768e-3 + r * (1.388888923e-3 + r * 1.984127011e-4))))))
        scale = ((n.to(tl.int32) + 127) << 23).to(tl.float32, bitcast=True)
        return poly * scale

    @triton.jit
    def _counter_normal(key, element):
        # counter_normal_ref: u1 in (0, 1], u2 in [0, 1), Box–Muller.
        bits_1 = _hash32(key ^ _hash32(element * 2))
        bits_2 = _hash32(key ^ _hash32(element * 2 + 1))
        u1 = ((bits_1 >> 8) + 1).to(tl.int32).to(tl.float32) * 5.9604644775390625e-08
        u2 = (bits_2 >> 8).to(tl.int32).to(tl.float32) * 5.9604644775390625e-08
        radius = tl.sqrt_rn(-2.0 * _log_positive(u1))
        return radius * _cos_small_range(6.2831854820 * u2)

    @triton.jit
    def _reverse_step_kernel(
        x_ptr, model_ptr, noise_ptr, noise_scale_ptr, seed_ptr, step_ptr, coefficient_ptr,
        pred_x0_ptr, x_prime_ptr,
        batch, sample_numel, model_stride,
        ROWS: tl.constexpr, COLUMNS: tl.constexpr,
        CLIP: tl.constexpr, NOISE_MODE: tl.constexpr, LEARNED: tl.constexpr,
    ):
        # One program: a ROWS × COLUMNS tile of the (B, N) state, ROWS samples at a time.
        rows = tl.program_id(0) * ROWS + tl.arange(0, ROWS)
        columns = tl.program_id(1) * COLUMNS + tl.arange(0, COLUMNS)
        row_mask = rows < batch
        mask = row_mask[:, None] & (columns[None, :] < sample_numel)
        rows_64 = rows.to(tl.int64)
        offsets = rows_64[:, None] * sample_numel + columns[None, :]
        model_offsets = rows_64[:, None] * model_stride + columns[None, :]

        sqrt_recip_alpha_bar = tl.load(coefficient_ptr + COLUMN_SQRT_RECIP_ALPHA_BAR)
        sqrt_recip_alpha_bar_minus_one = tl.load(coefficient_ptr + COLUMN_SQRT_RECIP_ALPHA_BAR_MINUS_ONE)
        mean_coef_x0 = tl.load(coefficient_ptr + COLUMN_MEAN_COEF_X0)
        mean_coef_xt = tl.load(coefficient_ptr + COLUMN_MEAN_COEF_XT)

        x = _to_float32(tl.load(x_ptr + offsets, mask=mask, other=0.0))
        eps = _to_float32(tl.load(model_ptr + model_offsets, mask=mask, other=0.0))
        pred_x0 = x * sqrt_recip_alpha_bar - eps * sqrt_recip_alpha_bar_minus_one
        tl.store(pred_x0_ptr + offsets, pred_x0, mask=mask)
        x0_used = pred_x0
        if CLIP:
            x0_used = tl.where(x0_used < -1.0, -1.0, x0_used)
            x0_used = tl.where(x0_used > 1.0, 1.0, x0_used)
        mean = x0_used * mean_coef_x0 + x * mean_coef_xt
        if NOISE_MODE == 0:
            tl.store(x_prime_ptr + offsets, mean, mask=mask)
        else:
            if NOISE_MODE == 1:
                z = _to_float32(tl.load(noise_ptr + offsets, mask=mask, other=0.0))
            else:
                seed = tl.load(seed_ptr + rows, mask=row_mask, other=0).to(tl.uint32)
                step = tl.load(step_ptr).to(tl.uint32)
                key = _hash32(seed ^ _hash32(step * 0x9E3779B9 + 0x632BE5AB))
                z = _counter_normal(key[:, None], columns[None, :].to(tl.uint32))
            if LEARNED:
                v = _to_float32(tl.load(model_ptr + model_offsets + sample_numel, mask=mask, other=0.0))
                frac = (v + 1.0) * 0.5
                log_variance = (
                    frac * tl.load(coefficient_ptr + COLUMN_LOG_VARIANCE_MAX)
                    + (1.0 - frac) * tl.load(coefficient_ptr + COLUMN_LOG_VARIANCE_MIN)
                )
                sigma = _exp_clamped(0.5 * log_variance) * tl.load(coefficient_ptr + COLUMN_NOISE_MASK)
            else:
                sigma = tl.load(coefficient_ptr + COLUMN_SIGMA)
            scale = tl.load(noise_scale_ptr + rows, mask=row_mask, other=0.0)
            tl.store(x_prime_ptr + offsets, mean + (scale[:, None] * sigma) * z, mask=mask)

    TRITON_INTERPRETED = not isinstance(_reverse_step_kernel, triton.runtime.jit.JITFunction)
else:
    TRITON_INTERPRETED = False


def tile_shape(batch: int, numel: int, budget: int) -> tuple[int, int]:
    """(rows, columns) of a Triton tile of at most ``budget`` elements (powers of two)."""
    columns = min(triton.next_power_of_2(max(numel, 1)), budget)
    rows = min(triton.next_power_of_2(max(batch, 1)), max(1, budget // columns))
    return rows, columns


def tile_budget(device: torch.device) -> int:
    return INTERPRETER_BLOCK if TRITON_INTERPRETED else GPU_BLOCK


# ---------------------------------------------------------------------------------
# Registered ops.


def _reverse_step_fake(x, model_output, coefficients, noise_scale, noise, seed_words, step, clip_denoised, learned_variance):
    _check_reverse_step_arguments(x, model_output, coefficients, noise_scale, noise, seed_words, step, learned_variance)
    return _new_outputs(x)


def _reverse_step_triton(
    x: torch.Tensor,
    model_output: torch.Tensor,
    coefficients: torch.Tensor,
    noise_scale: torch.Tensor,
    noise: Optional[torch.Tensor],
    seed_words: Optional[torch.Tensor],
    step: torch.Tensor,
    clip_denoised: bool,
    learned_variance: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    _check_reverse_step_arguments(x, model_output, coefficients, noise_scale, noise, seed_words, step, learned_variance)
    pred_x0, x_prime = _new_outputs(x)
    if x.numel() == 0:
        return pred_x0, x_prime
    batch = x.shape[0]
    sample_numel = x.numel() // batch
    if noise is not None:
        mode, noise_arg, seed_arg = NOISE_TENSOR, noise.contiguous(), x
    elif seed_words is not None:
        mode, noise_arg, seed_arg = NOISE_COUNTER, x, seed_words.to(torch.int64).contiguous()
    else:
        mode, noise_arg, seed_arg = NOISE_NONE, x, x
    rows, columns = tile_shape(batch, sample_numel, tile_budget(x.device))
    grid = (triton.cdiv(batch, rows), triton.cdiv(sample_numel, columns))
    torch.library.wrap_triton(_reverse_step_kernel)[grid](
        x.contiguous(), model_output.contiguous(), noise_arg,
        noise_scale.to(torch.float32).contiguous(), seed_arg, step.to(torch.int64).reshape(1),
        coefficients.to(torch.float32).contiguous(), pred_x0, x_prime,
        batch, sample_numel, model_output[0].numel(),
        ROWS=rows, COLUMNS=columns,
        CLIP=clip_denoised, NOISE_MODE=mode, LEARNED=learned_variance,
    )
    return pred_x0, x_prime


def register_triton_op(name: str, implementation, fake) -> None:
    """Register a Triton-backed op: ``triton_op`` when Triton compiles (torch.compile then
    sees the kernels); an opaque ``custom_op`` with ``fake`` under the interpreter, whose
    kernels cannot be traced (a traced interpreted launch would record nothing)."""
    if TRITON_INTERPRETED:
        op = torch.library.custom_op(name, implementation, mutates_args=())
        op.register_fake(fake)
    else:
        # triton_op registers `implementation` itself as the fake: wrap_triton is a no-op there.
        torch.library.triton_op(name, implementation, mutates_args=())


if triton is not None:
    register_triton_op("dpfast::reverse_step_triton", _reverse_step_triton, _reverse_step_fake)

if _extension.cpu_extension_loaded():
    torch.library.register_fake("dpfast::reverse_step", _reverse_step_fake)


# ---------------------------------------------------------------------------------
# Public wrapper.


def reverse_step(
    x: torch.Tensor,
    model_output: torch.Tensor,
    coefficients: torch.Tensor,
    noise_scale: torch.Tensor,
    noise: torch.Tensor | None = None,
    seed_words: torch.Tensor | None = None,
    step: int | torch.Tensor = 0,
    clip_denoised: bool = True,
    learned_variance: bool = False,
    backend: str = "auto",
) -> tuple[torch.Tensor, torch.Tensor]:
    """One λ-scaled reverse step (SPEC §4 steps 1–3), fused: :func:`reverse_step_ref` in one pass.

    Args:
        x: the state x_t, ``(B, C, H, W)`` or ``(B, d)``; float32, bfloat16 or float16.
        model_output: ε ``(B, C, ...)``, or ε then v ``(B, 2C, ...)`` (``learned_range``,
            per sample the first C·H·W elements are ε, the next C·H·W are v); any of the
            three float dtypes.
        coefficients: one row of the coefficient table (``dpfast.schedule.COLUMN``), on
            the device of ``x``.
        noise_scale: ``(B,)`` s(λ_b), one per sample.
        noise: z, shape of ``x``; or None.
        seed_words: int64 ``(B,)`` uint32 seed words: with ``noise`` None, z is drawn
            in the kernel from the counter RNG keyed by ``(seed_words[b], step,
            element)`` (``dpfast.noise.counter_normal_ref``), never materialised. Both
            None: no noise (x'_prev is the posterior mean).
        step: the step id keying the RNG; an int or a 0-dim int64 tensor. Pass a tensor
            on the device of ``x`` in compiled or graph-captured loops: a Python int is
            a constant to torch.compile (one recompile per value).
        clip_denoised: clamp x̃0 to [-1, 1] before forming the mean.
        learned_variance: σ per element from v (``learned_range``) instead of the
            table's σ column.
        backend: ``"auto"``, ``"cuda"``, ``"triton"``, ``"cpp"`` or ``"torch"``
            (see :mod:`dpfast.kernels.backends`; ``$DPFAST_BACKEND`` overrides "auto").

    Returns:
        ``(pred_x0, x_prime)``: the unclamped Tweedie estimate x̃0 and x'_prev, float32
        (contiguous) of the shape of ``x``, on its device.

    Example::

        >>> row = table[k]                      # coefficient_table_tensor(chain, "fixed_small")
        >>> pred_x0, x_prime = reverse_step(x, eps, row, lam.sqrt(), seed_words=words,
        ...                                 step=torch.tensor(k))
    """
    _check_reverse_step_arguments(x, model_output, coefficients, noise_scale, noise, seed_words, step, learned_variance)
    chosen = backends.resolve_backend(backend, x.device, _float_dtypes(x, model_output, noise))
    if chosen == "torch":
        return reverse_step_ref(
            x, model_output, coefficients, noise_scale, noise, seed_words, step, clip_denoised, learned_variance
        )
    op = torch.ops.dpfast.reverse_step_triton.default if chosen == "triton" else torch.ops.dpfast.reverse_step.default
    return op(
        x, model_output, coefficients, noise_scale, noise, seed_words,
        backends.step_tensor(step, x.device), clip_denoised, learned_variance,
    )
