"""The query body runs as Python: a generator compiled with ``ast``, run once per branch, forks replayed.

All on the deterministic tiny backend (``lmqc:tiny``), no model weights.
"""

from __future__ import annotations

import re

import pytest

import lmqc
from lmqc.compiler.parser import parse
from lmqc.compiler.program import build
from lmqc.errors import ConstraintError, QuerySyntaxError
from lmqc.runtime.execution import QueryRuntimeError

TINY = 'from "lmqc:tiny"\n'


def run(body: str, decoder: str = "argmax", **inputs):
    return lmqc.run(f"{decoder}\n{_indent(body)}{TINY}", **inputs)


def _indent(body: str) -> str:
    return "".join("    " + line + "\n" if line.strip() else "\n" for line in body.strip("\n").split("\n"))


# ---- Python in the body ----------------------------------------------------------------------------------------


def test_def_class_dataclass_while_break_continue_return() -> None:
    body = '''
from dataclasses import dataclass

@dataclass
class Item:
    name: str
    n: int

def shout(s):
    return s.upper()

items = []
i = 0
while True:
    i += 1
    if i == 2:
        continue
    if i > 4:
        break
    "{shout('item')} {i}: [NAME]\\n" where STOPS_BEFORE(NAME, "\\n") and len(TOKENS(NAME)) < 4
    items.append(Item(NAME, i))
return [it.n for it in items]
'''
    r = run(body)
    assert r.return_value == [1, 3, 4]
    assert r.prompt.startswith("ITEM 1: ")
    assert "ITEM 2:" not in r.prompt and "ITEM 4: " in r.prompt


def test_try_with_and_async_def_await() -> None:
    body = '''
import contextlib
async def twice(x):
    return x * 2
log = []
with contextlib.suppress(KeyError):
    {}["missing"]
try:
    raise ValueError("boom")
except ValueError as e:
    log.append(str(e))
finally:
    log.append("finally")
n = await twice(21)
"n={n} {await twice(1)} [X]" where len(X) < 3
return log
'''
    r = run(body)
    assert r.return_value == ["boom", "finally"]
    assert r.prompt.startswith("n=42 2 ")


def test_prologue_before_decoder_clause() -> None:
    src = 'import math\ndef half(x):\n    return x / 2\nargmax\n    "{half(math.pi):.2f} [X]" where len(X) < 4\n' + TINY
    r = lmqc.run(src)
    assert r.prompt.startswith("1.57 ")


def test_code_runs_once_per_branch_not_replayed_after_each_hole() -> None:
    calls: list[str] = []
    body = '''
log("start")
"[A]" where len(A) < 3
log("a")
"[B]" where len(B) < 3
log("b")
"[C]" where len(C) < 3
log("c")
'''
    run(body, log=calls.append)
    assert calls == ["start", "a", "b", "c"]


def test_sample_forks_replay_the_trace_only_when_branches_fork() -> None:
    calls: list[str] = []
    body = '''
log("start")
"[A]" where len(A) < 3
log("after " + A)
'''
    res = run(body, "sample(n=3, seed=1)", log=calls.append)
    assert len(res) == 3
    # one start per branch (the 2 extra branches are forked from the first at its first hole), one 'after' each
    assert calls.count("start") == 3
    assert sorted(c for c in calls if c.startswith("after")) == sorted("after " + r.variables["A"] for r in res)


def test_beam_results_keep_their_own_python_state() -> None:
    body = '''
seen = []
"[A]" where len(A) < 3
seen.append(A)
"[B]" where len(B) < 3
seen.append(B)
return list(seen)
'''
    res = run(body, "beam(n=3)")
    for r in res:
        assert r.return_value == [r.variables["A"], r.variables["B"]]


def test_same_hole_name_in_later_strings_with_own_constraints() -> None:
    body = '''
"first: [X]\\n" where INT(X) and len(X) < 4
"second: [X]\\n" where X in ["yes", "no"]
return X
'''
    q = lmqc.compile(f"argmax\n{_indent(body)}{TINY}")
    assert set(q.holes) == {"X", "X#2"}
    r = lmqc.run(q)
    assert r.return_value in ("yes", "no")
    first = re.search(r"first: (.*)\n", r.prompt).group(1)
    assert re.fullmatch(r" ?[0-9]+", first)


def test_where_in_over_a_python_expression_is_evaluated_at_hole_start() -> None:
    body = '''
options = ["red", "green"]
"A: [X]" where X in options
options = ["blue", "yellow"]
"B: [Y]" where Y in options
'''
    r = run(body)
    assert r.variables["X"] in ("red", "green")
    assert r.variables["Y"] in ("blue", "yellow")


def test_python_bound_in_token_and_length_limits() -> None:
    r = run('n = 3\n"[X]" where len(TOKENS(X)) < n and len(X) < n * 4\n')
    assert len(r.variables["X"]) < 12


def test_dynamic_argument_of_the_wrong_type_is_a_located_error() -> None:
    with pytest.raises(ConstraintError, match="list of strings"):
        run('options = 5\n"[X]" where X in options\n')


def test_inputs_reassigned_in_the_body_start_with_the_input() -> None:
    r = run('n = int(n) + 1\n"{n} [X]" where len(X) < 2\n', n="4")
    assert r.prompt.startswith("5 ")


def test_equality_and_lowercase_stop_functions() -> None:
    r = run('"[X]" where X == "yes"\n"[Y]" where stops_at(Y, "e") and len(Y) < 20\n')
    assert r.variables["X"] == "yes"
    assert "e" not in r.variables["Y"][:-1]


def test_multiline_strings_are_dedented_like_lmql() -> None:
    r = run('"""Line one\n  indented two\nthree [X]""" where len(X) < 2\n')
    assert r.prompt.startswith("Line one\n  indented two\nthree ")


def test_query_runtime_error_points_at_the_line() -> None:
    src = 'argmax\n    "[X]" where len(X) < 3\n    y = 1 / 0\n' + TINY
    with pytest.raises(QueryRuntimeError) as info:
        lmqc.run(src, filename="q.lmql")
    assert info.value.line == 3 and "ZeroDivisionError" in str(info.value)


def test_exceptions_raised_into_awaits_can_be_caught() -> None:
    body = '''
async def fail():
    raise KeyError("k")
try:
    await fail()
except KeyError:
    caught = True
"[X]" where len(X) < 2
return caught
'''
    assert run(body).return_value is True


def test_yield_in_the_body_is_a_compile_error() -> None:
    with pytest.raises(QuerySyntaxError) as info:
        parse('"a"\nx = yield 3\n', "q.lmql")
    assert (info.value.line, info.value.column) == (2, 5)


def test_generated_program_reads_like_the_query() -> None:
    prog = build(parse('"Q: {q}\\nA: [ANSWER]" where len(ANSWER) < 5\nreturn ANSWER\n'))
    assert "ANSWER = (yield ('hole', 0, {}, None, ()))" in prog.source
    assert "yield ('text', f'Q: {q}\\nA: ')" in prog.source
    assert prog.inputs == ("q",)


# ---- nested queries ----------------------------------------------------------------------------------------------


@lmqc.query(model="lmqc:tiny")
def yes_or_no():
    '''lmql
    "(answer yes or no) [A]" where A in ["yes", "no"]
    return A.upper()
    '''


@lmqc.query(model="lmqc:tiny")
def pick(choices):
    '''lmql
    "Among {choices}: [C]" where C in choices
    return C
    '''


@lmqc.query
def items(n):
    '''lmql
    for i in range(n):
        "-[ITEM]\n" where STOPS_BEFORE(ITEM, "\n") and len(ITEM) < 6
    '''


def test_nested_query_value_replaces_its_prompt() -> None:
    r = run('"Q: Is it? [ANSWER: yes_or_no]\\nDone."\n', yes_or_no=yes_or_no)
    assert r.variables["ANSWER"] in ("YES", "NO")
    assert r.prompt == f"Q: Is it? {r.variables['ANSWER']}\nDone."


def test_nested_query_with_arguments() -> None:
    r = run('"Capital? [C: pick([\'Paris\', \'Rome\'])]"\nreturn C\n', pick=pick)
    assert r.return_value in ("Paris", "Rome")
    assert r.prompt == "Capital? " + r.return_value


def test_nested_query_without_return_is_a_macro() -> None:
    r = run('"List:\\n[ITEMS: items(2)]Done."\n', items=items)
    assert r.prompt.startswith("List:\n-") and r.prompt.endswith("Done.")
    assert r.prompt.count("\n-") + r.prompt.startswith("-") >= 2


def test_query_defined_in_the_body_as_nested_query() -> None:
    src = '''argmax
    @lmql.query
    def sure():
        \'\'\'lmql
        "(be sure) [S]" where S in ["sure", "unsure"]
        return S
        \'\'\'
    "Are you? [X: sure]"
    return X
from "lmqc:tiny"
'''
    r = lmqc.run(src)
    assert r.return_value in ("sure", "unsure")
    assert r.prompt == "Are you? " + r.return_value


def test_non_raw_docstring_query_function_keeps_escapes() -> None:
    @lmqc.query(model="lmqc:tiny")
    def greet(name):
        '''lmql
        "Q: Say 'Hello, {name}!'\n"
        "A: [RESPONSE]" where len(TOKENS(RESPONSE)) < 5
        '''

    r = greet("Bob")
    assert r.prompt.startswith("Q: Say 'Hello, Bob!'\nA: ")


# ---- decorators ---------------------------------------------------------------------------------------------


def test_post_pre_and_streaming_decorators() -> None:
    body = '''
seen = []
def screaming(value):
    return value.upper()
def aslist(value, prompt_value, context):
    return list(value), prompt_value
def prefix(p):
    def decorator(value):
        return p + value
    return decorator
@lmql.decorators.pre
def cache(variable, context):
    return "cached!" if variable.name == "C" else variable
@lmql.decorators.streaming
def stream(value, context):
    seen.append(value)
"A:[@screaming X]" where len(X) < 5 and len(X) > 1
"B:[@aslist Y]" where len(Y) < 4
"C:[@cache C] D:[@cache @prefix('P:') @stream Z]" where len(Z) < 3
return X, Y, C, Z, seen
'''
    r = run(body)
    x, y, c, z, seen = r.return_value
    assert x == x.upper() and f"A:{x}B:" in r.prompt
    assert isinstance(y, list) and "".join(y) in r.prompt
    assert c == "cached!" and "C:cached! D:" in r.prompt
    assert z.startswith("P:") and r.prompt.endswith("D:" + z)
    assert seen[-1] == z[2:] and all(z[2:].startswith(v) for v in seen)  # the value so far, then the final one


def test_decoder_arguments_may_be_python_expressions_of_the_inputs() -> None:
    res = lmqc.run('sample(n=k, seed=1)\n    "[X]" where len(X) < 3\n' + TINY, k=2)
    assert len(res) == 2
    with pytest.raises(lmqc.QueryTypeError, match="must be >= 1"):
        lmqc.run('sample(n=k)\n    "[X]" where len(X) < 3\n' + TINY, k=0)


def test_chat_role_tags_render_plain_turns_without_a_template() -> None:
    from lmqc.runtime.execution import Effect
    from lmqc.runtime.models import get_model
    from lmqc.runtime.query import _Branch, _Driver

    r = run('"{:system} Be brief."\n"{:user} Say hi"\n"{:assistant} [ANSWER]" where len(ANSWER) < 4\n')
    assert r.prompt.startswith("<lmql:system/> Be brief.<lmql:user/> Say hi<lmql:assistant/> ")
    # what the model sees: the tiny backend has no chat template, so plain "role: text" turns
    backend = get_model("lmqc:tiny")
    driver = _Driver(None, backend, "lmqc:tiny", {}, 100)  # type: ignore[arg-type]
    b = _Branch(None, [])  # type: ignore[arg-type]
    effects = [Effect("role", "system"), Effect("text", " Be brief."), Effect("role", "user"), Effect("text", " Say hi"),
               Effect("role", "assistant"), Effect("text", " ")]
    driver.apply(b, effects, None)
    driver.flush(b)
    assert backend.detokenize(b.context) == b"system: Be brief.\nuser: Say hi\nassistant: "


def test_argmax_n_gives_n_copies_of_the_greedy_result() -> None:
    res = run('"[X]" where len(X) < 5\nreturn X\n', "argmax(n=3)")
    assert len(res) == 3 and len({r.variables["X"] for r in res}) == 1
    assert res[0] is not res[1]


def test_backslash_continuation_with_trailing_spaces() -> None:
    # LMQL's docs have `where X in \ ` + newline; Python wants the newline right after the backslash
    q = parse('for i in range(2):\n    "- [T]\\n" where T in \\  \n        ["a", "b"]\n')
    assert str(q.prompts[0].where) == "T in ['a', 'b']"
    with pytest.raises(QuerySyntaxError):
        parse('"[X]"\nx = 1 \\ 2\n')


def test_name_in_hole_is_contains_and_hole_in_name_is_one_of() -> None:
    q = parse('sep = ","\n"[X]" where sep in X and len(X) < 9\n"[Y]"\nwhere Y in options\n')
    assert str(q.prompts[0].where) == "({sep} in X and len(X) < 9)"
    assert str(q.where) == "Y in {options}"


def test_inputs_are_locals_and_import_lmql_is_dropped_everywhere() -> None:
    # as LMQL's test_scoping: inputs the query reads are locals, not globals; prologue names are globals
    src = (
        'import lmql\nhelper = 1\nargmax\n    import lmql\n    ok = a + b + helper == 4\n'
        '    ok = ok and "a" in locals() and "a" not in globals() and "helper" not in locals()\n'
        '    "{ok} [X]" where len(X) < 2\n' + TINY
    )
    r = lmqc.run(src, b=1, a=2, unused=3)
    assert r.prompt.startswith("True ")


def test_from_clause_python_expressions() -> None:
    q = parse('"[X]"\nfrom lmql.model("lmqc:tiny", tokenizer="whatever")\n')
    assert q.model == "lmqc:tiny"
    q = parse('"[X]"\nfrom MODEL\n')
    assert str(q.model) == "{MODEL}"
    with pytest.raises(lmqc.ModelError, match="pass the model"):
        lmqc.compile('"[X]"\nfrom MODEL\n')
    assert lmqc.run('"[X]" where len(X) < 3\nfrom MODEL\n', model="lmqc:tiny").prompt is not None


def test_comment_lines_open_indented_clauses() -> None:
    q = parse('argmax\n    "[X]"\nfrom\n    # the model\n    "lmqc:tiny"\nwhere\n    # bounded\n    len(X) < 3\n')
    assert q.model == "lmqc:tiny" and str(q.where) == "len(X) < 3"


@pytest.mark.parametrize(
    "src", ['"[X]" where STOPS_AT(X, "\\ud800")', '"[X]" where X in ["a", "\\udc00"]', '"\\udc00 [X]"']
)
def test_lone_surrogates_in_query_text_are_located_errors(src: str) -> None:
    with pytest.raises(lmqc.LmqcError, match="lone surrogate") as info:
        parse(src, "q.lmql")
    assert info.value.line == 1 and info.value.column > 1


def test_chat_role_tags_use_the_models_chat_template_when_it_has_one() -> None:
    from lmqc.runtime.execution import Effect
    from lmqc.runtime.models import get_model
    from lmqc.runtime.query import _Branch, _Driver

    chatml = (
        "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>'"
        " + '\\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
    )
    tiny = get_model("lmqc:tiny")

    class WithTemplate:  # the tiny model, plus a chat template as a GGUF would carry it
        def __getattr__(self, name: str):
            return getattr(tiny, name)

        def chat_template(self) -> str:
            return chatml

    driver = _Driver(None, WithTemplate(), "lmqc:tiny", {}, 100)  # type: ignore[arg-type]
    b = _Branch(None, [])  # type: ignore[arg-type]
    effects = [Effect("role", "system"), Effect("text", " Be brief."), Effect("role", "user"), Effect("text", "Hi"),
               Effect("role", "assistant")]
    driver.apply(b, effects, None)
    driver.flush(b)
    assert tiny.detokenize(b.context) == (
        b"<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    )
    assert driver.chat.name == "template"


def test_query_errors_are_also_pythons_own_error_types() -> None:
    with pytest.raises(SyntaxError) as info:
        parse('"[X"', "q.lmql")
    assert (info.value.lineno, info.value.offset, info.value.text) == (1, 4, '"[X"')
    assert str(info.value).startswith("q.lmql:1:4: expected ']'")
    with pytest.raises(TypeError, match="unknown variable 'Y'"):
        parse('"[X]" where len(Y) < 3')


# ---- LMQL's `context` ------------------------------------------------------------------------------------------


def test_context_prompt_includes_text_since_the_last_hole() -> None:
    r = run('''
"{{ Say }}"
assert context.prompt == "{ Say }", context.prompt
"Q: [X]" where len(TOKENS(X)) < 4
seen = context.prompt
" tail"
return (seen, context.prompt)
''')
    seen, final = r.return_value
    assert seen == "{ Say }Q: " + r.variables["X"]
    assert final == seen + " tail" == r.prompt


def test_context_get_var_and_all_vars() -> None:
    r = run('''
"[A]" where len(TOKENS(A)) < 3
"[B]" where len(TOKENS(B)) < 3
a = await context.get_var("A")
return (a, await context.get_all_vars())
''')
    a, allv = r.return_value
    assert a == r.variables["A"]
    assert allv == {"A": r.variables["A"], "B": r.variables["B"]}


def test_context_prompt_after_a_nested_query_with_return_value() -> None:
    q = '''
@lmqc.query
def inner():
    \'\'\'lmql
    "ignored [Y]" where len(TOKENS(Y)) < 3
    return "Something"
    \'\'\'

"[T: inner]."
return context.prompt
'''
    assert run(q).return_value == "Something."


def test_context_per_branch_and_an_input_named_context_wins() -> None:
    r = lmqc.run('sample(n=2, seed=1)\n    "[X]" where len(TOKENS(X)) < 4\n    return context.prompt\n' + TINY)
    assert [b.return_value for b in r] == [b.prompt for b in r]
    r = run('"{context}[X]" where len(TOKENS(X)) < 2', context="given")
    assert r.prompt.startswith("given")


def test_streaming_decorator_sees_intermediate_values_and_the_final_one() -> None:
    seen: list[str] = []
    r = run('''
@lmql.decorators.streaming
def stream(value, context):
    log.append(value)

"Count:[@stream X]" where len(TOKENS(X)) < 6
''', log=seen)
    x = r.variables["X"]
    assert len(seen) >= 3 and seen[-1] == x
    assert all(x.startswith(v) for v in seen)  # each call sees the text so far
    assert seen[:-1] == sorted(seen[:-1], key=len) and len(set(seen[:-1])) == len(seen) - 1


def test_post_decorator_with_a_token_callback() -> None:
    events: list[object] = []
    q = 'argmax\n    def up(v):\n        return v.upper()\n    "[@up X]" where len(TOKENS(X)) < 4\n' + TINY
    r = lmqc.run(q, on_token=events.append)
    assert r.variables["X"] == r.variables["X"].upper()
    assert [e for e in events if e.kind == "value"][0].value == r.variables["X"]
