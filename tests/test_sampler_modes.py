"""Sampler precision, memory format and execution modes (issue #5).

The compiled tests are few and small (ToyConvScore on 8×8 images, 6 steps): four
compiled samplers, up to ~50 s of inductor compile each on a loaded 2-core machine; the
module took ~70 s there with an empty inductor cache. One more compiles the smallest ADM
UNet in bf16 (~100 s beside another job, 2026-11-29), the only compiled test of the real
architecture.
"""
import logging

import pytest
import torch
import torch._dynamo

import dpfast as dp
from dpfast.models.toy import ToyConvScore
from dpfast.operators import GaussianBlur, SuperResolution, measure
from dpfast.sampler import Sampler
from dpfast.testing import assert_close, assert_error_at_most_torch

IMAGE = (1, 8, 8)
BATCH = 2
COMPILE_STEPS = 6
OPERATOR = SuperResolution(2, "avgpool")


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    # On this shared 2-core machine two OpenMP threads wait out scheduler slices at every
    # barrier (a toy step measured 100× slower); one thread keeps the module short.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _measurement(operator, batch=BATCH, image=IMAGE, seed=1):
    x = torch.rand(batch, *image, generator=torch.Generator().manual_seed(seed)) * 2 - 1
    return measure(x, operator, 0.05, seed=100)


def _unique_graphs() -> int:
    return torch._dynamo.utils.counters["stats"]["unique_graphs"]


# ------------------------------------------------------------------ compile mode
@pytest.fixture(scope="module")
def models():
    return {
        "dps": ToyConvScore(IMAGE, hidden=8, learned_variance=True),  # the learned_range path too
        "x0": ToyConvScore(IMAGE, hidden=8),
        "none": ToyConvScore(IMAGE, hidden=8),
    }


@pytest.fixture(scope="module")
def prepared_compiled_sampler(models):
    sampler = Sampler(models["dps"], OPERATOR, steps=COMPILE_STEPS, zeta=0.7, mode="compile")
    return sampler.prepare(BATCH)


def test_prepare_compiles_once_and_reports_the_compile_time(prepared_compiled_sampler):
    assert prepared_compiled_sampler.active_mode == "compile"
    assert prepared_compiled_sampler.compile_count == 1
    assert prepared_compiled_sampler.last_compile_seconds > 0


def test_compiled_restorations_equal_eager_for_the_same_seeds(models, prepared_compiled_sampler):
    eager = Sampler(models["dps"], OPERATOR, steps=COMPILE_STEPS, zeta=0.7)
    y = _measurement(OPERATOR)
    for lam in (0.0, 0.5, 1.0):
        compiled = prepared_compiled_sampler.restore(y, lam=lam, seed=3)
        assert_close(compiled, eager.restore(y, lam=lam, seed=3), torch.float32, msg=f"lam={lam}")


def test_prepared_compiled_sampler_does_not_recompile_across_10_restore_calls(prepared_compiled_sampler):
    graphs_before = _unique_graphs()
    y = _measurement(OPERATOR)
    for call in range(10):
        out = prepared_compiled_sampler.restore(y, lam=call / 9, seed=10 * call)  # λ = 0 included
        assert out.shape == (BATCH,) + IMAGE and torch.isfinite(out).all()
    assert prepared_compiled_sampler.compile_count == 1
    assert _unique_graphs() == graphs_before


@pytest.mark.parametrize("guidance", ["x0", "none"])
def test_compiled_guidance_modes_equal_eager(models, guidance):
    operator = None if guidance == "none" else OPERATOR
    options = dict(steps=COMPILE_STEPS, zeta=0.7, guidance=guidance)
    compiled = Sampler(models[guidance], operator, mode="compile", **options)
    eager = Sampler(models[guidance], operator, **options)
    for lam in (0.0, 1.0):
        if guidance == "none":
            got, want = compiled.sample(BATCH, lam=lam, seed=5), eager.sample(BATCH, lam=lam, seed=5)
        else:
            y = _measurement(operator)
            got, want = compiled.restore(y, lam=lam, seed=5), eager.restore(y, lam=lam, seed=5)
        assert_close(got, want, torch.float32, msg=f"guidance={guidance}, lam={lam}")
    assert compiled.compile_count == 1


def test_compiled_bf16_channels_last_step_errs_no_more_than_eager_bf16():
    """Autocast and the memory format inside the compiled graph: against the float32
    restoration, the compiled bf16 one may err at most 2× what eager bf16 errs
    (dpfast.testing's rule for reduced precision)."""
    image = (3, 8, 8)
    model = ToyConvScore(image, hidden=8)
    y = _measurement(OPERATOR, image=image)
    options = dict(steps=COMPILE_STEPS, zeta=0.7, dtype=torch.bfloat16, channels_last=True)
    compiled = Sampler(model, OPERATOR, mode="compile", **options).restore(y, lam=0.5, seed=1)
    eager = Sampler(model, OPERATOR, **options).restore(y, lam=0.5, seed=1)
    reference = Sampler(model, OPERATOR, steps=COMPILE_STEPS, zeta=0.7).restore(y, lam=0.5, seed=1)
    assert_error_at_most_torch(compiled, eager, reference, msg="compiled bf16 vs float32")


def test_compiled_bf16_adm_step_runs_and_errs_no_more_than_eager_bf16():
    """The real architecture in the compiled bf16 step: the smallest ADM UNet with every
    layer kind (attention, scale-shift norm, up/down-sampling res blocks). The toy networks
    above have no attention; through it, torch.func.vjp under autocast failed on the CPU,
    so this combination crashed while every test passed (tests/models/test_adm.py)."""
    from dpfast.models.adm import ADMConfig, ADMScoreModel

    config = ADMConfig(image_size=16, in_channels=1, model_channels=32, num_res_blocks=1, attention_resolutions=(8,),
                       channel_mult=(1, 2), num_head_channels=32, use_scale_shift_norm=True, resblock_updown=True,
                       learn_sigma=False)
    torch.manual_seed(0)
    model = ADMScoreModel(config).eval()
    with torch.no_grad():  # ADM zero-initialises its output layers; random ones make the check mean something
        for parameter in model.parameters():
            parameter.normal_(0.0, 0.05)
    image = (1, 16, 16)
    y = _measurement(OPERATOR, image=image)
    options = dict(steps=4, zeta=0.7, dtype=torch.bfloat16)
    compiled = Sampler(model, OPERATOR, mode="compile", **options).restore(y, lam=0.5, seed=1)
    eager = Sampler(model, OPERATOR, **options).restore(y, lam=0.5, seed=1)
    reference = Sampler(model, OPERATOR, steps=4, zeta=0.7).restore(y, lam=0.5, seed=1)
    assert torch.isfinite(compiled).all()
    assert_error_at_most_torch(compiled, eager, reference, msg="compiled bf16 ADM vs float32")


# ------------------------------------------------------- precision and layout
REDUCED_STEPS = 10  # the random toy network amplifies rounding differences over long runs


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def test_reduced_precision_restorations_stay_finite_and_close_to_float32(dtype):
    """10 steps, 4 images of 1×16×16, Gaussian blur, λ = 0.5, seed 0. Measured here: the
    squared difference to float32 is 7e-5 (bf16) and 6e-8 (fp16) of the output's mean
    square, and the distortion to the clean images moves by 0.05% and 0.001%; the bounds
    (1e-3 and 1%) leave 15× margin for bf16."""
    model = ToyConvScore((1, 16, 16), hidden=16)
    operator = GaussianBlur(9, 1.5)
    clean = torch.rand(4, 1, 16, 16, generator=torch.Generator().manual_seed(0)) * 2 - 1
    y = measure(clean, operator, 0.05, seed=0)
    reference = Sampler(model, operator, steps=REDUCED_STEPS).restore(y, lam=0.5, seed=0)
    reduced = Sampler(model, operator, steps=REDUCED_STEPS, dtype=dtype).restore(y, lam=0.5, seed=0)
    assert reduced.dtype == torch.float32 and torch.isfinite(reduced).all()
    relative_mse = float((reduced - reference).pow(2).mean() / reference.pow(2).mean())
    assert relative_mse < 1e-3, relative_mse
    distortion = float((reduced - clean).pow(2).mean() / (reference - clean).pow(2).mean())
    assert distortion == pytest.approx(1.0, rel=1e-2)


def test_network_runs_in_reduced_precision_while_the_state_stays_float32(monkeypatch):
    import dpfast.sampler as sampler_module

    model = ToyConvScore(IMAGE, hidden=8)
    network_outputs = []
    model.register_forward_hook(lambda module, inputs, output: network_outputs.append(output.dtype))
    step_inputs = []
    original = sampler_module.reverse_step

    def spy(x, model_output, *args, **kwargs):
        step_inputs.append((x.dtype, model_output.dtype))
        return original(x, model_output, *args, **kwargs)

    monkeypatch.setattr(sampler_module, "reverse_step", spy)
    sampler = Sampler(model, OPERATOR, steps=3, dtype=torch.bfloat16)
    out = sampler.restore(_measurement(OPERATOR), lam=1.0, seed=0)
    assert out.dtype == torch.float32
    assert network_outputs == [torch.bfloat16] * 3
    assert step_inputs == [(torch.float32, torch.bfloat16)] * 3


def test_channels_last_hands_the_network_channels_last_input_and_keeps_the_result():
    image = (3, 8, 8)  # with one channel both layouts have the same strides
    model = ToyConvScore(image, hidden=8)
    layouts = []
    model.register_forward_pre_hook(
        lambda module, inputs: layouts.append(inputs[0].is_contiguous(memory_format=torch.channels_last))
    )
    y = _measurement(OPERATOR, image=image)
    default = Sampler(model, OPERATOR, steps=5).restore(y, lam=0.5, seed=1)
    layouts.clear()
    channels_last = Sampler(model, OPERATOR, steps=5, channels_last=True).restore(y, lam=0.5, seed=1)
    assert layouts == [True] * 5
    assert_close(channels_last, default, torch.float32)


# --------------------------------------------------------------------- arguments
@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        (dict(dtype=torch.float64), ValueError, r"dtype sets the network's precision and must be .*got torch.float64"),
        (dict(dtype="bfloat16"), TypeError, r"dtype must be a torch.dtype .*or 'auto'.*got str 'bfloat16'"),
        (dict(mode="jit"), ValueError, r"mode must be one of \('eager', 'compile', 'cudagraph', 'auto'\), got 'jit'"),
        (dict(channels_last="yes"), TypeError, "channels_last must be True or False, got str 'yes'"),
        (dict(channels_last=1), TypeError, "channels_last must be True or False, got int 1"),
        (dict(mode="cudagraph"), RuntimeError, "mode='cudagraph' needs the model on a CUDA device .* on cpu"),
    ],
    ids=[
        "dtype-float64", "dtype-string", "mode-unknown", "channels-last-string", "channels-last-int",
        "cudagraph-on-cpu",
    ],
)
def test_bad_mode_dtype_or_layout_is_rejected(kwargs, error, message):
    with pytest.raises(error, match=message):
        Sampler(ToyConvScore(IMAGE), OPERATOR, steps=3, **kwargs)


def test_channels_last_on_a_vector_model_is_rejected():
    prior = dp.models.GaussianScore(torch.zeros(3), torch.eye(3))
    with pytest.raises(ValueError, match=r"channels_last=True needs an image model .* shape \(3,\)"):
        Sampler(prior, None, steps=3, guidance="none", channels_last=True)


def test_prepare_rejects_a_measurement_shape_the_operator_cannot_produce():
    sampler = Sampler(ToyConvScore(IMAGE), OPERATOR, steps=3)
    with pytest.raises(ValueError, match=r"measurement_shape must be .*\(1, 4, 4\).*got \(1, 8, 8\)"):
        sampler.prepare(2, measurement_shape=(1, 8, 8))
    with pytest.raises(ValueError, match=r"batch must lie in \[1, inf\], got 0"):
        sampler.prepare(0)


def test_auto_mode_runs_eager_on_the_cpu_and_logs_one_line(caplog):
    with caplog.at_level(logging.INFO, logger="dpfast"):
        sampler = Sampler(ToyConvScore(IMAGE), OPERATOR, steps=3, mode="auto")
    assert sampler.active_mode == "eager"
    lines = [record.getMessage() for record in caplog.records if "mode 'auto'" in record.getMessage()]
    assert len(lines) == 1 and "runs 'eager' on cpu" in lines[0], lines


@pytest.mark.parametrize("avx512_bf16, amx, expected", [(False, False, torch.float32), (True, False, torch.bfloat16),
                                                         (False, True, torch.bfloat16)],
                         ids=["avx2-only", "avx512-bf16", "amx"])
def test_auto_dtype_picks_bf16_only_where_the_cpu_computes_it_natively(monkeypatch, caplog, avx512_bf16, amx, expected):
    """On an AVX2 CPU bf16 is 12-34x slower than float32, on an AVX-512-bf16 one 1.44-1.47x faster."""
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16)  # what dpfast.precision reads
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx)
    with caplog.at_level(logging.INFO, logger="dpfast"):
        sampler = Sampler(ToyConvScore(IMAGE), OPERATOR, steps=3, dtype="auto")
    assert sampler.dtype == expected
    lines = [record.getMessage() for record in caplog.records if "dtype 'auto'" in record.getMessage()]
    assert len(lines) == 1 and f"in {expected} on cpu" in lines[0], lines


def test_auto_dtype_restores_as_the_dtype_it_picked():
    model = ToyConvScore(IMAGE, hidden=8)
    y = _measurement(OPERATOR)
    auto = Sampler(model, OPERATOR, steps=3, dtype="auto")
    explicit = Sampler(model, OPERATOR, steps=3, dtype=auto.dtype)
    assert torch.equal(auto.restore(y, lam=0.5, seed=0), explicit.restore(y, lam=0.5, seed=0))


def test_prepared_eager_sampler_gives_the_same_restorations():
    model = ToyConvScore(IMAGE, hidden=8)
    y = _measurement(OPERATOR)
    plain = Sampler(model, OPERATOR, steps=4).restore(y, lam=0.5, seed=2)
    prepared = Sampler(model, OPERATOR, steps=4).prepare(BATCH).restore(y, lam=0.5, seed=2)
    assert torch.equal(prepared, plain)


# --------------------------------------------------------------------- cudagraph
@pytest.mark.parametrize("guidance", ["dps", "x0"])
def test_static_buffer_step_that_a_cuda_graph_replays_equals_eager_restoration_on_the_cpu(guidance):
    """What ``mode="cudagraph"`` captures — one step on static buffers, the step id in a
    tensor that selects the row, timestep and ζ with index_select and counts itself down,
    noise always drawn (scaled by 0 at λ = 0) — run here step by step without capture,
    with both guidances (x̂0 guidance's restorations on an H200 once looked far from the
    CPU's; the cause was rounding: tests/experiments/test_experiment_images.py)."""
    from functools import partial

    from dpfast.guidance import autograd_vjp
    from dpfast.noise import INITIAL_NOISE_STEP, counter_normal_ref
    from dpfast.sampler import _CapturedStep, _indexed_step

    steps = 5
    model = ToyConvScore(IMAGE, hidden=8, learned_variance=guidance == "dps")
    sampler = Sampler(model, OPERATOR, steps=steps, zeta=0.7, guidance=guidance)
    y = _measurement(OPERATOR)
    static = _CapturedStep(
        partial(_indexed_step, sampler, vjp=autograd_vjp), BATCH, IMAGE, tuple(y.shape[1:]), steps, torch.device("cpu")
    )
    for lam in (0.0, 0.6):
        batch = sampler._prepare(y, [lam] * BATCH, [7, 8])
        static.load(counter_normal_ref(batch.seed_words, INITIAL_NOISE_STEP, IMAGE), batch)
        for _ in range(steps):
            static.advance()
        assert int(static.step) == 0
        assert_close(static.x, sampler.restore(y, lam=lam, seed=7), torch.float32, msg=f"lam={lam}")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a CUDA device")
@pytest.mark.parametrize("guidance", ["dps", "x0"])
def test_cudagraph_replays_match_eager_and_allocate_static_buffers_once(guidance):
    model = ToyConvScore((3, 16, 16), hidden=16, learned_variance=guidance == "dps").cuda()
    operator = GaussianBlur(9, 1.5)
    y = _measurement(operator, batch=4, image=(3, 16, 16)).cuda()
    graphed = Sampler(model, operator, steps=8, mode="cudagraph", guidance=guidance).prepare(4)
    assert graphed.static_allocations == 1 and graphed.last_capture_seconds > 0
    eager = Sampler(model, operator, steps=8, guidance=guidance)
    for call in range(10):
        lam = call / 9
        got = graphed.restore(y, lam=lam, seed=call)
        if call in (0, 5, 9):
            # Convolution algorithms may differ between eager and captured runs: a
            # float32 rounding per step, accumulated (as across batch sizes in test_sampler).
            torch.testing.assert_close(got, eager.restore(y, lam=lam, seed=call), rtol=1e-4, atol=1e-4)
    assert graphed.static_allocations == 1


@pytest.fixture(scope="module")
def thousand_bf16_steps():
    """The shipped model, all 1000 steps, the 8 bundled test images blurred (9/1.5,
    σ_n 0.05), traversed at λ = 0 and 1 in one batch of 16: bf16 + cudagraph, float32
    cudagraph (the reference; the test above ties cudagraph to eager), and each bf16
    restoration's peak memory above what was already allocated, at 100 and 1000 steps."""
    if not torch.cuda.is_available():
        pytest.skip("CUDA graphs need a CUDA device")
    from dpfast.data import load_demo_images
    from dpfast.models.loading import load_builtin

    model = load_builtin().cuda()
    operator = GaussianBlur(9, 1.5)
    truth = load_demo_images()[0][:8].cuda()
    y = measure(truth, operator, 0.05, seed=0)

    def traversal_and_peak_growth(sampler):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        out = sampler.traverse(y, [0.0, 1.0], seed=0)
        torch.cuda.synchronize()
        return out, torch.cuda.max_memory_allocated() - before

    def mse(images):
        return [round(float((restored - truth).pow(2).mean()), 5) for restored in images]

    short = Sampler(model, operator, steps=100, dtype=torch.bfloat16, mode="cudagraph").prepare(16)
    _, short_growth = traversal_and_peak_growth(short)
    graphed = Sampler(model, operator, steps=1000, dtype=torch.bfloat16, mode="cudagraph").prepare(16)
    reduced, long_growth = traversal_and_peak_growth(graphed)
    reference = Sampler(model, operator, steps=1000, mode="cudagraph").traverse(y, [0.0, 1.0], seed=0)
    (reduced_0, reduced_1), (reference_0, reference_1) = mse(reduced), mse(reference)
    return dict(
        finite=bool(torch.isfinite(reduced).all()), short_growth=short_growth, long_growth=long_growth,
        reduced=(reduced_0, reduced_1), reference=(reference_0, reference_1),
        numbers=f"MSE bf16 λ0 {reduced_0} λ1 {reduced_1}, float32 λ0 {reference_0} λ1 {reference_1}",
    )


def test_bf16_cudagraph_keeps_1000_steps_finite_near_float32_at_lam_1_and_memory_flat(thousand_bf16_steps):
    """Issue #5 on a GPU. DPS chains amplify rounding-sized changes of the network output
    (`dpfast reproduce sensitivity`: a 2⁻¹² relative perturbation moves a restoration by
    5–20 %), so bf16 and float32 restorations differ like two runs, not like two roundings;
    at λ = 1 on this task they stay close (H200, 2026-11-28: MSE bf16 0.0166 vs float32
    0.0163), and the bound is 25 %. The memory assertion has not run on a GPU yet (the
    first version asserted it after a failing one)."""
    result = thousand_bf16_steps
    assert result["finite"]
    assert result["reduced"][1] == pytest.approx(result["reference"][1], rel=0.25), result["numbers"]
    assert result["long_growth"] <= result["short_growth"] + 2**20, (result["short_growth"], result["long_growth"])


@pytest.mark.xfail(strict=True, raises=AssertionError, reason=(
    "H200, 2026-11-28: at λ = 0 bf16 lands 26 % from float32 (MSE 0.0374 vs 0.0504; a first "
    "λ = 0.5 version: 0.0355 vs 0.0408). Not a bf16 defect: in float32 on the CPU a 2⁻¹² relative "
    "perturbation of the network output moves the λ = 0 restoration by ~20 % and its MSE by up to "
    "18 % (`dpfast reproduce sensitivity`; docs/BENCHMARKS.md, GPU, 'bf16 over 1000 steps')."))
def test_bf16_cudagraph_restoration_at_lam_0_is_within_5_percent_of_float32(thousand_bf16_steps):
    result = thousand_bf16_steps
    assert result["reduced"][0] == pytest.approx(result["reference"][0], rel=0.05), result["numbers"]
