"""The error hierarchy: one base, one subclass per stage.

Errors that point into query source (syntax, types, constraints) carry the file name, 1-based line and column,
and render like a compiler's diagnostic::

    hello.lmql:3:11: unknown variable 'RESPONS' in where clause
        where len(RESPONS) < 10
                  ^
"""

from __future__ import annotations

from typing import Any


class LmqcError(Exception):
    """Base of every error lmqc raises on purpose."""


class LmqcWarning(UserWarning):
    """Base of lmqc's warnings."""


class SchemaApproximationWarning(LmqcWarning):
    """A JSON schema (or Python type) was compiled with approximations: some valid values cannot be written
    (recursion unrolled, a ``oneOf`` branch left out ...) or a keyword is an annotation lmqc does not check (an
    unknown ``format``); the message lists them."""


class SourceError(LmqcError):
    """An error located in query source: ``file:line:col: message`` plus the line and a caret."""

    def __init__(
        self,
        message: str,
        *,
        source: str | None = None,
        filename: str = "<query>",
        line: int | None = None,
        column: int | None = None,
    ) -> None:
        self.message = message
        self.source = source
        self.filename = filename
        self.line = line
        self.column = column
        super().__init__(self.render())

    def __str__(self) -> str:
        # QuerySyntaxError is also a SyntaxError, whose own __str__ would append "(file, line N)"
        return self.render()

    def get_context(self) -> str:
        """The offending source line and a caret under the column (empty if unknown)."""
        if self.source is None or self.line is None:
            return ""
        lines = self.source.splitlines()
        if not 1 <= self.line <= len(lines):
            return ""
        text = lines[self.line - 1].expandtabs(1)
        col = max(1, self.column or 1)
        return f"    {text}\n    {' ' * (col - 1)}^"

    def render(self) -> str:
        where = self.filename
        if self.line is not None:
            where += f":{self.line}"
            if self.column is not None:
                where += f":{self.column}"
        head = f"{where}: {self.message}"
        ctx = self.get_context()
        return f"{head}\n{ctx}" if ctx else head

    def with_file(self, filename: str, source: str | None = None) -> SourceError:
        """Re-point the error at a named file (the CLI knows the path; the parser may not)."""
        self.filename = filename
        if source is not None:
            self.source = source
        self.args = (self.render(),)
        return self


class QuerySyntaxError(SourceError, SyntaxError):
    """The query does not parse. Also a ``SyntaxError``, as Python users expect (``lineno``/``offset`` set)."""

    def __init__(self, message: str, **kwargs: Any) -> None:
        super().__init__(message, **kwargs)
        self.msg = message
        self.lineno = self.line
        self.offset = self.column
        lines = (self.source or "").splitlines()
        self.text = lines[self.line - 1] if self.line is not None and 0 < self.line <= len(lines) else None


class QueryTypeError(SourceError, TypeError):
    """The query parses but is ill-formed: unknown variable, wrong arity, bad decoder argument, missing input ...
    Also a ``TypeError``, as Python users expect."""


class ConstraintError(SourceError):
    """A constraint cannot be compiled: unsupported regex feature, empty language, inexpressible in tokens."""


class VocabularyError(LmqcError):
    """A vocabulary cannot be built or does not match."""


class ArtifactError(LmqcError):
    """A compiled artifact is corrupt, truncated, or made for another vocabulary or format version."""


class ModelError(LmqcError):
    """A model cannot be resolved or loaded here."""


class DecodeError(LmqcError):
    """Decoding failed at run time."""


class MaxLenError(DecodeError):
    """``max_len`` was reached before every hole was filled; ``partial`` keeps what was generated."""

    def __init__(self, message: str, partial: Any = None) -> None:
        super().__init__(message)
        self.partial = partial


class ServeError(LmqcError):
    """Two-process mode (``lmqc serve``): the server cannot be reached, refused a request, or broke the protocol."""


class ServeTimeoutError(ServeError, TimeoutError):
    """``lmqc serve`` did not accept the connection or answer in time (the client's connect / read timeouts).
    Also a ``TimeoutError``."""
