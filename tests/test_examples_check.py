"""Every example query checks, names its inputs on its first line, bounds every hole, and together the
examples cover the whole language."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from lmqc.cli import main
from lmqc.compiler import nodes
from lmqc.compiler.checker import hole_constraints, inputs, iter_prompt_strings
from lmqc.compiler.parser import parse

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
        return re.search(r"[*+]|\{\d*,\}", c.pattern) is None
    return isinstance(c, nodes.OneOf | nodes.StopsAt | nodes.StopsBefore)


def test_enough_examples() -> None:
    assert len(EXAMPLES) >= 25
    assert any(p.name == "seed.lmql" for p in EXAMPLES)


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.stem)
def test_example_checks_and_is_runnable(path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    query = parse(path.read_text(encoding="utf-8"), path.name)
    assert query.model == "gemma-3-270m" or query.decoder is None, "examples use the embedded model"
    given = example_inputs(path)
    assert set(inputs(query)) == set(given), "the '# inputs:' line must list exactly the query's inputs"
    dist = query.distribution.var if query.distribution is not None else None
    for hole, constraint in hole_constraints(query).items():
        assert hole == dist or _bounded(constraint), f"hole {hole} is unbounded: {constraint}"
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


def _walk(body: tuple[nodes.Stmt, ...]) -> list[nodes.Stmt]:
    out: list[nodes.Stmt] = []
    for stmt in body:
        out.append(stmt)
        if isinstance(stmt, nodes.For):
            out += _walk(stmt.body)
        elif isinstance(stmt, nodes.If):
            for _, branch in stmt.branches:
                out += _walk(branch)
    return out


def _atoms(c: nodes.Constraint) -> list[nodes.Constraint]:
    if isinstance(c, nodes.And | nodes.Or):
        return [c, *[a for item in c.items for a in _atoms(item)]]
    if isinstance(c, nodes.Not):
        return [c, *_atoms(c.operand)]
    return [c]


def test_examples_cover_the_language() -> None:
    seen: set[str] = set()
    for path in EXAMPLES:
        source = path.read_text(encoding="utf-8")
        query = parse(source, path.name)
        if query.decoder is None:
            seen.add("decoder:none")
        else:
            seen.add(f"decoder:{query.decoder.name}")
            seen |= {f"arg:{key}" for key, _ in query.decoder.args}
        if query.distribution is not None:
            seen.add("distribution")
        stmts = _walk(query.body)
        seen |= {type(s).__name__ for s in stmts}
        for s in stmts:
            if isinstance(s, nodes.If) and len(s.branches) > 2 and s.branches[-1][0] is None:
                seen.add("elif+else")
            if isinstance(s, nodes.PyStmt) and "+=" in s.source:
                seen.add("augassign")
            if isinstance(s, nodes.PyStmt) and "(" in s.source:
                seen.add("call")
        for ps in iter_prompt_strings(query.body):
            if ps.where is not None:
                seen.add("inline-where")
            for part in ps.parts:
                seen.add(type(part).__name__)
                if isinstance(part, nodes.Hole) and part.annotation is not None:
                    seen.add(f"annotation:{type(part.annotation).__name__}")
        for c in [ps.where for ps in iter_prompt_strings(query.body)] + [query.where]:
            for atom in _atoms(c) if c is not None else []:
                name = type(atom).__name__
                if isinstance(atom, nodes.LenCmp):
                    name += ":tokens" if atom.tokens else ":chars"
                seen.add(name)
        for marker, needle in [
            ("triple", '"""'),
            ("raw", 'r"'),
            ("escape{{", "{{"),
            ("escape[[", "[["),
            ("parens", "where ("),
            ("not-contains", 'not "'),
        ]:
            if needle in source:
                seen.add(marker)
    required = {
        "decoder:argmax", "decoder:sample", "decoder:beam", "decoder:none",
        "arg:n", "arg:temperature", "arg:seed", "arg:max_len", "arg:top_k", "arg:top_p",
        "distribution", "For", "If", "elif+else", "PyStmt", "augassign", "call", "inline-where",
        "Text", "Interp", "Hole", "annotation:IsInt", "annotation:Regex",
        "LenCmp:chars", "LenCmp:tokens", "OneOf", "IsInt", "Regex", "StopsAt", "StopsBefore", "StartsWith",
        "Contains", "Not", "And", "Or", "triple", "raw", "escape{{", "escape[[", "parens", "not-contains",
    }  # fmt: skip
    assert required <= seen, f"not covered: {sorted(required - seen)}"
