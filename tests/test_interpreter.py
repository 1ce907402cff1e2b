"""The prompt-program interpreter, on hand-built ASTs (no parser, no model)."""

from __future__ import annotations

import pytest

from lmqc.compiler import nodes as n
from lmqc.errors import DecodeError
from lmqc.runtime.interpreter import Emit, NeedHole, replay


def _q(*body: n.Stmt) -> n.Query:
    return n.Query(body=tuple(body), source="", filename="t.lmql")


def test_emits_text_interpolation_and_holes_in_order() -> None:
    q = _q(
        n.PromptString((n.Text("Hi "), n.Interp("name.upper()"), n.Text("! "), n.Hole("A"), n.Text(".")),),
    )
    prog, pending, need = replay(q, {"name": "bob"}, [])
    assert pending == "Hi BOB! "
    assert isinstance(need, NeedHole) and need.name == "A"
    prog, pending, need = replay(q, {"name": "bob"}, ["yes"])
    assert pending == "."
    assert need is None
    assert prog.env["A"] == "yes"


def test_for_loop_reassigns_hole_and_runs_python() -> None:
    q = _q(
        n.PyStmt("items = []"),
        n.For("i", "range(3)", (n.PromptString((n.Text("-"), n.Hole("ITEM"), n.Text("\n"))), n.PyStmt("items.append(ITEM)"))),
        n.PromptString((n.Interp("len(items)"),)),
    )
    prog, pending, need = replay(q, {}, ["a", "b"])
    assert need is not None and need.name == "ITEM" and need.index == 2
    assert pending == "\n-"
    prog, pending, need = replay(q, {}, ["a", "b", "c"])
    assert need is None
    assert prog.env["items"] == ["a", "b", "c"]
    assert pending == "\n3"


def test_if_branches_on_earlier_hole() -> None:
    q = _q(
        n.PromptString((n.Hole("X"),)),
        n.If((("X == 'yes'", (n.PromptString((n.Text("Y"), n.Hole("WHY"))),)), (None, (n.PromptString((n.Text("N"),)),)))),
    )
    _, pending, need = replay(q, {}, ["yes"])
    assert pending == "Y" and need is not None and need.name == "WHY"
    _, pending, need = replay(q, {}, ["no"])
    assert pending == "N" and need is None


def test_user_code_error_is_located() -> None:
    q = n.Query(
        body=(n.PromptString((n.Interp("1/0", span=n.Span(1, 3, 1, 6)),), span=n.Span(1, 1, 1, 8)),),
        source='"{1/0}"',
        filename="t.lmql",
    )
    with pytest.raises(DecodeError) as info:
        replay(q, {}, [])
    assert "t.lmql:1:3" in str(info.value) and "ZeroDivisionError" in str(info.value)


def test_value_text_is_emitted_after_hole() -> None:
    q = _q(n.PromptString((n.Hole("N"), n.Text("!"))))
    events = []
    prog, _, _ = replay(q, {}, [])
    gen = prog.events
    # the suspended generator continues: sending a value yields its text, then the rest
    events.append(gen.send(42))
    events.append(next(gen))
    assert events == [Emit("42"), Emit("!")]
