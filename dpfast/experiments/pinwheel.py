"""2-D pinwheel data, a small MLP ε-model and DPS: the λ sweep against two baselines.

Problem: x ~ pinwheel (5 arms, see :func:`pinwheel_samples`), measured as
y = a x + σ n with a = 1 and σ = 0.5 (``MatrixOperator(a I₂)``). Over a test set of
(x_i, y_i) pairs, each method restores x̂_i from y_i; distortion is the MSE
mean_i ‖x̂_i − x_i‖², perception the exact W2 between the set {x̂_i} and an independent set of
clean samples of the same size (POT ``ot.emd2``, squared Euclidean cost).

Methods, all with the same ε-model (:class:`PinwheelMLP`, weights shipped in
``assets/pinwheel_mlp.safetensors``) and the same respaced chain (250 steps; 50 quick):

- the λ-process (``dpfast.Sampler``, guidance ``"dps"``) over a λ grid, twice: with the
  DPS step ζ tuned per λ (ζ(0) and ζ(1) tuned, linear in between; the paper tunes ζ per
  λ) and with the constant ζ = ζ(1);
- averaging N posterior samples (λ = 1, ζ(1)), N = 1 … 64 — the "PSCGAN-N" way of
  moving toward the MMSE end by averaging samples (N times the cost);
- DDIM-η with DPS guidance (:func:`ddim_dps_sample`), η from 0 (deterministic DDIM) to
  1 (which is the λ = 1 chain itself: same mean, same variance β̃), with ζ tuned per η
  the same way and with the constant ζ(1).

Oracle reference (no network): for each y_i, the exact posterior over a pool of
200 000 clean samples, by importance weighting w_j ∝ exp(−‖y_i − a x_j‖²/2σ²). Its
mean is the MMSE estimate (D*, W2(p_X, p_X*)), its draws are posterior samples, and
the optimal MSE–W2 tradeoff D(P) = D* + [(W2(p_X, p_X*) − P)₊]² (Freirich et al.
2021) is drawn from those two numbers.
"""
from __future__ import annotations

import argparse
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from dpfast.experiments import common, distances
from dpfast.guidance import zeta_table
from dpfast.models.base import ScoreModel
from dpfast.noise import INITIAL_NOISE_STEP, counter_normal_ref, seed_tensor
from dpfast.operators import MatrixOperator, measure
from dpfast.sampler import Sampler
from dpfast.schedule import Schedule

NAME = "pinwheel"
WEIGHTS_PATH = Path(__file__).resolve().parent / "assets" / "pinwheel_mlp.safetensors"

# pinwheel data (the construction of Johnson et al. 2016, rescaled to about [-1, 1])
ARMS = 5
RADIAL_STD = 0.3
TANGENTIAL_STD = 0.05
TWIST_RATE = 0.25
DATA_SCALE = 0.5

# measurement y = a x + σ n
GAIN = 1.0
NOISE_STD = 0.5


def pinwheel_samples(n: int, seed: int = 0) -> torch.Tensor:
    """``n`` pinwheel points, float32 ``(n, 2)``, deterministic in ``seed``.

    Each point picks an arm k uniformly, a radius r = 1 + 0.3 u and a tangential offset
    0.05 v (u, v standard normal), and is rotated by 2πk/5 + 0.25 eˣᵖ⁽ʳ⁾ — the twist grows
    outward — then scaled by 0.5.
    """
    generator = torch.Generator().manual_seed(seed)
    arm = torch.randint(0, ARMS, (n,), generator=generator)
    radius = 1.0 + RADIAL_STD * torch.randn(n, generator=generator, dtype=torch.float64)
    offset = TANGENTIAL_STD * torch.randn(n, generator=generator, dtype=torch.float64)
    angle = 2.0 * math.pi * arm / ARMS + TWIST_RATE * torch.exp(radius)
    cos, sin = torch.cos(angle), torch.sin(angle)
    points = torch.stack([cos * radius - sin * offset, sin * radius + cos * offset], dim=1)
    return (DATA_SCALE * points).float()


class PinwheelMLP(ScoreModel):
    """ε-prediction MLP for 2-D points: [x, sinusoid(t)] → 3 × (Linear, SiLU) → Linear → ε.

    Args:
        hidden: width of the hidden layers.
        time_features: size of the sinusoidal timestep embedding (cosines first, then
            sines, frequencies 10000^(−i/half) as in ADM).
        schedule: the VP schedule it is trained with (default linear, T = 1000).

    Example:
        >>> model = PinwheelMLP()
        >>> model(torch.zeros(4, 2), torch.full((4,), 999)).shape
        torch.Size([4, 2])
    """

    default_variance = "fixed_small"
    default_clip_denoised = False
    learned_variance = False

    def __init__(self, hidden: int = 128, time_features: int = 32, schedule: Schedule | None = None):
        super().__init__()
        self.schedule = schedule or Schedule.linear(1000)
        self.image_shape = (2,)
        self.time_features = time_features
        self.hidden = hidden
        self.network = nn.Sequential(
            nn.Linear(2 + time_features, hidden), nn.SiLU(),
            nn.Linear(hidden, hidden), nn.SiLU(),
            nn.Linear(hidden, hidden), nn.SiLU(),
            nn.Linear(hidden, 2),
        )
        half = time_features // 2
        frequencies = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=torch.float32) / half)
        self.register_buffer("frequencies", frequencies, persistent=False)

    def embed_time(self, t: torch.Tensor) -> torch.Tensor:
        angles = t.float().unsqueeze(-1) * self.frequencies
        return torch.cat([torch.cos(angles), torch.sin(angles)], dim=-1)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        features = torch.cat([x.float(), self.embed_time(t)], dim=-1)
        return self.network(features).to(x.dtype)


# ----------------------------------------------------------------------------- training
@dataclass(frozen=True)
class TrainingSettings:
    iterations: int = 12_000
    batch_size: int = 2048
    learning_rate: float = 2e-3
    ema_decay: float = 0.999
    seed: int = 0


def train_pinwheel_mlp(
    settings: TrainingSettings = TrainingSettings(), log_every: int = 1000
) -> tuple[PinwheelMLP, dict]:
    """Train :class:`PinwheelMLP` by denoising score matching on fresh pinwheel batches.

    Loss: mean ‖ε_θ(√ᾱ_t x + √(1−ᾱ_t) ε, t) − ε‖² with t uniform on 0..T−1; Adam with a
    cosine learning-rate decay; the returned model holds the exponential moving average
    of the weights. Returns ``(model, info)`` with the final losses and the wall time.
    """
    started = time.perf_counter()
    torch.manual_seed(settings.seed)
    model = PinwheelMLP()
    average = PinwheelMLP()
    average.load_state_dict(model.state_dict())
    optimizer = torch.optim.Adam(model.parameters(), lr=settings.learning_rate)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, settings.iterations)
    alpha_bars = torch.as_tensor(model.schedule.alphas_cumprod, dtype=torch.float32)
    generator = torch.Generator().manual_seed(settings.seed + 1)
    running = None
    for iteration in range(1, settings.iterations + 1):
        x0 = pinwheel_samples(settings.batch_size, seed=settings.seed * 1_000_003 + iteration)
        t = torch.randint(0, model.schedule.num_timesteps, (settings.batch_size,), generator=generator)
        noise = torch.randn(x0.shape, generator=generator)
        alpha_bar = alpha_bars[t].unsqueeze(-1)
        noisy = alpha_bar.sqrt() * x0 + (1.0 - alpha_bar).sqrt() * noise
        loss = (model(noisy, t) - noise).pow(2).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        with torch.no_grad():
            for kept, current in zip(average.parameters(), model.parameters()):
                kept.lerp_(current, 1.0 - settings.ema_decay)
        value = loss.item()
        running = value if running is None else 0.99 * running + 0.01 * value
        if iteration % log_every == 0 or iteration == settings.iterations:
            print(f"[pinwheel training] {iteration}/{settings.iterations} loss {running:.4f} "
                  f"({time.perf_counter() - started:.0f} s)", flush=True)
    info = {**settings.__dict__, "final_loss_running_mean": running, "wall_seconds": time.perf_counter() - started,
            "torch": torch.__version__}
    return average.eval(), info


def save_weights(model: PinwheelMLP, path: Path, info: dict) -> Path:
    """Write the weights as safetensors with the training settings as string metadata."""
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {name: tensor.detach().contiguous() for name, tensor in model.state_dict().items()}
    save_file(tensors, str(path), metadata={key: str(value) for key, value in info.items()})
    return path


def load_pinwheel_mlp(path: Path | str = WEIGHTS_PATH) -> PinwheelMLP:
    """The trained :class:`PinwheelMLP` (strict load: every key must match)."""
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"pinwheel weights not found at {path}; train them with `python -m dpfast.experiments.pinwheel --train`"
        )
    model = PinwheelMLP()
    model.load_state_dict(load_file(str(path)), strict=True)
    return model.eval()



# ----------------------------------------------------------------------------- DDIM-η baseline
def ddim_dps_sample(
    model: ScoreModel, operator, y: torch.Tensor, eta: float, zeta, steps: int, seeds,
    clip_denoised: bool | None = None,
) -> torch.Tensor:
    """DDIM-η (Song, Meng & Ermon 2021) with the same DPS correction as :class:`dpfast.Sampler`.

    Per step, on the chain ``model.schedule.respace(steps)`` (ᾱ = ᾱ_t, ᾱ' = ᾱ_prev):
    ε̂ = ε_θ(x_t, t), x̂0 = (x_t − √(1−ᾱ) ε̂)/√ᾱ (clamped to [-1, 1] with ε̂ re-derived, when
    clipping),
    σ = η √((1−ᾱ')/(1−ᾱ)) √(1 − ᾱ/ᾱ'),
    x_prev = √ᾱ' x̂0 + √(1 − ᾱ' − σ²) ε̂ + σ z − ζ ∇_{x_t}‖y − A(x̂0)‖  (per-sample norm).

    η = 0 is deterministic DDIM; η = 1 gives σ² = β̃ and the DDPM posterior mean, i.e.
    the λ = 1 chain of the sampler (with the same counter-based noise, keyed by the same
    (seed, step) pairs, it reproduces ``Sampler.restore(y, lam=1, seed=seeds)`` up to
    float32 rounding). Note that η scales the noise *and* changes the mean's ε̂ weight,
    while λ scales only the noise.

    Args:
        model: an ε-prediction :class:`~dpfast.models.ScoreModel` (vectors or images).
        operator: the measurement operator A (differentiable).
        y: measurements ``(B, *M)``.
        eta: η ∈ [0, 1]. zeta: DPS step size ζ (the sampler's convention): a number, or
            one per step in execution order (entry 0 the first, noisiest step), as
            :class:`dpfast.Sampler` takes a per-step ``zeta``.
        steps: respaced steps. seeds: one int per sample (or an int s: s, s+1, ...).
            The chain runs on ``y``'s device (the model must be there too).
        clip_denoised: clamp x̂0 to [-1, 1] (and re-derive ε from it), as the sampler does;
            ``None`` takes the model's ``default_clip_denoised``, as the sampler does.

    Returns:
        float32 ``(B, *image_shape)``.
    """
    if not 0.0 <= eta <= 1.0:
        raise ValueError(f"eta must lie in [0, 1], got {eta}")
    chain = model.schedule.respace(steps)
    zetas = zeta_table(zeta, [1.0], steps)[:, 0]  # row k: step k (checked as the sampler checks it)
    alpha_bars = chain.alphas_cumprod
    batch = y.shape[0]
    words = seed_tensor(seeds, batch, device=y.device)
    shape = tuple(model.image_shape)
    clip = model.default_clip_denoised if clip_denoised is None else bool(clip_denoised)
    x = counter_normal_ref(words, INITIAL_NOISE_STEP, shape)
    for k in range(steps - 1, -1, -1):
        alpha_bar = float(alpha_bars[k])
        alpha_bar_prev = float(alpha_bars[k - 1]) if k > 0 else 1.0
        t = torch.full((batch,), int(chain.timesteps[k]), dtype=torch.int64, device=y.device)
        with torch.enable_grad():
            x_in = x.detach().requires_grad_(True)
            eps = model(x_in, t)
            if model.learned_variance:  # ε is the first half of the channels
                eps = eps[:, : model.channels]
            pred_x0 = (x_in - math.sqrt(1.0 - alpha_bar) * eps) / math.sqrt(alpha_bar)
            if clip:  # as the sampler does; ε is re-derived from the clamped x̂0 (ADM's DDIM does the same)
                pred_x0 = pred_x0.clamp(-1.0, 1.0)
                eps = (x_in - math.sqrt(alpha_bar) * pred_x0) / math.sqrt(1.0 - alpha_bar)
            residual = (y - operator(pred_x0)).flatten(1)
            norms = residual.pow(2).sum(1).clamp_min(1e-20).sqrt()
            (gradient,) = torch.autograd.grad(norms.sum(), x_in)
        sigma = eta * math.sqrt((1.0 - alpha_bar_prev) / (1.0 - alpha_bar) * (1.0 - alpha_bar / alpha_bar_prev))
        direction = math.sqrt(max(1.0 - alpha_bar_prev - sigma**2, 0.0))
        x = math.sqrt(alpha_bar_prev) * pred_x0.detach() + direction * eps.detach() - float(zetas[k]) * gradient
        if sigma > 0:
            x = x + sigma * counter_normal_ref(words, k, shape)
    return x.detach()


# ----------------------------------------------------------------------------- oracle
def oracle_posterior(y: torch.Tensor, pool: torch.Tensor, seed: int, chunk: int = 64) -> dict:
    """Exact posterior over a finite pool of clean samples, by importance weighting.

    For each y_i: w_ij ∝ exp(−‖y_i − a x_j‖² / 2σ²) over the pool x_j ~ p_X. Returns the
    posterior means (the MMSE estimates, float64 ``(n, 2)``), one posterior draw per y_i
    (``(n, 2)``) and the effective sample size 1/Σ_j w_ij² of each weight vector.
    """
    generator = torch.Generator().manual_seed(seed)
    pool = pool.double()
    means, draws, sizes = [], [], []
    for start in range(0, y.shape[0], chunk):
        block = y[start:start + chunk].double()
        log_weights = -torch.cdist(block, GAIN * pool).pow(2) / (2.0 * NOISE_STD**2)
        weights = torch.softmax(log_weights, dim=1)
        means.append(weights @ pool)
        draws.append(pool[torch.multinomial(weights, 1, generator=generator).squeeze(1)])
        sizes.append(1.0 / weights.pow(2).sum(1))
    return {"mean": torch.cat(means), "draw": torch.cat(draws), "effective_size": torch.cat(sizes)}


# ----------------------------------------------------------------------------- experiment
# DPS step size ζ, tuned on a separate test set (500 points, seeds 11/12/7) at 250 steps:
# ζ(0) = 0.005 minimises the λ = 0 MSE; ζ(1) = 0.02 makes the λ = 1 MSE match the oracle
# posterior draws' (too small a ζ under-uses y, too large pulls every sample onto y).
# The normalised DPS step moves x_t a fixed distance per step, so ζ scales as 250/steps
# (checked at 50 steps: the best values were again ≈ 5× these).
TUNED_ZETA_AT_250_STEPS = {0.0: 0.005, 1.0: 0.02}


def tuned_zeta(knob: float, steps: int) -> float:
    """ζ for λ (or η) = ``knob`` with ``steps`` steps: linear between ζ(0) and ζ(1), scaled by 250/steps."""
    low, high = TUNED_ZETA_AT_250_STEPS[0.0], TUNED_ZETA_AT_250_STEPS[1.0]
    return (low + knob * (high - low)) * 250.0 / steps


@dataclass(frozen=True)
class Settings:
    test_points: int  # (x, y) pairs; also the size of the clean reference set for W2
    steps: int
    lams: tuple[float, ...]
    average_counts: tuple[int, ...]  # N of the averaging baseline
    etas: tuple[float, ...]
    pool: int  # clean samples behind the oracle posterior
    scatter_lams: tuple[float, ...]


FULL = Settings(
    test_points=1000, steps=250, lams=(0.0, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0),
    average_counts=(1, 2, 4, 8, 16, 32, 64), etas=(0.0, 0.2, 0.4, 0.6, 0.8, 1.0), pool=200_000,
    scatter_lams=(0.0, 0.3, 0.6, 1.0),
)
QUICK = Settings(
    test_points=300, steps=50, lams=(0.0, 0.5, 1.0), average_counts=(1, 4, 16), etas=(0.0, 1.0),
    pool=50_000, scatter_lams=(0.0, 0.5, 1.0),
)
# seed offsets: every random set gets its own seeds
TEST_SEED = 10_000
REFERENCE_SEED = 20_000
POOL_SEED = 30_000
MEASUREMENT_SEED = 40_000
AVERAGE_SEED = 1_000_000

# the series of the DP figure: (results key, knob name, label, line style, colour)
SERIES = (
    ("lam_sweep", "lam", "λ-process, ζ tuned per λ", "o-", "tab:blue"),
    ("lam_sweep_constant_zeta", "lam", "λ-process, ζ = ζ(1)", "o--", "tab:cyan"),
    ("averaging", "samples", "average of N λ=1 samples", "s-", "tab:green"),
    ("ddim", "eta", "DDIM-η, ζ tuned per η", "^-", "tab:orange"),
    ("ddim_constant_zeta", "eta", "DDIM-η, ζ = ζ(1)", "^--", "tab:brown"),
)


def measurement_operator() -> MatrixOperator:
    return MatrixOperator(GAIN * torch.eye(2))


def distortion_perception(estimates: torch.Tensor, clean: torch.Tensor, reference: torch.Tensor) -> dict:
    """MSE to the ground truth (per point, summed over the 2 coordinates) and exact W2 to the reference set."""
    squared = (estimates.double() - clean.double()).pow(2).sum(1)
    return {
        "mse": float(squared.mean()),
        "mse_standard_error": float(squared.std() / math.sqrt(squared.numel())),
        "w2": distances.empirical_wasserstein2(estimates, reference),
    }


def run(out_dir, quick: bool = False, seed: int = 0, model: PinwheelMLP | None = None) -> dict:
    """Run the λ sweeps and both baselines; write figures and ``pinwheel.json``; return the numbers.

    Args:
        out_dir: output folder (created).
        quick: the small version (300 test points, 50 steps, λ ∈ {0, .5, 1}) for tests.
        seed: base seed of the test set, reference set, measurements and samplers.
        model: the ε-model; default the shipped weights (:func:`load_pinwheel_mlp`).

    Returns:
        ``{"lam_sweep", "lam_sweep_constant_zeta", "averaging", "ddim",
        "ddim_constant_zeta", "oracle", "floor", "model_check", "problem", "settings", "meta"}``: every
        point with its MSE, the MSE's standard error and W2.
    """
    with common.torch_threads(1):
        return _run(out_dir, quick, seed, model)


def _run(out_dir, quick: bool, seed: int, model: PinwheelMLP | None) -> dict:
    started = time.perf_counter()
    out_dir = Path(out_dir)
    settings = QUICK if quick else FULL
    model = model if model is not None else load_pinwheel_mlp()
    operator = measurement_operator()
    n, steps = settings.test_points, settings.steps
    clean = pinwheel_samples(n, seed=seed + TEST_SEED)
    reference = pinwheel_samples(n, seed=seed + REFERENCE_SEED)
    y = measure(clean, operator, NOISE_STD, seed=seed + MEASUREMENT_SEED)
    constant_zeta = tuned_zeta(1.0, steps)
    tuned = {lam: tuned_zeta(lam, steps) for lam in (0.0, 1.0)}  # the sampler interpolates between the keys
    progress = common.Progress(NAME, 6)

    def evaluate(estimates):
        return distortion_perception(estimates, clean, reference)

    oracle = oracle_posterior(y, pinwheel_samples(settings.pool, seed=seed + POOL_SEED), seed=seed + POOL_SEED)
    unconditional_sampler = Sampler(model, None, steps=steps, guidance="none", clip_denoised=False)
    unconditional = unconditional_sampler.sample(n, lam=1.0, seed=seed)
    results = {
        "floor": {"w2_between_two_clean_sets": distances.empirical_wasserstein2(clean, reference)},
        "model_check": {
            "w2_unconditional_samples_to_clean": distances.empirical_wasserstein2(unconditional, reference),
        },
        "oracle": {
            "mmse": evaluate(oracle["mean"]),
            "posterior_draw": evaluate(oracle["draw"]),
            "min_effective_size": float(oracle["effective_size"].min()),
        },
    }
    progress.step(f"model check and oracle posterior over {settings.pool} clean samples")

    restored = {}
    for key, zeta in (("lam_sweep", tuned), ("lam_sweep_constant_zeta", constant_zeta)):
        sweep_started = time.perf_counter()
        sampler = Sampler(model, operator, steps=steps, zeta=zeta, guidance="dps", clip_denoised=False)
        restored[key] = sampler.traverse(y, settings.lams, seed=seed)
        results[key] = [{"lam": lam, "zeta": sampler_zeta(zeta, lam), **evaluate(restored[key][index])}
                        for index, lam in enumerate(settings.lams)]
        progress.step(f"{key}: {len(settings.lams)} λ × {n} points, {steps} DPS steps "
                      f"({time.perf_counter() - sweep_started:.0f} s)")

    count = max(settings.average_counts)
    copies_started = time.perf_counter()
    sampler = Sampler(model, operator, steps=steps, zeta=constant_zeta, guidance="dps", clip_denoised=False)
    copy_seeds = [seed + AVERAGE_SEED + copy * n + i for copy in range(count) for i in range(n)]
    copies = sampler.run(y.repeat(count, 1), [1.0] * (count * n), copy_seeds, batch_size=8 * n).view(count, n, 2)
    results["averaging"] = [
        {"samples": number, "zeta": constant_zeta, **evaluate(copies[:number].mean(0))}
        for number in settings.average_counts
    ]
    progress.step(f"averaging: {count} λ=1 samples × {n} points ({time.perf_counter() - copies_started:.0f} s)")

    ddim_started = time.perf_counter()
    ddim_eta_one = None
    zeta_policies = (("ddim", lambda eta: tuned_zeta(eta, steps)), ("ddim_constant_zeta", lambda eta: constant_zeta))
    for key, zeta_of in zeta_policies:
        results[key] = []
        for eta in settings.etas:
            samples = ddim_dps_sample(model, operator, y, eta, zeta_of(eta), steps, seed)
            results[key].append({"eta": eta, "zeta": zeta_of(eta), **evaluate(samples)})
            if eta == 1.0:
                ddim_eta_one = samples
    if ddim_eta_one is not None and 1.0 in settings.lams:
        difference = (ddim_eta_one - restored["lam_sweep"][settings.lams.index(1.0)]).abs().max()
        results["ddim_eta1_max_abs_difference_to_lam1"] = float(difference)
    progress.step(f"DDIM-η: 2 × {len(settings.etas)} η × {n} points ({time.perf_counter() - ddim_started:.0f} s)")

    results["problem"] = {
        "data": {"arms": ARMS, "radial_std": RADIAL_STD, "tangential_std": TANGENTIAL_STD, "twist_rate": TWIST_RATE,
                 "scale": DATA_SCALE},
        "gain_a": GAIN,
        "noise_std": NOISE_STD,
        "weights": WEIGHTS_PATH.name,
        "tuned_zeta": {str(key): value for key, value in tuned.items()},
        "constant_zeta": constant_zeta,
    }
    results["settings"] = settings.__dict__
    scatter = {lam: restored["lam_sweep"][settings.lams.index(lam)] for lam in settings.scatter_lams}
    _plot_scatter(clean, y, scatter, oracle["mean"], out_dir / f"{NAME}_reconstructions.png")
    _plot_dp_curve(results, out_dir / f"{NAME}_dp_curve.png")
    results["figures"] = [f"{NAME}_reconstructions.png", f"{NAME}_dp_curve.png"]
    progress.step("figures")
    results["meta"] = common.run_metadata(NAME, quick, seed, started)
    common.write_json(out_dir / f"{NAME}.json", results)
    _print_summary(results)
    return results


def sampler_zeta(zeta, lam: float) -> float:
    """The ζ the sampler uses at λ: a number, or linear interpolation of a {λ: ζ} mapping."""
    if isinstance(zeta, dict):
        keys = sorted(zeta)
        return float(np.interp(lam, keys, [zeta[key] for key in keys]))
    return float(zeta)


def _print_summary(results: dict) -> None:
    rows = [("oracle MMSE", results["oracle"]["mmse"]), ("oracle posterior draw", results["oracle"]["posterior_draw"])]
    for key, knob, label, _, _ in SERIES:
        rows += [(f"{label}: {knob} = {row[knob]:g}", row) for row in results[key]]
    settings = results["settings"]
    common.print_table(
        f"pinwheel, y = {GAIN} x + {NOISE_STD} n: {settings['test_points']} test points, {settings['steps']} steps "
        f"(W2 floor between two clean sets: {results['floor']['w2_between_two_clean_sets']:.4f}; unconditional "
        f"model samples: {results['model_check']['w2_unconditional_samples_to_clean']:.4f})",
        ("method", "zeta", "MSE", "± s.e.", "W2"),
        [(name, f"{row.get('zeta', float('nan')):.4f}", row["mse"], row["mse_standard_error"], row["w2"])
         for name, row in rows],
    )
    print(f"wall time {results['meta']['wall_seconds']:.1f} s")


def _plot_scatter(clean, y, restored: dict, mmse, path: Path) -> None:
    plt = common.pyplot()
    panels = [("clean x", clean, "black"), ("measurement y", y, "grey"), ("oracle MMSE", mmse, "tab:red")]
    panels += [(f"λ = {lam:g}", points, "tab:blue") for lam, points in restored.items()]
    figure, axes = plt.subplots(1, len(panels), figsize=(2.1 * len(panels), 2.4), sharex=True, sharey=True)
    for axis, (title, points, color) in zip(axes, panels):
        points = points.double().numpy()
        axis.scatter(points[:, 0], points[:, 1], s=1.5, color=color, alpha=0.6, lw=0)
        axis.set_title(title, fontsize=9)
        axis.set_xlim(-1.25, 1.25)
        axis.set_ylim(-1.25, 1.25)
        axis.set_aspect("equal")
        axis.set_xticks([])
        axis.set_yticks([])
    figure.tight_layout()
    common.save_figure(figure, path)


def _plot_dp_curve(results: dict, path: Path) -> None:
    plt = common.pyplot()
    figure, axis = plt.subplots(figsize=(7.0, 5.0))
    mmse, draw = results["oracle"]["mmse"], results["oracle"]["posterior_draw"]
    perception = np.linspace(0.0, mmse["w2"], 200)
    axis.plot(distances.optimal_distortion(perception, mmse["mse"], mmse["w2"]), perception, color="black", lw=1,
              label="D(P) = D* + (W2(p_X, p_X*) − P)² from the oracle")
    axis.plot([mmse["mse"]], [mmse["w2"]], "*", color="black", ms=10, label="oracle MMSE")
    axis.plot([draw["mse"]], [draw["w2"]], "P", color="black", ms=8, label="oracle posterior draw")
    for key, knob, label, style, color in SERIES:
        rows = results[key]
        axis.plot([row["mse"] for row in rows], [row["w2"] for row in rows], style, color=color, ms=4, lw=1,
                  label=label)
        for row in rows:
            axis.annotate(f"{row[knob]:g}", (row["mse"], row["w2"]), textcoords="offset points", xytext=(4, 3),
                          fontsize=6, color=color)
    axis.axhline(results["floor"]["w2_between_two_clean_sets"], color="grey", ls=":", lw=1,
                 label="W2 between two clean sets (finite-sample floor)")
    axis.set_xlabel("MSE  mean ‖x̂ − x‖²")
    axis.set_ylabel("W2 to clean data (exact OT)")
    axis.set_title("pinwheel: distortion–perception (labels: λ, N or η)", fontsize=10)
    axis.legend(fontsize=7)
    figure.tight_layout()
    common.save_figure(figure, path)

def main(argv: list[str] | None = None) -> int:
    """``python -m dpfast.experiments.pinwheel --train [-o PATH]``: (re)train the shipped weights."""
    parser = argparse.ArgumentParser(prog="python -m dpfast.experiments.pinwheel",
                                     description="(Re)train the pinwheel MLP whose weights the experiment ships.")
    parser.add_argument("--train", action="store_true", help="train the MLP and write its weights")
    parser.add_argument("-o", "--out", default=str(WEIGHTS_PATH), help=f"weights file (default: {WEIGHTS_PATH})")
    parser.add_argument("--iterations", type=int, default=TrainingSettings.iterations,
                        help="Adam steps (default: 12000)")
    parser.add_argument("--seed", type=int, default=0, help="training seed (default: 0)")
    args = parser.parse_args(argv)
    if not args.train:
        parser.error("nothing to do: pass --train (run the experiment with `python -m dpfast.experiments pinwheel`)")
    with common.torch_threads(1):
        model, info = train_pinwheel_mlp(TrainingSettings(iterations=args.iterations, seed=args.seed))
    print(f"weights: {save_weights(model, Path(args.out), info)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
