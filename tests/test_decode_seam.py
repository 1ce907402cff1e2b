"""The hole-decoding seam: HoleSpec / DecodeRequest / DecoderService, the wire codec, the decoder settings table,
and the mask tables an automaton owns (bounded in bytes)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

import lmqc
from lmqc.compiler.decoders import DECODERS, SETTINGS, parse_decoder
from lmqc.compiler.ir import HoleIR, Stop
from lmqc.errors import DecodeError, QueryTypeError
from lmqc.runtime import protocol
from lmqc.runtime.backend import TinyBackend
from lmqc.runtime.decode import (
    Argmax,
    Beam,
    DecodeRequest,
    DecoderService,
    HoleSpec,
    Sample,
    decode,
    decode_hole,
    parse_strategy,
)
from lmqc.runtime.decode.masks import MaskTables, tables_of
from lmqc.runtime.service import LocalDecoder


@pytest.fixture(scope="module")
def hole() -> tuple[TinyBackend, HoleIR, object]:
    compiled = lmqc.compile('"A: [X]" where STOPS_AT(X, ".") and len(TOKENS(X)) < 12', model="lmqc:tiny", cache=False)
    return TinyBackend(), compiled.holes["X"], compiled.automaton("X")


def test_hole_spec_from_ir_normalizes_and_compares(hole) -> None:
    _, ir, a = hole
    spec = HoleSpec.from_ir(ir, a)
    assert spec.stops == ((b".", True),) and spec.max_tokens == ir.max_tokens and spec.heal
    assert spec == HoleSpec(a, [Stop(".", keep=True)], 0, ir.max_tokens, True) and hash(spec)
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.heal = False  # type: ignore[misc]
    with pytest.raises(DecodeError, match="stop rules"):
        HoleSpec(a, "abc")
    with pytest.raises(DecodeError, match="empty"):
        HoleSpec(a, [("", True)])


def test_request_and_keyword_form_decode_alike(hole) -> None:
    tb, ir, a = hole
    ctx = tb.tokenize("Q: Say hello\nA:", bos=True)
    spec = HoleSpec.from_ir(ir, a)
    for strategy in (Argmax(), Sample(temperature=0.7), Beam(2)):
        req = DecodeRequest.of([ctx, ctx], spec, strategy=strategy, max_len=64, rng=3)
        kw = decode_hole(tb, [ctx, ctx], a, strategy=strategy, stops=ir.stops, max_tokens=ir.max_tokens,
                         heal=True, max_len=64, rng=3)
        assert [(c.parent, c.tokens, c.value) for c in decode(tb, req)] == [(c.parent, c.tokens, c.value) for c in kw]
    with pytest.raises(DecodeError, match="2 branches"):
        DecodeRequest(((1, 2), (1, 3)), (spec,))


def test_local_decoder_is_a_decoder_service(hole) -> None:
    tb, ir, a = hole
    service: DecoderService = LocalDecoder(tb)
    ctx = service.tokenize("Q: hi\nA:", bos=True)
    [c] = service.decode(DecodeRequest.of([ctx], HoleSpec.from_ir(ir, a)))
    assert c.value.endswith(b".") or c.ending != "stop"
    assert service.fingerprint == tb.vocabulary.fingerprint


def test_wire_codec_round_trips_a_request(hole) -> None:
    tb, ir, a = hole
    spec = HoleSpec.from_ir(ir, a)
    other = HoleSpec(None, [(b"\xff\xfe", False)], 2, 5, False)
    req = DecodeRequest(([1, 300], [1, 301]), (spec, other), Sample(0.5, 3, 0.9), 40, np.random.default_rng(7), (0.0, -1.5))
    digest, _ = protocol.automaton_hash(a)
    body = protocol.encode_request(req, [digest, None], "fp")
    assert body["stops"] == [[[".", True]], [[{"b64": "//4="}, False]]] and body["heal"] == [True, False]
    back = protocol.decode_request(body, body["contexts"], {digest: a}.__getitem__)
    assert back.specs == req.specs and back.strategy == req.strategy and back.scores == req.scores
    assert back.max_len == 40 and back.rng.random() == np.random.default_rng(7).random()
    for s in (Argmax(), Beam(3), Sample(1.0, 0, 1.0)):
        assert protocol.decode_strategy(protocol.encode_strategy(s)) == s
    for bad in ({"name": "nucleus"}, {"name": "beam", "n": 0}, {"name": "sample", "seed": 1}, {"name": "beam", "n": True}):
        with pytest.raises(protocol.ProtocolError):
            protocol.decode_strategy(bad)


def test_one_settings_table_for_every_decoder() -> None:
    # every strategy field is a setting of the decoder that builds it; the parser and the CLI read the same table
    for name, cls in (("sample", Sample), ("beam_sample", Beam), ("argmax", Argmax)):
        for f in dataclasses.fields(cls):
            assert f.name in SETTINGS and f.name in DECODERS[name]
    assert DECODERS["beam"] == DECODERS["beam_sample"] - {"temperature", "seed"}  # plain beam search does not sample
    assert parse_decoder("sample(n=2, temperature=0.5, top_k=4)").args == (("n", 2), ("temperature", 0.5), ("top_k", 4))
    assert str(parse_decoder("beam_var(n=3)")) == "beam_var(n=3)" and parse_strategy("beam_var", n=3) == Beam(3)
    for text, msg in (("beam(n=0)", ">= 1"), ("sample(top_p=0)", "top_p"), ("argmax(temperature=1)", "unknown argument"),
                      ("nucleus", "unknown decoder"), ("sample(n=2", "invalid decoder")):
        with pytest.raises(QueryTypeError, match=msg):
            parse_decoder(text)
    with pytest.raises(DecodeError, match="top_p"):
        Sample(top_p=1.5)
    with pytest.raises(DecodeError, match="temperature"):
        Sample(temperature=float("nan"))


def test_mask_tables_are_owned_by_the_automaton_and_bounded(hole, monkeypatch: pytest.MonkeyPatch) -> None:
    tb, ir, a = hole
    ctx = tb.tokenize("Q: Say hello\nA:", bos=True)
    spec = HoleSpec.from_ir(ir, a)
    ref = decode(tb, DecodeRequest.of([ctx], spec))
    tables = tables_of(a)
    assert tables is tables_of(a) and tables.nbytes > 0
    small = MaskTables(limit=4096)  # far below one mask: every new entry drops the others
    monkeypatch.setattr(a, "tables", small)
    assert tables_of(a) is small
    got = decode(tb, DecodeRequest.of([ctx], spec))
    assert [c.tokens for c in got] == [c.tokens for c in ref]
    assert small.nbytes <= max(small.limit, max((m.nbytes for m in small.masks.values()), default=0))


def test_server_keeps_automata_within_a_byte_bound() -> None:
    from lmqc.runtime.server import ServerState

    state = ServerState(TinyBackend(), model="lmqc:tiny", automata_bytes=1)
    try:
        digests = []
        for k in (3, 4, 5):
            auto = lmqc.compile(f'"A: [X]" where len(X) < {k}', model="lmqc:tiny", cache=False).automaton("X")
            digest, arrays = protocol.automaton_hash(auto)
            state.put_automaton(digest, protocol.arrays_to_npz(arrays))
            digests.append(digest)
        assert list(state.automata) == digests[-1:]  # over the bound: only the newest stays
        assert state.info()["automata_bytes"] == state.automata_nbytes() > 1
    finally:
        state.scheduler.close()


def test_piece_ids_match_a_dictionary_of_pieces() -> None:
    from lmqc.runtime.decode.masks import piece_ids

    v = TinyBackend().vocabulary
    offs = v.offsets.astype(np.int64)
    raw = v.buffer.tobytes()
    index: dict[bytes, int] = {}
    for t in range(v.size - 1, -1, -1):  # the reference: lowest id wins, never-tokens excluded
        if not v.never[t]:
            index[raw[offs[t] : offs[t + 1]]] = t
    rng = np.random.default_rng(0)
    starts = rng.integers(0, len(raw) - 8, 2000)
    lengths = rng.integers(0, 5, 2000)
    ref = [index.get(raw[a : a + n], -2) for a, n in zip(starts.tolist(), lengths.tolist(), strict=True)]
    assert piece_ids(v, starts, lengths).tolist() == ref
    assert (np.asarray(ref) >= 0).sum() > 100  # the probe set hits real pieces too


def test_stream_progress_codec_round_trip_and_refusals() -> None:
    sent: dict[int, int] = {}
    values: dict[int, bytes] = {}
    for progress in ([(0, b"ab"), (1, b"")], [(0, b"ab\xff"), (1, b"x")], [(0, b"ab\xff"), (1, b"x")]):
        line = protocol.encode_progress(progress, sent)
        if line is not None:
            assert protocol.decode_progress(line, 2, values) == [p for p in progress if p[1]]
    assert protocol.encode_progress([(0, b"ab\xff")], sent) is None  # nothing new: no line
    for bad in ({"progress": [[2, ""]]}, {"progress": [[True, ""]]}, {"progress": [[0, "**"]]}, {"progress": 1}, []):
        with pytest.raises(protocol.ProtocolError):
            protocol.decode_progress(bad, 2, {})
