"""The public verbs: parse, compile, load, run, model, query.

Everything heavy is imported lazily so that ``import lmqc`` stays cheap and never imports ``llama_cpp``.
"""

from __future__ import annotations

import functools
import hashlib
import os
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import ArtifactError, LmqcError, QueryTypeError

if TYPE_CHECKING:
    from lmqc.compiler.artifact import CompiledQuery
    from lmqc.compiler.nodes import Query
    from lmqc.compiler.vocabulary import Vocabulary

DEFAULT_MODEL = "gemma-3-270m"


def parse(source: str, filename: str = "<query>") -> Query:
    """Parse and check a query; returns its AST (``lmqc.compiler.nodes.Query``)."""
    from lmqc.compiler.parser import parse as _parse

    return _parse(source, filename)


def cache_dir() -> Path:
    """Where lmqc keeps prepared vocabularies and compiled queries (``$LMQC_CACHE_DIR``)."""
    return Path(os.environ.get("LMQC_CACHE_DIR") or Path.home() / ".cache" / "lmqc")


def _model_spec(query: Query | None, model: str | None) -> str:
    if model:
        return model
    if query is not None and query.model:
        return query.model
    return DEFAULT_MODEL


def vocabulary(model: str | None = None) -> Vocabulary:
    """The vocabulary of a model spec, without loading weights (cached on disk)."""
    from lmqc.runtime.models import get_vocabulary

    return get_vocabulary(model or DEFAULT_MODEL)


def compile_query(
    query: Query, vocab: Vocabulary, *, model: str | None = None
) -> CompiledQuery:
    """Lower every hole slot of a parsed query and build its token automaton over ``vocab``.

    Slots whose constraint has Python arguments (``X in options``) are lowered when the hole starts
    (``runtime.query``), with the values the program has then.
    """
    from lmqc.compiler.artifact import CompiledQuery
    from lmqc.compiler.checker import hole_constraints, hole_slots
    from lmqc.compiler.lower import is_dynamic

    holes = {}
    automata = {}
    seconds = {}
    constraints = hole_constraints(query)
    names = {h.index: h.name for h in query.holes()}
    for index, slot in hole_slots(query).items():
        constraint = constraints[index]
        if slot in holes or is_dynamic(constraint):
            continue
        t0 = time.perf_counter()
        holes[slot], automata[slot] = build_hole(names[index], constraint, vocab, query.source, query.filename)
        seconds[slot] = time.perf_counter() - t0
    return CompiledQuery(
        query=query,
        holes=holes,
        automata=automata,
        vocab_fingerprint=vocab.fingerprint,
        vocab_size=vocab.size,
        model=model,
        compile_seconds=seconds,
    )


def build_hole(var: str, constraint: Any, vocab: Vocabulary, source: str | None, filename: str) -> tuple[Any, Any]:
    """One hole's IR and token automaton: constraint -> IR -> byte DFA -> token automaton over ``vocab``."""
    from lmqc.compiler.automaton import TokenAutomaton
    from lmqc.compiler.bytedfa import ByteDFA
    from lmqc.compiler.lower import lower_hole

    ir = lower_hole(var, constraint, source=source, filename=filename)
    dfa = ByteDFA.from_ir(ir, source=source, filename=filename)
    span = constraint.span if constraint is not None else None
    automaton = TokenAutomaton.build(
        dfa,
        vocab,
        name=var,
        source=source,
        filename=filename,
        line=span.line if span and span.line else None,
        column=span.column if span and span.column else None,
    )
    return ir, automaton


@functools.cache
def _compiler_digest() -> str:
    """Hash of the compiler's own source, so a changed compiler never reuses stale cached artifacts."""
    from lmqc import compiler

    h = hashlib.sha256()
    for path in sorted(Path(compiler.__file__).parent.glob("*.py")) + sorted(Path(compiler.__file__).parent.glob("*.lark")):
        h.update(path.read_bytes())
    return h.hexdigest()[:16]


def _endpoint_spec(model: str | None, endpoint: str | None) -> str | None:
    """``model`` with ``endpoint`` (``"HOST:PORT"`` of ``lmqc serve``) folded in as an ``lmqc://`` spec."""
    if not endpoint:
        return model
    from lmqc.runtime.client import parse_endpoint

    spec = "lmqc://" + parse_endpoint(endpoint)
    if model and model.strip() != spec and not model.strip().startswith("lmqc://"):
        raise LmqcError(
            f"pass either model={model!r} or endpoint={endpoint!r}: with an endpoint the server's model is used"
        )
    return spec


def compile(  # noqa: A001 - the verb users expect, like re.compile
    source: str,
    model: str | None = None,
    *,
    filename: str = "<query>",
    cache: bool = True,
    endpoint: str | None = None,
) -> CompiledQuery:
    """Compile a query for a model's vocabulary.

    Parameters
    ----------
    source : str
        Query text.
    model : str, optional
        Model spec; overrides the query's ``from`` clause (default: the query's, else ``gemma-3-270m``).
    cache : bool
        Reuse a compiled artifact keyed on (source hash, vocabulary fingerprint, lmqc version).
    endpoint : str, optional
        ``"HOST:PORT"`` of an ``lmqc serve`` process: compile for its model's vocabulary (fetched once and
        cached on disk); same as ``model="lmqc://HOST:PORT"``.
    """
    from lmqc import __version__
    from lmqc.compiler.artifact import load as load_artifact

    model = _endpoint_spec(model, endpoint)
    query = parse(source, filename)
    spec = _model_spec(query, model)
    vocab = vocabulary(spec)
    key = hashlib.sha256(
        f"{__version__}\0{_compiler_digest()}\0{vocab.fingerprint}\0{source}".encode()
    ).hexdigest()[:32]
    cached = cache_dir() / "queries" / f"{key}.lmqc"
    if cache and cached.exists():
        try:
            compiled = load_artifact(cached, vocab_fingerprint=vocab.fingerprint)
            compiled.query = query  # keep the caller's filename for error messages
            compiled.model = spec
            return compiled
        except ArtifactError:
            pass  # a stale or damaged cache entry is simply rebuilt
    compiled = compile_query(query, vocab, model=spec)
    if cache:
        try:
            cached.parent.mkdir(parents=True, exist_ok=True)
            compiled.save(cached)
        except OSError:
            pass  # the cache is an optimization; a read-only home must not break compile
    return compiled


def load(path: str | os.PathLike[str], model: str | None = None) -> CompiledQuery:
    """Load a compiled artifact (``lmqc compile`` / ``CompiledQuery.save``); never executes code.

    With ``model``, the artifact is checked against that model's vocabulary now rather than at run time.
    """
    from lmqc.compiler.artifact import load as load_artifact

    fingerprint = vocabulary(model).fingerprint if model else None
    return load_artifact(path, vocab_fingerprint=fingerprint)


def model(spec: str = DEFAULT_MODEL) -> Any:
    """The loaded model for a spec, shared by the whole process (later calls reuse it)."""
    from lmqc.runtime.models import get_model

    return get_model(spec)


def run(
    query: str | CompiledQuery,
    model: str | None = None,
    *,
    decoder: str | None = None,
    filename: str = "<query>",
    endpoint: str | None = None,
    **inputs: Any,
) -> Any:
    """Run a query (source or compiled) and return its result (a list, best first, for n > 1).

    With ``endpoint="HOST:PORT"`` (or ``model="lmqc://HOST:PORT"``) the query runs here against the model an
    ``lmqc serve`` process holds: same results as in-process, no model loaded in this process.
    """
    from lmqc.runtime.query import run_compiled

    model = _endpoint_spec(model, endpoint)
    compiled = compile(query, model, filename=filename) if isinstance(query, str) else query
    return run_compiled(compiled, model=model, decoder=decoder, inputs=inputs)


def query(model: str | None = None, *, decoder: str | None = None) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorator: a function whose docstring is a query becomes a reusable query function.

    The function's parameters are the query's inputs; names of the enclosing scope are visible too. The query
    is compiled once, on the first call.
    """
    import functools
    import inspect

    def wrap(fn: Callable[..., Any]) -> Callable[..., Any]:
        doc = inspect.getdoc(fn)
        if not doc:
            raise QueryTypeError(f"@lmqc.query function {fn.__name__!r} has no docstring holding a query")
        source = doc[len("lmql"):].lstrip("\n") if doc.startswith("lmql") else doc
        signature = inspect.signature(fn)
        frame = inspect.currentframe()
        outer = frame.f_back if frame is not None else None
        enclosing: Mapping[str, Any] = dict(outer.f_locals) if outer is not None else {}
        filename = f"<query {fn.__qualname__}>"
        state: dict[str, Any] = {}

        @functools.wraps(fn)
        def call(*args: Any, **kwargs: Any) -> Any:
            from lmqc.runtime.query import run_compiled

            if "compiled" not in state:
                state["compiled"] = compile(source, model, filename=filename)
            bound = signature.bind(*args, **kwargs)
            bound.apply_defaults()
            scope = {**fn.__globals__, **enclosing, **bound.arguments}
            return run_compiled(state["compiled"], model=model, decoder=decoder, inputs=scope)

        return call

    return wrap


__all__ = ["LmqcError", "compile", "load", "model", "parse", "query", "run", "vocabulary"]
