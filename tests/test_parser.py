"""The LMQL front end: grammar, nodes and spans, errors with positions, goldens, and never-crash on junk."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lmqc.compiler import nodes
from lmqc.compiler.checker import format_query
from lmqc.compiler.parser import parse
from lmqc.errors import LmqcError, QuerySyntaxError, QueryTypeError

FIXTURES = Path(__file__).parent / "fixtures"
UPDATE = os.environ.get("LMQC_UPDATE_GOLDEN") == "1"

SEED = '''beam(n=3)
    "Q: Say 'Hello, {name}!'\\n"
    "A: [RESPONSE]"
from "gemma-3-270m"
where len(TOKENS(RESPONSE)) < 20
'''


def error_of(source: str) -> LmqcError:
    with pytest.raises(LmqcError) as info:
        parse(source, "q.lmql")
    return info.value


# ---- structure ---------------------------------------------------------------------------------------------


def test_seed_query() -> None:
    q = parse(SEED)
    assert q.decoder == nodes.Decoder("beam", (("n", 3),))
    assert q.model == "gemma-3-270m"
    assert q.where == nodes.LenCmp("RESPONSE", "<", 20, tokens=True)
    assert q.distribution is None
    first, second = q.body
    assert isinstance(first, nodes.PromptString) and isinstance(second, nodes.PromptString)
    assert first.parts == (nodes.Text("Q: Say 'Hello, "), nodes.Interp("name"), nodes.Text("!'\n"))
    assert second.parts == (nodes.Text("A: "), nodes.Hole("RESPONSE"))
    assert q.source == SEED


def test_spans_point_at_source() -> None:
    q = parse(SEED)
    first, second = q.body
    assert first.span == nodes.Span(2, 5, 2, 32)
    interp = first.parts[1]
    assert interp.span == nodes.Span(2, 21, 2, 27)  # {name}
    hole = second.parts[1]
    assert hole.span == nodes.Span(3, 9, 3, 19)  # [RESPONSE]
    assert q.where is not None and q.where.span == nodes.Span(5, 7, 5, 33)
    assert q.decoder is not None and q.decoder.span.line == 1


def test_body_only_docstring_form() -> None:
    q = parse('"Q: Say \'Hello, {name}!\'\\n"\n"A: [RESPONSE]" where len(TOKENS(RESPONSE)) < 20\n')
    assert q.decoder is None and q.model is None and q.where is None
    assert q.body[1].where == nodes.LenCmp("RESPONSE", "<", 20, tokens=True)


def test_uniformly_indented_body_only_form() -> None:
    q = parse('    "Q: [A]"\n    "R: [B]" where INT(B)\n')
    assert [type(s) for s in q.body] == [nodes.PromptString, nodes.PromptString]


def test_one_line_query() -> None:
    q = parse('argmax "Hello [X]" from "m" where STOPS_AT(X, ".") and len(X) < 10')
    assert q.decoder == nodes.Decoder("argmax")
    assert q.model == "m"
    assert q.where == nodes.And((nodes.StopsAt("X", "."), nodes.LenCmp("X", "<", 10)))


def test_lmql_style_indented_clauses_and_case_insensitive_keywords() -> None:
    q = parse('ARGMAX\n    "Hello[WHO]"\nFROM\n    "llama.cpp:m.gguf"\nWHERE\n    STOPS_AT(WHO, "\\n") and\n    len(WHO) < 9\n')
    assert q.decoder == nodes.Decoder("argmax")
    assert q.model == "llama.cpp:m.gguf"
    assert q.where == nodes.And((nodes.StopsAt("WHO", "\n"), nodes.LenCmp("WHO", "<", 9)))


def test_continuation_line_starting_with_and() -> None:
    q = parse('"[X]"\nwhere len(X) < 9\n    and STOPS_AT(X, ".")\n')
    assert q.where == nodes.And((nodes.LenCmp("X", "<", 9), nodes.StopsAt("X", ".")))


def test_decoder_arguments_sorted_and_typed() -> None:
    q = parse('sample(temperature=1, n=2, top_p=0.9, seed=7, top_k=40, max_len=64)\n    "[X]"\n')
    assert q.decoder is not None
    assert q.decoder.args == (
        ("max_len", 64),
        ("n", 2),
        ("seed", 7),
        ("temperature", 1.0),
        ("top_k", 40),
        ("top_p", 0.9),
    )
    assert isinstance(q.decoder.arg("temperature"), float)


def test_control_flow() -> None:
    src = '''argmax
    "List:\\n"
    items = []
    for i in range(3):
        "- [ITEM]\\n" where STOPS_BEFORE(ITEM, "\\n")
        items.append(ITEM)
    if len(items) > 2:
        "Many [A]"
    elif items:
        "Few [B]"
    else:
        pass
    "Done {len(items)}"
from "gemma-3-270m"
'''
    q = parse(src)
    loop = q.body[2]
    assert isinstance(loop, nodes.For)
    assert (loop.target, loop.iter) == ("i", "range(3)")
    assert isinstance(loop.body[0], nodes.PromptString)
    assert loop.body[0].where == nodes.StopsBefore("ITEM", "\n")
    assert loop.body[1] == nodes.PyStmt("items.append(ITEM)")
    branch = q.body[3]
    assert isinstance(branch, nodes.If)
    assert [cond for cond, _ in branch.branches] == ["len(items) > 2", "items", None]
    assert branch.branches[2][1] == (nodes.PyStmt("pass"),)
    assert q.body[4].parts[1] == nodes.Interp("len(items)")


def test_one_line_blocks_and_multiline_python() -> None:
    q = parse('xs = [1,\n      2]\nfor x in xs: "[A]"\nif xs: "[B]"\n')
    assert q.body[0] == nodes.PyStmt("xs = [1,\n      2]")
    assert isinstance(q.body[1], nodes.For) and isinstance(q.body[2], nodes.If)


def test_escapes_and_string_forms() -> None:
    q = parse('"a [[b]] {{c}} \\t\\x41\\u00e9\\N{BULLET}"\nr"raw \\n [X]"\n"""tri\nple [Y]"""\n\'single [Z: int]\'\n')
    first = q.body[0]
    assert first.parts == (nodes.Text("a [b] {c} \tA\u00e9\u2022"),)
    assert q.body[1].parts == (nodes.Text("raw \\n "), nodes.Hole("X"))
    assert q.body[2].parts == (nodes.Text("tri\nple "), nodes.Hole("Y"))
    assert q.body[3].parts == (nodes.Text("single "), nodes.Hole("Z", nodes.IsInt("Z")))


def test_hole_annotations() -> None:
    q = parse('"[A: int] [B: r\'[0-9]{4}\'] [C: \'\'\'x]y\'\'\']"\n')
    assert [p for p in q.body[0].parts if isinstance(p, nodes.Hole)] == [
        nodes.Hole("A", nodes.IsInt("A")),
        nodes.Hole("B", nodes.Regex("B", "[0-9]{4}")),
        nodes.Hole("C", nodes.Regex("C", "x]y")),
    ]


@pytest.mark.parametrize(
    ("where", "expected"),
    [
        ("len(X) < 5", nodes.LenCmp("X", "<", 5)),
        ("len(X) <= 5", nodes.LenCmp("X", "<=", 5)),
        ("len(X) > 5", nodes.LenCmp("X", ">", 5)),
        ("len(X) >= 5", nodes.LenCmp("X", ">=", 5)),
        ("len(X) == 5", nodes.LenCmp("X", "==", 5)),
        ("5 > len(X)", nodes.LenCmp("X", "<", 5)),
        ("len(TOKENS(X)) < 7", nodes.LenCmp("X", "<", 7, tokens=True)),
        ('X in ["a", \'b\']', nodes.OneOf("X", ("a", "b"))),
        ("INT(X)", nodes.IsInt("X")),
        ('REGEX(X, r"\\d+")', nodes.Regex("X", "\\d+")),
        ('STOPS_AT(X, ".")', nodes.StopsAt("X", ".")),
        ('STOPS_BEFORE(X, "\\n")', nodes.StopsBefore("X", "\n")),
        ('STARTS_WITH(X, "A")', nodes.StartsWith("X", "A")),
        ('"s" in X', nodes.Contains("X", "s")),
        ('not "s" in X', nodes.Not(nodes.Contains("X", "s"))),
        ('"s" not in X', nodes.Not(nodes.Contains("X", "s"))),
        (
            'INT(X) and (len(X) < 3 or (len(X) > 9 and not "0" in X))',
            nodes.And(
                (
                    nodes.IsInt("X"),
                    nodes.Or(
                        (
                            nodes.LenCmp("X", "<", 3),
                            nodes.And((nodes.LenCmp("X", ">", 9), nodes.Not(nodes.Contains("X", "0")))),
                        )
                    ),
                )
            ),
        ),
        ("(INT(X) and len(X) < 3) and len(X) > 1", nodes.And((nodes.IsInt("X"), nodes.LenCmp("X", "<", 3), nodes.LenCmp("X", ">", 1)))),
        ("INT(X) or len(X) < 3 or len(X) > 1", nodes.Or((nodes.IsInt("X"), nodes.LenCmp("X", "<", 3), nodes.LenCmp("X", ">", 1)))),
    ],
)
def test_constraints_normalize(where: str, expected: nodes.Constraint) -> None:
    assert parse(f'"[X]"\nwhere {where}\n').where == expected


def test_distribution() -> None:
    q = parse('"Review: {r}\\nSentiment: [CLS]"\ndistribution CLS in ["pos", "neg"]\n')
    assert q.distribution == nodes.Distribution("CLS", ("pos", "neg"))


def test_comments_and_blank_lines() -> None:
    q = parse('# inputs: none\n\nargmax  # the decoder\n    # a comment\n\n    "[X]"  # trailing\nfrom "m"\n# end')
    assert q.model == "m" and len(q.body) == 1


# ---- errors ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("source", "kind", "line", "column", "fragment"),
    [
        ('"A: [X]"\nwhere len(RESPONS) < 10', QueryTypeError, 2, 11, "unknown variable 'RESPONS'"),
        ('"A: [RESPONSE]"\nwhere len(RESPONS) < 10', QueryTypeError, 2, 11, "did you mean 'RESPONSE'"),
        ('"[X]" where STOPS_AT(X, 3)', QueryTypeError, 1, 25, "STOPS_AT expects a string"),
        ('"[X]" where STOPS_AT(X)', QueryTypeError, 1, 13, "takes 2 arguments"),
        ('"[X]" where len(X) < "a"', QueryTypeError, 1, 22, "integer"),
        ('"[X]" where len(X) < -1', QueryTypeError, 1, 22, "negative"),
        ('"[X]" where len(X) < 2.5', QueryTypeError, 1, 22, "integer"),
        ('"[X]" where len(X) != 3', QueryTypeError, 1, 20, "unsupported comparison '!='"),
        ('"[X]" where X < 3', QueryTypeError, 1, 15, "unsupported comparison '<'"),
        ('"[X]" where STOPS_AT(X, "")', QueryTypeError, 1, 25, "non-empty"),
        ('"[X]" where STOPS_BEFORE(X, \'\')', QueryTypeError, 1, 29, "non-empty"),
        ('"[X]" where REGEX(X, r"ab[c")', QueryTypeError, 1, 26, "invalid regular expression"),
        ('"[X: r\'a(b\']"', QueryTypeError, 1, 9, "invalid regular expression"),
        ('"[X] [Y]" where len(X) < 3 or len(Y) < 3', QueryTypeError, 1, 17, "combined with 'and'"),
        ('"[X] [Y]" where not (INT(X) and INT(Y))', QueryTypeError, 1, 17, "combined with 'and'"),
        ('"[X] [X]"', QueryTypeError, 1, 6, "already filled"),
        ('"[X]"\n"[X]"', QueryTypeError, 2, 2, "already filled"),
        ("beam(n=0)\n    \"[X]\"", QueryTypeError, 1, 8, "n must be >= 1"),
        ("beam(n=2.5)\n    \"[X]\"", QueryTypeError, 1, 8, "integer"),
        ("sample(temperature=-0.5)\n    \"[X]\"", QueryTypeError, 1, 20, "temperature"),
        ("sample(top_p=0)\n    \"[X]\"", QueryTypeError, 1, 14, "top_p"),
        ("sample(top_p=1.01)\n    \"[X]\"", QueryTypeError, 1, 14, "top_p"),
        ("beam(temperature=1)\n    \"[X]\"", QueryTypeError, 1, 6, "unknown argument 'temperature'"),
        ("argmax(n=1, n=2)\n    \"[X]\"", QueryTypeError, 1, 8, "unknown argument"),
        ("sample(n=1, n=2)\n    \"[X]\"", QueryTypeError, 1, 13, "duplicate"),
        ("greedy(n=2)\n    \"[X]\"", QueryTypeError, 1, 1, "unknown decoder 'greedy'"),
        ('"[X] [Y]"\ndistribution X in ["a", "b"]', QueryTypeError, 2, 14, "must be the last hole"),
        ('"[X]"\ndistribution X in ["a", "a"]', QueryTypeError, 2, 25, "duplicate"),
        ('"[X]"\ndistribution X in []', QueryTypeError, 2, 19, "at least one"),
        ('"[X]"\ndistribution X in ["a", 1]', QueryTypeError, 2, 25, "strings"),
        ('"[X]" where FOO(X)', QueryTypeError, 1, 13, "unknown constraint function 'FOO'"),
        ('"[X]" where stops_at(X, "a")', QueryTypeError, 1, 13, "did you mean STOPS_AT"),
        ('"[X: str]"', QueryTypeError, 1, 6, "unknown hole type 'str'"),
        ('"A: [X"', QuerySyntaxError, 1, 7, "expected ']'"),
        ('"A: [ ]"', QuerySyntaxError, 1, 5, "variable name"),
        ('"A: ]"', QuerySyntaxError, 1, 5, "']]'"),
        ('"A: {x +}"', QuerySyntaxError, 1, 6, "invalid Python"),
        ('"A: {}"', QuerySyntaxError, 1, 5, "empty expression"),
        ('"A: {x"', QuerySyntaxError, 1, 5, "never closed"),
        ('"abc', QuerySyntaxError, 1, 1, "unterminated string"),
        ('"\\xZZ"', QuerySyntaxError, 1, 2, "\\x escape"),
        ('b"[X]"', QuerySyntaxError, 1, 1, "bytes"),
        ("x = (1,\n", QuerySyntaxError, 1, 5, "never closed"),
        ("x = = 1\n\"[X]\"", QuerySyntaxError, 1, 5, "invalid Python"),
        ('for x in y\n    "a"', QuerySyntaxError, 1, 11, "end of line"),
        ('"[X]"\n  "b"', QuerySyntaxError, 2, 3, "unexpected indent"),
        ('if x:\n    "a"\n  "b"', QuerySyntaxError, 3, 3, "unindent"),
        ("for x in y:\n\"a\"", QuerySyntaxError, 2, 1, "indented block"),
        ("break", QueryTypeError, 1, 1, "outside a for loop"),
        ("while x: pass", QuerySyntaxError, 1, 1, "not supported"),
        ("", QuerySyntaxError, 1, 1, "empty query"),
        ('"[X]"\nwhere', QuerySyntaxError, 2, 6, "end of line"),
        ('"[X]" where len(X) < 3 and', QuerySyntaxError, 1, 27, "end of line"),
        ('"[X]" $', QuerySyntaxError, 1, 7, "unexpected character '$'"),
    ],
)
def test_errors_have_positions(source: str, kind: type, line: int, column: int, fragment: str) -> None:
    e = error_of(source)
    assert type(e) is kind, str(e)
    assert fragment in e.message, str(e)
    assert (e.line, e.column) == (line, column), str(e)
    assert str(e).startswith(f"q.lmql:{line}:{column}: ")


def test_error_renders_line_and_caret() -> None:
    e = error_of('"A: [RESPONSE]"\nwhere len(RESPONS) < 10\n')
    assert str(e) == (
        "q.lmql:2:11: unknown variable 'RESPONS' in where clause; did you mean 'RESPONSE'?\n"
        "    where len(RESPONS) < 10\n"
        "              ^"
    )


# ---- goldens -----------------------------------------------------------------------------------------------


def _golden(kind: str) -> list[Path]:
    return sorted((FIXTURES / kind).glob("*.lmql"))


@pytest.mark.parametrize("path", _golden("parse"), ids=lambda p: p.stem)
def test_parse_golden(path: Path) -> None:
    actual = format_query(parse(path.read_text(encoding="utf-8"), path.name))
    expected_path = path.with_suffix(".txt")
    if UPDATE:
        expected_path.write_text(actual, encoding="utf-8")
    assert actual == expected_path.read_text(encoding="utf-8")


@pytest.mark.parametrize("path", _golden("errors"), ids=lambda p: p.stem)
def test_error_golden(path: Path) -> None:
    with pytest.raises(LmqcError) as info:
        parse(path.read_text(encoding="utf-8"), path.name)
    actual = str(info.value) + "\n"
    expected_path = path.with_suffix(".txt")
    if UPDATE:
        expected_path.write_text(actual, encoding="utf-8")
    assert actual == expected_path.read_text(encoding="utf-8")


def test_goldens_exist() -> None:
    assert len(_golden("parse")) >= 5 and len(_golden("errors")) >= 5


# ---- robustness --------------------------------------------------------------------------------------------

_PIECES = [
    '"', "'", "[", "]", "{", "}", "(", ")", "\n", "    ", "\t", ":", "=", ",", ".", "-", "#", "\\", "r", "b",
    "0", "7", "x", "X", "_", "where ", "from ", "and ", "or ", "not ", " in ", "for ", "if ", "else:", "elif ",
    "argmax", "beam(n=2)", "sample(", "len(", "TOKENS(", "INT(", "REGEX(", "STOPS_AT(", '"""', "'''",
    "distribution ", "[X]", "[X: int]", "{x}", '"a [X]"\n', "\x00", "\r", "\x0c", "\u00e9", "\u2028", "<", "==",
]


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.sampled_from(_PIECES), max_size=40).map("".join))
def test_junk_from_pieces_never_crashes(source: str) -> None:
    try:
        parse(source)
    except LmqcError as e:
        assert e.line is None or e.line >= 1
        assert str(e)


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=60))
def test_random_text_never_crashes(source: str) -> None:
    try:
        parse(source)
    except LmqcError:
        pass


@settings(max_examples=100, deadline=None)
@given(
    st.text(st.characters(blacklist_categories=("Cs",)), max_size=20),
    st.sampled_from(['"', "'", '"""', "'''"]),
    st.sampled_from(["", "r", "f"]),
)
def test_prompt_text_round_trips(text: str, quote: str, prefix: str) -> None:
    """Any text, escaped for the prompt and written as a string literal, parses back to the same text."""
    escaped = text.replace("[", "[[").replace("]", "]]").replace("{", "{{").replace("}", "}}")
    literal = prefix + quote + escaped.replace("\\", "\\\\") + quote if not prefix.startswith("r") else None
    literal = literal or (prefix + quote + escaped + quote)
    try:
        query = parse(literal + "\n")
    except LmqcError:
        return  # e.g. the text contains the quote or a newline in a one-line literal
    got = "".join(p.value for p in query.body[0].parts if isinstance(p, nodes.Text))
    if prefix == "r":
        assert got == escaped.replace("[[", "[").replace("]]", "]").replace("{{", "{").replace("}}", "}")
    elif quote * 2 not in text and "\\" not in text and not text.endswith(quote[0]):
        assert got == text
