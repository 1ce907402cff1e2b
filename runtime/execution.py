"""One execution of a query's prompt program: the Python state of one branch.

The program is a generator function compiled from the query body (``compiler.program``). An ``Execution``
drives it: ``send(value)`` sends the value of the hole the program waits on and runs the Python that follows,
up to the next hole, collecting the prompt effects on the way (text, role switches, nested queries entered and
left). Python code runs once per branch: nothing is replayed after a hole.

A generator cannot be copied. When a branch forks (beam search keeps two continuations of one branch; sampling
``n`` continuations of a prompt), :meth:`Execution.fork` replays a fresh generator with the branch's *trace*:
every value sent so far (hole values, awaited results), in order. That re-runs the branch's Python, as LMQL
does, and only when a branch actually forks.

Nested queries (``[X: fn(args)]`` with a query function ``fn``) run as frames on the same branch: their prompt
continues the outer one while they decode, and when they return a value their prompt is replaced by that value
(``Effect("leave", ...)``); without a return value their text stays (a macro, as in LMQL) and ``X`` is the
nested query's last hole value.
"""

from __future__ import annotations

import asyncio
import inspect
from collections import deque
from collections.abc import Callable, Generator, Mapping
from dataclasses import dataclass, field
from typing import Any

from lmqc.compiler.program import EV_AWAIT, EV_DIST, EV_HOLE, EV_ROLE, EV_TEXT, NO_RETURN
from lmqc.errors import DecodeError, SourceError


class QueryRuntimeError(DecodeError, SourceError):
    """Python code inside the query raised; points at the line that raised."""


@dataclass(frozen=True, slots=True)
class Effect:
    """What running the program did to the prompt: ``text`` (value: str), ``role`` (value: role name),
    ``enter`` (a nested query started; value: its hole name in the outer query), ``leave`` (a nested query
    returned; value: (its return value or None, the value its outer hole gets))."""

    kind: str
    value: Any = None


@dataclass(frozen=True, slots=True)
class Request:
    """The program waits for a hole (``kind="hole"``) or a distribution (``kind="dist"``).

    ``compiled`` is the (possibly nested) query the hole belongs to, ``index`` its ``Hole.index`` there,
    ``dyn`` the values of its constraint's Python arguments (``dist``: the options). ``typed`` is the value of
    a type annotation (``[X: Person]``: a dataclass, a Pydantic model, ``list[int]``, a schema dict ...): the
    hole is written as JSON for it and its value is parsed back.
    """

    kind: str
    compiled: Any
    index: int
    dyn: Any = None
    decorators: tuple[Any, ...] = ()
    typed: Any = None


@dataclass(slots=True)
class _Frame:
    gen: Generator[Any, Any, Any]
    compiled: Any
    var: str | None = None  # the outer hole this nested frame fills
    last_value: Any = None


class _NoReturn:
    """What a program returns when its body ends without ``return`` (bound to ``compiler.program.NO_RETURN``)."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "<no return>"


NO_RETURN_VALUE = _NoReturn()


class QueryContext:
    """LMQL's ``context`` in query code: the prompt so far (``context.prompt``, including the text of the
    statements run since the last hole) and the variables (``await context.get_var("X")``,
    ``await context.get_all_vars()``). One per branch; an input or global named ``context`` takes its place."""

    __slots__ = ("_ex",)

    def __init__(self, ex: Execution) -> None:
        self._ex = ex

    @property
    def prompt(self) -> str:
        return self._ex.view()[0]

    async def get_var(self, name: str) -> Any:
        return self._ex.view()[1].get(name)

    async def get_all_vars(self) -> dict[str, Any]:
        return dict(self._ex.view()[1])

    def __repr__(self) -> str:
        return f"<lmqc query context, prompt of {len(self.prompt)} characters>"


# (prompt, variables) of the branch with these effects of the running step applied; set by the query driver
BranchView = Callable[[list[Effect]], "tuple[str, dict[str, Any]]"]


# A callable turning a tactic (callee, args, kwargs) into (compiled query, scope) for a nested query, or None
# when the callee is not a query function.
NestedResolver = Callable[[Any, tuple[Any, ...] | None, dict[str, Any] | None], "tuple[Any, dict[str, Any]] | None"]


@dataclass(slots=True)
class Execution:
    """The Python state of one branch. Create with :meth:`start`."""

    compiled: Any
    scope: Mapping[str, Any]
    resolve_nested: NestedResolver
    loop: Any = None
    frames: list[_Frame] = field(default_factory=list)
    trace: list[Any] = field(default_factory=list)
    finished: bool = False
    return_value: Any = None
    returned: bool = False  # the body ran a `return` (even `return None`), as opposed to reaching its end
    _replay: deque[Any] = field(default_factory=deque)
    viewer: BranchView | None = None
    context: QueryContext | None = None
    _effects: list[Effect] = field(default_factory=list)  # the running step's effects, not yet applied

    @classmethod
    def start(cls, compiled: Any, scope: Mapping[str, Any], resolve_nested: NestedResolver, loop: Any = None) -> Execution:
        ex = cls(compiled, scope, resolve_nested, loop)
        ex.context = QueryContext(ex)
        ex.frames.append(_Frame(new_generator(compiled, scope, ex.context), compiled))
        return ex

    @property
    def depth(self) -> int:
        """Nested queries currently running (0 = only the query itself)."""
        return len(self.frames) - 1

    def fork(self) -> Execution:
        """A copy of this branch's Python state: a fresh program replayed with this branch's trace."""
        root = self.frames[0]
        ex = Execution(root.compiled, self.scope, self.resolve_nested, self.loop)
        ex.context = QueryContext(ex)
        ex.frames.append(_Frame(new_generator(root.compiled, self.scope, ex.context), root.compiled))
        ex._replay.extend(self.trace)
        ex.trace = list(self.trace)
        ex._effects = []
        ex._run(None, ex._effects)
        if ex._replay:  # pragma: no cover - the same program and values always reach the same point
            raise DecodeError("internal error: replaying a branch did not consume its trace")
        return ex

    # ---- the event loop ------------------------------------------------------------------------------------

    def _run(self, value: Any, effects: list[Effect]) -> Request | None:
        send: Any = value
        throw: BaseException | None = None
        while True:
            frame = self.frames[-1]
            try:
                event = frame.gen.throw(throw) if throw is not None else frame.gen.send(send)
            except StopIteration as stop:
                self.frames.pop()
                if not self.frames:
                    self.finished = True
                    self.returned = stop.value is not NO_RETURN_VALUE
                    self.return_value = stop.value if self.returned else None
                    return None
                rv = stop.value
                # a nested query that returned (even None) stands for its value; one that did not is a macro
                send, throw = (rv if rv is not NO_RETURN_VALUE else frame.last_value), None
                effects.append(Effect("leave", (rv, send)))
                self.frames[-1].last_value = send
                continue
            except DecodeError:
                raise
            except Exception as exc:  # noqa: BLE001 - any error in query code becomes a located error
                raise _located(exc, frame.compiled) from exc
            send, throw = None, None
            kind = event[0] if isinstance(event, tuple) and event else None
            if kind == EV_TEXT:
                effects.append(Effect("text", event[1]))
            elif kind == EV_ROLE:
                effects.append(Effect("role", event[1]))
            elif kind == EV_AWAIT:
                if self._replay:
                    _close(event[1])
                    send = self._replay.popleft()
                    continue
                try:
                    send = self._await(event[1])
                except Exception as exc:  # noqa: BLE001 - raised into the query, where try/except may catch it
                    throw = exc
                    continue
                self.trace.append(send)
            elif kind == EV_HOLE:
                _, index, dyn, tactic, decorators = event
                typed = None
                if tactic is not None:
                    callee, args, kwargs = tactic
                    nested = self.resolve_nested(callee, args, kwargs)
                    if nested is None:
                        from lmqc.compiler.pytypes import is_type_annotation

                        if args is None and kwargs is None and is_type_annotation(callee):
                            typed = callee  # [X: Person]: a JSON-constrained hole, decoded below
                        else:
                            raise _located(TypeError(
                                f"hole annotation {callee!r} is neither a query function nor a type lmqc can write "
                                "as JSON"), frame.compiled)
                if tactic is not None and typed is None:
                    sub, scope = nested
                    effects.append(Effect("enter", _hole_name(frame.compiled, index)))
                    self.frames.append(_Frame(new_generator(sub, scope, self.context), sub, var=_hole_name(frame.compiled, index)))
                    continue
                if self._replay:
                    send = self._replay.popleft()
                    frame.last_value = send
                    continue
                return Request("hole", frame.compiled, index, dyn, tuple(decorators), typed)
            elif kind == EV_DIST:
                if self._replay:
                    send = self._replay.popleft()
                    frame.last_value = send
                    continue
                return Request("dist", frame.compiled, event[1], tuple(event[2]))
            else:
                raise DecodeError(f"internal error: unknown program event {event!r}")

    def send(self, value: Any) -> tuple[list[Effect], Request | None]:
        """Send the value of the pending request and run to the next one."""
        self.trace.append(value)
        self.frames[-1].last_value = value
        effects = self._effects = []
        return effects, self._run(value, effects)

    def begin(self) -> tuple[list[Effect], Request | None]:
        """Run the program from its start to its first request."""
        effects = self._effects = []
        return effects, self._run(None, effects)

    def view(self) -> tuple[str, dict[str, Any]]:
        """(prompt, variables) as the running code sees them: the branch's, with this step's effects so far."""
        if self.viewer is None:
            return "".join(e.value for e in self._effects if e.kind == "text"), {}
        return self.viewer(self._effects)

    def _await(self, awaitable: Any) -> Any:
        if not inspect.isawaitable(awaitable):
            raise TypeError(f"object {type(awaitable).__name__} can't be used in 'await' expression")
        if self.loop is None:
            self.loop = asyncio.new_event_loop()
        return self.loop.run_until_complete(_wrap(awaitable))


async def _wrap(awaitable: Any) -> Any:
    return await awaitable


def _close(awaitable: Any) -> None:
    close = getattr(awaitable, "close", None)
    if callable(close):
        close()


def _hole_name(compiled: Any, index: int) -> str:
    return compiled.hole_name(index)


def new_generator(compiled: Any, scope: Mapping[str, Any], context: QueryContext | None = None) -> Generator[Any, Any, Any]:
    """A fresh generator of a compiled query's program, in a namespace holding ``scope`` (the query's inputs
    and, for query functions, the names their definition sees), the prologue's definitions and LMQL's
    ``context``."""
    import lmqc

    from .lmqlcompat import query_builtins

    program = compiled.program
    ns: dict[str, Any] = {
        "__name__": "__lmqc_query__", "lmql": lmqc, "lmqc": lmqc, "context": context, NO_RETURN: NO_RETURN_VALUE,
    }
    params = set(program.params)
    # inputs the program reads are its function's parameters (locals, as in LMQL); the rest of the scope (a
    # query function's module and defining scope) are its globals
    ns.update((k, v) for k, v in scope.items() if k not in params)
    ns["__builtins__"] = query_builtins()  # a module's globals carry their own; query code imports lmql from lmqc
    try:
        if program.prologue is not None:
            exec(program.prologue, ns)  # noqa: S102 - queries are Python programs by design
        exec(program.code, ns)  # noqa: S102 - defines the generator function only
    except Exception as exc:  # noqa: BLE001
        raise _located(exc, compiled) from exc
    missing = [p for p in program.params if p not in scope and p not in ns]
    if missing:
        from lmqc.errors import QueryTypeError

        raise QueryTypeError(
            f"query input{'s' if len(missing) > 1 else ''} {', '.join(missing)} not given", filename=compiled.query.filename
        )
    return ns["__lmqc_query__"](*(scope[p] if p in scope else ns[p] for p in program.params))


def _located(exc: BaseException, compiled: Any) -> QueryRuntimeError:
    """A query error at the innermost line of the query's own code in the traceback."""
    query = compiled.query
    line = None
    tb = exc.__traceback__
    while tb is not None:
        if tb.tb_frame.f_code.co_filename == query.filename:
            line = tb.tb_lineno
        tb = tb.tb_next
    column = None
    if line is not None:
        lines = query.source.splitlines()
        if 0 < line <= len(lines):
            column = len(lines[line - 1]) - len(lines[line - 1].lstrip()) + 1
    err = QueryRuntimeError(
        f"query code raised {type(exc).__name__}: {exc}",
        source=query.source or None,
        filename=query.filename,
        line=line,
        column=column,
    )
    return err
