"""How many of LMQL's own documented queries does ``lmqc check`` accept?

    .venv/bin/python benchmarks/lmql_docs.py [--lmql GITDIR] [--rev REV] [--list] [--verbose] [--features]
                                             [--json [PATH]]

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
  bound to a string literal in the same cell). ``lmql.F("...")`` is not taken: it is one prompt statement
  without its quotes, not query syntax. Other code cells are not blocks at all.

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
   string value (dedented);
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
"""

from __future__ import annotations

import argparse
import ast
import json
import re
import subprocess
import sys
import textwrap
import traceback
from collections import Counter, defaultdict
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


def embedded_queries(tree: ast.Module, text: str) -> list[tuple[str, int, str]]:
    """(query text, line before its first line, origin) for each query a Python block embeds."""
    found: list[tuple[str, int, str]] = []
    strings = {  # names bound to a string literal at top level
        t.id: s.value.value
        for s in tree.body
        if isinstance(s, ast.Assign) and isinstance(s.value, ast.Constant) and isinstance(s.value.value, str)
        for t in s.targets
        if isinstance(t, ast.Name)
    }
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            if not any(_is_query_decorator(d) for d in node.decorator_list):
                continue
            doc = node.body[0] if node.body else None
            if not (isinstance(doc, ast.Expr) and isinstance(doc.value, ast.Constant)):
                continue
            if not isinstance(doc.value.value, str):
                continue
            seg = ast.get_source_segment(text, doc.value) or ""
            m = re.match(r"[rRuU]?('''|\"\"\"|'|\")", seg)
            if not m:
                continue
            inner = seg[m.end() : len(seg) - len(m.group(1))]
            first, sep, rest = inner.partition("\n")
            if sep and first.strip() in ("", "lmql"):
                body, before = textwrap.dedent(rest), doc.value.lineno
            else:
                body, before = textwrap.dedent(inner), doc.value.lineno - 1
            found.append(_trimmed(body, before, f"docstring of {node.name}"))
        elif (
            isinstance(node, ast.Call)
            and _is_lmql_attr(node.func, ("run", "run_sync", "query"))
            and node.args
        ):
            arg = node.args[0]
            if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
                value, line = arg.value, arg.lineno - 1
            elif isinstance(arg, ast.Name) and arg.id in strings:
                value, line = (
                    strings[arg.id],
                    next(
                        s.lineno - 1
                        for s in tree.body
                        if isinstance(s, ast.Assign)
                        and any(isinstance(t, ast.Name) and t.id == arg.id for t in s.targets)
                    ),
                )
            else:
                continue
            assert isinstance(node.func, ast.Attribute)
            found.append(_trimmed(textwrap.dedent(value), line, f"lmql.{node.func.attr} argument"))
    return found


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
            for q_text, before, origin in embedded:
                item.queries.append(Query(block, q_text, block.body_line + before, origin))
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


# -- report ----------------------------------------------------------------------------------------------------


def examples(qs: list[Query], k: int = 2) -> str:
    return ", ".join(q.filename for q in qs[:k]) + (", ..." if len(qs) > k else "")


def main(argv: list[str] | None = None) -> int:
    doc = __doc__ or ""
    ap = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    ap.add_argument("--lmql", type=Path, default=DEFAULT_GITDIR, metavar="GITDIR", help="LMQL git directory")
    ap.add_argument("--rev", default="HEAD", help="revision of LMQL to read (default HEAD)")
    ap.add_argument("--verbose", action="store_true", help="print every failure with its full rendered error")
    ap.add_argument("--list", action="store_true", help="print every block's classification and result")
    ap.add_argument("--features", action="store_true", help="print LMQL feature counts over the query texts")
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
    failed = [q for q in queries if not q.ok and q.group is not None and not q.group.startswith("crash ")]

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

    groups: dict[str, list[Query]] = defaultdict(list)
    for q in failed:
        groups[q.group or "?"].append(q)
    ranked = sorted(groups.items(), key=lambda kv: (-len(kv[1]), kv[0]))
    print(f"\n## failures: {len(failed)} queries in {len(ranked)} groups (error class: first message line)")
    if ranked:
        print(table(["n", "message", "e.g."], [(len(v), k, examples(v)) for k, v in ranked], align="rll"))
    if args.verbose:
        for q in failed:
            print(f"\n--- {q.filename} ({q.origin})\n{q.rendered}")

    crash_groups: dict[str, list[Crash]] = defaultdict(list)
    for c in crashes:
        crash_groups[c.key].append(c)
    print(f"\n## crashes (not an lmqc.LmqcError: bugs in lmqc): {len(crashes)} in {len(crash_groups)} groups")
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
            f"\n## LMQL features in the {len(queries)} query texts (heuristic regex census; queries using each)"
        )
        rows = sorted(feature_hits.items(), key=lambda kv: (-len(kv[1]), kv[0]))
        print(
            table(
                ["feature", "queries", "lmqc ok", "e.g."],
                [(f, len(qs), sum(q.ok for q in qs), examples(qs, 1)) for f, qs in rows],
                align="lrrl",
            )
        )

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
            "blocks": [
                {
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
                            "features": sorted(features(q.text)),
                        }
                        for q in it.queries
                    ],
                }
                for it in items
            ],
            "failure_groups": [
                {"message": k, "count": len(v), "locs": [q.filename for q in v]} for k, v in ranked
            ],
            "crashes": [{"loc": c.query.filename, "key": c.key, "traceback": c.summary} for c in crashes],
            "features": {f: [q.filename for q in qs] for f, qs in sorted(feature_hits.items())},
        }
        write_json(args.json, "lmql_docs.json", payload)

    print(
        f"\nlmql docs: {len(items)} blocks, {len(queries)} queries, {len(fragments)} fragments; "
        f"lmqc check ok on {len(ok)} of {len(queries)} (crashes {len(crashes)})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
