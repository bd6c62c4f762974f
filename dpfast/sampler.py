"""The λ-scaled DPS sampler (SPEC §4; Wang et al., CVPR 2025; Chung et al., ICLR 2023).

One step is a small pure function of (state, coefficient row, noise key),
:func:`dps_step`: the network forward, the fused reverse step, the operator's VJP at
x̂0, one VJP through the network and the fused DPS update. The loop has no
data-dependent branches and no host syncs. Three modes run that same function:
``eager`` (plain PyTorch), ``compile`` (the whole step as one ``torch.compile`` graph,
the step index entering as a tensor) and ``cudagraph`` (one step captured once per
batch shape and replayed, CUDA only).
"""
from __future__ import annotations

import copy
import functools
import itertools
import logging
import math
import time
import types
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from dpfast import validation
from dpfast.guidance import GUIDANCE_MODES, autograd_vjp, data_fit_gradient, zeta_table
from dpfast.kernels import dps_update, resolve_backend, reverse_step
from dpfast.models.base import ScoreModel
from dpfast.noise import INITIAL_NOISE_STEP, counter_normal_ref, seed_tensor
from dpfast.operators import Identity, as_operator
from dpfast.precision import native_bf16
from dpfast.schedule import VARIANCE_TYPES, Schedule, coefficient_table_tensor

logger = logging.getLogger("dpfast")

NOISE_SCALINGS = ("variance", "std")
MODES = ("eager", "compile", "cudagraph", "auto")
# y's range check (_check_measurement): an image model's measurements stay within the operator's
# output bound plus this many noise standard deviations (a pixel beyond 8 σ: probability ~1e-15),
# the noise taken as UNKNOWN_NOISE_LEVEL (already extreme for [-1, 1] images) when σ_n is not given
MEASUREMENT_NOISE_SPREAD = 8.0
UNKNOWN_NOISE_LEVEL = 1.0
NETWORK_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
# Eager steps run before a CUDA graph is captured (cuBLAS/cuDNN handles, autograd's
# device threads, Triton's first launch), as torch.cuda.graph's documentation advises.
CUDA_GRAPH_WARMUP_STEPS = 3


@dataclass
class _Batch:
    """Per-sample inputs of one run, already on the sampler's device."""

    y: torch.Tensor | None
    noise_scale: torch.Tensor  # (B,) s(λ_b)
    seed_words: torch.Tensor  # (B,) int64
    draw_noise: bool  # False when every λ is 0: only x_T is random
    zeta: torch.Tensor  # (steps, B)


def dps_step(
    network: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    operator,
    x: torch.Tensor,
    t: torch.Tensor,
    row: torch.Tensor,
    step: torch.Tensor,
    noise_scale: torch.Tensor,
    seed_words: torch.Tensor | None,
    zeta: torch.Tensor,
    y: torch.Tensor | None,
    *,
    guidance: str,
    clip_denoised: bool,
    learned_variance: bool,
    backend: str,
    vjp: Callable = autograd_vjp,
) -> torch.Tensor:
    """One guided λ-scaled reverse step x_t → x_{t−1} (SPEC §4, steps 1–4).

    Steps 1–3 (Tweedie, posterior mean, λ-scaled noise) are the fused ``reverse_step``;
    step 4 uses SPEC §4's decomposition ∇_{x_t}‖r‖ = (a·d − b·J_εᵀd)/‖r‖: the operator's
    VJP gives d, one VJP through the network gives J_εᵀd, and the fused ``dps_update``
    does the rest. A pure function of tensors, so one ``torch.compile`` graph or one
    captured CUDA graph serves every step.

    Args:
        network: ``(x, t) -> model output`` (ε, or ε and v), any float dtype.
        operator: the measurement operator (unused for ``guidance="none"``).
        x: the state x_t, float32 ``(B, *S)``.
        t: int64 ``(B,)`` original timesteps of this step.
        row: the step's coefficient-table row (float32, on the device of ``x``).
        step: 0-dim int64 step id keying the in-kernel noise.
        noise_scale: ``(B,)`` s(λ_b).
        seed_words: int64 ``(B,)`` seed words, or None to draw no noise (every λ is 0).
        zeta: ``(B,)`` step sizes ζ_b of this step.
        y: measurements ``(B, *M)``, or None for ``guidance="none"``.
        guidance: ``"dps"``, ``"x0"`` or ``"none"``.
        vjp: :func:`~dpfast.guidance.autograd_vjp` or ``torch.func.vjp`` (compiled).

    Returns:
        x_{t−1}, float32 ``(B, *S)``.

    Example::

        >>> s = Sampler(model, op, steps=50)          # the sampler's tables, row k
        >>> x = dps_step(model, op, x, s.timesteps[k].expand(B), s.coefficients[k], s.step_ids[k],
        ...              scale, words, zeta[k], y, guidance="dps", clip_denoised=True,
        ...              learned_variance=False, backend="auto")
    """
    channels = x.shape[1]
    if guidance == "dps":

        def network_epsilon(x_in: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            output = network(x_in, t)
            return output[:, :channels], output

        eps, network_vjp_fn, output = vjp(network_epsilon, x, has_aux=True)
    else:
        with torch.no_grad():
            output = network(x, t)
    pred_x0, x_prime = reverse_step(
        x, output, row, noise_scale, seed_words=seed_words, step=step,
        clip_denoised=clip_denoised, learned_variance=learned_variance, backend=backend,
    )
    if guidance == "none":
        return x_prime
    residual, data_grad = data_fit_gradient(pred_x0, y, operator, clip_denoised, vjp=vjp)
    network_vjp = None
    if guidance == "dps":
        (network_vjp,) = network_vjp_fn(data_grad.to(eps.dtype))
    return dps_update(x_prime, data_grad, network_vjp, residual, zeta, row, backend=backend)


class Sampler:
    """Diffusion posterior sampling with the distortion–perception knob λ.

    Args:
        model: a :class:`~dpfast.models.base.ScoreModel` (put in eval mode here).
        operator: the measurement operator A (a :mod:`dpfast.operators` object or a
            differentiable callable); ``None`` means identity for ``"dps"`` and is
            required to be ``None``-compatible for ``"none"``.
        steps: number of reverse steps, 1..T; fewer than T respaces the schedule (ADM).
        zeta: DPS step size ζ: a number, a mapping λ → ζ (interpolated), a callable of λ,
            or a per-step sequence (execution order).
        schedule: ``None`` (the model's), ``"linear"``/``"cosine"``, or a
            :class:`~dpfast.schedule.Schedule` with the model's T.
        guidance: ``"dps"`` (VJP through the network), ``"x0"`` (gradient with respect
            to x̂0 only — an approximation that skips the network VJP) or ``"none"``.
        variance: ``"fixed_small"``, ``"fixed_large"`` or ``"learned_range"``; default
            the model's.
        clip_denoised: clamp x̂0 to [-1, 1]; default the model's (True for images).
        noise_scaling: ``"variance"`` (s(λ) = sqrt(λ), the method) or ``"std"`` (s(λ) = λ).
        backend: which implementation runs the fused per-step ops: ``"auto"`` (CUDA
            kernels on CUDA tensors, else Triton; the C++ kernels on the CPU; the torch
            reference last), ``"cuda"``, ``"triton"``, ``"cpp"`` or ``"torch"``;
            ``$DPFAST_BACKEND`` replaces ``"auto"``. A forced backend that cannot run
            raises with the reason.
        progress: show a progress bar over the steps.
        dtype: the network's precision: ``torch.float32`` (default), ``torch.bfloat16``,
            ``torch.float16`` or ``"auto"``. Reduced precision runs the network (forward and VJP)
            under ``torch.autocast``; the state x, the residual norms, the schedule and
            the fused ops stay float32 (the ops take the reduced model output as it is).
            On CPUs without native bf16 (AVX2) bf16 is 12–34× slower than float32; on an
            AVX-512-bf16 CPU it measured 1.44–1.47× faster (docs/BENCHMARKS.md, "Sampler"
            and "A second CPU"). ``"auto"``: bfloat16 where the model's device runs it
            natively (:func:`dpfast.precision.native_bf16`), else float32, with one log line (logger
            ``"dpfast"``). Results then depend on the machine at the rounding level, which
            the λ = 0 chain amplifies; keep float32 where runs must match across machines.
        channels_last: hand the network its input in ``torch.channels_last`` memory
            format (image models, 4-D inputs only). The model's weights are left as
            they are.
        mode: how the step runs (the numbers are the same up to float32 rounding):

            - ``"eager"`` (default): plain PyTorch, one step at a time.
            - ``"compile"``: the whole step (network forward, VJPs through the network
              and the operator, fused ops) as one ``torch.compile(fullgraph=True,
              dynamic=False)`` graph per batch shape. The step id enters as a tensor
              and selects the coefficient row, timestep and ζ on the device, so one
              graph serves every step; noise is always drawn in the kernels (scaled
              by s(λ) = 0 at λ = 0), so every λ shares it too. The first call at a
              new batch shape compiles (``last_compile_seconds``: 25 s to 7 min on a
              2-core CPU; :meth:`prepare` does it ahead of time). At most 8 batch
              shapes per sampler (torch._dynamo's recompile limit).
            - ``"cudagraph"`` (CUDA only; run and tested on an H200, docs/BENCHMARKS.md
              "GPU"): static buffers per batch shape, one step
              captured once and replayed ``steps`` times, the step id living in a
              device tensor, noise drawn in the kernels, no host sync in the loop.
              The operator must not read CPU tensors inside (dpfast's operators are
              moved to the device; a user callable's captured constants are its own).
            - ``"auto"``: the fastest mode that works on the model's device:
              ``"cudagraph"`` on CUDA (``"eager"`` if capture fails), ``"eager"`` on
              the CPU, where ``torch.compile`` measured no faster in float32 and 1.04×
              in bf16, for ~100 s of compiling (docs/BENCHMARKS.md, "Sampler" and "A
              second CPU"). One log line
              (logger ``"dpfast"``) says what it picked.

    Attributes:
        active_mode: the mode that runs (``mode`` with ``"auto"`` resolved).
        dtype: the network's precision (``dtype="auto"`` resolved).
        last_compile_seconds: wall time of the last call that compiled a step graph
            (``"compile"``; it includes that one step's run), else None.
        last_capture_seconds: wall time of the last warm-up and capture (``"cudagraph"``).
        compile_count: step graphs this sampler has compiled (one per batch shape).
        static_allocations: static buffer sets allocated (``"cudagraph"``, one per
            batch shape).

    Example:
        >>> import dpfast as dp
        >>> prior = dp.models.GaussianScore(torch.zeros(3), torch.eye(3))
        >>> post = prior.posterior(torch.eye(3), 0.5, torch.ones(3))
        >>> s = dp.Sampler(post, None, steps=50, guidance="none")
        >>> s.sample(8, lam=0.5, seed=0).shape
        torch.Size([8, 3])
    """

    def __init__(
        self,
        model: ScoreModel,
        operator=None,
        *,
        steps: int = 1000,
        zeta=1.0,
        schedule: Schedule | str | None = None,
        guidance: str = "dps",
        variance: str | None = None,
        clip_denoised: bool | None = None,
        noise_scaling: str = "variance",
        backend: str = "auto",
        progress: bool = False,
        dtype: torch.dtype = torch.float32,
        channels_last: bool = False,
        mode: str = "eager",
    ):
        if not isinstance(model, ScoreModel):
            raise TypeError(f"model must be a dpfast ScoreModel (see dpfast.load_model), got {type(model).__name__}")
        model.check_interface()
        self.model = model.eval()
        self.guidance = validation.check_choice("guidance", guidance, GUIDANCE_MODES)
        self.noise_scaling = validation.check_choice("noise_scaling", noise_scaling, NOISE_SCALINGS)
        self.variance = validation.check_choice(
            "variance", variance if variance is not None else model.default_variance, VARIANCE_TYPES
        )
        if self.variance == "learned_range" and not model.learned_variance:
            raise ValueError(f"variance='learned_range' needs a model with a variance output; {type(model).__name__} has none")
        self.clip_denoised = validation.check_bool(
            "clip_denoised", model.default_clip_denoised if clip_denoised is None else clip_denoised)
        self.schedule = self._resolve_schedule(schedule, model)
        self.steps = validation.check_positive_int("steps", steps, 1, self.schedule.num_timesteps)
        self.image_shape = tuple(model.image_shape)
        self.channels_last = _check_channels_last(channels_last, self.image_shape)
        self.mode = validation.check_choice("mode", mode, MODES)
        self.device = _model_device(model)
        self.dtype = _resolve_network_dtype(dtype, self.device)
        self.active_mode = _resolve_mode(self.mode, self.device)
        self.operator = as_operator(operator)
        if self.operator is None and self.guidance != "none":
            self.operator = Identity()
        if self.operator is not None:
            self.operator.check_input_shape(model.image_shape)
            if self.device.type != "cpu":
                self.operator = _operator_on_device(self.operator, self.device)
        self.zeta = zeta
        zeta_table(zeta, _probe_lams(zeta), self.steps)  # fail early on a malformed zeta
        self.progress = validation.check_bool("progress", progress)
        self.chain = self.schedule.respace(self.steps)
        self.coefficients = coefficient_table_tensor(self.chain, self.variance, self.device)
        self.timesteps = torch.as_tensor(self.chain.timesteps, dtype=torch.int64, device=self.device)
        # the step ids keying the in-kernel RNG, as device tensors: no host value per step
        self.step_ids = torch.arange(self.steps, dtype=torch.int64, device=self.device)
        self.backend = resolve_backend(backend, self.device, (torch.float32,))
        self.last_compile_seconds: float | None = None
        self.last_capture_seconds: float | None = None
        self.static_allocations = 0
        self._compiled_step = None
        self._compile_backend: _CountingBackend | None = None
        self._captured_steps: dict[tuple, _CapturedStep] = {}

    # ----------------------------------------------------------------- public API
    def restore(self, y: torch.Tensor, lam: float = 1.0, sigma_n: float | None = None, seed=0) -> torch.Tensor:
        """Restore a batch of measurements at one λ.

        Args:
            y: measurements ``(B, *M)`` with ``M`` the operator's output shape for the
                model's image shape, floating point, finite.
            lam: λ ∈ [0, 1]; 0 is the deterministic MMSE-like end, 1 posterior sampling.
            sigma_n: the measurement noise level (≥ 0), checked and recorded. DPS
                normalises its step by ‖r‖, so σ_n does not enter the update itself.
            seed: an int (sample i uses ``seed + i``) or one seed per sample; a sample's
                result depends only on its own seed (batch invariance).

        Returns:
            float32 ``(B, *image_shape)`` restorations in the model's range ([-1, 1]).
        """
        lam = validation.check_lam(lam)
        y = self._check_measurement(y, validation.check_sigma_n(sigma_n))
        batch = y.shape[0]
        return self.run(y, [lam] * batch, validation.check_seeds(seed, batch))

    def traverse(self, y: torch.Tensor, lams: Sequence[float], sigma_n: float | None = None, seed=0) -> torch.Tensor:
        """Restore ``y`` at every λ in ``lams`` in one batched run: returns ``(L, B, ...)``.

        Entry ``[l]`` equals ``restore(y, lams[l], sigma_n, seed)``: each λ reuses the
        same per-sample seeds. The batch is ``L·B`` (what :meth:`prepare` should get).
        """
        lams = validation.check_lams(lams)
        y = self._check_measurement(y, validation.check_sigma_n(sigma_n))
        batch = y.shape[0]
        seeds = validation.check_seeds(seed, batch)
        stacked_y = y.repeat(len(lams), *([1] * (y.dim() - 1)))
        per_sample_lams = [lam for lam in lams for _ in range(batch)]
        out = self.run(stacked_y, per_sample_lams, seeds * len(lams))
        return out.view(len(lams), batch, *out.shape[1:])

    def sample(self, n: int, lam: float = 1.0, seed=0, batch_size: int | None = None) -> torch.Tensor:
        """Unconditional λ-process samples (guidance ``"none"``): ``(n, *image_shape)``.

        With an exact posterior model (``GaussianScore.posterior``) this samples the
        conditional λ-process with the exact score. ``batch_size`` bounds memory; results
        do not depend on it.
        """
        if self.guidance != "none":
            raise ValueError(f"sample() runs without a measurement; use guidance='none' (got {self.guidance!r}) or restore()")
        n = validation.check_positive_int("n", n)
        lam = validation.check_lam(lam)
        return self.run(None, [lam] * n, validation.check_seeds(seed, n), batch_size=batch_size)

    def prepare(self, batch: int, measurement_shape: Sequence[int] | None = None) -> "Sampler":
        """Warm up once for ``batch`` samples, so later calls at that shape start at full speed.

        Runs one step on dummy inputs: in ``"compile"`` mode that compiles the step
        graph (``last_compile_seconds``), in ``"cudagraph"`` mode it allocates the
        static buffers and captures the step (``last_capture_seconds``), in ``"eager"``
        it warms the allocator and the convolution caches. Later :meth:`restore`,
        :meth:`traverse` (batch ``L·B``) or :meth:`sample` calls with ``batch``
        samples reuse all of it: no recompile, no new static buffers.

        Args:
            batch: the number of samples per call (``B``; ``L·B`` for a traversal).
            measurement_shape: the shape of one measurement, without the batch
                dimension; default (and the only accepted value) the operator's
                output shape for the model's image shape. Must be None for
                ``guidance="none"``.

        Returns:
            ``self``, so ``Sampler(...).prepare(4)`` reads as one expression.

        Example::

            >>> s = dp.Sampler(model, op, steps=100, mode="compile").prepare(4)
            >>> s.last_compile_seconds                 # paid once, here
            >>> x = s.restore(y, lam=0.5, seed=0)      # y: (4, *M), no recompile
        """
        batch = validation.check_positive_int("batch", batch)
        if measurement_shape is not None and (isinstance(measurement_shape, (str, bytes)) or not hasattr(measurement_shape, "__iter__")):
            raise TypeError(f"measurement_shape must be a shape (a sequence of ints) or None, got "
                            f"{type(measurement_shape).__name__} {measurement_shape!r}")
        y = None
        if self.guidance == "none":
            if measurement_shape is not None:
                raise ValueError(f"measurement_shape must be None for guidance='none', got {tuple(measurement_shape)}")
        else:
            expected = tuple(self.operator.output_shape((batch,) + self.image_shape))[1:]
            if measurement_shape is not None and tuple(measurement_shape) != expected:
                raise ValueError(
                    f"measurement_shape must be the shape of one measurement, {expected} for {self.operator!r} "
                    f"on the model's images {self.image_shape}, got {tuple(measurement_shape)}"
                )
            y = torch.zeros((batch,) + expected, dtype=torch.float32, device=self.device)
        inputs = self._prepare(y, [1.0] * batch, list(range(batch)))
        x = counter_normal_ref(inputs.seed_words, INITIAL_NOISE_STEP, self.image_shape)
        if self.active_mode == "cudagraph":
            self._captured_step(batch, inputs)  # on failure under "auto", active_mode becomes "eager"
        if self.active_mode == "compile":
            with torch.no_grad():
                self._compiled_call(x, self.step_ids[self.steps - 1], inputs)
        elif self.active_mode == "eager":
            self.step(x, self.steps - 1, inputs)
        return self

    # ------------------------------------------------------------------ the loop
    def run(self, y, lams: Sequence[float], seeds: Sequence[int], batch_size: int | None = None) -> torch.Tensor:
        """Run the reverse process for per-sample ``lams`` and ``seeds`` (validated inputs)."""
        total = len(lams)
        batch_size = total if batch_size is None else validation.check_positive_int("batch_size", batch_size)
        chunks = []
        for start in range(0, total, batch_size):
            stop = min(start + batch_size, total)
            chunk_y = None if y is None else y[start:stop]
            chunks.append(self._run_batch(self._prepare(chunk_y, lams[start:stop], seeds[start:stop])))
        return torch.cat(chunks) if len(chunks) > 1 else chunks[0]

    def _prepare(self, y, lams: Sequence[float], seeds: Sequence[int]) -> _Batch:
        scale = [math.sqrt(lam) if self.noise_scaling == "variance" else lam for lam in lams]
        return _Batch(
            # contiguous: a compiled step guards on strides (a view of y would recompile)
            y=None if y is None else y.contiguous(),
            noise_scale=torch.tensor(scale, dtype=torch.float32, device=self.device),
            seed_words=seed_tensor(list(seeds), len(seeds), device=self.device),
            draw_noise=any(lam > 0 for lam in lams),
            zeta=torch.as_tensor(zeta_table(self.zeta, lams, self.steps), dtype=torch.float32, device=self.device),
        )

    def _run_batch(self, batch: _Batch) -> torch.Tensor:
        x = counter_normal_ref(batch.seed_words, INITIAL_NOISE_STEP, self.image_shape)
        steps = tqdm(range(self.steps - 1, -1, -1), desc="dpfast", disable=not self.progress, leave=False)
        if self.active_mode == "cudagraph":
            captured = self._captured_step(x.shape[0], batch)
            if captured is not None:
                captured.load(x, batch)
                for _ in steps:
                    captured.graph.replay()
                return captured.x.clone()
        if self.active_mode == "compile":
            with torch.no_grad():
                for k in steps:
                    x = self._compiled_call(x, self.step_ids[k], batch)
            return x
        for k in steps:
            x = self.step(x, k, batch)
        return x

    def step(self, x: torch.Tensor, k: int, batch: _Batch) -> torch.Tensor:
        """One guided λ-scaled reverse step from table row ``k`` (SPEC §4, steps 1–4), eager.

        The compiled and captured modes run the same :func:`dps_step`, with the row,
        timestep and ζ selected on the device from a step-id tensor.
        """
        return dps_step(
            self._network, self.operator, x,
            self.timesteps[k].expand(x.shape[0]), self.coefficients[k], self.step_ids[k],
            batch.noise_scale, batch.seed_words if batch.draw_noise else None, batch.zeta[k], batch.y,
            guidance=self.guidance, clip_denoised=self.clip_denoised,
            learned_variance=self.variance == "learned_range", backend=self.backend,
        )

    def _network(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The model at the sampler's precision and memory format; x stays float32 outside."""
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        if self.dtype == torch.float32:
            return self.model(x, t)
        # No weight-cast cache: a CUDA graph cannot capture it, and each weight is cast
        # once per forward anyway.
        with torch.autocast(self.device.type, dtype=self.dtype, cache_enabled=False):
            return self.model(x, t)

    # ------------------------------------------------------- compile / cudagraph
    @property
    def compile_count(self) -> int:
        """Step graphs this sampler has compiled (``"compile"`` mode; one per batch shape)."""
        return 0 if self._compile_backend is None else self._compile_backend.count

    def _compiled_call(self, x: torch.Tensor, step: torch.Tensor, batch: _Batch) -> torch.Tensor:
        """One compiled step (compiling on the first call at a new shape)."""
        if self._compiled_step is None:
            self._compile_backend = _CountingBackend()
            self._compiled_step = torch.compile(
                _function_with_own_code(_indexed_step), backend=self._compile_backend, fullgraph=True, dynamic=False
            )
        compiled_before = self.compile_count
        start = time.perf_counter()
        # Noise is always drawn (s(λ) = 0 adds exactly nothing), so λ = 0 and λ > 0
        # share one graph.
        x = self._compiled_step(
            self, x, step, batch.y, batch.noise_scale, batch.seed_words, batch.zeta, torch.func.vjp
        )
        if self.compile_count != compiled_before:
            self.last_compile_seconds = time.perf_counter() - start
        return x

    def _captured_step(self, batch_size: int, batch: _Batch) -> _CapturedStep | None:
        """The captured step for this batch shape, allocated and captured on first use;
        None when ``mode="auto"`` fell back to eager because capture failed."""
        measurement_shape = None if batch.y is None else tuple(batch.y.shape[1:])
        key = (batch_size, measurement_shape, self.dtype)
        captured = self._captured_steps.get(key)
        if captured is not None:
            return captured
        start = time.perf_counter()
        step_function = functools.partial(_indexed_step, self, vjp=autograd_vjp)
        try:
            captured = _CapturedStep(
                step_function, batch_size, self.image_shape, measurement_shape, self.steps, self.device
            ).capture()
        except Exception as error:
            if self.mode != "auto":
                raise
            logger.warning("dpfast: mode 'auto' fell back to 'eager': CUDA graph capture failed (%s)", error)
            self.active_mode = "eager"
            return None
        self.static_allocations += 1
        self.last_capture_seconds = time.perf_counter() - start
        self._captured_steps[key] = captured
        return captured

    # -------------------------------------------------------------------- checks
    def _check_measurement(self, y, sigma_n: float | None = None) -> torch.Tensor:
        if self.guidance == "none":
            raise ValueError("guidance='none' ignores measurements; use sample(), or guidance='dps' to restore")
        validation.check_tensor("y", y)
        if y.dim() < 1 or y.shape[0] < 1:
            raise ValueError(f"y must have a leading batch dimension of size >= 1, got shape {tuple(y.shape)}")
        expected = self.operator.output_shape((y.shape[0],) + self.image_shape)
        if tuple(y.shape) != tuple(expected):
            raise ValueError(
                f"y has shape {tuple(y.shape)} but {self.operator!r} maps the model's images "
                f"{self.image_shape} to {tuple(expected)}"
            )
        bound = getattr(self.operator, "output_bound", None)
        if bound is not None and self.model.default_clip_denoised:  # an image model: its images lie in [-1, 1]
            noise = sigma_n if sigma_n is not None else UNKNOWN_NOISE_LEVEL
            limit = bound + MEASUREMENT_NOISE_SPREAD * noise
            peak = float(y.detach().abs().max())
            if peak > limit:
                raise ValueError(
                    f"y reaches |y| = {peak:g}, but {self.operator!r} maps the model's images (range [-1, 1]) to "
                    f"|A(x)| <= {bound:g}, so with noise of std {noise:g}"
                    f"{'' if sigma_n is not None else ' (sigma_n not given: at most this is assumed)'} y should stay "
                    f"within {limit:g}: scale the images to [-1, 1] first (x / 127.5 - 1 for 8-bit)")
        # detached: a y that requires grad would otherwise chain every step's graph onto it
        return y.detach().to(device=self.device, dtype=torch.float32)

    @staticmethod
    def _resolve_schedule(schedule, model: ScoreModel) -> Schedule:
        if schedule is None:
            return model.schedule
        if isinstance(schedule, str):
            schedule = Schedule.named(schedule, model.schedule.num_timesteps)
        if not isinstance(schedule, Schedule):
            raise TypeError(f"schedule must be None, 'linear', 'cosine' or a Schedule, got {type(schedule).__name__}")
        if schedule.num_timesteps != model.schedule.num_timesteps:
            raise ValueError(
                f"schedule has T = {schedule.num_timesteps} but the model was trained with "
                f"T = {model.schedule.num_timesteps}"
            )
        return schedule


def _probe_lams(zeta) -> list[float]:
    if isinstance(zeta, Mapping):
        return [validation.check_number(f"zeta mapping key {key!r}", key) for key in zeta]
    return [0.0, 1.0] if callable(zeta) else [0.0]  # a callable of λ must answer on all of [0, 1]


def _model_device(model: torch.nn.Module) -> torch.device:
    for tensor in model.parameters():
        return tensor.device
    for tensor in model.buffers():
        return tensor.device
    return torch.device("cpu")


# ----------------------------------------------------------------------- modes
def _indexed_step(sampler: Sampler, x, step, y, noise_scale, seed_words, zeta_table, vjp):
    """:func:`dps_step` with the row, timestep and ζ selected on the device by the 0-dim
    step-id tensor ``step``: the body the ``compile`` and ``cudagraph`` modes run."""
    index = step.view(1)
    return dps_step(
        sampler._network, sampler.operator, x,
        sampler.timesteps.index_select(0, index).expand(x.shape[0]),
        sampler.coefficients.index_select(0, index).squeeze(0),
        step, noise_scale, seed_words, zeta_table.index_select(0, index).squeeze(0), y,
        guidance=sampler.guidance, clip_denoised=sampler.clip_denoised,
        learned_variance=sampler.variance == "learned_range", backend=sampler.backend, vjp=vjp,
    )


class _CountingBackend:
    """Inductor, counting the graphs it compiles (so a recompile is visible)."""

    def __init__(self):
        import torch._dynamo

        self.count = 0
        self._inductor = torch._dynamo.lookup_backend("inductor")

    def __call__(self, graph_module, example_inputs):
        self.count += 1
        return self._inductor(graph_module, example_inputs)


_own_code_ids = itertools.count()


def _function_with_own_code(function: Callable) -> Callable:
    """A copy of ``function`` with its own code object.

    Dynamo keeps compiled graphs, and its recompile limit (8), per code object, and with
    ``fullgraph=True`` reaching the limit is an error: samplers sharing one code object
    would fail at the ninth compiled sampler of a process. Each gets its own instead.
    """
    code = function.__code__.replace(co_name=f"{function.__name__}_{next(_own_code_ids)}")
    return types.FunctionType(code, function.__globals__, code.co_name, function.__defaults__, function.__closure__)


class _CapturedStep:
    """Static buffers for one (batch, measurement shape) and one DPS step on them,
    captured as a CUDA graph. **Untested on hardware** (written without a GPU; the step on
    the static buffers, :meth:`advance`, is tested on the CPU without capture).

    One step reads the step id from the device tensor ``step``, selects the coefficient
    row, timestep and ζ with ``index_select`` on the device, draws the noise inside the
    kernels keyed by (seed, step id), writes x_{t−1} back into ``x`` and decrements
    ``step``: a run is :meth:`load` then ``steps`` replays, with no host work or sync
    between them.
    """

    def __init__(self, step_function, batch: int, image_shape, measurement_shape, steps: int, device: torch.device):
        self._step_function = step_function  # (x, step, y, noise_scale, seed_words, zeta) -> x_prev
        self.last_step = steps - 1
        self.x = torch.zeros((batch, *image_shape), dtype=torch.float32, device=device)
        self.y = None if measurement_shape is None else torch.zeros((batch, *measurement_shape), device=device)
        self.noise_scale = torch.zeros(batch, dtype=torch.float32, device=device)
        self.seed_words = torch.zeros(batch, dtype=torch.int64, device=device)
        self.zeta = torch.zeros((steps, batch), dtype=torch.float32, device=device)
        self.step = torch.zeros((), dtype=torch.int64, device=device)
        self.graph: torch.cuda.CUDAGraph | None = None

    def advance(self) -> None:
        """One step on the static buffers: what the graph holds."""
        x_prev = self._step_function(self.x, self.step, self.y, self.noise_scale, self.seed_words, self.zeta)
        self.x.copy_(x_prev)
        # Past the last step (row 0) the id stays at 0 rather than indexing row -1.
        self.step.sub_(1).clamp_(min=0)

    def capture(self) -> "_CapturedStep":
        """Warm up on a side stream, then capture :meth:`advance` (torch.cuda.graph's recipe)."""
        device = self.x.device
        side_stream = torch.cuda.Stream(device)
        side_stream.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side_stream):
            for _ in range(CUDA_GRAPH_WARMUP_STEPS):
                self.step.fill_(self.last_step)
                self.advance()
        torch.cuda.current_stream(device).wait_stream(side_stream)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.advance()
        return self

    def load(self, x_initial: torch.Tensor, batch: _Batch) -> None:
        """Copy one run's inputs into the static buffers (device to device, no sync)."""
        self.x.copy_(x_initial)
        if self.y is not None:
            self.y.copy_(batch.y)
        self.noise_scale.copy_(batch.noise_scale)
        self.seed_words.copy_(batch.seed_words)
        self.zeta.copy_(batch.zeta)
        self.step.fill_(self.last_step)


def _resolve_mode(mode: str, device: torch.device) -> str:
    if mode == "cudagraph" and device.type != "cuda":
        raise RuntimeError(
            f"mode='cudagraph' needs the model on a CUDA device (CUDA graphs capture GPU work), but it is "
            f"on {device}; use mode='eager', 'compile' or 'auto', or move the model with model.to('cuda')"
        )
    if mode != "auto":
        return mode
    if device.type == "cuda":
        chosen, reason = "cudagraph", "one captured step per batch shape, no launch gaps or host syncs"
    else:
        chosen, reason = "eager", (
            "'cudagraph' needs CUDA, and torch.compile measured no faster than eager on the CPU in float32 "
            "and 1.04x in bf16, for 100 s of compiling (docs/BENCHMARKS.md, Sampler and A second CPU)"
        )
    logger.info("dpfast: mode 'auto' runs %r on %s: %s", chosen, device.type, reason)
    return chosen


def _resolve_network_dtype(dtype, device: torch.device) -> torch.dtype:
    if isinstance(dtype, str) and dtype == "auto":
        native, reason = native_bf16(device)
        chosen = torch.bfloat16 if native else torch.float32
        logger.info("dpfast: dtype 'auto' runs the network in %s on %s: %s", chosen, device.type, reason)
        return chosen
    return _check_network_dtype(dtype)


def _check_network_dtype(dtype) -> torch.dtype:
    names = "torch.float32, torch.bfloat16, torch.float16 or 'auto'"
    if not isinstance(dtype, torch.dtype):
        raise TypeError(f"dtype must be a torch.dtype ({names}), got {type(dtype).__name__} {dtype!r}")
    if dtype not in NETWORK_DTYPES:
        raise ValueError(f"dtype sets the network's precision and must be {names}, got {dtype}")
    return dtype


def _check_channels_last(channels_last, image_shape: tuple[int, ...]) -> bool:
    if not isinstance(channels_last, bool):
        raise TypeError(f"channels_last must be True or False, got {type(channels_last).__name__} {channels_last!r}")
    if channels_last and len(image_shape) != 3:
        raise ValueError(
            f"channels_last=True needs an image model (network input (B, C, H, W)); this model's samples "
            f"have shape {image_shape}"
        )
    return channels_last


def _operator_on_device(operator, device: torch.device):
    """A shallow copy of ``operator`` with its tensor attributes on ``device``: no
    host-to-device copy per step (which a CUDA graph could not capture)."""
    moved = copy.copy(operator)
    for name, value in getattr(operator, "__dict__", {}).items():
        if isinstance(value, torch.Tensor) and value.device != device:
            setattr(moved, name, value.to(device))
    return moved


def restore(model, operator, y, lam: float = 1.0, sigma_n: float | None = None, seed=0, **sampler_options):
    """One-liner: ``Sampler(model, operator, **sampler_options).restore(y, lam, sigma_n, seed)``."""
    return Sampler(model, operator, **sampler_options).restore(y, lam=lam, sigma_n=sigma_n, seed=seed)
