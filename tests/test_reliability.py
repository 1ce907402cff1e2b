"""Hostile inputs on the client and decoding side (issue 11): extreme temperatures, absurd branch counts, a server
that never answers or answers garbage, and very large queries (parse memory, error positions)."""

from __future__ import annotations

import json
import os
import socket
import threading
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

import lmqc
from lmqc.errors import DecodeError, LmqcError, QueryTypeError, ServeError, ServeTimeoutError
from lmqc.runtime.decode import Beam, Sample, parse_strategy
from lmqc.runtime.decode.masks import Dense
from lmqc.runtime.decode.strategies import choose_sample

# -- sampling temperature ------------------------------------------------------------------------------------


def _row_and_mask(V: int = 1000) -> tuple[np.ndarray, np.ndarray, Dense]:
    row = (np.random.default_rng(7).normal(size=V) * 5).astype(np.float32)
    allowed = np.arange(0, V, 2, dtype=np.int32)  # the last token (V - 1) is not allowed
    return row, allowed, Dense(V, allowed)


@pytest.mark.parametrize("sparse", [True, False], ids=["ids", "dense"])
@pytest.mark.parametrize("temperature", [1e46, 1e300, 1.7e308])
def test_huge_temperature_samples_uniformly_over_allowed(sparse: bool, temperature: float) -> None:
    """T beyond float32's 1/T samples every allowed token alike (the softmax's limit), never NaN weights."""
    row, allowed, dense = _row_and_mask()
    rng = np.random.default_rng(0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # "invalid value encountered in multiply" was the NaN weights
        draws = [
            choose_sample(row, allowed if sparse else None, None if sparse else dense, Sample(temperature), rng)
            for _ in range(2000)
        ]
    assert all(t % 2 == 0 for t in draws)
    counts = np.bincount(draws, minlength=len(row))[allowed]
    # 2000 uniform draws over 500 tokens: ~4 each, and most tokens drawn at least once
    assert (counts > 0).mean() > 0.9 and counts.max() < 20


@pytest.mark.parametrize("sparse", [True, False], ids=["ids", "dense"])
@pytest.mark.parametrize("temperature", [1e-46, 1e-40, 5e-324])
def test_tiny_temperature_is_argmax_with_ties_shared(sparse: bool, temperature: float) -> None:
    row, allowed, dense = _row_and_mask()
    best = int(allowed[np.argmax(row[allowed])])
    rng = np.random.default_rng(0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        pick = lambda r: choose_sample(r, allowed if sparse else None, None if sparse else dense, Sample(temperature), rng)  # noqa: E731
        assert {pick(row) for _ in range(50)} == {best}
        tied = row.copy()
        other = int(allowed[allowed != best][0])
        tied[other] = tied[best]
        assert {pick(tied) for _ in range(200)} == {best, other}


def test_moderate_temperatures_unchanged_and_sharpen() -> None:
    """The exact limits only replace scales float32 cannot hold; ordinary temperatures follow exp(z / T)."""
    row, allowed, dense = _row_and_mask(64)
    rng = np.random.default_rng(1)
    draws = [choose_sample(row, None, dense, Sample(1e-30), rng) for _ in range(20)]
    assert set(draws) == {int(allowed[np.argmax(row[allowed])])}
    draws = [choose_sample(row, None, dense, Sample(1e30), rng) for _ in range(600)]
    assert len(set(draws)) > 25 and all(t % 2 == 0 for t in draws)


@pytest.mark.parametrize("bad", ["-1.0", "float('nan')", "float('inf')"])
def test_invalid_temperatures_are_clear_errors(bad: str) -> None:
    with pytest.raises(DecodeError, match="temperature"):
        Sample(float(eval(bad)))  # noqa: S307
    with pytest.raises(QueryTypeError, match="temperature"):
        lmqc.run(f'sample(temperature={bad})\n"Q: [X]" where len(TOKENS(X)) < 3', model="lmqc:tiny")


def test_extreme_temperatures_on_the_tiny_backend() -> None:
    """A whole query: T=1e46 samples valid, varied values (it failed with "automaton rejected token"); T=1e-46
    gives the greedy value."""
    q = '{dec}\n"Q: Say hi\\nA:[X]" where len(TOKENS(X)) < 4 and STOPS_AT(X, "\\n")\n'
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        hot = lmqc.run(q.format(dec="sample(n=6, temperature=1e46, seed=1)"), model="lmqc:tiny")
        cold = lmqc.run(q.format(dec="sample(n=3, temperature=1e-46, seed=1)"), model="lmqc:tiny")
    greedy = lmqc.run(q.format(dec="argmax"), model="lmqc:tiny")
    assert len({r.variables["X"] for r in hot}) > 3
    assert {r.variables["X"] for r in cold} == {greedy.variables["X"]}


# -- branch count cap ----------------------------------------------------------------------------------------


def test_branch_count_cap() -> None:
    from lmqc.compiler.decoders import MAX_BRANCHES

    q = '{dec}\n"Q: [X]" where len(TOKENS(X)) < 3'
    for dec in ("beam(n=100000)", "sample(n=100000)", "argmax(n=100000)"):
        with pytest.raises(QueryTypeError, match=f"n must be <= {MAX_BRANCHES}") as e:
            lmqc.compile(q.format(dec=dec), "lmqc:tiny")  # literal: refused when the query is compiled
        assert e.value.line == 1
    # an expression: refused when the query runs, located at the expression
    compiled = lmqc.compile(q.format(dec="beam(n=width)"), "lmqc:tiny")
    with pytest.raises(QueryTypeError, match=f"n must be <= {MAX_BRANCHES}"):
        lmqc.run(compiled, model="lmqc:tiny", width=100000)
    with pytest.raises(QueryTypeError, match=f"<= {MAX_BRANCHES}"):
        lmqc.run(q.format(dec="argmax"), model="lmqc:tiny", decoder="beam(n=100000)")
    with pytest.raises(DecodeError, match=f"<= {MAX_BRANCHES}"):
        Beam(100000)
    with pytest.raises(DecodeError, match=f"<= {MAX_BRANCHES}"):
        parse_strategy("beam", n=MAX_BRANCHES + 1)
    assert Beam(MAX_BRANCHES).n == MAX_BRANCHES
    assert issubclass(QueryTypeError, LmqcError)


# -- the client against servers that misbehave ---------------------------------------------------------------

_INFO = {"protocol": 1, "vocab_fingerprint": "f" * 64, "model": "fake", "vocab_size": 300}


class _FakeServer:
    """A raw TCP server: each connection's request is read, then ``respond(method, path, sock)`` writes anything."""

    def __init__(self, respond: Callable[[str, str, socket.socket], None]) -> None:
        self.respond = respond
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.stop = threading.Event()
        self.conns: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self.stop.is_set():
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            self.conns.append(conn)
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        try:
            data = b""
            while b"\r\n\r\n" not in data:
                chunk = conn.recv(65536)
                if not chunk:
                    return
                data += chunk
            head, _, body = data.partition(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            method, path, _ = lines[0].split(" ", 2)
            length = next((int(v) for k, _, v in (ln.partition(":") for ln in lines[1:]) if k.lower() == "content-length"), 0)
            while len(body) < length:
                chunk = conn.recv(65536)
                if not chunk:
                    return
                body += chunk
            self.respond(method, path, conn)
        except OSError:
            pass
        finally:
            conn.close()

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.port}"

    def close(self) -> None:
        self.stop.set()
        self.listener.close()
        for c in self.conns:
            try:
                c.close()
            except OSError:
                pass


@pytest.fixture
def fake_server():
    servers: list[_FakeServer] = []

    def make(respond: Callable[[str, str, socket.socket], None]) -> _FakeServer:
        servers.append(_FakeServer(respond))
        return servers[-1]

    yield make
    for s in servers:
        s.close()


def _http(status: int, body: bytes, *, ctype: str = "application/json", length: int | None = None) -> bytes:
    n = len(body) if length is None else length
    return f"HTTP/1.1 {status} X\r\nContent-Type: {ctype}\r\nContent-Length: {n}\r\n\r\n".encode() + body


def _routes(**paths: bytes) -> Callable[[str, str, socket.socket], None]:
    """Answer ``/info`` properly and every other path as given (raw HTTP bytes)."""

    def respond(method: str, path: str, sock: socket.socket) -> None:
        if path == "/info" and "info" not in paths:
            sock.sendall(_http(200, json.dumps(_INFO).encode()))
            return
        sock.sendall(paths[path.strip("/").split("/")[0]])

    return respond


def test_client_timeout_defaults_and_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    from lmqc.runtime.client import CONNECT_TIMEOUT, READ_TIMEOUT, RemoteModel

    monkeypatch.delenv("LMQC_TIMEOUT", raising=False)
    monkeypatch.delenv("LMQC_CONNECT_TIMEOUT", raising=False)
    m = RemoteModel("127.0.0.1:9")
    assert (m.timeout, m.connect_timeout) == (READ_TIMEOUT, CONNECT_TIMEOUT)
    assert 0 < CONNECT_TIMEOUT <= 60 and 60 <= READ_TIMEOUT <= 3600
    monkeypatch.setenv("LMQC_TIMEOUT", "2.5")
    monkeypatch.setenv("LMQC_CONNECT_TIMEOUT", "0")
    m = RemoteModel("127.0.0.1:9")
    assert (m.timeout, m.connect_timeout) == (2.5, None)
    assert RemoteModel("127.0.0.1:9", timeout=None, connect_timeout=1).timeout is None
    monkeypatch.setenv("LMQC_TIMEOUT", "soon")
    with pytest.raises(ServeError, match="LMQC_TIMEOUT"):
        RemoteModel("127.0.0.1:9")
    for bad in (-1, 0, float("nan"), "5"):
        with pytest.raises(ServeError, match="timeout"):
            RemoteModel("127.0.0.1:9", timeout=bad)


def test_client_times_out_on_a_server_that_never_answers(fake_server) -> None:
    from lmqc.runtime.client import RemoteModel

    release = threading.Event()
    srv = fake_server(lambda method, path, sock: release.wait(30))  # reads the request, answers nothing
    try:
        with pytest.raises(ServeTimeoutError, match="did not answer GET /info within 0.3 s") as e:
            RemoteModel(srv.endpoint, timeout=0.3).info()
        assert isinstance(e.value, LmqcError) and isinstance(e.value, TimeoutError)
    finally:
        release.set()


def test_client_times_out_on_a_server_that_drips(fake_server) -> None:
    """A byte now and then resets a per-read socket timeout; the whole response is what is bounded."""
    from lmqc.runtime.client import RemoteModel

    release = threading.Event()

    def drip(method: str, path: str, sock: socket.socket) -> None:
        sock.sendall(b"HTTP/1.1 200 OK\r\n")
        while not release.wait(0.05):
            sock.sendall(b"X")

    srv = fake_server(drip)
    try:
        with pytest.raises(ServeTimeoutError):
            RemoteModel(srv.endpoint, timeout=0.5).info()
    finally:
        release.set()


def test_client_connect_timeout() -> None:
    """A listener whose accept queue is full drops new connection attempts: connect_timeout ends the wait."""
    from lmqc.runtime.client import RemoteModel

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    port = listener.getsockname()[1]
    fillers = []
    try:
        for _ in range(8):  # fill the accept queue (never accepted)
            s = socket.socket()
            s.setblocking(False)
            s.connect_ex(("127.0.0.1", port))
            fillers.append(s)
        probe = socket.socket()
        probe.settimeout(0.3)
        try:
            probe.connect(("127.0.0.1", port))
            pytest.skip("this kernel accepts connections beyond the listen backlog")
        except TimeoutError:
            pass
        finally:
            probe.close()
        with pytest.raises(ServeTimeoutError, match="no connection within 0.3 s"):
            RemoteModel(f"127.0.0.1:{port}", connect_timeout=0.3, timeout=5).info()
    finally:
        for s in fillers:
            s.close()
        listener.close()


def test_client_connection_refused_is_a_serve_error() -> None:
    from lmqc.runtime.client import RemoteModel

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there now
    with pytest.raises(ServeError, match="connection refused"):
        RemoteModel(f"127.0.0.1:{port}", connect_timeout=2, timeout=2).info()


_GARBAGE = {
    "not json": _http(200, b"<html>oops</html>", ctype="text/html"),
    "json array": _http(200, b"[1, 2, 3]"),
    "json string": _http(200, b'"ok"'),
    "empty 200": _http(200, b""),
    "deep json": _http(200, b"[" * 200_000),
    "not utf-8": _http(200, b"\xff\xfe{}"),
    "truncated": _http(200, b'{"ids": [[1, 2', length=500),
    "bad status line": b"HELLO WORLD\r\n\r\n",
    "closed": b"",
    "huge declared": _http(200, b"{}", length=(256 << 20) + 1),
    "500 html": _http(500, b"<h1>Internal Server Error</h1>", ctype="text/html"),
    "502 empty": _http(502, b""),
    "400 odd message": _http(400, b'{"error": "bad_request", "message": {"nested": [1]}}'),
    "unknown_automata bad": _http(409, b'{"error": "unknown_automata", "missing": 7}'),
    "unknown_automata str": _http(409, b'{"error": "unknown_automata", "missing": "abc"}'),
}

_BAD_TOKENIZE = {
    "no ids": b"{}",
    "ids not list": b'{"ids": "1 2 3"}',
    "ids flat": b'{"ids": [1, 2]}',
    "ids two rows": b'{"ids": [[1], [2]]}',
    "ids empty": b'{"ids": []}',
    "id string": b'{"ids": [["a"]]}',
    "id float": b'{"ids": [[1.5]]}',
    "id null": b'{"ids": [[null]]}',
    "id negative": b'{"ids": [[-3]]}',
    "id bool": b'{"ids": [[true]]}',
}


def _client(endpoint: str):
    from lmqc.runtime.client import RemoteModel

    return RemoteModel(endpoint, timeout=10, connect_timeout=5)


@pytest.mark.parametrize("case", [*_GARBAGE, *_BAD_TOKENIZE])
def test_malformed_tokenize_responses_are_serve_errors(fake_server, case: str) -> None:
    raw = _GARBAGE[case] if case in _GARBAGE else _http(200, _BAD_TOKENIZE[case])
    srv = fake_server(_routes(tokenize=raw))
    with pytest.raises(ServeError) as e:
        _client(srv.endpoint).tokenize("hello")
    assert str(srv.port) in str(e.value)


@pytest.mark.parametrize(
    "body",
    [b"{}", b'{"protocol": 1}', b'{"protocol": 1, "vocab_fingerprint": 5}', b'{"protocol": "1"}', b"[]", b"null"],
)
def test_malformed_info_is_a_serve_error(fake_server, body: bytes) -> None:
    srv = fake_server(_routes(info=_http(200, body)))
    with pytest.raises(ServeError):
        _ = _client(srv.endpoint).fingerprint


def _completion(**over: Any) -> dict[str, Any]:
    c = {"parent": 0, "tokens": [5], "value": "aGk=", "context": [1, 5], "logprob": -1.0, "score": -1.0,
         "ending": "eos", "state": -1}
    c.update(over)
    return {k: v for k, v in c.items() if v is not _DROP}


_DROP = object()
_BAD_DECODE = {
    "no completions": {},
    "completions not list": {"completions": {"parent": 0}},
    "completion not object": {"completions": [[0, [5]]]},
    "missing field": {"completions": [_completion(value=_DROP)]},
    "parent out of range": {"completions": [_completion(parent=3)]},
    "parent negative": {"completions": [_completion(parent=-1)]},
    "parent string": {"completions": [_completion(parent="0")]},
    "tokens strings": {"completions": [_completion(tokens=["a"])]},
    "context null": {"completions": [_completion(context=None)]},
    "value not base64": {"completions": [_completion(value="***")]},
    "value number": {"completions": [_completion(value=5)]},
    "logprob string": {"completions": [_completion(logprob="high")]},
    "ending unknown": {"completions": [_completion(ending="exploded")]},
    "state float": {"completions": [_completion(state=1.5)]},
    "rng garbage": {"completions": [_completion()], "rng": {"bit_generator": "PCG64", "state": "x"}},
    "rng unknown kind": {"completions": [_completion()], "rng": {"bit_generator": "os.system"}},
    "rng not object": {"completions": [_completion()], "rng": [1, 2]},
}


@pytest.mark.parametrize("case", [*_GARBAGE, *_BAD_DECODE])
def test_malformed_decode_responses_are_serve_errors(fake_server, case: str) -> None:
    from lmqc.runtime.decode.engine import request_for

    raw = _GARBAGE[case] if case in _GARBAGE else _http(200, json.dumps(_BAD_DECODE[case]).encode())
    srv = fake_server(_routes(decode=raw))
    rng = np.random.default_rng(5)
    before = rng.bit_generator.state
    req = request_for([[1, 2]], None, rng=rng)
    with pytest.raises(ServeError):
        _client(srv.endpoint).decode(req)
    assert rng.bit_generator.state == before  # a refused response does not move the caller's generator


def test_well_formed_decode_response_through_the_fake_server(fake_server) -> None:
    """The checks refuse only what is malformed: the same fake answer with valid fields decodes."""
    from lmqc.runtime.decode.engine import request_for

    state = np.random.default_rng(9).bit_generator.state
    srv = fake_server(_routes(decode=_http(200, json.dumps({"completions": [_completion()], "rng": state}).encode())))
    rng = np.random.default_rng(5)
    [c] = _client(srv.endpoint).decode(request_for([[1, 2]], None, rng=rng))
    assert (c.parent, c.tokens, c.value, c.ending, c.logprob) == (0, [5], b"hi", "eos", -1.0)
    assert rng.bit_generator.state == state


@pytest.mark.parametrize(
    "case", [*_GARBAGE, "no logprobs", "logprobs string", "logprob string", "logprobs too few"]
)
def test_malformed_score_responses_are_serve_errors(fake_server, case: str) -> None:
    bodies = {"no logprobs": {}, "logprobs string": {"logprobs": "x"}, "logprob string": {"logprobs": ["x", 1.0]},
              "logprobs too few": {"logprobs": [1.0]}}
    raw = _GARBAGE[case] if case in _GARBAGE else _http(200, json.dumps(bodies[case]).encode())
    srv = fake_server(_routes(score=raw))
    with pytest.raises(ServeError):
        _client(srv.endpoint).score_options([1, 2], [[3], [4]])


@pytest.mark.parametrize("case", ["not npz", "empty", "npz without arrays", "500 html", "truncated"])
def test_malformed_vocabulary_is_a_serve_error(fake_server, case: str) -> None:
    import io

    buf = io.BytesIO()
    np.savez(buf, buffer=np.zeros(3, np.uint8))
    bodies = {"not npz": _http(200, b"PK\x03\x04 garbage", ctype="application/octet-stream"),
              "empty": _http(200, b"", ctype="application/octet-stream"),
              "npz without arrays": _http(200, buf.getvalue(), ctype="application/octet-stream")}
    fp = os.urandom(16).hex()  # nothing cached under it
    info = _http(200, json.dumps({**_INFO, "vocab_fingerprint": fp}).encode())
    srv = fake_server(_routes(info=info, vocab=bodies[case] if case in bodies else _GARBAGE[case]))
    with pytest.raises(ServeError):
        _ = _client(srv.endpoint).vocabulary


# -- very large queries: parse memory and error positions ----------------------------------------------------


def _peak_parse_mib(source: str) -> float:
    """Peak Python allocation while parsing ``source`` (MiB), the source itself excluded."""
    import tracemalloc

    from lmqc.compiler.parser import parse

    parse('argmax\n    "warm [X]"\n')  # imports and caches outside the measurement
    tracemalloc.start()
    try:
        parse(source)
        return tracemalloc.get_traced_memory()[1] / 2**20
    finally:
        tracemalloc.stop()


@pytest.mark.parametrize(
    "body",
    [
        pytest.param("a" * 1_000_000, id="plain"),
        pytest.param("line of text\n" * 77_000, id="multiline"),
    ],
)
def test_one_megabyte_query_string_parses_in_little_memory(body: str) -> None:
    """A 1 MB query string took ~130 MB to parse (a (line, col) tuple per character, copied three times); its
    positions are now two int32 arrays."""
    quote = '"""' if "\n" in body else '"'
    source = f"argmax\n    {quote}{body}[X]{quote}\nwhere len(TOKENS(X)) < 5\n"
    assert _peak_parse_mib(source) < 50


def _query_of_shape(shape: str, size: int) -> str:
    """A query of about ``size`` characters: many short query strings, many holes, or one string of escapes."""
    if shape == "escapes":
        return 'argmax\n    "' + "ab\\n" * (size // 4) + '[X]"\nwhere len(TOKENS(X)) < 5\n'
    line = '    "Some prompt text line {i} here.\\n"\n' if shape == "many_strings" else '    "Q{i}: [X{i}]\\n"\n'
    lines: list[str] = []
    total = 0
    while total < size:
        lines.append(line.format(i=len(lines)))
        total += len(lines[-1])
    last = '    "[X]"\nwhere len(TOKENS(X)) < 5\n' if shape == "many_strings" else "where len(TOKENS(X0)) < 5\n"
    return "argmax\n" + "".join(lines) + last


@pytest.mark.parametrize(
    ("shape", "size", "mib_per_mb"),
    [
        pytest.param("escapes", 1_000_000, 50, id="escapes"),
        # a quarter of a MB for the many-strings shapes keeps the test a few seconds under tracemalloc
        pytest.param("many_strings", 250_000, 50, id="many_strings"),
        # ~1.7 KB a query string stays alive in the parsed query itself (its body's AST, the PromptString, parts
        # and spans) plus ~1 KB while its hole binding is compiled: ~120 MiB for 1 MB of "Q: [X]" lines
        pytest.param("many_holes", 120_000, 150, id="many_holes"),
    ],
)
def test_large_query_of_each_shape_parses_in_proportional_memory(shape: str, size: int, mib_per_mb: float) -> None:
    """Parse memory per shape of a large query, in MiB per MB of source (issue 11). Before: 1 MB of \\n escapes
    ~210 MiB (tokenize's string regex keeps a backtracking frame per escape), of short query strings ~125 MiB
    and of ``"Q: [X]"`` lines ~480 MiB (the program's AST deep-copied, ~20 AST nodes a query string, compiled
    twice and kept in a cache)."""
    source = _query_of_shape(shape, size)
    assert _peak_parse_mib(source) < mib_per_mb * len(source) / 1e6


def test_error_positions_in_a_huge_string() -> None:
    from lmqc.compiler.parser import parse
    from lmqc.errors import QuerySyntaxError

    n = 300_000
    # a single ']' after n characters on line 2 (the string starts after 4 spaces and a quote)
    with pytest.raises(QuerySyntaxError, match="single ']'") as e:
        parse(f'argmax\n    "{"a" * n}]"\n')
    assert (e.value.line, e.value.column) == (2, 6 + n)
    # escapes before the error: decoded characters are fewer than source characters
    with pytest.raises(QuerySyntaxError, match="single '}'") as e:
        parse('argmax\n    "' + "\\x41" * n + '}"\n')
    assert (e.value.line, e.value.column) == (2, 6 + 4 * n)
    # an error on a late line of a long triple-quoted string, after dedent of the continuation lines
    lines = "\n".join(["    some text"] * 5000)
    with pytest.raises(QuerySyntaxError, match="never closed") as e:
        parse(f'argmax\n    """start\n{lines}\n    bad {{x"""\n')
    assert (e.value.line, e.value.column) == (5003, 9)
    # a lone surrogate escape at the end of a long string: located at its backslash
    with pytest.raises(QuerySyntaxError, match="lone surrogate") as e:
        parse('argmax\n    "' + "b" * n + '\\ud800"\n')
    assert (e.value.line, e.value.column) == (2, 6 + n)


def test_hole_positions_survive_long_text() -> None:
    from lmqc.compiler import nodes
    from lmqc.compiler.parser import parse

    n = 200_000
    q = parse('argmax\n    "' + "\\t" * n + '[X]"\n    """x\n    ' + "y" * n + ' [Y]"""\n')
    holes = [p for ps in q.prompts for p in ps.parts if isinstance(p, nodes.Hole)]
    assert [(h.name, h.span.line, h.span.column) for h in holes] == [("X", 2, 6 + 2 * n), ("Y", 4, 6 + n)]


def test_query_size_limit() -> None:
    from lmqc.compiler.parser import MAX_QUERY_CHARS, parse
    from lmqc.errors import QuerySyntaxError

    assert MAX_QUERY_CHARS >= 1 << 20  # a 1 MB query parses (above)
    with pytest.raises(QuerySyntaxError, match=f"at most {MAX_QUERY_CHARS:,}"):
        parse('argmax\n    "' + "a" * MAX_QUERY_CHARS + '"\n')
