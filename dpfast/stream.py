"""A streaming front end for real-time pipelines: frames in, restorations out, in order.

``Stream`` owns one worker thread and one sampler. Producers ``submit`` measurements one
at a time (from any number of threads) and get a ticket; the worker groups pending frames
into batches of up to ``batch`` frames or whatever arrived within ``max_delay`` seconds,
restores each batch in one sampler call, and hands the results back by ticket.

Back-pressure: at most ``max_pending`` frames may be submitted and not yet collected;
``submit`` blocks (or times out) beyond that, so memory stays bounded however fast the
producers are.

Seeds: frame ``i`` (its ticket) is restored with seed ``seed + i``, so a frame's result
does not depend on how it was batched. With ``reuse_noise=True`` every frame uses the
same seed ``seed`` — the same x_T and the same per-step noise — which keeps consecutive
frames of a video from flickering: similar measurements give similar restorations.
"""
from __future__ import annotations

import queue
import threading
import time
from collections.abc import Iterable, Iterator

import torch

from dpfast import validation

_CLOSE = object()


class Stream:
    """Batching, ordered, thread-safe restoration of a stream of frames.

    Args:
        sampler: a :class:`dpfast.Sampler` (its model, operator, steps, ζ, mode).
        batch: largest batch the worker restores at once.
        lam: λ ∈ [0, 1] for every frame.
        sigma_n: the measurement noise level (validated, recorded; see ``Sampler.restore``).
        max_delay: seconds the worker waits for a batch to fill before running a partial one.
        max_pending: frames submitted but not yet collected before ``submit`` blocks.
        seed: base seed (frame i uses ``seed + i``, or ``seed`` with ``reuse_noise``).
        reuse_noise: the same noise for every frame (temporal stability), see above.

    Example:
        >>> with dp.Stream(sampler, batch=8, lam=0.3) as stream:
        ...     outputs = list(stream.map(frames))      # one (C,H,W) tensor per frame, in order
    """

    def __init__(
        self,
        sampler,
        batch: int = 8,
        lam: float = 0.5,
        sigma_n: float | None = None,
        max_delay: float = 0.02,
        max_pending: int = 64,
        seed: int = 0,
        reuse_noise: bool = False,
    ):
        from dpfast.sampler import Sampler

        if not isinstance(sampler, Sampler):
            raise TypeError(f"sampler must be a dpfast.Sampler, got {type(sampler).__name__}")
        self.sampler = sampler
        self.batch = validation.check_positive_int("batch", batch)
        self.lam = validation.check_lam(lam)
        self.sigma_n = validation.check_sigma_n(sigma_n)
        self.max_delay = validation.check_number("max_delay", max_delay, 0.0)
        self.max_pending = validation.check_positive_int("max_pending", max_pending)
        self.seed = validation.check_positive_int("seed", seed, 0)
        self.reuse_noise = bool(reuse_noise)
        self.frame_shape = tuple(sampler.operator.output_shape((1,) + sampler.image_shape)[1:])
        self._inbox: queue.Queue = queue.Queue()
        self._slots = threading.BoundedSemaphore(self.max_pending)
        self._lock = threading.Lock()
        self._ready = threading.Condition(self._lock)
        self._results: dict[int, torch.Tensor | BaseException] = {}
        self._uncollected: set[int] = set()  # tickets issued and not yet collected (or abandoned)
        self._abandoned: set[int] = set()  # uncollected tickets whose results are to be dropped
        self._next_ticket = 0
        self._closed = False
        self._worker = threading.Thread(target=self._work, name="dpfast-stream", daemon=True)
        self._worker.start()

    # ----------------------------------------------------------------- producers
    def submit(self, frame: torch.Tensor, timeout: float | None = None) -> int:
        """Queue one measurement ``frame`` (shape ``frame_shape``); returns its ticket.

        Blocks while ``max_pending`` frames are uncollected; raises ``TimeoutError`` after
        ``timeout`` seconds and ``RuntimeError`` once the stream is closed.
        """
        validation.check_tensor("frame", frame, self.frame_shape)
        if self._closed:
            raise RuntimeError("submit() on a closed Stream")
        if not self._slots.acquire(timeout=timeout):
            raise TimeoutError(f"no free slot within {timeout} s: {self.max_pending} frames are waiting to be collected")
        with self._lock:
            if self._closed:
                self._slots.release()
                raise RuntimeError("submit() on a closed Stream")
            ticket = self._next_ticket
            self._next_ticket += 1
            self._uncollected.add(ticket)
            # put under the lock so tickets enter the queue in ticket order
            self._inbox.put((ticket, frame.detach()))
        return ticket

    def result(self, ticket: int, timeout: float | None = None) -> torch.Tensor:
        """The restoration of ``ticket`` (waits for it); each ticket can be collected once.

        Raises ``ValueError`` for a ticket this stream never issued or that was already
        collected, ``TimeoutError`` after ``timeout`` seconds (the ticket stays collectable).
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._ready:
            if not 0 <= ticket < self._next_ticket:
                raise ValueError(f"ticket {ticket} was never issued by this Stream")
            while ticket not in self._results:
                if ticket not in self._uncollected or ticket in self._abandoned:  # collected before, or meanwhile by another thread
                    raise ValueError(f"ticket {ticket} was already collected (or abandoned by an unfinished map())")
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    raise TimeoutError(f"frame {ticket} not restored within {timeout} s")
                if not self._worker.is_alive():
                    raise RuntimeError(f"the stream's worker stopped before restoring frame {ticket}")
                self._ready.wait(remaining if remaining is not None else 0.5)
            outcome = self._results.pop(ticket)
            self._uncollected.discard(ticket)
        self._slots.release()
        if isinstance(outcome, BaseException):
            raise RuntimeError(f"restoring frame {ticket} failed: {outcome}") from outcome
        return outcome

    def map(self, frames: Iterable[torch.Tensor]) -> Iterator[torch.Tensor]:
        """Restore an iterable of frames, yielding results in order while submitting ahead.

        Stopping early (``break``, or closing the generator) abandons the frames it had
        submitted ahead: their results are dropped as they arrive and their slots freed, so
        a later ``submit`` does not block on them.
        """
        submitted: list[int] = []
        try:
            for frame in frames:
                while len(submitted) >= self.max_pending:
                    yield self.result(submitted.pop(0))
                submitted.append(self.submit(frame))
            while submitted:
                yield self.result(submitted.pop(0))
        finally:
            self._abandon(submitted)

    def _abandon(self, tickets: list[int]) -> None:
        """Drop the results of uncollected ``tickets`` (now or when they arrive) and free their slots."""
        freed = 0
        with self._lock:
            for ticket in tickets:
                if ticket not in self._uncollected:
                    continue
                if ticket in self._results:
                    del self._results[ticket]
                    self._uncollected.discard(ticket)
                    freed += 1
                else:
                    self._abandoned.add(ticket)
        for _ in range(freed):
            self._slots.release()

    # -------------------------------------------------------------------- worker
    def _work(self) -> None:
        while True:
            first = self._inbox.get()
            if first is _CLOSE:
                return
            pending = [first]
            deadline = time.monotonic() + self.max_delay
            closing = False
            while len(pending) < self.batch:
                remaining = deadline - time.monotonic()
                try:
                    item = self._inbox.get(timeout=max(remaining, 0.0)) if remaining > 0 else self._inbox.get_nowait()
                except queue.Empty:
                    break
                if item is _CLOSE:
                    closing = True
                    break
                pending.append(item)
            self._restore(pending)
            if closing:
                return

    def _restore(self, pending: list) -> None:
        tickets = [ticket for ticket, _ in pending]
        seeds = [self.seed if self.reuse_noise else self.seed + ticket for ticket in tickets]
        try:
            frames = torch.stack([frame for _, frame in pending])
            outcomes = list(self.sampler.restore(frames, lam=self.lam, sigma_n=self.sigma_n, seed=seeds))
        except BaseException as error:  # handed to whoever collects these frames
            outcomes = [error] * len(tickets)
        dropped = 0
        with self._ready:
            for ticket, outcome in zip(tickets, outcomes):
                if ticket in self._abandoned:
                    self._abandoned.discard(ticket)
                    self._uncollected.discard(ticket)
                    dropped += 1
                else:
                    self._results[ticket] = outcome
            self._ready.notify_all()
        for _ in range(dropped):
            self._slots.release()

    # ------------------------------------------------------------------ shutdown
    def close(self, timeout: float | None = None) -> None:
        """Stop accepting frames, restore those already queued, and join the worker."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._inbox.put(_CLOSE)
        self._worker.join(timeout)
        if self._worker.is_alive():
            raise TimeoutError(f"the stream's worker did not finish within {timeout} s")

    @property
    def pending(self) -> int:
        """Frames submitted and not yet collected (at most ``max_pending``; abandoned ones count until
        their results arrive)."""
        with self._lock:
            return len(self._uncollected)

    def __enter__(self) -> "Stream":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()
