"""Every example query checks, names its inputs on its first line, bounds every hole, and together the
examples cover the whole language."""

from __future__ import annotations

import ast
import re
import shlex
from pathlib import Path

import pytest

from lmqc.cli import main
from lmqc.compiler import nodes
from lmqc.compiler.checker import hole_constraints, hole_slots, inputs
from lmqc.compiler.parser import IGNORED_DECODER_ARGS, parse
from lmqc.compiler.program import distribution_hole

EXAMPLES = sorted((Path(__file__).parent.parent / "examples").glob("*.lmql"))


def example_inputs(path: Path) -> dict[str, str]:
    """``# inputs: name=Bob topic="big cats"`` on the first line (shell-style quoting), or ``# inputs:``."""
    first = path.read_text(encoding="utf-8").splitlines()[0]
    match = re.fullmatch(r"#\s*inputs:(.*)", first)
    if match is None:
        raise ValueError(f"{path.name}: first line must be '# inputs: ...'")
    return dict(item.split("=", 1) for item in shlex.split(match.group(1)))


def _bounded(c: nodes.Constraint | None) -> bool:
    """Generation of the hole must end: a stop phrase, an upper length bound, a choice, or a finite regex."""
    if c is None:
        return False
    if isinstance(c, nodes.And):
        return any(_bounded(item) for item in c.items)
    if isinstance(c, nodes.Or):
        return all(_bounded(item) for item in c.items)
    if isinstance(c, nodes.LenCmp):
        return c.op in ("<", "<=", "==")
    if isinstance(c, nodes.Regex):
        return isinstance(c.pattern, str) and re.search(r"[*+]|\{\d*,\}", c.pattern) is None
    return isinstance(c, nodes.OneOf | nodes.StopsAt | nodes.StopsBefore | nodes.IsBool)  # BOOL: true/false


def test_bounded() -> None:
    assert _bounded(nodes.And((nodes.IsInt("X"), nodes.LenCmp("X", "<", nodes.Dyn("n")))))
    assert not _bounded(nodes.Or((nodes.StopsAt("X", "."), nodes.LenCmp("X", ">", 3))))
    assert not _bounded(nodes.Regex("X", "[0-9]+")) and _bounded(nodes.Regex("X", "[0-9]{2}"))
    assert not _bounded(nodes.Regex("X", nodes.Dyn("pattern")))  # unknown until it runs
    assert not _bounded(None) and not _bounded(nodes.IsInt("X"))


def test_enough_examples() -> None:
    assert len(EXAMPLES) >= 25
    assert any(p.name == "seed.lmql" for p in EXAMPLES)


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.stem)
def test_example_checks_and_is_runnable(path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    query = parse(path.read_text(encoding="utf-8"), path.name)
    assert query.model == "gemma-3-270m" or query.decoder is None, "examples use the embedded model"
    given = example_inputs(path)
    assert set(inputs(query)) == set(given), "the '# inputs:' line must list exactly the query's inputs"
    dist = distribution_hole(query)
    constraints = hole_constraints(query)
    for hole in query.holes():
        if hole.index == dist or hole.tactic is not None or hole.decorators:
            # scored options; a nested query bounds itself; a pre-decorator may fix the value without decoding
            continue
        constraint = constraints[hole.index]
        assert _bounded(constraint), f"hole {hole.name} (line {hole.span.line}) is unbounded: {constraint}"
    assert main(["check", str(path)]) == 0
    assert "holes: " in capsys.readouterr().out


def test_seed_example_is_the_design_query() -> None:
    seed = (Path(__file__).parent.parent / "examples" / "seed.lmql").read_text(encoding="utf-8")
    assert seed.splitlines()[1:] == [
        "beam(n=3)",
        "    \"Q: Say 'Hello, {name}!'\\n\"",
        '    "A: [RESPONSE]"',
        'from "gemma-3-270m"',
        "where len(TOKENS(RESPONSE)) < 20",
    ]


# ---- coverage ----------------------------------------------------------------------------------------------


def _atoms(c: nodes.Constraint) -> list[nodes.Constraint]:
    if isinstance(c, nodes.And | nodes.Or):
        return [c, *[a for item in c.items for a in _atoms(item)]]
    if isinstance(c, nodes.Not):
        return [c, *_atoms(c.operand)]
    return [c]


def _has_dyn(c: nodes.Constraint) -> bool:
    return any(
        isinstance(getattr(a, name, None), nodes.Dyn)
        for a in _atoms(c)
        for name in ("bound", "options", "pattern", "phrase", "prefix")
    )


_CLAUSE_LINE = re.compile(r"^\s*where\b|\"\s+where\b|'\s+where\b")


def features(path: Path) -> set[str]:
    """The language features one example uses."""
    source = path.read_text(encoding="utf-8")
    query = parse(source, path.name)
    lines = source.splitlines()
    seen: set[str] = set()
    # decoder clause
    dec = query.decoder
    if dec is None:
        seen.add("decoder:none")
    else:
        seen.add(f"decoder:{dec.name}")
        seen |= {f"arg:{key}" for key, _ in dec.args}
        if dec.name == "argmax" and dec.arg("n") is not None:
            seen.add("argmax(n=...)")
        if any(isinstance(v, nodes.Dyn) for _, v in dec.args):
            seen.add("decoder-arg-expression")
        dec_text = "\n".join(lines[dec.span.line - 1 : dec.span.end_line])
        if any(re.search(rf"\b{name}\s*=", dec_text) for name in IGNORED_DECODER_ARGS):
            seen.add("ignored-lmql-decoder-option")
        if query.prompts and query.prompts[0].span.line == dec.span.line:
            seen.add("one-line")
    if query.prologue is not None and query.prologue.body:
        seen.add("prologue")
    # Python in the prologue and the body
    trees = [query.body] + ([query.prologue] if query.prologue is not None else [])
    for node in (n for tree in trees for n in ast.walk(tree)):
        seen.add(type(node).__name__)
        if isinstance(node, ast.If) and node.orelse and isinstance(node.orelse[0], ast.If):
            seen.add("elif")
        if isinstance(node, ast.If) and node.orelse and not isinstance(node.orelse[0], ast.If):
            seen.add("else")
        if isinstance(node, ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef) and node.decorator_list:
            seen.add("decorated-definition")
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            docstring = ast.get_docstring(node, clean=False) or ""
            if docstring.lstrip().startswith("lmql"):
                seen.add("query-function-in-body")
    # query strings
    for ps in query.prompts:
        if ps.where is not None:
            seen.add("inline-where")
        if ps.distribution is not None:
            seen.add("inline-distribution")
        if ps.span.end_line > ps.span.line and ps.span.column > 1:
            seen.add("dedented-multiline-string")
        for part in ps.parts:
            seen.add(type(part).__name__)
            if isinstance(part, nodes.Hole):
                if part.annotation is not None:
                    seen.add(f"annotation:{type(part.annotation).__name__}")
                if part.tactic is not None:
                    seen.add("nested-query")
                if part.decorators:
                    seen.add("hole-decorator")
            if isinstance(part, nodes.Interp):
                if part.conversion or part.format_spec:
                    seen.add("conversion/format-spec")
                if part.expr.startswith("await "):
                    seen.add("await-in-interpolation")
    dists = [ps.distribution for ps in query.prompts if ps.distribution is not None]
    if query.distribution is not None:
        dists.append(query.distribution)
    if dists:
        seen.add("distribution")
    if any(isinstance(d.options, nodes.Dyn) for d in dists):
        seen.add("distribution-expression")
    if any("#" in slot for slot in hole_slots(query).values()) or len(query.holes()) > len(set(h.name for h in query.holes())):
        seen.add("same-hole-twice")
    # constraints
    for c in [ps.where for ps in query.prompts] + [query.where]:
        if c is None:
            continue
        if _has_dyn(c):
            seen.add("constraint-expression")
        for atom in _atoms(c):
            name = type(atom).__name__
            if isinstance(atom, nodes.LenCmp):
                name += ":tokens" if atom.tokens else ":chars"
            seen.add(name)
    clause_text = "\n".join(line for line in lines if _CLAUSE_LINE.search(line))
    for marker, pattern in [
        ("triple", r'"""|\'\'\''),
        ("raw", r"\br[\"']"),
        ("escape{{", r"\{\{"),
        ("escape[[", r"\[\["),
        ("parens", r"\bwhere \("),
        ("not-contains", r"\bnot [\"']"),
    ]:
        if re.search(pattern, source):
            seen.add(marker)
    if re.search(r"\b(stops_at|stops_before|starts_with|regex|int)\(", clause_text):
        seen.add("lowercase-constraint-function")
    if re.search(r"\b[A-Za-z_]\w* == [\"']", clause_text):
        seen.add("equals-text")
    return seen


# Covered by the examples, and must stay covered.
REQUIRED = {
    "decoder:argmax", "decoder:sample", "decoder:beam", "decoder:none",
    "arg:n", "arg:temperature", "arg:seed", "arg:max_len", "arg:top_k", "arg:top_p",
    "distribution", "For", "If", "elif", "else", "Assign", "AugAssign", "Call", "inline-where",
    "Text", "Interp", "Hole", "annotation:IsInt", "annotation:Regex",
    "LenCmp:chars", "LenCmp:tokens", "OneOf", "IsInt", "Regex", "StopsAt", "StopsBefore", "StartsWith",
    "Contains", "Not", "And", "Or", "triple", "raw", "escape{{", "escape[[", "parens", "not-contains", "one-line",
}  # fmt: skip

# The language the new front end accepts. A feature no example shows yet is reported as a skip (each test id
# names the feature), not a failure; once an example shows it, it must stay covered.
NEW = [
    "decoder:beam_var", "argmax(n=...)", "ignored-lmql-decoder-option", "decoder-arg-expression", "prologue",
    "FunctionDef", "AsyncFunctionDef", "ClassDef", "decorated-definition", "Lambda", "While", "Break", "Continue",
    "Return", "Try", "With", "Import", "ImportFrom", "Await", "await-in-interpolation", "ListComp",
    "Role", "nested-query", "query-function-in-body", "hole-decorator", "conversion/format-spec",
    "dedented-multiline-string", "same-hole-twice", "inline-distribution", "distribution-expression",
    "constraint-expression", "equals-text", "lowercase-constraint-function",
]  # fmt: skip


@pytest.fixture(scope="module")
def covered() -> set[str]:
    seen: set[str] = set()
    for path in EXAMPLES:
        seen |= features(path)
    return seen


def test_examples_cover_the_language(covered: set[str]) -> None:
    assert REQUIRED <= covered, f"not covered: {sorted(REQUIRED - covered)}"


@pytest.mark.parametrize("feature", NEW)
def test_examples_cover_new_feature(feature: str, covered: set[str]) -> None:
    if feature not in covered:
        pytest.skip(f"no example shows {feature!r} yet")


def test_feature_detection() -> None:
    """The coverage check itself sees what it claims to see."""
    import tempfile

    src = '''# inputs: xs=a
import os
argmax(n=2, chunksize=3) "{:user}A [@f X]" where X == "a"
    async def g():
        return 1
    """one
    two [Y: sub(xs)] {await g()!r}""" where stops_at(Y, ".")
    "[Y]" distribution Y in xs.split()
from "gemma-3-270m"
'''
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "f.lmql"
        path.write_text(src, encoding="utf-8")
        seen = features(path)
    assert {
        "argmax(n=...)", "ignored-lmql-decoder-option", "one-line", "prologue", "AsyncFunctionDef", "Role",
        "hole-decorator", "equals-text", "dedented-multiline-string", "nested-query", "conversion/format-spec",
        "await-in-interpolation", "lowercase-constraint-function", "inline-distribution", "distribution-expression",
        "same-hole-twice", "triple",
    } <= seen  # fmt: skip
    assert not {"decoder:none", "While", "raw", "constraint-expression", "decoder-arg-expression"} & seen
