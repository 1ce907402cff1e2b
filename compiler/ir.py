"""Per-hole constraint IR: what ``lower`` produces from the AST and the automaton builders consume.

A hole's constraints split into three independent parts:

* ``language``: a character-level language the value must belong to, as a boolean formula of character atoms
  (``LenCmp`` with ``tokens=False``, ``OneOf``, ``IsInt``, ``Regex``, ``StartsWith``, ``Contains``, combined
  with ``And``/``Or``/``Not``); ``None`` means any string;
* ``stops``: stop phrases; generation of the hole ends at the first occurrence of any of them (a token that
  crosses the phrase is allowed and the value is cut there; ``keep`` says whether the phrase stays in the value);
* a token-count window ``min_tokens <= n <= max_tokens`` enforced by the runtime on top of the automaton.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .nodes import NOWHERE, Constraint, Span


@dataclass(frozen=True, slots=True)
class Stop:
    phrase: str
    keep: bool  # STOPS_AT keeps the phrase in the value, STOPS_BEFORE drops it

    def __str__(self) -> str:
        return f"{'STOPS_AT' if self.keep else 'STOPS_BEFORE'} {self.phrase!r}"


@dataclass(frozen=True, slots=True)
class HoleIR:
    var: str
    language: Constraint | None = None
    stops: tuple[Stop, ...] = ()
    min_tokens: int = 0
    max_tokens: int | None = None
    is_int: bool = False  # the value is returned as a Python int
    span: Span = field(default=NOWHERE, compare=False)
    parse: str | None = None  # "float", "bool" or "json": how the runtime turns the text into the value

    def __str__(self) -> str:
        parts = [f"hole {self.var}:", f"  language: {self.language if self.language is not None else '.*'}"]
        for stop in self.stops:
            parts.append(f"  stop: {stop}")
        if self.min_tokens or self.max_tokens is not None:
            parts.append(f"  tokens: {self.min_tokens}..{'' if self.max_tokens is None else self.max_tokens}")
        if self.is_int:
            parts.append("  value: int")
        elif self.parse:
            parts.append(f"  value: {self.parse}")

        return "\n".join(parts)
