"""Token automaton: sound and complete against a brute-force byte walk, serialization, goldens, errors."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from _oracle import all_strings, constraints, stream_status, vocabularies
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lmqc.compiler.automaton import UNREACHABLE, TokenAutomaton
from lmqc.compiler.bytedfa import ByteDFA
from lmqc.compiler.ir import HoleIR, Stop
from lmqc.compiler.lower import lower_hole
from lmqc.compiler.nodes import And, IsInt, LenCmp, OneOf, Regex, StopsAt, StopsBefore
from lmqc.compiler.vocabulary import Vocabulary
from lmqc.errors import ArtifactError, ConstraintError

GOLDEN = Path(__file__).parent / "fixtures" / "automata"
UPDATE = os.environ.get("LMQC_UPDATE_GOLDEN") == "1"


def golden(name: str, text: str) -> None:
    path = GOLDEN / name
    if UPDATE or not path.exists():
        path.write_text(text + "\n")
    assert path.read_text() == text + "\n"


def walk_bytes(dfa: ByteDFA, state: int, data: bytes) -> int:
    """Brute force: the DFA state after ``data`` (stopped absorbs everything), -1 on reject."""
    for b in data:
        if dfa.stopped[state]:
            return state
        state = int(dfa.trans[state, dfa.classes[b]])
        if state < 0:
            return -1
    return state


def expected_allowed(dfa: ByteDFA, vocab: Vocabulary, ds: int) -> list[int]:
    if dfa.stopped[ds]:
        return []
    out = [
        t for t in range(vocab.size) if not vocab.never[t] and walk_bytes(dfa, ds, vocab.piece(t)) >= 0
    ]
    if dfa.final[ds]:
        out.append(vocab.eos_id)
    return sorted(out)


def check_against_dfa(a: TokenAutomaton, dfa: ByteDFA, vocab: Vocabulary, depth: int = 3) -> None:
    """Explore token paths (BFS, bounded) and compare every state's mask/flags with the byte walk."""
    frontier = [(a.initial, dfa.initial)]
    seen = {a.initial}
    for _ in range(depth):
        nxt = []
        for s, ds in frontier:
            want = expected_allowed(dfa, vocab, ds)
            got = a.allowed(s)
            assert got.dtype == np.int32 and list(got) == want
            assert a.is_final(s) == bool(dfa.final[ds])
            assert a.is_stopped(s) == bool(dfa.stopped[ds])
            assert a.allowed(s) is a.masks[a.mask_id(s)]
            non_eos = [t for t in want if t != vocab.eos_id]
            assert a.forced(s) == (non_eos[0] if len(non_eos) == 1 and not a.is_final(s) else -1)
            assert a.step(s, vocab.eos_id) == -1
            for t in range(vocab.size):
                t2 = a.step(s, t)
                if t in non_eos:
                    ds2 = walk_bytes(dfa, ds, vocab.piece(t))
                    assert t2 >= 0
                    if t2 not in seen:
                        seen.add(t2)
                        nxt.append((t2, ds2))
                elif t != vocab.eos_id:
                    assert t2 == -1
        frontier = nxt


def tokenizations_reach_final(a: TokenAutomaton, vocab: Vocabulary, data: bytes) -> bool:
    """Is there a token path spelling exactly ``data`` that ends in a final state? (DP over positions)"""
    pieces = [(t, vocab.piece(t)) for t in range(vocab.size) if not vocab.never[t]]
    states: list[set[int]] = [set() for _ in range(len(data) + 1)]
    states[0].add(a.initial)
    for i in range(len(data)):
        for s in states[i]:
            for t, p in pieces:
                if data.startswith(p, i):
                    s2 = a.step(s, t)
                    if s2 >= 0:
                        states[i + len(p)].add(s2)
    return any(a.is_final(s) for s in states[-1])


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(constraints(), vocabularies())
def test_sound_and_complete(c, vocab_spec):
    pieces, specials, byte_complete = vocab_spec
    vocab = Vocabulary(pieces, 0, specials)
    ir = lower_hole("X", c)
    try:
        dfa = ByteDFA.from_ir(ir)
    except ConstraintError:
        return  # empty language (checked against brute force in test_bytedfa)
    try:
        a = TokenAutomaton.build(dfa, vocab)
    except ConstraintError as e:
        assert not byte_complete, e  # with every single byte available a live state can always continue
        assert "cannot express" in str(e)
        return
    if a.unconstrained:
        assert list(a.allowed(0)) == sorted([t for t in range(vocab.size) if not vocab.never[t]] + [0])
        return
    check_against_dfa(a, dfa, vocab)
    # min_tokens_to_end: 0 exactly at ends, and one step decreases it by at most 1
    for s in range(a.n_states):
        m = int(a.min_tokens_to_end[s])
        assert (m == 0) == (a.is_final(s) or a.is_stopped(s))
        if 0 < m < UNREACHABLE:
            assert min(int(a.min_tokens_to_end[a.step(s, t)]) for t in a.allowed(s)) == m - 1
    # every short value of the language has a token path (always when the vocabulary has all bytes)
    if byte_complete and not ir.stops:
        for text in all_strings(3):
            if stream_status(ir, text) == "final":
                assert tokenizations_reach_final(a, vocab, text.encode()), text
    # vectorized stepping agrees with step
    states = np.arange(a.n_states, dtype=np.int32).repeat(vocab.size)
    toks = np.tile(np.arange(vocab.size, dtype=np.int32), a.n_states)
    want = [a.step(int(s), int(t)) for s, t in zip(states, toks, strict=True)]
    assert a.step_many(states, toks).tolist() == want
    # round trip through plain arrays
    b = TokenAutomaton.from_arrays(a.to_arrays(), vocab)
    assert str(b) == str(a)
    assert all(np.array_equal(x, y) for x, y in zip(a.masks, b.masks, strict=True))


def small_vocab() -> Vocabulary:
    pieces = [b"</s>", b"1", b"2", b"12", b" ", b" 1", b"a", b".", b"a.b", b"", b"\xc3", b"\xa9", "é".encode(), b"\n"]
    return Vocabulary(pieces, 0)


def build(c, vocab=None) -> TokenAutomaton:
    return TokenAutomaton.build(ByteDFA.from_ir(lower_hole("X", c)), vocab or small_vocab())


def test_golden_automata():
    golden("tok_int.txt", str(build(IsInt("X"))))
    golden("tok_stops_at.txt", str(build(StopsAt("X", "."))))
    golden("tok_stops_before_len.txt", str(build(And((StopsBefore("X", "."), LenCmp("X", "<", 3))))))
    golden("tok_choice.txt", str(build(OneOf("X", ("é", "a.", "12")))))
    golden("tok_unconstrained.txt", str(build(None)))


def test_stop_mid_token_and_forced():
    a = build(StopsAt("X", "."))
    s = a.step(a.initial, 8)  # 'a.b' crosses the stop phrase
    assert a.is_stopped(s) and len(a.allowed(s)) == 0 and a.min_tokens_to_end[s] == 0
    c = build(OneOf("X", ("12.",)))
    assert c.forced(c.initial) == -1  # '1' and '12' both allowed
    s = c.step(c.initial, 3)
    assert c.forced(s) == 7 and list(c.allowed(s)) == [7]


def test_vocabulary_inexpressible_names_pending_text():
    vocab = Vocabulary([b"</s>", b"ab", b"c"], 0)
    with pytest.raises(ConstraintError) as e:
        TokenAutomaton.build(ByteDFA.from_ir(HoleIR("X", Regex("X", "abd|c"))), vocab, name="X")
    assert "'ab'" in str(e.value) and "cannot express" in str(e.value)


def test_from_arrays_rejects_other_vocabulary_and_corruption():
    a = build(IsInt("X"))
    arrays = a.to_arrays()
    other = Vocabulary([b"</s>", b"1"], 0)
    with pytest.raises(ArtifactError):
        TokenAutomaton.from_arrays(arrays, other)
    bad = dict(arrays)
    bad["next_table"] = arrays["next_table"] + 100
    with pytest.raises(ArtifactError):
        TokenAutomaton.from_arrays(bad, small_vocab())
    del bad["tok_seq"]
    with pytest.raises(ArtifactError):
        TokenAutomaton.from_arrays(bad, small_vocab())


def test_vocabulary_roundtrip_and_fingerprint():
    v = Vocabulary([b"</s>", b"a", b"", b"<c>", "é".encode()], 0, [3])
    assert v.size == 5 and v.piece(4) == "é".encode()
    assert v.never.tolist() == [True, False, True, True, False]
    w = Vocabulary.from_arrays(v.to_arrays())
    assert w.fingerprint == v.fingerprint
    assert Vocabulary([b"</s>", b"a", b"", b"<c>", b"e"], 0, [3]).fingerprint != v.fingerprint
    assert Vocabulary([b"</s>", b"a", b"", b"<c>", "é".encode()], 0, []).fingerprint != v.fingerprint


def test_len_bound_tables_stay_small():
    rng = np.random.default_rng(1)
    alphabet = list("abc .\n") + ["é", "中"]
    pieces = [b"</s>"] + [bytes([b]) for b in range(256)]
    pieces += ["".join(rng.choice(alphabet, size=rng.integers(1, 9))).encode() for _ in range(3000)]
    vocab = Vocabulary(pieces, 0)
    masks = []
    for n in (50, 200, 800):
        a = TokenAutomaton.build(ByteDFA.from_ir(HoleIR("X", LenCmp("X", "<", n), (Stop("\n", True),))), vocab)
        masks.append(a.n_masks)
        assert a.nbytes < 200 * n * 4 * 80  # linear in n
    assert masks[0] == masks[1] == masks[2]  # the distinct masks do not grow with the bound


# -- the pruned trie walk and the large-bound counter ---------------------------------------------------------

_NARROW = [IsInt("X"), OneOf("X", ("12", "1 2", "a1")), Regex("X", "[0-9]{2,4}"), Regex("X", "a[b1]*"), LenCmp("X", "<", 4)]


@st.composite
def _wide_vocabularies(draw):
    """Many pieces over a small alphabet: a narrow language leaves most prefixes dead (the range-walk path)."""
    pieces = draw(st.lists(st.text(alphabet=list("ab1 2.é"), min_size=1, max_size=5).map(str.encode),
                           min_size=40, max_size=120))
    return [b"</s>", *pieces, *(bytes([b]) for b in range(256))]


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(_NARROW), _wide_vocabularies())
def test_pruned_walk_matches_brute_force(c, pieces):
    vocab = Vocabulary(pieces, 0, [0])
    dfa = ByteDFA.from_ir(lower_hole("X", c))
    a = TokenAutomaton.build(dfa, vocab)
    check_against_dfa(a, dfa, vocab, depth=4)


@pytest.mark.parametrize(
    ("counted", "expanded"),
    [
        ("[a-z]{0,300}", "[a-z]{0,300}"),
        ("[^x]{2,260}", "[^x]{2,260}"),
        (".{257}", ".{257}"),
        ("7{3,300}", "7{3,300}"),
    ],
)
def test_large_bound_counter_is_the_regex_language(counted, expanded):
    from lmqc.compiler import charlang

    fast = charlang._counted_class(counted)
    assert fast is not None
    slow = charlang.minimize(charlang.regex_dfa(expanded))  # interegular's construction of the same language
    assert charlang.minimize(fast) is fast
    assert np.array_equal(fast.starts, slow.starts) and np.array_equal(fast.iclass, slow.iclass)
    assert np.array_equal(fast.trans, slow.trans) and np.array_equal(fast.final, slow.final)


@pytest.mark.parametrize("pattern", ["[a-z]{0,20}", "(ab){0,300}", "[a-z]{0,300}x", "a|[a-z]{0,300}", "[a-z]*"])
def test_large_bound_counter_only_for_one_class(pattern):
    from lmqc.compiler import charlang

    assert charlang._counted_class(pattern) is None


def test_large_bound_token_automaton():
    vocab = Vocabulary([b"</s>", b"a", b"ab", b"abc", b"zz", b"a1", b"\xc3\xa9", b"b"], 0, [0])
    dfa = ByteDFA.from_ir(HoleIR("X", Regex("X", "[a-z]{0,5000}")))
    a = TokenAutomaton.build(dfa, vocab)
    assert a.n_states == 5001
    s = a.initial
    for _ in range(1666):
        s = a.step(s, 3)  # "abc"
    assert s >= 0 and a.is_final(s)
    assert a.step(s, 3) == -1 and a.step(s, 2) >= 0  # 4998 letters: two more fit, three do not
    assert a.step(a.initial, 5) == -1 and a.step(a.initial, 6) == -1  # "a1", "é"


# -- small-automaton list paths build exactly what the NumPy paths build -----------------------------------------


def _build_patched(dfa: ByteDFA, vocab: Vocabulary, monkeypatch, patches: list) -> dict[str, np.ndarray] | str:
    with monkeypatch.context() as m:
        for module, name, value in patches:
            m.setattr(module, name, value)
        try:
            return TokenAutomaton.build(dfa, vocab).to_arrays()
        except ConstraintError as e:
            return str(e)


def _vocab(spec) -> Vocabulary:
    """The vocabulary of a ``vocabularies()``/``_wide_vocabularies()`` draw."""
    pieces, specials = (spec[0], spec[1]) if isinstance(spec, tuple) else (spec, [0])
    return Vocabulary(pieces, 0, specials)


def _vocab_and_dfa(c, spec) -> tuple[Vocabulary, ByteDFA | None]:
    """The vocabulary of a draw and the byte DFA of ``c`` (None if ``c`` has no character language)."""
    try:
        dfa = ByteDFA.from_ir(lower_hole("X", c))
    except ConstraintError:
        dfa = None
    return _vocab(spec), dfa


def _builds_agree(monkeypatch, c, spec, patches_a: list, patches_b: list) -> None:
    """The automaton of ``c`` over ``spec`` is the same array for array under both sets of module patches."""
    vocab, dfa = _vocab_and_dfa(c, spec)
    if dfa is None:
        return
    a = _build_patched(dfa, vocab, monkeypatch, patches_a)
    b = _build_patched(dfa, vocab, monkeypatch, patches_b)
    if isinstance(a, str) or isinstance(b, str):
        assert a == b
        return
    assert a.keys() == b.keys()
    for k in a:
        assert np.array_equal(a[k], b[k]) and a[k].dtype == b[k].dtype, k


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(st.one_of(constraints(), st.sampled_from(_NARROW)), st.one_of(vocabularies(), _wide_vocabularies()))
def test_small_paths_build_the_numpy_automaton(monkeypatch, c, spec):
    from lmqc.compiler import automaton, charlang

    # every threshold at zero: the NumPy paths throughout
    _builds_agree(monkeypatch, c, spec, [], [(automaton, "_SMALL_TABLE", 0), (charlang, "_SMALL_ROWS", 0)])


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(st.one_of(constraints(), st.sampled_from(_NARROW)), st.one_of(vocabularies(), _wide_vocabularies()))
def test_sparse_walk_depths_build_the_dense_automaton(monkeypatch, c, spec):
    from lmqc.compiler import automaton, charlang

    # a large schema's depths go through _sparse_step; here every depth does (or none), on small DFAs
    common = [(charlang, "_SMALL_ROWS", 0), (automaton, "_SPARSE_DENSITY", 1.0)]
    _builds_agree(monkeypatch, c, spec, [*common, (automaton, "_SPARSE_CELLS", -1)],
                  [*common, (automaton, "_SPARSE_CELLS", 1 << 62)])


def _same_automaton(a: TokenAutomaton, b: TokenAutomaton, V: int) -> None:
    """``a`` and ``b`` accept the same tokens from the same states into the same states (their sequence columns
    may be numbered differently)."""
    assert a.n_states == b.n_states and a.initial == b.initial
    for name in ("final", "stopped", "mask_of_state", "mask_final", "min_tokens_to_end", "forced_token"):
        assert np.array_equal(getattr(a, name), getattr(b, name)), name
    toks = np.arange(V)
    for s in range(a.n_states):
        assert np.array_equal(a.allowed(s), b.allowed(s))
        states = np.full(V, s)
        assert np.array_equal(a.step_many(states, toks), b.step_many(states, toks))


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(st.one_of(constraints(), st.sampled_from(_NARROW)), st.one_of(vocabularies(), _wide_vocabularies()))
def test_narrow_walk_builds_the_vectorized_automaton(monkeypatch, c, spec):
    from lmqc.compiler import automaton

    vocab, dfa = _vocab_and_dfa(c, spec)
    if dfa is None:
        return
    built = []
    for fanout, visits in ((10**9, 10**9), (-1, 0)):  # the node-by-node walk for every language, then never
        with monkeypatch.context() as m:
            m.setattr(automaton, "_NARROW_FANOUT", fanout)
            m.setattr(automaton, "_NARROW_VISITS", visits)
            try:
                built.append(TokenAutomaton.build(dfa, vocab))
            except ConstraintError as e:
                built.append(str(e))
    if isinstance(built[0], str) or isinstance(built[1], str):
        assert built[0] == built[1]
        return
    _same_automaton(built[0], built[1], vocab.size)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(st.one_of(constraints(), st.sampled_from([*_NARROW, LenCmp("X", "<", 7), StopsAt("X", ".")])),
       st.one_of(vocabularies(), _wide_vocabularies()))
def test_group_trie_walk_is_the_byte_trie_walk(monkeypatch, c, spec):
    from lmqc.compiler import automaton, vocabulary

    _, dfa = _vocab_and_dfa(c, spec)
    if dfa is None:
        return
    got = []
    for groups in (vocabulary.BYTE_GROUP, np.arange(256, dtype=np.uint8)):  # byte groups, then every byte alone
        with monkeypatch.context() as m:
            m.setattr(vocabulary, "BYTE_GROUP", groups)
            m.setattr(automaton, "BYTE_GROUP", groups)
            m.setattr(automaton, "_GROUP_FIRST", np.unique(groups, return_index=True)[1])
            table, toks, seqs = automaton._walk(dfa, _vocab(spec))  # a fresh vocabulary: its group trie has ``groups``
        # a walk may list tokens of a column no state allows (dead tokens it did not filter): compare the others
        live = (table >= 0).any(axis=0)[seqs]
        toks, seqs = toks[live], seqs[live]
        order = np.argsort(toks, kind="stable")
        got.append((toks[order], table[:, seqs[order]]))
    assert np.array_equal(got[0][0], got[1][0])
    assert np.array_equal(got[0][1], got[1][1])


def test_group_trie_is_smaller_and_only_for_dfas_that_ignore_the_groups():
    from lmqc.compiler import automaton

    words = [b"the", b" the", b"The", b"cat", b" cat", b"12", b"34", b"a.b", "é".encode(), "ü".encode()]
    vocab = Vocabulary([b"</s>", *words], 0, [0])
    lv = vocab.levels
    assert sum(map(len, lv.group_trie.parent)) < sum(map(len, lv.trie.parent))
    for regex, grouped in (("[a-z ]*", True), ("[^.]*", True), ("[a-f]+", False), ("the|cat", False)):
        classes = ByteDFA.from_ir(lower_hole("X", Regex("X", regex))).classes
        assert (automaton._group_classes(classes) is not None) == grouped, regex


def test_narrow_walk_gives_up_on_a_wide_language(monkeypatch):
    from lmqc.compiler import automaton

    vocab = Vocabulary([b"</s>", *(bytes([a, b]) for a in range(97, 123) for b in range(97, 123))], 0, [0])
    dfa = ByteDFA.from_ir(lower_hole("X", Regex("X", "[a-z]*")))
    monkeypatch.setattr(automaton, "_NARROW_FANOUT", 10**9)
    assert automaton._walk_narrow(dfa, vocab) is not None
    monkeypatch.setattr(automaton, "_NARROW_VISITS", 100)  # 26 first bytes x 26 children
    assert automaton._walk_narrow(dfa, vocab) is None
    monkeypatch.setattr(automaton, "_NARROW_FANOUT", 100)
    monkeypatch.setattr(automaton, "_NARROW_VISITS", 10**9)
    assert automaton._walk_narrow(dfa, vocab) is None  # estimated: 26 x 26 nodes below the first bytes


def _on_the_large_path(fn, *args):
    """``fn(*args)`` with the list paths for small tables turned off (hypothesis runs without monkeypatch)."""
    from lmqc.compiler import automaton as A

    small = A._SMALL_TABLE
    try:
        A._SMALL_TABLE = 0
        return fn(*args)
    finally:
        A._SMALL_TABLE = small


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 60), st.integers(1, 9), st.data())
def test_min_tokens_to_end_csr_bfs_matches_list_bfs(n, cols, data):
    """The CSR reverse BFS used on large tables gives the list BFS's distances (UNREACHABLE where no end)."""
    from lmqc.compiler import automaton as A

    table = np.asarray(data.draw(st.lists(st.lists(st.integers(-1, n - 1), min_size=cols, max_size=cols),
                                          min_size=n, max_size=n)), dtype=np.int32)
    end = np.asarray(data.draw(st.lists(st.booleans(), min_size=n, max_size=n)), dtype=bool)
    got = _on_the_large_path(A._min_tokens_to_end, table, end)
    assert got.tolist() == A._min_tokens_to_end_lists(table, end).tolist()


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 60), st.integers(1, 9), st.data())
def test_token_reachable_csr_bfs_matches_list_bfs(n, cols, data):
    """The CSR forward BFS gives the list BFS's order and parents (first frontier position, then sequence)."""
    from lmqc.compiler import automaton as A

    table = np.asarray(data.draw(st.lists(st.lists(st.integers(-1, n - 1), min_size=cols, max_size=cols),
                                          min_size=n, max_size=n)), dtype=np.int32)
    initial = data.draw(st.integers(0, n - 1))
    got = _on_the_large_path(A._token_reachable, table, initial)
    want = A._token_reachable_lists(table, initial)
    for g, w in zip(got, want, strict=True):
        assert g.tolist() == w.tolist()


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(constraints(), vocabularies())
def test_lazy_automaton_is_bisimilar_to_the_eager_one(c, vocab_spec):
    """Above LAZY_STATES the builder lifts states on visit: the same allowed sets, steps and ends as the eager
    automaton from the initial state on, a min_tokens_to_end that never exceeds the eager one, and a round trip
    through plain arrays."""
    from lmqc.compiler.lazy import LazyTokenAutomaton

    pieces, specials, _ = vocab_spec
    vocab = Vocabulary(pieces, 0, specials)
    try:
        dfa = ByteDFA.from_ir(lower_hole("X", c))
        eager = TokenAutomaton.build(dfa, vocab)
    except ConstraintError:
        return
    if eager.unconstrained:
        return
    lazy = LazyTokenAutomaton(dfa, vocab)
    lazy = TokenAutomaton.from_arrays(lazy.to_arrays(), vocab)
    assert isinstance(lazy, LazyTokenAutomaton)
    seen = {(eager.initial, lazy.initial)}
    todo = list(seen)
    while todo:
        e, z = todo.pop()
        assert eager.is_final(e) == lazy.is_final(z) and eager.is_stopped(e) == lazy.is_stopped(z)
        assert eager.allowed(e).tolist() == lazy.allowed(z).tolist()
        assert int(lazy.min_tokens_to_end[z]) <= int(eager.min_tokens_to_end[e]) <= int(lazy.tokens_to_finish[z])
        if 0 < int(lazy.tokens_to_finish[z]) < UNREACHABLE:  # its plan is there to take
            assert min(int(lazy.tokens_to_finish[lazy.step(z, t)]) for t in lazy.allowed(z).tolist()
                       if lazy.step(z, t) >= 0) <= int(lazy.tokens_to_finish[z]) - 1
        toks = [t for t in eager.allowed(e).tolist() if t != vocab.eos_id or not eager.is_final(e)]
        nz = lazy.step_many(np.full(len(toks), z), np.asarray(toks, dtype=np.int32)).tolist()
        for t, z2 in zip(toks, nz, strict=True):
            e2 = eager.step(e, t)
            assert z2 == lazy.step(z, t) and (e2 < 0) == (z2 < 0), t
            if e2 >= 0 and (e2, z2) not in seen:
                seen.add((e2, z2))
                todo.append((e2, z2))
    assert lazy.step(lazy.initial, vocab.size) == -1


def test_builder_switches_to_the_lazy_automaton_above_the_threshold(monkeypatch):
    from lmqc.compiler import lazy

    dfa = ByteDFA.from_ir(lower_hole("X", Regex("X", "[12]+\\.a")))
    assert isinstance(TokenAutomaton.build(dfa, small_vocab()), TokenAutomaton)
    monkeypatch.setattr(lazy, "LAZY_STATES", 0)
    a = TokenAutomaton.build(dfa, small_vocab())
    assert isinstance(a, lazy.LazyTokenAutomaton)
    assert "LazyTokenAutomaton" in str(a)
    s = a.step(a.initial, 3)  # "12"
    assert s >= 0 and not a.is_final(s) and a.step(s, 8) < 0 and a.is_final(a.step(a.step(s, 7), 6))


def test_lazy_automaton_keeps_its_walks_bounded(monkeypatch):
    from lmqc.compiler import lazy

    vocab = Vocabulary([b"</s>", b"a", b"b", b"ab"], 0)
    a = lazy.LazyTokenAutomaton(ByteDFA.from_ir(HoleIR("X", Regex("X", "(ab)+"))), vocab)
    monkeypatch.setattr(lazy, "WALK_BYTES", 1)
    s = a.step(a.initial, 1)
    before = a.allowed(a.initial).tolist()
    a.allowed(s)
    assert len(a._walks) == 1  # the first walk was dropped to make room
    assert a.allowed(a.initial).tolist() == before == [1, 3]  # and is walked again when needed
