"""Query code imports from LMQL's package (as LMQL's docs do) and gets lmqc's counterparts."""

from __future__ import annotations

import sys

import pytest

import lmqc
from lmqc.runtime.execution import QueryRuntimeError

TINY = 'from "lmqc:tiny"\n'


def test_decorator_annotated_with_lmql_program_state_runs() -> None:
    # LMQL's docs (language/decorators.md) annotate a decorator's context with ProgramState
    q = '''argmax
    from lmql.runtime.program_state import ProgramState
    from typing import Any

    def aslist(value: Any, prompt_value: str, context: ProgramState):
        seen.append(type(context).__name__)
        return value.split(", "), prompt_value

    "A list: [@aslist ANSWER]" where len(TOKENS(ANSWER)) < 4
    ''' + TINY
    seen: list[str] = []
    result = lmqc.run(q, seen=seen)
    assert isinstance(result.variables["ANSWER"], list)
    assert seen == ["DecoratorContext"]


def test_import_lmql_submodules_reach_lmqc() -> None:
    q = '''argmax
    import lmql.decorators
    import lmql.runtime.program_state
    from lmql import decorators as d

    @lmql.decorators.streaming
    def s(value, context):
        return value

    "[X]" where len(TOKENS(X)) < 3
    ok = d is lmqc.decorators and lmql.runtime.program_state.ProgramState is lmqc.decorators.DecoratorContext
    return ok
    ''' + TINY
    assert lmqc.run(q).return_value is True


def test_lmql_module_without_counterpart_is_named() -> None:
    q = '''argmax
    from lmql.demo import gsm8k_samples
    "[X]" where len(TOKENS(X)) < 3
    ''' + TINY
    with pytest.raises(QueryRuntimeError, match="lmql.demo"):
        lmqc.run(q)


def test_other_imports_unchanged_and_lmqc_itself_untouched() -> None:
    q = '''argmax
    import json
    from lmql.runtime.program_state import ProgramState
    "{json.dumps([1])}[X]" where len(TOKENS(X)) < 3
    ''' + TINY
    assert lmqc.run(q).prompt.startswith("[1]")
    assert not hasattr(lmqc.runtime, "program_state")
    assert "lmql" not in sys.modules or getattr(sys.modules["lmql"], "__name__", "") != "lmqc"
