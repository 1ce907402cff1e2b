"""How many of LMQL's own documented queries does ``lmqc check`` accept?

    .venv/bin/python benchmarks/lmql_docs.py [--lmql GITDIR] [--rev REV] [--list] [--verbose] [--features]
                                             [--tests [--optional]] [--run [--timeout S] [--jobs N]
                                             [--max-len N]] [--json [PATH]]

A measurement, not a test: nothing is asserted. The script reads a snapshot of LMQL's repository through git
(``git ls-tree`` / ``git show`` on a bare git directory, default ``/work/.mirror/eth-sri+lmql/repo``), so none of
LMQL's text is ever copied into this repository, and runs lmqc's checker in-process on every query in its docs:
``lmqc.parse(text, filename=f"{file}:{line}")`` (parse + type-check, no model; what ``lmqc check`` does).

What is read: every Markdown file under ``docs/docs/language``, ``docs/docs/lib`` and ``docs/features``
(recursively) and every notebook (``.ipynb``) there.

* Markdown: every fenced block (backticks or tildes, any indentation) whose info string names ``lmql`` as its
  first word, braces allowed: ```` ```lmql ````, ```` ```{lmql} ````, ```` ```lmql{1,3} ````,
  ```` ```lmql name=x ````. As LMQL's docs highlighter does (``docs/.vitepress/highlighter.js``), leading
  ``<param>::`` lines (``name::x``, ``controls::``) and blank lines are dropped; so is a trailing
  ``model-output::`` section (the docs show the model's output there, it is not query text).
* Notebooks: the same fenced blocks inside markdown cells; and from code cells only what is clearly LMQL query
  text: a cell starting with ``%%lmql`` (the rest of the cell), the docstrings of ``@lmql.query`` functions,
  and string-literal query arguments of ``lmql.run`` / ``lmql.run_sync`` / ``lmql.query`` (also through a name
  bound to a string literal in the same cell, innermost enclosing scope first). ``lmql.F("...")`` is not taken
  here: it is one prompt statement without its quotes, not query syntax. Other code cells are not blocks at
  all.

Classification (first matching rule wins; printed by the script too):

1. fragment: empty after dropping the ``<param>::`` header;
2. fragment: ``...`` outside string literals and comments -- it stands for omitted code;
3. fragment: non-ASCII characters outside string literals and comments -- an annotated illustration (arrows,
   markers), not code;
4. fragment: the first code token is ``where`` -- a constraint clause only;
5. python-with-query: the block is Python (``ast`` parses it, top-level ``await`` allowed), it embeds queries
   (``@lmql.query`` docstrings, ``lmql.run``/``lmql.query`` string arguments) and has no top-level prompt
   statement (a string expression statement). Each embedded query is checked on its own: a docstring's raw
   source text (escapes not evaluated, a leading ``lmql`` marker line dropped, dedented), a call argument's
   string value (a leading ``lmql`` marker dropped as LMQL's ``preprocess_text`` does, dedented); one string
   run by several calls is one query;
6. fragment: the block is Python whose top-level statements are only imports, ``def``/``class`` and
   assignments, with no prompt statement anywhere and no embedded query -- only Python;
7. query: anything else, checked as a whole, including blocks that define ``@lmql.query`` functions and then
   use them in top-level prompts (nested queries) -- that is standalone LMQL.

Locations: ``FILE:N`` names a block whose query text starts after line N of FILE (for a plain block N is the
opening fence); notebook code is ``FILE#cellK:N`` with K the 1-based cell and N a line of that cell. lmqc's
errors then read ``FILE:N:L:C``: line L of the query text, i.e. line N+L of the file (or cell).

Output: the rule, counts per kind and per fragment reason, failures grouped by the first line of the error
message (file:line:col stripped, quoted upper-case names such as ``'NAME'`` shown as ``'…'``, error class kept)
with counts and example locations, then crashes (any exception that is not an ``lmqc.LmqcError`` -- a bug
in lmqc) grouped by exception and innermost frame, and a final summary line. ``--verbose`` prints every failure with its full rendered error (and crash tracebacks),
``--list`` every block with its classification and result, ``--features`` heuristic (regex) counts of the
LMQL language features used by the query texts, and ``--json [PATH]`` writes all of it (without LMQL's text)
to PATH, default ``benchmarks/results/lmql_docs.json``.

``--tests``: also LMQL's own test suite, every ``src/lmql/tests/**/*.py`` (``optional/`` only with
``--optional``; ``pending/`` included). Each module is Python; the queries it embeds are taken as in rule 5:
``@lmql.query`` docstrings as written in the source (what lmqc's own ``@lmqc.query`` reads), string arguments
of ``lmql.run`` / ``lmql.run_sync`` / ``lmql.query`` (a literal, or a name bound to one in an enclosing
scope), and ``lmql.F(prompt, constraints)``: one prompt statement, built as LMQL's ``F`` builds it --
``"prompt"`` with ``"`` escaped, plus `` where constraints`` when the constraints are a string literal. They are
checked and reported like the docs' queries, in a section of their own (``## tests: ...``), and summed up in
a ``lmql tests: ...`` line. Locations are ``FILE:N`` (the query text starts after line N of FILE).

``--run``: every query that checked is then *run* on lmqc's deterministic weightless test backend,
``lmqc.run(text, model="lmqc:tiny", filename=..., **inputs)``: ``model=`` overrides the query's ``from``
clause (``lmql.model(...)``, OpenAI models, ...). Each run is a forked process of its own (``--jobs`` at a
time, default one per core) with stdin, stdout and stderr on ``/dev/null`` (``input()`` reads EOF, ``print``
is silent); one still running after ``--timeout`` seconds (default 20) is killed and counts as a timeout.
No ``decoder=`` is passed by default: on the tiny backend every query ran in well under a second, including
the few that run into ``max_len`` (LMQL's default of 2048 tokens); ``--max-len N`` passes
``decoder="argmax(max_len=N)"`` to the queries that have no decoder clause of their own.

Inputs are the names ``lmqc.compiler.checker.inputs(lmqc.parse(text))`` reports; each gets, in this order:

* an input the Python passes (a parameter of the ``@lmql.query`` function, a keyword argument or an
  ``input_variables`` entry of ``lmql.run``/``lmql.query``): a dummy -- by its annotation (``int`` -> 2,
  ``float`` -> 2.0, ``bool`` -> True, ``list``/``tuple``/``set`` -> ``["x", "y"]``, ``str`` -> ``"x"``), else 2 if
  the query uses the name as a number (``range(n)``, arithmetic or a comparison, a decoder argument), else
  ``"x"``; ``self``/``cls`` cannot be stood for;
* a name the enclosing Python binds: a literal constant's value, a standard-library module for ``import M``,
  and for an ``@lmql.query`` function an ``lmqc.api.QueryFunction`` made from a stand-in function with the same
  parameters and the query text as ``__doc__`` (all of one module's share one namespace, so nested queries
  work); anything else (a class, a helper, a non-literal value) cannot be stood for;
* any other name: ``"x"`` or 2 as above, unless the query calls it, uses it as a decorator (``@name``) or reads
  its attributes -- then it cannot be stood for.

A query with an input nothing stands for is not run; it counts as "needs inputs", with the names and why.
Outcomes: ok; error (an ``lmqc.LmqcError``, grouped like check failures; messages of the query's own
``AssertionError``s -- the expected outputs of LMQL's tests -- shown as ``…``); crash (anything else, a bug in
lmqc: grouped by type, message and innermost frame inside lmqc); timeout; needs inputs. Each outcome and group
also counts the queries that use ``input()``, the network (wikipedia, requests, openai, ...) or name another
model. The summary lines: ``lmql docs run: R of K checked queries ran (errors E, crashes C, timeouts T, needs
inputs N)`` and the same for ``lmql tests run``.
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import re
import subprocess
import sys
import textwrap
import time
import traceback
from collections import Counter, defaultdict, deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import RESULTS, header, table, write_json  # noqa: E402

DEFAULT_GITDIR = Path("/work/.mirror/eth-sri+lmql/repo")
DOC_DIRS = ("docs/docs/language", "docs/docs/lib", "docs/features")

RULES: tuple[tuple[str, str], ...] = (
    ("fragment", "empty after dropping the <param>:: header lines"),
    ("fragment", "`...` outside strings and comments (stands for omitted code)"),
    ("fragment", "non-ASCII characters outside strings and comments (annotated illustration)"),
    ("fragment", "starts with `where` (a constraint clause only)"),
    (
        "python",
        "Python embedding queries (@lmql.query docstrings, lmql.run/query strings), no top-level prompt:"
        " each embedded query is checked",
    ),
    ("fragment", "Python of only imports, defs, classes and assignments, without any prompt statement"),
    ("query", "anything else: the whole block is checked as one query"),
)
WHY_EMPTY, WHY_ELIDED, WHY_ANNOTATED, WHY_WHERE, WHY_PYTHON, WHY_PY_ONLY, WHY_QUERY = (r[1] for r in RULES)


# -- reading LMQL's repository through git -------------------------------------------------------------------


def git(gitdir: Path, *args: str) -> str:
    out = subprocess.run(["git", "-C", str(gitdir), *args], capture_output=True, check=False)
    if out.returncode != 0:
        raise SystemExit(
            f"git {' '.join(args)} failed in {gitdir}: {out.stderr.decode(errors='replace').strip()}"
        )
    return out.stdout.decode("utf-8", errors="replace")


def doc_files(gitdir: Path, rev: str) -> list[str]:
    names = git(gitdir, "ls-tree", "-r", "--name-only", rev, "--", *DOC_DIRS).splitlines()
    return sorted(n for n in names if n.endswith((".md", ".ipynb")))


# -- blocks --------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Block:
    file: str
    line: int  # markdown: the opening fence's line; notebook code cell: 0
    cell: int | None  # notebooks: 1-based cell number
    info: str  # the fence's info string, or "code cell" / "%%lmql cell"
    text: str  # the block's content after dropping the <param>:: header / model-output:: tail
    body_line: int  # line of FILE (or of the cell) just before text line 1

    def loc(self, line: int | None = None) -> str:
        if self.cell is None:
            return f"{self.file}:{self.line if line is None else line}"
        return f"{self.file}#cell{self.cell}" + ("" if line is None else f":{line}")


@dataclass(slots=True)
class Query:
    block: Block
    text: str
    line: int  # line of FILE (or cell) just before text line 1
    origin: str  # "block", "docstring of f", "lmql.run argument", ...
    ok: bool = False
    group: str | None = None  # failure group (error class + first message line)
    rendered: str | None = None  # full rendered error / traceback
    declared: dict[str, str] = field(
        default_factory=dict
    )  # inputs its Python caller passes: name -> annotation
    scope: dict[str, Any] = field(
        default_factory=dict
    )  # names the enclosing Python binds: literal value or BOUND

    @property
    def filename(self) -> str:
        return self.block.loc(self.line)


@dataclass(slots=True)
class Item:
    block: Block
    kind: str  # "query" | "python" | "fragment"
    why: str
    queries: list[Query] = field(default_factory=list)


FENCE = re.compile(r"^([ \t]*)(`{3,}|~{3,})(.*)$")
PARAM_LINE = re.compile(r"^[a-zA-Z0-9_\-]+::.*")
MODEL_OUTPUT = re.compile(r"^model-output::")


def fence_lang(info: str) -> str:
    m = re.match(r"\{?\s*([\w+\-]+)", info)
    return m.group(1).lower() if m else ""


def fenced_blocks(text: str) -> Iterator[tuple[int, str, str]]:
    """(line of the opening fence, info string, content dedented by the fence's indentation) per fenced block."""
    lines = text.split("\n")
    i = 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m or (m.group(2)[0] == "`" and "`" in m.group(3)):
            i += 1
            continue
        indent, fence, info = m.group(1), m.group(2), m.group(3).strip()
        close = re.compile(rf"^[ \t]*{re.escape(fence[0])}{{{len(fence)},}}[ \t]*$")
        j = i + 1
        while j < len(lines) and not close.match(lines[j]):
            j += 1
        body = [ln[len(indent) :] if ln.startswith(indent) else ln.lstrip(" \t") for ln in lines[i + 1 : j]]
        yield i + 1, info, "\n".join(body)
        i = j + 1


def strip_params(content: str) -> tuple[str, int]:
    """Drop leading ``<param>::`` / blank lines (as the docs highlighter does) and a ``model-output::`` tail.

    Returns the text and how many leading lines were dropped."""
    lines = content.split("\n")
    k = 0
    while k < len(lines) and (PARAM_LINE.match(lines[k]) or not lines[k].strip()):
        k += 1
    rest = lines[k:]
    for j, ln in enumerate(rest):
        if MODEL_OUTPUT.match(ln):
            rest = rest[:j]
            break
    return "\n".join(rest).rstrip() + "\n" if any(s.strip() for s in rest) else "", k


def markdown_blocks(file: str, text: str, cell: int | None = None) -> Iterator[Block]:
    for line, info, content in fenced_blocks(text):
        if fence_lang(info) != "lmql":
            continue
        body, dropped = strip_params(content)
        yield Block(file, line, cell, info, body, line + dropped)


MAGIC = re.compile(r"^\s*[%!]")


def notebook_blocks(file: str, raw: str) -> Iterator[Block]:
    """Fenced lmql blocks of markdown cells; code cells that are ``%%lmql`` or embed queries (see docstring)."""
    try:
        cells = json.loads(raw).get("cells", [])
    except json.JSONDecodeError as e:
        print(f"# warning: {file}: not JSON ({e}); skipped")
        return
    for k, cell in enumerate(cells, 1):
        src = cell.get("source", "")
        src = "".join(src) if isinstance(src, list) else str(src)
        if cell.get("cell_type") == "markdown":
            yield from markdown_blocks(file, src, k)
        elif cell.get("cell_type") == "code":
            first, _, rest = src.partition("\n")
            if first.strip().startswith("%%lmql"):
                body = rest.rstrip() + "\n" if rest.strip() else ""
                yield Block(file, 0, k, "%%lmql cell", body, 1)
                continue
            # IPython magics / shell lines are blanked (keeping line numbers) so that `ast` can read the cell
            code = "\n".join("" if MAGIC.match(ln) else ln for ln in src.split("\n"))
            tree = parse_python(code)
            if tree is not None and embedded_queries(tree, code):
                yield Block(file, 0, k, "code cell", code, 0)


def read_blocks(gitdir: Path, rev: str, files: list[str]) -> list[Block]:
    blocks: list[Block] = []
    for f in files:
        raw = git(gitdir, "show", f"{rev}:{f}")
        blocks.extend(notebook_blocks(f, raw) if f.endswith(".ipynb") else markdown_blocks(f, raw))
    return blocks


# -- lexical helpers -------------------------------------------------------------------------------------------

STRING_START = re.compile(r"(?<![\w])([rRbBuUfF]{0,2})('''|\"\"\"|'|\")|('''|\"\"\"|'|\")")


@dataclass(frozen=True, slots=True)
class Lexed:
    code: str  # the text with every string literal replaced by "" (newlines kept) and comments removed
    strings: list[str]  # the bodies of the string literals, in order


def lex(text: str) -> Lexed:
    """A rough Python-like lexer: enough to tell code from string literals and comments."""
    out: list[str] = []
    strings: list[str] = []
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if c == "#":
            j = text.find("\n", i)
            i = n if j < 0 else j
            continue
        m = STRING_START.match(text, i) if c in "rRbBuUfF'\"" else None
        if m is None or (m.group(1) and i > 0 and (text[i - 1].isalnum() or text[i - 1] == "_")):
            out.append(c)
            i += 1
            continue
        quote = m.group(2) or m.group(3)
        j = m.end()
        while j < n:
            if text[j] == "\\":
                j += 2
                continue
            if text.startswith(quote, j) or (len(quote) == 1 and text[j] == "\n"):
                break
            j += 1
        body = text[m.end() : j]
        strings.append(body)
        out.append('""' + "\n" * body.count("\n"))
        i = j + (len(quote) if text.startswith(quote, j) else 0)
    return Lexed("".join(out), strings)


def parse_python(text: str) -> ast.Module | None:
    flags = ast.PyCF_ONLY_AST | ast.PyCF_ALLOW_TOP_LEVEL_AWAIT
    try:
        tree = compile(text, "<block>", "exec", flags=flags, dont_inherit=True)
    except (SyntaxError, ValueError):
        return None
    return tree if isinstance(tree, ast.Module) else None


def _is_lmql_attr(node: ast.expr, names: tuple[str, ...]) -> bool:
    return (
        isinstance(node, ast.Attribute)
        and node.attr in names
        and isinstance(node.value, ast.Name)
        and node.value.id == "lmql"
    )


def _is_query_decorator(node: ast.expr) -> bool:
    return _is_lmql_attr(node.func if isinstance(node, ast.Call) else node, ("query",))


def _is_prompt(stmt: ast.stmt) -> bool:
    return isinstance(stmt, ast.Expr) and (
        isinstance(stmt.value, ast.JoinedStr)
        or (isinstance(stmt.value, ast.Constant) and isinstance(stmt.value.value, str))
    )


def _trimmed(text: str, before: int, origin: str) -> tuple[str, int, str]:
    """Drop leading blank lines (moving the line mapping along) and trailing whitespace."""
    lines = text.split("\n")
    k = 0
    while k < len(lines) and not lines[k].strip():
        k += 1
    return "\n".join(lines[k:]).rstrip() + "\n", before + k, origin


class _Bound:
    """A name the enclosing Python binds to something other than a literal (a def, a class, an import, ...)."""

    def __repr__(self) -> str:
        return "BOUND"


BOUND = _Bound()


@dataclass(frozen=True, slots=True)
class Imported:
    """A name the enclosing Python binds with ``import MODULE``."""

    module: str


@dataclass(frozen=True, slots=True)
class QueryDef:
    """An ``@lmql.query`` function the enclosing Python defines: its parameters and its query text."""

    name: str
    params: str  # the parameter list as source, annotations dropped, non-literal defaults as None
    text: str  # the docstring as written, ``lmql`` marker dropped, dedented


LITERAL = (str, int, float, bool)
SCOPES = (ast.Module, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)
# keyword arguments of lmql.run / lmql.query that are options, not query inputs
RUN_OPTIONS = {"model", "decoder", "output_writer", "input_variables", "is_async", "calling_frame", "verbose"}


@dataclass(frozen=True, slots=True)
class Embedded:
    """One query a Python block embeds."""

    text: str
    before: int  # line of the block just before text line 1
    origin: str
    declared: dict[str, str]  # inputs the Python passes (parameters, keyword arguments): name -> annotation
    scope: dict[str, Any]  # names visible from the enclosing Python scopes: literal value or BOUND


def _query_def(node: ast.FunctionDef | ast.AsyncFunctionDef, text: str) -> QueryDef | None:
    doc = _docstring(node, text)
    if doc is None:
        return None

    def literal(d: ast.expr | None) -> ast.expr | None:
        return d if d is None or isinstance(d, ast.Constant) else ast.Constant(None)

    a = node.args
    args = ast.arguments(
        posonlyargs=[ast.arg(x.arg) for x in a.posonlyargs],
        args=[ast.arg(x.arg) for x in a.args],
        vararg=ast.arg(a.vararg.arg) if a.vararg else None,
        kwonlyargs=[ast.arg(x.arg) for x in a.kwonlyargs],
        kw_defaults=[literal(d) for d in a.kw_defaults],
        kwarg=ast.arg(a.kwarg.arg) if a.kwarg else None,
        defaults=[literal(d) for d in a.defaults],
    )
    return QueryDef(node.name, ast.unparse(args), _trimmed(doc[0], 0, "")[0])


def _own_bindings(scope: ast.AST, text: str) -> dict[str, list[tuple[int, Any]]]:
    """Names a scope binds itself (not in nested defs/classes): name -> [(line, a literal value, Imported,
    QueryDef or BOUND)]."""
    out: dict[str, list[tuple[int, Any]]] = defaultdict(list)
    if isinstance(scope, ast.FunctionDef | ast.AsyncFunctionDef):
        a = scope.args
        for arg in (*a.posonlyargs, *a.args, *a.kwonlyargs, a.vararg, a.kwarg):
            if arg is not None:
                out[arg.arg].append((scope.lineno, BOUND))

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef):
                is_query = any(_is_query_decorator(d) for d in child.decorator_list)
                out[child.name].append(
                    (child.lineno, (_query_def(child, text) if is_query else None) or BOUND)
                )
                continue  # a nested scope
            if isinstance(child, ast.ClassDef):
                out[child.name].append((child.lineno, BOUND))
                continue
            if isinstance(child, ast.Lambda | ast.arguments):
                continue
            if isinstance(child, ast.Import):
                for alias in child.names:
                    name = alias.asname or alias.name.split(".")[0]
                    out[name].append((child.lineno, Imported(alias.name if alias.asname else name)))
            elif isinstance(child, ast.ImportFrom):
                for alias in child.names:
                    out[alias.asname or alias.name].append((child.lineno, BOUND))
            elif isinstance(child, ast.Assign):
                value = child.value.value if isinstance(child.value, ast.Constant) else BOUND
                value = value if isinstance(value, LITERAL) else BOUND
                for t in child.targets:
                    if isinstance(t, ast.Name):
                        out[t.id].append((child.lineno, value))
                        continue
                    for n in ast.walk(t):
                        if isinstance(n, ast.Name):
                            out[n.id].append((child.lineno, BOUND))
                visit(child.value)
                continue
            elif isinstance(child, ast.Name) and isinstance(child.ctx, ast.Store):
                out[child.id].append((child.lineno, BOUND))
            elif isinstance(child, ast.ExceptHandler) and child.name:
                out[child.name].append((child.lineno, BOUND))
            visit(child)

    visit(scope)
    return out


class _Scopes:
    """The enclosing scopes of every node of a module, and what each scope binds."""

    def __init__(self, tree: ast.Module, text: str) -> None:
        self.text = text
        self.parent: dict[ast.AST, ast.AST] = {}
        for node in ast.walk(tree):
            for child in ast.iter_child_nodes(node):
                self.parent[child] = node
        self.bindings: dict[ast.AST, dict[str, list[tuple[int, Any]]]] = {}

    def chain(self, node: ast.AST) -> list[ast.AST]:
        """The scopes enclosing ``node`` (not ``node`` itself), innermost first."""
        out = []
        while node in self.parent:
            node = self.parent[node]
            if isinstance(node, SCOPES):
                out.append(node)
        return out

    def own(self, scope: ast.AST) -> dict[str, list[tuple[int, Any]]]:
        if scope not in self.bindings:
            self.bindings[scope] = _own_bindings(scope, self.text)
        return self.bindings[scope]

    def lookup(self, name: str, node: ast.AST) -> tuple[int, Any] | None:
        """(line, literal value or BOUND) of the binding of ``name`` seen from ``node``: in the innermost scope
        binding it, its last binding before ``node``'s line (else its last binding)."""
        line = getattr(node, "lineno", 0)
        for scope in self.chain(node):
            entries = self.own(scope).get(name)
            if entries:
                before = [e for e in entries if e[0] <= line]
                return (before or entries)[-1]
        return None

    def visible(self, node: ast.AST) -> dict[str, Any]:
        """Every name visible from ``node``'s enclosing scopes: literal value or BOUND."""
        names = {name for scope in self.chain(node) for name in self.own(scope)}
        out: dict[str, Any] = {}
        for name in sorted(names):
            hit = self.lookup(name, node)
            out[name] = hit[1] if hit is not None else BOUND
        return out


def strip_marker(value: str) -> tuple[str, int]:
    """LMQL's treatment of a query string (``preprocess_text``): a leading ``lmql`` marker is dropped, then
    spaces up to and including the first newline; then the common indentation. Returns (text, lines dropped)."""
    dropped = 0
    if value.startswith("lmql"):
        rest = value[4:]
        stripped = rest.lstrip(" \t")
        if stripped.startswith("\n"):
            value, dropped = stripped[1:], 1
        elif not (rest[:1].isalnum() or rest[:1] == "_"):
            value = stripped
    return textwrap.dedent(value), dropped


def _docstring(node: ast.FunctionDef | ast.AsyncFunctionDef, text: str) -> tuple[str, int] | None:
    """(text, line before its first line) of a function's docstring as written: the raw characters between
    the quotes, a first line holding only the ``lmql`` marker dropped, dedented."""
    doc = node.body[0] if node.body else None
    if not (isinstance(doc, ast.Expr) and isinstance(doc.value, ast.Constant)):
        return None
    if not isinstance(doc.value.value, str):
        return None
    seg = ast.get_source_segment(text, doc.value) or ""
    m = re.match(r"[rRuU]?('''|\"\"\"|'|\")", seg)
    if not m:
        return None
    inner = seg[m.end() : len(seg) - len(m.group(1))]
    first, sep, rest = inner.partition("\n")
    if sep and first.strip() in ("", "lmql"):
        return textwrap.dedent(rest), doc.value.lineno
    return textwrap.dedent(inner), doc.value.lineno - 1


def _annotation(arg: ast.arg) -> str:
    return ast.unparse(arg.annotation) if arg.annotation is not None else ""


def embedded_queries(tree: ast.Module, text: str, *, f_strings: bool = False) -> list[Embedded]:
    """Each query a Python block embeds: ``@lmql.query`` docstrings, string arguments of ``lmql.run`` /
    ``lmql.run_sync`` / ``lmql.query`` (a literal, or a name bound to one in an enclosing scope), and with
    ``f_strings`` the strings of ``lmql.F(prompt, constraints)``, built as LMQL does: ``"prompt" where
    constraints``. A string several calls run is one query."""
    found: list[Embedded] = []
    seen: set[tuple[int, str]] = set()
    scopes = _Scopes(tree, text)

    def add(body: str, before: int, origin: str, node: ast.AST, declared: dict[str, str]) -> None:
        q_text, q_before, q_origin = _trimmed(body, before, origin)
        if (q_before, q_text) in seen:
            return
        seen.add((q_before, q_text))
        visible = {k: v for k, v in scopes.visible(node).items() if k not in declared}
        found.append(Embedded(q_text, q_before, q_origin, declared, visible))

    def string_arg(arg: ast.expr, node: ast.AST) -> tuple[str, int] | None:
        """(value, line before it) of a string literal argument, or of a name bound to one."""
        if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
            return arg.value, arg.lineno - 1
        if isinstance(arg, ast.Name):
            hit = scopes.lookup(arg.id, node)
            if hit is not None and isinstance(hit[1], str):
                return hit[1], hit[0] - 1
        return None

    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            if not any(_is_query_decorator(d) for d in node.decorator_list):
                continue
            doc = _docstring(node, text)
            if doc is None:
                continue
            body, before = doc
            a = node.args
            params = {p.arg: _annotation(p) for p in (*a.posonlyargs, *a.args, *a.kwonlyargs)}
            add(body, before, f"docstring of {node.name}", node, params)
        elif (
            isinstance(node, ast.Call)
            and _is_lmql_attr(node.func, ("run", "run_sync", "query"))
            and node.args
        ):
            hit = string_arg(node.args[0], node)
            if hit is None:
                continue
            value, line = hit
            body, dropped = strip_marker(value)
            declared = {k.arg: "" for k in node.keywords if k.arg and k.arg not in RUN_OPTIONS}
            for k in node.keywords:
                if k.arg == "input_variables" and isinstance(k.value, ast.List | ast.Tuple):
                    declared |= {
                        e.value: ""
                        for e in k.value.elts
                        if isinstance(e, ast.Constant) and isinstance(e.value, str)
                    }
            assert isinstance(node.func, ast.Attribute)
            add(body, line + dropped, f"lmql.{node.func.attr} argument", node, declared)
        elif f_strings and isinstance(node, ast.Call) and _is_lmql_attr(node.func, ("F",)) and node.args:
            hit = string_arg(node.args[0], node)
            if hit is None:
                continue
            value, line = hit
            where = node.args[1] if len(node.args) > 1 else None
            where = where or next((k.value for k in node.keywords if k.arg == "constraints"), None)
            constraints = string_arg(where, node) if where is not None else None
            body = '"' + value.replace('"', '\\"') + '"' + (f" where {constraints[0]}" if constraints else "")
            add(body, line, "lmql.F argument", node, {})
    return sorted(found, key=lambda e: e.before)


PY_ONLY_STMTS = (ast.Import, ast.ImportFrom, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Assign)


def has_prompt(tree: ast.Module) -> bool:
    """Any string expression statement that is not a function or class docstring."""
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if not isinstance(body, list):
            continue
        skip_first = isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef)
        if any(_is_prompt(s) for s in body[1 if skip_first else 0 :]):
            return True
        for attr in ("orelse", "finalbody"):
            if any(_is_prompt(s) for s in getattr(node, attr, []) or []):
                return True
    return False


# -- classification ----------------------------------------------------------------------------------------


def classify(block: Block) -> Item:
    text = block.text
    if not text.strip():
        return Item(block, "fragment", WHY_EMPTY)
    code = lex(text).code
    if "..." in code:
        return Item(block, "fragment", WHY_ELIDED)
    if any(ord(c) > 127 for c in code):
        return Item(block, "fragment", WHY_ANNOTATED)
    if re.match(r"\s*where\b", code):
        return Item(block, "fragment", WHY_WHERE)
    tree = parse_python(text)
    if tree is not None:
        embedded = embedded_queries(tree, text)
        if embedded and not any(_is_prompt(s) for s in tree.body):
            item = Item(block, "python", WHY_PYTHON)
            for e in embedded:
                item.queries.append(
                    Query(
                        block,
                        e.text,
                        block.body_line + e.before,
                        e.origin,
                        declared=e.declared,
                        scope=e.scope,
                    )
                )
            return item
        if not embedded and all(isinstance(s, PY_ONLY_STMTS) for s in tree.body) and not has_prompt(tree):
            return Item(block, "fragment", WHY_PY_ONLY)
    return Item(block, "query", WHY_QUERY, [Query(block, text, block.body_line, "block")])


# -- checking ----------------------------------------------------------------------------------------------


@dataclass(slots=True)
class Crash:
    query: Query
    key: str  # exception class + first message line + innermost frame
    summary: str  # a short traceback summary (last frames)
    full: str


def _first_line(e: BaseException) -> str:
    s = str(e).strip()
    return s.splitlines()[0] if s else ""


def failure_group(e: Exception, filename: str) -> str:
    msg = getattr(e, "message", None)
    first = str(msg).splitlines()[0] if isinstance(msg, str) and msg.strip() else _first_line(e)
    first = re.sub(rf"^{re.escape(filename)}(?::\d+)*:\s*", "", first)
    first = re.sub(r"^\S+?:\d+(?::\d+)*:\s+", "", first)  # any other file:line:col prefix
    first = re.sub(r"'[A-Z][A-Z0-9_]*'", "'…'", first)  # hole/variable names: one group per kind of error
    return f"{type(e).__name__}: {first}"


def check_all(queries: list[Query]) -> list[Crash]:
    import lmqc

    crashes: list[Crash] = []
    for q in queries:
        try:
            lmqc.parse(q.text, filename=q.filename)
        except lmqc.LmqcError as e:
            q.group = failure_group(e, q.filename)
            q.rendered = e.render() if hasattr(e, "render") else str(e)
        except Exception as e:
            frames = traceback.extract_tb(e.__traceback__)
            inner = frames[-1] if frames else None
            where = f"{Path(inner.filename).name}:{inner.lineno} in {inner.name}" if inner else "?"
            q.group = f"crash {type(e).__name__}"
            q.rendered = "".join(traceback.format_exception(e))
            summary = " <- ".join(
                f"{Path(f.filename).name}:{f.lineno} {f.name}" for f in reversed(frames[-4:])
            )
            crashes.append(
                Crash(q, f"{type(e).__name__}: {_first_line(e)[:160]}  [at {where}]", summary, q.rendered)
            )
        else:
            q.ok = True
    return crashes


# -- feature census (heuristic) ---------------------------------------------------------------------------

DECODERS = r"(?:argmax|sample|beam|beam_var|var|best_k)"
CONSTRAINT_FNS = {"STOPS_AT", "STOPS_BEFORE", "INT", "REGEX", "stops_at", "stops_before", "int", "regex"}
CONSTRAINT_HELPERS = {"len", "TOKENS", "set", "list", "str", "float", "not", "and", "or", "in"}
HOLE = re.compile(r"(?<!\[)\[(?!\[)\s*((?:@[\w.]+(?:\([^)\]]*\))?\s+)*)([A-Za-z_]\w*)\s*(?::\s*([^\]]*))?\]")
PY_TYPES = ("int", "float", "str", "bool")


def constraint_regions(code: str) -> list[str]:
    """Constraint text after `where` (inline, continued with backslashes, or a standalone clause block)."""
    regions: list[str] = []
    lines = code.split("\n")
    for i, ln in enumerate(lines):
        m = re.search(r"(?:^|(?<=[\s\"')]))where\b(.*)$", ln)
        if not m:
            continue
        parts = [m.group(1)]
        j = i
        if not m.group(1).strip():  # standalone `where` clause: the following more-indented lines
            ind = len(ln) - len(ln.lstrip())
            j = i + 1
            while j < len(lines) and (not lines[j].strip() or len(lines[j]) - len(lines[j].lstrip()) > ind):
                parts.append(lines[j])
                j += 1
        else:
            while parts[-1].rstrip().endswith("\\") and j + 1 < len(lines):
                j += 1
                parts.append(lines[j])
        regions.append(" ".join(p.strip().rstrip("\\") for p in parts))
    return regions


def _hole_features(text: str, lexed: Lexed) -> set[str]:
    feats: set[str] = set()
    names: Counter[str] = Counter()
    for body in lexed.strings:
        for m in HOLE.finditer(body):
            decos, name, tactic = m.group(1).split(), m.group(2), (m.group(3) or "").strip()
            names[name] += 1
            feats.add("hole [X]")
            if not name.isupper():
                feats.add("hole with a lowercase/mixed-case name ([p: ...], [catchphrase])")
            if body[m.end() :].strip():
                feats.add("hole followed by more text in the same prompt string")
            if decos:
                feats.add("decorator hole [@fn X]")
                if len(decos) > 1:
                    feats.add("chained decorators [@a @b X]")
                if any("(" in d for d in decos):
                    feats.add("decorator with arguments [@fn(args) X]")
            if not tactic:
                continue
            if tactic in PY_TYPES:
                feats.add(f"typed hole [X: {tactic}]")
            elif re.match(r"[rR]?[\"']", tactic):
                feats.add('regex-typed hole [X: r"..."]')
            elif re.match(r"[A-Z]\w*$", tactic):
                feats.add("class-typed hole [X: Dataclass]")
            elif "(" in tactic:
                feats.add("nested query with arguments [X: fn(args)]")
            else:
                feats.add("nested query [X: fn]")
        if sum(1 for _ in HOLE.finditer(body)) > 1:
            feats.add("several holes in one prompt string")
    if re.search(r"\[\s*\w+\s*:\s*[rR][\"']", text):  # the lexer splits `[X: r"..."]` at the inner quote
        feats.add('regex-typed hole [X: r"..."]')
    if any(c > 1 for c in names.values()):
        feats.add("same hole name in several places (or a loop re-filling it)")
    return feats


def features(text: str) -> set[str]:
    """The features one query text uses (and those of ``@lmql.query`` docstrings nested in it)."""
    lexed = lex(text)
    code = lexed.code
    feats = _hole_features(text, lexed)
    for s in lexed.strings:
        if re.match(r"lmql[ \t]*\n", s):
            feats |= features(textwrap.dedent(s.split("\n", 1)[1]))

    def has(pattern: str, src: str = code, name: str = "") -> None:
        if re.search(pattern, src, re.MULTILINE):
            feats.add(name)

    # decoder / clauses
    has(rf"^\s*{DECODERS}\s*$", name="decoder keyword on its own line + indented body (standalone syntax)")
    has(rf"^\s*{DECODERS}\s*\(", name="decoder with arguments, e.g. sample(temperature=0.8)")
    has(rf"^\s*{DECODERS}\s+\"\"", name='decoder keyword inline before a prompt (argmax "..." from ...)')
    has(r"^\s*from\s*$|\bfrom\s+\"\"", name="`from` model clause")
    has(r"^\s*where\s*$", name="standalone `where` clause")
    has(r"\"\"\s*(?:\\\s*\n\s*)?where\b", name='inline `"..." where` on a prompt statement')
    has(r"\bdistribution\b", name="`distribution` clause")
    has(r"\\[ \t]*\n", name="backslash line continuation in code")
    # Python statements in the body
    has(r"^\s*for\b.*:\s*$", name="for loop")
    has(r"^\s*while\b", name="while loop")
    has(r"^\s*if\b.*:\s*$", name="if/elif/else")
    has(r"^\s*break\b", name="break")
    has(r"^\s*return\b", name="return")
    has(r"^\s*def\b", name="def in body")
    has(r"^\s*async\s+def\b", name="async def in body")
    has(r"^\s*class\b", name="class in body")
    has(r"^\s*@", name="Python decorator in body (@lmql.query, @dataclass, ...)")
    has(r"^\s*@lmql\.query\b", name="@lmql.query function defined in body")
    has(r"^\s*(?:import|from\s+[\w.]+\s+import)\b", name="import")
    has(r"^\s*try\s*:", name="try/except")
    has(r"\bawait\b", name="await in code")
    has(r"^\s*print\(", name="print(...)")
    has(r"^\s*[\w.\[\]\"]+\s*(?:=|\+=)[^=]", name="Python assignment")
    has(r"^\s*\w+\.\w+\(", name="method-call statement (backpack.append(...))")
    # prompt strings
    has(r"\"\"\"|'''", text, "triple-quoted (multi-line) prompt")
    has(r"\{:(?:user|system|assistant)\}", text, "{:role} chat tags")
    has(r"await\s+input\(", text, "await input() (user input)")
    if any(re.search(r"(?<!\{)\{(?![{:])[^{}\n]+\}", s) for s in lexed.strings):
        feats.add("{expr} interpolation in a prompt")
    if any(re.search(r"(?<!\{)\{(?![{:])[^{}\n]*\([^{}\n]*\}", s) for s in lexed.strings):
        feats.add("{call(...)} interpolation (tool call in a prompt)")
    if any("{{" in s or "[[" in s for s in lexed.strings):
        feats.add("{{ / [[ escapes in a prompt")
    if any(re.search(r"\\\n", s) for s in lexed.strings):
        feats.add("backslash-newline inside a prompt string")
    # constraints
    for region in constraint_regions(code):
        for fn in re.findall(r"\b(\w+)\s*\(", region):
            if fn in CONSTRAINT_FNS:
                feats.add(f"constraint {fn}(...)")
            elif fn not in CONSTRAINT_HELPERS:
                feats.add("constraint: custom function call")
        if re.search(r"len\s*\(\s*TOKENS\s*\(", region):
            feats.add("constraint len(TOKENS(X)) </>")
        elif re.search(r"len\s*\(\s*\w+\s*\)\s*[<>]", region):
            feats.add("constraint len(X) </>")
        if re.search(r"\bin\s*\[", region):
            feats.add("constraint X in [list literal]")
        if re.search(r"\bin\s+set\s*\(", region):
            feats.add("constraint X in set([...])")
        if re.search(r"\bin\s+[a-z_]\w*\b(?!\s*\()", region):
            feats.add("constraint X in <python variable>")
        if re.search(r"\bnot\s+\"\"\s+in\b", region):
            feats.add('constraint not "s" in X')
        for op in ("and", "or"):
            if re.search(rf"\b{op}\b", region):
                feats.add(f"constraint `{op}`")
    return feats


# -- LMQL's test suite -----------------------------------------------------------------------------------------

TEST_DIR = "src/lmql/tests"
WHY_TESTS = "Python test module: each embedded query is checked"


def test_files(gitdir: Path, rev: str, optional: bool) -> list[str]:
    names = git(gitdir, "ls-tree", "-r", "--name-only", rev, "--", TEST_DIR).splitlines()
    skip = f"{TEST_DIR}/optional/"
    return sorted(n for n in names if n.endswith(".py") and (optional or not n.startswith(skip)))


def read_tests(gitdir: Path, rev: str, files: list[str]) -> tuple[list[Item], list[str]]:
    """One item per test module that embeds queries, and the modules ``ast`` cannot read."""
    items: list[Item] = []
    unreadable: list[str] = []
    for f in files:
        src = git(gitdir, "show", f"{rev}:{f}")
        tree = parse_python(src)
        if tree is None:
            unreadable.append(f)
            continue
        embedded = embedded_queries(tree, src, f_strings=True)
        if not embedded:
            continue
        block = Block(f, 0, None, "test module", src, 0)
        item = Item(block, "python", WHY_TESTS)
        for e in embedded:
            item.queries.append(Query(block, e.text, e.before, e.origin, declared=e.declared, scope=e.scope))
        items.append(item)
    return items, unreadable


# -- running on the tiny backend -------------------------------------------------------------------------------

TINY = "lmqc:tiny"
RUN_PARAMS = {"query", "model", "decoder", "filename", "endpoint"}  # lmqc.run's own keyword parameters
RUNTIME_NAMES = {"lmql": "LMQL's module"}  # (``context`` is provided by lmqc's runtime, never an input)
EXTERNAL = (
    ("input()", re.compile(r"\binput\s*\(")),
    ("network", re.compile(r"\b(?:wikipedia\w*|requests|openai|urllib|httpx|aiohttp)\b")),
)


def _int_like(name: str, text: str) -> bool:
    """The name is used as a number: ``range(n)``, arithmetic, a comparison, or a decoder argument."""
    n = re.escape(name)
    return any(
        re.search(p, text, re.MULTILINE)
        for p in (
            rf"\brange\(\s*{n}\s*[,)]",
            rf"(?<![\w.]){n}\s*(?:[-*/%<>]|\+\s*\d)",
            rf"(?:[-*/%<>]|\d\s*\+)\s*{n}\b",
            rf"^\s*{DECODERS}\s*\([^)\n]*=\s*{n}\b",
        )
    )


def dummy_value(name: str, annotation: str, text: str) -> Any:
    """A plausible value for an input: by its annotation if any, else ``2`` if used as a number, else ``"x"``."""
    a = annotation.split("[")[0].strip().lower()
    if a in ("int", "float"):
        return 2 if a == "int" else 2.0
    if a == "bool":
        return True
    if a in ("list", "tuple", "set", "sequence"):
        return ["x", "y"]
    if a == "str":
        return "x"
    return 2 if _int_like(name, text) else "x"


def _stdlib(module: str) -> bool:
    return module.split(".")[0] in sys.stdlib_module_names


def query_functions(scope: dict[str, Any]) -> dict[str, Any]:
    """The namespace of the enclosing Python as far as it can be rebuilt without running it: its literal
    constants, its standard-library imports, and an ``lmqc.QueryFunction`` for each ``@lmql.query`` function it
    defines (made from a stand-in function with the same parameters whose ``__doc__`` is the query text, all in
    this one namespace, so that they can use one another as nested queries)."""
    import importlib

    from lmqc.api import LmqcError, QueryFunction

    ns: dict[str, Any] = {}
    for name, v in scope.items():
        if isinstance(v, LITERAL):
            ns[name] = v
        elif isinstance(v, Imported) and _stdlib(v.module):
            ns[name] = importlib.import_module(v.module)
    for name, v in scope.items():
        if isinstance(v, QueryDef):
            try:
                exec(f"def {v.name}({v.params}): pass", ns)  # noqa: S102 - a stand-in with the same parameters
                fn = ns.pop(v.name)
                fn.__doc__ = v.text
                ns[name] = QueryFunction.from_function(fn, None, None, {})
            except (SyntaxError, LmqcError):
                continue
    return ns


def run_inputs(q: Query, names: list[str]) -> tuple[dict[str, Any], list[str]]:
    """Values for a query's inputs, and the inputs no dummy can stand for (with why)."""
    values: dict[str, Any] = {}
    missing: list[str] = []
    ns: dict[str, Any] | None = None
    for name in names:
        n = re.escape(name)
        if name in RUN_PARAMS:
            missing.append(f"{name} (collides with a parameter of lmqc.run)")
        elif name in q.declared:
            if name in ("self", "cls"):
                missing.append(f"{name} (the method's receiver)")
            else:
                values[name] = dummy_value(name, q.declared[name], q.text)
        elif name in q.scope:
            ns = query_functions(q.scope) if ns is None else ns
            if name in ns:
                values[name] = ns[name]
            else:
                missing.append(f"{name} (bound by the enclosing Python)")
        elif name in RUNTIME_NAMES:
            missing.append(f"{name} ({RUNTIME_NAMES[name]})")
        elif re.search(rf"(?<![\w.]){n}\s*[.(]|@{n}\b", q.text):
            missing.append(f"{name} (called, used as a decorator, or its attributes used)")
        else:
            values[name] = dummy_value(name, "", q.text)
    return values, missing


@dataclass(slots=True)
class Run:
    query: Query
    status: str = "needs inputs"  # or "pending" (to run), then "ok", "error", "crash" or "timeout"
    group: str = ""  # error: class + first message line; crash: type + message + innermost lmqc frame
    detail: str = ""  # ok: the result's repr (cut); error: rendered error; crash: traceback; else why
    inputs: dict[str, Any] = field(default_factory=dict)
    decoder: str | None = None  # the decoder= override passed, if any
    uses: tuple[str, ...] = ()  # external things the query text uses (input(), network, another model)
    seconds: float = 0.0
    summary: str = ""  # crash: the last frames of the traceback


def _lmqc_dirs() -> tuple[str, ...]:
    import lmqc
    import lmqc.compiler
    import lmqc.runtime

    return tuple(str(Path(m.__file__).resolve().parent) + "/" for m in (lmqc, lmqc.compiler, lmqc.runtime))


def _run_child(conn: Any, text: str, filename: str, inputs: dict[str, Any], decoder: str | None) -> None:
    """In a forked worker: run one query; send a dict back. Output of the query's code goes to /dev/null."""
    null = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(null, fd)
    import lmqc

    t0 = time.perf_counter()
    out: dict[str, Any]
    try:
        kwargs: dict[str, Any] = {"decoder": decoder} if decoder else {}
        result = lmqc.run(text, model=TINY, filename=filename, **kwargs, **inputs)
        out = {"status": "ok", "detail": repr(result)[:300]}
    except lmqc.LmqcError as e:
        out = {"status": "error", "group": run_group(e, filename), "detail": _rendered(e)}
    except BaseException as e:  # noqa: BLE001 - anything else is a bug in lmqc
        frames = traceback.extract_tb(e.__traceback__)
        dirs = _lmqc_dirs()
        ours = [f for f in frames if str(Path(f.filename).resolve()).startswith(dirs)]
        inner = ours[-1] if ours else (frames[-1] if frames else None)
        where = f"{Path(inner.filename).name}:{inner.lineno} in {inner.name}" if inner else "?"
        out = {
            "status": "crash",
            "group": f"{type(e).__name__}: {_first_line(e)[:160]}  [at {where}]",
            "detail": "".join(traceback.format_exception(e)),
            "summary": " <- ".join(
                f"{Path(f.filename).name}:{f.lineno} {f.name}" for f in reversed(frames[-4:])
            ),
        }
    out["seconds"] = time.perf_counter() - t0
    try:
        conn.send(out)
    except Exception as e:  # noqa: BLE001 - e.g. an unpicklable detail
        conn.send({"status": "crash", "group": f"worker could not send its result: {e}", "detail": ""})
    conn.close()


def run_group(e: Exception, filename: str) -> str:
    """As :func:`failure_group`; the query's own assertion messages (expected outputs of LMQL's tests) elided."""
    return re.sub(r"(query code raised AssertionError)\b.*", r"\1: …", failure_group(e, filename))


def _rendered(e: BaseException) -> str:
    render = getattr(e, "render", None)
    return render() if callable(render) else str(e)


def prepare_runs(queries: list[Query], max_len: int | None) -> list[Run]:
    """One run per checked query: its inputs (or why it cannot run), external uses and decoder override."""
    import lmqc
    from lmqc.compiler.checker import inputs as query_inputs

    runs = []
    for q in queries:
        parsed = lmqc.parse(q.text, filename=q.filename)
        run = Run(q)
        uses = [name for name, pat in EXTERNAL if pat.search(q.text)]
        if parsed.model is not None or "lmql.model(" in q.text:
            uses.append("other model")
        run.uses = tuple(uses)
        if max_len is not None and parsed.decoder is None:
            run.decoder = f"argmax(max_len={max_len})"
        run.inputs, missing = run_inputs(q, query_inputs(parsed))
        if missing:
            run.detail = "; ".join(missing)
        else:
            run.status = "pending"
        runs.append(run)
    return runs


def run_all(runs: list[Run], timeout: float, jobs: int) -> None:
    """Run every pending run in its own forked process, ``jobs`` at a time; kill one after ``timeout`` s."""
    import multiprocessing as mp
    from multiprocessing.connection import wait

    import lmqc

    lmqc.vocabulary(TINY)  # warm the tiny backend up once: every worker inherits it
    ctx = mp.get_context("fork")
    todo = deque(r for r in runs if r.status == "pending")
    live: dict[Any, tuple[Run, Any, float]] = {}  # reading end -> (run, process, start)
    while todo or live:
        while todo and len(live) < jobs:
            r = todo.popleft()
            recv, send = ctx.Pipe(duplex=False)
            sys.stdout.flush()
            sys.stderr.flush()
            args = (send, r.query.text, r.query.filename, r.inputs, r.decoder)
            proc = ctx.Process(target=_run_child, args=args, daemon=True)
            proc.start()
            send.close()
            live[recv] = (r, proc, time.perf_counter())
        for conn in wait(list(live), timeout=0.2):
            r, proc, t0 = live.pop(conn)
            try:
                out = conn.recv()
            except (EOFError, OSError):
                proc.join(5)
                out = {"status": "crash", "group": f"worker died (exit code {proc.exitcode})", "detail": ""}
            conn.close()
            proc.join(5)
            r.status, r.group, r.detail = out["status"], out.get("group", ""), out.get("detail", "")
            r.summary = out.get("summary", "")
            r.seconds = out.get("seconds", time.perf_counter() - t0)
        now = time.perf_counter()
        for conn, (r, proc, t0) in list(live.items()):
            if now - t0 > timeout:
                proc.kill()
                proc.join(5)
                conn.close()
                del live[conn]
                r.status, r.seconds, r.detail = "timeout", now - t0, f"killed after {timeout:g} s"


# -- report ----------------------------------------------------------------------------------------------------


def examples(qs: list[Query], k: int = 2) -> str:
    return ", ".join(q.filename for q in qs[:k]) + (", ..." if len(qs) > k else "")


def report_check(
    queries: list[Query], crashes: list[Crash], args: argparse.Namespace, prefix: str = ""
) -> tuple[list[Query], list[tuple[str, list[Query]]], dict[str, list[Query]]]:
    """Print the failure groups, the crashes and (``--features``) the feature census of one set of queries."""
    failed = [q for q in queries if not q.ok and q.group is not None and not q.group.startswith("crash ")]
    groups: dict[str, list[Query]] = defaultdict(list)
    for q in failed:
        groups[q.group or "?"].append(q)
    ranked = sorted(groups.items(), key=lambda kv: (-len(kv[1]), kv[0]))
    print(
        f"\n## {prefix}failures: {len(failed)} queries in {len(ranked)} groups (error class: first message line)"
    )
    if ranked:
        print(table(["n", "message", "e.g."], [(len(v), k, examples(v)) for k, v in ranked], align="rll"))
    if args.verbose:
        for q in failed:
            print(f"\n--- {q.filename} ({q.origin})\n{q.rendered}")

    crash_groups: dict[str, list[Crash]] = defaultdict(list)
    for c in crashes:
        crash_groups[c.key].append(c)
    print(
        f"\n## {prefix}crashes (not an lmqc.LmqcError: bugs in lmqc): {len(crashes)} in {len(crash_groups)} groups"
    )
    for key, cs in sorted(crash_groups.items(), key=lambda kv: -len(kv[1])):
        print(
            f"  {len(cs):>3}  {key}\n       e.g. {examples([c.query for c in cs])}\n       tb: {cs[0].summary}"
        )
    if args.verbose:
        for c in crashes:
            print(f"\n--- crash {c.query.filename} ({c.query.origin})\n{c.full}")

    feature_hits: dict[str, list[Query]] = defaultdict(list)
    for q in queries:
        for f in features(q.text):
            feature_hits[f].append(q)
    if args.features:
        print(
            f"\n## {prefix}LMQL features in the {len(queries)} query texts"
            " (heuristic regex census; queries using each)"
        )
        rows = sorted(feature_hits.items(), key=lambda kv: (-len(kv[1]), kv[0]))
        print(
            table(
                ["feature", "queries", "lmqc ok", "e.g."],
                [(f, len(qs), sum(q.ok for q in qs), examples(qs, 1)) for f, qs in rows],
                align="lrrl",
            )
        )
    return failed, ranked, feature_hits


def _uses(runs: list[Run]) -> str:
    c = Counter(u for r in runs for u in r.uses)
    return ", ".join(f"{u} {n}" for u, n in sorted(c.items())) or "-"


def report_run(title: str, runs: list[Run], args: argparse.Namespace, seconds: float) -> dict[str, Any]:
    """Print the outcomes of running one set of checked queries; return them for the JSON file."""
    by = {s: [r for r in runs if r.status == s] for s in ("ok", "error", "crash", "timeout", "needs inputs")}
    decoder = f"decoder=argmax(max_len={args.max_len}) where the query has no decoder clause"
    print(
        f"\n## {title} run on {TINY}: {len(runs)} checked queries, {len(runs) - len(by['needs inputs'])} run"
        f" ({args.jobs} workers, {args.timeout:g} s limit each, "
        f"{decoder if args.max_len is not None else 'no decoder override'}; {seconds:.1f} s)"
    )
    print(
        table(
            ["outcome", "queries", "uses input()/network/other model", "e.g."],
            [(s, len(rs), _uses(rs), examples([r.query for r in rs])) for s, rs in by.items()],
            align="lrll",
        )
    )
    out: dict[str, Any] = {"counts": {s: len(rs) for s, rs in by.items()}, "seconds": seconds}
    for status, label in (
        ("error", "errors (lmqc.LmqcError)"),
        ("crash", "crashes (not an LmqcError: bugs in lmqc)"),
    ):
        groups: dict[str, list[Run]] = defaultdict(list)
        for r in by[status]:
            groups[r.group or "?"].append(r)
        ranked = sorted(groups.items(), key=lambda kv: (-len(kv[1]), kv[0]))
        print(f"\n## {title} run {label}: {len(by[status])} queries in {len(ranked)} groups")
        if ranked:
            rows = [(len(v), k, _uses(v), examples([r.query for r in v])) for k, v in ranked]
            print(table(["n", "message", "uses", "e.g."], rows, align="rlll"))
            if status == "crash":
                for _, v in ranked:
                    print(f"  tb of {examples([v[0].query], 1)}: {v[0].summary or '-'}")
        out[f"{status}_groups"] = [
            {"message": k, "count": len(v), "locs": [r.query.filename for r in v]} for k, v in ranked
        ]
        if args.verbose:
            for r in by[status]:
                print(f"\n--- {status} {r.query.filename} ({r.query.origin}; inputs {r.inputs})\n{r.detail}")
    print(f"\n## {title} run: needs inputs no dummy stands for: {len(by['needs inputs'])} queries")
    for r in by["needs inputs"]:
        print(f"  {r.query.filename}  ({r.query.origin})  {r.detail}")
    if by["timeout"]:
        print(f"\n## {title} run: timeouts: {len(by['timeout'])} queries")
        for r in by["timeout"]:
            print(f"  {r.query.filename}  ({r.query.origin})  inputs {r.inputs}")
    if args.list:
        print(f"\n## {title} runs")
        for r in runs:
            extra = r.group if r.status in ("error", "crash") else r.detail if r.status == "ok" else ""
            print(f"  {r.query.filename}  {r.status}  {r.seconds:.2f}s  inputs {r.inputs}  {extra}")
    out["runs"] = [
        {
            "loc": r.query.filename,
            "origin": r.query.origin,
            "status": r.status,
            "group": r.group or None,
            "inputs": {k: type(v).__name__ for k, v in r.inputs.items()},
            "decoder": r.decoder,
            "uses": list(r.uses),
            "seconds": round(r.seconds, 3),
            # no LMQL text: neither outputs (they hold the prompt) nor rendered errors (they quote the source)
            **({"why": r.detail} if r.status in ("needs inputs", "timeout") else {}),
            **({"traceback": r.summary} if r.status == "crash" else {}),
        }
        for r in runs
    ]
    return out


def run_summary(title: str, runs: list[Run]) -> str:
    c = Counter(r.status for r in runs)
    return (
        f"{title} run: {c['ok']} of {len(runs)} checked queries ran (errors {c['error']}, crashes {c['crash']}, "
        f"timeouts {c['timeout']}, needs inputs {c['needs inputs']})"
    )


def _item_json(it: Item, with_features: bool = True) -> dict[str, Any]:
    return {
        "loc": it.block.loc(),
        "file": it.block.file,
        "line": it.block.line,
        "cell": it.block.cell,
        "info": it.block.info,
        "kind": it.kind,
        "why": it.why,
        "queries": [
            {
                "loc": q.filename,
                "origin": q.origin,
                "ok": q.ok,
                "group": q.group,
                **({"features": sorted(features(q.text))} if with_features else {}),
            }
            for q in it.queries
        ],
    }


def main(argv: list[str] | None = None) -> int:
    doc = __doc__ or ""
    ap = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    ap.add_argument("--lmql", type=Path, default=DEFAULT_GITDIR, metavar="GITDIR", help="LMQL git directory")
    ap.add_argument("--rev", default="HEAD", help="revision of LMQL to read (default HEAD)")
    ap.add_argument("--verbose", action="store_true", help="print every failure with its full rendered error")
    ap.add_argument("--list", action="store_true", help="print every block's classification and result")
    ap.add_argument("--features", action="store_true", help="print LMQL feature counts over the query texts")
    ap.add_argument("--tests", action="store_true", help=f"also check the queries of LMQL's {TEST_DIR}")
    ap.add_argument("--optional", action="store_true", help="with --tests: include tests/optional/ too")
    ap.add_argument("--run", action="store_true", help=f"run every query that checked on {TINY}")
    ap.add_argument("--timeout", type=float, default=20.0, help="--run: seconds per query (default 20)")
    ap.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="--run: parallel workers")
    ap.add_argument(
        "--max-len",
        type=int,
        default=None,
        metavar="N",
        help="--run: pass decoder=argmax(max_len=N) to queries without a decoder clause (default: none)",
    )
    ap.add_argument(
        "--json",
        type=Path,
        nargs="?",
        const=RESULTS / "lmql_docs.json",
        default=None,
        metavar="PATH",
        help="write a machine-readable summary (default path benchmarks/results/lmql_docs.json)",
    )
    args = ap.parse_args(argv)

    machine = header("lmqc check on the lmql blocks of LMQL's documentation")
    commit = git(args.lmql, "rev-parse", args.rev).strip()
    date = git(args.lmql, "log", "-1", "--format=%cs", commit).strip()
    files = doc_files(args.lmql, commit)
    print(
        f"# LMQL: {args.lmql} @ {commit[:12]} ({date}); {len(files)} .md/.ipynb files under {', '.join(DOC_DIRS)}"
    )

    blocks = read_blocks(args.lmql, commit, files)
    items = [classify(b) for b in blocks]
    queries = [q for it in items for q in it.queries]
    fragments = [it for it in items if it.kind == "fragment"]
    crashes = check_all(queries)
    ok = [q for q in queries if q.ok]

    print("\n## classification (first matching rule wins)")
    for i, (kind, rule) in enumerate(RULES, 1):
        n = sum(1 for it in items if it.why == rule)
        print(f"  {i}. {kind:<8} {n:>3} blocks  {rule}")
    py_q = sum(len(it.queries) for it in items if it.kind == "python")
    print(
        f"  ({py_q} queries taken from {sum(1 for it in items if it.kind == 'python')} python-with-query blocks)"
    )

    if args.list:
        print("\n## blocks")
        for it in items:
            b = it.block
            head = f"{b.loc()}  [{b.info}]  {it.kind}"
            if it.kind == "fragment":
                print(f"{head}: {it.why}")
                continue
            print(head)
            for q in it.queries:
                res = "ok" if q.ok else (q.group or "?")
                print(f"    {q.filename}  ({q.origin}, {q.text.count(chr(10))} lines)  {res}")

    failed, ranked, feature_hits = report_check(queries, crashes, args)
    summaries = [
        f"lmql docs: {len(items)} blocks, {len(queries)} queries, {len(fragments)} fragments; "
        f"lmqc check ok on {len(ok)} of {len(queries)} (crashes {len(crashes)})"
    ]

    tests: dict[str, Any] | None = None
    test_ok: list[Query] = []
    if args.tests:
        t_files = test_files(args.lmql, commit, args.optional)
        t_items, unreadable = read_tests(args.lmql, commit, t_files)
        t_queries = [q for it in t_items for q in it.queries]
        t_crashes = check_all(t_queries)
        test_ok = [q for q in t_queries if q.ok]
        where = f"{TEST_DIR}/**/*.py" + ("" if args.optional else f" without {TEST_DIR}/optional/")
        print(
            f"\n# LMQL tests: {len(t_files)} .py files under {where}; {len(t_items)} embed queries"
            + (f"; not Python (skipped): {', '.join(unreadable)}" if unreadable else "")
        )
        origins = Counter(re.sub(r"^docstring of .*", "@lmql.query docstring", q.origin) for q in t_queries)
        print("\n## tests: queries by origin")
        for origin, n in origins.most_common():
            print(f"  {n:>3}  {origin}")
        if args.list:
            print("\n## tests: modules")
            for it in t_items:
                print(f"{it.block.file}")
                for q in it.queries:
                    res = "ok" if q.ok else (q.group or "?")
                    print(f"    {q.filename}  ({q.origin}, {q.text.count(chr(10))} lines)  {res}")
        t_failed, t_ranked, t_hits = report_check(t_queries, t_crashes, args, "tests: ")
        summaries.append(
            f"lmql tests: {len(t_items)} files, {len(t_queries)} queries, 0 fragments; "
            f"lmqc check ok on {len(test_ok)} of {len(t_queries)} (crashes {len(t_crashes)})"
        )
        tests = {
            "dir": TEST_DIR,
            "optional": args.optional,
            "files": t_files,
            "unreadable": unreadable,
            "counts": {
                "files": len(t_files),
                "files_with_queries": len(t_items),
                "queries": len(t_queries),
                "ok": len(test_ok),
                "failed": len(t_failed),
                "crashes": len(t_crashes),
            },
            "modules": [_item_json(it) for it in t_items],
            "failure_groups": [
                {"message": k, "count": len(v), "locs": [q.filename for q in v]} for k, v in t_ranked
            ],
            "crashes": [{"loc": c.query.filename, "key": c.key, "traceback": c.summary} for c in t_crashes],
            "features": {f: [q.filename for q in qs] for f, qs in sorted(t_hits.items())},
        }

    run_json: dict[str, Any] | None = None
    if args.run:
        run_json = {"model": TINY, "timeout": args.timeout, "jobs": args.jobs, "max_len": args.max_len}
        sets = [("lmql docs", "docs", ok)] + ([("lmql tests", "tests", test_ok)] if args.tests else [])
        for title, key, checked in sets:
            runs = prepare_runs(checked, args.max_len)
            t0 = time.perf_counter()
            run_all(runs, args.timeout, max(1, args.jobs))
            run_json[key] = report_run(title, runs, args, time.perf_counter() - t0)
            summaries.append(run_summary(title, runs))

    if args.json is not None:
        payload: dict[str, Any] = {
            "machine": machine,
            "lmql": {"gitdir": str(args.lmql), "commit": commit, "date": date, "dirs": list(DOC_DIRS)},
            "counts": {
                "blocks": len(items),
                "queries": len(queries),
                "fragments": len(fragments),
                "ok": len(ok),
                "failed": len(failed),
                "crashes": len(crashes),
            },
            "rules": [
                {"kind": k, "rule": r, "blocks": sum(1 for it in items if it.why == r)} for k, r in RULES
            ],
            "blocks": [_item_json(it) for it in items],
            "failure_groups": [
                {"message": k, "count": len(v), "locs": [q.filename for q in v]} for k, v in ranked
            ],
            "crashes": [{"loc": c.query.filename, "key": c.key, "traceback": c.summary} for c in crashes],
            "features": {f: [q.filename for q in qs] for f, qs in sorted(feature_hits.items())},
        }
        if tests is not None:
            payload["tests"] = tests
        if run_json is not None:
            payload["run"] = run_json
        write_json(args.json, "lmql_docs.json", payload)

    print()
    for line in summaries:
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
