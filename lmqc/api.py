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


def set_default_model(spec: str) -> None:
    """The model used when neither the caller (``model=``) nor the query (``from``) names one (LMQL's
    ``lmql.set_default_model``). Default: ``gemma-3-270m``."""
    from lmqc.runtime.models import set_default_model as _set

    _set(spec)


def default_model() -> str:
    from lmqc.runtime.models import default_model as _default

    return _default()


def parse(source: str, filename: str = "<query>") -> Query:
    """Parse and check a query; returns its AST (``lmqc.compiler.nodes.Query``)."""
    from lmqc.compiler.parser import parse as _parse

    return _parse(source, filename)


def cache_dir() -> Path:
    """Where lmqc keeps prepared vocabularies and compiled queries (``$LMQC_CACHE_DIR``; see ``lmqc.cache``)."""
    from .cache import cache_dir as root

    return root()


def _model_spec(query: Query | None, model: str | None) -> str:
    from lmqc.runtime.models import model_spec

    return model_spec(model, query=query)


def vocabulary(model: str | None = None) -> Vocabulary:
    """The vocabulary of a model spec, without loading weights (cached on disk)."""
    from lmqc.runtime.models import get_vocabulary, spec_of

    return get_vocabulary(spec_of(model) or default_model())


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
    for path in sorted(Path(compiler.__file__).parent.glob("*.py")):
        h.update(path.read_bytes())
    return h.hexdigest()[:16]


def _endpoint_spec(model: Any, endpoint: str | None) -> str | None:
    """``model`` (a spec or an ``lmqc.model(...)``) with ``endpoint`` (``"HOST:PORT"`` of ``lmqc serve``) folded
    in as an ``lmqc://`` spec."""
    from lmqc.runtime.models import spec_of

    model = spec_of(model)
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
    _scope: Mapping[str, Any] | None = None,
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
    if not model and _scope is not None:
        model = _from_expression(query, _scope)
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


def _from_expression(query: Query, scope: Mapping[str, Any]) -> str | None:
    """LMQL's ``from m``, ``m`` a Python expression (an input or global holding ``lmqc.model(...)`` or a spec):
    its value in the query's scope, or None when the from clause is a literal spec or absent."""
    from lmqc.compiler import nodes
    from lmqc.runtime.models import spec_of

    own = getattr(query, "model", None)
    if not isinstance(own, nodes.Dyn):
        return None
    import lmqc

    from .errors import ModelError

    try:
        value = eval(own.expr, {"lmql": lmqc, "lmqc": lmqc, **scope})  # noqa: S307 - queries are Python by design
    except Exception as e:  # noqa: BLE001
        raise ModelError(f"the query's from clause {own.expr} raised {type(e).__name__}: {e}") from None
    return spec_of(value)


def load(path: str | os.PathLike[str], model: str | None = None) -> CompiledQuery:
    """Load a compiled artifact (``lmqc compile`` / ``CompiledQuery.save``); never executes code.

    With ``model``, the artifact is checked against that model's vocabulary now rather than at run time.
    """
    from lmqc.compiler.artifact import load as load_artifact

    fingerprint = vocabulary(model).fingerprint if model is not None else None
    return load_artifact(path, vocab_fingerprint=fingerprint)


_LLMS: dict[str, Any] = {}


def model(spec: str | None = None, **options: Any) -> Any:
    """The model for a spec (default: ``default_model()``), loaded once and shared by the whole process: an
    :class:`lmqc.llm.LLM` (LMQL's ``lmql.LLM``: ``generate``/``score`` and their ``_sync`` forms, accepted as
    ``model=`` and in ``from``; the backend's own methods too). ``options`` (``n_ctx``, ``n_threads``, ``n_batch``,
    ``n_seq``) apply when it is first loaded."""
    from lmqc.runtime.models import get_model, spec_of

    from .llm import LLM

    spec = spec_of(spec) or default_model()
    backend = get_model(spec, **options)
    llm = _LLMS.get(spec)
    if llm is None or llm.backend is not backend:
        llm = _LLMS[spec] = LLM(spec, backend)
    return llm


def run(
    query: str | CompiledQuery,
    model: str | None = None,
    *,
    decoder: str | None = None,
    filename: str = "<query>",
    endpoint: str | None = None,
    on_token: Callable[[Any], None] | None = None,
    output_writer: Any = None,
    **inputs: Any,
) -> Any:
    """Run a query (source or compiled) and return its result (a list, best first, for n > 1).

    With ``endpoint="HOST:PORT"`` (or ``model="lmqc://HOST:PORT"``) the query runs here against the model an
    ``lmqc serve`` process holds: same results as in-process, no model loaded in this process.

    ``on_token`` is called with a ``StreamEvent`` for every piece of prompt text, every decoded piece of a hole's
    text, every finished hole and finally the result (see ``lmqc.streaming``); ``output_writer`` takes LMQL's
    writers (``lmqc.printing``, ``lmqc.stream("VAR")``) or any such callable.
    """
    from .streaming import sink

    model = _endpoint_spec(model, endpoint)
    compiled = compile(query, model, filename=filename, _scope=inputs) if isinstance(query, str) else query
    return _execute(compiled, model, decoder, inputs, sink(on_token, output_writer), None)


def _execute(
    compiled: CompiledQuery,
    model: str | None,
    decoder: Any,
    inputs: Mapping[str, Any],
    on_event: Callable[[Any], None] | None,
    call: Any,
) -> Any:
    """Run a compiled query in this thread; with ``call`` (a ``streaming._Call``) on the batched decoder service
    shared with the other queries of the process, and cancellable through ``call``."""
    from lmqc.runtime.query import run_compiled

    service = None
    if call is not None:
        from lmqc.runtime.models import model_spec
        from lmqc.runtime.service import batched_service

        service = batched_service(model_spec(model, compiled=compiled))
        call.attach(service)
    return run_compiled(compiled, model=model, decoder=decoder, inputs=inputs, service=service, on_event=on_event)


_EXECUTOR: Any = None


def _executor() -> Any:
    """The threads async queries run in: many, since they mostly wait for the shared batching worker (the event
    loop's default executor has a few per core, which would cap how many queries meet in one batch)."""
    global _EXECUTOR
    if _EXECUTOR is None:
        from concurrent.futures import ThreadPoolExecutor

        _EXECUTOR = ThreadPoolExecutor(max_workers=64, thread_name_prefix="lmqc-query")
    return _EXECUTOR


async def _in_thread(fn: Callable[..., Any], *args: Any) -> Any:
    """``fn(*args, call)`` in a query thread; cancelling the awaiting task cancels the query (``call``)."""
    import asyncio

    from .streaming import _Call

    call = _Call()
    fut = asyncio.get_running_loop().run_in_executor(_executor(), fn, *args, call)
    try:
        return await fut
    except asyncio.CancelledError:
        call.cancel()  # the thread stops before its next decoding step
        raise


def stream(query: Any, model: str | None = None, **kwargs: Any) -> Any:
    """The events of a query as it runs: ``for event in lmqc.stream(query, **inputs)`` or ``async for``.

    Same arguments as :func:`run`; the query runs in a worker thread, batched with other concurrent queries on
    the same in-process model, and yields ``StreamEvent`` objects ending with ``kind == "result"`` (see
    ``lmqc.streaming``). ``lmqc.stream("VAR")``, a variable name alone, is LMQL's output writer instead: pass it
    as ``output_writer=`` to print that variable as it is decoded.
    """
    from .streaming import QueryStream, VariableWriter, sink

    if isinstance(query, str) and query.isidentifier() and model is None and not kwargs:
        return VariableWriter(query)
    if isinstance(query, QueryFunction):
        return query.stream(**({"model": model} if model is not None else {}), **kwargs)
    decoder = kwargs.pop("decoder", None)
    filename = kwargs.pop("filename", "<query>")
    model = _endpoint_spec(model, kwargs.pop("endpoint", None))
    listeners = sink(kwargs.pop("on_token", None), kwargs.pop("output_writer", None))

    def start(put: Callable[[Any], None], call: Any) -> Any:
        compiled = compile(query, model, filename=filename, _scope=kwargs) if isinstance(query, str) else query
        return _execute(compiled, model, decoder, kwargs, sink(listeners, None, put), call)

    return QueryStream(start)


# Call-time keyword arguments a query function takes as decoder settings (as LMQL's), unless they are its inputs.
DECODER_OVERRIDES = ("n", "temperature", "top_k", "top_p", "seed", "max_len")
STREAM_OVERRIDES = ("on_token", "output_writer")


class QueryFunction:
    """A query as a reusable function: ``@lmqc.query`` on a function, ``lmqc.query(source)``, or ``lmqc.F``.

    For a decorated function the query is its docstring, read from the function's *source* as written (so
    ``"...\\n"`` in a non-raw docstring stays a two-character escape in the query, as in LMQL), with an optional
    leading ``lmql`` marker and the common indentation removed; its parameters are the query's inputs, and names
    of its module and defining scope are visible. For a source string the inputs are ``input_variables`` (else
    the query's own inputs, in order of use), positional or by keyword. Compiled once per model, on first use.

    Calls accept ``model=``, ``decoder=``, decoder settings (``n``, ``temperature``, ``top_k``, ``top_p``,
    ``seed``, ``max_len``) and ``on_token=``/``output_writer=`` (see :func:`run`) as keyword overrides, unless
    the query has an input of that name. Calls of an ``async def`` query function return awaitables and run
    batched with other concurrent queries (as :func:`run_async`); :meth:`stream` iterates a call's events. Used
    as a hole's annotation (``[X: fn]`` or ``[X: fn(args)]``) it runs as a nested query.
    """

    def __init__(
        self,
        source: str,
        filename: str,
        signature: Any,
        namespace: Mapping[str, Any],
        *,
        model: str | None = None,
        decoder: str | None = None,
        single_value: bool = False,
        name: str = "query",
    ) -> None:
        self.source = source
        self.filename = filename
        self.signature = signature
        from lmqc.runtime.models import spec_of

        self.namespace = dict(namespace)
        self.model = spec_of(model)
        self.decoder = decoder
        self.single_value = single_value  # lmqc.F: return the value(s), not a result
        self.__name__ = self.__qualname__ = name
        self.is_async = False  # an `async def` query function: calls return awaitables
        self._compiled: dict[str | None, CompiledQuery] = {}
        self._parsed: Query | None = None

    @classmethod
    def from_function(
        cls, fn: Callable[..., Any], model: str | None, decoder: str | None, enclosing: Mapping[str, Any]
    ) -> QueryFunction:
        import functools
        import inspect

        source, filename = _docstring_query(fn)
        qf = cls(source, filename, inspect.signature(fn), {**fn.__globals__, **enclosing}, model=model, decoder=decoder)
        functools.update_wrapper(qf, fn)
        qf.fn = fn
        qf.is_async = inspect.iscoroutinefunction(fn)
        return qf

    def __repr__(self) -> str:
        return f"<lmqc query function {self.__qualname__}>"

    def parsed(self) -> Query:
        """The query's AST (parsed once)."""
        if self._parsed is None:
            self._parsed = parse(self.source, self.filename)
        return self._parsed

    def compiled(self, model: Any = None) -> CompiledQuery:
        """The query compiled for ``model`` (default: the decorator's, else the query's own)."""
        from lmqc.runtime.models import spec_of

        spec = spec_of(model) or self.model
        if spec not in self._compiled:
            self._compiled[spec] = compile(self.source, spec, filename=self.filename)
        return self._compiled[spec]

    def _sig(self) -> Any:
        if self.signature is None:
            import inspect

            names = self.compiled().program.inputs
            kind = inspect.Parameter.POSITIONAL_OR_KEYWORD
            self.signature = inspect.Signature([inspect.Parameter(n, kind) for n in names])
        return self.signature

    def scope(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any]:
        """The names the query sees for a call: module globals, the defining scope, then the arguments."""
        from .errors import QueryTypeError

        try:
            bound = self._sig().bind(*args, **kwargs)
        except TypeError as e:
            raise QueryTypeError(f"{self.__qualname__}(): {e}") from None
        bound.apply_defaults()
        return {**self.namespace, **bound.arguments}

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if self.is_async:
            return self.run_async(*args, **kwargs)
        return self._call(args, kwargs, None)

    async def run_async(self, *args: Any, **kwargs: Any) -> Any:
        """Call the query from asyncio code (batched with concurrent queries; see :func:`lmqc.run_async`)."""
        return await _in_thread(self._call, args, kwargs)

    def stream(self, *args: Any, **kwargs: Any) -> Any:
        """The events of a call, for ``for`` or ``async for`` (see :func:`lmqc.stream`)."""
        from .streaming import QueryStream

        return QueryStream(lambda put, call: self._call(args, dict(kwargs), call, put))

    def _call(
        self, args: tuple[Any, ...], kwargs: dict[str, Any], call: Any, put: Callable[[Any], None] | None = None
    ) -> Any:
        from .streaming import sink

        params = set(self._sig().parameters)
        model = kwargs.pop("model", None) if "model" not in params else None
        decoder = kwargs.pop("decoder", None) if "decoder" not in params else None
        settings = {k: kwargs.pop(k) for k in DECODER_OVERRIDES if k in kwargs and k not in params}
        listeners = {k: kwargs.pop(k) for k in STREAM_OVERRIDES if k in kwargs and k not in params}
        from lmqc.runtime.models import spec_of

        scope = self.scope(args, kwargs)
        model = spec_of(model) or self.model
        if not model:
            model = _from_expression(self.parsed(), scope)  # `from m`: m an input or global of the function
        compiled = self.compiled(model)
        dec = _decoder_with(compiled, decoder or self.decoder, settings)
        on_event = sink(listeners.get("on_token"), listeners.get("output_writer"), put)
        result = _execute(compiled, model, dec, scope, on_event, call)
        if self.single_value:
            return _values(result)
        return _returned(result)

    def __lmqc_nested__(self, model: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[CompiledQuery, dict[str, Any]]:
        # a nested query decodes on the outer query's model
        return self.compiled(model), self.scope(args, kwargs)


def _decoder_with(compiled: CompiledQuery | None, decoder: Any, settings: dict[str, Any]) -> Any:
    """The decoder to run with: a call's ``decoder=`` (else the query's own, if a query is given) with call-time
    settings merged."""
    if not settings:
        return decoder
    from lmqc.compiler import nodes
    from lmqc.compiler.parser import DECODERS, decoder_arg
    from lmqc.runtime.query import parse_decoder

    from .errors import QueryTypeError

    own = compiled.query.decoder if compiled is not None else None
    base = parse_decoder(decoder) if isinstance(decoder, str) else decoder or own or nodes.Decoder("argmax")
    args = dict(base.args)
    for key, value in settings.items():
        if key not in DECODERS[base.name]:
            raise QueryTypeError(f"decoder {base.name} does not take {key}= (it takes {', '.join(sorted(DECODERS[base.name]))})")
        try:
            args[key] = decoder_arg(key, value)
        except ValueError as e:
            raise QueryTypeError(str(e)) from None
    return nodes.Decoder(base.name, tuple(sorted(args.items())), span=base.span)


def _returned(result: Any) -> Any:
    """A query function call's value, as LMQL's: what the body returned when it ran ``return`` (even ``return
    None``; a list of them for several results), else the result object(s)."""
    results = result if isinstance(result, list) else [result]
    if results and all(r.returned for r in results):
        values = [r.return_value for r in results]
        return values if isinstance(result, list) else values[0]
    return result


def _values(result: Any) -> Any:
    """``lmqc.F`` results: the single variable's value, or a dict of values (a list of either for n > 1)."""
    if isinstance(result, list):
        return [_values(r) for r in result]
    if result.return_value is not None:
        return result.return_value
    values = result.variables
    return next(iter(values.values())) if len(values) == 1 else dict(values)


def F(s: str, constraints: str | None = None, **kwargs: Any) -> QueryFunction:  # noqa: N802 - LMQL's name
    """A one-line query function (LMQL's ``lmql.F``): ``F("Summarize: {text} [SUMMARY]", "len(TOKENS(SUMMARY))
    < 20")("...")`` returns the value of ``SUMMARY`` (a dict when the string has several holes). Its inputs, in
    order of use, are its positional parameters; ``model=``/``decoder=`` as for ``lmqc.query``."""
    source = _quote_query_string(s) + (f" where {constraints}" if constraints else "") + "\n"
    return query(source, single_value=True, **kwargs)


def _quote_query_string(s: str) -> str:
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


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
    fn: Callable[..., Any] | str | None = None,
    /,
    model: str | None = None,
    *,
    decoder: str | None = None,
    input_variables: list[str] | None = None,
    single_value: bool = False,
    is_async: bool | None = None,
) -> Any:
    """A query function (``QueryFunction``): as a decorator on a function whose docstring is a query (bare,
    ``@lmqc.query``, or with options, ``@lmqc.query(model="gemma-3-270m", decoder="beam(n=2)")``), or from a
    query's source (``lmqc.query("...", input_variables=["name"])``). ``is_async=True`` makes calls return
    awaitables (as for an ``async def`` function); for a decorated function its own ``async`` decides.
    """
    import inspect

    if isinstance(fn, str) and (model is not None or "\n" in fn or '"' in fn or "'" in fn):
        # lmqc.query(source): a query function of the source's inputs
        sig = None
        if input_variables is not None:
            kind = inspect.Parameter.POSITIONAL_OR_KEYWORD
            sig = inspect.Signature([inspect.Parameter(n, kind) for n in input_variables])
        frame = inspect.currentframe()
        caller = frame.f_back if frame is not None else None
        namespace = dict(caller.f_globals) if caller is not None else {}
        del frame, caller
        qf = QueryFunction(fn, "<query>", sig, namespace, model=model, decoder=decoder, single_value=single_value)
        qf.is_async = bool(is_async)
        return qf
    if isinstance(fn, str):  # @lmqc.query("model") written positionally
        fn, model = None, fn
    frame = inspect.currentframe()
    outer = frame.f_back if frame is not None else None
    enclosing: Mapping[str, Any] = dict(outer.f_locals) if outer is not None else {}
    del frame, outer

    def wrap(f: Callable[..., Any]) -> QueryFunction:
        return QueryFunction.from_function(f, model, decoder, enclosing)

    return wrap(fn) if fn is not None else wrap


# --------------------------------------------------------------------------------------------------------------
# LMQL's library functions on a model: generate, score, and the async forms of run


def generate_sync(
    prompt: str, max_tokens: int | None = None, model: str | None = None, *, decoder: str | None = None, **kwargs: Any
) -> Any:
    """Continue ``prompt`` on a model without constraints (LMQL's ``lmql.generate_sync``): the completion text
    (a list of texts for ``decoder="sample", n=2``). ``max_tokens`` bounds the completion's tokens; decoder
    settings (``n``, ``temperature``, ``seed`` ...) may be given as keywords."""
    decoder = _generate_decoder(decoder, kwargs)
    result = run(_generate_source(max_tokens), model, decoder=decoder, filename="<generate>", __lmqc_prompt__=prompt,
                 **kwargs)
    return _completion(result)


def _generate_decoder(decoder: Any, kwargs: dict[str, Any]) -> Any:
    """``decoder=`` with the decoder settings among ``kwargs`` (taken out of them) merged in."""
    settings = {k: kwargs.pop(k) for k in DECODER_OVERRIDES if k in kwargs}
    return _decoder_with(None, decoder or "argmax", settings) if settings else decoder


def _generate_source(max_tokens: int | None) -> str:
    if max_tokens is not None and (not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1):
        raise ValueError(f"max_tokens must be a positive int, got {max_tokens!r}")
    where = f" where len(TOKENS(COMPLETION)) <= {max_tokens}" if max_tokens is not None else ""
    return '"{__lmqc_prompt__}[COMPLETION]"' + where + "\n"


def _completion(result: Any) -> Any:
    if isinstance(result, list):
        return [r.variables["COMPLETION"] for r in result]
    return result.variables["COMPLETION"]


class ScoringResult:
    """Log-probabilities of continuations of a prompt (LMQL's ``ScoringResult``).

    Attributes
    ----------
    prompt : str
    continuations : list[str]
    logprobs : numpy.ndarray[float64], shape (K,)
        Total log-probability of each continuation's tokens after the prompt.
    token_counts : numpy.ndarray[int64], shape (K,)
    """

    def __init__(self, prompt: str, continuations: list[str], logprobs: Any, token_counts: Any) -> None:
        self.prompt = prompt
        self.continuations = continuations
        self.logprobs = logprobs
        self.token_counts = token_counts

    def scores(self, agg: str = "sum") -> Any:
        """Per continuation: ``"sum"`` of token log-probabilities, or their ``"mean"``."""
        if agg == "sum":
            return self.logprobs
        if agg == "mean":
            return self.logprobs / self.token_counts
        raise ValueError(f"agg must be 'sum' or 'mean', not {agg!r}")

    @property
    def probs(self) -> Any:
        """The continuations' probabilities, normalized over them."""
        import numpy as np

        p = np.exp(self.logprobs - self.logprobs.max())
        return p / p.sum()

    def argmax(self, agg: str = "sum") -> str:
        import numpy as np

        return self.continuations[int(np.argmax(self.scores(agg)))]

    def __repr__(self) -> str:
        body = ", ".join(f"{c!r}: {lp:.3f}" for c, lp in zip(self.continuations, self.logprobs, strict=True))
        return f"ScoringResult({body})"


def score_sync(prompt: str, values: str | list[str], model: str | None = None) -> ScoringResult:
    """Score continuations of ``prompt`` (LMQL's ``lmql.score_sync``): their log-probabilities under the model,
    in one batched evaluation."""
    from lmqc.runtime.query import decoder_service

    return _score(prompt, values, decoder_service(_endpoint_spec(model, None) or default_model()))


def _score(prompt: str, values: str | list[str], backend: Any) -> ScoringResult:
    import numpy as np

    options = [values] if isinstance(values, str) else list(values)
    if not options or not all(isinstance(v, str) and v for v in options):
        raise ValueError("score needs one or more non-empty continuation strings")
    backend.begin()
    context = backend.tokenize(prompt, bos=True)
    tokens = [backend.tokenize(v, bos=False) for v in options]
    logps = np.asarray(backend.score_options(context, tokens), dtype=np.float64)
    return ScoringResult(prompt, options, logps, np.asarray([len(t) for t in tokens], dtype=np.int64))


async def run_async(
    query: str | CompiledQuery,
    model: str | None = None,
    *,
    decoder: str | None = None,
    filename: str = "<query>",
    endpoint: str | None = None,
    on_token: Callable[[Any], None] | None = None,
    output_writer: Any = None,
    **inputs: Any,
) -> Any:
    """``run`` for asyncio code. The query runs in a worker thread, so the event loop stays responsive, and
    concurrent queries on one in-process model share it with batching: every decoding step evaluates the
    running holes of all of them in one batched model call (``runtime.service.BatchedDecoder``). Each query
    draws from its own generator, so results equal sequential runs whenever the model's logits do not depend on
    the batch (llama.cpp's differ in the last bits, which can flip near-ties). Cancelling the task stops the
    query before its next decoding step. ``on_token`` and ``output_writer`` are called in the query's thread.
    """
    from .streaming import sink

    model = _endpoint_spec(model, endpoint)
    listeners = sink(on_token, output_writer)

    def work(call: Any) -> Any:
        compiled = compile(query, model, filename=filename, _scope=inputs) if isinstance(query, str) else query
        return _execute(compiled, model, decoder, inputs, listeners, call)

    return await _in_thread(work)


async def generate(
    prompt: str, max_tokens: int | None = None, model: str | None = None, *, decoder: str | None = None, **kwargs: Any
) -> Any:
    """Async form of :func:`generate_sync` (batched with concurrent queries, as :func:`run_async`)."""
    source = _generate_source(max_tokens)
    decoder = _generate_decoder(decoder, kwargs)
    return _completion(
        await run_async(source, model, decoder=decoder, filename="<generate>", __lmqc_prompt__=prompt, **kwargs)
    )


async def score(prompt: str, values: str | list[str], model: str | None = None) -> ScoringResult:
    """Async form of :func:`score_sync` (one job of the batching worker, between two steps of running queries)."""

    def work(call: Any) -> ScoringResult:
        from lmqc.runtime.service import batched_service

        service = batched_service(_endpoint_spec(model, None) or default_model())
        call.attach(service)
        return _score(prompt, values, service)

    return await _in_thread(work)


__all__ = [
    "F", "LmqcError", "QueryFunction", "ScoringResult", "compile", "default_model", "generate", "generate_sync",
    "load", "model", "parse", "query", "run", "run_async", "score", "score_sync", "set_default_model", "stream",
    "vocabulary",
]
