"""Lower one hole's constraint to its IR: character language, stop rules, token window, int flag.

Top-level conjuncts are split by kind. Stop rules and token-count bounds only make sense at the top level of
a hole's constraint (LMQL applies them while generating, not as a property of the finished value), so one
under ``or``/``not`` is an error pointing at it.
"""

from __future__ import annotations

from dataclasses import replace

from lmqc.errors import ConstraintError

from .charlang import regex_feature_problem
from .ir import HoleIR, Stop
from .nodes import (
    NOWHERE,
    And,
    Constraint,
    Contains,
    Dyn,
    IsBool,
    IsFloat,
    IsInt,
    JsonSchema,
    LenCmp,
    Not,
    OneOf,
    Or,
    Regex,
    Span,
    StartsWith,
    StopsAt,
    StopsBefore,
)


def lower_hole(
    var: str, constraint: Constraint | None, *, source: str | None = None, filename: str = "<query>"
) -> HoleIR:
    """Split ``constraint`` (the conjunction of everything constraining hole ``var``) into a ``HoleIR``.

    Raises
    ------
    ConstraintError
        A stop rule or token bound under ``or``/``not``; a token window that is empty; an empty stop phrase;
        a regex feature no DFA can express. Located at the offending node's span.
    """

    def error(message: str, span: Span) -> ConstraintError:
        return ConstraintError(
            message, source=source, filename=filename, line=span.line or None, column=span.column or None
        )

    if constraint is None:
        return HoleIR(var)
    conjuncts = _flatten_and(constraint)
    language: list[Constraint] = []
    stops: list[Stop] = []
    min_tokens, max_tokens = 0, None
    is_int = False
    parse: str | None = None
    for c in conjuncts:
        if isinstance(c, StopsAt | StopsBefore):
            if not c.phrase:
                raise error(f"the stop phrase of {c} is empty", c.span)
            stops.append(Stop(c.phrase, keep=isinstance(c, StopsAt)))
        elif (isinstance(c, LenCmp) and c.tokens) or (isinstance(c, Or | Not) and _token_bounds_only(c)):
            lo, hi = _token_window(c, error)
            min_tokens = max(min_tokens, lo)
            max_tokens = hi if max_tokens is None else (max_tokens if hi is None else min(max_tokens, hi))
            if max_tokens is not None and max_tokens < min_tokens:
                raise error(f"token bounds on {var} leave no possible length", c.span)
        else:
            _check_nested(c, error, top=True)
            if isinstance(c, IsInt):
                is_int = True
            elif parse is None and isinstance(c, IsFloat | IsBool | JsonSchema):
                parse = {IsFloat: "float", IsBool: "bool", JsonSchema: "json"}[type(c)]
            language.append(c)
    lang: Constraint | None
    if not language:
        lang = None
    elif len(language) == 1:
        lang = language[0]
    else:
        lang = And(tuple(language), span=getattr(constraint, "span", NOWHERE))
    return HoleIR(
        var,
        language=lang,
        stops=tuple(stops),
        min_tokens=min_tokens,
        max_tokens=max_tokens,
        is_int=is_int,
        span=getattr(constraint, "span", NOWHERE),
        parse=None if is_int else parse,
    )


def _flatten_and(c: Constraint) -> list[Constraint]:
    if isinstance(c, And):
        out: list[Constraint] = []
        for item in c.items:
            out.extend(_flatten_and(item))
        return out
    return [c]


def _token_bounds_only(c: Constraint) -> bool:
    if isinstance(c, And | Or):
        return all(_token_bounds_only(i) for i in c.items)
    if isinstance(c, Not):
        return _token_bounds_only(c.operand)
    return isinstance(c, LenCmp) and c.tokens


Intervals = list[tuple[int, float]]  # disjoint, sorted, inclusive; float("inf") for no upper bound
_INF = float("inf")


def _intervals(c: Constraint) -> Intervals:
    """The token counts a formula of token bounds allows, as sorted disjoint intervals."""
    if isinstance(c, LenCmp):
        n = c.bound
        assert isinstance(n, int)
        return {"<": [(0, n - 1)], "<=": [(0, n)], ">": [(n + 1, _INF)], ">=": [(n, _INF)], "==": [(n, n)]}[c.op] if not (
            c.op == "<" and n == 0
        ) else []
    if isinstance(c, Not):
        out: Intervals = []
        lo = 0
        for a, b in _intervals(c.operand):
            if a > lo:
                out.append((lo, a - 1))
            lo = b + 1  # type: ignore[assignment]
        if lo != _INF:
            out.append((lo, _INF))
        return out
    parts = [_intervals(i) for i in c.items]  # type: ignore[union-attr]
    if isinstance(c, Or):
        merged: Intervals = []
        for a, b in sorted(x for p in parts for x in p):
            if merged and a <= merged[-1][1] + 1:
                merged[-1] = (merged[-1][0], max(merged[-1][1], b))
            else:
                merged.append((a, b))
        return merged
    acc = parts[0]
    for p in parts[1:]:
        acc = [(max(a, c2), min(b, d)) for a, b in acc for c2, d in p if max(a, c2) <= min(b, d)]
    return acc  # type: ignore[return-value]


def _token_window(c: Constraint, error) -> tuple[int, int | None]:
    """A formula of ``len(TOKENS(X))`` bounds as one inclusive ``(min, max)`` token window (``or`` and ``not``
    allowed, as in LMQL, as long as the counts they allow form one range)."""
    iv = _intervals(c)
    if not iv:
        raise error(f"{c} allows no token count", getattr(c, "span", NOWHERE))
    if len(iv) > 1:
        raise error(f"{c} allows token counts {_show(iv)}: lmqc needs one range of token counts", getattr(c, "span", NOWHERE))
    lo, hi = iv[0]
    return int(lo), None if hi == _INF else int(hi)


def _show(iv: Intervals) -> str:
    return " or ".join(f"{a}..{'' if b == _INF else int(b)}" for a, b in iv)


def _check_nested(c: Constraint, error, *, top: bool) -> None:
    """Reject stop rules / token bounds below or/not; check regex features early (``lmqc check`` sees them)."""
    if isinstance(c, And | Or):
        for item in c.items:
            _check_nested(item, error, top=top and isinstance(c, And))
    elif isinstance(c, Not):
        _check_nested(c.operand, error, top=False)
    elif isinstance(c, StopsAt | StopsBefore):
        raise error(f"{c} cannot be used under 'or' or 'not': stop rules must constrain the hole directly", c.span)
    elif isinstance(c, LenCmp) and c.tokens:
        raise error(f"{c} cannot be combined with other kinds of constraints under 'or' or 'not' (token bounds combine only with token bounds there)", c.span)
    elif isinstance(c, Regex):
        problem = regex_feature_problem(c.pattern)
        if problem:
            raise error(problem, c.span)
    elif isinstance(c, JsonSchema):
        if isinstance(c.schema, str):  # a schema lmqc cannot express is an error here already (lmqc check)
            from .jsonschema import SchemaError, compile_schema

            try:
                compile_schema(c.schema)
            except SchemaError as e:
                raise error(str(e), c.span) from None
    elif not isinstance(c, LenCmp | OneOf | IsInt | IsFloat | IsBool | StartsWith | Contains):
        raise error(f"unsupported constraint {c}", getattr(c, "span", NOWHERE))


# --------------------------------------------------------------------------------------------------------------
# Constraints with Python arguments (``X in options``, ``len(TOKENS(X)) < n``): lowered when the hole starts.


_DYN_FIELDS = ("bound", "options", "pattern", "phrase", "prefix", "schema")


def is_dynamic(c: Constraint | None) -> bool:
    """Whether a constraint has an argument given as a Python expression (a ``Dyn``)."""
    if c is None:
        return False
    if isinstance(c, And | Or):
        return any(is_dynamic(item) for item in c.items)
    if isinstance(c, Not):
        return is_dynamic(c.operand)
    return any(isinstance(getattr(c, name, None), Dyn) for name in _DYN_FIELDS)


def substitute(
    c: Constraint, values: dict[str, object], *, source: str | None = None, filename: str = "<query>"
) -> Constraint:
    """``c`` with every ``Dyn`` argument replaced by its value (``values`` maps expression text to value).

    Raises
    ------
    ConstraintError
        A value of the wrong type for its place (a length bound that is not a non-negative int, options that are
        not strings, ...), located at the expression.
    """

    def error(message: str, span: Span) -> ConstraintError:
        return ConstraintError(
            message, source=source, filename=filename, line=span.line or None, column=span.column or None
        )

    def value_of(d: Dyn, kind: str) -> object:
        if d.expr not in values:
            raise error(f"internal error: no value for {d.expr!r}", d.span)
        v = values[d.expr]
        if kind == "bound":
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise error(f"{d.expr} must be a non-negative int here, got {v!r}", d.span)
            return v
        if kind == "options":
            if isinstance(v, str) or not hasattr(v, "__iter__"):
                raise error(f"{d.expr} must be a list of strings here, got {type(v).__name__}", d.span)
            items = [x if isinstance(x, str) and not any("\ud800" <= ch <= "\udfff" for ch in x) else None
                     for x in v]  # type: ignore[attr-defined]
            if not items or any(x is None for x in items):
                raise error(f"{d.expr} must be a non-empty list of strings here, got {v!r}", d.span)
            return tuple(dict.fromkeys(items))
        if kind == "schema":
            from .jsonschema import SchemaError, canonical, compile_schema
            from .pytypes import schema_for

            try:
                text = canonical(schema_for(v))
                compile_schema(text)
            except (SchemaError, TypeError) as e:
                raise error(f"{d.expr}: {e}", d.span) from None
            return text
        if not isinstance(v, str):
            raise error(f"{d.expr} must be a string here, got {type(v).__name__}", d.span)
        if any("\ud800" <= ch <= "\udfff" for ch in v):
            raise error(f"{d.expr} has a lone surrogate, which cannot be encoded as UTF-8", d.span)
        if kind == "phrase" and not v:
            raise error(f"{d.expr} is an empty string; a stop phrase or searched text must not be empty", d.span)
        if kind == "pattern":
            problem = regex_feature_problem(v)
            if problem:
                raise error(f"{d.expr}: {problem}", d.span)
        return v

    if isinstance(c, And | Or):
        return type(c)(tuple(substitute(i, values, source=source, filename=filename) for i in c.items), span=c.span)
    if isinstance(c, Not):
        return Not(substitute(c.operand, values, source=source, filename=filename), span=c.span)
    changes = {
        name: value_of(getattr(c, name), name) for name in _DYN_FIELDS if isinstance(getattr(c, name, None), Dyn)
    }
    return replace(c, **changes) if changes else c
