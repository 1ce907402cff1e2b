"""The decoder settings table: every decoder, the arguments it takes, and how each argument is checked.

One table serves every place a decoder is written: the decoder clause of a query (``parser``), a decoder given
as text (``lmqc run --decoder``, ``lmqc.run(decoder=...)``: :func:`parse_decoder`), arguments written as Python
expressions and evaluated when the query runs (:func:`decoder_args`), and the strategies of the runtime and its
wire protocol (``runtime.decode.strategies``, whose dataclass fields are the token-choice settings).

Adding a sampling parameter: one :class:`Setting` row in :data:`SETTINGS` and its name in the decoders of
:data:`DECODERS` that take it; then the field of the same name on ``runtime.decode.strategies.Sample`` (checked
through this table) and its use in ``choose_sample``. Parser, CLI, ``run_compiled``, the wire codec and the server
follow from those two.
"""

from __future__ import annotations

import ast
import builtins
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from ..errors import QuerySyntaxError, QueryTypeError
from . import nodes
from .nodes import Span
from .qstrings import Errors

__all__ = [
    "DECODERS",
    "IGNORED_DECODER_ARGS",
    "MAX_BRANCHES",
    "RUNS_AS",
    "SETTINGS",
    "Setting",
    "check_setting",
    "decoder_arg",
    "decoder_args",
    "decoder_clause",
    "parse_decoder",
]


@dataclass(frozen=True, slots=True)
class Setting:
    """One decoder argument: integer or float, its range, and what it means."""

    name: str
    integer: bool
    low: float
    high: float | None = None
    low_open: bool = False  # the range excludes ``low`` (top_p > 0)
    doc: str = ""
    high_why: str = ""  # said with a value above ``high``

    def check(self, value: Any) -> int | float:
        """The value, normalized (floats for float settings); ``ValueError`` says what is wrong."""
        key = self.name
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError(f"decoder argument {key} must be a number, not {value!r}")
        if self.integer:
            if not isinstance(value, int):
                raise ValueError(f"decoder argument {key} must be an integer, not {value!r}")
        elif not math.isfinite(value):
            raise ValueError(f"decoder argument {key} must be finite")
        number = value if self.integer else float(value)
        low = int(self.low) if self.integer else self.low
        if number < low or (self.low_open and number == low):
            raise ValueError(f"decoder argument {key} must be {'>' if self.low_open else '>='} {low}, not {value}")
        if self.high is not None and number > self.high:
            why = f" ({self.high_why})" if self.high_why else ""
            raise ValueError(f"decoder argument {key} must be <= {self.high}, not {value}{why}")
        return number


#: Most branches a decoder may run (``n`` of beam, sample and argmax). Every decoding step evaluates each live
#: branch and holds its float32 logits row: 256 rows of a 262,144-token vocabulary (Gemma 3) are 256 MiB per
#: step, and a beam step ranks up to n * n candidates. A typo such as ``beam(n=100000)`` would ask for ~100 GiB.
MAX_BRANCHES = 256

#: Every decoder argument lmqc understands.
SETTINGS: dict[str, Setting] = {
    s.name: s
    for s in (
        Setting("n", True, 1, MAX_BRANCHES, doc="branches: samples, beams, or copies of the greedy result",
                high_why="lmqc's limit: every step evaluates and keeps a logits row per branch"),
        Setting("max_len", True, 1, doc="total tokens of a sequence (prompt and generated)"),
        Setting("seed", True, 0, doc="seed of the sampling generator"),
        Setting("temperature", False, 0, doc="softmax temperature (0: greedy)"),
        Setting("top_k", True, 0, doc="keep the k most likely tokens (0: all)"),
        Setting("top_p", False, 0, 1, low_open=True, doc="keep the smallest set holding this probability mass"),
    )
}

#: Decoder -> the arguments it takes. ``beam_var`` is LMQL's beam variant; lmqc runs it as ``beam`` (RUNS_AS).
#: ``beam_sample`` is beam search whose beams propose sampled tokens (``Beam.temperature``; default 1).
DECODERS: dict[str, frozenset[str]] = {
    "argmax": frozenset({"max_len", "n"}),
    "sample": frozenset({"n", "temperature", "top_k", "top_p", "seed", "max_len"}),
    "beam": frozenset({"n", "max_len"}),
    "beam_var": frozenset({"n", "max_len"}),
    "beam_sample": frozenset({"n", "temperature", "seed", "max_len"}),
}
RUNS_AS = {"beam_var": "beam", "beam_sample": "beam"}

#: Options LMQL's decoders accept that mean nothing for a local llama.cpp model: accepted and ignored.
IGNORED_DECODER_ARGS = frozenset(
    {"chunksize", "openai_chunksize", "chunk_timeout", "verbose", "cache", "show_speculative", "certificate",
     "stream", "step_budget"}
)


def decoder_arg(key: str, value: Any) -> Any:
    """A decoder argument's value, normalized (floats for temperature/top_p); ValueError says what is wrong."""
    setting = SETTINGS.get(key)
    if setting is None:
        raise ValueError(f"unknown decoder argument {key!r}")
    return setting.check(value)


def check_setting(key: str, value: Any) -> Any:
    """:func:`decoder_arg` for callers that construct a strategy: the same checks, one message style."""
    return decoder_arg(key, value)


def decoder_clause(
    expr: ast.expr, *, span: Callable[[ast.AST], Span], text: Callable[[ast.AST], str], err: Errors
) -> nodes.Decoder:
    """The ``nodes.Decoder`` of a parsed decoder clause (``argmax``, ``sample(n=2, temperature=t)``).

    Literal arguments are checked now; an argument that is a Python expression becomes a ``nodes.Dyn``, checked
    by :func:`decoder_args` when the query runs. ``span`` and ``text`` locate a node in the source; errors are
    raised through ``err`` (``QuerySyntaxError`` / ``QueryTypeError`` with line and column).
    """
    if isinstance(expr, ast.Name):
        return nodes.Decoder(_decoder_name(expr.id, span(expr), err), (), span=span(expr))
    if not isinstance(expr, ast.Call) or not isinstance(expr.func, ast.Name):
        err.syntax_at("invalid decoder clause", span(expr))
    name = _decoder_name(expr.func.id, span(expr.func), err)
    if expr.args:
        err.type_at("decoder arguments must be given by keyword, e.g. sample(n=2)", span(expr.args[0]))
    allowed = DECODERS[name]
    args: dict[str, Any] = {}
    for kw in expr.keywords:
        if kw.arg is None:
            err.type_at("** is not supported in the decoder clause", span(kw.value))
        key = kw.arg.lower()
        if key not in allowed and key not in IGNORED_DECODER_ARGS:
            err.type_at(f"unknown argument '{kw.arg}' for decoder {name} (expected {', '.join(sorted(allowed))})", span(kw))
        if key in args:
            err.type_at(f"duplicate decoder argument '{key}'", span(kw))
        if key in IGNORED_DECODER_ARGS:
            continue  # accepted for LMQL compatibility; nothing to do for a local model
        try:
            value = ast.literal_eval(kw.value)
        except (ValueError, TypeError, SyntaxError, RecursionError, MemoryError):
            # a Python expression (`sample(n=n)`): evaluated in the query's inputs when it runs
            args[key] = nodes.Dyn(text(kw.value), span=span(kw.value))
            continue
        try:
            args[key] = decoder_arg(key, value)
        except ValueError as e:
            err.type_at(str(e), span(kw.value))
    return nodes.Decoder(name, tuple(sorted(args.items())), span=span(expr))


def _decoder_name(name: str, at: Span, err: Errors) -> str:
    lowered = name.lower()
    if lowered not in DECODERS:
        err.type_at(f"unknown decoder '{name}' (expected {', '.join(DECODERS)})", at)
    return lowered


def parse_decoder(spec: str) -> nodes.Decoder:
    """A decoder given as text (``"beam(n=3)"``, ``lmqc run --decoder``), checked exactly as a decoder clause.

    Raises
    ------
    QueryTypeError
        ``invalid decoder '...': ...`` for a syntax error, an unknown decoder or argument, or a bad value.
    """
    text = str(spec).strip()
    err = Errors(text, "<decoder>")
    try:
        try:
            expr = ast.parse(text, mode="eval").body if text else None
        except (SyntaxError, ValueError, RecursionError, MemoryError) as e:
            err.syntax(getattr(e, "msg", str(e)), getattr(e, "lineno", 1) or 1, getattr(e, "offset", 1) or 1)
        if expr is None:
            err.syntax("expected a decoder, e.g. argmax or sample(n=2)", 1, 1)
        return decoder_clause(
            expr, span=_span, text=lambda n: ast.get_source_segment(text, n) or "", err=err
        )
    except (QueryTypeError, QuerySyntaxError) as exc:
        raise QueryTypeError(f"invalid decoder {spec!r}: {exc.message}") from None


def _span(node: ast.AST) -> Span:
    line, col = node.lineno, node.col_offset  # type: ignore[attr-defined]
    end_line = getattr(node, "end_lineno", None) or line
    end_col = getattr(node, "end_col_offset", None) or col
    return Span(line, col + 1, end_line, end_col + 1)


def decoder_args(dec: nodes.Decoder, scope: Mapping[str, Any], *, source: str | None, filename: str) -> dict[str, Any]:
    """A decoder's arguments; those written as Python expressions (``sample(n=n)``) are evaluated in ``scope``
    (the query's inputs) and checked now. Errors are ``QueryTypeError`` located at the expression."""
    out: dict[str, Any] = {}
    for key, value in dec.args:
        if isinstance(value, nodes.Dyn):
            where = {"source": source, "filename": filename, "line": value.span.line or None,
                     "column": value.span.column or None}
            try:
                raw = eval(value.expr, {"__builtins__": builtins, **scope})  # noqa: S307 - queries are Python
                value = decoder_arg(key, raw)
            except (ValueError, TypeError) as e:
                raise QueryTypeError(f"decoder argument {key}={value.expr}: {e}", **where) from None
            except Exception as e:  # noqa: BLE001 - e.g. a NameError for a missing input
                raise QueryTypeError(f"decoder argument {key}={value.expr} raised {type(e).__name__}: {e}", **where) from None
        out[key] = value
    return out
