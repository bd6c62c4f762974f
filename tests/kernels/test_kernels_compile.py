"""The fused ops trace into one torch.compile graph, do not recompile per step, and
(on a GPU) replay inside a CUDA graph."""
from __future__ import annotations

import pytest
import torch
import torch._dynamo
from torch._dynamo.testing import CompileCounterWithBackend

from dpfast.kernels import available_backends, dps_update, dps_update_ref, reverse_step, reverse_step_ref
from dpfast.noise import seed_tensor
from dpfast.testing import assert_close
from kernel_cases import coefficient_row, noise_scale


def sampler_step(x, model_output, row, scale, seed_words, step, data_grad, network_vjp, residual, zeta, backend):
    """The elementwise part of one DPS step, as the sampler runs it (SPEC §4)."""
    pred_x0, x_prime = reverse_step(x, model_output, row, scale, seed_words=seed_words, step=step, backend=backend)
    return pred_x0, dps_update(x_prime, data_grad, network_vjp, residual, zeta, row, backend=backend)


def reference_step(x, model_output, row, scale, seed_words, step, data_grad, network_vjp, residual, zeta):
    pred_x0, x_prime = reverse_step_ref(x, model_output, row, scale, seed_words=seed_words, step=step)
    return pred_x0, dps_update_ref(x_prime, data_grad, network_vjp, residual, zeta, row)


def step_arguments(device: str, step: int, batch: int = 2) -> dict:
    generator = torch.Generator().manual_seed(step)
    shape = (batch, 3, 8, 8)

    def randn(*size):
        return torch.randn(*size, generator=generator).to(device)

    return dict(
        x=randn(*shape), model_output=randn(*shape), row=coefficient_row("fixed_small", step, device),
        scale=noise_scale("lam_mixed", batch, device), seed_words=seed_tensor(5, batch, device),
        step=torch.tensor(step, device=device), data_grad=0.1 * randn(*shape), network_vjp=0.1 * randn(*shape),
        residual=0.05 * randn(batch, 3, 4, 4), zeta=torch.ones(batch, device=device),
    )


@pytest.mark.parametrize("backend", ["auto"] + [b for b in ("cpp", "triton") if b in available_backends("cpu")])
def test_compiled_step_has_no_graph_break_and_no_recompile(backend):
    torch._dynamo.reset()
    counter = CompileCounterWithBackend("inductor")
    compiled = torch.compile(sampler_step, backend=counter, fullgraph=True, dynamic=False)
    for step in (500, 499, 17):  # a new step tensor and row each call, same shapes
        arguments = step_arguments("cpu", step)
        got = compiled(**arguments, backend=backend)
        want = reference_step(**arguments)
        for actual, expected in zip(got, want):
            assert_close(actual, expected, torch.float32)
    assert counter.frame_count == 1, f"compiled {counter.frame_count} times for 3 steps"
    ops = {str(node.target) for node in counter.graphs[0].graph.nodes if node.op == "call_function"}
    suffix = "_triton" if backend == "triton" else ""
    if backend == "auto" and "cpp" not in available_backends("cpu"):
        return  # auto ran the reference: nothing of ours to find in the graph
    assert any(f"dpfast.reverse_step{suffix}" in op for op in ops), ops
    assert any(f"dpfast.dps_update{suffix}" in op for op in ops), ops


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device visible")
@pytest.mark.parametrize("backend", ["cuda", "triton"])
def test_step_replays_in_a_cuda_graph(backend):
    if backend not in available_backends("cuda"):
        pytest.skip(f"backend {backend!r} unavailable on cuda")
    static = step_arguments("cuda", 500, batch=4)
    sampler_step(**static, backend=backend)  # warm up (Triton compiles, allocator pools)
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static_out = sampler_step(**static, backend=backend)
    for step in (321, 7):
        fresh = step_arguments("cuda", step, batch=4)
        for key, value in fresh.items():
            static[key].copy_(value)  # the step index too: it is read on the device
        graph.replay()
        torch.cuda.synchronize()
        for actual, expected in zip(static_out, reference_step(**fresh)):
            assert_close(actual, expected, torch.float32)
