"""Stop phrases: normalized rules, the search for an occurrence in new bytes, and the stop-only automaton test.

Stop phrases follow LMQL: generation ends at the first occurrence (``STOPS_AT`` keeps the phrase in the value,
``STOPS_BEFORE`` drops it), and a phrase counts only once the other constraints allow the value to end, so before
a ``len(TOKENS(X)) > N`` minimum it is ignored (see ``sequences.Sequencer.check_end`` and ``hole.HoleTables``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from lmqc.errors import DecodeError

from .masks import PerObject, tables_of

__all__ = ["StopRule", "can_stop", "find_stop", "is_stop_rule", "stop_pair", "without_stops"]

StopRule = tuple[bytes, bool]  # (phrase, keep)

def is_stop_rule(x: Any) -> bool:
    if hasattr(x, "phrase") and hasattr(x, "keep"):
        return True
    return isinstance(x, tuple) and len(x) == 2 and isinstance(x[0], (str, bytes)) and isinstance(x[1], bool)


def stop_pair(stop: Any) -> tuple[bytes, bool]:
    if hasattr(stop, "phrase") and hasattr(stop, "keep"):
        phrase, keep = stop.phrase, stop.keep
    else:
        phrase, keep = stop
    data = phrase.encode("utf-8") if isinstance(phrase, str) else bytes(phrase)
    if not data:
        raise DecodeError("a stop phrase cannot be empty")
    return data, bool(keep)


def can_stop(automaton: Any) -> bool:
    """Whether an automaton may have stopped states (False only when its ``stopped`` flags say none)."""
    stopped = getattr(automaton, "stopped", None)
    return not isinstance(stopped, np.ndarray) or bool(stopped.any())


_ANY_TEXT = PerObject(4)  # vocabulary -> the compiler's automaton of any text
_STOPS_ONLY = PerObject(16)  # (vocabulary, stop list) -> the compiler's automaton of those stops alone


def _compiled(cache: PerObject, vocab: Any, key: Any, build: Callable[[], Any]) -> Any:
    """A compiler-built automaton over ``vocab``, cached per vocabulary (False when the build failed)."""

    def attempt() -> Any:
        try:
            return build()
        except Exception:  # noqa: BLE001 - e.g. a stop phrase that is not UTF-8: no compiled hole has it
            return False

    return cache.get(vocab, key, attempt)


def without_stops(automaton: Any, stops: list[tuple[bytes, bool]]) -> Any | None:
    """The compiler's automaton of any text over the same vocabulary (valid UTF-8, no stopped states) if
    ``automaton`` is the compiler's automaton of a hole constrained by nothing but ``stops``; else None.

    Decided exactly, by building the stop-only automaton over the same vocabulary and comparing the tables
    (once per automaton and stop list; both builds are small: about 0.1 s each on a 262k vocabulary). Another
    language, a stand-in automaton or an artifact from another compiler version gives None.
    """
    key = tuple(stops)
    cache = tables_of(automaton)
    if key in cache.stops_only:
        return cache.stops_only[key]
    out = None
    vocab = getattr(automaton, "vocab", None)
    fields = ("next_table", "tok_seq", "final", "stopped")
    if vocab is not None and all(isinstance(getattr(automaton, f, None), np.ndarray) for f in fields):
        from lmqc.compiler.automaton import TokenAutomaton
        from lmqc.compiler.bytedfa import ByteDFA
        from lmqc.compiler.ir import HoleIR, Stop

        ir = lambda: HoleIR("X", stops=tuple(Stop(p.decode("utf-8"), keep) for p, keep in stops))  # noqa: E731
        ref = _compiled(_STOPS_ONLY, vocab, key, lambda: TokenAutomaton.build(ByteDFA.from_ir(ir()), vocab))
        if ref is not False and int(ref.initial) == int(automaton.initial) and all(
            np.array_equal(getattr(ref, f), getattr(automaton, f)) for f in fields
        ):
            out = _compiled(_ANY_TEXT, vocab, None, lambda: TokenAutomaton.build(ByteDFA.from_regex(r"(.|\n)*"), vocab))
            out = out or None
    return cache.put(cache.stops_only, key, out, 64)


def find_stop(value: bytearray, old: int, stops: Any) -> int | None:
    """Where the value is cut for the earliest-starting stop occurrence that ends in ``value[old:]`` (None if none).

    Only occurrences ending in the new bytes count: they start at or after the last ``len(phrase) - 1`` old bytes.
    """
    best: tuple[int, int] | None = None
    for phrase, keep in stops:
        i = value.find(phrase, max(0, old - len(phrase) + 1))
        if i >= 0 and (best is None or i < best[0]):
            best = (i, i + len(phrase) if keep else i)
    return None if best is None else best[1]
