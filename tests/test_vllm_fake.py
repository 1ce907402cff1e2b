"""The vLLM integration against a fake of vLLM's interface (tests/_fake_vllm.py), on the tiny backend's logits.

No vLLM needed: the logits processor runs on NumPy logits inside a fake engine that batches, moves and swaps
rows as vLLM V1 does, and the decoder service drives that fake ``LLM``. Results must equal lmqc's in-process
decoder on the same logits.
"""

from __future__ import annotations

import math
import re

import numpy as np
import pytest
from _fake_vllm import FakeBatchUpdate, FakeLLM, FakeSamplingParams

import lmqc
from lmqc.errors import DecodeError
from lmqc.integrations import vllm as lv
from lmqc.runtime.decode import Argmax, DecodeRequest, HoleSpec, Sample
from lmqc.runtime.models import get_model
from lmqc.runtime.service import LocalDecoder

TINY = "lmqc:tiny"


class TinyProcessor(lv.LmqcLogitsProcessor):
    """The processor with the tiny backend as the engine's tokenizer model (vLLM would load the HF tokenizer)."""

    def _load_model(self):
        return get_model(TINY)


@pytest.fixture(scope="module")
def tiny():
    return get_model(TINY)


@pytest.fixture()
def fake(tiny):
    llm = FakeLLM(tiny, TinyProcessor)
    service = lv.VllmDecoder(llm, tiny, sampling_params=FakeSamplingParams)
    lv.register("fake-tiny", service)
    yield service
    lv._services.pop("fake-tiny", None)


def _compile(where: str, prompt: str = "Answer: [X]", decoder: str = "argmax"):
    return lmqc.compile(f'{decoder}\n    "{prompt}"\nwhere {where}\n', model=TINY)


WHERES = [
    "INT(X) and len(TOKENS(X)) < 6",
    'X in ["positive", "negative", "neutral"]',
    'STOPS_AT(X, ".") and len(TOKENS(X)) < 12',
    'STOPS_BEFORE(X, "\\n") and len(X) < 30',
    "len(X) < 12",
    'REGEX(X, r"[0-9]{4}-[0-9]{2}-[0-9]{2}")',
    'STARTS_WITH(X, "no") and len(X) < 10',
    'not "e" in X and len(X) < 8 and len(X) > 2',
    "len(TOKENS(X)) > 3 and len(TOKENS(X)) < 7",
    'STOPS_AT(X, "e") and len(TOKENS(X)) > 2 and len(TOKENS(X)) < 9',
]


def _hole_spec(q, name="X", heal=True):
    ir = q.holes[name]
    return HoleSpec.from_ir(ir, q.automaton(name), heal=heal)


@pytest.mark.parametrize("where", WHERES)
@pytest.mark.parametrize("prompt", ["Answer: ", "Answer:", "Q: what?\nA"])
def test_decode_equals_in_process(fake, tiny, where: str, prompt: str) -> None:
    """Same completions (tokens, value, context, ending, state) as lmqc's own engine on the same logits."""
    q = _compile(where)
    spec = _hole_spec(q)
    ctx = tiny.tokenize(prompt, bos=True)
    ctxs = [ctx, tiny.tokenize("Other: ", bos=True), ctx]
    req = DecodeRequest.of(ctxs, spec, strategy=Argmax(), max_len=64, forced_text=False)
    want = LocalDecoder(tiny).decode(req)
    got = fake.decode(req)
    assert [(c.parent, c.tokens, c.value, c.context, c.ending, c.state) for c in got] == [
        (c.parent, c.tokens, c.value, c.context, c.ending, c.state) for c in want
    ]


@pytest.mark.parametrize("where", WHERES)
def test_queries_equal_in_process(fake, where: str) -> None:
    """Whole queries through ``model="vllm:fake-tiny"``: same prompt and values as in-process."""
    src = f'argmax\n    "Q: say something\\nA: [X]\\nB: [Y]"\nwhere {where} and len(TOKENS(Y)) < 5\n'
    q = lmqc.compile(src, model=TINY)  # one compiled object for both (see test_decode_equals_in_process)
    a = lmqc.run(q, model=TINY)
    b = lmqc.run(q, model="vllm:fake-tiny")
    assert (b.prompt, b.variables) == (a.prompt, a.variables)


def test_sample_values_satisfy_constraints(fake) -> None:
    q = _compile('REGEX(X, r"[0-9]{4}-[0-9]{2}-[0-9]{2}")')
    rs = lmqc.run(q, model="vllm:fake-tiny", decoder="sample(n=4, temperature=1.5, seed=3)")
    assert len(rs) == 4
    for r in rs:
        assert re.fullmatch(r"[0-9]{4}-[0-9]{2}-[0-9]{2}", r.variables["X"])
    again = lmqc.run(q, model="vllm:fake-tiny", decoder="sample(n=4, temperature=1.5, seed=3)")
    assert [r.variables["X"] for r in again] == [r.variables["X"] for r in rs]


def test_one_generate_call_per_hole(fake) -> None:
    src = 'sample(n=3, seed=1)\n    "A: [X]\\nB: [Y]"\nwhere len(TOKENS(X)) < 4 and len(TOKENS(Y)) < 4\n'
    before = fake.llm.calls
    lmqc.run(src, model="vllm:fake-tiny")
    assert fake.llm.calls - before == 2


def test_distribution_uses_prompt_logprobs(fake) -> None:
    src = 'argmax\n    "Review: fine.\\nSentiment: [CLS]"\ndistribution CLS in ["positive", "negative", "neutral"]\n'
    a = lmqc.run(src, model=TINY)
    b = lmqc.run(src, model="vllm:fake-tiny")
    assert b.variables == a.variables
    for k, p in a.distribution.items():
        assert b.distribution[k] == pytest.approx(p, rel=1e-4)


def test_scores_from_vllm_logprobs(fake, tiny) -> None:
    q = _compile("INT(X) and len(TOKENS(X)) < 5")
    spec = _hole_spec(q)
    req = DecodeRequest.of([tiny.tokenize("Answer: ", bos=True)], spec, max_len=64, forced_text=False, score=True)
    want = LocalDecoder(tiny).decode(req)[0]
    got = fake.decode(req)[0]
    assert got.tokens == want.tokens
    assert got.logprob == pytest.approx(want.logprob, rel=1e-4, abs=1e-4)


def test_beam_is_refused(fake, tiny) -> None:
    q = _compile("len(X) < 5")
    with pytest.raises(DecodeError, match="beam"):
        lmqc.run(q, model="vllm:fake-tiny", decoder="beam(n=2)")


def test_max_len_and_hopeless_holes(fake, tiny) -> None:
    q = _compile("len(TOKENS(X)) < 40")
    with pytest.raises(lmqc.MaxLenError):
        lmqc.run(q, model="vllm:fake-tiny", decoder="argmax(max_len=6)")
    with pytest.raises(DecodeError, match="needs at least"):
        spec = HoleSpec(_compile('REGEX(X, r"[0-9]{20}")').automaton("X"), max_tokens=2)
        fake.decode(DecodeRequest.of([tiny.tokenize("A: ", bos=True)], spec))


# -- the processor on its own ---------------------------------------------------------------------------------


def _rows(proc, logits):
    return proc.apply(np.array(logits, dtype=np.float32))


def test_processor_masks_and_follows_output(tiny) -> None:
    q = _compile('X in ["yes", "no"]')
    spec = _hole_spec(q, heal=False)
    proc = TinyProcessor(None, "cpu", False)
    args = lv.hole_args(spec, vocab_fingerprint=tiny.vocabulary.fingerprint, transport="inline")
    out: list[int] = []
    proc.update_state(FakeBatchUpdate(2, [], [(1, FakeSamplingParams(extra_args=args), [1, 5], out)], []))
    V = tiny.n_vocab
    logits = _rows(proc, np.zeros((2, V)))
    assert np.all(logits[0] == 0)  # a row without lmqc arguments is untouched
    allowed = np.flatnonzero(np.isfinite(logits[1]))
    assert set(allowed) == set(q.automaton("X").allowed(q.automaton("X").initial).tolist())
    # generate "yes" token by token, then only EOS remains
    for t in tiny.tokenize("yes"):
        assert np.isfinite(_rows(proc, np.zeros((2, V)))[1, t])
        out.append(t)
    last = _rows(proc, np.zeros((2, V)))[1]
    assert np.flatnonzero(np.isfinite(last)).tolist() == [tiny.eos_id]
    # removal forgets the row
    proc.update_state(FakeBatchUpdate(1, [1], [], []))
    assert proc.rows == {}


def test_processor_hash_transport_and_refusals(tiny) -> None:
    q = _compile("INT(X)")
    spec = _hole_spec(q, heal=False)
    fp = tiny.vocabulary.fingerprint
    proc = TinyProcessor(None, "cpu", False)
    V = tiny.n_vocab
    # an unknown hash: the row is refused (EOS only), the engine keeps running
    only_hash = lv.hole_args(spec, vocab_fingerprint=fp, transport="hash")
    proc.update_state(FakeBatchUpdate(1, [], [(0, FakeSamplingParams(extra_args=only_hash), [1, 5], [])], []))
    assert proc.rows[0].error and "not loaded" in proc.rows[0].error
    assert np.flatnonzero(np.isfinite(_rows(proc, np.zeros((1, V)))[0])).tolist() == [tiny.eos_id]
    # by path, then by hash alone
    by_path = lv.hole_args(spec, vocab_fingerprint=fp, transport="path")
    proc.update_state(FakeBatchUpdate(1, [0], [(0, FakeSamplingParams(extra_args=by_path), [1, 5], [])], []))
    assert proc.rows[0].error is None
    proc.update_state(FakeBatchUpdate(2, [], [(1, FakeSamplingParams(extra_args=only_hash), [1, 5], [])], []))
    assert proc.rows[1].error is None
    # another vocabulary
    other = dict(by_path, lmqc_vocab="0" * 64)
    proc.update_state(FakeBatchUpdate(2, [], [(1, FakeSamplingParams(extra_args=other), [1, 5], [])], []))
    assert "another vocabulary" in proc.rows[1].error
    # malformed arguments are refused at admission (vLLM: HTTP 400)
    with pytest.raises(ValueError, match="lmqc_stops"):
        TinyProcessor.validate_params(FakeSamplingParams(extra_args=dict(by_path, lmqc_stops=["zz"], lmqc_stops_keep=[1])))
    with pytest.raises(ValueError, match="lmqc_min_tokens"):
        TinyProcessor.validate_params(FakeSamplingParams(extra_args=dict(by_path, lmqc_min_tokens="3")))
    TinyProcessor.validate_params(FakeSamplingParams(extra_args={"other": 1}))  # not ours


def test_processor_swaps_and_moves(tiny) -> None:
    qa, qb = _compile("INT(X)"), _compile('X in ["yes", "no"]')
    fp = tiny.vocabulary.fingerprint
    proc = TinyProcessor(None, "cpu", False)
    a = FakeSamplingParams(extra_args=lv.hole_args(_hole_spec(qa, heal=False), vocab_fingerprint=fp))
    b = FakeSamplingParams(extra_args=lv.hole_args(_hole_spec(qb, heal=False), vocab_fingerprint=fp))
    proc.update_state(FakeBatchUpdate(3, [], [(0, a, [1], []), (2, b, [1], [])], []))
    proc.update_state(FakeBatchUpdate(3, [], [], [(0, 2, "SWAP")]))
    assert proc.rows[0].seq.hole.spec.automaton is not proc.rows[2].seq.hole.spec.automaton
    ids_b = set(qb.automaton("X").allowed(qb.automaton("X").initial).tolist())
    got = _rows(proc, np.zeros((3, tiny.n_vocab)))
    assert set(np.flatnonzero(np.isfinite(got[0])).tolist()) == ids_b
    proc.update_state(FakeBatchUpdate(2, [1], [], [(2, 1, "UNIDIRECTIONAL")]))
    assert sorted(proc.rows) == [0, 1]


def test_unknown_strategy_params_and_sample_seed(fake, tiny) -> None:
    q = _compile("len(TOKENS(X)) < 4")
    spec = _hole_spec(q)
    ctx = tiny.tokenize("A: ", bos=True)
    req = DecodeRequest.of([ctx, ctx], spec, strategy=Sample(temperature=0.9, top_k=5), rng=5, max_len=64)
    got = fake.decode(req)
    assert len(got) == 2 and all(c.ending in {"eos", "max_tokens"} for c in got)
    assert all(math.isnan(c.logprob) for c in got)
