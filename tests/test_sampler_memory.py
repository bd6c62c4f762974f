"""Issue #5 on the CPU: a restoration's memory does not grow with its step count (no autograd
graph survives a step), measured as the process's peak resident set (Linux /proc).

The measure is checked first: a loop that keeps its graph across the same 1000 steps grows
by hundreds of MiB under it. The CUDA version (peak allocated memory of bf16 + cudagraph
runs of 100 and 1000 steps) is in tests/test_sampler_modes.py.
"""
import pytest
import torch

from dpfast.benchmark import resident_now, resident_peak
from dpfast.models.toy import ToyConvScore
from dpfast.operators import GaussianBlur, measure
from dpfast.sampler import Sampler

STEPS = 1000
BATCH = 4
FLAT_MIB = 32  # allowed growth of the peak resident set over the memory held before a restoration


def _measurable() -> bool:
    return resident_peak(lambda: None) is not None and resident_now() is not None


pytestmark = pytest.mark.skipif(not _measurable(), reason="needs Linux /proc/self/clear_refs and /proc/self/status")


@pytest.fixture(scope="module")
def model():
    return ToyConvScore((1, 16, 16), hidden=16)


def growth_mib(run) -> float:
    before = resident_now()
    return (resident_peak(run) - before) / 2**20


@pytest.fixture()
def one_thread():
    """Tensors this small run fastest on one thread (and a busy machine makes two far slower)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def test_a_loop_that_keeps_its_graph_grows_far_past_the_bound(model, one_thread):
    """The instrument: 1000 forward passes chained through autograd (every step's activations kept)."""
    x = torch.randn(BATCH, 1, 16, 16, requires_grad=True)
    t = torch.full((BATCH,), 500)

    def leaking():
        state = x
        for _ in range(STEPS):
            state = state - 0.01 * model(state, t)
        return state

    assert growth_mib(leaking) > 4 * FLAT_MIB


def test_memory_stays_flat_over_1000_steps(model, one_thread):
    """The eager sampler (what ``mode="auto"`` runs on the CPU)."""
    operator = GaussianBlur(5, 1.0)
    y = measure(torch.zeros(BATCH, 1, 16, 16), operator, 0.05, seed=0)
    Sampler(model, operator, steps=10, zeta=1.0, mode="eager").restore(y, lam=0.5, seed=0)  # warm-up: first-call allocations
    sampler = Sampler(model, operator, steps=STEPS, zeta=1.0, mode="eager")
    restored = []
    growth = growth_mib(lambda: restored.append(sampler.restore(y, lam=0.5, seed=0)))
    assert torch.isfinite(restored[0]).all()
    assert growth < FLAT_MIB, f"peak resident set grew by {growth:.1f} MiB over {STEPS} steps"
