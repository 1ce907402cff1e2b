"""A model's vocabulary from its GGUF file, through llama.cpp (no weights loaded), cached on disk.

Every token's bytes are what llama.cpp prints for it (``llama_token_to_piece`` without special rendering):
SentencePiece's ``▁`` is a space, a byte-fallback token ``<0xNN>`` is that one byte, control tokens print
nothing. Tokens that print nothing are ``special_ids`` (never generated inside a value).

The cache is one ``.npz`` per model file under ``$LMQC_CACHE_DIR/vocab`` (default ``~/.cache/lmqc/vocab``),
keyed by the file's absolute path, size and modification time; a damaged entry is rebuilt.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from lmqc.cache import atomic_write, cache_dir
from lmqc.errors import ModelError, VocabularyError

if TYPE_CHECKING:
    from lmqc.compiler.vocabulary import Vocabulary

__all__ = ["cache_path", "read_gguf_vocabulary", "vocabulary_from_gguf"]

_CACHE_VERSION = 1
_memo: dict[str, Vocabulary] = {}


def cache_path(model_path: str | os.PathLike[str]) -> Path:
    """Where the vocabulary of ``model_path`` is cached (depends on path, size and mtime)."""
    p = Path(model_path).resolve()
    try:
        st = p.stat()
    except OSError as e:
        raise ModelError(f"model file not found: {model_path}") from e
    key = hashlib.sha256(f"v{_CACHE_VERSION}\0{p}\0{st.st_size}\0{st.st_mtime_ns}".encode()).hexdigest()[:24]
    return cache_dir("vocab") / f"{p.stem}-{key}.npz"


def read_gguf_vocabulary(model_path: str | os.PathLike[str]) -> Vocabulary:
    """Build the vocabulary from the GGUF file with llama.cpp (``vocab_only``: no weights), uncached."""
    from lmqc.compiler.vocabulary import Vocabulary

    from .llama import llama_lib, load_llama_model

    L = llama_lib()
    model = load_llama_model(os.fspath(model_path), vocab_only=True)
    try:
        vocab = L.llama_model_get_vocab(model)
        n = int(L.llama_vocab_n_tokens(vocab))
        eos = int(L.llama_vocab_eos(vocab))
        if not 0 <= eos < n:
            raise VocabularyError(f"{model_path} declares no usable end-of-sequence token (eos id {eos})")
        # Every piece is written straight into one byte buffer at increasing offsets: no per-token Python
        # objects, and the result is already the Vocabulary's (buffer, offsets) layout. The C function is
        # re-typed with void* arguments so that plain integer addresses can be passed (the shared ctypes
        # prototype of llama-cpp-python is left alone).
        addr = ctypes.cast(L.llama_token_to_piece, ctypes.c_void_p).value
        to_piece = ctypes.CFUNCTYPE(
            ctypes.c_int32, ctypes.c_void_p, ctypes.c_int32, ctypes.c_void_p, ctypes.c_int32, ctypes.c_int32, ctypes.c_bool
        )(addr)
        vocab_addr = ctypes.cast(vocab, ctypes.c_void_p).value
        size = 16 * n + 4096
        buf = np.zeros(size, np.uint8)
        base = buf.ctypes.data
        offsets = np.zeros(n + 1, np.int64)
        off = 0
        for i in range(n):  # one C call per token (~1 µs): the cold path, run once per model file, then cached
            room = size - off
            k = to_piece(vocab_addr, i, base + off, room, 0, False)
            if k < 0 or room - k < 1024:  # grow, then write this piece again
                size = 2 * size + (-k if k < 0 else 0)
                buf = np.concatenate([buf, np.zeros(size - len(buf), np.uint8)])
                base = buf.ctypes.data
                k = to_piece(vocab_addr, i, base + off, size - off, 0, False)
                if k < 0:
                    raise VocabularyError(f"llama.cpp could not render token {i} of {model_path}")
            off += k
            offsets[i + 1] = off
        lengths = np.diff(offsets)
        special = np.flatnonzero(lengths == 0)
        special = special[special != eos]
        return Vocabulary.from_arrays(
            {"buffer": buf[:off].copy(), "offsets": offsets, "eos_id": np.array([eos]), "special_ids": special}
        )
    finally:
        L.llama_model_free(model)


def vocabulary_from_gguf(model_path: str | os.PathLike[str], *, cache: bool = True) -> Vocabulary:
    """The vocabulary of a GGUF model: from the process memo, the disk cache, or llama.cpp (then cached).

    Parameters
    ----------
    model_path : path to a ``.gguf`` file
    cache : bool
        Use and fill the on-disk cache (``$LMQC_CACHE_DIR/vocab``).

    Raises
    ------
    ModelError
        The file does not exist or llama.cpp cannot read it.
    """
    path = cache_path(model_path)  # also checks that the file exists
    memo_key = str(path)
    if memo_key in _memo:
        return _memo[memo_key]
    from lmqc.compiler.vocabulary import Vocabulary

    vocab: Vocabulary | None = None
    if cache and path.is_file():
        try:
            loaded = np.load(path, allow_pickle=False)
            if not isinstance(loaded, np.lib.npyio.NpzFile):
                raise ValueError("not an npz archive")
            with loaded as z:
                vocab = Vocabulary.from_arrays({k: z[k] for k in z.files})
        except Exception:  # noqa: BLE001 - any damaged entry (empty, .npy, truncated, forged) is rebuilt
            vocab = None
    if vocab is None:
        vocab = read_gguf_vocabulary(model_path)
        if cache:
            arrays = vocab.to_arrays()
            atomic_write(path, lambda f: np.savez(f, **arrays), cache=True)
    _memo[memo_key] = vocab
    return vocab
