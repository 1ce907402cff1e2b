"""Decoder services: what the query driver decodes holes with (``runtime.decode.DecoderService``).

:class:`LocalDecoder` serves an in-process backend; :class:`BatchedDecoder` serves it to many queries of one process
at once (``lmqc.run_async``, async query functions, ``lmqc.stream``): their holes are decoded by one worker thread
(``runtime.scheduler.Scheduler``, as ``lmqc serve`` does) that merges the pending sequences of every running hole
into one batched model evaluation per step. ``runtime.client.RemoteModel`` serves the model of an ``lmqc serve``
process. :func:`decoder_service` picks one for a model spec.

Both in-process services take the backend's lock (:func:`backend_lock`) around every use of the backend, so
queries in several threads (a synchronous ``lmqc.run`` beside running async queries) never use it at once.
Decoding can report progress: ``decode(request, observer)`` calls ``observer`` after every step with each
branch's value bytes so far (:func:`progress`), for streaming.
"""

from __future__ import annotations

import queue
import threading
import weakref
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from lmqc.errors import LmqcError

from . import decode
from .decode import Completion, DecodeRequest, DecoderService

__all__ = [
    "BatchedDecoder", "LocalDecoder", "Progress", "QueryCancelled", "backend_lock", "batched_service",
    "decoder_service", "progress", "scheduler_for",
]

# (branch index in the request, value bytes so far) of every branch whose value can be shown
Progress = list[tuple[int, bytes]]

_LOCKS: weakref.WeakKeyDictionary[Any, threading.RLock] = weakref.WeakKeyDictionary()
_REGISTRY_LOCK = threading.Lock()
_SCHEDULERS: dict[int, tuple[Any, Any]] = {}  # id(backend) -> (backend, Scheduler); loaded models live as long


class QueryCancelled(LmqcError):
    """The caller of a query stopped waiting for it (a cancelled task, a stream closed early)."""


def _loaded(backend: Any) -> Any:
    """A backend, also when given as the ``lmqc.model(...)`` object holding it."""
    from lmqc.llm import LLM

    return backend.backend if isinstance(backend, LLM) else backend


def backend_lock(backend: Any) -> threading.RLock:
    """The lock every in-process use of ``backend`` holds (one per backend object)."""
    backend = _loaded(backend)
    with _REGISTRY_LOCK:
        lock = _LOCKS.get(backend)
        if lock is None:
            lock = _LOCKS[backend] = threading.RLock()
        return lock


def scheduler_for(backend: Any) -> Any:
    """The batching worker of an in-process backend, started on first use and shared by every query after.

    It batches up to ``backend.n_seq`` sequences per step (the KV-cache slots; more are evaluated in groups).
    """
    from .scheduler import Scheduler

    backend = _loaded(backend)
    with _REGISTRY_LOCK:
        hit = _SCHEDULERS.get(id(backend))
        if hit is None or hit[0] is not backend:
            lock = _LOCKS.get(backend)
            if lock is None:
                lock = _LOCKS[backend] = threading.RLock()
            max_batch = max(1, int(getattr(backend, "n_seq", 8)))
            hit = _SCHEDULERS[id(backend)] = (backend, Scheduler(backend, max_batch, lock=lock))
        return hit[1]


def progress(run: decode.HoleRun) -> Progress:
    """What a hole's branches have decoded so far, for streaming (argmax and sample; a beam shows nothing).

    A running value holds back its last ``len(longest stop phrase) - 1`` bytes (they may yet begin a stop phrase
    that is cut off); an ended value is shown up to its cut, so what was shown is always a prefix of the value.
    """
    if run.beam is not None or run.dec is None:
        return []
    out: Progress = []
    for s in run.seqs:
        if s.ending is None:
            n = len(s.value) - max(0, s.hole.maxphr - 1)
        else:
            n = len(s.value) if s.cut is None else s.cut
        out.append((s.parent, bytes(s.value[: max(0, n)])))
    return out


class LocalDecoder:
    """The decoder service of an in-process model: tokenization, :func:`decode.decode` and
    :func:`decode.score_options` on a loaded backend.
    """

    #: ``decode`` takes an observer that gets each branch's progress after every step (streaming)
    streams_progress = True

    def __init__(self, backend: Any) -> None:
        self.backend = backend = _loaded(backend)
        self.lock = backend_lock(backend)

    @property
    def fingerprint(self) -> str:
        return self.backend.vocabulary.fingerprint

    @property
    def vocabulary(self) -> Any:
        return self.backend.vocabulary

    def begin(self) -> None:
        """Start a query from an empty KV cache.

        llama.cpp's logits depend slightly on where a sequence's cells sit in the shared cache, so a seeded
        sample could otherwise change with whatever ran earlier in the process. Re-evaluating a prompt costs
        one batched step.
        """
        with self.lock:
            self.backend.reset()

    def tokenize(self, text: str | bytes, *, bos: bool = False, special: bool = False) -> list[int]:
        with self.lock:
            if special:
                try:
                    return self.backend.tokenize(text, bos=bos, special=True)
                except TypeError:  # a backend without control-token parsing
                    pass
            return self.backend.tokenize(text, bos=bos)

    def decode(self, request: DecodeRequest, observer: Callable[[Progress], None] | None = None) -> list[Completion]:
        """Fill one hole (:func:`decode.decode`); ``observer`` gets :func:`progress` after every step."""
        with self.lock:
            if observer is None:
                return decode.decode(self.backend, request)
            run = decode.HoleRun(self.backend, request)
            while True:
                todo = run.pending()
                if run.done:
                    return run.completions()
                run.apply(decode.eval_seqs(self.backend, todo))
                observer(progress(run))

    def score_options(self, context: Sequence[int], options: Sequence[Sequence[int]]) -> np.ndarray:
        with self.lock:
            return decode.score_options(self.backend, context, options)


class BatchedDecoder(LocalDecoder):
    """One query's decoder service on an in-process backend shared with concurrent queries (module docstring).

    Each hole is a job of the backend's :func:`scheduler_for` worker: it joins the holes running there and every
    step evaluates all of their sequences at once. Each query keeps its own generator, drawn in its own branch
    order, so results equal a query run alone whenever the backend's logits do not depend on the batch (true of
    the tiny backend; llama.cpp's differ in the last bits, which can flip near-ties).

    The KV cache is not reset when a query begins (other queries are using it). :meth:`cancel` stops the query:
    its running hole is dropped before the next step and the query raises :class:`QueryCancelled`.
    """

    def __init__(self, backend: Any, scheduler: Any | None = None) -> None:
        super().__init__(backend)
        self.scheduler = scheduler if scheduler is not None else scheduler_for(backend)
        self._cancelled = False
        self._job: Any = None

    def begin(self) -> None:
        pass  # the cache holds other queries' sequences; a reset would only cost them their prefixes

    def cancel(self) -> None:
        self._cancelled = True
        job, self._job = self._job, None
        if job is not None:
            job.cancelled = True
            job.future.cancel()  # wakes the waiting thread if the job is still queued

    def _run(self, job: Any, observer: Callable[[Progress], None] | None = None) -> dict[str, Any]:
        if self._cancelled:
            raise QueryCancelled("the query was cancelled")
        events: queue.SimpleQueue[Any] = queue.SimpleQueue()
        if observer is not None:
            job.on_step = lambda run: events.put(progress(run))  # on the worker: copies, no user code
        job.future.add_done_callback(lambda _: events.put(None))
        self._job = job
        if self._cancelled:
            job.cancelled = True  # cancel() ran before the job was visible to it
        self.scheduler.submit(job)
        try:
            while (item := events.get()) is not None:
                if observer is not None:
                    observer(item)
        except BaseException:
            job.cancelled = True  # the observer gave up (a closed stream): drop the hole before its next step
            raise
        finally:
            self._job = None
        if self._cancelled or job.future.cancelled():
            raise QueryCancelled("the query was cancelled")
        return job.future.result()

    def decode(self, request: DecodeRequest, observer: Callable[[Progress], None] | None = None) -> list[Completion]:
        from .scheduler import Job

        return self._run(Job("decode", {"request": request}, ("step",)), observer)["completions"]

    def score_options(self, context: Sequence[int], options: Sequence[Sequence[int]]) -> np.ndarray:
        from .scheduler import Job

        job = Job("score", {"context": list(context), "options": [list(o) for o in options]})
        return np.asarray(self._run(job)["logprobs"], dtype=np.float64)


def decoder_service(spec: str) -> DecoderService:
    """The decoder service for a model spec: a remote one for ``lmqc://HOST:PORT``, else the loaded model."""
    from .models import get_model

    model = get_model(spec)
    return model if hasattr(model, "decode") else LocalDecoder(model)


def batched_service(spec: str) -> DecoderService:
    """The decoder service for one of many concurrent queries: a :class:`BatchedDecoder` on an in-process model,
    else the spec's own service (a server or a vLLM engine batches by itself)."""
    from .models import get_model

    model = get_model(spec)
    return model if hasattr(model, "decode") else BatchedDecoder(model)
