"""Decoders on the tiny backend with stand-in automata: every strategy x sparse/dense/forced/stop/budget."""

from __future__ import annotations

import math

import numpy as np
import pytest
from _standin import (
    StandInAutomaton,
    Unconstrained,
    dfa_digits,
    dfa_int,
    dfa_len_lt,
    dfa_literals,
    dfa_until,
    regex_ok,
)

from lmqc.compiler.automaton import TokenAutomaton
from lmqc.compiler.bytedfa import ByteDFA
from lmqc.compiler.ir import HoleIR, Stop
from lmqc.errors import DecodeError
from lmqc.runtime.backend import TinyBackend
from lmqc.runtime.decode import Argmax, Beam, Sample, decode_hole, parse_strategy, score_options


@pytest.fixture
def tb() -> TinyBackend:
    return TinyBackend(n_seq=8, n_batch=64)


def auto(tb, dfa, **kw):
    return StandInAutomaton(dfa, tb.pieces, tb.eos_id, special_ids=[0, 1, 3], **kw)


def prompt(tb, text="Q: Say hello to Bob\nA:"):
    return tb.tokenize(text, bos=True)


def lsm(row):
    row = row.astype(np.float64)
    m = row.max()
    return row - (m + np.log(np.exp(row - m).sum()))


def brute_argmax(tb, ctx, a, max_steps=64, budget=None):
    """Reference greedy: full reference logits, mask by a.allowed (and the budget), no caching, no shortcuts."""
    ctx = list(ctx)
    s = a.initial
    toks = []
    for k in range(max_steps):
        ids = a.allowed(s)
        if budget is not None:
            if k == budget:
                return toks, "max_tokens"
            ids = np.array([t for t in ids if t == tb.eos_id or a.min_tokens_to_end[a.step(s, t)] <= budget - k - 1])
        row = tb.reference_logits(ctx)
        t = int(ids[np.argmax(row[ids])])
        if t == tb.eos_id:
            return toks, "eos"
        toks.append(t)
        ctx.append(t)
        s = a.step(s, t)
        if a.is_stopped(s):
            return toks, "stop"
    return toks, "max"


def check(tb, c, ctx):
    """Invariants of every completion: context = input prefix + value, detokenized."""
    assert tb.detokenize(c.context) == tb.detokenize(ctx) + c.value
    assert c.context[: len(ctx)] == list(ctx)
    assert c.ending in ("eos", "stop", "max_tokens", "max_len")


CASES = {
    "int": (dfa_int(), rb" ?[0-9]+"),
    "choice": (dfa_literals([b"positive", b"negative", b"neutral"]), rb"positive|negative|neutral"),
    "len_lt_12": (dfa_len_lt(12), rb".{0,11}"),
    "until_period": (dfa_until(ord(".")), rb"[^.]*\."),
    "digits6": (dfa_digits(6), rb"[0-9]{6}"),
}


@pytest.mark.parametrize("name", list(CASES))
def test_argmax_equals_brute_force_and_satisfies(tb, name):
    dfa, pat = CASES[name]
    a = auto(tb, dfa)
    ctx = prompt(tb)
    [c] = decode_hole(tb, [ctx], a, strategy=Argmax(), max_tokens=40, forced_text=False)
    check(tb, c, ctx)
    assert regex_ok(pat.decode(), c.value), c.value
    assert a.accepts(c.tokens)
    ref, _ = brute_argmax(tb, ctx, a, budget=40)
    assert c.tokens == ref
    assert math.isnan(c.logprob)


@pytest.mark.parametrize("name", list(CASES))
@pytest.mark.parametrize("strategy", [Sample(), Sample(temperature=0.7, top_k=5), Sample(top_p=0.8), Beam(3)])
def test_every_strategy_satisfies_constraint(tb, name, strategy):
    dfa, pat = CASES[name]
    a = auto(tb, dfa)
    ctx = prompt(tb)
    B = 1 if isinstance(strategy, Beam) else 4
    out = decode_hole(tb, [ctx] * B, a, strategy=strategy, max_tokens=40, rng=np.random.default_rng(7))
    assert out
    for c in out:
        check(tb, c, ctx)
        assert regex_ok(pat.decode(), c.value), c.value
        assert a.accepts(c.tokens)


def test_unconstrained_argmax_matches_reference_and_skips_control_tokens(tb):
    tb._bigram[:, 3] = 50.0  # a control token the model loves must still never be generated
    ctx = prompt(tb)
    [c] = decode_hole(tb, [ctx], None, max_tokens=30)
    assert 3 not in c.tokens and 0 not in c.tokens and 1 not in c.tokens
    # reference: greedy over logits minus control tokens
    ref = list(ctx)
    toks = []
    for _ in range(30):
        row = tb.reference_logits(ref).copy()
        row[[0, 1, 3]] = -np.inf
        t = int(np.argmax(row))
        if t == tb.eos_id:
            break
        toks.append(t)
        ref.append(t)
    assert c.tokens == toks
    [c2] = decode_hole(tb, [ctx], Unconstrained(tb.eos_id), max_tokens=30)
    assert c2.tokens == toks


def test_unconstrained_ends_with_eos(tb):
    ctx = prompt(tb)
    [c] = decode_hole(tb, [ctx], None, max_tokens=200)
    assert c.ending == "eos"


def test_dense_mask_complement_path(tb):
    # len < 6 bytes is a dense set (most tokens have <= 5 bytes); near the end only short tokens fit.
    a = auto(tb, dfa_len_lt(6))
    assert len(a.allowed(0)) > tb.n_vocab // 2
    ctx = prompt(tb)
    [c] = decode_hole(tb, [ctx], a, forced_text=False)
    assert len(c.value) < 6
    ref, _ = brute_argmax(tb, ctx, a)
    assert c.tokens == ref


def test_sample_seed_reproduces_and_varies(tb):
    ctx = prompt(tb)
    a = auto(tb, dfa_len_lt(20))
    run = lambda seed: [c.tokens for c in decode_hole(tb, [ctx] * 4, a, strategy=Sample(), rng=seed)]  # noqa: E731
    assert run(3) == run(3)
    assert run(np.random.default_rng(3)) == run(3)
    assert len({tuple(t) for t in run(3) + run(4) + run(5)}) > 3


def test_sample_distribution_is_renormalized_over_allowed(tb):
    ctx = prompt(tb)
    a = auto(tb, dfa_literals([b"positive", b"negative", b"neutral", b"yes", b"no"]))
    row = tb.reference_logits(ctx)
    ids = a.allowed(a.initial)
    p = np.exp(lsm(row[ids]))
    rng = np.random.default_rng(0)
    counts = dict.fromkeys(ids.tolist(), 0)
    n = 3000
    for _ in range(n // 8):
        for c in decode_hole(tb, [ctx] * 8, a, strategy=Sample(), rng=rng):
            counts[c.tokens[0]] += 1
    freq = np.array([counts[i] for i in ids.tolist()]) / (n // 8 * 8)
    assert np.abs(freq - p).max() < 0.04


def test_sample_top_k_1_is_argmax(tb):
    ctx = prompt(tb)
    a = auto(tb, dfa_int())
    [g] = decode_hole(tb, [ctx], a, max_tokens=10)
    out = decode_hole(tb, [ctx] * 3, a, strategy=Sample(top_k=1), rng=1, max_tokens=10)
    assert all(c.tokens == g.tokens for c in out)
    out = decode_hole(tb, [ctx] * 2, a, strategy=Sample(temperature=0), max_tokens=10)
    assert all(c.tokens == g.tokens for c in out)


def test_beam_scores_are_full_logsoftmax_sums_and_ordered(tb):
    ctx = prompt(tb)
    a = auto(tb, dfa_int())
    out = decode_hole(tb, [ctx], a, strategy=Beam(4), max_tokens=6)
    assert len(out) == 4
    assert [c.score for c in out] == sorted((c.score for c in out), reverse=True)
    assert len({tuple(c.tokens) for c in out}) == 4
    for c in out:
        lp = 0.0
        cur = list(ctx)
        for t in c.tokens + ([tb.eos_id] if c.ending == "eos" else []):
            lp += lsm(tb.reference_logits(cur))[t]
            cur.append(t)
        assert c.logprob == pytest.approx(lp, abs=1e-4)
        assert c.parent == 0


def test_beam_1_equals_argmax(tb):
    ctx = prompt(tb)
    for dfa, _ in CASES.values():
        a = auto(tb, dfa)
        [g] = decode_hole(tb, [ctx], a, max_tokens=12)
        [b] = decode_hole(tb, [ctx], a, strategy=Beam(1), max_tokens=12)
        assert b.tokens == g.tokens


def test_wide_beam_finds_exhaustive_best(tb):
    ctx = prompt(tb)
    a = auto(tb, dfa_literals([b"ab", b"abc", b"de"]))

    best = -math.inf
    seqs = []

    def dfs(state, toks, lp):
        nonlocal best
        row = lsm(tb.reference_logits(ctx + toks))
        for t in a.allowed(state).tolist():
            if t == tb.eos_id:
                seqs.append((lp + row[t], toks))
                best = max(best, lp + row[t])
            else:
                dfs(a.step(state, t), toks + [t], lp + row[t])

    dfs(a.initial, [], 0.0)
    out = decode_hole(tb, [ctx], a, strategy=Beam(len(seqs) + 2), forced_text=False)
    assert out[0].score == pytest.approx(best, abs=1e-4)
    assert len(out) == len(seqs)
    np.testing.assert_allclose([c.score for c in out], sorted((s for s, _ in seqs), reverse=True), atol=1e-4)


def test_beam_over_several_branches_uses_incoming_scores(tb):
    a = auto(tb, dfa_int())
    c1, c2 = prompt(tb, "A:"), prompt(tb, "Q: hello")
    out = decode_hole(tb, [c1, c2], a, strategy=Beam(3), max_tokens=4, scores=[0.0, -1e6])
    assert all(c.parent == 0 for c in out)
    out = decode_hole(tb, [c1, c2], a, strategy=Beam(3), max_tokens=4, scores=[-1e6, 0.0])
    assert all(c.parent == 1 for c in out)
    for c in out:
        check(tb, c, c2)


def test_one_eval_per_step_for_a_batch(tb):
    ctx = prompt(tb)
    tb.eval([ctx])
    tb.stats.reset()
    out = decode_hole(tb, [ctx] * 4, None, strategy=Sample(), rng=0, max_tokens=10)
    steps = max(c.n_tokens + (c.ending == "eos") for c in out)
    assert tb.stats.eval_calls == steps
    assert tb.stats.decode_calls == steps
    tb.stats.reset()
    out = decode_hole(tb, [ctx], None, strategy=Beam(4), max_tokens=8)
    assert tb.stats.eval_calls <= 8 + 1
    assert tb.stats.decode_calls == tb.stats.eval_calls


def test_forced_runs_need_no_model_call(tb):
    # Without byte tokens and the short pieces, b'{"name": "' has one tokenization: every step is forced.
    ctx = prompt(tb)
    lit = b'{"name": "Alice"}'
    byte_tokens = list(range(4, 260))
    a = auto(tb, dfa_literals([lit]), exclude=byte_tokens)
    toks, _ = brute_argmax(tb, ctx, a)
    tb.stats.reset()
    [c] = decode_hole(tb, [ctx], a, forced_text=False)
    assert c.value == lit and c.tokens == toks
    forced_steps = sum(1 for _ in toks)
    assert tb.stats.eval_calls < forced_steps  # runs are batched, the final EOS-only state costs nothing
    # the tokens reach the model in few batches, and the scores still count every forced token
    beams = decode_hole(tb, [ctx], a, strategy=Beam(2), forced_text=False)
    assert all(x.value == lit for x in beams)

    def logprob(tokens):
        cur, lp = list(ctx), 0.0
        for t in tokens + [tb.eos_id]:
            lp += lsm(tb.reference_logits(cur))[t]
            cur.append(t)
        return lp

    for b in beams:
        assert b.logprob == pytest.approx(logprob(b.tokens), abs=1e-4)
    assert beams[0].score >= logprob(toks) - 1e-4
    [s] = decode_hole(tb, [ctx], a, strategy=Argmax(), score=True, forced_text=False)
    assert s.tokens == toks and s.logprob == pytest.approx(logprob(toks), abs=1e-4)


def test_token_budget(tb):
    ctx = prompt(tb)
    a = auto(tb, dfa_digits(6))
    for strategy in (Argmax(), Sample(), Beam(3)):
        for c in decode_hole(tb, [ctx], a, strategy=strategy, max_tokens=2, rng=0):
            assert c.n_tokens <= 2 and len(c.value) == 6 and a.accepts(c.tokens)
    with pytest.raises(DecodeError, match="at least"):
        decode_hole(tb, [ctx], a, max_tokens=1)
    # unconstrained budget
    [c] = decode_hole(tb, [ctx], None, max_tokens=3, min_tokens=3)
    assert c.n_tokens == 3 and c.ending == "max_tokens"


def test_min_tokens_blocks_eos(tb):
    ctx = prompt(tb)
    a = auto(tb, dfa_int())
    [g] = decode_hole(tb, [ctx], a, max_tokens=10)
    for strategy in (Argmax(), Sample(), Beam(2)):
        for c in decode_hole(tb, [ctx], a, strategy=strategy, min_tokens=g.n_tokens + 2, max_tokens=12, rng=0):
            assert c.n_tokens >= g.n_tokens + 2


def _literal(tb, text, exclude_pieces=()):
    """A literal language whose only tokenization is the given tokens (byte tokens excluded)."""
    excl = list(range(4, 260)) + [tb.tokenize(p)[0] for p in exclude_pieces]
    return auto(tb, dfa_literals([text]), exclude=excl)


def test_stop_at_inside_a_token_rolls_back_the_context(tb):
    ctx = prompt(tb)
    # only ". " can produce the period: the stop phrase ends inside that token
    a = _literal(tb, b"hello world. yes", exclude_pieces=[b"."])
    [c] = decode_hole(tb, [ctx], a, stops=[Stop(".", keep=True)], forced_text=False)
    assert c.value == b"hello world." and c.ending == "stop"
    assert tb.piece(c.tokens[-1]) == b". "
    check(tb, c, ctx)
    assert c.context[-1] == tb.tokenize(".")[0]
    [d] = decode_hole(tb, [ctx], a, stops=[Stop(".", keep=False)], forced_text=False)
    assert d.value == b"hello world"
    check(tb, d, ctx)
    assert d.context == ctx + c.tokens[:-1]


def test_stop_before_across_tokens(tb):
    ctx = prompt(tb)
    a = _literal(tb, b"hello world", exclude_pieces=[b" "])
    toks, _ = brute_argmax(tb, ctx, a)
    assert [tb.piece(t) for t in toks] == [b"hello", b" world"]
    for strategy in (Argmax(), Sample(), Beam(2)):
        out = decode_hole(tb, [ctx], a, stops=[(b"o w", False)], strategy=strategy, rng=0, forced_text=False)
        for c in out:
            assert c.value == b"hell" and c.ending == "stop"
            check(tb, c, ctx)  # "hello" was dropped and "hell" re-tokenized
    [c] = decode_hole(tb, [ctx], a, stops=[Stop("o w", keep=True), Stop("ld", keep=True)], forced_text=False)
    assert c.value == b"hello w"


def test_unconstrained_stop_and_per_branch_stops(tb):
    ctx = prompt(tb)
    [free] = decode_hole(tb, [ctx], None, max_tokens=40)
    assert len(free.value) > 4
    phrase = free.value[2:4]
    out = decode_hole(tb, [ctx, ctx], None, stops=[[(phrase, True)], []], max_tokens=40)
    assert out[0].value == free.value[: free.value.find(phrase) + 2] and out[0].ending == "stop"
    assert out[1].value == free.value
    check(tb, out[0], ctx)


def test_automaton_stop_state_ends_the_hole(tb):
    ctx = prompt(tb)
    a = auto(tb, dfa_until(ord(".")))
    [c] = decode_hole(tb, [ctx], a, max_tokens=60)
    assert c.value.endswith(b".") and c.ending == "stop"


def test_max_len(tb):
    ctx = prompt(tb)
    [c] = decode_hole(tb, [ctx], auto(tb, dfa_int()), max_len=len(ctx) + 2)
    assert c.ending in ("max_len", "eos") and len(c.context) <= len(ctx) + 2
    for c in decode_hole(tb, [ctx], None, max_len=len(ctx) + 3, strategy=Beam(2)):
        assert len(c.context) <= len(ctx) + 3
    [c] = decode_hole(tb, [ctx], None, max_len=len(ctx))
    assert c.ending == "max_len" and c.tokens == []


def test_score_options(tb):
    ctx = prompt(tb)
    opts = [tb.tokenize(" positive"), tb.tokenize(" negative"), tb.tokenize(" neutral is ok"), []]
    got = score_options(tb, ctx, opts)
    for k, o in enumerate(opts):
        cur, lp = list(ctx), 0.0
        for t in o:
            lp += lsm(tb.reference_logits(cur))[t]
            cur.append(t)
        assert got[k] == pytest.approx(lp, abs=1e-4)


def test_parse_strategy_and_bad_arguments(tb):
    assert parse_strategy("argmax") == Argmax()
    assert parse_strategy("beam", n=3) == Beam(3)
    assert parse_strategy("sample", temperature=0.5, n=4, seed=1) == Sample(0.5)
    with pytest.raises(DecodeError):
        parse_strategy("greedy_plus")
    with pytest.raises(DecodeError):
        Sample(top_p=0)
    with pytest.raises(DecodeError):
        decode_hole(tb, [prompt(tb)] * 2, [None], max_tokens=3)
    assert decode_hole(tb, [], None) == []


def test_mask_cache_calls_allowed_once_per_mask(tb):
    a = auto(tb, dfa_len_lt(30))
    decode_hole(tb, [prompt(tb)], a)
    calls = a.allowed_calls
    decode_hole(tb, [prompt(tb)], a)
    assert a.allowed_calls == calls
    assert calls <= len(a.masks) + 1


def test_forced_text_is_fast_forwarded_in_one_batch(tb):
    # a shared literal prefix, a choice, a shared literal suffix: byte tokens stay allowed, so no single token
    # is ever forced, but the text is
    names = [b"Alice", b"Bob", b"Ann"]
    words = [b'{"name": "' + n + b'", "age": 42}' for n in names]
    a = auto(tb, dfa_literals(words))
    assert a.forced(a.initial) < 0
    ctx = prompt(tb)
    for strategy in (Argmax(), Sample(), Beam(2)):
        tb.stats.reset()
        out = decode_hole(tb, [ctx], a, strategy=strategy, rng=0)
        for c in out:
            assert c.value in words
            check(tb, c, ctx)
            assert c.tokens[:4] == tb.tokenize(b'{"name": "')  # the model's own tokenization of forced text
        if not isinstance(strategy, Beam):
            assert tb.stats.eval_calls <= 3  # the name's choice costs a step or two; everything else is forced
    tb.stats.reset()
    [slow] = decode_hole(tb, [ctx], a, forced_text=False)
    assert slow.value in words and tb.stats.eval_calls > 8
    # beam scores still count every forced token
    [b, *_] = decode_hole(tb, [ctx], a, strategy=Beam(2))
    cur, lp = list(ctx), 0.0
    for t in b.tokens + [tb.eos_id]:
        lp += lsm(tb.reference_logits(cur))[t]
        cur.append(t)
    assert b.logprob == pytest.approx(lp, abs=1e-4)


def test_forced_text_respects_budget_and_stops(tb):
    words = [b"hello world. yes"]
    a = auto(tb, dfa_literals(words))
    ctx = prompt(tb)
    [c] = decode_hole(tb, [ctx], a, stops=[Stop(".", keep=False)])
    assert c.value == b"hello world" and c.ending == "stop"
    check(tb, c, ctx)
    [c] = decode_hole(tb, [ctx], a, max_tokens=len(tb.tokenize(words[0])))
    assert c.value == words[0]


def test_logits_processor_masks_like_the_decoder(tb):
    from lmqc.runtime.processor import AutomatonLogitsProcessor

    a = auto(tb, dfa_int())
    ctx = prompt(tb)
    [ref] = decode_hole(tb, [ctx], a, forced_text=False, max_tokens=50)
    proc = AutomatonLogitsProcessor(a, pieces=tb.piece)
    ids = list(ctx)
    while True:  # a greedy loop like llama-cpp-python's, with the processor in front of the sampler
        scores = proc(np.asarray(ids, np.intc), tb.reference_logits(ids).copy())
        tok = int(np.argmax(scores))
        if tok == tb.eos_id:
            break
        ids.append(tok)
    assert ids[len(ctx) :] == ref.tokens and proc.value == ref.value
    # a dense automaton masks through the complement
    d = AutomatonLogitsProcessor(auto(tb, dfa_len_lt(40)))
    s = d(np.asarray(ctx, np.intc), tb.reference_logits(ctx).copy())
    assert np.isneginf(s[[0, 1, 3]]).all() and np.isfinite(s[300])


def test_other_end_of_generation_tokens_end_unconstrained_holes(tb):
    ctx = prompt(tb)
    tb._bigram[:, 3] = 50.0  # a control token the model loves
    tb.eog_ids = np.array([3], np.int32)  # ... that marks the end of a turn
    for strategy in (Argmax(), Sample(), Beam(2)):
        out = decode_hole(tb, [ctx], None, strategy=strategy, rng=0)
        assert out[0].ending == "eos" and out[0].tokens == []
    [c] = decode_hole(tb, [ctx], None, min_tokens=2, max_tokens=4)
    assert 3 not in c.tokens and c.n_tokens >= 2


@pytest.mark.parametrize("seed", range(4))
def test_randomized_invariants(seed):
    """Random languages x strategies x token windows x stops x healing: every completion keeps the decoder's
    invariants (among them LMQL's stop rule: the value is cut at the first occurrence of the stop phrase that
    completes at or after ``min_tokens`` value tokens)."""
    import random

    from lmqc.errors import DecodeError

    rnd = random.Random(seed)
    alphabet = 'ab .\n{}"0123456789éhelowrd'
    for _ in range(40):
        tb = TinyBackend(seed=rnd.randrange(5), n_seq=rnd.choice([2, 4, 8]), n_batch=rnd.choice([4, 16, 64]))
        kind = rnd.randrange(4)
        if kind == 0:
            words = sorted({"".join(rnd.choice(alphabet) for _ in range(rnd.randint(1, 8))).encode() for _ in range(4)})
            dfa = dfa_literals(words)
        elif kind == 1:
            dfa = dfa_len_lt(rnd.randint(2, 15))
        elif kind == 2:
            dfa = dfa_digits(rnd.randint(1, 7))
        else:
            dfa = None
        excl = list(range(4, 260)) if rnd.random() < 0.3 else []
        a = auto(tb, dfa, exclude=excl) if dfa is not None else None
        strategy = rnd.choice([Argmax(), Sample(), Sample(0.7, top_k=3), Sample(1.2, top_p=0.7), Beam(rnd.randint(1, 4))])
        B = rnd.randint(1, 3)
        ctxs = [prompt(tb, rnd.choice(["Q: hi\nA:", "hello world ", '{"name": ', "the the", "A: "])) for _ in range(B)]
        maxt = rnd.choice([None, 2, 5, 12])
        mint = min(rnd.choice([0, 0, 1, 3, 6]), 12 if maxt is None else maxt)
        stops = [] if rnd.random() < 0.6 else [Stop(rnd.choice([".", " ", "o", "0", "ll", "\n"]), rnd.random() < 0.5)]
        max_len = rnd.choice([None, len(ctxs[0]) + 4])
        heal = rnd.random() < 0.4
        try:
            out = decode_hole(
                tb, ctxs, a, strategy=strategy, min_tokens=mint, max_tokens=maxt, stops=stops, max_len=max_len,
                rng=rnd.randrange(100), forced_text=rnd.random() < 0.7, heal=heal,
            )
        except DecodeError:
            continue  # e.g. the language needs more tokens than the budget allows
        for c in out:
            ctx = ctxs[c.parent]
            assert tb.detokenize(c.context) == tb.detokenize(ctx) + c.value
            assert c.context[: len(ctx) - 1] == ctx[:-1]
            if not heal:
                check(tb, c, ctx)
            # a healed first token that only re-spells the prompt's last token is not a value token
            n_value = c.n_tokens - (heal and bool(c.tokens) and tb.piece(c.tokens[0]) == tb.piece(ctx[-1]))
            if maxt is not None:
                assert n_value <= maxt
            if c.ending in ("eos", "stop"):
                assert n_value >= mint, c
            if c.ending in ("eos", "max_tokens") and a is not None and not stops:
                assert a.accepts(c.tokens) if not heal else a.accepts(tb.tokenize(c.value)) or c.value == b"", c
            if stops:
                healed = tb.piece(ctx[-1]) if heal else b""
                want, stopped = stop_reference(tb, c.tokens, [(stops[0].phrase, stops[0].keep)], mint, healed)
                assert (c.value, c.ending == "stop") == (want, stopped), c
        if isinstance(strategy, Beam):
            assert [c.score for c in out] == sorted((c.score for c in out), reverse=True)


def test_token_healing(tb):
    ctx = prompt(tb, "Q: say hello\nA: hello ")
    assert tb.piece(ctx[-1]) == b" "
    # unconstrained: the first token re-spells the space, e.g. " world"; greedy over exactly those tokens
    [c] = decode_hole(tb, [ctx], None, heal=True, max_tokens=6)
    assert c.context[: len(ctx) - 1] == ctx[:-1]
    assert tb.detokenize(c.context) == tb.detokenize(ctx) + c.value
    first = tb.piece(c.tokens[0])
    assert first.startswith(b" ")
    row = tb.reference_logits(ctx[:-1])
    cands = [t for t in range(tb.n_vocab) if tb.piece(t).startswith(b" ") and t not in (0, 1, 2, 3)]
    assert c.tokens[0] == max(cands, key=lambda t: row[t])
    # constrained: " ?[0-9]+" after a prompt ending in a space; values still satisfy the automaton
    a = auto(tb, dfa_int())
    for strategy in (Argmax(), Sample(), Beam(3)):
        for c in decode_hole(tb, [ctx], a, strategy=strategy, heal=True, rng=0, max_tokens=6):
            assert tb.detokenize(c.context) == tb.detokenize(ctx) + c.value
            assert regex_ok(r" ?[0-9]+", c.value), c.value
            assert tb.piece(c.tokens[0]).startswith(b" ")
    # a stop phrase inside the healed token: the prompt's space survives in the context
    [c] = decode_hole(tb, [ctx], None, heal=True, stops=[(first[1:2], False)], max_tokens=6)
    assert c.value == b"" and c.ending == "stop"
    assert tb.detokenize(c.context) == tb.detokenize(ctx)


# -- token healing and the token window ----------------------------------------------------------------------


def _favour(tb, prev, tok, by=60.0):
    """Make ``tok`` the model's clear favourite after token ``prev`` (the tiny model's bigram table)."""
    tb._bigram[prev, tok] = by


def test_healed_token_respelling_only_the_prompt_is_not_a_value_token(tb):
    ctx = prompt(tb, "Q: say hello\nA: hello ")
    space = ctx[-1]
    assert tb.piece(space) == b" "
    _favour(tb, ctx[-2], space)  # after "hello" the model wants the bare space back: it carries no value text
    for strategy in (Argmax(), Sample(), Beam(2)):
        for c in decode_hole(tb, [ctx], None, strategy=strategy, heal=True, min_tokens=3, max_tokens=3, rng=0):
            assert c.tokens[0] == space and c.n_tokens == 4  # 3 value tokens after the re-spelled space
            assert c.value == tb.detokenize(c.tokens[1:]) and c.ending == "max_tokens"
            assert tb.detokenize(c.context) == tb.detokenize(ctx) + c.value
    # constrained: [0-9]{3} with single-digit tokens only needs 3 tokens; the bare space still costs nothing
    multi = [t for t in range(260, tb.n_vocab) if tb.piece(t).strip().isdigit() and len(tb.piece(t).strip()) > 1]
    a = auto(tb, dfa_digits(3), exclude=multi)
    assert a.min_tokens_to_end[a.initial] == 3
    for strategy in (Argmax(), Sample(), Beam(2)):
        for c in decode_hole(tb, [ctx], a, strategy=strategy, heal=True, max_tokens=3, rng=0):
            assert c.tokens[0] == space and c.n_tokens == 4 and len(c.value) == 3 and c.value.isdigit()
            assert tb.detokenize(c.context) == tb.detokenize(ctx) + c.value


def test_healed_token_carrying_value_text_counts_once(tb):
    ctx = prompt(tb, "Q: say hello\nA: hello ")
    world = tb.tokenize(" world")[0]
    _favour(tb, ctx[-2], world)
    [c] = decode_hole(tb, [ctx], None, heal=True, min_tokens=3, max_tokens=3)
    assert c.tokens[0] == world and c.n_tokens == 3 and c.value.startswith(b"world")
    assert tb.detokenize(c.context) == tb.detokenize(ctx) + c.value


# -- stop phrases before a token minimum -----------------------------------------------------------------------


def stop_reference(tb, tokens, stops, min_tokens, healed=b""):
    """LMQL's rule, by brute force: the value is cut at the first occurrence of a stop phrase that completes in a
    token after which the value has at least ``min_tokens`` tokens (earliest such token; among occurrences
    ending in it, the earliest start). Returns ``(value, stopped)``. With ``healed``, the first token re-spells
    those prompt bytes: they are not value bytes, and a first token made of nothing else is not a value token."""
    pieces = [tb.piece(t) for t in tokens]
    counts = []
    n = 0
    for k, p in enumerate(pieces):
        if k == 0 and healed:
            assert p.startswith(healed)
            pieces[0] = p = p[len(healed) :]
            n += 1 if p else 0
        else:
            n += 1
        counts.append(n)
    full = b"".join(pieces)
    ends = np.cumsum([len(p) for p in pieces]).tolist()
    best = None
    for phrase, keep in stops:
        ph = phrase.encode() if isinstance(phrase, str) else phrase
        for j in range(len(full) - len(ph) + 1):
            if full[j : j + len(ph)] != ph:
                continue
            k = next(i for i, e in enumerate(ends) if e >= j + len(ph))  # the token completing the occurrence
            if counts[k] >= min_tokens and (best is None or (k, j) < best[:2]):
                best = (k, j, j + len(ph) if keep else j)
    return (full, False) if best is None else (full[: best[2]], True)


def _phrase_before_and_after(tb, tokens, k):
    """A one-character ASCII phrase in one of the first k-1 tokens and again in a later one (or None)."""
    pieces = [tb.piece(t) for t in tokens]
    early, late = b"".join(pieces[: k - 1]), b"".join(pieces[k - 1 :])
    return next((chr(b) for b in early if 32 < b < 127 and bytes([b]) in late), None)


@pytest.mark.parametrize("keep", [True, False])
@pytest.mark.parametrize("compiled", [False, True])
def test_stop_phrase_before_min_tokens_is_ignored(keep, compiled):
    tb = TinyBackend(n_seq=8, n_batch=64)
    tb._eos_base = np.float32(-100.0)  # no end of sequence: the hole ends at a stop phrase or its budget
    ctx = prompt(tb)
    k = 5
    # compiled: the compiler's automata over the tiny vocabulary (any text = valid UTF-8), else unconstrained
    any_text = TokenAutomaton.build(ByteDFA.from_regex(r"(.|\n)*"), tb.vocabulary) if compiled else None
    [free] = decode_hole(tb, [ctx], any_text, min_tokens=16, max_tokens=16)  # the greedy text, no stops
    phrase = _phrase_before_and_after(tb, free.tokens, k)
    assert phrase is not None
    first = free.value.find(phrase.encode())
    assert first < len(tb.detokenize(free.tokens[: k - 1]))  # the phrase occurs before the minimum ...
    stop = Stop(phrase, keep)
    # a hole constrained only by the stop (STOPS_AT/STOPS_BEFORE and len(TOKENS(X)) >= k): the runtime decodes
    # the compiler's automaton of the stop as any text and applies the stop itself
    a = TokenAutomaton.build(ByteDFA.from_ir(HoleIR("X", stops=(stop,))), tb.vocabulary) if compiled else None
    for strategy in (Argmax(), Beam(1), Beam(3), Sample(), Sample(0.7, top_k=5)):
        out = decode_hole(tb, [ctx] * 2, a, strategy=strategy, stops=[stop], min_tokens=k, max_tokens=16, rng=0)
        for c in out:
            want, stopped = stop_reference(tb, c.tokens, [(phrase, keep)], k)
            assert (c.value, c.ending == "stop") == (want, stopped), c
            assert c.n_tokens >= k
            check(tb, c, ctx)
        if isinstance(strategy, Argmax) or strategy == Beam(1):
            c = out[0]  # ... so generation went on: the greedy text, cut at the phrase's first later occurrence
            assert c.ending == "stop" and c.tokens == free.tokens[: len(c.tokens)]
            assert c.value.count(phrase.encode()) >= (2 if keep else 1)  # the early phrase stayed in the value
            head, tail = tb.detokenize(free.tokens[: k - 1]), tb.detokenize(free.tokens[k - 1 :])
            i = tail.find(phrase.encode())
            assert c.value == head + tail[: i + 1 if keep else i]
    # without a minimum the first occurrence ends the hole
    [c] = decode_hole(tb, [ctx], a, stops=[stop], max_tokens=16)
    assert c.ending == "stop" and c.value == free.value[: first + 1 if keep else first]


def test_automaton_stops_are_blocked_before_min_tokens(tb):
    """An automaton with a language of its own and a stop (``[^.]*\\.``) cannot say where it would be had a
    phrase not counted: before the minimum its stops are blocked instead (sound, stricter than LMQL; see
    ``decode._Hole``). The value still satisfies the language and has at least ``min_tokens`` tokens."""
    dots = [t for t in range(4, tb.n_vocab) if b"." in tb.piece(t)]
    tb._bigram[:, dots] += 6.0  # periods are attractive: without a minimum the value ends early
    ctx = prompt(tb)
    a = auto(tb, dfa_until(ord(".")))
    [early] = decode_hole(tb, [ctx], a, stops=[Stop(".", keep=True)])
    assert early.n_tokens < 5 and early.value.endswith(b".")
    for strategy in (Argmax(), Sample(), Beam(2)):
        for c in decode_hole(tb, [ctx], a, strategy=strategy, stops=[Stop(".", keep=True)], min_tokens=5, rng=0):
            assert c.ending == "stop" and c.n_tokens >= 5
            assert c.value.endswith(b".") and b"." not in c.value[:-1]
            check(tb, c, ctx)
