"""Runs a compiled query: the prompt program, one batched decode per hole, distribution scoring, results.

Every branch (one for argmax, n for sample, up to n for beam) holds its program (``execution.Execution``), its
prompt, its token context and its running score. At each hole all live branches are decoded together by
:func:`decode.decode` (one batched model evaluation per step, through the decoder service). When a branch has
several continuations (beam search), the first takes its program and each other one forks it by replaying its trace of values.
"""

from __future__ import annotations

import copy
import math
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from lmqc.compiler import nodes
from lmqc.compiler.artifact import CompiledQuery
from lmqc.compiler.decoders import decoder_args, parse_decoder
from lmqc.errors import ArtifactError, DecodeError, MaxLenError, QueryTypeError

from . import decode
from .decode import DecodeRequest, HoleSpec
from .execution import NO_RETURN_VALUE, Effect, Execution, Request
from .models import model_spec
from .service import LocalDecoder, decoder_service

__all__ = ["LMQLResult", "LocalDecoder", "StreamEvent", "decoder_service", "parse_decoder", "run_compiled"]

DEFAULT_MAX_LEN = 2048


@dataclass(slots=True)
class LMQLResult:
    """One result of a query.

    Attributes
    ----------
    prompt : str
        The whole prompt with every hole filled (chat role switches appear as LMQL's ``<lmql:ROLE/>`` tags).
    variables : dict[str, Any]
        Hole values by name (INT holes as ``int``; for a hole filled several times, the last value). The
        ``distribution`` variable holds the most likely option; a nested query's hole holds its return value.
    distribution : dict[str, float] | None
        For a ``distribution`` clause: every option's normalized probability, in option order.
    logprob : float
        Total log-probability of the generated tokens (NaN when not scored, e.g. argmax).
    spans : list[tuple[int, int, str]]
        (start, end, hole name) of every filled value inside ``prompt`` (for highlighting).
    return_value : Any
        What the query body returned (``return ...``), else None.
    """

    prompt: str
    variables: dict[str, Any]
    distribution: dict[str, float] | None = None
    logprob: float = math.nan
    spans: list[tuple[int, int, str]] = field(default_factory=list)
    n_tokens: int = 0
    return_value: Any = None
    returned: bool = field(default=False, repr=False, compare=False)  # the body ran `return` (even `return None`)

    def to_json(self) -> dict[str, Any]:
        out = {"prompt": self.prompt, "variables": self.variables, "distribution": self.distribution}
        if self.return_value is not None:
            out["return_value"] = self.return_value
        return out


@dataclass(frozen=True, slots=True)
class StreamEvent:
    """What a running query reports to a streaming caller (``lmqc.run(..., on_token=...)``, ``lmqc.stream``).

    Attributes
    ----------
    kind : str
        ``"prompt"``: the program added text to the prompt (``text``; a role switch as ``<lmql:ROLE/>``).
        ``"token"``: a hole's value grew by ``text`` as it was decoded (``value``: its text so far).
        ``"value"``: a hole is done: ``value`` is what the program gets (an ``int`` for INT holes ...), ``text``
        its text in the prompt. ``"result"``: the query is done; ``result`` is what the run returns.
        For each branch, the ``text`` of its ``prompt`` and ``token`` events, in order, spells its prompt (a hole
        decoration that rewrites the text and a nested query's return value show in the ``value`` event).
    variable : str | None
        The hole's name (``token``, ``value``).
    text : str
    value : Any
    branch : int
        Which branch (0 for argmax; 0..n-1 for ``sample(n=...)``, which fork where they first decode; beam
        branches are numbered as they fork and report only ``value`` events).
    result : Any
        ``"result"``: an ``LMQLResult`` (a list of them for n > 1).
    """

    kind: str
    variable: str | None = None
    text: str = ""
    value: Any = None
    branch: int = 0
    result: Any = None


@dataclass(slots=True)
class _Mark:
    """Where a nested query started: the prompt and context lengths to roll back to when it returns."""

    prompt: int
    context: int
    spans: int
    var: str


@dataclass(slots=True)
class _Branch:
    """One branch: its Python state (``Execution``), its prompt text and token context, its score."""

    ex: Execution
    context: list[int]
    prompt: str = ""
    spans: list[tuple[int, int, str]] = field(default_factory=list)
    variables: dict[str, Any] = field(default_factory=dict)
    request: Request | None = None
    marks: list[_Mark] = field(default_factory=list)
    role: str | None = None
    logprob: float = 0.0
    distribution: dict[str, float] | None = None
    n_tokens: int = 0
    pending: list[str] = field(default_factory=list)  # context text not yet tokenized
    turn_start: bool = False  # a chat role switch was just rendered; the turn's leading spaces are dropped
    id: int = 0  # the branch number of stream events

    def fork(self, id: int = 0) -> _Branch:  # noqa: A002 - the field's name
        return _Branch(
            self.ex.fork(), list(self.context), self.prompt, list(self.spans), dict(self.variables), self.request,
            [replace(m) for m in self.marks], self.role, self.logprob, self.distribution, self.n_tokens,
            list(self.pending), self.turn_start, id,
        )


class _Driver:
    """Runs one query: branches, their programs and the batched decode of their holes."""

    def __init__(
        self,
        compiled: CompiledQuery,
        backend: Any,
        spec: str,
        scope: dict[str, Any],
        max_len: int,
        on_event: Callable[[StreamEvent], None] | None = None,
    ) -> None:
        self.compiled = compiled
        self.on_event = on_event
        self.n_branches = 1
        self.backend = backend
        self.spec = spec
        self.scope = scope
        self.max_len = max_len
        self.chat: Any = None
        self.loop: Any = None
        self.specs: dict[Any, HoleSpec] = {}  # hole slot (or slot and Python arguments) -> its spec, built once

    # ---- program effects -----------------------------------------------------------------------------------

    def resolve_nested(self, callee: Any, args: Any, kwargs: Any) -> tuple[CompiledQuery, dict[str, Any]] | None:
        nested = getattr(callee, "__lmqc_nested__", None)
        if nested is None:
            return None
        return nested(self.spec, tuple(args or ()), dict(kwargs or {}))

    def apply(self, b: _Branch, effects: list[Effect], request: Request | None) -> None:
        for e in effects:
            if e.kind == "text":
                _check_utf8(e.value)
                b.prompt += e.value
                if self.on_event is not None and e.value:
                    self.on_event(StreamEvent("prompt", text=e.value, branch=b.id))
                text = e.value
                if b.turn_start:
                    # "{:user} Say hi": the turn's content starts at "Say" (templates trim contents)
                    text = text.lstrip(" ")
                    b.turn_start = not text
                b.pending.append(text)
            elif e.kind == "role":
                tag = _role_tag(e.value)
                b.prompt += tag
                if self.on_event is not None:
                    self.on_event(StreamEvent("prompt", text=tag, branch=b.id))
                self.flush(b)
                if self.chat is None:
                    from .chat import chat_format

                    self.chat = chat_format(getattr(self.backend, "backend", self.backend))
                switch = self.chat.switch(b.role, e.value)
                if switch:
                    b.context.extend(self.backend.tokenize(switch, bos=not b.context, special=True))
                b.role = e.value
                b.turn_start = True
            elif e.kind == "enter":
                self.flush(b)
                b.marks.append(_Mark(len(b.prompt), len(b.context), len(b.spans), e.value))
            elif e.kind == "leave":
                self.flush(b)
                mark = b.marks.pop()
                rv, value = e.value
                if rv is not NO_RETURN_VALUE:
                    # the nested query's prompt is replaced by its return value (LMQL's stack-frame semantics)
                    text = str(rv)
                    b.prompt = b.prompt[: mark.prompt] + text
                    del b.context[mark.context :]
                    del b.spans[mark.spans :]
                    b.pending.append(text)
                    b.spans.append((mark.prompt, mark.prompt + len(text), mark.var))
                if not b.marks:
                    b.variables[mark.var] = value
        b.request = request
        if request is not None:
            self.flush(b)
            if not b.context:
                b.context = self.backend.tokenize("", bos=True)

    def flush(self, b: _Branch) -> None:
        if b.pending:
            text = "".join(b.pending)
            b.pending.clear()
            if text:
                b.context.extend(self.backend.tokenize(text, bos=not b.context))

    # ---- holes ---------------------------------------------------------------------------------------------

    def hole(self, req: Request) -> tuple[HoleSpec, Any]:
        """(spec, converter) of a requested hole; constraints with Python arguments, and the JSON schemas of typed
        holes (``[X: Person]``), are lowered now."""
        compiled = req.compiled
        slot = compiled.slot(req.index)
        if slot in compiled.holes and req.typed is None:
            ir = compiled.holes[slot]
            spec = self.specs.get(slot)
            if spec is None:
                automaton = compiled.automata[slot]
                if getattr(automaton, "vocab", None) is None and compiled.vocab_fingerprint == self.backend.fingerprint:
                    # an automaton loaded from an artifact (or the compile cache) meets its vocabulary here, so a
                    # first run and a cached run decide the same (e.g. stops before a token minimum)
                    automaton.vocab = self.backend.vocabulary
                spec = self.specs[slot] = HoleSpec.from_ir(ir, automaton)
            return spec, _converter(ir)
        from lmqc.compiler.lower import substitute

        q = compiled.query
        c = compiled.constraint(req.index)
        c = substitute(c, dict(req.dyn), source=q.source, filename=q.filename) if c is not None else None
        name = compiled.hole_name(req.index)
        if req.typed is not None:
            c = _typed_constraint(q.holes()[req.index], req.typed, c, q)
        key = (name, c)  # constraints are frozen values: equal constraints share one automaton
        cached = compiled.runtime_cache.get(key)
        if cached is None:
            from lmqc.api import build_hole

            cached = build_hole(name, c, self.backend.vocabulary, q.source, q.filename)
            if len(compiled.runtime_cache) >= 64:
                compiled.runtime_cache.pop(next(iter(compiled.runtime_cache)))
            compiled.runtime_cache[key] = cached
        ir, automaton = cached
        spec = self.specs.get(key)
        if spec is None:
            spec = self.specs[key] = HoleSpec.from_ir(ir, automaton)
        return spec, _converter(ir, req.typed if req.typed is not None else _schema_type(compiled, req))

    def pre_decorate(self, b: _Branch) -> bool:
        """Run a hole's pre-processing decorators; True if one fixed the value (then it is sent, no decoding)."""
        from lmqc.decorators import DecoratorContext, Variable, stage

        req = b.request
        assert req is not None
        name = req.compiled.hole_name(req.index)
        for d in req.decorators:
            if stage(d) != "pre":
                continue
            result = _call_decorator(d, Variable(name), DecoratorContext(b.prompt, dict(b.variables)))
            if isinstance(result, str):
                self.put_value(b, name, result)
                self.apply(b, *b.ex.send(result))
                return True
        return False

    def post_decorate(self, b: _Branch, name: str, value: Any, text: str) -> tuple[Any, str]:
        """Post-process a generated value through its decorators, right to left: (program value, prompt text)."""
        from lmqc.decorators import DecoratorContext, stage

        assert b.request is not None
        shown = text
        context = DecoratorContext(b.prompt, dict(b.variables))
        for d in reversed(b.request.decorators):
            kind = stage(d)
            if kind == "pre":
                continue
            if kind == "streaming":
                _call_decorator(d, value, context)
                continue
            result = _call_decorator(d, value, shown, context)
            if isinstance(result, tuple) and len(result) == 2:
                value, shown = result[0], str(result[1])
            else:
                value, shown = result, str(result)
        return value, shown

    def distribution(self, b: _Branch) -> Any:
        req = b.request
        assert req is not None
        options = [str(o) for o in req.dyn]
        if not options:
            raise DecodeError("distribution needs at least one option")
        logps = self.backend.score_options(b.context, [self.backend.tokenize(o, bos=False) for o in options])
        probs = np.exp(logps - logps.max())
        probs /= probs.sum()
        best = int(np.argmax(probs))
        value = options[best]
        self.put_value(b, req.compiled.hole_name(req.index), value)
        if not b.marks:
            b.distribution = {o: float(p) for o, p in zip(options, probs, strict=True)}
        return value

    def put_value(self, b: _Branch, name: str, value: str) -> None:
        """A value the model did not generate (a pre-decorator's, a distribution's) joins prompt and context."""
        start = len(b.prompt)
        b.prompt += value
        b.context.extend(self.backend.tokenize(value, bos=False))
        b.spans.append((start, start + len(value), name))
        if not b.marks:
            b.variables[name] = value
        if self.on_event is not None:
            self.on_event(StreamEvent("token", name, value, value, b.id))
            self.on_event(StreamEvent("value", name, value, value, b.id))

    def fork(self, b: _Branch) -> _Branch:
        self.n_branches += 1
        return self.bind(b.fork(self.n_branches - 1))

    def bind(self, b: _Branch) -> _Branch:
        """Let the branch's running code see its prompt and variables (LMQL's ``context``)."""
        b.ex.viewer = lambda effects: self.preview(b, effects)
        return b

    @staticmethod
    def preview(b: _Branch, effects: list[Effect]) -> tuple[str, dict[str, Any]]:
        """The prompt and variables ``b`` will have once ``effects`` (of the step still running) are applied."""
        prompt, variables, marks = b.prompt, dict(b.variables), [(m.prompt, m.var) for m in b.marks]
        for e in effects:
            if e.kind == "text":
                prompt += e.value
            elif e.kind == "role":
                prompt += _role_tag(e.value)
            elif e.kind == "enter":
                marks.append((len(prompt), e.value))
            elif e.kind == "leave":
                start, var = marks.pop()
                rv, value = e.value
                if rv is not NO_RETURN_VALUE:
                    prompt = prompt[:start] + str(rv)
                if not marks:
                    variables[var] = value
        return prompt, variables

    def observer(self, live: list[_Branch], names: list[str]) -> tuple[Callable[[Any], None], dict[int, str]]:
        """A decode observer that reports each branch's new value text as ``token`` events and to the hole's
        streaming decorators (``@lmql.decorators.streaming``: called with the value so far), and the text it has
        reported per branch index (so the completion's rest can follow)."""
        import codecs

        from lmqc.decorators import DecoratorContext, stage

        shown: dict[int, str] = {}
        sent: dict[int, int] = {}
        decoders: dict[int, Any] = {}
        on_event = self.on_event
        streams = {
            i: ds for i, b in enumerate(live)
            if b.request is not None and (ds := [d for d in b.request.decorators if stage(d) == "streaming"])
        }

        def observe(progress: Any) -> None:
            for i, data in progress:
                k = sent.get(i, 0)
                if len(data) <= k:
                    continue
                dec = decoders.get(i)
                if dec is None:
                    dec = decoders[i] = codecs.getincrementaldecoder("utf-8")(errors="replace")
                text = dec.decode(data[k:])  # a character split between steps waits for its last byte
                sent[i] = len(data)
                if text:
                    shown[i] = shown.get(i, "") + text
                    if on_event is not None:
                        on_event(StreamEvent("token", names[i], text, shown[i], live[i].id))
                    for d in streams.get(i, ()):
                        _call_decorator(d, shown[i], DecoratorContext(live[i].prompt, dict(live[i].variables)))

        return observe, shown


def run_compiled(
    compiled: CompiledQuery,
    *,
    model: str | None = None,
    decoder: str | nodes.Decoder | None = None,
    inputs: Mapping[str, Any] | None = None,
    progress: bool | None = None,
    endpoint: str | None = None,
    service: Any = None,
    on_event: Callable[[StreamEvent], None] | None = None,
) -> LMQLResult | list[LMQLResult]:
    """Run a compiled query; a list (best first) for ``beam`` and ``sample(n>1)``, else one result.

    With ``endpoint`` (``"HOST:PORT"`` of ``lmqc serve``; or a ``model`` spec ``"lmqc://HOST:PORT"``) the holes
    are decoded by the server and everything else runs here, with the same results as in-process.
    ``service`` decodes instead of the spec's own decoder service (e.g. a ``runtime.service.BatchedDecoder``
    shared with concurrent queries). ``on_event`` gets a :class:`StreamEvent` for every prompt text, decoded
    token text (argmax and sample, in-process), finished hole and finally the result, in the calling thread.
    """
    query = compiled.query
    spec = model_spec(model, compiled=compiled, endpoint=endpoint)
    backend = service if service is not None else decoder_service(spec)
    if backend.fingerprint != compiled.vocab_fingerprint:
        raise ArtifactError(
            f"the query was compiled for another vocabulary than {spec!r}'s: recompile it for this model"
        )
    backend.begin()
    dec = parse_decoder(decoder) if isinstance(decoder, str) else decoder or query.decoder or nodes.Decoder("argmax")
    scope = dict(inputs or {})
    params = decoder_args(dec, scope, source=query.source, filename=query.filename)
    n = int(params.get("n", 1))
    strategy = decode.parse_strategy(dec.name, **params)
    rng = np.random.default_rng(params.get("seed"))
    max_len = int(params.get("max_len", DEFAULT_MAX_LEN))
    _check_inputs(compiled, scope)
    show = sys.stderr.isatty() if progress is None else progress
    started = time.perf_counter()

    from lmqc.decorators import stage as decorator_stage

    driver = _Driver(compiled, backend, spec, scope, max_len, on_event)
    ex = Execution.start(compiled, scope, driver.resolve_nested)
    root = driver.bind(_Branch(ex, []))
    driver.apply(root, *ex.begin())
    branches = [root]
    copies = 1
    if isinstance(strategy, decode.Argmax) and n > 1:
        # LMQL's argmax(n=k) gives k copies of the greedy result: decode once (k batched copies of one greedy
        # decode could even differ, as llama.cpp's logits depend on the batch)
        copies, n = n, 1
    if root.request is not None and not isinstance(strategy, decode.Beam) and n > 1:
        # n samples fork where they first decode
        branches += [driver.fork(root) for _ in range(n - 1)]
    try:
        while any(b.request is not None for b in branches):
            live = [b for b in branches if b.request is not None]
            done = [b for b in branches if b.request is None]
            dists = [b for b in live if b.request.kind == "dist"]
            if dists:
                for b in dists:
                    driver.apply(b, *b.ex.send(driver.distribution(b)))
                continue
            fixed = [b for b in live if b.request.decorators and driver.pre_decorate(b)]
            if fixed:
                continue
            holes = [driver.hole(b.request) for b in live]  # specs heal: "A: [X]" may continue with " Paris"
            request = DecodeRequest(
                tuple(b.context for b in live), tuple(h[0] for h in holes), strategy, max_len, rng,
                tuple(0.0 if math.isnan(b.logprob) else b.logprob for b in live),
            )
            shown: dict[int, str] = {}
            streaming = any(decorator_stage(d) == "streaming" for b in live for d in b.request.decorators)
            if (on_event is not None or streaming) and getattr(backend, "streams_progress", False):
                names = [b.request.compiled.hole_name(b.request.index) for b in live]
                observe, shown = driver.observer(live, names)
                completions = backend.decode(request, observe)
            else:
                completions = backend.decode(request)
            # forks must copy a parent before the parent's own program moves on
            pending: list[tuple[_Branch, decode.Completion, tuple[HoleSpec, Any]]] = []
            seen: dict[int, int] = {}
            for c in completions:
                parent = live[c.parent]
                k = seen.get(c.parent, 0)
                seen[c.parent] = k + 1
                pending.append((parent if k == 0 else driver.fork(parent), c, holes[c.parent]))
            new = []
            for b, c, (_, convert) in pending:
                name = b.request.compiled.hole_name(b.request.index)
                text = c.text
                start = len(b.prompt)
                before = b.context
                b.context = list(c.context)
                b.logprob = c.score
                b.n_tokens += c.n_tokens
                if c.ending == "max_len":
                    b.prompt += text
                    b.spans.append((start, start + len(text), name))
                    if not b.marks:
                        b.variables[name] = text
                    raise MaxLenError(
                        f"max_len={max_len} tokens reached while decoding {name}; partial result kept "
                        "(raise max_len in the decoder clause)",
                        partial=_result(b),
                    )
                value = convert(text)
                if b.request.decorators:
                    value, decorated = driver.post_decorate(b, name, value, text)
                    if decorated != text:
                        # the prompt (and the model) continue from the decorator's text
                        text = decorated
                        b.context = list(before) + backend.tokenize(decorated, bos=False)
                b.prompt += text
                b.spans.append((start, start + len(text), name))
                if not b.marks:
                    b.variables[name] = value
                if on_event is not None:
                    # what the observer showed is a prefix of the text unless a decorator rewrote it
                    seen_text = "" if isinstance(strategy, decode.Beam) else shown.get(c.parent, "")
                    if text.startswith(seen_text) and len(text) > len(seen_text):
                        on_event(StreamEvent("token", name, text[len(seen_text):], text, b.id))
                    on_event(StreamEvent("value", name, text, value, b.id))
                driver.apply(b, *b.ex.send(value))
                new.append(b)
            branches = done + new
            if show:
                toks = sum(b.n_tokens for b in branches)
                rate = toks / max(time.perf_counter() - started, 1e-9)
                print(f"\r[lmqc] {toks} tokens, {rate:.1f} tok/s", end="", file=sys.stderr, flush=True)
    finally:
        if ex.loop is not None:
            ex.loop.close()
    if show:
        print(file=sys.stderr)
    results = [_result(b) for b in branches]
    if isinstance(strategy, decode.Beam):
        results.sort(key=lambda r: -r.logprob)
    if copies > 1:
        out: Any = [copy.deepcopy(results[0]) for _ in range(copies)]
    elif isinstance(strategy, decode.Beam) or n > 1:
        out = results
    else:
        out = results[0]
    if on_event is not None:
        on_event(StreamEvent("result", result=out))
    return out


def _call_decorator(d: Any, *args: Any) -> Any:
    """Call a decorator with as many of ``args`` as its signature takes (LMQL allows short signatures)."""
    import inspect

    if not callable(d):
        raise DecodeError(f"hole decorator {d!r} is not callable")
    try:
        params = inspect.signature(d).parameters.values()
        if not any(p.kind is p.VAR_POSITIONAL for p in params):
            positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
            args = args[: max(1, len(positional))]
    except (TypeError, ValueError):
        pass
    try:
        return d(*args)
    except Exception as exc:  # noqa: BLE001 - a failing decorator is query code failing
        raise DecodeError(f"hole decorator {getattr(d, '__name__', d)!r} raised {type(exc).__name__}: {exc}") from exc


def _check_utf8(text: str) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise DecodeError(
            f"the prompt text {text[max(0, exc.start - 20) : exc.start + 1]!r} has a lone surrogate, which cannot be "
            "encoded as UTF-8 for the model"
        ) from None


def _converter(ir: Any, typed: Any = None) -> Any:
    """text -> the program's value: ``int`` for INT, ``float``/``bool``, parsed JSON (as ``typed`` when it is a
    type), else the text itself."""
    kind = "int" if ir.is_int else getattr(ir, "parse", None)
    if kind is None:
        return _identity

    def convert(value: str) -> Any:
        try:
            if kind == "int":
                return int(value.strip())
            if kind == "float":
                return float(value.strip())
            if kind == "bool":
                return value.strip().lower() == "true"
            import json

            data = json.loads(value)
        except ValueError:
            raise DecodeError(f"{kind.upper()} value {value!r} does not parse") from None
        if typed is None:
            return data
        from lmqc.compiler.pytypes import convert as to_python

        try:
            return to_python(typed, data)
        except Exception as exc:  # noqa: BLE001 - a model class's own validation
            raise DecodeError(f"JSON value {value!r} does not convert to {typed!r}: {exc}") from exc

    return convert


def _identity(value: str) -> str:
    return value


def _typed_constraint(hole: nodes.Hole, typed: Any, c: Any, q: nodes.Query) -> Any:
    """``[X: T]``: JSON(X, schema of T), and the hole's other constraints."""
    from lmqc.compiler.jsonschema import SchemaError, canonical, compile_schema
    from lmqc.compiler.pytypes import schema_for
    from lmqc.errors import ConstraintError

    name = hole.name
    try:
        text = canonical(schema_for(typed))
        compile_schema(text)
    except (SchemaError, TypeError) as e:
        raise ConstraintError(f"[{name}: {hole.tactic}]: {e}", source=q.source, filename=q.filename,
                              line=hole.span.line or None, column=hole.span.column or None) from None
    atom = nodes.JsonSchema(name, text, span=hole.span)
    return atom if c is None else nodes.And((atom, c), span=hole.span)


def _schema_type(compiled: Any, req: Request) -> Any:
    """For ``JSON(X, T)`` with a Python type ``T``: ``T`` (its value is converted to it), else None."""
    from lmqc.compiler.checker import iter_atoms

    c = compiled.constraint(req.index)
    for atom in iter_atoms(c) if c is not None and req.dyn else ():
        if isinstance(atom, nodes.JsonSchema) and isinstance(atom.schema, nodes.Dyn):
            value = req.dyn.get(atom.schema.expr)
            if value is not None and not isinstance(value, dict | str | bool):
                return value
    return None


def _role_tag(role: str) -> str:
    """How a chat role switch shows in the prompt text (LMQL's tag)."""
    return f"<lmql:{role}/>"


def _result(b: _Branch) -> LMQLResult:
    return LMQLResult(
        b.prompt, dict(b.variables), b.distribution, b.logprob, list(b.spans), b.n_tokens, b.ex.return_value,
        b.ex.returned,
    )


def _check_inputs(compiled: CompiledQuery, scope: Mapping[str, Any]) -> None:
    query = compiled.query
    missing = [name for name in compiled.program.inputs if name not in scope]
    if missing:
        raise QueryTypeError(
            f"query input{'s' if len(missing) > 1 else ''} {', '.join(missing)} not given "
            f"(pass {', '.join(f'{m}=...' for m in missing)})",
            filename=query.filename,
        )
