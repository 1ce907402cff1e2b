"""lmqc: LMQL queries compiled ahead of time into token automata, run on local llama.cpp models."""

from __future__ import annotations

from .errors import (
    ArtifactError,
    ConstraintError,
    DecodeError,
    LmqcError,
    MaxLenError,
    ModelError,
    QuerySyntaxError,
    QueryTypeError,
    SourceError,
    VocabularyError,
)

__version__ = "0.1.0"

from . import decorators  # noqa: E402 - LMQL code refers to lmql.decorators.pre / .streaming
from .api import compile, load, model, parse, query, run, vocabulary  # noqa: E402,A004

__all__ = [
    "ArtifactError",
    "ConstraintError",
    "DecodeError",
    "LmqcError",
    "MaxLenError",
    "ModelError",
    "QuerySyntaxError",
    "QueryTypeError",
    "SourceError",
    "VocabularyError",
    "__version__",
    "compile",
    "decorators",
    "load",
    "model",
    "parse",
    "query",
    "run",
    "vocabulary",
]
