"""The λ-scaled DPS sampler (SPEC §4; Wang et al., CVPR 2025; Chung et al., ICLR 2023).

One step is a small pure function of (state, coefficient row, noise key): the network
forward, the fused reverse step, the operator's VJP at x̂0, one VJP through the network
and the fused DPS update. The loop has no data-dependent branches and no host syncs.
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from dpfast import validation
from dpfast.guidance import GUIDANCE_MODES, data_fit_gradient, zeta_table
from dpfast.kernels import dps_update, resolve_backend, reverse_step
from dpfast.models.base import ScoreModel
from dpfast.noise import INITIAL_NOISE_STEP, counter_normal_ref, seed_tensor
from dpfast.operators import Identity, as_operator
from dpfast.schedule import VARIANCE_TYPES, Schedule, coefficient_table_tensor

NOISE_SCALINGS = ("variance", "std")


@dataclass
class _Batch:
    """Per-sample inputs of one run, already on the sampler's device."""

    y: torch.Tensor | None
    noise_scale: torch.Tensor  # (B,) s(λ_b)
    seed_words: torch.Tensor  # (B,) int64
    draw_noise: bool  # False when every λ is 0: only x_T is random
    zeta: torch.Tensor  # (steps, B)


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
        self.clip_denoised = bool(model.default_clip_denoised if clip_denoised is None else clip_denoised)
        self.schedule = self._resolve_schedule(schedule, model)
        self.steps = validation.check_positive_int("steps", steps, 1, self.schedule.num_timesteps)
        self.operator = as_operator(operator)
        if self.operator is None and self.guidance != "none":
            self.operator = Identity()
        if self.operator is not None:
            self.operator.check_input_shape(model.image_shape)
        self.zeta = zeta
        zeta_table(zeta, _probe_lams(zeta), self.steps)  # fail early on a malformed zeta
        self.progress = bool(progress)
        self.image_shape = tuple(model.image_shape)
        self.device = _model_device(model)
        self.chain = self.schedule.respace(self.steps)
        self.coefficients = coefficient_table_tensor(self.chain, self.variance, self.device)
        self.timesteps = torch.as_tensor(self.chain.timesteps, dtype=torch.int64, device=self.device)
        # the step ids keying the in-kernel RNG, as device tensors: no host value per step
        self.step_ids = torch.arange(self.steps, dtype=torch.int64, device=self.device)
        self.backend = resolve_backend(backend, self.device, (torch.float32,))

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
        validation.check_sigma_n(sigma_n)
        y = self._check_measurement(y)
        batch = y.shape[0]
        return self.run(y, [lam] * batch, seed_list(seed, batch))

    def traverse(self, y: torch.Tensor, lams: Sequence[float], sigma_n: float | None = None, seed=0) -> torch.Tensor:
        """Restore ``y`` at every λ in ``lams`` in one batched run: returns ``(L, B, ...)``.

        Entry ``[l]`` equals ``restore(y, lams[l], sigma_n, seed)``: each λ reuses the
        same per-sample seeds.
        """
        lams = validation.check_lams(lams)
        validation.check_sigma_n(sigma_n)
        y = self._check_measurement(y)
        batch = y.shape[0]
        seeds = seed_list(seed, batch)
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
        return self.run(None, [lam] * n, seed_list(seed, n), batch_size=batch_size)

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
            y=y,
            noise_scale=torch.tensor(scale, dtype=torch.float32, device=self.device),
            seed_words=seed_tensor(list(seeds), len(seeds), device=self.device),
            draw_noise=any(lam > 0 for lam in lams),
            zeta=torch.as_tensor(zeta_table(self.zeta, lams, self.steps), dtype=torch.float32, device=self.device),
        )

    def _run_batch(self, batch: _Batch) -> torch.Tensor:
        x = counter_normal_ref(batch.seed_words, INITIAL_NOISE_STEP, self.image_shape)
        steps = range(self.steps - 1, -1, -1)
        for k in tqdm(steps, desc="dpfast", disable=not self.progress, leave=False):
            x = self.step(x, k, batch)
        return x

    def step(self, x: torch.Tensor, k: int, batch: _Batch) -> torch.Tensor:
        """One guided λ-scaled reverse step from table row ``k`` (SPEC §4, steps 1–4)."""
        row = self.coefficients[k]
        t = self.timesteps[k].expand(x.shape[0])
        noise_words = batch.seed_words if batch.draw_noise else None
        if self.guidance != "dps":
            with torch.no_grad():
                output = self.model(x, t)
            pred_x0, x_prime = self._reverse_step(x, output, row, batch, noise_words, k)
            if self.guidance == "none":
                return x_prime
            residual, data_grad = data_fit_gradient(pred_x0, batch.y, self.operator, self.clip_denoised)
            return dps_update(x_prime, data_grad, None, residual, batch.zeta[k], row, backend=self.backend)

        with torch.enable_grad():
            x_in = x.detach().requires_grad_(True)
            output = self.model(x_in, t)
        pred_x0, x_prime = self._reverse_step(x, output.detach(), row, batch, noise_words, k)
        residual, data_grad = data_fit_gradient(pred_x0, batch.y, self.operator, self.clip_denoised)
        eps = output[:, : x.shape[1]]
        (network_vjp,) = torch.autograd.grad(eps, x_in, grad_outputs=data_grad.to(eps.dtype))
        return dps_update(x_prime, data_grad, network_vjp, residual, batch.zeta[k], row, backend=self.backend)

    def _reverse_step(self, x, output, row, batch: _Batch, noise_words, k: int):
        return reverse_step(
            x,
            output,
            row,
            batch.noise_scale,
            seed_words=noise_words,
            step=self.step_ids[k],
            clip_denoised=self.clip_denoised,
            learned_variance=self.variance == "learned_range",
            backend=self.backend,
        )

    # -------------------------------------------------------------------- checks
    def _check_measurement(self, y) -> torch.Tensor:
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
        return y.to(device=self.device, dtype=torch.float32)

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


def seed_list(seed, batch: int) -> list[int]:
    """Per-sample seeds: an int ``s`` gives ``s, ..., s + B - 1``; a sequence is checked."""
    if isinstance(seed, bool):
        raise TypeError(f"seed must be an int or a sequence of ints, got {seed!r}")
    if isinstance(seed, int):
        if seed < 0:
            raise ValueError(f"seed must be >= 0, got {seed}")
        return [seed + i for i in range(batch)]
    if isinstance(seed, torch.Tensor):
        seed = seed.tolist()
    seeds = list(seed)
    if len(seeds) != batch:
        raise ValueError(f"seed must be an int or hold one seed per sample ({batch}), got {len(seeds)}")
    return [validation.check_positive_int(f"seed[{i}]", value, 0) for i, value in enumerate(seeds)]


def _probe_lams(zeta) -> list[float]:
    if isinstance(zeta, Mapping):
        return [float(key) for key in zeta]
    return [] if callable(zeta) else [0.0]


def _model_device(model: torch.nn.Module) -> torch.device:
    for tensor in model.parameters():
        return tensor.device
    for tensor in model.buffers():
        return tensor.device
    return torch.device("cpu")


def restore(model, operator, y, lam: float = 1.0, sigma_n: float | None = None, seed=0, **sampler_options):
    """One-liner: ``Sampler(model, operator, **sampler_options).restore(y, lam, sigma_n, seed)``."""
    return Sampler(model, operator, **sampler_options).restore(y, lam=lam, sigma_n=sigma_n, seed=seed)
