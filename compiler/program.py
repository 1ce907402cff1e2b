"""Query -> a Python generator function: the prompt program, compiled by Python's own compiler.

The body of a query is Python. Its query strings are rewritten into ``yield`` expressions that hand control to
the runtime, and everything else is left as written, so every Python construct behaves as Python (``def``,
``class``, ``while``, ``try``, ``with``, ``return``, closures, comprehensions ...). For a query string
``"Q: {q}\\nA: [ANSWER]"`` the generated code is::

    yield ("text", f"Q: {q}\\nA: ")                 # f-string semantics for {expr}
    ANSWER = yield ("hole", 0, {...}, None)          # the runtime decodes hole 0 and sends its value back

Events (tuples, first item the kind):

* ``("text", str)`` — prompt text;
* ``("role", name)`` — ``{:user}``: the prompt continues in that chat role;
* ``("hole", index, dyn, tactic, decorators)`` — decode hole ``index``; ``dyn`` maps each ``nodes.Dyn``
  argument of its constraint (by expression text) to its value, evaluated now; ``tactic`` is ``None`` or
  ``(callee, args, kwargs)`` for ``[X: fn(args)]`` / ``(value, None, None)`` for ``[X: fn]`` (a nested query),
  unevaluated calls; ``decorators`` the ``[@fn X]`` decorator values, left to right;
* ``("dist", index, options)`` — score the distribution options for hole ``index``;
* ``("await", awaitable)`` — ``await x`` in the query body; the runtime sends the result.

The query's return value is the generator's (``StopIteration.value``). Compiling never runs query code.
"""

from __future__ import annotations

import ast
import builtins
import dis
import hashlib
import linecache
import os
import sys
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from types import CodeType
from typing import Any

import numpy as np

from ..errors import QuerySyntaxError
from . import nodes
from .parser import find_prompts

FUNCTION = "__lmqc_query__"
# The value the program returns when its body ends without a `return` (LMQL tells `return None` from no return:
# a query function call gives its return value only when one was returned; a nested query's prompt is replaced
# by str(value) only then). The runtime binds this name to a sentinel object.
NO_RETURN = "__lmqc_no_return__"
EV_TEXT, EV_ROLE, EV_HOLE, EV_DIST, EV_AWAIT = "text", "role", "hole", "dist", "await"

# Names the runtime provides to every query: LMQL code refers to `lmql.` (lmqc answers for it) and reads
# `context.prompt` (an input or global named `context` replaces it).
PROVIDED = frozenset({"lmql", "lmqc", "context", NO_RETURN, "__name__", "__file__"})
_BUILTINS = frozenset(dir(builtins))


@dataclass(frozen=True, slots=True)
class Program:
    """The compiled prompt program of one query.

    Attributes
    ----------
    code : CodeType
        Module code that defines the generator function ``__lmqc_query__`` (running it only defines it). Its
        parameters are ``params``.
    prologue : CodeType | None
        Module code of the Python before the decoder clause; runs once per execution, before the body.
    inputs : tuple[str, ...]
        Names the program reads before binding them (not builtins): the query's inputs, in order of first use.
    params : tuple[str, ...]
        The generator function's parameters: the inputs the program reads (as LMQL, which passes a query's free
        names as arguments, so ``locals()`` shows them and ``x = int(x)`` starts from the input).
    query : nodes.Query | None
        The query it was built from (``source`` generates the Python again from it: the generated AST is not
        kept, as it costs ~250 bytes a node, several nodes per query string).
    """

    code: CodeType
    prologue: CodeType | None
    inputs: tuple[str, ...]
    query: Any = field(default=None, compare=False, repr=False)
    params: tuple[str, ...] = ()

    @property
    def source(self) -> str:
        """The generated Python, for reading (tests, debugging)."""
        if self.query is None:
            raise ValueError("this program has no query to show the source of")
        module, func, _ = _generate(self.query)
        func.args = _arguments(self.params, func)
        return ast.unparse(module)


def dyn_args(query: nodes.Query, constraint: nodes.Constraint | None) -> list[nodes.Dyn]:
    """Every ``Dyn`` argument of a constraint, each expression once, in a fixed order."""
    out: dict[str, nodes.Dyn] = {}
    _dyn_walk(constraint, out)
    return list(out.values())


def _dyn_walk(c: Any, out: dict[str, nodes.Dyn]) -> None:
    # a module function, not a closure: a recursive closure is a reference cycle, and parsing runs with the
    # cyclic collector off (parser.parse), so every call's closure stayed alive until the parse ended
    if isinstance(c, nodes.And | nodes.Or):
        for item in c.items:
            _dyn_walk(item, out)
    elif isinstance(c, nodes.Not):
        _dyn_walk(c.operand, out)
    elif c is not None:
        for name in ("bound", "options", "pattern", "phrase", "prefix", "schema"):
            value = getattr(c, name, None)
            if isinstance(value, nodes.Dyn):
                out.setdefault(value.expr, value)


_LOAD, _STORE = ast.Load(), ast.Store()  # shared, as Python's own parser shares them


class _CopyOnWrite(ast.NodeTransformer):
    """A transformer that leaves the tree it visits intact: a node is copied only when something under it
    changes, so the query's own AST (kept on the query) is shared with the generated one, not deep-copied."""

    def generic_visit(self, node: ast.AST) -> ast.AST:
        changed: dict[str, Any] = {}
        for name, old in ast.iter_fields(node):
            if isinstance(old, list):
                new = self.visit_list(old)
            elif isinstance(old, ast.AST):
                new = self.visit(old)
            else:
                continue
            if new is not old:
                changed[name] = new
        if not changed:
            return node
        return ast.copy_location(type(node)(**{**dict(ast.iter_fields(node)), **changed}), node)

    def visit_list(self, items: list[Any]) -> list[Any]:
        """The visited items (the same list when none changed); a visit may return a list or None."""
        out: list[Any] = []
        dirty = False
        for item in items:
            new = self.visit(item) if isinstance(item, ast.AST) else item
            if new is not item:
                dirty = True
            if isinstance(new, list):
                out.extend(new)
            elif new is not None:
                out.append(new)
        return out if dirty else items


class _DropLmqlImport(_CopyOnWrite):
    """``import lmql`` is dropped, as LMQL's compiler does: the name ``lmql`` is provided (it is lmqc)."""

    def visit_Import(self, node: ast.Import) -> Any:
        names = [a for a in node.names if a.name != "lmql"]
        if not names:
            return ast.copy_location(ast.Pass(), node)
        if len(names) == len(node.names):
            return node
        return ast.copy_location(ast.Import(names=names), node)

    def visit_FunctionDef(self, node: ast.AST) -> ast.AST:
        return node

    visit_AsyncFunctionDef = visit_ClassDef = visit_FunctionDef


# A run of at least this many consecutive query strings with only constant events (text, roles, holes without
# Python arguments) becomes one statement, ``X, Y = yield from __lmqc_events__((...))``: the same events, sent
# values and bindings, in a few AST nodes and instructions instead of ~20 per string (a 1 MB query of short
# query strings took ~0.5 GB to compile). Shorter runs stay one statement per event, as written.
RUN_MIN = 16
EVENTS = "__lmqc_events__"
# events flat, (kind, value, kind, value, ...): a tuple of tuples costs the compiler ~1 KB an event to merge
# constants (38 MiB for 110,000 events), a flat one ~50 bytes; no builtins, as a query's globals may shadow them
_EVENTS_SOURCE = f"""
def {EVENTS}(events):
    values = []
    kind = None
    for item in events:
        if kind is None:
            kind = item
            continue
        if kind == {EV_HOLE!r}:
            values.append((yield ({EV_HOLE!r}, item, {{}}, None, ())))
        else:
            yield (kind, item)
        kind = None
    return values
"""


class _Rewriter(_CopyOnWrite):
    """Query strings -> yields; ``await`` -> yield; ``import lmql`` dropped. Nested scopes stay untouched."""

    def __init__(self, query: nodes.Query, err: Any, dist_hole: int | None) -> None:
        from .checker import hole_constraints

        self.query = query
        self.err = err
        self.constraints = hole_constraints(query)
        self.dist_hole = dist_hole
        self.prompt_at: dict[int, nodes.PromptString] = {}  # id of a query-string statement -> its query string
        self.yields = 0
        self.runs = 0  # statements made of runs of constant query strings (the program needs EVENTS then)

    def visit_FunctionDef(self, node: ast.AST) -> ast.AST:
        return node

    visit_AsyncFunctionDef = visit_ClassDef = visit_Lambda = visit_FunctionDef

    def visit_Yield(self, node: ast.AST) -> ast.AST:
        raise self.err("'yield' is not allowed in a query body (query strings are the program's yields)", node)

    visit_YieldFrom = visit_Yield

    def visit_Await(self, node: ast.Await) -> ast.AST:
        self.yields += 1
        value = self.visit(node.value)
        new = ast.copy_location(ast.Yield(ast.Tuple([ast.Constant(EV_AWAIT), value], _LOAD)), node)
        return ast.fix_missing_locations(new)

    visit_Import = _DropLmqlImport.visit_Import

    def visit_Expr(self, node: ast.Expr) -> Any:
        ps = self.prompt_at.get(id(node))
        if ps is None:
            return self.generic_visit(node)
        # only the new statements need locations (a pass over the whole module costs seconds on large queries)
        return [ast.fix_missing_locations(ast.copy_location(s, node)) for s in self.prompt(ps, node)]

    def visit_list(self, items: list[Any]) -> list[Any]:
        if not any(id(item) in self.prompt_at for item in items):
            return super().visit_list(items)
        out: list[Any] = []
        run: list[tuple[ast.Expr, nodes.PromptString]] = []

        def flush() -> None:
            if len(run) >= RUN_MIN:
                out.append(self._run(run))
            else:
                out.extend(s for stmt, _ in run for s in self.visit_Expr(stmt))
            run.clear()

        for item in items:
            ps = self.prompt_at.get(id(item))
            if ps is not None and self._constant(ps):
                run.append((item, ps))
                continue
            flush()
            new = self.visit(item)
            out.extend(new if isinstance(new, list) else [new] if new is not None else [])
        flush()
        return out

    def _constant(self, ps: nodes.PromptString) -> bool:
        """Whether every event of a query string is a constant (no Python runs for it)."""
        for part in ps.parts:
            if isinstance(part, nodes.Interp):
                return False
            if isinstance(part, nodes.Hole) and (
                part.index == self.dist_hole or part.tactic is not None or part.decorators
                or dyn_args(self.query, self.constraints.get(part.index))
            ):
                return False
        return True

    def _run(self, run: list[tuple[ast.Expr, nodes.PromptString]]) -> ast.stmt:
        """One statement for a run of constant query strings (``RUN_MIN``)."""
        events: list[Any] = []
        targets: list[ast.expr] = []
        for _, ps in run:
            for part in ps.parts:
                if isinstance(part, nodes.Text):
                    if part.value:
                        events += (EV_TEXT, part.value)
                elif isinstance(part, nodes.Role):
                    events += (EV_ROLE, part.name)
                else:
                    events += (EV_HOLE, part.index)  # EVENTS sends the hole event and returns the value
                    targets.append(ast.Name(part.name, _STORE))
        self.yields += len(events) // 2
        self.runs += 1
        call = ast.YieldFrom(ast.Call(ast.Name(EVENTS, _LOAD), [ast.Constant(tuple(events))], []))
        stmt: ast.stmt = ast.Assign([ast.Tuple(targets, _STORE)], call) if targets else ast.Expr(call)
        return ast.fix_missing_locations(ast.copy_location(stmt, run[0][0]))

    # ---- query strings -------------------------------------------------------------------------------------

    def prompt(self, ps: nodes.PromptString, at: ast.AST) -> list[ast.stmt]:
        out: list[ast.stmt] = []
        run: list[ast.expr] = []

        def flush() -> None:
            if run:
                if len(run) == 1 and isinstance(run[0], ast.Constant):
                    text: ast.expr = run[0]
                else:
                    text = ast.JoinedStr(list(run))
                out.append(self._yield_stmt(ast.Tuple([ast.Constant(EV_TEXT), text], _LOAD)))
                run.clear()

        for part in ps.parts:
            if isinstance(part, nodes.Text):
                if part.value:
                    run.append(ast.Constant(part.value))
            elif isinstance(part, nodes.Interp):
                run.append(self._field(part, at))
            elif isinstance(part, nodes.Role):
                flush()
                out.append(self._yield_stmt(ast.Tuple([ast.Constant(EV_ROLE), ast.Constant(part.name)], _LOAD)))
            else:
                flush()
                out.append(self._hole(part, ps, at))
        flush()
        return out

    def _yield_stmt(self, value: ast.expr) -> ast.stmt:
        self.yields += 1
        return ast.Expr(ast.Yield(value))

    def _expr(self, source: str, at: ast.AST) -> ast.expr:
        tree = ast.parse(source.strip(), mode="eval").body
        for node in ast.walk(tree):
            ast.copy_location(node, at)
        return self.visit(tree)  # `await` inside an interpolation

    def _field(self, part: nodes.Interp, at: ast.AST) -> ast.expr:
        spec: ast.expr | None = None
        if part.format_spec:
            # f-string semantics: the spec may hold replacement fields of its own (`{x:>{width}}`)
            try:
                field = ast.parse("f" + repr("{0:" + part.format_spec + "}"), mode="eval").body.values[0]  # type: ignore[attr-defined]
            except (SyntaxError, ValueError) as e:
                message = e.msg if isinstance(e, SyntaxError) else str(e)
                raise self.err(f"invalid format spec '{part.format_spec}': {message}", line=part.span.line,
                               col=part.span.column) from None
            spec = field.format_spec
            for node in ast.walk(spec):
                ast.copy_location(node, at)
            spec = self.visit(spec)  # `await` inside a nested field
        conversion = ord(part.conversion) if part.conversion else -1
        return ast.FormattedValue(self._expr(part.expr, at), conversion, spec)

    def _hole(self, hole: nodes.Hole, ps: nodes.PromptString, at: ast.AST) -> ast.stmt:
        self.yields += 1
        if hole.index == self.dist_hole:
            dist = ps.distribution or self.query.distribution
            assert dist is not None
            options: ast.expr = (
                self._expr(dist.options.expr, at)
                if isinstance(dist.options, nodes.Dyn)
                else ast.Tuple([ast.Constant(o) for o in dist.options], _LOAD)
            )
            event = ast.Tuple([ast.Constant(EV_DIST), ast.Constant(hole.index), options], _LOAD)
        else:
            dyn = dyn_args(self.query, self.constraints.get(hole.index))
            dyn_dict = ast.Dict([ast.Constant(d.expr) for d in dyn], [self._expr(d.expr, at) for d in dyn])
            decorators = ast.Tuple([self._expr(d, at) for d in hole.decorators], _LOAD)
            event = ast.Tuple(
                [ast.Constant(EV_HOLE), ast.Constant(hole.index), dyn_dict, self._tactic(hole, at), decorators],
                _LOAD,
            )
        return ast.Assign([ast.Name(hole.name, _STORE)], ast.Yield(event))

    def _tactic(self, hole: nodes.Hole, at: ast.AST) -> ast.expr:
        if hole.tactic is None:
            return ast.Constant(None)
        tree = self._expr(hole.tactic, at)
        if isinstance(tree, ast.Call):
            # the call is not made: a query function called here would run on its own, outside this prompt
            kwargs = ast.Dict([ast.Constant(k.arg) if k.arg else None for k in tree.keywords], [k.value for k in tree.keywords])
            return ast.Tuple([tree.func, ast.Tuple(list(tree.args), _LOAD), kwargs], _LOAD)
        return ast.Tuple([tree, ast.Constant(None), ast.Constant(None)], _LOAD)


def distribution_hole(query: nodes.Query) -> int | None:
    """The hole occurrence a distribution clause scores (inline: its statement's; clause: the last hole)."""
    for ps in query.prompts:
        if ps.distribution is not None:
            holes = [p for p in ps.parts if isinstance(p, nodes.Hole)]
            return holes[-1].index if holes else None
    if query.distribution is not None:
        holes = query.holes()
        return holes[-1].index if holes else None
    return None


# Built programs by (source hash, filename, query strings): code objects only (a Program refers to its query,
# which holds the query's AST; the cache must not keep that alive). Bounded by the source characters it stands
# for (the code is roughly proportional), so a few large queries cannot pin hundreds of MB.
_BUILT: OrderedDict[tuple[bytes, str, int], tuple[CodeType, CodeType | None, tuple[str, ...], tuple[str, ...]]] = (
    OrderedDict()
)
_BUILT_SIZES: dict[tuple[bytes, str, int], int] = {}
BUILT_MAX_ENTRIES = 256
BUILT_MAX_CHARS = 4 << 20


def build(query: nodes.Query) -> Program:
    """The query's program, compiled once per (source, filename): see ``_build``."""
    digest = hashlib.sha256(query.source.encode("utf-8", "surrogatepass")).digest()
    key = (digest, query.filename, len(query.prompts))
    core = _BUILT.get(key)
    if core is None:
        program = _build(query)
        size = len(query.source)
        if size <= BUILT_MAX_CHARS:
            _BUILT[key] = (program.code, program.prologue, program.inputs, program.params)
            _BUILT_SIZES[key] = size
            while len(_BUILT) > BUILT_MAX_ENTRIES or sum(_BUILT_SIZES.values()) > BUILT_MAX_CHARS:
                old, _ = _BUILT.popitem(last=False)
                del _BUILT_SIZES[old]
        return program
    _BUILT.move_to_end(key)
    _register_source(query.filename, query.source)
    code, prologue, inputs, params = core
    return Program(code, prologue, inputs, query, params)


def _generate(query: nodes.Query, error: Any = None) -> tuple[ast.Module, ast.FunctionDef, _Rewriter]:
    """The generated module (its function without parameters) and the rewriter that made it. Shares the
    query's own AST nodes wherever nothing changes under them (``_CopyOnWrite``); they must not be mutated."""
    if error is None:
        error = _error_for(query)
    body = query.body if query.body is not None else ast.Module(body=[], type_ignores=[])
    rewriter = _Rewriter(query, error, distribution_hole(query))
    exprs = find_prompts(body)
    for ps, expr in zip(query.prompts, exprs, strict=True):
        rewriter.prompt_at[id(expr)] = ps
    stmts: list[ast.stmt] = list(rewriter.visit_list(body.body))
    if not rewriter.yields:
        # a body without query strings is still a generator (the runtime drives every query the same way)
        stmts.insert(0, ast.If(ast.Constant(False), [ast.Expr(ast.Yield(None))], []))
    if stmts:
        end = ast.Return(ast.Name(NO_RETURN, _LOAD))
        stmts.append(ast.fix_missing_locations(ast.copy_location(end, stmts[-1])))
    if not stmts:
        stmts = [ast.Pass()]
    for stmt in stmts[:1]:
        if not hasattr(stmt, "lineno"):
            stmt.lineno, stmt.col_offset = 1, 0  # type: ignore[attr-defined]
            ast.fix_missing_locations(stmt)
    extra: dict[str, Any] = {"type_params": []} if sys.version_info >= (3, 12) else {}
    func = ast.FunctionDef(
        name=FUNCTION, args=_arguments((), stmts[0]), body=stmts, decorator_list=[], returns=None, **extra,
    )
    ast.copy_location(func, stmts[0])
    helpers: list[ast.stmt] = ast.parse(_EVENTS_SOURCE).body if rewriter.runs else []
    module = ast.Module(body=[*helpers, func], type_ignores=[])
    return module, func, rewriter


def _arguments(params: Sequence[str], at: ast.AST) -> ast.arguments:
    return ast.arguments([], [ast.copy_location(ast.arg(p), at) for p in params], None, [], [], None, [])


def _error_for(query: nodes.Query) -> Any:
    def error(message: str, node: ast.AST | None = None, line: int | None = None, col: int | None = None) -> QuerySyntaxError:
        if node is not None:
            line, col = getattr(node, "lineno", None), getattr(node, "col_offset", -1) + 1
        return QuerySyntaxError(message, source=query.source, filename=query.filename, line=line, column=col)

    return error


def _build(query: nodes.Query) -> Program:
    """Compile a parsed query's body and prologue. Raises QuerySyntaxError for Python the compiler refuses
    (``break`` outside a loop, ``yield`` in the body, ...), located in the query source."""
    error = _error_for(query)
    module, func, _ = _generate(query, error)
    filename = query.filename
    _register_source(filename, query.source)
    try:
        prologue = None
        if query.prologue is not None:
            pro = _DropLmqlImport().visit(query.prologue)
            prologue = compile(ast.fix_missing_locations(pro), filename, "exec", dont_inherit=True)
        # compiled once without parameters to read the names it uses (Python's own refusals, like `nonlocal`
        # without a binding, come out here located in the query source), then with its inputs as parameters
        code = compile(module, filename, "exec", dont_inherit=True)
        inputs, params = _inputs(code, prologue, func, query)
        if params:
            del code
            func.args = _arguments(params, func)
            code = compile(module, filename, "exec", dont_inherit=True)
    except SyntaxError as e:
        raise error(f"invalid Python: {e.msg}", line=e.lineno, col=e.offset) from None
    return Program(code, prologue, tuple(inputs), query, tuple(params))


def _register_source(filename: str, source: str) -> None:
    """Let ``inspect.getsource`` find functions defined in a query (``@lmqc.query`` reads their docstring from
    source) when the query did not come from a file on disk."""
    lines = source.splitlines(keepends=True)
    if linecache.cache.get(filename) == (len(source), None, lines, filename):
        return  # registered already (the query parsed again): no need to stat a file that is not there
    if not os.path.exists(filename):
        linecache.cache[filename] = (len(source), None, lines, filename)


def _inputs(
    code: CodeType, prologue: CodeType | None, func: ast.FunctionDef, query: nodes.Query
) -> tuple[list[str], list[str]]:
    """The program's inputs and the generator function's parameters, read off the compiled code.

    Free names (read as globals somewhere, bound nowhere in prologue or body, not builtins) are inputs; so is a
    name the body assigns but reads first (``x = int(x)``), in execution order as far as it is visible
    statically. Names only a decoder argument reads (``sample(n=k)``) are inputs but not parameters.
    """
    func_code = next(c for c in code.co_consts if isinstance(c, CodeType) and c.co_name == FUNCTION)
    read, bound = _global_names(code)
    if prologue is not None:
        pro_read, pro_bound = _global_names(prologue)
        read |= pro_read - pro_bound  # a prologue name read before the prologue binds it: still bound after
        bound |= pro_bound
    local = set(func_code.co_varnames) | set(func_code.co_cellvars)
    first = _FirstUse()
    for stmt in func.body:
        first.visit(stmt)
    assigned_first_read = {n for n in local if first.loads_first.get(n) and n not in bound}
    free = read - bound - _BUILTINS - PROVIDED - {FUNCTION}
    decoder_names: set[str] = set()
    for _, value in query.decoder.args if query.decoder is not None else ():
        if isinstance(value, nodes.Dyn):  # sample(n=k): evaluated in the inputs when the query starts
            decoder_names |= {n.id for n in ast.walk(ast.parse(value.expr, mode="eval")) if isinstance(n, ast.Name)}
    names = free | assigned_first_read | (decoder_names - _BUILTINS - PROVIDED)
    positions = _first_positions(query)
    order = sorted(names, key=lambda n: (positions.get(n, (1 << 30, 0, 0)), n))
    # every input the body reads is a parameter of the generator function, as LMQL passes a query's free names as
    # arguments (``locals()`` shows them; ``x = int(x)`` starts from the input)
    return order, [n for n in order if n in free or n in assigned_first_read]


def _global_names(code: CodeType) -> tuple[set[str], set[str]]:
    """(read, bound) global names of module code and of every code object nested in it (functions, lambdas,
    comprehensions, class bodies)."""
    read: set[str] = set()
    bound: set[str] = set()
    stack = [(code, True)]
    while stack:
        co, module_level = stack.pop()
        stored_here: set[str] = set()
        loads: set[str] = set()
        for op, name in _name_instructions(co):
            if op in ("LOAD_GLOBAL", "LOAD_NAME"):
                loads.add(name)
            elif op in ("STORE_GLOBAL", "DELETE_GLOBAL"):
                bound.add(name)
            elif op in ("STORE_NAME", "DELETE_NAME"):
                stored_here.add(name)
        if module_level:
            bound |= stored_here
            read |= loads
        else:
            # a class body reads its own attributes (and __annotations__, for `x: int`) by LOAD_NAME
            read |= loads - stored_here - {"__annotations__"}
        stack.extend((c, False) for c in co.co_consts if isinstance(c, CodeType))
    return read, bound


_NAME_OPS = {dis.opmap[op]: op for op in (
    "LOAD_GLOBAL", "LOAD_NAME", "STORE_GLOBAL", "DELETE_GLOBAL", "STORE_NAME", "DELETE_NAME",
)}
_GLOBAL_ARG_SHIFT = 1 if sys.version_info >= (3, 11) else 0  # LOAD_GLOBAL's low bit says "push NULL" since 3.11


def _name_instructions(co: CodeType) -> Iterator[tuple[str, str]]:
    """(opname, name) of the instructions of ``co`` that load, store or delete a global or module name.

    The same as filtering ``dis.get_instructions(co)``, which builds an object for every instruction: seconds for
    the ~100,000 instructions of a large query, nearly all of them not these. Code units are (op, arg) byte
    pairs since 3.6 (inline caches are units of op 0 since 3.11); EXTENDED_ARG units before an instruction
    give its argument's higher bytes.
    """
    if not co.co_names:
        return
    units = np.frombuffer(co.co_code, np.uint8)
    ops, args = units[0::2], units[1::2]
    for k in np.flatnonzero(np.isin(ops, list(_NAME_OPS))).tolist():
        arg, shift, j = int(args[k]), 8, k - 1
        while j >= 0 and ops[j] == dis.EXTENDED_ARG:
            arg |= int(args[j]) << shift
            shift += 8
            j -= 1
        op = _NAME_OPS[int(ops[k])]
        yield op, co.co_names[arg >> _GLOBAL_ARG_SHIFT if op == "LOAD_GLOBAL" else arg]


class _FirstUse(ast.NodeVisitor):
    """Whether each name's first use, in (static) execution order, reads it."""

    def __init__(self) -> None:
        self.loads_first: dict[str, bool] = {}

    def visit_Name(self, node: ast.Name) -> None:
        self.loads_first.setdefault(node.id, isinstance(node.ctx, ast.Load))

    def visit_Assign(self, node: ast.Assign) -> None:
        self.visit(node.value)
        for t in node.targets:
            self.visit(t)

    def visit_AnnAssign(self, node: ast.AnnAssign) -> None:
        if node.value is not None:
            self.visit(node.value)
        self.visit(node.target)

    def visit_AugAssign(self, node: ast.AugAssign) -> None:
        self.visit(node.value)
        if isinstance(node.target, ast.Name):
            self.loads_first.setdefault(node.target.id, True)
        else:
            self.visit(node.target)

    def visit_For(self, node: ast.For | ast.AsyncFor) -> None:
        self.visit(node.iter)
        self.visit(node.target)
        for s in [*node.body, *node.orelse]:
            self.visit(s)

    visit_AsyncFor = visit_For

    def visit_FunctionDef(self, node: ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef) -> None:
        # the body runs when called; only the name binds here
        for d in node.decorator_list:
            self.visit(d)
        self.loads_first.setdefault(node.name, False)

    visit_AsyncFunctionDef = visit_ClassDef = visit_FunctionDef

    def visit_Lambda(self, node: ast.Lambda) -> None:
        pass

    def visit_Import(self, node: ast.Import | ast.ImportFrom) -> None:
        for alias in node.names:
            self.loads_first.setdefault((alias.asname or alias.name).split(".")[0], False)

    visit_ImportFrom = visit_Import

    def visit_ExceptHandler(self, node: ast.ExceptHandler) -> None:
        if node.type is not None:
            self.visit(node.type)
        if node.name:
            self.loads_first.setdefault(node.name, False)
        for s in node.body:
            self.visit(s)

    def visit_NamedExpr(self, node: ast.NamedExpr) -> None:
        self.visit(node.value)
        self.visit(node.target)

    def _comprehension(self, node: ast.AST) -> None:
        for gen in node.generators:  # type: ignore[attr-defined]
            self.visit(gen.iter)

    visit_ListComp = visit_SetComp = visit_DictComp = visit_GeneratorExp = _comprehension


def _first_positions(query: nodes.Query) -> dict[str, tuple[int, int, int]]:
    """Where each name is first mentioned in the query source: Python code, ``{expr}`` fields, hole tactics and
    decorators, Python-valued constraint and decoder arguments (by their source positions; names inside one
    query-string part in the order they are written)."""
    import re

    out: dict[str, tuple[int, int, int]] = {}

    def note(name: str, pos: tuple[int, int, int]) -> None:
        if name not in out or pos < out[name]:
            out[name] = pos

    def names_in(exprs: list[str], line: int, col: int) -> None:
        k = 0
        for expr in exprs:
            try:
                tree = ast.parse(expr.strip(), mode="eval")
            except (SyntaxError, ValueError, RecursionError, MemoryError):
                continue
            found = sorted(
                (n.lineno, n.col_offset, n.id) for n in ast.walk(tree) if isinstance(n, ast.Name)
            )
            for _, _, name in found:
                note(name, (line, col, k))
                k += 1

    for tree in (query.prologue, query.body):
        for n in ast.walk(tree) if tree is not None else ():
            if isinstance(n, ast.Name):
                note(n.id, (n.lineno, n.col_offset + 1, 0))
    for ps in query.prompts:
        for part in ps.parts:
            if isinstance(part, nodes.Interp):
                fields = re.findall(r"\{([^{}]*)\}", part.format_spec)
                names_in([part.expr, *fields], part.span.line, part.span.column)
            elif isinstance(part, nodes.Hole):
                names_in([*part.decorators, *([part.tactic] if part.tactic else [])], part.span.line, part.span.column)
    for c in [ps.where for ps in query.prompts] + [query.where]:
        for d in dyn_args(query, c):
            names_in([d.expr], d.span.line, d.span.column)
    dists = [ps.distribution for ps in query.prompts] + [query.distribution]
    for dist in dists:
        if dist is not None and isinstance(dist.options, nodes.Dyn):
            names_in([dist.options.expr], dist.options.span.line, dist.options.span.column)
    for _, value in query.decoder.args if query.decoder is not None else ():
        if isinstance(value, nodes.Dyn):
            names_in([value.expr], value.span.line, value.span.column)
    return out
