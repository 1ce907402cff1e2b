"""An lmqc vocabulary and tokenizer from a Hugging Face tokenizer (``tokenizer.json``).

lmqc builds token automata over a :class:`~lmqc.compiler.vocabulary.Vocabulary` (token id -> the bytes the token
prints). For a GGUF model llama.cpp renders every piece (``runtime.vocab``); for a Hugging Face model the pieces
come from its fast tokenizer, in one of the two encodings current models use:

* **byte-level BPE** (GPT-2, Llama 3, Qwen, ...: a ``ByteLevel`` decoder): every character of a token string
  stands for one byte through GPT-2's ``bytes_to_unicode`` table;
* **SentencePiece-style pieces** (Llama 2, Gemma, Mistral, ...: a ``Metaspace`` decoder, or ``Replace`` /
  ``ByteFallback`` decoders): ``▁`` is a space and a byte-fallback token ``<0xNN>`` is that one byte.

Special added tokens (``<bos>``, ``<eos>``, chat markers) print nothing, as llama.cpp renders control tokens:
they are ``special_ids``, never generated inside a value. Ids past the tokenizer's size up to the model's
``vocab_size`` (padding rows of the embedding) are empty pieces too.

:class:`HFTokenizer` also tokenizes the way lmqc needs: text in the middle of a prompt without a SentencePiece
prefix space (a ``Metaspace`` pre-tokenizer's ``prepend_scheme`` is set to ``never`` on a private copy), special
token text parsed only when asked (chat templates), and byte strings that are not valid UTF-8 (a stop phrase cut
inside a character) through single-byte tokens.
"""

from __future__ import annotations

import json
import os
import re
import threading
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from lmqc.errors import ModelError, VocabularyError

if TYPE_CHECKING:
    from lmqc.compiler.vocabulary import Vocabulary

__all__ = ["HFTokenizer", "hf_tokenizer", "vocabulary_from_tokenizer"]

_BYTE_TOKEN = re.compile(r"<0x([0-9A-Fa-f]{2})>")


@lru_cache(maxsize=1)
def _byte_decoder() -> dict[str, int]:
    """GPT-2's ``bytes_to_unicode`` table, inverted: character -> byte."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {chr(c): b for b, c in zip(bs, cs, strict=True)}


def _types(node: Any) -> list[str]:
    """Every ``type`` in a tokenizer.json component (a decoder, pre-tokenizer, ...), sub-components included."""
    out: list[str] = []
    if isinstance(node, dict):
        if isinstance(node.get("type"), str):
            out.append(node["type"])
        for v in node.values():
            if isinstance(v, dict | list):
                out.extend(_types(v))
    elif isinstance(node, list):
        for v in node:
            out.extend(_types(v))
    return out


def _kind(spec: dict[str, Any]) -> str:
    dec = _types(spec.get("decoder"))
    pre = _types(spec.get("pre_tokenizer"))
    if "ByteLevel" in dec or (not dec and "ByteLevel" in pre):
        return "bytelevel"
    if {"Metaspace", "ByteFallback", "Replace"} & set(dec) or "Metaspace" in pre:
        return "spm"
    raise VocabularyError(
        "unsupported tokenizer: lmqc reads byte-level BPE (a ByteLevel decoder) and SentencePiece-style "
        f"tokenizers (Metaspace / Replace / ByteFallback decoders); this one has decoder {dec or None}"
    )


def _raw_tokenizer(tokenizer: Any) -> Any:
    """The ``tokenizers.Tokenizer`` behind a transformers (or vLLM-wrapped) fast tokenizer."""
    seen = 0
    t = tokenizer
    while seen < 4:
        if hasattr(t, "to_str") and hasattr(t, "get_vocab") and hasattr(t, "encode_batch"):
            return t
        inner = getattr(t, "backend_tokenizer", None) or getattr(t, "_tokenizer", None) or getattr(t, "tokenizer", None)
        if inner is None or inner is t:
            break
        t = inner
        seen += 1
    raise VocabularyError(
        f"{type(tokenizer).__name__} is not a fast (tokenizer.json) Hugging Face tokenizer: lmqc needs one to read "
        "the token pieces"
    )


def _pieces(spec: dict[str, Any], raw: Any, size: int | None) -> tuple[list[bytes], list[int]]:
    kind = _kind(spec)
    vocab: dict[str, int] = raw.get_vocab(with_added_tokens=True)
    added: dict[int, Any] = raw.get_added_tokens_decoder() if hasattr(raw, "get_added_tokens_decoder") else {}
    n = max(max(vocab.values(), default=-1) + 1, size or 0)
    if size is not None and max(vocab.values(), default=-1) >= size:
        raise VocabularyError(f"the tokenizer has token ids up to {max(vocab.values())}, past the model's vocab_size {size}")
    pieces: list[bytes] = [b""] * n
    special: list[int] = []
    model = spec.get("model") or {}
    byte_fallback = bool(model.get("byte_fallback")) or "ByteFallback" in _types(spec.get("decoder"))
    table = _byte_decoder()
    for s, i in vocab.items():
        tok = added.get(i)
        if tok is not None:
            if getattr(tok, "special", False):
                special.append(i)
            else:
                pieces[i] = str(getattr(tok, "content", s)).encode("utf-8")
            continue
        if kind == "bytelevel":
            if all(c in table for c in s):
                pieces[i] = bytes(table[c] for c in s)
            else:
                pieces[i] = s.encode("utf-8")
        else:
            m = _BYTE_TOKEN.fullmatch(s) if byte_fallback else None
            pieces[i] = bytes([int(m.group(1), 16)]) if m else s.replace("\u2581", " ").encode("utf-8")
    return pieces, special


def vocabulary_from_tokenizer(tokenizer: Any, *, eos_id: int, vocab_size: int | None = None) -> Vocabulary:
    """The lmqc vocabulary of a Hugging Face fast tokenizer (a ``tokenizers.Tokenizer`` or a transformers one).

    Parameters
    ----------
    eos_id : int
        The model's end-of-sequence token.
    vocab_size : int, optional
        The model's logit width (``config.json`` ``vocab_size``); ids past the tokenizer's are empty pieces.
    """
    from lmqc.compiler.vocabulary import Vocabulary

    raw = _raw_tokenizer(tokenizer)
    pieces, special = _pieces(json.loads(raw.to_str()), raw, vocab_size)
    return Vocabulary(pieces, int(eos_id), [t for t in special if t != eos_id])


def _exact_copy(raw: Any) -> Any:
    """A copy of the tokenizer that adds no SentencePiece prefix space to the text it encodes."""
    from tokenizers import Tokenizer

    spec = json.loads(raw.to_str())
    changed = False

    def fix(node: Any) -> Any:
        nonlocal changed
        if isinstance(node, dict):
            if node.get("type") == "Metaspace":
                if node.get("prepend_scheme", "never") != "never" or node.get("add_prefix_space"):
                    node = dict(node, prepend_scheme="never")
                    if "add_prefix_space" in node:
                        node["add_prefix_space"] = False
                    changed = True
                return node
            if node.get("type") == "Sequence":
                for key in ("normalizers", "pretokenizers"):
                    if isinstance(node.get(key), list):
                        items = []
                        for sub in node[key]:
                            if isinstance(sub, dict) and sub.get("type") == "Prepend":
                                changed = True
                                continue
                            items.append(fix(sub))
                        node = dict(node, **{key: items})
                return node
            if node.get("type") == "Prepend":
                changed = True
                return None
        return node

    spec["normalizer"] = fix(spec.get("normalizer"))
    spec["pre_tokenizer"] = fix(spec.get("pre_tokenizer"))
    return Tokenizer.from_str(json.dumps(spec)) if changed else raw


class HFTokenizer:
    """A Hugging Face tokenizer as lmqc sees a model's tokenizer: vocabulary, tokenize, pieces, chat template.

    It has the tokenizer half of ``runtime.backend.Backend`` (``vocabulary``, ``n_vocab``, ``bos_id``,
    ``eos_id``, ``eog_ids``, ``special_ids``, ``n_ctx``, ``tokenize``, ``detokenize``, ``piece``), which is what
    the vLLM decoder service (:mod:`lmqc.integrations.vllm`) needs besides vLLM itself.

    Parameters
    ----------
    tokenizer : tokenizers.Tokenizer or transformers fast tokenizer
    eos_id : int
        End of sequence (ends a hole).
    vocab_size : int, optional
        The model's logit width (default: the tokenizer's size).
    bos_id : int, optional
        Beginning of sequence; ``tokenize(..., bos=True)`` prepends what the tokenizer's post-processor puts
        before a text (usually this token), else this token when ``add_bos``.
    eog_ids : sequence of int
        Other end-of-generation tokens (``generation_config.json``'s extra ``eos_token_id`` values).
    chat_template : str, optional
        The Jinja chat template (``tokenizer_config.json``); role tags render with it.
    n_ctx : int
        Longest context (vLLM's ``max_model_len``).
    """

    def __init__(
        self,
        tokenizer: Any,
        *,
        eos_id: int,
        vocab_size: int | None = None,
        bos_id: int | None = None,
        add_bos: bool | None = None,
        eog_ids: Sequence[int] = (),
        chat_template: str | None = None,
        n_ctx: int = 1 << 20,
    ) -> None:
        self._raw = _raw_tokenizer(tokenizer)
        self._enc = _exact_copy(self._raw)
        self._lock = threading.Lock()
        self.vocabulary = vocabulary_from_tokenizer(self._raw, eos_id=eos_id, vocab_size=vocab_size)
        v = self.vocabulary
        self.n_vocab = v.size
        self.eos_id = int(eos_id)
        self.bos_id = None if bos_id is None else int(bos_id)
        self.eog_ids = np.asarray(sorted({int(t) for t in eog_ids} - {self.eos_id}), np.int32)
        self.special_ids = np.asarray(v.special_ids, np.int32)
        self.n_ctx = int(n_ctx)
        self._template = chat_template
        self._added = {
            int(i): str(getattr(t, "content", "")) for i, t in (self._raw.get_added_tokens_decoder() or {}).items()
        } if hasattr(self._raw, "get_added_tokens_decoder") else {}
        # What the post-processor puts before a text (BOS for most models).
        with_special = self._raw.encode("a", add_special_tokens=True).ids
        plain = self._raw.encode("a", add_special_tokens=False).ids
        prefix: list[int] = []
        for k in range(len(with_special) - len(plain) + 1):
            if with_special[k : k + len(plain)] == plain:
                prefix = list(with_special[:k])
                break
        if not prefix and self.bos_id is not None and add_bos:
            prefix = [self.bos_id]
        self.bos_prefix = prefix
        # single-byte tokens, for bytes that are not UTF-8 text
        lengths = np.diff(v.offsets)
        ones = np.flatnonzero((lengths == 1) & ~v.never)
        byte_tok: dict[int, int] = {}
        for t in ones[::-1].tolist():  # the lowest id wins
            byte_tok[int(v.buffer[v.offsets[t]])] = t
        self._byte_tok = byte_tok

    def __repr__(self) -> str:
        return f"HFTokenizer(vocab={self.n_vocab}, eos={self.eos_id}, bos={self.bos_id})"

    # -- tokenizer half of the Backend protocol ------------------------------------------------------------

    def piece(self, token: int) -> bytes:
        return self.vocabulary.piece(int(token))

    def detokenize(self, ids: Sequence[int]) -> bytes:
        return b"".join(self.vocabulary.piece(int(t)) for t in ids)

    def token_text(self, token: int) -> str:
        """A token's text as chat templates spell it (``<bos>`` for a special token)."""
        if token in self._added:
            return self._added[token]
        return self.piece(token).decode("utf-8", errors="replace")

    def chat_template(self) -> str | None:
        return self._template

    def tokenize(self, text: str | bytes, *, bos: bool = False, special: bool = False) -> list[int]:
        """Token ids of ``text`` (no prefix space added; special-token text parsed only with ``special``)."""
        if isinstance(text, bytes):
            s = text.decode("utf-8", errors="surrogateescape")
        else:
            s = text
        ids: list[int] = list(self.bos_prefix) if bos else []
        # lone surrogates (from bytes that are not UTF-8) become single-byte tokens
        for part in re.split(r"([\udc80-\udcff])", s):
            if not part:
                continue
            if len(part) == 1 and 0xDC80 <= ord(part) <= 0xDCFF:
                b = ord(part) - 0xDC00
                t = self._byte_tok.get(b)
                if t is None:
                    raise VocabularyError(f"the tokenizer has no token for byte 0x{b:02x}")
                ids.append(t)
                continue
            ids.extend(self._encode(part, special))
        return ids

    def _encode(self, text: str, special: bool) -> list[int]:
        enc = self._enc
        with self._lock:
            old = getattr(enc, "encode_special_tokens", None)
            if old is not None:
                enc.encode_special_tokens = not special
            try:
                return list(enc.encode(text, add_special_tokens=False).ids)
            finally:
                if old is not None:
                    enc.encode_special_tokens = old


# -- loading from a model directory or name ------------------------------------------------------------------


def _read_json(path: Path) -> dict[str, Any]:
    try:
        out = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return out if isinstance(out, dict) else {}


def _token_of(value: Any) -> str | None:
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) else None


def _ids(value: Any) -> list[int]:
    if isinstance(value, int):
        return [value]
    if isinstance(value, list):
        return [int(x) for x in value if isinstance(x, int)]
    return []


def hf_tokenizer(
    model: str | os.PathLike[str] | Any, *, vocab_size: int | None = None, n_ctx: int | None = None
) -> HFTokenizer:
    """The :class:`HFTokenizer` of a model directory (``tokenizer.json``, ``tokenizer_config.json``,
    ``config.json``, ``generation_config.json``), or of a loaded transformers tokenizer.

    A model name that is not a local directory is loaded with ``transformers.AutoTokenizer`` (from its local
    cache: nothing is downloaded where the hub cannot be reached).
    """
    if not isinstance(model, str | os.PathLike):
        tok = model
        eos = getattr(tok, "eos_token_id", None)
        if eos is None:
            raise VocabularyError("the tokenizer declares no end-of-sequence token")
        return HFTokenizer(
            tok, eos_id=int(eos), vocab_size=vocab_size, bos_id=getattr(tok, "bos_token_id", None),
            add_bos=bool(getattr(tok, "add_bos_token", False)),
            chat_template=getattr(tok, "chat_template", None) if isinstance(getattr(tok, "chat_template", None), str) else None,
            n_ctx=n_ctx or 1 << 20,
        )
    path = Path(os.path.expanduser(os.fspath(model)))
    if not (path / "tokenizer.json").is_file():
        try:
            from transformers import AutoTokenizer
        except ImportError as e:
            raise ModelError(f"{model}: no tokenizer.json there, and transformers is not installed to look it up") from e
        try:
            tok = AutoTokenizer.from_pretrained(os.fspath(model))
        except Exception as e:  # noqa: BLE001 - any failure to find the tokenizer
            raise ModelError(f"cannot load the tokenizer of {model!r}: {e}") from None
        return hf_tokenizer(tok, vocab_size=vocab_size, n_ctx=n_ctx)
    from tokenizers import Tokenizer

    raw = Tokenizer.from_file(str(path / "tokenizer.json"))
    tcfg = _read_json(path / "tokenizer_config.json")
    cfg = _read_json(path / "config.json")
    gen = _read_json(path / "generation_config.json")
    vocab = raw.get_vocab(with_added_tokens=True)

    def tid(name: str) -> int | None:
        text = _token_of(tcfg.get(name))
        return vocab.get(text) if text is not None else None

    eos = tid("eos_token")
    cfg_eos = _ids(cfg.get("eos_token_id"))
    gen_eos = _ids(gen.get("eos_token_id"))
    if eos is None:
        eos = (cfg_eos or gen_eos or [None])[0]
    if eos is None:
        raise VocabularyError(f"{path}: no end-of-sequence token (tokenizer_config.json eos_token, config.json eos_token_id)")
    bos = tid("bos_token")
    if bos is None:
        bos = (_ids(cfg.get("bos_token_id")) or [None])[0]
    template = tcfg.get("chat_template")
    if not isinstance(template, str):
        jinja = path / "chat_template.jinja"
        template = jinja.read_text(encoding="utf-8") if jinja.is_file() else None
    size = vocab_size or (int(cfg["vocab_size"]) if isinstance(cfg.get("vocab_size"), int) else None)
    limit = n_ctx or (int(cfg["max_position_embeddings"]) if isinstance(cfg.get("max_position_embeddings"), int) else 1 << 20)
    return HFTokenizer(
        raw, eos_id=int(eos), vocab_size=size, bos_id=bos, add_bos=bool(tcfg.get("add_bos_token", False)),
        eog_ids=[t for t in cfg_eos + gen_eos if t != eos], chat_template=template, n_ctx=limit,
    )
