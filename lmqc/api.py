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
        if not isinstance(query.model, str):
            from .errors import ModelError

            raise ModelError(
                f"the query's from clause is a Python expression ({query.model.expr}): pass the model to use "
                "(model=... in Python, --model on the command line)"
            )
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
            if compiled.query.source != source:
                raise ArtifactError("cache entry holds another query")  # a collision or a planted file
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


class QueryFunction:
    """A query as a reusable function (``@lmqc.query``): its parameters are the query's inputs.

    The query is the function's docstring, read from the function's *source* as written (so ``"...\\n"`` in a
    non-raw docstring stays a two-character escape in the query, as in LMQL), with an optional leading ``lmql``
    marker and the common indentation removed. Names of the module and of the scope the function is defined in
    are visible to the query. It is compiled once per model, on first use. Used as a hole's annotation
    (``[X: fn]`` or ``[X: fn(args)]``) it runs as a nested query.
    """

    def __init__(
        self, fn: Callable[..., Any], model: str | None, decoder: str | None, enclosing: Mapping[str, Any]
    ) -> None:
        import functools
        import inspect

        functools.update_wrapper(self, fn)
        self.fn = fn
        self.model = model
        self.decoder = decoder
        self.enclosing = dict(enclosing)
        self.signature = inspect.signature(fn)
        self.source, self.filename = _docstring_query(fn)
        self._compiled: dict[str | None, CompiledQuery] = {}

    def __repr__(self) -> str:
        return f"<lmqc query function {self.fn.__qualname__}>"

    def compiled(self, model: str | None = None) -> CompiledQuery:
        """The query compiled for ``model`` (default: the decorator's, else the query's own)."""
        spec = model or self.model
        if spec not in self._compiled:
            self._compiled[spec] = compile(self.source, spec, filename=self.filename)
        return self._compiled[spec]

    def scope(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any]:
        """The names the query sees for a call: module globals, the defining scope, then the arguments."""
        bound = self.signature.bind(*args, **kwargs)
        bound.apply_defaults()
        return {**self.fn.__globals__, **self.enclosing, **bound.arguments}

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        from lmqc.runtime.query import run_compiled

        return run_compiled(self.compiled(), model=self.model, decoder=self.decoder, inputs=self.scope(args, kwargs))

    def __lmqc_nested__(self, model: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[CompiledQuery, dict[str, Any]]:
        # a nested query decodes on the outer query's model
        return self.compiled(model), self.scope(args, kwargs)


def _docstring_query(fn: Callable[..., Any]) -> tuple[str, str]:
    """(query source, filename) of a query function: its docstring as written in the source file."""
    import ast
    import inspect
    import textwrap

    name = getattr(fn, "__qualname__", getattr(fn, "__name__", "query"))
    filename = f"<query {name}>"
    text: str | None = None
    try:
        tree = ast.parse(textwrap.dedent(inspect.getsource(fn)))
        node = tree.body[0] if tree.body else None
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) and isinstance(first.value.value, str):
                segment = ast.get_source_segment(textwrap.dedent(inspect.getsource(fn)), first.value)
                if segment is not None:
                    text = _literal_body(segment)
    except (OSError, TypeError, SyntaxError, IndexError):
        text = None  # no source (a REPL, exec without linecache): fall back on the docstring's value
    if text is None:
        text = fn.__doc__
    if not text or not text.strip():
        raise QueryTypeError(f"@lmqc.query function {name!r} has no docstring holding a query")
    stripped = text.lstrip()
    if stripped.startswith("lmql"):
        text = stripped[4:]
        text = text[1:] if text.startswith("\n") else text
    return textwrap.dedent(text).strip("\n") + "\n", filename


def _literal_body(segment: str) -> str:
    """The characters between a string literal's quotes, escapes not interpreted."""
    i = 0
    while i < len(segment) and segment[i] in "rRuUbBfF":
        i += 1
    quote = segment[i : i + 3] if segment[i : i + 3] in ('"""', "'''") else segment[i]
    return segment[i + len(quote) : len(segment) - len(quote)]


def query(
    fn: Callable[..., Any] | None = None, /, model: str | None = None, *, decoder: str | None = None
) -> Any:
    """Decorator: a function whose docstring is a query becomes a reusable query function (``QueryFunction``).

    Use bare (``@lmqc.query``) or with options (``@lmqc.query(model="gemma-3-270m", decoder="beam(n=2)")``).
    The function's parameters are the query's inputs; names of the enclosing scope are visible too.
    """
    import inspect

    if isinstance(fn, str):  # @lmqc.query("model") written positionally
        fn, model = None, fn
    frame = inspect.currentframe()
    outer = frame.f_back if frame is not None else None
    enclosing: Mapping[str, Any] = dict(outer.f_locals) if outer is not None else {}
    del frame, outer

    def wrap(f: Callable[..., Any]) -> QueryFunction:
        return QueryFunction(f, model, decoder, enclosing)

    return wrap(fn) if fn is not None else wrap


__all__ = ["LmqcError", "QueryFunction", "compile", "load", "model", "parse", "query", "run", "vocabulary"]
