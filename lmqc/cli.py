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


def cmd_check(args: argparse.Namespace) -> int:
    from .compiler.checker import format_query, query_to_json

    query = _parse_file(args.query)
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
# plumbing

_REGISTRATIONS: tuple[Callable[[argparse._SubParsersAction], None], ...] = (_add_check,)


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
    return _guarded(args.func, args)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
