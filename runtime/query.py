"""Runs a compiled query: the prompt program, one batched decode per hole, distribution scoring, results.

Every branch (one for argmax, n for sample, up to n for beam) holds its hole values, its token context and its
running score. At each hole all live branches are decoded together by :func:`decode.decode_hole` (one batched
model evaluation per step). Beam search forks branches; a forked branch replays the program with its values
(``interpreter.replay``), which is cheap next to a model step.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from lmqc.compiler import nodes
from lmqc.compiler.artifact import CompiledQuery
from lmqc.errors import ArtifactError, DecodeError, MaxLenError, QueryTypeError

from . import decode
from .interpreter import NeedHole, replay
from .models import DEFAULT_MODEL, get_model

DEFAULT_MAX_LEN = 2048


class LocalDecoder:
    """The decoder service of an in-process model: tokenization, :func:`decode.decode_hole` and
    :func:`decode.score_options` on a loaded backend.

    :func:`run_compiled` drives every query through this small interface, so that the same driver runs queries
    in-process and against ``lmqc serve`` (``runtime.client.RemoteModel`` implements the same methods).
    """

    def __init__(self, backend: Any) -> None:
        self.backend = backend

    @property
    def fingerprint(self) -> str:
        return self.backend.vocabulary.fingerprint

    def begin(self) -> None:
        """Start a query from an empty KV cache.

        llama.cpp's logits depend slightly on where a sequence's cells sit in the shared cache, so a seeded
        sample could otherwise change with whatever ran earlier in the process. Re-evaluating a prompt costs
        one batched step.
        """
        self.backend.reset()

    def tokenize(self, text: str | bytes, *, bos: bool = False) -> list[int]:
        return self.backend.tokenize(text, bos=bos)

    def decode_hole(self, contexts: Any, automata: Any, **kwargs: Any) -> list[decode.Completion]:
        return decode.decode_hole(self.backend, contexts, automata, **kwargs)

    def score_options(self, context: Any, options: Any) -> np.ndarray:
        return decode.score_options(self.backend, context, options)


def decoder_service(spec: str) -> Any:
    """The decoder service for a model spec: a remote one for ``lmqc://HOST:PORT``, else the loaded model."""
    model = get_model(spec)
    return model if hasattr(model, "decode_hole") else LocalDecoder(model)


@dataclass(slots=True)
class LMQLResult:
    """One result of a query.

    Attributes
    ----------
    prompt : str
        The whole prompt with every hole filled.
    variables : dict[str, Any]
        Hole values by name (INT holes as ``int``; for holes inside loops, the last value). The ``distribution``
        variable holds the most likely option.
    distribution : dict[str, float] | None
        For a ``distribution`` clause: every option's normalized probability, in option order.
    logprob : float
        Total log-probability of the generated tokens (NaN when not scored, e.g. argmax).
    spans : list[tuple[int, int, str]]
        (start, end, hole name) of every filled value inside ``prompt`` (for highlighting).
    """

    prompt: str
    variables: dict[str, Any]
    distribution: dict[str, float] | None = None
    logprob: float = math.nan
    spans: list[tuple[int, int, str]] = field(default_factory=list)
    n_tokens: int = 0

    def to_json(self) -> dict[str, Any]:
        return {"prompt": self.prompt, "variables": self.variables, "distribution": self.distribution}


@dataclass(slots=True)
class _Branch:
    values: list[Any]
    context: list[int]
    prompt: str
    spans: list[tuple[int, int, str]]
    need: NeedHole | None
    logprob: float = 0.0
    distribution: dict[str, float] | None = None
    n_tokens: int = 0


def parse_decoder(spec: str) -> nodes.Decoder:
    """A decoder clause given as text (``"beam(n=3)"``), validated exactly as in a query."""
    from lmqc.compiler.parser import parse

    try:
        return parse(f'{spec}\n    ""\n', filename="<decoder>").decoder or nodes.Decoder("argmax")
    except QueryTypeError as exc:
        raise QueryTypeError(f"invalid decoder {spec!r}: {exc.message}") from None
    except Exception as exc:  # noqa: BLE001 - a syntax error in the decoder string
        msg = getattr(exc, "message", str(exc))
        raise QueryTypeError(f"invalid decoder {spec!r}: {msg}") from None


def _convert(value: str, is_int: bool) -> Any:
    if not is_int:
        return value
    try:
        return int(value.strip())
    except ValueError:
        raise DecodeError(f"INT value {value!r} is not an integer") from None


def run_compiled(
    compiled: CompiledQuery,
    *,
    model: str | None = None,
    decoder: str | nodes.Decoder | None = None,
    inputs: Mapping[str, Any] | None = None,
    progress: bool | None = None,
    endpoint: str | None = None,
) -> LMQLResult | list[LMQLResult]:
    """Run a compiled query; a list (best first) for ``beam`` and ``sample(n>1)``, else one result.

    With ``endpoint`` (``"HOST:PORT"`` of ``lmqc serve``; or a ``model`` spec ``"lmqc://HOST:PORT"``) the holes
    are decoded by the server and everything else runs here, with the same results as in-process.
    """
    query = compiled.query
    spec = f"lmqc://{endpoint}" if endpoint else model or compiled.model or query.model or DEFAULT_MODEL
    backend = decoder_service(spec)
    if backend.fingerprint != compiled.vocab_fingerprint:
        raise ArtifactError(
            f"the query was compiled for another vocabulary than {spec!r}'s: recompile it for this model"
        )
    if hasattr(backend, "begin"):
        backend.begin()
    dec = parse_decoder(decoder) if isinstance(decoder, str) else decoder or query.decoder or nodes.Decoder("argmax")
    params = dict(dec.args)
    n = int(params.get("n", 1))
    strategy = decode.parse_strategy(dec.name, **params)
    rng = np.random.default_rng(params.get("seed"))
    max_len = int(params.get("max_len", DEFAULT_MAX_LEN))
    scope = dict(inputs or {})
    _check_inputs(query, scope)
    show = sys.stderr.isatty() if progress is None else progress
    started = time.perf_counter()

    _, pending, need = replay(query, scope, [])
    root = _Branch([], backend.tokenize(pending, bos=True), pending, [], need)
    branches = [root] if isinstance(strategy, decode.Beam | decode.Argmax) or n == 1 else [
        _Branch([], list(root.context), root.prompt, [], need) for _ in range(n)
    ]
    dist = query.distribution
    while any(b.need is not None for b in branches):
        live = [b for b in branches if b.need is not None]
        done = [b for b in branches if b.need is None]
        if dist is not None and all(b.need.name == dist.var for b in live):
            for b in live:
                _score_distribution(backend, query, scope, b, dist)
            continue
        names = [b.need.name for b in live]
        irs = [compiled.holes[name] for name in names]
        completions = backend.decode_hole(
            [b.context for b in live],
            [compiled.automaton(name) for name in names],
            strategy=strategy,
            stops=[tuple(ir.stops) for ir in irs],
            min_tokens=[ir.min_tokens for ir in irs],
            max_tokens=[ir.max_tokens for ir in irs],
            max_len=max_len,
            rng=rng,
            scores=[0.0 if math.isnan(b.logprob) else b.logprob for b in live],
            heal=True,  # token healing: "A: [X]" may continue with the model's natural " Paris"
        )
        new: list[_Branch] = []
        for c in completions:
            parent = live[c.parent]
            ir = irs[c.parent]
            text = c.text
            if c.ending == "max_len":
                partial = _result(_extend(parent, ir.var, text, text, c, backend, compiled, scope, finished=True))
                raise MaxLenError(
                    f"max_len={max_len} tokens reached while decoding {ir.var}; partial result kept "
                    "(raise max_len in the decoder clause)",
                    partial=partial,
                )
            new.append(_extend(parent, ir.var, _convert(text, ir.is_int), text, c, backend, compiled, scope))
        branches = done + new
        if show:
            toks = sum(b.n_tokens for b in branches)
            rate = toks / max(time.perf_counter() - started, 1e-9)
            print(f"\r[lmqc] {toks} tokens, {rate:.1f} tok/s", end="", file=sys.stderr, flush=True)
    if show:
        print(file=sys.stderr)
    results = [_result(b) for b in branches]
    if isinstance(strategy, decode.Beam):
        results.sort(key=lambda r: -r.logprob)
    if isinstance(strategy, decode.Beam) or n > 1:
        return results
    return results[0]


def _extend(
    parent: _Branch,
    var: str,
    value: Any,
    text: str,
    c: decode.Completion,
    backend: Any,
    compiled: CompiledQuery,
    scope: Mapping[str, Any],
    *,
    finished: bool = False,
) -> _Branch:
    values = [*parent.values, value]
    start = len(parent.prompt)
    spans = [*parent.spans, (start, start + len(text), var)]
    if finished:
        return _Branch(values, c.context, parent.prompt + text, spans, None, c.score, None, parent.n_tokens + c.n_tokens)
    _, pending, need = replay(compiled.query, scope, values)
    context = c.context + (backend.tokenize(pending, bos=False) if pending else [])
    return _Branch(
        values,
        context,
        parent.prompt + text + pending,
        spans,
        need,
        c.score,  # NaN when the decoder did not score (argmax, sample)
        parent.distribution,
        parent.n_tokens + c.n_tokens,
    )


def _score_distribution(
    backend: Any, query: nodes.Query, scope: Mapping[str, Any], b: _Branch, dist: nodes.Distribution
) -> None:
    options = list(dist.options)
    logps = backend.score_options(b.context, [backend.tokenize(o, bos=False) for o in options])
    probs = np.exp(logps - logps.max())
    probs /= probs.sum()
    best = int(np.argmax(probs))
    value = options[best]
    start = len(b.prompt)
    b.values.append(value)
    b.spans.append((start, start + len(value), dist.var))
    b.prompt += value
    b.distribution = {o: float(p) for o, p in zip(options, probs, strict=True)}
    _, pending, need = replay(query, scope, b.values)
    if need is not None:  # the checker makes the distribution variable the last hole
        raise DecodeError(f"distribution variable {dist.var} must be the last hole")
    b.prompt += pending
    b.need = None


def _result(b: _Branch) -> LMQLResult:
    variables: dict[str, Any] = {}
    for (_, _, name), value in zip(b.spans, b.values, strict=True):
        variables[name] = value
    return LMQLResult(b.prompt, variables, b.distribution, b.logprob, list(b.spans), b.n_tokens)


def _check_inputs(query: nodes.Query, scope: Mapping[str, Any]) -> None:
    from lmqc.compiler.checker import inputs as query_inputs

    missing = [name for name in query_inputs(query) if name not in scope]
    if missing:
        raise QueryTypeError(
            f"query input{'s' if len(missing) > 1 else ''} {', '.join(missing)} not given "
            f"(pass {', '.join(f'{m}=...' for m in missing)})",
            filename=query.filename,
        )
