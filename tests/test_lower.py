"""lower_hole: splitting a hole's constraint into language, stops, token window and int flag."""

from __future__ import annotations

import pytest

from lmqc.compiler.ir import HoleIR, Stop
from lmqc.compiler.lower import lower_hole
from lmqc.compiler.nodes import (
    And,
    Contains,
    IsInt,
    LenCmp,
    Not,
    OneOf,
    Or,
    Regex,
    Span,
    StopsAt,
    StopsBefore,
)
from lmqc.errors import ConstraintError


def test_none_is_unconstrained():
    assert lower_hole("X", None) == HoleIR("X")


def test_split_top_level_conjuncts():
    c = And(
        (
            LenCmp("X", "<", 20, tokens=True),
            And((StopsAt("X", "."), IsInt("X"))),
            StopsBefore("X", "\n"),
            LenCmp("X", "<", 50),
            LenCmp("X", ">=", 2, tokens=True),
        )
    )
    ir = lower_hole("X", c)
    assert ir.stops == (Stop(".", True), Stop("\n", False))
    assert (ir.min_tokens, ir.max_tokens) == (2, 19)
    assert ir.is_int
    assert ir.language == And((IsInt("X"), LenCmp("X", "<", 50)))


@pytest.mark.parametrize(
    "op, n, window",
    [("<", 20, (0, 19)), ("<=", 20, (0, 20)), (">", 3, (4, None)), (">=", 3, (3, None)), ("==", 5, (5, 5))],
)
def test_token_window(op, n, window):
    ir = lower_hole("X", LenCmp("X", op, n, tokens=True))
    assert (ir.min_tokens, ir.max_tokens) == window
    assert ir.language is None


def test_tightest_token_window_wins():
    ir = lower_hole("X", And((LenCmp("X", "<", 20, tokens=True), LenCmp("X", "<=", 5, tokens=True))))
    assert ir.max_tokens == 5


def test_single_language_atom_is_kept_as_is():
    c = Or((OneOf("X", ("a",)), Not(Contains("X", "b"))))
    assert lower_hole("X", c).language == c


SRC = 'q\nwhere STOPS_AT(X, ".") or len(X) < 3\n'


@pytest.mark.parametrize(
    "constraint, col, what",
    [
        (Or((StopsAt("X", ".", span=Span(2, 7, 2, 23)), LenCmp("X", "<", 3))), 7, "STOPS_AT"),
        (Not(StopsBefore("X", ".", span=Span(2, 11, 2, 30))), 11, "STOPS_BEFORE"),
        (Or((LenCmp("X", "<", 3, tokens=True, span=Span(2, 9, 2, 30)), IsInt("X"))), 9, "TOKENS"),
    ],
)
def test_stops_and_token_bounds_under_or_not_are_errors(constraint, col, what):
    with pytest.raises(ConstraintError) as e:
        lower_hole("X", constraint, source=SRC, filename="q.lmql")
    err = e.value
    assert (err.filename, err.line, err.column) == ("q.lmql", 2, col)
    assert what in err.message and "'or' or 'not'" in err.message
    assert str(err).splitlines()[-1] == " " * (4 + col - 1) + "^"


def test_regex_feature_errors_are_raised_early():
    with pytest.raises(ConstraintError, match="backreferences"):
        lower_hole("X", Regex("X", r"(a)\1", span=Span(1, 1, 1, 5)))
    with pytest.raises(ConstraintError, match="invalid regular expression"):
        lower_hole("X", Regex("X", r"(a"))


def test_empty_stop_phrase_and_empty_token_window():
    with pytest.raises(ConstraintError, match="empty"):
        lower_hole("X", StopsAt("X", ""))
    with pytest.raises(ConstraintError, match="no possible length"):
        lower_hole("X", And((LenCmp("X", "<", 2, tokens=True), LenCmp("X", ">", 5, tokens=True))))


@pytest.mark.parametrize(
    ("pattern", "offset"),
    [(r"(a)\1", 3), (r"[(?=]x(?=a)", 6), (r"[\]$]b$", 6), (r"a\$b$", 4), (r"a*+", 1), (r"[^]^]^", 5)],
)
def test_unsupported_regex_errors_name_the_offset(pattern: str, offset: int) -> None:
    from lmqc.compiler.charlang import regex_feature_problem

    assert f"at offset {offset} of the pattern" in regex_feature_problem(pattern)


@pytest.mark.parametrize(
    ("constraint", "window"),
    [
        # LMQL's own test_orop: a disjunction of token bounds is the union of their windows
        (Or((LenCmp("X", "<", 20, tokens=True), LenCmp("X", "<", 30, tokens=True))), (0, 29)),
        (Not(LenCmp("X", "<", 5, tokens=True)), (5, None)),
        (Or((LenCmp("X", "==", 3, tokens=True), LenCmp("X", ">", 3, tokens=True))), (3, None)),
        (And((Not(LenCmp("X", ">", 8, tokens=True)), LenCmp("X", ">=", 2, tokens=True))), (2, 8)),
        (Or((LenCmp("X", "<", 4, tokens=True), And((LenCmp("X", ">", 2, tokens=True), LenCmp("X", "<", 7, tokens=True))))), (0, 6)),
    ],
)
def test_token_bounds_under_or_and_not_combine_into_one_window(constraint, window):
    ir = lower_hole("X", constraint)
    assert (ir.min_tokens, ir.max_tokens) == window
    assert ir.language is None


def test_token_bounds_whose_union_is_not_one_range_are_errors():
    c = Or((LenCmp("X", "<", 3, tokens=True), LenCmp("X", ">", 10, tokens=True)), span=Span(1, 1, 1, 9))
    with pytest.raises(ConstraintError, match="0..2 or 11.."):
        lower_hole("X", c)
