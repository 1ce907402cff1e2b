"""KV-cache slot management and the tiny backend: cached evaluation must equal stateless evaluation."""

from __future__ import annotations

import numpy as np
import pytest

from lmqc.errors import DecodeError
from lmqc.runtime.backend import Backend, TinyBackend, common_prefix_len


@pytest.fixture
def tb() -> TinyBackend:
    return TinyBackend(n_seq=4, n_batch=16)


def ref(tb: TinyBackend, ctxs):
    return np.stack([tb.reference_logits(c) for c in ctxs])


def test_protocol_and_tokenizer(tb):
    assert isinstance(tb, Backend)
    text = "Hello world, 日本語 café 👍!\n"
    ids = tb.tokenize(text)
    assert tb.detokenize(ids).decode() == text
    assert tb.tokenize(text, bos=True)[0] == tb.bos_id
    # invalid UTF-8 falls back to byte tokens
    assert tb.detokenize(tb.tokenize(b"\xff\xc3x")) == b"\xff\xc3x"
    assert tb.piece(tb.eos_id) == b""
    assert set(tb.special_ids.tolist()) == {0, 1, 3}


def test_common_prefix_len():
    assert common_prefix_len([1, 2, 3], [1, 2, 3, 4]) == 3
    assert common_prefix_len([1, 2, 3], [1, 5, 3]) == 1
    assert common_prefix_len([], [1]) == 0
    assert common_prefix_len([7, 2], [8]) == 0


def test_eval_matches_reference_through_cache_reuse(tb):
    p = tb.tokenize("Q: Say hello to Bob\nA:", bos=True)
    rng = np.random.default_rng(1)
    ctxs = [p + [int(rng.integers(4, tb.n_vocab))] for _ in range(3)]
    for _ in range(12):
        out = tb.eval(ctxs)
        assert out.shape == (len(ctxs), tb.n_vocab) and out.dtype == np.float32
        np.testing.assert_allclose(out, ref(tb, ctxs))
        # beam-like evolution: fork, drop, extend, roll back
        new = []
        for c in ctxs:
            r = rng.random()
            if r < 0.2 and len(c) > len(p) + 1:
                new.append(c[:-1])
            else:
                new.append(c + [int(rng.integers(4, tb.n_vocab))])
        new[int(rng.integers(len(new)))] = list(new[0])
        ctxs = new


def test_incremental_eval_feeds_only_new_tokens(tb):
    p = tb.tokenize("Hello world, hello world", bos=True)
    tb.eval([p])
    tb.stats.reset()
    tb.eval([p + [300]])
    assert tb.stats.tokens == 1 and tb.stats.decode_calls == 1
    # the same context again: the last token is re-evaluated to produce its logits
    tb.stats.reset()
    tb.eval([p + [300]])
    assert tb.stats.tokens == 1


def test_forking_copies_the_shared_prefix(tb):
    p = tb.tokenize("Hello world, hello world, the", bos=True)
    tb.eval([p])
    tb.stats.reset()
    out = tb.eval([p + [5], p + [6], p + [7]])
    np.testing.assert_allclose(out, ref(tb, [p + [5], p + [6], p + [7]]))
    assert tb.stats.tokens == 3 and tb.stats.copies == 2 and tb.stats.decode_calls == 1


def test_shared_uncached_prefix_is_evaluated_once(tb):
    p = tb.tokenize("the the the the the the the the the the", bos=True)
    out = tb.eval([p, p, p])
    np.testing.assert_allclose(out, ref(tb, [p, p, p]))
    assert tb.stats.tokens == len(p) + 2  # prefix (all but the last) once, then the last token per sequence


def test_more_contexts_than_slots_and_long_batches(tb):
    ctxs = [tb.tokenize(f"hello {i} world " * 6, bos=True) for i in range(7)]
    out = tb.eval(ctxs)
    np.testing.assert_allclose(out, ref(tb, ctxs))
    assert tb.stats.decode_calls > 1  # n_batch=16 and 4 slots


def test_eval_rows(tb):
    p = tb.tokenize("Hello world", bos=True)
    tb.eval([p])
    full = p + [300, 301, 302]
    rows = tb.eval_rows([full, p + [9]], [4, 2])
    assert [r.shape[0] for r in rows] == [4, 2]
    for j in range(4):
        np.testing.assert_allclose(rows[0][j], tb.reference_logits(full[: len(full) - 4 + j + 1]))
    np.testing.assert_allclose(rows[1][0], tb.reference_logits(p))
    np.testing.assert_allclose(rows[1][1], tb.reference_logits(p + [9]))


def test_bad_contexts(tb):
    with pytest.raises(DecodeError):
        tb.eval([[]])
    with pytest.raises(DecodeError):
        tb.eval([[1] * (tb.n_ctx + 1)])
    with pytest.raises(DecodeError):
        tb.eval_rows([[1, 2]], [3])


def test_vocabulary_if_available(tb):
    pytest.importorskip("lmqc.compiler.vocabulary")
    v = tb.vocabulary
    assert v.size == tb.n_vocab and v.eos_id == tb.eos_id
    assert v.piece(300) == tb.piece(300)
    assert v.never[0] and v.never[3] and not v.never[300]


def test_import_lmqc_does_not_import_llama_cpp():
    import os
    import subprocess
    import sys

    code = "import sys, lmqc, lmqc.runtime.models, lmqc.runtime.decode; print('llama_cpp' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=dict(os.environ))
    assert out.stdout.strip() == "False", out.stderr


def test_full_cache_evicts_idle_sequences_and_retries():
    tb = TinyBackend(n_seq=4, n_batch=64, n_cells=60)
    ctxs = [tb.tokenize(f"hello {i} world, the end", bos=True) for i in range(4)]
    tb.eval(ctxs)  # fills the cache with four sequences
    long = tb.tokenize("the the the the the the the the the the the the the the the the", bos=True)
    out = tb.eval([long])
    np.testing.assert_allclose(out[0], tb.reference_logits(long))
    from lmqc.runtime.backend import CacheFull

    with pytest.raises(CacheFull):
        tb.eval([long * 5])
