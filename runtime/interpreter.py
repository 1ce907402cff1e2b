"""Executes a query's prompt program.

The program is a tree of string statements and Python control flow (``nodes.Stmt``). ``run_program`` is a
generator: it yields :class:`Emit` for prompt text and :class:`NeedHole` when the model must fill a hole, and
receives the hole's value through ``send``. The driver (``runtime.query``) owns decoding; this module owns
Python semantics only. Queries are Python programs: running one executes its code, as in LMQL.

A generator cannot be copied, so when beam search forks a branch the driver replays a fresh generator with the
branch's earlier hole values (:func:`replay`); Python code is cheap next to a model step.
"""

from __future__ import annotations

import builtins
from collections.abc import Generator, Mapping
from dataclasses import dataclass
from typing import Any

from lmqc.compiler import nodes
from lmqc.errors import DecodeError, SourceError


class QueryRuntimeError(DecodeError, SourceError):
    """Python code inside the query raised; points at the statement."""


@dataclass(frozen=True, slots=True)
class Emit:
    text: str


@dataclass(frozen=True, slots=True)
class NeedHole:
    name: str
    index: int  # 0-based count of hole occurrences so far in this execution
    hole: nodes.Hole


ProgramEvents = Generator[Emit | NeedHole, Any, None]


class _Runner:
    def __init__(self, query: nodes.Query, scope: Mapping[str, Any]) -> None:
        self.query = query
        self.env: dict[str, Any] = {"__builtins__": builtins}
        self.env.update(scope)
        self.holes_seen = 0

    def fail(self, exc: BaseException, span: nodes.Span) -> QueryRuntimeError:
        return QueryRuntimeError(
            f"query code raised {type(exc).__name__}: {exc}",
            source=self.query.source or None,
            filename=self.query.filename,
            line=span.line or None,
            column=span.column or None,
        )

    def eval(self, expr: str, span: nodes.Span) -> Any:
        try:
            return eval(expr, self.env)  # noqa: S307 - queries are Python programs by design
        except Exception as exc:  # noqa: BLE001 - any error in user code becomes a located error
            raise self.fail(exc, span) from exc

    def exec(self, stmt: str, span: nodes.Span) -> None:
        try:
            exec(stmt, self.env)  # noqa: S102
        except Exception as exc:  # noqa: BLE001
            raise self.fail(exc, span) from exc

    def block(self, body: tuple[nodes.Stmt, ...]) -> ProgramEvents:
        for stmt in body:
            yield from self.stmt(stmt)

    def stmt(self, stmt: nodes.Stmt) -> ProgramEvents:
        if isinstance(stmt, nodes.PromptString):
            yield from self.prompt(stmt)
        elif isinstance(stmt, nodes.PyStmt):
            self.exec(stmt.source, stmt.span)
        elif isinstance(stmt, nodes.For):
            for item in self.eval(stmt.iter, stmt.span):
                self.env["__lmqc_item__"] = item
                self.exec(f"{stmt.target} = __lmqc_item__", stmt.span)
                yield from self.block(stmt.body)
        elif isinstance(stmt, nodes.If):
            for cond, body in stmt.branches:
                if cond is None or self.eval(cond, stmt.span):
                    yield from self.block(body)
                    break
        else:  # pragma: no cover - the parser only builds the kinds above
            raise DecodeError(f"unknown statement {type(stmt).__name__}")

    def prompt(self, stmt: nodes.PromptString) -> ProgramEvents:
        buf: list[str] = []
        for part in stmt.parts:
            if isinstance(part, nodes.Text):
                buf.append(part.value)
            elif isinstance(part, nodes.Interp):
                buf.append(str(self.eval(part.expr, part.span)))
            else:
                if buf:
                    yield Emit("".join(buf))
                    buf = []
                value = yield NeedHole(part.name, self.holes_seen, part)
                self.holes_seen += 1
                self.env[part.name] = value
                yield Emit(str(value) if not isinstance(value, str) else value)
        if buf:
            yield Emit("".join(buf))


class Program:
    """One execution of a query's program: ``events`` yields Emit/NeedHole; ``env`` is its Python scope."""

    def __init__(self, query: nodes.Query, scope: Mapping[str, Any]) -> None:
        self._runner = _Runner(query, scope)
        self.events: ProgramEvents = self._runner.block(query.body)

    @property
    def env(self) -> dict[str, Any]:
        return self._runner.env


def replay(query: nodes.Query, scope: Mapping[str, Any], values: list[Any]) -> tuple[Program, str, NeedHole | None]:
    """Start the program and feed it ``values`` for its first holes.

    Returns the program (suspended at the next hole, or finished), the text emitted after the last fed hole's
    value (or from the start), and the next hole request (None if the program finished).
    """
    program = Program(query, scope)
    gen = program.events
    fed = 0
    pending: list[str] = []
    send: Any = None
    skip_value_emit = False
    while True:
        try:
            event = gen.send(send)
        except StopIteration:
            return program, "".join(pending), None
        send = None
        if isinstance(event, Emit):
            if skip_value_emit:
                skip_value_emit = False  # the fed value's own text belongs to the past
            else:
                pending.append(event.text)
            continue
        if fed < len(values):
            send = values[fed]
            fed += 1
            pending = []
            skip_value_emit = True
            continue
        return program, "".join(pending), event
