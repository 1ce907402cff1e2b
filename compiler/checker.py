"""Semantic checks on a parsed query, and the query helpers the rest of lmqc uses.

``check`` runs after parsing (``parser.parse`` calls it); the helpers (``holes``, ``inputs``,
``hole_constraints``, ``format_query``, ``query_to_json``) assume a query that passed it.
"""

from __future__ import annotations

import ast
import builtins
import difflib
from collections.abc import Iterator, Mapping
from typing import Any

from ..errors import QueryTypeError
from . import nodes
from .nodes import Constraint, Span

__all__ = ["check", "format_constraint", "format_query", "hole_constraints", "holes", "inputs", "query_to_json"]

_BUILTINS = frozenset(dir(builtins))


def _error(query: nodes.Query, span: Span, message: str) -> QueryTypeError:
    line = span.line if span.line > 0 else None
    column = span.column if span.column > 0 else None
    return QueryTypeError(message, source=query.source, filename=query.filename, line=line, column=column)


# --------------------------------------------------------------------------------------------------------------
# Walking the program


def iter_prompt_strings(body: tuple[nodes.Stmt, ...]) -> Iterator[nodes.PromptString]:
    """Every string statement, in program (source) order."""
    for stmt in body:
        if isinstance(stmt, nodes.PromptString):
            yield stmt
        elif isinstance(stmt, nodes.For):
            yield from iter_prompt_strings(stmt.body)
        elif isinstance(stmt, nodes.If):
            for _, branch in stmt.branches:
                yield from iter_prompt_strings(branch)


def iter_holes(query: nodes.Query) -> Iterator[nodes.Hole]:
    for ps in iter_prompt_strings(query.body):
        for part in ps.parts:
            if isinstance(part, nodes.Hole):
                yield part


def holes(query: nodes.Query) -> list[str]:
    """Hole names in program order, each once."""
    return list(dict.fromkeys(h.name for h in iter_holes(query)))


def iter_atoms(c: Constraint) -> Iterator[nodes.Atom]:
    if isinstance(c, nodes.And | nodes.Or):
        for item in c.items:
            yield from iter_atoms(item)
    elif isinstance(c, nodes.Not):
        yield from iter_atoms(c.operand)
    else:
        yield c


def _where_clauses(query: nodes.Query) -> Iterator[Constraint]:
    for ps in iter_prompt_strings(query.body):
        if ps.where is not None:
            yield ps.where
    if query.where is not None:
        yield query.where


# --------------------------------------------------------------------------------------------------------------
# Checks


def check(query: nodes.Query, var_spans: Mapping[int, Span] | None = None) -> None:
    """Raise QueryTypeError on the first semantic problem. ``var_spans`` maps id(node) to the span of the
    variable name it mentions (the parser knows it; nodes only carry their whole span)."""
    spans = var_spans or {}
    names = holes(query)
    _check_straight_line(query, query.body, set(), in_loop=False)
    for clause in _where_clauses(query):
        for atom in iter_atoms(clause):
            if atom.var not in names:
                hint = difflib.get_close_matches(atom.var, names, n=1, cutoff=0.6)
                suffix = f"; did you mean '{hint[0]}'?" if hint else ""
                known = f" (holes: {', '.join(names)})" if names and not hint else ""
                raise _error(
                    query, spans.get(id(atom), atom.span), f"unknown variable '{atom.var}' in where clause{suffix}{known}"
                )
    hole_constraints(query)
    dist = query.distribution
    if dist is not None:
        span = spans.get(id(dist), dist.span)
        if not names or names[-1] != dist.var or [h.name for h in iter_holes(query)][-1] != dist.var:
            if dist.var not in names:
                hint = difflib.get_close_matches(dist.var, names, n=1, cutoff=0.6)
                suffix = f"; did you mean '{hint[0]}'?" if hint else ""
                raise _error(query, span, f"unknown distribution variable '{dist.var}'{suffix}")
            raise _error(query, span, f"distribution variable '{dist.var}' must be the last hole of the prompt")


def _check_straight_line(query: nodes.Query, body: tuple[nodes.Stmt, ...], seen: set[str], in_loop: bool) -> None:
    """A hole filled twice in straight-line code would silently overwrite its first value."""
    for stmt in body:
        if isinstance(stmt, nodes.PromptString):
            for part in stmt.parts:
                if isinstance(part, nodes.Hole) and not in_loop:
                    if part.name in seen:
                        raise _error(query, part.span, f"hole '{part.name}' is already filled earlier in the prompt")
                    seen.add(part.name)
        elif isinstance(stmt, nodes.For):
            _check_straight_line(query, stmt.body, set(), in_loop=True)
        elif isinstance(stmt, nodes.If):
            for _, branch in stmt.branches:
                # each branch starts from what is filled before the if; what it fills may differ per branch
                _check_straight_line(query, branch, set(seen), in_loop)
        elif isinstance(stmt, nodes.PyStmt) and not in_loop:
            try:
                tree = ast.parse(stmt.source)
            except SyntaxError:
                continue
            if tree.body and isinstance(tree.body[0], ast.Break | ast.Continue):
                word = "break" if isinstance(tree.body[0], ast.Break) else "continue"
                raise _error(query, stmt.span, f"'{word}' outside a for loop")


def _split(query: nodes.Query, c: Constraint) -> list[Constraint]:
    """Top-level conjuncts of a clause; each must mention a single variable."""
    items = c.items if isinstance(c, nodes.And) else (c,)
    for item in items:
        if len(nodes.constraint_vars(item)) > 1:
            raise _error(query, item.span, "constraints on different variables must be combined with 'and'")
    return list(items)


def hole_constraints(query: nodes.Query) -> dict[str, Constraint | None]:
    """Every hole's constraint: its annotation, its statement's inline where and the query where, conjoined."""
    parts: dict[str, list[Constraint]] = {name: [] for name in holes(query)}

    def add(c: Constraint) -> None:
        (var,) = nodes.constraint_vars(c)
        bucket = parts.setdefault(var, [])
        if c not in bucket:
            bucket.append(c)

    for ps in iter_prompt_strings(query.body):
        for part in ps.parts:
            if isinstance(part, nodes.Hole) and part.annotation is not None:
                add(part.annotation)
    for ps in iter_prompt_strings(query.body):
        if ps.where is not None:
            for item in _split(query, ps.where):
                add(item)
    if query.where is not None:
        for item in _split(query, query.where):
            add(item)
    out: dict[str, Constraint | None] = {}
    for name, items in parts.items():
        if not items:
            out[name] = None
        elif len(items) == 1:
            out[name] = items[0]
        else:
            out[name] = nodes.And(tuple(items), span=items[0].span)
    return out


# --------------------------------------------------------------------------------------------------------------
# Inputs: free names of the Python fragments


class _Names(ast.NodeVisitor):
    """Names an expression/statement reads and binds; comprehension and lambda variables stay local."""

    def __init__(self) -> None:
        self.loads: list[str] = []
        self.stores: list[str] = []
        self._local: list[set[str]] = []

    def visit_Name(self, node: ast.Name) -> None:
        if isinstance(node.ctx, ast.Load):
            if not any(node.id in scope for scope in self._local):
                self.loads.append(node.id)
        elif not self._local:
            self.stores.append(node.id)

    def visit_AugAssign(self, node: ast.AugAssign) -> None:
        if isinstance(node.target, ast.Name):
            self.loads.append(node.target.id)
        self.generic_visit(node)

    def visit_NamedExpr(self, node: ast.NamedExpr) -> None:
        self.visit(node.value)
        self.stores.append(node.target.id)

    def _comprehension(self, node: ast.ListComp | ast.SetComp | ast.GeneratorExp | ast.DictComp) -> None:
        scope: set[str] = set()
        for gen in node.generators:
            self.visit(gen.iter)
            scope |= {n.id for n in ast.walk(gen.target) if isinstance(n, ast.Name)}
            self._local.append(scope)
            for cond in gen.ifs:
                self.visit(cond)
            self._local.pop()
        self._local.append(scope)
        if isinstance(node, ast.DictComp):
            self.visit(node.key)
            self.visit(node.value)
        else:
            self.visit(node.elt)
        self._local.pop()

    visit_ListComp = visit_SetComp = visit_GeneratorExp = visit_DictComp = _comprehension

    def visit_Lambda(self, node: ast.Lambda) -> None:
        a = node.args
        params = {x.arg for x in [*a.posonlyargs, *a.args, *a.kwonlyargs]}
        params |= {x.arg for x in (a.vararg, a.kwarg) if x is not None}
        for default in [*a.defaults, *[d for d in a.kw_defaults if d is not None]]:
            self.visit(default)
        self._local.append(params)
        self.visit(node.body)
        self._local.pop()

    def visit_Import(self, node: ast.Import | ast.ImportFrom) -> None:
        for alias in node.names:
            self.stores.append((alias.asname or alias.name).split(".")[0])

    visit_ImportFrom = visit_Import


def _names(source: str, mode: str) -> tuple[list[str], list[str]]:
    visitor = _Names()
    try:
        visitor.visit(ast.parse(source, mode=mode))
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        pass  # the parser validated every fragment; nothing to learn from one that does not parse here
    return visitor.loads, visitor.stores


def _free_names(body: tuple[nodes.Stmt, ...], bound: set[str], out: dict[str, None]) -> None:
    """Walk the program in execution order: a name read before anything bound it is an input."""

    def read(names: list[str]) -> None:
        for name in names:
            if name not in bound and name not in _BUILTINS:
                out.setdefault(name)

    for stmt in body:
        if isinstance(stmt, nodes.PromptString):
            for part in stmt.parts:
                if isinstance(part, nodes.Interp):
                    read(_names(part.expr, "eval")[0])
                elif isinstance(part, nodes.Hole):
                    bound.add(part.name)
        elif isinstance(stmt, nodes.PyStmt):
            loads, stores = _names(stmt.source, "exec")
            read(loads)
            bound.update(stores)
        elif isinstance(stmt, nodes.For):
            read(_names(stmt.iter, "eval")[0])
            bound.update(_names(f"for {stmt.target} in ():\n pass", "exec")[1])
            _free_names(stmt.body, bound, out)
        elif isinstance(stmt, nodes.If):
            after = set(bound)
            for cond, branch in stmt.branches:
                if cond is not None:
                    read(_names(cond, "eval")[0])
                inner = set(bound)
                _free_names(branch, inner, out)
                after |= inner
            bound |= after


def inputs(query: nodes.Query) -> list[str]:
    """Names the program reads before binding them itself (holes, assignments and loop targets bind;
    builtins are never inputs), in order of first use. ``x = int(x)`` makes ``x`` an input."""
    out: dict[str, None] = {}
    _free_names(query.body, set(), out)
    return list(out)


# --------------------------------------------------------------------------------------------------------------
# Printing


def format_constraint(c: Constraint) -> str:
    """A constraint as text; the outermost and/or needs no parentheses."""
    if isinstance(c, nodes.And | nodes.Or):
        word = " and " if isinstance(c, nodes.And) else " or "
        return word.join(map(str, c.items))
    return str(c)


def _quote(s: str) -> str:
    out = []
    for ch in s:
        if ch == "\\":
            out.append("\\\\")
        elif ch == '"':
            out.append('\\"')
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\t":
            out.append("\\t")
        elif ch.isprintable():
            out.append(ch)
        else:
            out.append(repr(ch)[1:-1])
    return "".join(out)


def format_prompt_string(ps: nodes.PromptString) -> str:
    out = ['"']
    for part in ps.parts:
        if isinstance(part, nodes.Text):
            text = _quote(part.value)
            for ch in "{}[]":
                text = text.replace(ch, ch * 2)
            out.append(text)
        elif isinstance(part, nodes.Interp):
            out.append("{" + _quote(part.expr) + "}")
        else:
            ann = part.annotation
            if isinstance(ann, nodes.IsInt):
                out.append(f"[{part.name}: int]")
            elif isinstance(ann, nodes.Regex):
                out.append(f"[{part.name}: {_quote(repr(ann.pattern))}]")
            else:
                out.append(f"[{part.name}]")
    out.append('"')
    if ps.where is not None:
        out.append(f" where {format_constraint(ps.where)}")
    return "".join(out)


def _format_body(body: tuple[nodes.Stmt, ...], indent: str) -> Iterator[str]:
    for stmt in body:
        if isinstance(stmt, nodes.PromptString):
            yield indent + format_prompt_string(stmt)
        elif isinstance(stmt, nodes.PyStmt):
            yield indent + stmt.source
        elif isinstance(stmt, nodes.For):
            yield f"{indent}for {stmt.target} in {stmt.iter}:"
            yield from _format_body(stmt.body, indent + "    ")
        elif isinstance(stmt, nodes.If):
            for i, (cond, branch) in enumerate(stmt.branches):
                head = "else:" if cond is None else f"{'if' if i == 0 else 'elif'} {cond}:"
                yield indent + head
                yield from _format_body(branch, indent + "    ")


def _model(model: str | None) -> str:
    return "-" if model is None else '"' + _quote(model) + '"'


def format_query(query: nodes.Query) -> str:
    """The query as checked: decoder, model, prompt program, clauses, holes, inputs and per-hole constraints."""
    lines = [
        f"decoder: {query.decoder if query.decoder is not None else '-'}",
        f"model: {_model(query.model)}",
        "prompt:",
        *_format_body(query.body, "    "),
        f"where: {format_constraint(query.where) if query.where is not None else '-'}",
    ]
    dist = query.distribution
    lines.append(f"distribution: {f'{dist.var} in {list(dist.options)!r}' if dist is not None else '-'}")
    lines.append(f"holes: {', '.join(holes(query)) or '-'}")
    lines.append(f"inputs: {', '.join(inputs(query)) or '-'}")
    lines.append("constraints:")
    for name, c in hole_constraints(query).items():
        lines.append(f"    {name}: {format_constraint(c) if c is not None else '-'}")
    return "\n".join(lines) + "\n"


def query_to_json(query: nodes.Query) -> dict[str, Any]:
    """A JSON-ready summary (``lmqc check --json``)."""
    dec = query.decoder
    dist = query.distribution
    return {
        "decoder": None if dec is None else {"name": dec.name, "args": dict(dec.args)},
        "holes": holes(query),
        "inputs": inputs(query),
        "model": query.model,
        "constraints": {
            name: format_constraint(c) if c is not None else None for name, c in hole_constraints(query).items()
        },
        "distribution": None if dist is None else {"var": dist.var, "options": list(dist.options)},
    }
