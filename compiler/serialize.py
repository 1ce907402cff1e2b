"""Constraint IR <-> JSON, for artifacts (the query itself travels as source and is parsed again).

Only the node and IR classes listed here can be rebuilt, so loading an artifact never executes code or
instantiates anything else (the point of refusing pickle).
"""

from __future__ import annotations

import dataclasses
from typing import Any

from lmqc.errors import ArtifactError

from . import ir, nodes

_CLASSES: dict[str, type] = {
    cls.__name__: cls
    for cls in (
        nodes.Span,
        nodes.And,
        nodes.Or,
        nodes.Not,
        nodes.LenCmp,
        nodes.OneOf,
        nodes.IsInt,
        nodes.IsFloat,
        nodes.IsBool,
        nodes.JsonSchema,
        nodes.Regex,
        nodes.StopsAt,
        nodes.StopsBefore,
        nodes.StartsWith,
        nodes.Contains,
        nodes.Dyn,
        ir.Stop,
        ir.HoleIR,
    )
}


def to_json(value: Any) -> Any:
    """A JSON-ready structure for a node, IR object, tuple, or literal."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        out: dict[str, Any] = {"_t": type(value).__name__}
        for f in dataclasses.fields(value):
            out[f.name] = to_json(getattr(value, f.name))
        return out
    if isinstance(value, tuple | list):
        return {"_tuple": [to_json(v) for v in value]}
    if value is None or isinstance(value, bool | int | float | str):
        return value
    raise ArtifactError(f"cannot serialize {type(value).__name__}")


def from_json(data: Any) -> Any:
    """Inverse of :func:`to_json`; refuses any class it does not know."""
    if isinstance(data, dict):
        if "_tuple" in data:
            return tuple(from_json(v) for v in data["_tuple"])
        name = data.get("_t")
        cls = _CLASSES.get(name) if isinstance(name, str) else None
        if cls is None:
            raise ArtifactError(f"artifact names an unknown node type {name!r}")
        kwargs = {k: from_json(v) for k, v in data.items() if k != "_t"}
        try:
            return cls(**kwargs)
        except TypeError as exc:
            raise ArtifactError(f"artifact node {name} is malformed: {exc}") from None
    if isinstance(data, list):
        return tuple(from_json(v) for v in data)
    return data
