"""lmqc: LMQL queries compiled ahead of time into token automata, run on local llama.cpp models."""

from __future__ import annotations

from .errors import (
    ArtifactError,
    ConstraintError,
    DecodeError,
    LmqcError,
    LmqcWarning,
    MaxLenError,
    ModelError,
    QuerySyntaxError,
    QueryTypeError,
    SchemaApproximationWarning,
    SourceError,
    VocabularyError,
)

__version__ = "0.1.0"

from . import decorators  # noqa: E402 - LMQL code refers to lmql.decorators.pre / .streaming
from .api import (  # noqa: E402
    F,
    QueryFunction,
    ScoringResult,
    compile,  # noqa: A004
    default_model,
    generate,
    generate_sync,
    load,
    model,
    parse,
    query,
    run,
    run_async,
    score,
    score_sync,
    set_default_model,
    stream,
    vocabulary,
)
from .builder import QueryBuilder  # noqa: E402
from .streaming import headless, printing, silent  # noqa: E402 - LMQL's output writers

__all__ = [
    "F",
    "QueryBuilder",
    "QueryFunction",
    "ScoringResult",
    "ArtifactError",
    "ConstraintError",
    "DecodeError",
    "LmqcError",
    "LmqcWarning",
    "MaxLenError",
    "ModelError",
    "QuerySyntaxError",
    "QueryTypeError",
    "SchemaApproximationWarning",
    "SourceError",
    "VocabularyError",
    "__version__",
    "compile",
    "default_model",
    "generate",
    "generate_sync",
    "decorators",
    "load",
    "model",
    "parse",
    "query",
    "run",
    "run_async",
    "score",
    "score_sync",
    "set_default_model",
    "headless",
    "printing",
    "silent",
    "stream",
    "vocabulary",
]
