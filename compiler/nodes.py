"""The query AST: immutable nodes, each with the source span it came from.

Two families live here:

* constraints (``where`` clauses, normalized), which ``lower`` turns into per-hole IR; an argument given as a
  Python expression is a ``Dyn`` and is evaluated when its hole starts;
* the query (``Query``): its body is Python (an ``ast.Module``, compiled by ``program`` into a generator
  function); ``PromptString``/``Hole`` describe its query strings.
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
    bound: int | Dyn
    tokens: bool = False
    span: Span = field(default=NOWHERE, compare=False)

    def __str__(self) -> str:
        inner = f"TOKENS({self.var})" if self.tokens else self.var
        return f"len({inner}) {self.op} {self.bound}"


@dataclass(frozen=True, slots=True)
class OneOf:
    """``VAR in ["a", "b", ...]``."""

    var: str
    options: tuple[str, ...] | Dyn
    span: Span = field(default=NOWHERE, compare=False)

    def __str__(self) -> str:
        options = str(self.options) if isinstance(self.options, Dyn) else repr(list(self.options))
        return f"{self.var} in {options}"


@dataclass(frozen=True, slots=True)
class IsInt:
    """``INT(VAR)``: the value is a (possibly space-led) decimal integer; the runtime returns a Python int."""

    var: str
    span: Span = field(default=NOWHERE, compare=False)

    def __str__(self) -> str:
        return f"INT({self.var})"


@dataclass(frozen=True, slots=True)
class IsFloat:
    """``FLOAT(VAR)`` / ``[VAR: float]``: a (possibly space-led) decimal number; the runtime returns a float."""

    var: str
    span: Span = field(default=NOWHERE, compare=False)

    def __str__(self) -> str:
        return f"FLOAT({self.var})"


@dataclass(frozen=True, slots=True)
class IsBool:
    """``BOOL(VAR)`` / ``[VAR: bool]``: ``true``/``false`` (or ``True``/``False``), space-led or not; a bool."""

    var: str
    span: Span = field(default=NOWHERE, compare=False)

    def __str__(self) -> str:
        return f"BOOL({self.var})"


@dataclass(frozen=True, slots=True)
class JsonSchema:
    """``JSON(VAR, schema)``: a JSON text valid for the JSON Schema; the runtime returns the parsed value.

    ``schema`` is the schema's canonical JSON text (property order kept), or a ``Dyn`` evaluated when the hole
    starts (a schema dict, a dataclass, a Pydantic model or another Python type; see ``compiler.pytypes``).
    """

    var: str
    schema: str | Dyn
    span: Span = field(default=NOWHERE, compare=False)

    def __str__(self) -> str:
        return f"JSON({self.var}, {self.schema})"


@dataclass(frozen=True, slots=True)
class Regex:
    """``REGEX(VAR, pattern)``: the whole value matches the Python ``re`` pattern."""

    var: str
    pattern: str | Dyn
    span: Span = field(default=NOWHERE, compare=False)

    def __str__(self) -> str:
        return f"REGEX({self.var}, {_show(self.pattern)})"


@dataclass(frozen=True, slots=True)
class StopsAt:
    """``STOPS_AT(VAR, phrase)``: generation of VAR ends at the first phrase; the value keeps it."""

    var: str
    phrase: str | Dyn
    span: Span = field(default=NOWHERE, compare=False)

    def __str__(self) -> str:
        return f"STOPS_AT({self.var}, {_show(self.phrase)})"


@dataclass(frozen=True, slots=True)
class StopsBefore:
    """``STOPS_BEFORE(VAR, phrase)``: like STOPS_AT, but the phrase is dropped from the value."""

    var: str
    phrase: str | Dyn
    span: Span = field(default=NOWHERE, compare=False)

    def __str__(self) -> str:
        return f"STOPS_BEFORE({self.var}, {_show(self.phrase)})"


@dataclass(frozen=True, slots=True)
class StartsWith:
    var: str
    prefix: str | Dyn
    span: Span = field(default=NOWHERE, compare=False)

    def __str__(self) -> str:
        return f"STARTS_WITH({self.var}, {_show(self.prefix)})"


@dataclass(frozen=True, slots=True)
class Contains:
    """``"s" in VAR``; ``not "s" in VAR`` is ``Not(Contains(...))``."""

    var: str
    phrase: str | Dyn
    span: Span = field(default=NOWHERE, compare=False)

    def __str__(self) -> str:
        return f"{_show(self.phrase)} in {self.var}"


def _show(value: Any) -> str:
    """A constraint argument as written back: a literal's repr, a Python expression as ``{expr}``."""
    return str(value) if isinstance(value, Dyn) else repr(value)


Atom = LenCmp | OneOf | IsInt | IsFloat | IsBool | JsonSchema | Regex | StopsAt | StopsBefore | StartsWith | Contains
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
# The prompt program. The body itself is Python (an ``ast.Module``); these nodes describe its query strings.


@dataclass(frozen=True, slots=True)
class Dyn:
    """A constraint argument given as a Python expression (``X in options``), evaluated when the hole starts."""

    expr: str
    span: Span = field(default=NOWHERE, compare=False)

    def __str__(self) -> str:
        return "{" + self.expr + "}"


@dataclass(frozen=True, slots=True)
class Text:
    """Literal prompt text, escapes (``[[``, ``{{``, backslash escapes) already resolved."""

    value: str
    span: Span = field(default=NOWHERE, compare=False)


@dataclass(frozen=True, slots=True)
class Interp:
    """``{expr}`` / ``{expr!r:>10}``: a Python f-string replacement field, evaluated in the query's scope."""

    expr: str
    conversion: str = ""  # "", "r", "s" or "a"
    format_spec: str = ""
    span: Span = field(default=NOWHERE, compare=False)


@dataclass(frozen=True, slots=True)
class Role:
    """``{:system}``, ``{:user}``, ``{:assistant}``: the prompt continues in that chat role."""

    name: str
    span: Span = field(default=NOWHERE, compare=False)


@dataclass(frozen=True, slots=True)
class Hole:
    """``[VAR]``, ``[VAR: int]``, ``[VAR: r"..."]`` or ``[VAR: tactic]``.

    ``annotation`` is a static constraint (``int``, a regex); ``tactic`` is any other annotation as Python source,
    evaluated when the hole starts (a query function makes a nested query). ``index`` numbers the query's holes
    in source order: the same name may occur in several query strings, each with its own constraints.
    """

    name: str
    annotation: IsInt | IsFloat | IsBool | Regex | None = None
    tactic: str | None = None
    index: int = 0
    decorators: tuple[str, ...] = ()  # [@fn X]: Python expressions of LMQL variable decorators, left to right
    span: Span = field(default=NOWHERE, compare=False)


PromptPart = Text | Interp | Role | Hole


@dataclass(frozen=True, slots=True)
class PromptString:
    """A query string statement; ``where`` is its inline constraint (applies to this statement's holes only),
    ``distribution`` an inline ``distribution VAR in ...`` clause."""

    parts: tuple[PromptPart, ...]
    where: Constraint | None = None
    distribution: Distribution | None = None
    index: int = 0
    span: Span = field(default=NOWHERE, compare=False)


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
        return f"{self.name}(" + ", ".join(f"{k}={_show(v)}" for k, v in self.args) + ")"


@dataclass(frozen=True, slots=True)
class Distribution:
    """``distribution VAR in [options]``; options may be a Python expression evaluated when the hole starts."""

    var: str
    options: tuple[str, ...] | Dyn
    span: Span = field(default=NOWHERE, compare=False)


@dataclass(frozen=True, slots=True)
class Query:
    """A whole query.

    ``body`` is the program as Python (``ast.Module``, positions in the query source); its query-string
    statements are described by ``prompts`` (in source order, ``PromptString.index`` = position). ``prologue``
    is Python that runs before the program (code before the decoder clause). ``where`` is the query-level
    clause; inline clauses stay on their ``PromptString``.
    """

    prompts: tuple[PromptString, ...]
    body: Any = field(default=None, compare=False, repr=False)
    prologue: Any = field(default=None, compare=False, repr=False)
    decoder: Decoder | None = None
    model: str | Dyn | None = None  # a Dyn: `from <python expression>`, which needs a caller's model=
    where: Constraint | None = None
    distribution: Distribution | None = None
    source: str = field(default="", compare=False, repr=False)
    filename: str = field(default="<query>", compare=False)
    span: Span = field(default=NOWHERE, compare=False)

    def holes(self) -> list[Hole]:
        """Every hole occurrence, in source order."""
        return [p for ps in self.prompts for p in ps.parts if isinstance(p, Hole)]
