"""Lower one hole's constraint to its IR: character language, stop rules, token window, int flag.

Top-level conjuncts are split by kind. Stop rules and token-count bounds only make sense at the top level of
a hole's constraint (LMQL applies them while generating, not as a property of the finished value), so one
under ``or``/``not`` is an error pointing at it.
"""

from __future__ import annotations

from lmqc.errors import ConstraintError

from .charlang import regex_feature_problem
from .ir import HoleIR, Stop
from .nodes import (
    NOWHERE,
    And,
    Constraint,
    Contains,
    IsInt,
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
    for c in conjuncts:
        if isinstance(c, StopsAt | StopsBefore):
            if not c.phrase:
                raise error(f"the stop phrase of {c} is empty", c.span)
            stops.append(Stop(c.phrase, keep=isinstance(c, StopsAt)))
        elif isinstance(c, LenCmp) and c.tokens:
            lo, hi = _token_window(c)
            min_tokens = max(min_tokens, lo)
            max_tokens = hi if max_tokens is None else (max_tokens if hi is None else min(max_tokens, hi))
            if max_tokens is not None and max_tokens < min_tokens:
                raise error(f"token bounds on {var} leave no possible length", c.span)
        else:
            _check_nested(c, error, top=True)
            if isinstance(c, IsInt):
                is_int = True
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
    )


def _flatten_and(c: Constraint) -> list[Constraint]:
    if isinstance(c, And):
        out: list[Constraint] = []
        for item in c.items:
            out.extend(_flatten_and(item))
        return out
    return [c]


def _token_window(c: LenCmp) -> tuple[int, int | None]:
    """``len(TOKENS(X)) op n`` as an inclusive ``(min, max)`` token window."""
    n = c.bound
    if c.op == "<":
        return 0, n - 1
    if c.op == "<=":
        return 0, n
    if c.op == ">":
        return n + 1, None
    if c.op == ">=":
        return n, None
    return n, n


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
        raise error(f"{c} cannot be used under 'or' or 'not': token bounds must constrain the hole directly", c.span)
    elif isinstance(c, Regex):
        problem = regex_feature_problem(c.pattern)
        if problem:
            raise error(problem, c.span)
    elif not isinstance(c, LenCmp | OneOf | IsInt | StartsWith | Contains):
        raise error(f"unsupported constraint {c}", getattr(c, "span", NOWHERE))
