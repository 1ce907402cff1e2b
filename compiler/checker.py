"""Semantic checks on a parsed query, and the query helpers the rest of lmqc uses.

``check`` runs after parsing (``parser.parse`` calls it); the helpers (``holes``, ``inputs``,
``hole_constraints``, ``format_query``, ``query_to_json``) assume a query that passed it.
"""

from __future__ import annotations

import builtins
import difflib
from collections.abc import Iterator, Mapping
from typing import Any

from ..errors import QueryTypeError
from . import nodes
from .nodes import Constraint, Span

__all__ = [
    "check", "format_constraint", "format_query", "hole_constraints", "hole_slots", "holes", "inputs", "query_to_json",
]

_BUILTINS = frozenset(dir(builtins))


def _error(query: nodes.Query, span: Span, message: str) -> QueryTypeError:
    line = span.line if span.line > 0 else None
    column = span.column if span.column > 0 else None
    return QueryTypeError(message, source=query.source, filename=query.filename, line=line, column=column)


# --------------------------------------------------------------------------------------------------------------
# Walking the query


def iter_prompt_strings(query: nodes.Query) -> Iterator[nodes.PromptString]:
    """Every query string, in source order."""
    yield from query.prompts


def iter_holes(query: nodes.Query) -> Iterator[nodes.Hole]:
    yield from query.holes()


def holes(query: nodes.Query) -> list[str]:
    """Hole names in source order, each once."""
    return list(dict.fromkeys(h.name for h in iter_holes(query)))


def iter_atoms(c: Constraint) -> Iterator[nodes.Atom]:
    if isinstance(c, nodes.And | nodes.Or):
        for item in c.items:
            yield from iter_atoms(item)
    elif isinstance(c, nodes.Not):
        yield from iter_atoms(c.operand)
    else:
        yield c


# --------------------------------------------------------------------------------------------------------------
# Checks


def check(query: nodes.Query, var_spans: Mapping[int, Span] | None = None) -> None:
    """Raise QueryTypeError on the first semantic problem. ``var_spans`` maps id(node) to the span of the
    variable name it mentions (the parser knows it; nodes only carry their whole span)."""
    spans = var_spans or {}
    names = holes(query)

    def unknown(atom: Any, pool: list[str], where: str) -> QueryTypeError:
        hint = difflib.get_close_matches(atom.var, pool, n=1, cutoff=0.6)
        suffix = f"; did you mean '{hint[0]}'?" if hint else ""
        known = f" (holes: {', '.join(pool)})" if pool and not hint else ""
        return _error(query, spans.get(id(atom), atom.span), f"unknown variable '{atom.var}' in {where}{suffix}{known}")

    for ps in query.prompts:
        if ps.where is None:
            continue
        local = list(dict.fromkeys(p.name for p in ps.parts if isinstance(p, nodes.Hole)))
        for atom in iter_atoms(ps.where):
            if atom.var not in local:
                if atom.var in names:
                    raise _error(
                        query, spans.get(id(atom), atom.span),
                        f"'{atom.var}' is not a hole of this query string (an inline where constrains its own holes)",
                    )
                raise unknown(atom, local or names, "where clause")
    if query.where is not None:
        for atom in iter_atoms(query.where):
            if atom.var not in names:
                raise unknown(atom, names, "where clause")
    hole_constraints(query)
    _check_distribution(query, spans, names)
    from .program import build

    build(query)  # Python the compiler refuses (break outside a loop, yield in the body, ...)


def _check_distribution(query: nodes.Query, spans: Mapping[int, Span], names: list[str]) -> None:
    inline = [ps for ps in query.prompts if ps.distribution is not None]
    dists = [ps.distribution for ps in inline] + ([query.distribution] if query.distribution is not None else [])
    if len(dists) > 1:
        raise _error(query, dists[1].span, "only one distribution clause per query")
    if not dists:
        return
    dist = dists[0]
    span = spans.get(id(dist), dist.span)
    scope = [p for p in inline[0].parts if isinstance(p, nodes.Hole)] if inline else query.holes()
    if dist.var not in names:
        hint = difflib.get_close_matches(dist.var, names, n=1, cutoff=0.6)
        suffix = f"; did you mean '{hint[0]}'?" if hint else ""
        raise _error(query, span, f"unknown distribution variable '{dist.var}'{suffix}")
    if not scope or scope[-1].name != dist.var:
        where = "of its query string" if inline else "of the prompt"
        raise _error(query, span, f"distribution variable '{dist.var}' must be the last hole {where}")


def _split(query: nodes.Query, c: Constraint) -> list[Constraint]:
    """Top-level conjuncts of a clause; each must mention a single variable."""
    items = c.items if isinstance(c, nodes.And) else (c,)
    for item in items:
        if len(nodes.constraint_vars(item)) > 1:
            raise _error(query, item.span, "constraints on different variables must be combined with 'and'")
    return list(items)


def hole_constraints(query: nodes.Query) -> dict[int, Constraint | None]:
    """Every hole occurrence's constraint (by ``Hole.index``): its annotation, its query string's inline
    ``where`` and the query's ``where``, conjoined. An inline where applies to its own query string only."""
    top: dict[str, list[Constraint]] = {}
    if query.where is not None:
        for item in _split(query, query.where):
            (var,) = nodes.constraint_vars(item)
            top.setdefault(var, []).append(item)
    out: dict[int, Constraint | None] = {}
    for ps in query.prompts:
        local: dict[str, list[Constraint]] = {}
        if ps.where is not None:
            for item in _split(query, ps.where):
                (var,) = nodes.constraint_vars(item)
                local.setdefault(var, []).append(item)
        for part in ps.parts:
            if not isinstance(part, nodes.Hole):
                continue
            items: list[Constraint] = []
            for c in ([part.annotation] if part.annotation is not None else []) + local.get(part.name, []) + top.get(
                part.name, []
            ):
                if c not in items:
                    items.append(c)
            if not items:
                out[part.index] = None
            elif len(items) == 1:
                out[part.index] = items[0]
            else:
                out[part.index] = nodes.And(tuple(items), span=items[0].span)
    return out


def hole_slots(query: nodes.Query) -> dict[int, str]:
    """The automaton slot of every hole occurrence: occurrences of one name with the same constraint share a
    slot; the first distinct constraint of a name is slot ``NAME``, later ones ``NAME#2``, ``NAME#3`` ..."""
    constraints = hole_constraints(query)
    seen: dict[str, list[Constraint | None]] = {}
    out: dict[int, str] = {}
    for hole in query.holes():
        pool = seen.setdefault(hole.name, [])
        c = constraints[hole.index]
        if c not in pool:
            pool.append(c)
        k = pool.index(c)
        out[hole.index] = hole.name if k == 0 else f"{hole.name}#{k + 1}"
    return out


def inputs(query: nodes.Query) -> list[str]:
    """Names the program reads but never binds (holes, assignments, imports, definitions bind; builtins are
    never inputs), in order of first use in the source."""
    from .program import build

    return list(build(query).inputs)


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
            conv = f"!{part.conversion}" if part.conversion else ""
            spec = f":{part.format_spec}" if part.format_spec else ""
            out.append("{" + _quote(part.expr) + conv + spec + "}")
        elif isinstance(part, nodes.Role):
            out.append("{:" + part.name + "}")
        else:
            ann = part.annotation
            name = "".join(f"@{_quote(d)} " for d in part.decorators) + part.name
            if isinstance(ann, nodes.IsInt):
                out.append(f"[{name}: int]")
            elif isinstance(ann, nodes.IsFloat | nodes.IsBool):
                out.append(f"[{name}: {'float' if isinstance(ann, nodes.IsFloat) else 'bool'}]")
            elif isinstance(ann, nodes.Regex):
                out.append(f"[{name}: {_quote(repr(ann.pattern))}]")
            elif part.tactic is not None:
                out.append(f"[{name}: {_quote(part.tactic)}]")
            else:
                out.append(f"[{name}]")
    out.append('"')
    if ps.where is not None:
        out.append(f" where {format_constraint(ps.where)}")
    if ps.distribution is not None:
        out.append(f" distribution {_format_dist(ps.distribution)}")
    return "".join(out)


def _format_dist(dist: nodes.Distribution) -> str:
    opts = dist.options
    return f"{dist.var} in {opts if isinstance(opts, nodes.Dyn) else repr(list(opts))}"


def _model(model: str | nodes.Dyn | None) -> str:
    if isinstance(model, nodes.Dyn):
        return str(model)
    return "-" if model is None else '"' + _quote(model) + '"'


def format_query(query: nodes.Query) -> str:
    """The query as checked: decoder, model, query strings, clauses, holes, inputs and per-hole constraints."""
    lines = [
        f"decoder: {query.decoder if query.decoder is not None else '-'}",
        f"model: {_model(query.model)}",
        "query strings:",
        *(f"    {ps.span.line}: {format_prompt_string(ps)}" for ps in query.prompts),
        f"where: {format_constraint(query.where) if query.where is not None else '-'}",
    ]
    dist = query.distribution
    lines.append(f"distribution: {_format_dist(dist) if dist is not None else '-'}")
    lines.append(f"holes: {', '.join(holes(query)) or '-'}")
    lines.append(f"inputs: {', '.join(inputs(query)) or '-'}")
    lines.append("constraints:")
    slots = hole_slots(query)
    shown: set[str] = set()
    for index, c in hole_constraints(query).items():
        if slots[index] in shown:
            continue
        shown.add(slots[index])
        lines.append(f"    {slots[index]}: {format_constraint(c) if c is not None else '-'}")
    return "\n".join(lines) + "\n"


def query_to_json(query: nodes.Query) -> dict[str, Any]:
    """A JSON-ready summary (``lmqc check --json``)."""
    dec = query.decoder
    dist = query.distribution
    return {
        "decoder": None if dec is None else {"name": dec.name, "args": dict(dec.args)},
        "holes": holes(query),
        "inputs": inputs(query),
        "model": query.model if not isinstance(query.model, nodes.Dyn) else str(query.model),
        "constraints": {
            hole_slots(query)[i]: format_constraint(c) if c is not None else None
            for i, c in hole_constraints(query).items()
        },
        "distribution": None
        if dist is None
        else {"var": dist.var, "options": str(dist.options) if isinstance(dist.options, nodes.Dyn) else list(dist.options)},
    }
