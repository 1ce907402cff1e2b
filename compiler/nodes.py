"""The query AST: immutable nodes, each with the source span it came from.

Two families live here:

* the prompt program (``Query`` and its statements), which the runtime interprets;
* constraints (``where`` clauses, normalized), which ``lower`` turns into per-hole IR.

Python fragments (``{expr}`` interpolations, assignments, loop headers, conditions) are kept as source text,
already validated by Python's own ``ast`` module; the runtime evaluates them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True, slots=True)
class Span:
    """1-based line/column of the first character, and of the character after the last."""

    line: int
    column: int
    end_line: int
    end_column: int

    def __str__(self) -> str:
        return f"{self.line}:{self.column}"


NOWHERE = Span(0, 0, 0, 0)


# --------------------------------------------------------------------------------------------------------------
# Constraints (normalized where-clause). Variables are hole names; literals are decoded Python values.


@dataclass(frozen=True, slots=True)
class And:
    items: tuple[Constraint, ...]
    span: Span = field(default=NOWHERE, compare=False)

    def __str__(self) -> str:
        return "(" + " and ".join(map(str, self.items)) + ")"


@dataclass(frozen=True, slots=True)
class Or:
    items: tuple[Constraint, ...]
    span: Span = field(default=NOWHERE, compare=False)

    def __str__(self) -> str:
        return "(" + " or ".join(map(str, self.items)) + ")"


@dataclass(frozen=True, slots=True)
class Not:
    operand: Constraint
    span: Span = field(default=NOWHERE, compare=False)

    def __str__(self) -> str:
        return f"not {self.operand}"


@dataclass(frozen=True, slots=True)
class LenCmp:
    """``len(VAR) op bound`` (characters) or ``len(TOKENS(VAR)) op bound`` (tokens); op in < <= > >= ==."""

    var: str
    op: str
    bound: int
    tokens: bool = False
    span: Span = field(default=NOWHERE, compare=False)

    def __str__(self) -> str:
        inner = f"TOKENS({self.var})" if self.tokens else self.var
        return f"len({inner}) {self.op} {self.bound}"


@dataclass(frozen=True, slots=True)
class OneOf:
    """``VAR in ["a", "b", ...]``."""

    var: str
    options: tuple[str, ...]
    span: Span = field(default=NOWHERE, compare=False)

    def __str__(self) -> str:
        return f"{self.var} in {list(self.options)!r}"


@dataclass(frozen=True, slots=True)
class IsInt:
    """``INT(VAR)``: the value is a (possibly space-led) decimal integer; the runtime returns a Python int."""

    var: str
    span: Span = field(default=NOWHERE, compare=False)

    def __str__(self) -> str:
        return f"INT({self.var})"


@dataclass(frozen=True, slots=True)
class Regex:
    """``REGEX(VAR, pattern)``: the whole value matches the Python ``re`` pattern."""

    var: str
    pattern: str
    span: Span = field(default=NOWHERE, compare=False)

    def __str__(self) -> str:
        return f"REGEX({self.var}, {self.pattern!r})"


@dataclass(frozen=True, slots=True)
class StopsAt:
    """``STOPS_AT(VAR, phrase)``: generation of VAR ends at the first phrase; the value keeps it."""

    var: str
    phrase: str
    span: Span = field(default=NOWHERE, compare=False)

    def __str__(self) -> str:
        return f"STOPS_AT({self.var}, {self.phrase!r})"


@dataclass(frozen=True, slots=True)
class StopsBefore:
    """``STOPS_BEFORE(VAR, phrase)``: like STOPS_AT, but the phrase is dropped from the value."""

    var: str
    phrase: str
    span: Span = field(default=NOWHERE, compare=False)

    def __str__(self) -> str:
        return f"STOPS_BEFORE({self.var}, {self.phrase!r})"


@dataclass(frozen=True, slots=True)
class StartsWith:
    var: str
    prefix: str
    span: Span = field(default=NOWHERE, compare=False)

    def __str__(self) -> str:
        return f"STARTS_WITH({self.var}, {self.prefix!r})"


@dataclass(frozen=True, slots=True)
class Contains:
    """``"s" in VAR``; ``not "s" in VAR`` is ``Not(Contains(...))``."""

    var: str
    phrase: str
    span: Span = field(default=NOWHERE, compare=False)

    def __str__(self) -> str:
        return f"{self.phrase!r} in {self.var}"


Atom = LenCmp | OneOf | IsInt | Regex | StopsAt | StopsBefore | StartsWith | Contains
Constraint = And | Or | Not | Atom


def constraint_vars(c: Constraint) -> frozenset[str]:
    """The hole names a constraint mentions."""
    if isinstance(c, And | Or):
        out: frozenset[str] = frozenset()
        for item in c.items:
            out |= constraint_vars(item)
        return out
    if isinstance(c, Not):
        return constraint_vars(c.operand)
    return frozenset({c.var})


# --------------------------------------------------------------------------------------------------------------
# The prompt program.


@dataclass(frozen=True, slots=True)
class Text:
    """Literal prompt text, escapes (``[[``, ``{{``, backslash escapes) already resolved."""

    value: str
    span: Span = field(default=NOWHERE, compare=False)


@dataclass(frozen=True, slots=True)
class Interp:
    """``{expr}``: a Python expression, evaluated in the query's scope and formatted with ``str``."""

    expr: str
    span: Span = field(default=NOWHERE, compare=False)


@dataclass(frozen=True, slots=True)
class Hole:
    """``[VAR]``, ``[VAR: int]`` or ``[VAR: r"..."]``; the annotation is kept as its constraint."""

    name: str
    annotation: IsInt | Regex | None = None
    span: Span = field(default=NOWHERE, compare=False)


PromptPart = Text | Interp | Hole


@dataclass(frozen=True, slots=True)
class PromptString:
    """A string statement; ``where`` is its inline constraint (applies to this statement's holes)."""

    parts: tuple[PromptPart, ...]
    where: Constraint | None = None
    span: Span = field(default=NOWHERE, compare=False)


@dataclass(frozen=True, slots=True)
class PyStmt:
    """A simple Python statement (assignment, augmented assignment, call, pass, ...), as source."""

    source: str
    span: Span = field(default=NOWHERE, compare=False)


@dataclass(frozen=True, slots=True)
class For:
    """``for TARGET in ITER:`` around a body; target and iter are Python source."""

    target: str
    iter: str
    body: tuple[Stmt, ...]
    span: Span = field(default=NOWHERE, compare=False)


@dataclass(frozen=True, slots=True)
class If:
    """``if``/``elif``/``else``: branches of (condition source, body); the else branch has condition None."""

    branches: tuple[tuple[str | None, tuple[Stmt, ...]], ...]
    span: Span = field(default=NOWHERE, compare=False)


Stmt = PromptString | PyStmt | For | If


@dataclass(frozen=True, slots=True)
class Decoder:
    """``argmax``, ``sample(...)`` or ``beam(...)``; args are decoded Python literals, sorted by name."""

    name: str
    args: tuple[tuple[str, Any], ...] = ()
    span: Span = field(default=NOWHERE, compare=False)

    def arg(self, key: str, default: Any = None) -> Any:
        return dict(self.args).get(key, default)

    def __str__(self) -> str:
        if not self.args:
            return self.name
        return f"{self.name}(" + ", ".join(f"{k}={v!r}" for k, v in self.args) + ")"


@dataclass(frozen=True, slots=True)
class Distribution:
    """``distribution VAR in [options]``."""

    var: str
    options: tuple[str, ...]
    span: Span = field(default=NOWHERE, compare=False)


@dataclass(frozen=True, slots=True)
class Query:
    """A whole query. ``where`` is the query-level clause; inline clauses stay on their ``PromptString``."""

    body: tuple[Stmt, ...]
    decoder: Decoder | None = None
    model: str | None = None
    where: Constraint | None = None
    distribution: Distribution | None = None
    source: str = field(default="", compare=False, repr=False)
    filename: str = field(default="<query>", compare=False)
    span: Span = field(default=NOWHERE, compare=False)
