"""``import lmql...`` inside a query: LMQL programs import from LMQL's package; in lmqc they get lmqc.

LMQL query code commonly imports a few names from LMQL itself (``from lmql.runtime.program_state import
ProgramState`` to annotate a decorator, ``lmql.decorators.streaming``). Query code runs with builtins whose
``__import__`` answers ``lmql`` and the ``lmql.*`` modules that have an lmqc counterpart, whether or not LMQL is
installed, and refuses the others with an error naming the module (rather than a bare ``No module named 'lmql'``).
Plain Python code outside queries is not affected.
"""

from __future__ import annotations

import builtins
import types
from collections.abc import Callable
from typing import Any

__all__ = ["query_builtins"]

_MODULES: dict[str, Callable[[], Any]] = {}


def _lmqc() -> Any:
    # a package of its own (``lmql.runtime`` must not land on lmqc's real ``runtime``) reading through to lmqc
    import lmqc

    mod = _package("lmql")
    mod.__getattr__ = lambda attr: getattr(lmqc, attr)  # type: ignore[attr-defined] # PEP 562
    return mod


def _decorators() -> Any:
    import lmqc.decorators

    return lmqc.decorators


def _program_state() -> Any:
    from lmqc.decorators import DecoratorContext

    mod = types.ModuleType("lmql.runtime.program_state", "lmqc's stand-in: the context a decorator receives")
    mod.ProgramState = DecoratorContext  # type: ignore[attr-defined]
    return mod


def _package(name: str, **children: Any) -> Any:
    mod = types.ModuleType(name, f"lmqc's stand-in for LMQL's package {name}")
    mod.__path__ = []  # type: ignore[attr-defined] # a package, so ``import lmql.runtime.x`` may descend
    for k, v in children.items():
        setattr(mod, k, v)
    return mod


_MODULES.update({
    "lmql": _lmqc,
    "lmql.decorators": _decorators,
    "lmql.runtime.program_state": _program_state,
})
_cache: dict[str, Any] = {}


def _module(name: str) -> Any:
    hit = _cache.get(name)
    if hit is not None:
        return hit
    make = _MODULES.get(name)
    if make is None:
        if not any(m.startswith(name + ".") for m in _MODULES):
            raise ModuleNotFoundError(
                f"LMQL's module {name!r} has no counterpart in lmqc (query code may import lmql, lmql.decorators and "
                "lmql.runtime.program_state)",
                name=name,
            )
        mod = _package(name)
    else:
        mod = make()
    _cache[name] = mod
    return mod


def _lmql_import(name: str, globals: Any = None, locals: Any = None, fromlist: Any = (), level: int = 0) -> Any:
    if level != 0 or (name != "lmql" and not name.startswith("lmql.")):
        return builtins.__import__(name, globals, locals, fromlist, level)
    parts = name.split(".")
    for i in range(2, len(parts) + 1):  # ``import lmql.a.b`` binds lmql, with .a and .a.b reachable
        parent, child = _module(".".join(parts[: i - 1])), _module(".".join(parts[:i]))
        if parts[i - 1] not in vars(parent):  # not hasattr: the lmql stand-in reads through to lmqc
            setattr(parent, parts[i - 1], child)
    if fromlist:
        return _module(name)
    return _module("lmql")


_BUILTINS: dict[str, Any] | None = None


def query_builtins() -> dict[str, Any]:
    """The builtins query code runs with: Python's, with an ``__import__`` that answers ``lmql`` imports."""
    global _BUILTINS
    if _BUILTINS is None:
        b = dict(vars(builtins))
        b["__import__"] = _lmql_import
        _BUILTINS = b
    return _BUILTINS
