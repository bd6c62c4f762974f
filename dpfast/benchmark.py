"""End-to-end restoration speed, side by side: `dpfast bench` and `bench/bench_sampler.py`.

A *workload* is a network, an image shape, a batch and a step count; a *provider* is one
way to run that restoration:

- ``eager-fp32``, ``eager-bf16``, ``compile-fp32``, ``compile-bf16``, ``cudagraph-fp32``
  and ``cudagraph-bf16`` (CUDA): a prepared :class:`dpfast.Sampler` in that mode and
  network precision;
- ``naive-fp32``: a loop of :func:`dpfast.naive_dps.naive_dps_step`, the way the original
  DPS code works (autograd graph through the whole step every step, separate
  elementwise ops), same seeds, λ and schedule;
- ``deepinv-fp64``, ``deepinv-fp32`` (needs ``pip install dpfast[bench]``): deepinv's
  ``DPS`` sampler driving the same ε-network (wrapped as a deepinv denoiser) with the same
  step count, in its default float64 state and in float32.

Every timed round of a provider is paired with two references run right before it: the
network's forward and VJP with respect to its input alone (the floor of a DPS step) and
the eager-fp32 restoration. A shared machine's load drifts by more than the differences
measured, so overhead and speedup only compare figures taken in the same rounds.

Achieved throughput: the network's forward plus its VJP with respect to the input is the
work a DPS step cannot avoid; its floating-point operations are counted once per workload
(:func:`network_flops`) and divided by each provider's time per step, and set against the
best square-matmul rate measured on the same device in the network's dtype
(:func:`matmul_ceiling`), the practical ceiling of dense math there.
"""
from __future__ import annotations

import datetime
import math
import os
import platform
import time
from dataclasses import dataclass
from typing import Callable, Sequence

import torch

from dpfast import cpu_memory
from dpfast.baselines.deepinv_dps import deepinv_available
from dpfast.guidance import autograd_vjp
from dpfast.models.base import ScoreModel
from dpfast.naive_dps import naive_dps_step
from dpfast.noise import INITIAL_NOISE_STEP, counter_normal_ref
from dpfast.operators import GaussianBlur, measure
from dpfast.sampler import Sampler

LAM = 0.5
ZETA = 1.0
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp64": torch.float64}
SAMPLER_PROVIDERS = ("eager-fp32", "eager-bf16", "compile-fp32", "compile-bf16", "cudagraph-fp32", "cudagraph-bf16")
PROVIDERS = (*SAMPLER_PROVIDERS, "naive-fp32", "deepinv-fp64", "deepinv-fp32")


@dataclass(frozen=True)
class Workload:
    """``network``: ``"toy"`` (ToyConvScore, hidden 32), ``"adm-fmnist"`` (the built-in
    architecture, random weights), ``"builtin"`` (the shipped weights) or ``"adm-ffhq256"``
    (the FFHQ preset, random weights: speed does not depend on the weights)."""

    network: str
    image: tuple[int, int, int]
    batch: int
    steps: int
    rounds: int

    @property
    def name(self) -> str:
        return f"{self.network}-{'x'.join(map(str, self.image))}-b{self.batch}"


def build_model(network: str, image: tuple[int, int, int], device: torch.device | str) -> ScoreModel:
    """The network a workload names, in eval mode on ``device``."""
    if network == "toy":
        from dpfast.models.toy import ToyConvScore

        model = ToyConvScore(image, hidden=32)
    elif network == "builtin":
        from dpfast.models.loading import load_builtin

        model = load_builtin()
    elif network in ("adm-fmnist", "adm-ffhq256"):
        from dpfast.models.adm import ADMScoreModel

        torch.manual_seed(0)
        model = ADMScoreModel("builtin-fmnist" if network == "adm-fmnist" else network)
    else:
        raise ValueError(f"network must be 'toy', 'builtin', 'adm-fmnist' or 'adm-ffhq256', got {network!r}")
    if tuple(model.image_shape) != tuple(image):
        raise ValueError(f"network {network!r} takes images {tuple(model.image_shape)}, the workload says {image}")
    return model.to(device).eval()


def benchmark_operator(image: tuple[int, int, int]) -> GaussianBlur:
    """A 9-tap Gaussian blur (σ 1.5): valid for every workload's image, 32×32 included."""
    return GaussianBlur(9, 1.5)


def measurement(workload: Workload, operator, device) -> torch.Tensor:
    clean = torch.rand(workload.batch, *workload.image, generator=torch.Generator().manual_seed(0)) * 2 - 1
    return measure(clean.to(device), operator, 0.05, seed=0)


def synchronized(function: Callable, device: torch.device) -> Callable:
    if torch.device(device).type != "cuda":
        return function

    def run():
        out = function()
        torch.cuda.synchronize()
        return out

    return run


def network_call(model: ScoreModel, workload: Workload, dtype: torch.dtype, device) -> Callable:
    """One forward and one VJP with respect to the input, as a DPS step needs them."""
    x = torch.randn(workload.batch, *workload.image, generator=torch.Generator().manual_seed(1)).to(device)
    t = torch.full((workload.batch,), 500, device=device)
    device_type = torch.device(device).type
    reduced = dtype not in (torch.float32, torch.float64)

    def run():
        with torch.autocast(device_type, dtype=dtype, enabled=reduced, cache_enabled=False):
            output, vjp_fn = autograd_vjp(lambda x_in: model(x_in, t)[:, : x.shape[1]], x)
        return vjp_fn(torch.ones_like(output))

    return run


def network_flops(model: ScoreModel, workload: Workload, device) -> int:
    """Floating-point operations of one network forward plus its VJP with respect to the
    input at the workload's batch (matmuls, convolutions and attention, as torch's
    ``FlopCounterMode`` counts them; weight gradients are not computed, as in a DPS step).

    Attention is counted through its math form (batched matmuls): the counter does not see
    inside the CPU's fused attention kernel.
    """
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    x = torch.randn(workload.batch, *workload.image, device=device, requires_grad=True)
    t = torch.full((workload.batch,), 500, device=device)
    with FlopCounterMode(display=False) as counter, sdpa_kernel(SDPBackend.MATH):
        output = model(x, t)[:, : x.shape[1]]
        torch.autograd.backward(output, torch.ones_like(output), inputs=[x])
    return int(counter.get_total_flops())


_CEILINGS: dict[tuple[str, torch.dtype], float] = {}


def matmul_ceiling(device, dtype: torch.dtype, size: int | None = None, repeats: int = 10) -> float:
    """The best FLOP/s of ``size``² × ``size``² matmuls on ``device`` in ``dtype`` (default
    size 8192 on CUDA, 1024 on the CPU; best of 5 timings of ``repeats`` products each),
    cached per device, dtype and TF32 setting for the default size.

    float32 on CUDA is measured with TF32 matmuls exactly when cuDNN's convolutions use
    TF32 (``torch.backends.cudnn.allow_tf32``, on by default): the ceiling of the
    arithmetic the network's float32 convolutions really run in.
    """
    device = torch.device(device)
    tf32 = device.type == "cuda" and dtype == torch.float32 and torch.backends.cudnn.allow_tf32
    key = (str(device), dtype, tf32)
    if size is None and key in _CEILINGS:
        return _CEILINGS[key]
    n = size or (8192 if device.type == "cuda" else 1024)
    generator = torch.Generator(device=device).manual_seed(0)
    a = torch.randn(n, n, device=device, generator=generator).to(dtype)
    b = torch.randn(n, n, device=device, generator=generator).to(dtype)
    product = synchronized(lambda: [torch.mm(a, b) for _ in range(repeats)], device)
    previous_tf32 = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = tf32
    try:
        product()  # warm-up
        best = math.inf
        for _ in range(5):
            start = time.perf_counter()
            product()
            best = min(best, time.perf_counter() - start)
    finally:
        torch.backends.cuda.matmul.allow_tf32 = previous_tf32
    rate = 2 * n**3 * repeats / best
    if size is None:
        _CEILINGS[key] = rate
    return rate


def network_dtype(provider: str) -> torch.dtype:
    """The dtype the network runs in for ``provider`` (deepinv's float64 state still calls it in float32)."""
    precision = provider.rsplit("-", 1)[1]
    return torch.float32 if precision == "fp64" else DTYPES[precision]


def naive_restoration(sampler: Sampler, model, operator, y: torch.Tensor) -> Callable:
    """The restoration as a loop of naive autograd DPS steps (same seeds, λ, schedule)."""
    batch = sampler._prepare(y, [LAM] * y.shape[0], list(range(y.shape[0])))
    learned = sampler.variance == "learned_range"

    def run():
        x = counter_normal_ref(batch.seed_words, INITIAL_NOISE_STEP, sampler.image_shape)
        for k in range(sampler.steps - 1, -1, -1):
            x = naive_dps_step(
                model, operator, x, y, sampler.timesteps[k].expand(y.shape[0]), sampler.coefficients[k],
                batch.noise_scale, batch.zeta[k], batch.seed_words, k, sampler.clip_denoised, learned,
            )
        return x

    return run


def restoration(workload: Workload, model, operator, y: torch.Tensor, provider: str) -> tuple[Callable, float | None]:
    """A warmed-up restoration for ``provider`` and the compile/capture seconds it cost."""
    if provider not in PROVIDERS:
        raise ValueError(f"provider must be one of {PROVIDERS}, got {provider!r}")
    kind, precision = provider.rsplit("-", 1)
    if kind == "deepinv":
        from dpfast.baselines.deepinv_dps import deepinv_restoration

        run = deepinv_restoration(model, operator, y, workload.steps, DTYPES[precision], weight=ZETA)
        run()
        return synchronized(run, y.device), None
    mode = kind if kind in ("compile", "cudagraph") else "eager"
    sampler = Sampler(model, operator, steps=workload.steps, zeta=ZETA, dtype=DTYPES[precision], mode=mode)
    if kind == "naive":
        run = naive_restoration(sampler, model, operator, y)
        run()
    else:
        sampler.prepare(workload.batch)
        run = lambda: sampler.restore(y, lam=LAM, seed=0)  # noqa: E731
    return synchronized(run, y.device), sampler.last_compile_seconds or sampler.last_capture_seconds


def provider_available(provider: str, device) -> str | None:
    """None if ``provider`` can run here, else the reason it cannot."""
    kind = provider.rsplit("-", 1)[0]
    if kind == "cudagraph" and torch.device(device).type != "cuda":
        return "CUDA graphs need a GPU"
    if kind == "deepinv" and not deepinv_available():
        return "deepinv is not installed (pip install dpfast[bench])"
    return None


def parse_providers(text: str, device, source: str) -> list[str]:
    """Comma-separated provider names, each known and able to run on ``device``; errors name ``source``."""
    providers = [p.strip() for p in text.split(",")]
    for provider in providers:
        if provider not in PROVIDERS:
            raise ValueError(f"{source}: {provider!r} is not one of {','.join(PROVIDERS)}")
        reason = provider_available(provider, device)
        if reason:
            raise ValueError(f"{source}: {provider} cannot run here: {reason}")
    return providers


class PairedTimer:
    """Times the references (network forward+VJP, eager-fp32) right before each round."""

    def __init__(self, references: dict[str, Callable], timer: Callable[[], float] = time.perf_counter):
        self.references = references
        self.timer = timer
        self.seconds: dict[str, list[float]] = {name: [] for name in references}

    def __call__(self) -> None:
        for name, function in self.references.items():
            start = self.timer()
            function()
            self.seconds[name].append(self.timer() - start)

    def reset(self) -> None:
        for times in self.seconds.values():
            times.clear()


def paired_references(workload: Workload, model, operator, y, provider: str, device) -> dict[str, Callable]:
    references = {"network": synchronized(network_call(model, workload, network_dtype(provider), device), device)}
    if provider != "eager-fp32":
        references["eager-fp32"] = restoration(workload, model, operator, y, "eager-fp32")[0]
    return references


def result_row(workload: Workload, provider: str, seconds: Sequence[float], paired: PairedTimer,
               compile_seconds: float | None, peak_bytes: int | None = None, flops: int | None = None,
               ceiling: float | None = None) -> dict:
    """One table row. ``flops``: :func:`network_flops` of the workload; ``ceiling``:
    :func:`matmul_ceiling` in the provider's network dtype (FLOP/s)."""
    fastest = min(seconds)
    ordered = sorted(seconds)
    network = min(paired.seconds["network"])
    eager = min(paired.seconds["eager-fp32"]) if "eager-fp32" in paired.seconds else fastest
    return dict(
        workload=workload.name, steps=workload.steps, batch=workload.batch, provider=provider,
        seconds=fastest, median=ordered[len(ordered) // 2], network=network, eager=eager,
        compile_seconds=compile_seconds, peak_bytes=peak_bytes, flops=flops, ceiling=ceiling,
    )


def run_provider(workload: Workload, provider: str, device, model=None, log: Callable[[str], None] = print,
                 flops: int | None = None) -> dict:
    """Time ``provider`` on ``workload`` (``rounds`` rounds, each paired with the references).

    ``flops``: the workload's :func:`network_flops`, when the caller already counted them.
    """
    model = model if model is not None else build_model(workload.network, workload.image, device)
    if flops is None:
        flops = network_flops(model, workload, device)
    operator = benchmark_operator(workload.image)
    y = measurement(workload, operator, device)
    run, compile_seconds = restoration(workload, model, operator, y, provider)
    paired = PairedTimer(paired_references(workload, model, operator, y, provider, device))
    paired()  # warm-up, not counted
    paired.reset()
    seconds = []
    for round_index in range(workload.rounds):
        paired()
        start = time.perf_counter()
        run()
        seconds.append(time.perf_counter() - start)
        log(f"  {workload.name} {provider}: round {round_index + 1}/{workload.rounds} {seconds[-1]:.2f} s")
    return result_row(workload, provider, seconds, paired, compile_seconds, peak_memory(run, device),
                      flops, matmul_ceiling(device, network_dtype(provider)))


def peak_memory(run: Callable, device) -> int | None:
    """Peak memory of one more call of ``run``, what was already held included.

    On CUDA, the memory torch allocated (weights and static buffers included) plus the
    free part of every captured CUDA graph's private pool (:func:`graph_pool_free_bytes`):
    a replay writes its intermediates there while the allocator counts that memory as
    free, so without it a captured restoration would look nearly weightless. On a Linux
    CPU, the process's peak resident set during the call (:func:`resident_peak`): the
    interpreter, libraries and weights included, and memory the C allocator kept from
    earlier work in the process (a later, smaller workload can reuse it without showing
    it: for clean per-batch figures run one workload per process). None where neither
    can be read.
    """
    if torch.device(device).type != "cuda":
        return resident_peak(run)
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    run()
    torch.cuda.synchronize()
    return int(torch.cuda.max_memory_allocated()) + graph_pool_free_bytes()


def graph_pool_free_bytes() -> int:
    """Bytes reserved in CUDA-graph private pools (any pool but the default, ``(0, 0)``) and
    not allocated: the space captured graphs use during a replay. Every live graph counts,
    including those of earlier samplers in the process that are still referenced."""
    return sum(segment["total_size"] - segment["allocated_size"] for segment in torch.cuda.memory_snapshot()
               if tuple(segment.get("segment_pool_id", (0, 0))) != (0, 0))


def resident_peak(run: Callable) -> int | None:
    """The process's peak resident set size in bytes while ``run()`` runs (Linux: VmHWM,
    reset to the current resident set first by writing 5 to /proc/self/clear_refs). None
    where /proc cannot reset it (``run`` is then not called) or report it."""
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
    except OSError:
        return None
    run()
    return _process_status_bytes("VmHWM")


def resident_now() -> int | None:
    """The process's resident set size in bytes now (Linux: VmRSS), or None."""
    return _process_status_bytes("VmRSS")


def _process_status_bytes(field: str) -> int | None:
    try:
        with open("/proc/self/status") as handle:
            for line in handle:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024  # the kernel reports kB
    except OSError:
        pass
    return None


def device_name(device) -> str:
    if torch.device(device).type == "cuda":
        return torch.cuda.get_device_name()
    try:
        with open("/proc/cpuinfo") as handle:
            model = next((line.split(":", 1)[1].strip() for line in handle if line.startswith("model name")), platform.processor())
    except OSError:
        model = platform.processor()
    kept = "kept" if cpu_memory.kept() else "not kept"
    return (f"{model}, {os.cpu_count()} CPUs, torch threads {torch.get_num_threads()}, "
            f"ISA {torch.backends.cpu.get_cpu_capability()}, freed memory {kept}")


def summary_table(rows: Sequence[dict], device, timer: str = "time.perf_counter") -> list[str]:
    """Markdown rows per (workload, provider), from the fastest round (the least disturbed
    one on a shared machine) with the median beside it."""
    versions = f"torch {torch.__version__}"
    try:
        import deepinv

        versions += f", deepinv {deepinv.__version__}"
    except ImportError:
        pass
    if torch.device(device).type == "cuda":
        # float32 on CUDA means TF32 tensor cores wherever these are on (cuDNN's is by default)
        versions += (f", CUDA {torch.version.cuda}; TF32 in cuDNN {torch.backends.cudnn.allow_tf32}, "
                     f"in matmuls {torch.backends.cuda.matmul.allow_tf32}")
    lines = [
        f"device: {torch.device(device).type} ({device_name(device)}); {versions}; timer {timer}; {datetime.date.today()}",
        "",
        "| workload | steps | provider | ms/step | median ms/step | images/s | network fwd+VJP ms | overhead | "
        "speedup vs eager-fp32 | compile s | peak MiB | TFLOP/s | of matmul ceiling |",
        "| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        per_step = r["seconds"] / r["steps"]
        compile_seconds = "-" if r["compile_seconds"] is None else f"{r['compile_seconds']:.0f}"
        peak = "-" if r.get("peak_bytes") is None else f"{r['peak_bytes'] / 2**20:.0f}"
        achieved = None if r.get("flops") is None else r["flops"] / per_step
        rate = "-" if achieved is None else f"{achieved / 1e12:.3g}"
        share = "-" if achieved is None or r.get("ceiling") is None else f"{achieved / r['ceiling']:.0%}"
        lines.append(
            f"| {r['workload']} | {r['steps']} | {r['provider']} | {1e3 * per_step:.1f} | "
            f"{1e3 * r['median'] / r['steps']:.1f} | {r['batch'] / r['seconds']:.2f} | "
            f"{1e3 * r['network']:.1f} | {per_step / r['network'] - 1:+.0%} | {r['eager'] / r['seconds']:.2f}x | "
            f"{compile_seconds} | {peak} | {rate} | {share} |"
        )
    naive = {r["workload"]: r["seconds"] / r["steps"] for r in rows if r["provider"] == "naive-fp32"}
    if naive:
        lines += ["", "speedup over naive-fp32 (same run, fastest rounds): " + "; ".join(
            f"{r['workload']} {r['provider']} {naive[r['workload']] / (r['seconds'] / r['steps']):.2f}x"
            for r in rows if r["workload"] in naive and r["provider"] != "naive-fp32")]
    ceilings = sorted({(str(network_dtype(r["provider"])).removeprefix("torch."), r["ceiling"]) for r in rows if r.get("ceiling")})
    if ceilings:
        tf32 = torch.device(device).type == "cuda" and torch.backends.cudnn.allow_tf32
        lines += ["", "TFLOP/s: the network's forward+VJP operations (torch FlopCounterMode) per second of restoration; "
                  "matmul ceiling (best square matmul here, in the network's dtype"
                  + ("; float32 in TF32, as cuDNN's convolutions run it" if tf32 else "") + "): "
                  + ", ".join(f"{precision} {rate / 1e12:.3g} TFLOP/s" for precision, rate in ceilings)]
    if any(r.get("peak_bytes") is not None for r in rows):
        lines += ["", "peak MiB: " + ("CUDA memory torch allocated during one restoration, weights and buffers included, "
                                      "plus the free space of captured CUDA graphs' private pools (where a replay's "
                                      "intermediates live)"
                                      if torch.device(device).type == "cuda" else
                                      "the process's peak resident set during one restoration (VmHWM), interpreter, "
                                      "libraries, weights and memory kept from earlier rows of this process included")]
    return lines


def main(argv: list[str] | None = None) -> int:
    """``dpfast bench``: time the providers side by side and print the table."""
    import argparse
    import sys

    parser = argparse.ArgumentParser(prog="dpfast bench", description=__doc__.splitlines()[0])
    parser.add_argument("--network", default=None, choices=["builtin", "adm-fmnist", "toy", "adm-ffhq256"],
                        help="builtin (default when its weights are installed, else adm-fmnist: same network, random weights)")
    parser.add_argument("--batch", default="1,16", help="comma-separated batch sizes (default 1,16)")
    parser.add_argument("--steps", type=int, default=20, help="reverse steps per restoration (default 20; per-step cost is what is compared)")
    parser.add_argument("--rounds", type=int, default=3, help="timed rounds per provider; the fastest is reported (default 3)")
    parser.add_argument("--providers", default=None,
                        help=f"comma-separated, from {','.join(PROVIDERS)} (default: every one that can run here but the compile ones)")
    parser.add_argument("--device", default="auto", help="auto (cuda when visible), cpu or cuda")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    parser.add_argument("--out", default=None, help="also write the table (markdown) to this file")
    parser.add_argument("--quiet", action="store_true", help="no per-round lines")
    args = parser.parse_args(argv)
    try:
        return _bench(args)
    except (ValueError, TypeError, OSError, RuntimeError) as error:
        print(f"dpfast bench: error: {error}", file=sys.stderr)
        return 2


def _bench(args) -> int:
    from dpfast.models.loading import BUILTIN_ASSET
    from dpfast.validation import check_positive_int

    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          "cpu" if args.device == "auto" else args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda was asked for but torch sees no CUDA device")
    if args.threads is not None:
        torch.set_num_threads(check_positive_int("--threads", args.threads))
    steps = check_positive_int("--steps", args.steps)
    rounds = check_positive_int("--rounds", args.rounds)
    try:
        batches = [check_positive_int("--batch", int(value)) for value in args.batch.split(",")]
    except ValueError as error:
        raise ValueError(f"--batch must be comma-separated positive ints, got {args.batch!r} ({error})") from error
    network = args.network or ("builtin" if BUILTIN_ASSET.is_file() else "adm-fmnist")
    image = (3, 256, 256) if network == "adm-ffhq256" else (1, 32, 32)
    if args.providers is None:
        providers = [p for p in PROVIDERS if not p.startswith("compile-") and provider_available(p, device) is None]
        if device.type == "cpu":
            providers.remove("eager-bf16")  # 6-34x slower than fp32 without AVX-512-bf16 (docs/BENCHMARKS.md)
    else:
        providers = parse_providers(args.providers, device, "--providers")
    log = (lambda message: None) if args.quiet else (lambda message: print(message, flush=True))
    model = build_model(network, image, device)
    rows = []
    for batch in batches:
        workload = Workload(network, image, batch, steps, rounds)
        flops = network_flops(model, workload, device)  # the same for every provider
        for provider in providers:
            log(f"{workload.name} {provider} ...")
            rows.append(run_provider(workload, provider, device, model=model, log=log, flops=flops))
    lines = summary_table(rows, device)
    print("\n".join(["", *lines]))
    if args.out:
        from pathlib import Path

        Path(args.out).write_text("\n".join(lines) + "\n")
    return 0
