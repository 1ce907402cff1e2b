"""LMQL variable decorators (``"[@fn X]"``), as LMQL defines them.

A plain function is a *post-processing* decorator: called when ``X`` has been generated, with ``(value)`` or
``(value, prompt_value, context)``; it returns the new program value, or a ``(value, prompt_value)`` pair to
also change the text the prompt (and the model) continues from. Several decorators ``[@a @b X]`` post-process
right to left. ``@lmqc.decorators.pre`` marks a decorator called before generation with ``(variable,
context)``: returning a string fixes the value without decoding, returning ``variable`` generates as usual.
``@lmqc.decorators.streaming`` marks one called with ``(value, context)`` for every intermediate value while
``X`` is decoded (the text so far; beam search gives whole values only) and once more with the
final value. Query code may spell these ``lmql.decorators.pre`` etc.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

F = TypeVar("F", bound=Callable[..., Any])

__all__ = ["DecoratorContext", "Variable", "pre", "streaming"]


def pre(fn: F) -> F:
    """Mark a decorator as pre-processing (called before the variable is generated)."""
    fn.__lmqc_stage__ = "pre"  # type: ignore[attr-defined]
    return fn


def streaming(fn: F) -> F:
    """Mark a decorator as streaming (called with each intermediate value while decoding, then the final one)."""
    fn.__lmqc_stage__ = "streaming"  # type: ignore[attr-defined]
    return fn


@dataclass(frozen=True, slots=True)
class Variable:
    """What a pre-processing decorator receives: the hole about to be generated."""

    name: str


@dataclass(slots=True)
class DecoratorContext:
    """The program state a decorator may look at: the prompt so far and the variables filled so far."""

    prompt: str
    variables: dict[str, Any] = field(default_factory=dict)

    def get_var(self, name: str) -> Any:
        return self.variables.get(name)


def stage(decorator: Any) -> str:
    return getattr(decorator, "__lmqc_stage__", "post")
