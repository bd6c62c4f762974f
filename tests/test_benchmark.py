"""`dpfast bench` and the deepinv baseline's wrapper (speed itself is measured in bench/, not here)."""
import re

import pytest
import torch

from dpfast.benchmark import (PROVIDERS, Workload, benchmark_operator, graph_pool_free_bytes, main, matmul_ceiling,
                              measurement, network_flops, peak_memory, resident_peak, restoration, run_provider)
from dpfast.models.base import ScoreModel
from dpfast.models.toy import ToyConvScore
from dpfast.schedule import Schedule


def test_bench_prints_one_row_per_batch_and_provider(tmp_path, capsys):
    table = tmp_path / "table.md"
    code = main(["--network", "toy", "--batch", "1,2", "--steps", "2", "--rounds", "1", "--providers",
                 "eager-fp32,naive-fp32", "--device", "cpu", "--quiet", "--out", str(table)])
    out = capsys.readouterr().out
    assert code == 0
    rows = [line for line in out.splitlines() if line.startswith("| toy-")]
    assert [row.split("|")[3].strip() for row in rows] == ["eager-fp32", "naive-fp32"] * 2
    assert table.read_text().count("| toy-") == 4
    for row in rows:  # achieved TFLOP/s and its share of the measured matmul ceiling are filled in
        tflops, share = (cell.strip() for cell in row.split("|")[-3:-1])
        assert float(tflops) > 0 and share.endswith("%"), row
    assert re.search(r"matmul ceiling \(best square matmul here, in the network's dtype\): float32 [0-9.e+-]+ TFLOP/s", out)
    if resident_peak(lambda: None) is not None:  # Linux: the process's peak resident set per restoration
        assert all(float(row.split("|")[11]) > 0 for row in rows) and "peak MiB: the process's peak resident set" in out


class OneConv(ScoreModel):
    """ε = a 3×3 convolution of x: its FLOPs are known in closed form."""

    def __init__(self):
        super().__init__()
        self.schedule = Schedule.linear(1000)
        self.image_shape = (2, 8, 8)
        self.conv = torch.nn.Conv2d(2, 2, 3, padding=1)

    def forward(self, x, t):
        return self.conv(x)


class OneAttention(ScoreModel):
    """ε = self-attention over the pixels (one head, q = k = v = x): 4·(HW)²·C multiply-adds per image."""

    def __init__(self):
        super().__init__()
        self.schedule = Schedule.linear(1000)
        self.image_shape = (4, 4, 4)

    def forward(self, x, t):
        tokens = x.flatten(2).transpose(1, 2)[:, None]  # (B, 1, HW, C)
        attended = torch.nn.functional.scaled_dot_product_attention(tokens, tokens, tokens)
        return attended[:, 0].transpose(1, 2).reshape(x.shape)


def test_network_flops_count_attention_even_where_the_fused_kernel_hides_it():
    """Forward QKᵀ and AV; the VJP needs both operands' gradients of each (q, k, v all depend on x): 3× the forward."""
    forward = 2 * 4 * 16 * 16 * 4
    assert network_flops(OneAttention(), Workload("toy", (4, 4, 4), batch=2, steps=1, rounds=1), "cpu") == 3 * forward


def test_network_flops_count_the_forward_and_the_input_gradient_only():
    """Forward 2·B·C_out·H·W·C_in·9 multiply-adds, the VJP to the input as many again; no weight gradient."""
    forward = 2 * 3 * 2 * 8 * 8 * 2 * 9
    assert network_flops(OneConv(), Workload("toy", (2, 8, 8), batch=3, steps=1, rounds=1), "cpu") == 2 * forward


def test_matmul_ceiling_is_a_positive_rate_and_caches_only_the_default_size():
    from dpfast import benchmark

    cached = dict(benchmark._CEILINGS)
    assert 1e6 < matmul_ceiling("cpu", torch.float32, size=64, repeats=2) < 1e15
    assert benchmark._CEILINGS == cached


def test_matmul_ceiling_leaves_the_global_tf32_setting_as_it_found_it():
    """It switches TF32 matmuls to what cuDNN's convolutions use while it measures, then restores the flag."""
    previous = torch.backends.cuda.matmul.allow_tf32
    try:
        for setting in (True, False):
            torch.backends.cuda.matmul.allow_tf32 = setting
            matmul_ceiling("cpu", torch.float32, size=32, repeats=1)
            assert torch.backends.cuda.matmul.allow_tf32 is setting
    finally:
        torch.backends.cuda.matmul.allow_tf32 = previous


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--providers", "fast"], r"--providers: 'fast' is not one of"),
        (["--providers", "cudagraph-fp32", "--device", "cpu"], "cudagraph-fp32 cannot run here: CUDA graphs need a GPU"),
        (["--batch", "0"], r"--batch must be comma-separated positive ints"),
        (["--steps", "0"], r"--steps must lie in \[1, inf\], got 0"),
    ],
)
def test_bench_rejects_bad_arguments(argv, message, capsys):
    assert main(["--network", "toy", "--quiet", *argv]) == 2
    assert re.search(message, capsys.readouterr().err)


def test_naive_loop_restores_what_the_sampler_restores():
    """The baseline does the same work: same seeds, λ, schedule → the same restoration."""
    torch.manual_seed(0)
    model = ToyConvScore((1, 8, 8), hidden=8).eval()
    workload = Workload("toy", (1, 8, 8), batch=3, steps=5, rounds=1)
    operator = benchmark_operator(workload.image)
    y = measurement(workload, operator, "cpu")
    eager = restoration(workload, model, operator, y, "eager-fp32")[0]()
    naive = restoration(workload, model, operator, y, "naive-fp32")[0]()
    torch.testing.assert_close(naive, eager, rtol=1e-4, atol=1e-4)


def test_deepinv_denoiser_returns_the_networks_x0_estimate():
    pytest.importorskip("deepinv")
    from dpfast.baselines.deepinv_dps import epsilon_denoiser

    torch.manual_seed(0)
    model = ToyConvScore((1, 8, 8), hidden=8).eval()
    denoiser = epsilon_denoiser(model)
    t = 300
    alpha_bar = float(model.schedule.alphas_cumprod[t])
    x_t = torch.randn(2, 1, 8, 8)
    with torch.no_grad():
        eps = model(x_t, torch.full((2,), t))
        expected = (x_t - (1 - alpha_bar) ** 0.5 * eps) / alpha_bar**0.5
        # deepinv's view of the same state: x = x0 + σ n in [0, 1] units, σ = ½ √((1 − ᾱ)/ᾱ)
        sigma = 0.5 * ((1 - alpha_bar) / alpha_bar) ** 0.5
        x_deepinv = (x_t / alpha_bar**0.5 + 1) / 2
        x0 = denoiser(x_deepinv, torch.tensor([sigma]))
    torch.testing.assert_close(2 * x0 - 1, expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("solver, alpha", [("ddpm", 1.0), ("ancestral", 0.0)])
def test_deepinv_clamps_its_estimate_to_the_image_range_as_dpfast_does(solver, alpha):
    """deepinv 0.5 clamps x̂0 to [-1, 1] in the [0, 1] units it hands its guidance, i.e. to
    [-3, 1] in dpfast's; the wrapper sets its clip to the image range. With a near-zero
    guidance weight the last step returns the clamped x̂0, so the output shows the clamp."""
    pytest.importorskip("deepinv")
    from dpfast.baselines.deepinv_dps import deepinv_restoration

    torch.manual_seed(0)
    model = ToyConvScore((1, 16, 16)).eval()  # an untrained network: its x̂0 overshoots [-1, 1] both ways
    y = torch.rand(2, 1, 16, 16) * 2 - 1
    out = deepinv_restoration(model, benchmark_operator((1, 16, 16)), y, 4, weight=1e-3, solver=solver, alpha=alpha)()
    assert -1.0 - 1e-4 <= float(out.min()) <= -1.0 + 1e-2 and 1.0 - 1e-2 <= float(out.max()) <= 1.0 + 1e-4, (out.min(), out.max())


def test_deepinv_provider_runs_and_is_finite():
    pytest.importorskip("deepinv")
    workload = Workload("toy", (1, 8, 8), batch=2, steps=3, rounds=1)
    torch.manual_seed(0)
    model = ToyConvScore((1, 8, 8), hidden=8).eval()
    operator = benchmark_operator(workload.image)
    y = measurement(workload, operator, "cpu")
    restored = restoration(workload, model, operator, y, "deepinv-fp64")[0]()
    assert restored.shape == (2, 1, 8, 8) and restored.dtype == torch.float64 and torch.isfinite(restored).all()
    row = run_provider(workload, "deepinv-fp32", "cpu", model=model, log=lambda message: None)
    assert row["provider"] == "deepinv-fp32" and row["seconds"] > 0
    assert set(PROVIDERS) >= {"deepinv-fp64", "deepinv-fp32", "naive-fp32", "cudagraph-bf16"}


def test_deepinv_makes_as_many_network_evaluations_as_the_sampler_steps():
    """deepinv's num_steps counts time points: the wrapper asks for steps + 1 so both evaluate the network `steps` times."""
    pytest.importorskip("deepinv")
    from dpfast.baselines.deepinv_dps import deepinv_restoration

    torch.manual_seed(0)
    model = ToyConvScore((1, 8, 8), hidden=8).eval()
    calls = []
    model.register_forward_hook(lambda module, inputs, output: calls.append(inputs[0].requires_grad))
    operator = benchmark_operator((1, 8, 8))
    y = torch.zeros(2, 1, 8, 8)
    for steps in (3, 7):
        calls.clear()
        deepinv_restoration(model, operator, y, steps, torch.float32)()
        assert calls == [True] * steps  # every evaluation is differentiated (DPS guidance), none extra


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a CUDA device")
def test_cudagraph_peak_memory_counts_the_graph_pool():
    """A captured restoration's intermediates live in the graph's private pool, which the
    allocator counts as free: the peak must include it (on an H200 the captured FFHQ-256
    batch-8 row read 831 MiB without it, against 11.8 GiB for the eager bf16 step)."""
    workload = Workload("toy", (3, 32, 32), 4, 4, 1)
    model = ToyConvScore((3, 32, 32), hidden=32).cuda()
    operator = benchmark_operator(workload.image)
    y = measurement(workload, operator, "cuda")
    before = graph_pool_free_bytes()
    run, _ = restoration(workload, model, operator, y, "cudagraph-fp32")
    pool = graph_pool_free_bytes() - before
    assert pool >= 4 * 32 * 32 * 32 * 4  # at least one float32 hidden activation of the batch
    # without the pool the peak is the weights, static buffers and one restoration's outputs: far less
    assert peak_memory(run, "cuda") >= pool + sum(p.numel() * p.element_size() for p in model.parameters())
