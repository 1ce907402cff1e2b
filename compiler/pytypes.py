"""Python types as JSON schemas (typed holes ``[X: Person]``, ``JSON(X, Person)``) and JSON values back to Python.

:func:`schema_for` maps a type to a JSON Schema:

=====================================  ==========================================================================
``str``, ``int``, ``float``, ``bool``  ``string``, ``integer``, ``number``, ``boolean``; ``None`` -> ``null``
``list[T]``, ``set[T]``, ``tuple``     arrays (``tuple[A, B]``: exactly those items; ``tuple[T, ...]``: any count)
``dict[str, T]``                       an object with any keys, values ``T``
``Optional[T]``, ``A | B``, ``Union``  ``anyOf``
``Literal[...]``, an ``Enum``          ``enum`` of the values
``datetime.date`` / ``datetime`` ...   strings with ``format`` ``date``, ``date-time``, ``time``, ``uuid``
a dataclass, a ``TypedDict``,          an object with the fields in declaration order; fields without a default
a ``NamedTuple``                       are required; nested and recursive classes go through ``$defs``
a Pydantic model                       its own ``model_json_schema()`` (Pydantic is optional, never imported here
                                       unless the type is a Pydantic model)
a ``dict``                             taken as a JSON schema as it is
=====================================  ==========================================================================

:func:`convert` builds the Python value from the parsed JSON: class instances (``model_validate`` for
Pydantic), tuples, sets, enums, dates.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import decimal
import enum
import json
import types
import typing
import uuid
from typing import Any

_SCALARS: dict[Any, dict[str, Any]] = {
    str: {"type": "string"},
    int: {"type": "integer"},
    float: {"type": "number"},
    bool: {"type": "boolean"},
    type(None): {"type": "null"},
    decimal.Decimal: {"type": "number"},
    _dt.datetime: {"type": "string", "format": "date-time"},
    _dt.date: {"type": "string", "format": "date"},
    _dt.time: {"type": "string", "format": "time"},
    uuid.UUID: {"type": "string", "format": "uuid"},
    list: {"type": "array"},
    dict: {"type": "object"},
    tuple: {"type": "array"},
    set: {"type": "array"},
    frozenset: {"type": "array"},
}


def is_type_annotation(obj: Any) -> bool:
    """Whether a hole annotation's value describes JSON values (a type lmqc maps to a schema, or a schema)."""
    if isinstance(obj, dict):
        return True
    if obj is None or obj is typing.Any:
        return True
    if typing.get_origin(obj) is not None:
        return True
    return isinstance(obj, type) and (
        obj in _SCALARS or dataclasses.is_dataclass(obj) or issubclass(obj, enum.Enum) or _is_pydantic(obj)
        or _is_typeddict(obj) or _is_namedtuple(obj)
    )


def schema_for(tp: Any) -> Any:
    """The JSON Schema of a Python type (a ``dict`` is returned as is).

    Raises
    ------
    TypeError
        A type with no JSON form (a function, an arbitrary class, ``dict`` with non-string keys ...).
    """
    if isinstance(tp, dict | bool):
        return tp
    if isinstance(tp, str):
        try:
            return json.loads(tp)
        except json.JSONDecodeError as e:
            raise TypeError(f"a schema string must be JSON ({e})") from None
    defs: dict[str, Any] = {}
    root = _Builder(defs).schema(tp)
    if defs:
        return {**root, "$defs": defs}
    return root


class _Builder:
    def __init__(self, defs: dict[str, Any]) -> None:
        self.defs = defs
        self.names: dict[Any, str] = {}

    def schema(self, tp: Any) -> dict[str, Any]:
        if tp is None:
            return {"type": "null"}
        if tp is typing.Any or tp is object:
            return {}
        origin = typing.get_origin(tp)
        args = typing.get_args(tp)
        if origin is typing.Annotated:
            return self.schema(args[0])
        if origin is typing.Literal:
            values = list(args)
            for v in values:
                if not isinstance(v, str | int | float | bool | type(None)):
                    raise TypeError(f"Literal value {v!r} has no JSON form")
            return {"enum": values}
        if origin is typing.Union or origin is types.UnionType:
            return {"anyOf": [self.schema(a) for a in args]}
        if origin in (list, set, frozenset) or origin in _abc_sequences():
            return {"type": "array", "items": self.schema(args[0])} if args else {"type": "array"}
        if origin is tuple:
            if len(args) == 2 and args[1] is Ellipsis:
                return {"type": "array", "items": self.schema(args[0])}
            if args == ((),):
                return {"type": "array", "maxItems": 0}
            return {"type": "array", "prefixItems": [self.schema(a) for a in args], "minItems": len(args),
                    "maxItems": len(args)}
        if origin in (dict,) or origin in _abc_mappings():
            if args and args[0] is not str:
                raise TypeError(f"{tp}: JSON object keys are strings")
            return {"type": "object", "additionalProperties": self.schema(args[1])} if args else {"type": "object"}
        if origin is not None:
            raise TypeError(f"type {tp} has no JSON schema")
        if not isinstance(tp, type):
            raise TypeError(f"{tp!r} is not a type")
        if tp in _SCALARS:
            return dict(_SCALARS[tp])
        if issubclass(tp, enum.Enum):
            return {"enum": [m.value for m in tp]}
        if _is_pydantic(tp):
            return self.ref(tp, lambda: _pydantic_schema(tp), own_defs=True)
        if dataclasses.is_dataclass(tp):
            return self.ref(tp, lambda: self.fields(tp, _dataclass_fields(tp)))
        if _is_typeddict(tp):
            hints = _hints(tp)
            required = getattr(tp, "__required_keys__", frozenset(hints))
            return self.ref(tp, lambda: self.fields(tp, [(k, h, k in required) for k, h in hints.items()]))
        if _is_namedtuple(tp):
            hints = _hints(tp)
            defaults = getattr(tp, "_field_defaults", {})
            return self.ref(tp, lambda: self.fields(tp, [(k, hints.get(k, Any), k not in defaults)
                                                         for k in tp._fields]))
        raise TypeError(f"type {tp.__qualname__} has no JSON schema (use a dataclass, a TypedDict, a Pydantic "
                        "model, a Literal, an Enum or a builtin type)")

    def ref(self, tp: type, make: Any, own_defs: bool = False) -> dict[str, Any]:
        name = self.names.get(tp)
        if name is None:
            base = getattr(tp, "__name__", "T")
            name = base
            k = 2
            while name in self.defs:
                name = f"{base}{k}"
                k += 1
            self.names[tp] = name
            self.defs[name] = {}  # placeholder: recursion refers to it
            body = make()
            if own_defs:
                body = self.rebase(body, name)
            self.defs[name] = body
        return {"$ref": f"#/$defs/{name}"}

    def rebase(self, body: dict[str, Any], name: str) -> dict[str, Any]:
        """A Pydantic schema's own ``$defs`` moved into ours (its refs renamed)."""
        inner = dict(body.pop("$defs", {}) or {})
        inner.update(body.pop("definitions", {}) or {})
        if not inner:
            return body
        rename = {}
        for k in inner:
            new = k if k not in self.defs else f"{name}_{k}"
            rename[k] = new
        text = json.dumps(body)
        inner_text = json.dumps(inner)
        for old, new in rename.items():
            for prefix in ("#/$defs/", "#/definitions/"):
                text = text.replace(json.dumps(prefix + old)[1:-1], "#/$defs/" + new)
                inner_text = inner_text.replace(json.dumps(prefix + old)[1:-1], "#/$defs/" + new)
        moved = json.loads(inner_text)
        for k, v in moved.items():
            self.defs[rename[k]] = v
        return json.loads(text)

    def fields(self, tp: type, fields: list[tuple[str, Any, bool]]) -> dict[str, Any]:
        props = {name: self.schema(hint) for name, hint, _ in fields}
        required = [name for name, _, req in fields if req]
        out: dict[str, Any] = {"type": "object", "properties": props}
        if required:
            out["required"] = required
        return out


def _abc_sequences() -> tuple[Any, ...]:
    import collections.abc as abc

    return (abc.Sequence, abc.MutableSequence, abc.Set, abc.MutableSet, abc.Iterable, abc.Collection)


def _abc_mappings() -> tuple[Any, ...]:
    import collections.abc as abc

    return (abc.Mapping, abc.MutableMapping)


def _is_pydantic(tp: Any) -> bool:
    return isinstance(tp, type) and (hasattr(tp, "model_json_schema") and hasattr(tp, "model_validate")
                                     or hasattr(tp, "__fields__") and hasattr(tp, "parse_obj"))


def _pydantic_schema(tp: Any) -> dict[str, Any]:
    if hasattr(tp, "model_json_schema"):
        return tp.model_json_schema()
    return tp.schema()  # Pydantic 1


def _is_typeddict(tp: Any) -> bool:
    return isinstance(tp, type) and issubclass(tp, dict) and hasattr(tp, "__total__")


def _is_namedtuple(tp: Any) -> bool:
    return isinstance(tp, type) and issubclass(tp, tuple) and hasattr(tp, "_fields")


def _hints(tp: Any) -> dict[str, Any]:
    try:
        return typing.get_type_hints(tp)
    except Exception:  # noqa: BLE001 - unresolvable string annotations (a class defined inside a query body)
        return {k: (v if not isinstance(v, str) else Any) for k, v in getattr(tp, "__annotations__", {}).items()}


def _dataclass_fields(tp: Any) -> list[tuple[str, Any, bool]]:
    hints = _hints(tp)
    out = []
    for f in dataclasses.fields(tp):
        if not f.init:
            continue
        required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        hint = hints.get(f.name, f.type if not isinstance(f.type, str) else Any)
        out.append((f.name, hint, required))
    return out


# --------------------------------------------------------------------------------------------------------------
# JSON values -> Python values


def convert(tp: Any, value: Any) -> Any:
    """The Python value of type ``tp`` for a JSON value valid for ``schema_for(tp)``."""
    if isinstance(tp, dict | bool | str) or tp is None or tp is typing.Any or tp is object:
        return value
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin is typing.Annotated:
        return convert(args[0], value)
    if origin is typing.Literal:
        return value
    if origin is typing.Union or origin is types.UnionType:
        return _convert_union(args, value)
    if origin in (list, set, frozenset) or origin in _abc_sequences():
        items = [convert(args[0], v) for v in value] if args else list(value)
        return set(items) if origin is set else frozenset(items) if origin is frozenset else items
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(convert(args[0], v) for v in value)
        return tuple(convert(a, v) for a, v in zip(args, value, strict=False))
    if origin is dict or origin in _abc_mappings():
        return {k: convert(args[1], v) for k, v in value.items()} if args else dict(value)
    if not isinstance(tp, type):
        return value
    if tp is float and isinstance(value, int | float):
        return float(value)
    if tp is decimal.Decimal:
        return decimal.Decimal(str(value))
    if tp is _dt.datetime:
        return _dt.datetime.fromisoformat(value)
    if tp is _dt.date:
        return _dt.date.fromisoformat(value)
    if tp is _dt.time:
        return _dt.time.fromisoformat(value)
    if tp is uuid.UUID:
        return uuid.UUID(value)
    if tp in (tuple, set, frozenset):
        return tp(value)
    if issubclass(tp, enum.Enum):
        return tp(value)
    if _is_pydantic(tp):
        return tp.model_validate(value) if hasattr(tp, "model_validate") else tp.parse_obj(value)
    if dataclasses.is_dataclass(tp) and isinstance(value, dict):
        kinds = {name: hint for name, hint, _ in _dataclass_fields(tp)}
        return tp(**{k: convert(kinds.get(k, Any), v) for k, v in value.items() if k in kinds})
    if _is_typeddict(tp) and isinstance(value, dict):
        hints = _hints(tp)
        return {k: convert(hints.get(k, Any), v) for k, v in value.items()}
    if _is_namedtuple(tp) and isinstance(value, dict):
        hints = _hints(tp)
        return tp(**{k: convert(hints.get(k, Any), v) for k, v in value.items()})
    return value


def _convert_union(args: tuple[Any, ...], value: Any) -> Any:
    if value is None and type(None) in args:
        return None
    for a in args:
        if a is type(None):
            continue
        if _fits(a, value):
            return convert(a, value)
    return value


def _fits(tp: Any, value: Any) -> bool:
    """Whether a JSON value is in the language lmqc writes for ``tp`` (the first union member that fits wins)."""
    from .jsonschema import SchemaError, compile_schema

    try:
        lang = compile_schema(schema_for(tp))
    except (SchemaError, TypeError):
        return False
    text = json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    return lang.dfa.accepts(text)
