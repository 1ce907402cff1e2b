"""llama.cpp in-process backend on llama-cpp-python's low-level API.

One ``llama_context`` with ``n_seq`` sequence ids over a unified KV cache: forking a beam copies a prefix by
tagging the same cells with another sequence id (``llama_memory_seq_cp``), so it costs no compute and no memory.
All new tokens of all sequences of a step go into one ``llama_batch`` (see :class:`KVCacheBackend`).

``llama_cpp`` is imported here only, and only when a model is used.
"""

from __future__ import annotations

import atexit
import ctypes
import os
import sys
import threading
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from lmqc.errors import DecodeError, ModelError

from .backend import CacheFull, KVCacheBackend

if TYPE_CHECKING:
    from lmqc.compiler.vocabulary import Vocabulary

__all__ = ["LlamaBackend", "llama_lib", "load_llama_model"]

_init_lock = threading.Lock()
_lib: Any = None
_quiet_cb: Any = None  # keep the ctypes callback alive for the process lifetime
_shutting_down = False


def _mark_shutdown() -> None:
    global _shutting_down
    _shutting_down = True


def llama_lib() -> Any:
    """Import ``llama_cpp`` once, silence llama.cpp's logging (set ``LMQC_LLAMA_LOG=1`` to keep it), init."""
    global _lib, _quiet_cb
    if _lib is not None:
        return _lib
    with _init_lock:
        if _lib is None:
            try:
                import llama_cpp
            except ImportError as e:
                raise ModelError(
                    "llama-cpp-python is not installed: install lmqc with the 'model' extra "
                    "(pip install 'lmqc[model]') to run models"
                ) from e
            if not os.environ.get("LMQC_LLAMA_LOG"):

                @llama_cpp.llama_log_callback
                def _quiet(level: int, text: bytes, user_data: Any) -> None:
                    return None

                _quiet_cb = _quiet
                llama_cpp.llama_log_set(_quiet_cb, None)
            llama_cpp.llama_backend_init()
            # atexit runs last-registered first: this flag is set before llama_cpp's own teardown runs
            atexit.register(_mark_shutdown)
            _lib = llama_cpp
    return _lib


def load_llama_model(path: str, *, vocab_only: bool = False) -> Any:
    """Load a GGUF model (weights on the CPU; only the vocabulary with ``vocab_only``)."""
    L = llama_lib()
    if not os.path.isfile(path):
        raise ModelError(f"model file not found: {path}")
    params = L.llama_model_default_params()
    params.vocab_only = vocab_only
    params.n_gpu_layers = 0
    model = L.llama_model_load_from_file(os.fsencode(path), params)
    if not model:
        raise ModelError(f"llama.cpp could not load {path} (not a GGUF model, or an unsupported architecture)")
    return model


class LlamaBackend(KVCacheBackend):
    """A llama.cpp model evaluating up to ``n_seq`` sequences per batch with prefix reuse.

    Parameters
    ----------
    model_path : str
        GGUF file.
    n_ctx : int
        KV cache cells shared by all sequences (unified cache); also the longest context of one sequence.
    n_seq : int
        Sequence slots (beam/sample width evaluated in one batch).
    n_batch : int
        Most tokens per ``llama_decode`` call (longer feeds are split).
    n_threads : int, optional
        CPU threads (default ``$LMQC_N_THREADS`` or 2). llama.cpp's threads busy-wait for each other, so on a
        machine where other processes compete for the cores, 1 thread is steadier than 2.
    vocabulary : Vocabulary, optional
        The model's vocabulary if already prepared (else built/cached from the file).
    """

    def __init__(
        self,
        model_path: str,
        *,
        n_ctx: int = 4096,
        n_seq: int = 8,
        n_batch: int = 512,
        n_threads: int | None = None,
        vocabulary: Vocabulary | None = None,
    ) -> None:
        for name, value in (("n_ctx", n_ctx), ("n_seq", n_seq), ("n_batch", n_batch)):
            # llama.cpp takes these as unsigned: -5 would become 4 billion cells
            if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
                raise ModelError(f"{name} must be a positive integer, got {value!r}")
        L = llama_lib()
        self._L = L
        if n_threads is None:
            n_threads = int(os.environ.get("LMQC_N_THREADS", "2"))
        self.model_path = str(model_path)
        self._model = load_llama_model(self.model_path)
        cp = L.llama_context_default_params()
        cp.n_ctx = n_ctx
        cp.n_batch = n_batch
        cp.n_ubatch = n_batch
        cp.n_seq_max = n_seq
        cp.n_outputs_max = 0  # = n_batch
        cp.n_outputs_max_per_seq = 0  # several logit rows per sequence (forced runs, option scoring)
        cp.n_threads = n_threads
        cp.n_threads_batch = n_threads
        cp.kv_unified = True  # forks share cells: seq_cp is free
        cp.swa_full = True  # sliding-window layers keep every position, so rolling back a suffix is always exact
        cp.no_perf = True
        self._ctx = L.llama_init_from_model(self._model, cp)
        if not self._ctx:
            L.llama_model_free(self._model)
            self._model = None  # freed: close() (also run by __del__) must not free it again
            raise ModelError(f"llama.cpp could not create a context for {self.model_path} (n_ctx={n_ctx})")
        self._mem = L.llama_get_memory(self._ctx)
        self._vocab_p = L.llama_model_get_vocab(self._model)
        self.n_vocab = int(L.llama_vocab_n_tokens(self._vocab_p))
        self.n_ctx = int(L.llama_n_ctx(self._ctx))
        self.n_seq = n_seq
        self.n_batch = n_batch
        bos = int(L.llama_vocab_bos(self._vocab_p))
        self.bos_id = bos if bos >= 0 else None
        self._add_bos = bool(L.llama_vocab_get_add_bos(self._vocab_p))
        self.eos_id = int(L.llama_vocab_eos(self._vocab_p))
        if vocabulary is None:
            from .vocab import vocabulary_from_gguf

            vocabulary = vocabulary_from_gguf(self.model_path)
        if vocabulary.size != self.n_vocab or vocabulary.eos_id != self.eos_id:
            raise ModelError(f"vocabulary does not match {self.model_path} (size {vocabulary.size} vs {self.n_vocab})")
        self._vocabulary = vocabulary
        raw = vocabulary.buffer.tobytes()
        offs = vocabulary.offsets.tolist()
        self._pieces = [raw[a:b] for a, b in zip(offs[:-1], offs[1:], strict=True)]
        self.special_ids = np.flatnonzero(vocabulary.never).astype(np.int32)
        self.special_ids = self.special_ids[self.special_ids != self.eos_id]
        # end-of-generation tokens besides EOS (e.g. Gemma's <end_of_turn>): only among the special ones
        self.eog_ids = np.array(
            [t for t in self.special_ids.tolist() if L.llama_vocab_is_eog(self._vocab_p, t)], np.int32
        )
        self._alloc_batch(n_batch)
        self._tok_buf = (L.llama_token * 4096)()
        super().__init__()

    # -- batch memory: numpy arrays the llama_batch points into, filled vectorized ----------------------------

    def _alloc_batch(self, n: int) -> None:
        self._b_tok = np.zeros(n, np.int32)
        self._b_pos = np.zeros(n, np.int32)
        self._b_nseq = np.ones(n, np.int32)
        self._b_seq = np.zeros(n, np.int32)
        self._b_out = np.zeros(n, np.int8)
        seq_base = self._b_seq.ctypes.data
        self._b_seqp = (ctypes.POINTER(ctypes.c_int32) * n)(
            *[ctypes.cast(seq_base + 4 * i, ctypes.POINTER(ctypes.c_int32)) for i in range(n)]
        )
        b = self._L.llama_batch()
        b.n_tokens = 0
        b.token = self._b_tok.ctypes.data_as(ctypes.POINTER(ctypes.c_int32))
        b.embd = None
        b.pos = self._b_pos.ctypes.data_as(ctypes.POINTER(ctypes.c_int32))
        b.n_seq_id = self._b_nseq.ctypes.data_as(ctypes.POINTER(ctypes.c_int32))
        b.seq_id = ctypes.cast(self._b_seqp, ctypes.POINTER(ctypes.POINTER(ctypes.c_int32)))
        b.logits = self._b_out.ctypes.data_as(ctypes.POINTER(ctypes.c_int8))
        self._batch = b

    # -- KVCacheBackend primitives ---------------------------------------------------------------------------

    def _decode(self, tokens: np.ndarray, positions: np.ndarray, seq_ids: np.ndarray, want: np.ndarray) -> np.ndarray:
        n = len(tokens)
        self._b_tok[:n] = tokens
        self._b_pos[:n] = positions
        self._b_seq[:n] = seq_ids
        self._b_out[:n] = want
        self._batch.n_tokens = n
        rc = self._L.llama_decode(self._ctx, self._batch)
        if rc == 1:  # no room: llama.cpp restored the cache, so the caller may free cells and retry
            raise CacheFull(
                f"llama.cpp KV cache is full (n_ctx={self.n_ctx} cells shared by all sequences): "
                "use a larger n_ctx or a smaller max_len"
            )
        if rc != 0:
            self.reset()  # the cache may hold part of the batch: forget everything rather than trust it
            raise DecodeError(f"llama_decode failed with code {rc}")
        n_out = int(want.sum())
        if n_out == 0:
            return np.zeros((0, self.n_vocab), np.float32)
        ptr = self._L.llama_get_logits(self._ctx)
        out = np.ctypeslib.as_array(ptr, shape=(n_out, self.n_vocab))
        out.flags.writeable = False
        return out

    def _seq_rm(self, seq: int, p0: int) -> None:
        if not self._L.llama_memory_seq_rm(self._mem, seq, p0, -1):
            raise DecodeError(f"llama.cpp could not roll back sequence {seq} to position {p0}")

    def _seq_cp(self, src: int, dst: int, p1: int) -> None:
        self._L.llama_memory_seq_cp(self._mem, src, dst, 0, p1)

    def _clear(self) -> None:
        self._L.llama_memory_clear(self._mem, True)

    # -- text ------------------------------------------------------------------------------------------------

    @property
    def vocabulary(self) -> Vocabulary:
        return self._vocabulary

    def tokenize(self, text: str | bytes, *, bos: bool = False, special: bool = False) -> list[int]:
        """Token ids of ``text`` (no BOS unless ``bos``); never adds EOS.

        With ``special``, control-token texts in ``text`` (``<start_of_turn>``) become their control ids (chat
        role switches need that); without, they are ordinary text, as everything in a prompt or value is.
        """
        data = text.encode("utf-8") if isinstance(text, str) else bytes(text)
        cap = len(data) + 8
        buf = self._tok_buf if cap <= len(self._tok_buf) else (self._L.llama_token * cap)()
        n = self._L.llama_tokenize(self._vocab_p, data, len(data), buf, len(buf), False, special)
        if n < 0:
            raise DecodeError(f"tokenization of {len(data)} bytes failed")
        ids = list(buf[:n])
        if bos and self.bos_id is not None:
            ids.insert(0, self.bos_id)
        return ids

    def detokenize(self, ids: Sequence[int]) -> bytes:
        return b"".join(self._pieces[int(i)] for i in ids)

    def piece(self, token: int) -> bytes:
        return self._pieces[token]

    # -- chat ------------------------------------------------------------------------------------------------

    def chat_template(self) -> str | None:
        """The model's Jinja2 chat template (GGUF metadata ``tokenizer.chat_template``), or None without one."""
        raw = self._L.llama_model_chat_template(self._model, None)
        return raw.decode("utf-8", errors="replace") if raw else None

    def token_text(self, token: int) -> str:
        """A token as the vocabulary spells it, control tokens included (``"<bos>"``; chat templates need it)."""
        return bytes(self._L.llama_vocab_get_text(self._vocab_p, token)).decode("utf-8", errors="replace")

    # -- lifetime --------------------------------------------------------------------------------------------

    def close(self) -> None:
        """Free the llama.cpp context and model (the backend is unusable afterwards)."""
        L = getattr(self, "_L", None)
        if L is None:
            return
        if getattr(self, "_ctx", None):
            L.llama_free(self._ctx)
            self._ctx = None
        if getattr(self, "_model", None):
            L.llama_model_free(self._model)
            self._model = None

    def __del__(self, _finalizing: Any = sys.is_finalizing) -> None:
        # At interpreter shutdown llama_cpp may already have freed the backend (its own atexit hook); freeing
        # a context then crashes, and the OS reclaims the memory anyway.
        # (module globals may already be None then, hence the bound default argument and the try.)
        try:
            if _finalizing() or _shutting_down:
                return
        except Exception:  # noqa: BLE001
            return
        try:
            self.close()
        except Exception:  # noqa: BLE001 - interpreter shutdown may have torn down ctypes already
            pass

    def __repr__(self) -> str:
        return f"LlamaBackend({self.model_path!r}, n_vocab={self.n_vocab}, n_ctx={self.n_ctx}, n_seq={self.n_seq})"
