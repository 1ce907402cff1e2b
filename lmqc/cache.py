"""Where lmqc keeps files, and how it writes them: one cache root and one atomic write.

The cache root is ``$LMQC_CACHE_DIR`` (default ``~/.cache/lmqc``): prepared vocabularies (``vocab/``), compiled
queries (``queries/``) and vocabularies fetched from ``lmqc serve`` (``remote-vocab/``). Every file lmqc writes
(caches and ``CompiledQuery.save``) goes through :func:`atomic_write`: a temporary file with a unique name in the
target's folder, then one rename, so readers see the old file or the new one, never a torn one, and concurrent
writers of one path never share a temporary file.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

__all__ = ["atomic_write", "cache_dir"]


def cache_dir(*parts: str) -> Path:
    """The cache root (``$LMQC_CACHE_DIR``, default ``~/.cache/lmqc``), or a folder below it."""
    root = os.environ.get("LMQC_CACHE_DIR")
    return (Path(root) if root else Path.home() / ".cache" / "lmqc").joinpath(*parts)


def atomic_write(
    path: str | os.PathLike[str], data: bytes | Callable[[BinaryIO], None], *, cache: bool = False
) -> Path | None:
    """Write ``data`` (bytes, or a function writing to a binary file) to ``path`` atomically.

    The folder is created if needed. With ``cache`` (the file is an optimization), an ``OSError`` is swallowed
    and ``None`` returned; otherwise it propagates. The temporary file never outlives the call.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                if callable(data):
                    data(f)
                else:
                    f.write(data)
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    except OSError:
        if cache:
            return None
        raise
    return path
