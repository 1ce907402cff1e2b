"""The ``lmqc`` command line: one function per subcommand plus one ``_add_<name>`` registration function each.

Every subcommand runs inside ``_guarded``, which turns lmqc's own errors (and unreadable files) into a
rendered message on stderr and exit status 1 — never a traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from .errors import LmqcError, SourceError

Command = Callable[[argparse.Namespace], int]


class _UserError(Exception):
    """A problem with the command line or the files it names, reported as one line."""


def _read_query(path: str) -> str:
    try:
        return Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise _UserError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise _UserError(f"{path}: is a directory, not a query file") from None
    except UnicodeDecodeError as e:
        raise _UserError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    except OSError as e:
        raise _UserError(f"{path}: cannot read ({e.strerror or e})") from None


def _parse_file(path: str):  # noqa: ANN202 - returns lmqc.compiler.nodes.Query (imported lazily)
    from .compiler.parser import parse

    source = _read_query(path)
    try:
        return parse(source, filename=path)
    except SourceError as e:
        raise e.with_file(path, source) from None


# --------------------------------------------------------------------------------------------------------------
# check


def _check_languages(query) -> None:  # noqa: ANN001 - lmqc.compiler.nodes.Query
    """Lower every hole to its byte DFA (no vocabulary needed): unsupported regex features and empty languages
    are reported by ``check`` already, not only at compile time."""
    from .compiler.bytedfa import ByteDFA
    from .compiler.checker import hole_constraints
    from .compiler.lower import is_dynamic, lower_hole

    names = {h.index: h.name for h in query.holes()}
    try:
        for index, constraint in hole_constraints(query).items():
            if is_dynamic(constraint):
                continue  # its Python arguments are known only when the hole starts
            ir = lower_hole(names[index], constraint, source=query.source, filename=query.filename)
            ByteDFA.from_ir(ir, source=query.source, filename=query.filename)
    except SourceError as e:
        raise e.with_file(query.filename, query.source) from None


def cmd_check(args: argparse.Namespace) -> int:
    from .compiler.checker import format_query, query_to_json

    query = _parse_file(args.query)
    _check_languages(query)
    if args.json:
        print(json.dumps(query_to_json(query), indent=2, ensure_ascii=False))
    else:
        sys.stdout.write(format_query(query))
    return 0


def _add_check(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "check",
        help="parse and type-check a query",
        description="Parse and type-check a query without loading a model; print its checked form.",
    )
    p.add_argument("query", metavar="QUERY.lmql", help="the query file")
    p.add_argument("--json", action="store_true", help="print a JSON summary instead of the readable form")
    p.set_defaults(func=cmd_check)


# --------------------------------------------------------------------------------------------------------------
# run


def _inputs(pairs: Sequence[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name.isidentifier():
            raise _UserError(f"--input expects NAME=VALUE, got {pair!r}")
        out[name] = value
    return out


def _highlight(result, color: bool) -> str:  # noqa: ANN001 - lmqc.runtime.query.LMQLResult
    if not color:
        return result.prompt
    out, pos = [], 0
    for start, end, _name in sorted(result.spans):
        out.append(result.prompt[pos:start])
        out.append(f"\x1b[1;32m{result.prompt[start:end]}\x1b[0m")
        pos = end
    out.append(result.prompt[pos:])
    return "".join(out)


def cmd_run(args: argparse.Namespace) -> int:
    from . import api
    from .compiler.artifact import CompiledQuery
    from .errors import MaxLenError

    inputs = _inputs(args.input)
    endpoint = getattr(args, "endpoint", None)
    target: str | CompiledQuery
    if args.query.endswith(".lmqc"):
        target = api.load(args.query)
    else:
        source = _read_query(args.query)
        try:
            target = api.compile(source, args.model, filename=args.query, endpoint=endpoint)
        except SourceError as e:
            raise e.with_file(args.query, source) from None
    try:
        res = api.run(target, args.model, decoder=args.decoder, endpoint=endpoint, **inputs)
    except MaxLenError as e:
        if e.partial is not None:
            _print_results([e.partial], args)
        raise
    _print_results(res if isinstance(res, list) else [res], args)
    return 0


def _print_results(results: list, args: argparse.Namespace) -> None:
    if args.json:
        for r in results:
            print(json.dumps(r.to_json(), ensure_ascii=False, default=_plain))
        return
    color = sys.stdout.isatty()
    for k, r in enumerate(results):
        if len(results) > 1:
            score = "" if r.logprob != r.logprob else f" (logprob {r.logprob:.3f})"  # NaN: not scored
            print(f"--- result {k + 1} of {len(results)}{score}")
        print(_highlight(r, color))
        if r.distribution is not None:
            for option, p in r.distribution.items():
                print(f"  P({option!r}) = {p:.4f}")


def _add_run(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "run",
        help="run a query (or a compiled .lmqc artifact) on a local model",
        description="Run a query on a local llama.cpp model and print the prompt with its holes filled.",
    )
    p.add_argument("query", metavar="QUERY.lmql", help="the query file, or an artifact from `lmqc compile`")
    p.add_argument("--model", help="model spec; overrides the query's `from` clause (default: gemma-3-270m)")
    p.add_argument("--decoder", help='decoder clause, e.g. "beam(n=3)" or "sample(n=2, temperature=0.8)"')
    p.add_argument(
        "--input", action="append", default=[], metavar="NAME=VALUE", help="a query input (repeatable)"
    )
    p.add_argument("--json", action="store_true", help='one JSON object per result: {"prompt", "variables", "distribution"}')
    p.add_argument(
        "--endpoint", metavar="HOST:PORT", help="run against the model of an `lmqc serve` process instead of loading one"
    )
    p.set_defaults(func=cmd_run)


# --------------------------------------------------------------------------------------------------------------
# serve


def cmd_serve(args: argparse.Namespace) -> int:
    from .runtime.server import serve

    serve(
        args.model, host=args.host, port=args.port, max_batch=args.max_batch, max_len=args.max_len, n_ctx=args.n_ctx,
        merge=not args.no_merge,
    )
    return 0


def _bounded_int(low: int, high: int | None = None) -> Callable[[str], int]:
    """An argparse type: an integer in ``[low, high]`` (argparse reports anything else as a usage error)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < low or (high is not None and value > high):
            span = f"between {low} and {high}" if high is not None else f"at least {low}"
            raise argparse.ArgumentTypeError(f"must be {span}, got {value}")
        return value

    return parse


def _add_serve(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "serve",
        help="hold a model in one process and serve queries to short-lived clients",
        description=(
            "Load a model once and decode holes for clients (`lmqc run --endpoint HOST:PORT`, "
            "lmqc.run(..., endpoint=...), or `from \"lmqc://HOST:PORT\"`). JSON protocol over HTTP; "
            "needs the 'serve' extra (pip install 'lmqc[serve]')."
        ),
    )
    p.add_argument("--model", default="gemma-3-270m", help="model spec to load (default: gemma-3-270m)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1, loopback only)")
    p.add_argument("--port", type=_bounded_int(0, 65535), default=8080, help="port (default: 8080)")
    p.add_argument(
        "--max-batch", type=_bounded_int(1), default=16, metavar="N",
        help="most branches decoded together, across requests (default: 16); larger requests get 413",
    )
    p.add_argument("--max-len", type=_bounded_int(1), default=None, metavar="N", help="refuse requests with a larger max_len (422)")
    p.add_argument("--n-ctx", type=_bounded_int(1), default=None, metavar="N", help="KV-cache cells shared by all sequences")
    p.add_argument(
        "--no-merge", action="store_true",
        help="decode every request alone (results bit-identical to in-process; no cross-client batching)",
    )
    p.set_defaults(func=cmd_serve)


# --------------------------------------------------------------------------------------------------------------
# compile and inspect


def cmd_compile(args: argparse.Namespace) -> int:
    import time

    from . import api

    source = _read_query(args.query)
    t0 = time.perf_counter()
    try:
        compiled = api.compile(source, args.model, filename=args.query, cache=False)
    except SourceError as e:
        raise e.with_file(args.query, source) from None
    out = Path(args.output or Path(args.query).with_suffix(".lmqc"))
    try:
        compiled.save(out)
    except OSError as e:
        raise _UserError(f"{out}: cannot write ({e.strerror or e})") from None
    ms = (time.perf_counter() - t0) * 1000
    print(f"{out}: {len(compiled.automata)} hole(s), {compiled.nbytes() / 1e6:.2f} MB of tables, {ms:.0f} ms")
    return 0


def _add_compile(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "compile",
        help="compile a query's constraints for a model's vocabulary into an artifact",
        description="Compile a query into a .lmqc artifact (token automata for one model's vocabulary).",
    )
    p.add_argument("query", metavar="QUERY.lmql", help="the query file")
    p.add_argument("--model", help="model spec whose vocabulary to compile for (default: the query's, else gemma-3-270m)")
    p.add_argument("-o", "--output", metavar="OUT.lmqc", help="artifact path (default: QUERY.lmqc)")
    p.set_defaults(func=cmd_compile)


def cmd_inspect(args: argparse.Namespace) -> int:
    from .compiler.artifact import load

    compiled = load(args.artifact)
    header = compiled.header()
    info = {
        "artifact": args.artifact,
        "source": compiled.query.filename,
        "lmqc_version": header["lmqc_version"],
        "format_version": header["format_version"],
        "model": compiled.model,
        "vocab_fingerprint": compiled.vocab_fingerprint,
        "vocab_size": compiled.vocab_size,
        "holes": {},
    }
    for var, automaton in compiled.automata.items():
        sizes = [automaton.mask_size(m) for m in range(automaton.n_masks)] if not automaton.unconstrained else []
        info["holes"][var] = {
            "ir": str(compiled.holes[var]).splitlines()[1:],
            "unconstrained": automaton.unconstrained,
            "states": automaton.n_states,
            "masks": automaton.n_masks,
            "allowed_tokens": {"min": min(sizes), "max": max(sizes)} if sizes else None,
            "table_bytes": automaton.nbytes,
        }
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    print(f"{args.artifact}: query {info['source']}, lmqc {info['lmqc_version']}, format {info['format_version']}")
    print(f"  vocabulary: {info['vocab_size']} tokens, fingerprint {info['vocab_fingerprint'][:16]}")
    for var, h in info["holes"].items():
        if h["unconstrained"]:
            print(f"  hole {var}: unconstrained")
        else:
            a = h["allowed_tokens"]
            print(
                f"  hole {var}: {h['states']} states, {h['masks']} distinct masks, "
                f"{a['min']}..{a['max']} allowed tokens per state, {h['table_bytes'] / 1e6:.2f} MB"
            )
        for line in h["ir"]:
            print(f"    {line.strip()}")
    return 0


def _add_inspect(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "inspect",
        help="describe a compiled artifact",
        description="Describe a .lmqc artifact: holes, states, distinct masks, allowed-token counts, table sizes.",
    )
    p.add_argument("artifact", metavar="OUT.lmqc")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_inspect)


# --------------------------------------------------------------------------------------------------------------
# plumbing

_REGISTRATIONS: tuple[Callable[[argparse._SubParsersAction], None], ...] = (
    _add_check, _add_run, _add_compile, _add_inspect, _add_serve
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lmqc", description="LMQL queries compiled ahead of time into token automata, run on llama.cpp."
    )
    from . import __version__

    parser.add_argument("--version", action="version", version=f"lmqc {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    subparsers.required = True
    for register in _REGISTRATIONS:
        register(subparsers)
    return parser


def _guarded(func: Command, args: argparse.Namespace) -> int:
    try:
        return func(args)
    except LmqcError as e:
        print(str(e), file=sys.stderr)
        return 1
    except _UserError as e:
        print(f"lmqc: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("lmqc: interrupted", file=sys.stderr)
        return 130


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    import warnings

    from .errors import LmqcWarning

    default_show = warnings.showwarning

    def show(message, category, filename, lineno, file=None, line=None):  # noqa: ANN001, ANN202
        if issubclass(category, LmqcWarning):  # a diagnostic line, not Python's source excerpt
            print(f"lmqc: warning: {message}", file=sys.stderr)
        else:
            default_show(message, category, filename, lineno, file, line)

    warnings.showwarning = show
    try:
        return _guarded(args.func, args)
    finally:
        warnings.showwarning = default_show


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())


def _plain(value: Any) -> Any:
    """JSON for the values typed holes return (dataclasses, Pydantic models, enums, sets, dates)."""
    import dataclasses
    import enum

    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    if hasattr(value, "model_dump"):
        return value.model_dump(mode="json")
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, set | frozenset | tuple):
        return list(value)
    if hasattr(value, "isoformat"):
        return value.isoformat()
    return str(value)
