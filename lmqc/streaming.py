"""Streaming a query's progress: callbacks, LMQL's output writers, and iterators of events.

Every way of streaming ends in one callable that takes a ``StreamEvent`` (``runtime.query.StreamEvent``), called
in the thread that runs the query:

* ``lmqc.run(..., on_token=fn)``: ``fn(event)`` for every event;
* ``output_writer=``, as in LMQL: ``lmqc.printing`` (the prompt as it grows), ``lmqc.stream("VAR")`` (one
  variable's text as it is decoded), ``lmqc.silent`` / ``lmqc.headless`` (nothing), any callable taking an event,
  or an object with LMQL's ``add_interpreter_head_state`` method (plain or ``async``);
* :class:`QueryStream` (``lmqc.stream(query, **inputs)``, ``fn.stream(...)`` of a query function): iterate it with
  ``for`` or ``async for``; the query runs in a worker thread, batched with other concurrent queries on the same
  in-process model, and the events arrive in the iterating thread or task. Leaving the loop early stops the
  query before its next decoding step.
"""

from __future__ import annotations

import asyncio
import inspect
import queue
import sys
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any, TextIO

__all__ = [
    "QueryStream", "VariableWriter", "PrintingWriter", "headless", "printing", "silent", "sink",
]

Sink = Callable[[Any], None]


def __getattr__(name: str) -> Any:
    if name == "StreamEvent":  # defined by the runtime; imported lazily so that ``import lmqc`` stays cheap
        from lmqc.runtime.query import StreamEvent

        return StreamEvent
    raise AttributeError(name)


class PrintingWriter:
    """``output_writer=lmqc.printing``: prints the prompt of branch 0 as it grows (prompt text and decoded tokens),
    then a newline when the query is done."""

    def __init__(self, file: TextIO | None = None) -> None:
        self.file = file

    def __call__(self, event: Any) -> None:
        out = self.file or sys.stdout
        if event.kind in ("prompt", "token") and event.branch == 0:
            out.write(event.text)
            out.flush()
        elif event.kind == "result":
            out.write("\n")
            out.flush()


class VariableWriter:
    """``output_writer=lmqc.stream("VAR")``: prints the text of hole ``VAR`` (branch 0) as it is decoded, and a
    newline when it is done."""

    def __init__(self, variable: str, file: TextIO | None = None) -> None:
        self.variable = variable
        self.file = file

    def __call__(self, event: Any) -> None:
        if event.variable != self.variable or event.branch != 0 or event.kind not in ("token", "value"):
            return
        out = self.file or sys.stdout
        out.write(event.text if event.kind == "token" else "\n")
        out.flush()

    def __repr__(self) -> str:
        return f"lmqc.stream({self.variable!r})"


class _Silent:
    def __call__(self, event: Any) -> None:
        pass


printing = PrintingWriter()
silent = _Silent()
headless = silent  # LMQL's headless differs only for input(), which queries here cannot call


class _LMQLWriter:
    """An LMQL output writer (``add_interpreter_head_state(variable, head, prompt, where, trace, is_valid,
    is_final, mask, num_tokens, program_variables)``) fed from events: ``head`` is the branch, ``prompt`` that
    branch's prompt so far, ``is_final`` true for a finished hole and for the result."""

    def __init__(self, writer: Any) -> None:
        self.writer = writer
        self.prompts: dict[int, str] = {}
        self.variables: dict[int, dict[str, Any]] = {}
        self.tokens: dict[int, int] = {}
        self.loop: asyncio.AbstractEventLoop | None = None

    def __call__(self, event: Any) -> None:
        b = event.branch
        if event.kind in ("prompt", "token"):
            self.prompts[b] = self.prompts.get(b, "") + event.text
        if event.kind == "token":
            self.tokens[b] = self.tokens.get(b, 0) + 1
        if event.kind == "value":
            self.variables.setdefault(b, {})[event.variable] = event.value
        if event.kind == "prompt":
            return
        if event.kind == "result":
            results = event.result if isinstance(event.result, list) else [event.result]
            for i, r in enumerate(results):
                self._call(None, i, r.prompt, True, dict(r.variables), self.tokens.get(i, 0))
            return
        self._call(event.variable, b, self.prompts.get(b, ""), event.kind == "value",
                   dict(self.variables.get(b, {})), self.tokens.get(b, 0))

    def _call(self, variable: Any, head: int, prompt: str, final: bool, variables: dict[str, Any], n: int) -> None:
        out = self.writer.add_interpreter_head_state(
            variable, head, prompt, None, None, True, final, None, n, variables
        )
        if inspect.isawaitable(out):
            # the query's own thread has no running loop: drive the writer's coroutine on a private one
            if self.loop is None:
                self.loop = asyncio.new_event_loop()
            self.loop.run_until_complete(_await(out))


async def _await(awaitable: Any) -> Any:
    return await awaitable


def _writer(w: Any) -> Sink:
    if hasattr(w, "add_interpreter_head_state"):
        return _LMQLWriter(w)
    if callable(w):
        return w
    raise TypeError(
        f"output_writer must be lmqc.printing, lmqc.stream('VAR'), a callable taking a StreamEvent or an object "
        f"with add_interpreter_head_state, not {type(w).__name__}"
    )


def sink(on_token: Sink | None = None, output_writer: Any = None, *more: Sink | None) -> Sink | None:
    """The one event callable of a run: ``on_token``, the output writer and any more, in that order (None when
    nothing listens, so the run streams nothing)."""
    if on_token is not None and not callable(on_token):
        raise TypeError(f"on_token must be callable, not {type(on_token).__name__}")
    sinks = [s for s in (on_token, _writer(output_writer) if output_writer is not None else None, *more) if s is not None]
    if not sinks:
        return None
    if len(sinks) == 1:
        return sinks[0]

    def all_of(event: Any) -> None:
        for s in sinks:
            s(event)

    return all_of


class _Call:
    """One query run in a worker thread: its decoder service, so that whoever waits for it can cancel it."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._service: Any = None
        self.cancelled = False

    def attach(self, service: Any) -> None:
        with self._lock:
            self._service = service
            if self.cancelled:
                _cancel(service)

    def cancel(self) -> None:
        with self._lock:
            self.cancelled = True
            if self._service is not None:
                _cancel(self._service)


def _cancel(service: Any) -> None:
    cancel = getattr(service, "cancel", None)
    if callable(cancel):
        cancel()


_END = object()


class _Failed:
    def __init__(self, error: BaseException) -> None:
        self.error = error


class QueryStream:
    """The events of one query run, for ``for`` or ``async for`` (see the module docstring).

    The last event is ``kind == "result"``; :attr:`result` holds the same value once the iteration is done. Each
    iteration runs the query anew. An error of the query is raised by the iteration, after the events before it.
    """

    def __init__(self, start: Callable[[Sink, _Call], Any]) -> None:
        self._start = start
        self.result: Any = None

    def __iter__(self) -> Iterator[Any]:
        events: queue.SimpleQueue[Any] = queue.SimpleQueue()
        call = _Call()

        def work() -> None:
            try:
                self.result = self._start(events.put, call)
                events.put(_END)
            except BaseException as e:  # noqa: BLE001 - handed to the iterating thread
                events.put(_Failed(e))

        threading.Thread(target=work, name="lmqc-stream", daemon=True).start()
        try:
            while True:
                item = events.get()
                if item is _END:
                    return
                if isinstance(item, _Failed):
                    raise item.error
                yield item
        finally:
            call.cancel()  # after the end a no-op; after an early exit the query stops at its next step

    async def __aiter__(self) -> AsyncIterator[Any]:
        from .api import _executor

        loop = asyncio.get_running_loop()
        events: asyncio.Queue[Any] = asyncio.Queue()
        call = _Call()

        def put(event: Any) -> None:
            loop.call_soon_threadsafe(events.put_nowait, event)

        fut = loop.run_in_executor(_executor(), self._start, put, call)
        # scheduled after every event the query put before it returned (call_soon_threadsafe keeps order)
        fut.add_done_callback(lambda _: events.put_nowait(_END))
        try:
            while True:
                item = await events.get()
                if item is _END:
                    break
                yield item
            self.result = fut.result()
        finally:
            if not fut.done():
                call.cancel()
