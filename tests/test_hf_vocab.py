"""lmqc vocabularies and tokenization from Hugging Face tokenizers (lmqc.integrations.hf).

Needs the ``tokenizers`` package (skipped without it); the tokenizers are built here, nothing is downloaded.
"""

from __future__ import annotations

import json

import pytest

tokenizers = pytest.importorskip("tokenizers")

from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers  # noqa: E402

from lmqc.errors import VocabularyError  # noqa: E402
from lmqc.integrations.hf import HFTokenizer, hf_tokenizer, vocabulary_from_tokenizer  # noqa: E402

TEXTS = [
    "Hello, Bob! How are you?\n",
    "2024-01-31 positive negative neutral\tyes no",
    "é ü 日本語 👍 — «quotes»",
    "  leading spaces and trailing  ",
]


@pytest.fixture(scope="module")
def bytelevel() -> Tokenizer:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400, special_tokens=["<pad>", "<bos>", "<eos>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(TEXTS * 20, trainer)
    tok.add_tokens(["<think>"])  # a non-special added token prints its text
    return tok


@pytest.fixture(scope="module")
def spm() -> Tokenizer:
    """A SentencePiece-style BPE: Metaspace (prefix space on the first word), byte fallback, ▁ = space."""
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2}
    for b in range(256):
        vocab[f"<0x{b:02X}>"] = len(vocab)
    for piece in ["▁", "a", "b", "c", "▁a", "▁b", "ab", "▁ab", "é", "▁é"]:
        vocab[piece] = len(vocab)
    merges = [("▁", "a"), ("▁", "b"), ("a", "b"), ("▁a", "b"), ("▁", "é")]
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    tok.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    tok.pre_tokenizer = None
    tok.decoder = decoders.Sequence(
        [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0)]
    )
    tok.add_special_tokens(["<s>", "</s>"])
    return tok


def test_bytelevel_pieces_are_the_token_bytes(bytelevel: Tokenizer) -> None:
    v = vocabulary_from_tokenizer(bytelevel, eos_id=bytelevel.token_to_id("<eos>"), vocab_size=512)
    assert v.size == 512  # padded to the model's logit width; the padding prints nothing
    assert v.piece(450) == b"" and v.never[450]
    for special in ("<pad>", "<bos>", "<eos>"):
        i = bytelevel.token_to_id(special)
        assert v.piece(i) == b"" and v.never[i]
    assert v.piece(bytelevel.token_to_id("<think>")) == b"<think>"
    for text in TEXTS:
        ids = bytelevel.encode(text).ids
        assert b"".join(v.piece(i) for i in ids) == text.encode()
    # every byte has a one-byte token
    singles = {v.piece(i) for i in range(v.size) if len(v.piece(i)) == 1}
    assert len(singles) == 256


def test_bytelevel_tokenize_round_trips(bytelevel: Tokenizer) -> None:
    t = HFTokenizer(bytelevel, eos_id=bytelevel.token_to_id("<eos>"), bos_id=bytelevel.token_to_id("<bos>"), add_bos=True)
    for text in TEXTS:
        assert t.detokenize(t.tokenize(text)) == text.encode()
        assert t.tokenize(text, bos=True) == [t.bos_id, *t.tokenize(text)]
    cut = "日本".encode()[:4]  # a stop phrase may cut a character: bytes that are not UTF-8
    assert t.detokenize(t.tokenize(cut)) == cut
    # special-token text is plain text unless asked for
    eos = bytelevel.token_to_id("<eos>")
    assert eos not in t.tokenize("a<eos>b") and t.detokenize(t.tokenize("a<eos>b")) == b"a<eos>b"
    assert eos in t.tokenize("a<eos>b", special=True)


def test_spm_pieces_and_exact_tokenization(spm: Tokenizer) -> None:
    t = HFTokenizer(spm, eos_id=2, bos_id=1, add_bos=True)
    v = t.vocabulary
    assert v.piece(spm.token_to_id("▁ab")) == b" ab"
    assert v.piece(spm.token_to_id("<0x41>")) == b"A"
    assert v.piece(1) == b"" and v.piece(2) == b""
    # the tokenizer itself prepends "▁" to every text; lmqc's copy does not (text mid-prompt)
    assert spm.decode(spm.encode("ab").ids) == "ab"
    assert t.detokenize(t.tokenize("ab")) == b"ab"
    assert t.detokenize(t.tokenize(" ab c")) == b" ab c"
    assert t.detokenize(t.tokenize("xé!")) == "xé!".encode()  # x and ! through byte fallback
    assert t.tokenize("ab", bos=True)[0] == 1


def test_unsupported_tokenizer_is_a_clear_error() -> None:
    tok = Tokenizer(models.WordLevel({"a": 0, "[UNK]": 1}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    with pytest.raises(VocabularyError, match="unsupported tokenizer"):
        vocabulary_from_tokenizer(tok, eos_id=1)


def test_model_directory(tmp_path, bytelevel: Tokenizer) -> None:
    bytelevel.save(str(tmp_path / "tokenizer.json"))
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"bos_token": "<bos>", "eos_token": {"content": "<eos>"},
                                                                "chat_template": "{{ messages }}"}))
    (tmp_path / "config.json").write_text(json.dumps({"vocab_size": 448, "max_position_embeddings": 256}))
    (tmp_path / "generation_config.json").write_text(json.dumps({"eos_token_id": [2, 0]}))
    t = hf_tokenizer(tmp_path)
    assert (t.eos_id, t.bos_id, t.n_vocab, t.n_ctx) == (2, 1, 448, 256)
    assert t.eog_ids.tolist() == [0]
    assert t.chat_template() == "{{ messages }}" and t.token_text(1) == "<bos>"
    assert t.tokenize("hi", bos=True)[0] != 1  # no post-processor and no add_bos_token: no BOS
