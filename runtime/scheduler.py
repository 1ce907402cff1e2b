r"""The worker that owns an in-process backend and batches hole decoding step by step.

One worker thread owns the backend (llama.cpp contexts are not thread-safe) and does step-level continuous
batching of the holes submitted to it as :class:`Job`\ s: every running hole (:class:`runtime.decode.HoleRun`, one
per ``argmax``, ``sample`` or ``beam`` request) advances by one token per step with ONE batched model evaluation
(:func:`runtime.decode.eval_seqs` over every running hole's pending sequences). ``lmqc serve`` schedules its HTTP
requests with it (see ``runtime.server``, Scheduling), and the library's async API (``lmqc.run_async``, async query
functions) the holes of concurrent queries of one process (``runtime.service.BatchedDecoder``).
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from lmqc.errors import LmqcError

from . import decode

__all__ = ["DEFAULT_MAX_BATCH", "HTTPError", "Job", "Scheduler"]

DEFAULT_MAX_BATCH = 16
_YIELD_EVERY = 0.005  # the worker hands the GIL to the event loop at least this often (see Scheduler._yield_gil)
_YIELD_SLEEP = 0.0001


class HTTPError(Exception):
    """A request the server refuses: HTTP status, error code, message."""

    def __init__(self, status: int, code: str, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.extra = status, code, message, extra


class _Cancelled(Exception):
    """The request of a hole decoded alone is gone: stop decoding it."""


# -- the worker --------------------------------------------------------------------------------------------


@dataclass(eq=False)
class Job:
    """One request for the worker: a whole hole (``decode``: ``args["request"]``) or option scoring (``score``)."""

    kind: str
    args: dict[str, Any]
    # not None: the hole joins the running ones step by step; None: decoded alone (--no-merge, score)
    merge_key: tuple[Any, ...] | None = None
    future: concurrent.futures.Future = field(default_factory=concurrent.futures.Future)
    cancelled: bool = False
    # called by the worker after each step of a merged hole (the library streams values with it); if it raises,
    # the job fails with that error
    on_step: Callable[[decode.HoleRun], None] | None = None

    @property
    def n_branches(self) -> int:
        return len(self.args["request"].contexts) if self.kind == "decode" else 1

    @property
    def width(self) -> int:
        """Most sequences the job evaluates in one step (a beam: its width after the first step)."""
        return self.args["request"].width if self.kind == "decode" else 1


class _Guard:
    """The backend as a hole decoded alone sees it: stops at the next step if its request is gone."""

    def __init__(self, backend: Any, jobs: list[Job], stopping: Callable[[], bool]) -> None:
        self._b = backend
        self._jobs = jobs
        self._stopping = stopping

    def __getattr__(self, name: str) -> Any:
        return getattr(self._b, name)

    def _check(self) -> None:
        if all(j.cancelled for j in self._jobs) or self._stopping():
            raise _Cancelled

    def eval(self, contexts: Any) -> np.ndarray:
        self._check()
        return self._b.eval(contexts)

    def eval_rows(self, contexts: Any, rows: Any) -> list[np.ndarray]:
        self._check()
        return self._b.eval_rows(contexts, rows)


@dataclass(eq=False)
class _Live:
    """A request whose hole the worker is decoding step by step, with what its response reports."""

    job: Job
    run: decode.HoleRun
    requests: int = 1  # most requests that shared one model step with it
    branches: int = 0  # most sequences (of all requests) in one step with it


class Scheduler:
    """The worker thread that owns the backend; see the module docstring (Scheduling)."""

    def __init__(
        self,
        backend: Any,
        max_batch: int = DEFAULT_MAX_BATCH,
        after_job: Callable[[], None] | None = None,
        lock: Any = None,
    ) -> None:
        self.backend = backend
        # held by the worker while it uses the backend (one step, one job run alone): an in-process backend is
        # also used by the threads that tokenize for their queries (runtime.service.BatchedDecoder)
        self._lock = lock if lock is not None else contextlib.nullcontext()
        self._paused = False
        self.max_batch = max_batch
        self._after_job = after_job  # run by the worker before a result is handed over (lmqc serve trims its caches)
        self._cv = threading.Condition()
        self._queue: deque[Job] = deque()
        self._active: list[_Live] = []  # only the worker thread touches it
        self._period_requests = 0
        self._last_yield = 0.0
        self._closing = False
        self._abort = False
        self.stats: dict[str, int] = {
            "requests": 0, "batches": 0, "merged_batches": 0, "largest_batch": 0, "branches": 0, "tokens": 0,
            "cancelled": 0, "errors": 0, "steps": 0, "merged_steps": 0, "largest_step": 0, "most_requests_in_step": 0,
        }
        self._thread = threading.Thread(target=self._loop, name="lmqc-serve-worker", daemon=True)
        self._thread.start()

    def submit(self, job: Job) -> concurrent.futures.Future:
        with self._cv:
            if self._closing:
                raise HTTPError(503, "shutting_down", "the server is shutting down")
            self._queue.append(job)
            self.stats["requests"] += 1
            self._cv.notify()
        return job.future

    def pause(self) -> None:
        """Take no step and admit no job until :meth:`resume` (jobs queue up meanwhile; tests use this to make
        concurrent submissions meet in one batch deterministically)."""
        with self._cv:
            self._paused = True

    def resume(self) -> None:
        with self._cv:
            self._paused = False
            self._cv.notify_all()

    def queued(self) -> int:
        with self._cv:
            return len(self._queue)

    def close(self, *, abort: bool = False, timeout: float = 30.0) -> None:
        """Stop taking jobs; finish the queued and running ones (or cancel them with ``abort``); join the worker."""
        with self._cv:
            self._closing = True
            self._abort = abort
            if abort:
                for job in self._queue:
                    job.future.set_exception(HTTPError(503, "shutting_down", "the server is shutting down"))
                self._queue.clear()
            self._cv.notify_all()
        self._thread.join(timeout)

    # -- loop ---------------------------------------------------------------------------------------------

    def _next(self) -> tuple[list[Job], Job | None] | None:
        """Between two steps: the queued jobs that join the running holes now, and one job to run alone.

        Mergeable holes join while their branches fit in ``max_batch`` beside the running ones.
        A score job runs alone between two steps (one model call). With ``--no-merge`` a decode runs alone once
        no hole is running. Admission is FIFO: a job that cannot start yet
        holds back the decode jobs behind it, so a wide or beam request is not starved by later small ones.
        Waits while there is nothing to do; ``None`` when closing and idle.
        """
        with self._cv:
            while True:
                if self._paused and not self._closing:
                    self._cv.wait()
                    continue
                admitted: list[Job] = []
                alone: Job | None = None
                width = sum(live.run.width for live in self._active)
                rest: deque[Job] = deque()
                blocked = False
                for job in self._queue:
                    if job.cancelled:
                        self.stats["cancelled"] += 1
                        job.future.cancel()
                    elif blocked:
                        rest.append(job)
                    elif job.kind == "score":
                        if alone is None:
                            alone = job
                        else:
                            rest.append(job)
                    elif job.merge_key is None:
                        if not self._active and not admitted and alone is None:
                            alone = job
                        else:
                            rest.append(job)
                        blocked = True
                    elif width + job.width <= self.max_batch or (not self._active and not admitted):
                        admitted.append(job)
                        width += job.width
                    else:
                        rest.append(job)
                        blocked = True
                self._queue = rest
                if admitted or alone is not None or self._active:
                    return admitted, alone
                if self._closing:
                    return None
                self._cv.wait()

    def _loop(self) -> None:
        while True:
            nxt = self._next()
            if nxt is None:
                return
            admitted, alone = nxt
            try:
                with self._lock:
                    if alone is not None:
                        self._run_alone(alone)
                    for job in admitted:
                        self._admit(job)
                    stepped = bool(self._active)
                    if stepped:
                        self._step()
                if stepped:
                    self._yield_gil()
            except BaseException as e:  # noqa: BLE001 - the worker must survive anything a request causes
                for live in self._active:
                    if not live.job.future.done():
                        live.job.future.set_exception(e)
                self._active.clear()
                for job in [*admitted, *([alone] if alone is not None else [])]:
                    if not job.future.done():
                        job.future.set_exception(e)

    def _yield_gil(self) -> None:
        """Let the event loop run between steps (at most every ``_YIELD_EVERY`` seconds).

        NumPy releases and re-takes the GIL inside every large operation, so the worker re-takes it before a
        waiting thread wakes up, and CPython's forced switch never triggers: on a fast backend the event loop
        could not accept a new request (or notice a disconnect) until every running hole was done. A short
        sleep hands the GIL over for real.
        """
        now = time.perf_counter()
        if now - self._last_yield >= _YIELD_EVERY:
            time.sleep(_YIELD_SLEEP)
            self._last_yield = time.perf_counter()

    def _admit(self, job: Job) -> None:
        try:
            run = decode.HoleRun(self.backend, job.args["request"])
        except Exception as e:  # noqa: BLE001 - e.g. an unsatisfiable constraint: this request's error only
            self.stats["errors"] += 1
            job.future.set_exception(e)
            return
        if not self._active:  # a new busy period ("batch"): holes that overlap in time belong to it
            self.stats["batches"] += 1
            self._period_requests = 0
        self._period_requests += 1
        if self._period_requests == 2:
            self.stats["merged_batches"] += 1
        self._active.append(_Live(job, run))

    def _step(self) -> None:
        """Advance every running hole by one token: ONE batched model evaluation for all their sequences."""
        groups: list[tuple[_Live, list[Any]]] = []
        for live in list(self._active):
            if live.job.cancelled or self._abort:
                self._active.remove(live)
                self._cancel(live.job)
                continue
            try:
                todo = live.run.pending()
            except Exception as e:  # noqa: BLE001 - DecodeError (dead constraint) or a bug: this request only
                self._fail(live, e)
                continue
            if live.run.done:
                self._active.remove(live)
                self._complete(live)
                continue
            groups.append((live, todo))
        if not groups:
            return
        n_seqs = sum(len(t) for _, t in groups)
        width = sum(live.run.width for live, _ in groups)
        self.stats["steps"] += 1
        if len(groups) > 1:
            self.stats["merged_steps"] += 1
        self.stats["largest_step"] = max(self.stats["largest_step"], n_seqs)
        self.stats["largest_batch"] = max(self.stats["largest_batch"], width)
        self.stats["most_requests_in_step"] = max(self.stats["most_requests_in_step"], len(groups))
        for live, _ in groups:
            live.requests = max(live.requests, len(groups))
            live.branches = max(live.branches, width)
        try:
            logits = decode.eval_seqs(self.backend, [s for _, t in groups for s in t])
        except Exception as e:  # noqa: BLE001 - keep serving; the failure must stay the failing request's own
            if not isinstance(e, LmqcError):
                self.backend.reset()
            if len(groups) == 1:
                self._fail(groups[0][0], e)
                return
            # retry each request alone: a failed eval leaves the holes as they were, and the backend's KV-cache
            # bookkeeping consistent (a slot's tokens are recorded once in the cache; a partial feed rolls back)
            logits = None
        if logits is None:
            for live, todo in groups:
                try:
                    live.run.apply(decode.eval_seqs(self.backend, todo))
                    if live.job.on_step is not None:
                        live.job.on_step(live.run)
                except Exception as e:  # noqa: BLE001
                    if not isinstance(e, LmqcError):
                        self.backend.reset()
                    self._fail(live, e)
            return
        k = 0
        for live, todo in groups:
            rows = logits[k : k + len(todo)]
            k += len(todo)
            try:
                live.run.apply(rows)
                if live.job.on_step is not None:
                    live.job.on_step(live.run)
            except Exception as e:  # noqa: BLE001 - e.g. no allowed continuation: this request's error only
                self._fail(live, e)

    def _fail(self, live: _Live, e: BaseException) -> None:
        if live in self._active:
            self._active.remove(live)
        self.stats["errors"] += 1
        if not live.job.future.done():
            live.job.future.set_exception(e)

    def _complete(self, live: _Live) -> None:
        try:
            completions = live.run.completions()
        except Exception as e:  # noqa: BLE001
            self.stats["errors"] += 1
            live.job.future.set_exception(e)
            return
        batch = {"requests": live.requests, "branches": live.branches or live.run.width}
        self._finish(live.job, {"completions": completions, "rng": live.job.args["request"].rng, "batch": batch})

    def _run_alone(self, job: Job) -> None:
        """A score job, or a hole with ``--no-merge``: decoded whole, as one ``decode``."""
        self.stats["batches"] += 1
        self.stats["largest_batch"] = max(self.stats["largest_batch"], job.n_branches)
        if job.cancelled:
            self._cancel(job)
            return
        try:
            self._finish(job, self._execute(job))
        except _Cancelled:
            self._cancel(job)
        except LmqcError as e:
            self.stats["errors"] += 1
            job.future.set_exception(e)
        except Exception as e:  # noqa: BLE001 - report, reset the cache, keep serving
            self.stats["errors"] += 1
            self.backend.reset()
            job.future.set_exception(e)

    def _cancel(self, job: Job) -> None:
        self.stats["cancelled"] += 1
        if not job.future.done():
            job.future.set_exception(HTTPError(499, "cancelled", "the request was cancelled"))

    def _finish(self, job: Job, result: dict[str, Any]) -> None:
        if job.kind == "decode":
            self.stats["branches"] += job.n_branches
            self.stats["tokens"] += sum(len(c.tokens) for c in result["completions"])
        if self._after_job is not None:
            self._after_job()
        if not job.future.done():
            job.future.set_result(result)

    def _execute(self, job: Job) -> dict[str, Any]:
        guard = _Guard(self.backend, [job], lambda: self._abort)
        a = job.args
        if job.kind == "score":
            return {"logprobs": decode.score_options(guard, a["context"], a["options"])}
        completions = decode.decode(guard, a["request"])
        return {"completions": completions, "rng": a["request"].rng, "batch": {"requests": 1, "branches": job.n_branches}}
