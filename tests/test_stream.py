import queue
import threading

import pytest
import torch

from dpfast.models.toy import ToyConvScore
from dpfast.operators import Identity
from dpfast.sampler import Sampler
from dpfast.stream import Stream

SHAPE = (1, 8, 8)


@pytest.fixture(scope="module")
def sampler():
    return Sampler(ToyConvScore(SHAPE, hidden=8), Identity(), steps=2)


def _frame(index: int) -> torch.Tensor:
    return torch.full(SHAPE, (index % 50) / 50.0 - 0.5)


def _rss_bytes() -> int:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * 4096


def test_two_producers_200_frames_return_in_order_with_bounded_memory(sampler):
    """200 frames from two threads; every ticket's result equals restoring that frame alone."""
    stream = Stream(sampler, batch=8, lam=0.5, max_delay=0.01, max_pending=32, seed=7)
    tickets: dict[int, int] = {}
    issued: queue.Queue = queue.Queue()
    errors: list[BaseException] = []
    max_pending_seen = []

    def produce(indices):
        try:
            for index in indices:
                ticket = stream.submit(_frame(index), timeout=60)
                tickets[index] = ticket
                issued.put(ticket)
                max_pending_seen.append(stream.pending)
        except BaseException as error:  # surfaced by the assertion below
            errors.append(error)

    collected: dict[int, torch.Tensor] = {}
    rss = {}

    def consume():
        try:
            for count in range(200):
                ticket = issued.get(timeout=60)
                collected[ticket] = stream.result(ticket, timeout=60)
                if count == 20:
                    rss["after_warmup"] = _rss_bytes()
        except BaseException as error:
            errors.append(error)

    threads = [threading.Thread(target=consume)]
    threads += [threading.Thread(target=produce, args=(range(i, 200, 2),)) for i in (0, 1)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    stream.close(timeout=30)
    assert not errors, errors
    assert sorted(tickets.values()) == list(range(200)) and sorted(collected) == list(range(200))
    assert max(max_pending_seen) <= 32 and stream.pending == 0
    # memory: 180 more frames after warm-up must not grow the process by more than 20 MB
    # (each frame is 256 bytes; kept results or autograd graphs would show as MBs)
    assert _rss_bytes() - rss["after_warmup"] < 20 * 2**20
    for index in (0, 1, 57, 199):
        ticket = tickets[index]
        alone = sampler.restore(_frame(index)[None], lam=0.5, seed=7 + ticket)[0]
        torch.testing.assert_close(collected[ticket], alone, rtol=1e-4, atol=1e-4)


def test_map_yields_in_order_and_close_joins(sampler):
    with Stream(sampler, batch=4, lam=0.0, max_pending=6) as stream:
        outputs = list(stream.map(_frame(i) for i in range(15)))
    assert len(outputs) == 15 and not stream._worker.is_alive()
    with pytest.raises(RuntimeError, match="closed Stream"):
        stream.submit(_frame(0))


def test_reuse_noise_gives_identical_outputs_for_identical_frames(sampler):
    with Stream(sampler, batch=3, lam=1.0, reuse_noise=True) as stream:
        first, second = list(stream.map([_frame(3), _frame(3)]))
    torch.testing.assert_close(first, second, rtol=1e-5, atol=1e-5)


def test_back_pressure_times_out_when_nobody_collects(sampler):
    with Stream(sampler, batch=2, max_pending=2) as stream:
        stream.submit(_frame(0))
        stream.submit(_frame(1))
        with pytest.raises(TimeoutError, match="2 frames are waiting to be collected"):
            stream.submit(_frame(2), timeout=0.2)
        stream.result(0), stream.result(1)


def test_bad_frames_and_arguments_are_rejected(sampler):
    with pytest.raises(ValueError, match=r"frame must have shape \(1, 8, 8\)"):
        with Stream(sampler) as stream:
            stream.submit(torch.zeros(1, 9, 9))
    with pytest.raises(ValueError, match="lam must lie in"):
        Stream(sampler, lam=2.0)
    with pytest.raises(ValueError, match="batch must lie in"):
        Stream(sampler, batch=0)
    with pytest.raises(ValueError, match="holds 1 NaN or Inf"):
        with Stream(sampler) as stream:
            frame = _frame(0)
            frame[0, 0, 0] = float("nan")
            stream.submit(frame)


def test_a_ticket_collected_twice_is_an_error_not_a_hang(sampler):
    with Stream(sampler, batch=2) as stream:
        ticket = stream.submit(_frame(0))
        stream.result(ticket)
        with pytest.raises(ValueError, match="ticket 0 was already collected"):
            stream.result(ticket, timeout=5)
        with pytest.raises(ValueError, match="ticket 7 was never issued"):
            stream.result(7)


def test_leaving_map_early_frees_the_frames_it_submitted_ahead(sampler):
    """map() had 4 frames submitted ahead when the consumer stopped after one: their slots come back."""
    with Stream(sampler, batch=2, max_pending=4) as stream:
        outputs = stream.map(_frame(i) for i in range(10))
        next(outputs)
        outputs.close()  # three frames were still in flight
        tickets = [stream.submit(_frame(i), timeout=10) for i in range(4)]  # blocks forever without the release
        assert [stream.result(ticket).shape for ticket in tickets] == [SHAPE] * 4
        assert stream.pending == 0
        with pytest.raises(ValueError, match="already collected"):
            stream.result(1)  # abandoned by the map
