"""``lmqc serve`` under hostile clients (issue 11): every bad input is a clear error, nothing another client gets
changes, the server stays healthy and its memory bounded.

In-process tests drive a :class:`~runtime.server.ServerState` on the tiny backend (its simulated KV cache can be
made small); the HTTP-level ones (chunked bodies, zip bombs, shutdown during a stalled upload, CLI arguments) run
a real ``lmqc serve`` process.
"""

from __future__ import annotations

import io
import json
import signal
import socket
import subprocess
import sys
import time
import zipfile
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

pytest.importorskip("starlette")
pytest.importorskip("uvicorn")

import lmqc  # noqa: E402
from lmqc.runtime import decode  # noqa: E402
from lmqc.runtime.backend import CacheFull, TinyBackend  # noqa: E402
from lmqc.runtime.protocol import PROTOCOL, arrays_to_npz, automaton_hash, hash_arrays, rng_state  # noqa: E402
from lmqc.runtime.server import HTTPError, ServerState  # noqa: E402


def _body(fp: str, contexts: list[list[int]], n_tokens: int, **extra: Any) -> dict[str, Any]:
    B = len(contexts)
    body = {
        "protocol": PROTOCOL, "vocab_fingerprint": fp, "contexts": contexts, "automata": [None] * B,
        "strategy": {"name": "argmax"}, "stops": [[]] * B, "min_tokens": [n_tokens] * B,
        "max_tokens": [n_tokens] * B, "max_len": None, "rng": None, "scores": None, "score": None,
        "forced_text": True, "heal": False,
    }
    body.update(extra)
    return body


def _reference(contexts: list[list[int]], n_tokens: int) -> list[list[int]]:
    """The tokens in-process argmax decoding gives (the tiny model's logits do not depend on the batch)."""
    return [c.tokens for c in decode.decode_hole(TinyBackend(), contexts, None, min_tokens=n_tokens, max_tokens=n_tokens)]


def _healthy(state: ServerState) -> None:
    """A normal request succeeds and equals in-process decoding."""
    ctx = [[1, 300, 301]]
    res = state.scheduler.submit(state.decode_job(_body(state.fingerprint, ctx, 5))).result(30)
    assert [c.tokens for c in res["completions"]] == _reference(ctx, 5)


@pytest.fixture
def small_cache() -> Iterator[ServerState]:
    """A server on a tiny model whose KV cache holds 64 cells, fed in chunks of 8 tokens."""
    state = ServerState(TinyBackend(n_seq=16, n_batch=8, n_cells=64), model="lmqc:tiny", max_batch=16)
    yield state
    state.scheduler.close()


# -- 1. a client overflowing the KV cache -----------------------------------------------------------------------


@pytest.mark.parametrize("hostile_first", [True, False])
def test_a_failed_chunked_feed_leaves_the_cache_consistent(hostile_first: bool) -> None:
    """A feed that fails part-way (cache full after some chunks) records nothing it did not write."""
    b = TinyBackend(n_seq=4, n_batch=4, n_cells=24)
    good = [1, 300, 301, 302, 303, 304, 305, 410, 411, 412]
    hostile = [[1] + [400 + i] * 12 for i in range(2)]
    with pytest.raises(CacheFull):
        b.eval(hostile + [good] if hostile_first else [good] + hostile)
    assert np.array_equal(b.eval([good])[0], b.reference_logits(good))
    assert np.array_equal(b.eval([good[:8]])[0], b.reference_logits(good[:8]))


def test_a_client_overflowing_the_cache_does_not_change_another_clients_text(small_cache: ServerState) -> None:
    state = small_cache
    fp = state.fingerprint
    hostile = [[1] + [310 + i] * 29 for i in range(4)]  # 120 cells: more than the whole cache
    good = [[1, 300, 301, 302, 303, 304, 305, 306, 307]]
    with state.scheduler._cv:  # both arrive while the worker is held: their first step is one merged batch
        f_hostile = state.scheduler.submit(state.decode_job(_body(fp, hostile, 4)))
        f_good = state.scheduler.submit(state.decode_job(_body(fp, good, 12)))
    res = f_good.result(30)
    assert [c.tokens for c in res["completions"]] == _reference(good, 12)
    with pytest.raises(CacheFull):
        f_hostile.result(30)
    _healthy(state)


# -- 4. malformed requests are 400s, valid generator states work ------------------------------------------------


@pytest.fixture(scope="module")
def tiny_state() -> Iterator[ServerState]:
    state = ServerState(TinyBackend(n_seq=16), model="lmqc:tiny", max_batch=16)
    yield state
    state.scheduler.close()


def _automaton_arrays() -> tuple[str, dict[str, np.ndarray]]:
    return automaton_hash(lmqc.compile('"A: [X]" from "lmqc:tiny" where INT(X) and len(TOKENS(X)) < 4').automaton("X"))


def _refused(state: ServerState, call: Any, status: int = 400) -> str:
    with pytest.raises(HTTPError) as e:
        call()
    assert e.value.status == status, e.value.message
    return e.value.message


def test_malformed_automaton_arrays_are_400(tiny_state: ServerState) -> None:
    _, arrays = _automaton_arrays()
    cases = {}
    for name, a in arrays.items():
        if a.ndim == 2:
            cases[f"1-D {name}"] = {**arrays, name: a.reshape(-1)}
        cases[f"scalar {name}"] = {**arrays, name: np.asarray(a.reshape(-1)[:1].reshape(()) if a.size else 0)}
    cases["float table"] = {**arrays, "next_table": arrays["next_table"].astype(np.float64)}
    cases["unknown array"] = {**arrays, "extra": np.zeros(3, np.int32)}
    for label, bad in cases.items():
        message = _refused(tiny_state, lambda bad=bad: tiny_state.put_automaton(hash_arrays(bad), arrays_to_npz(bad)))
        assert "automaton upload" in message, label
    _healthy(tiny_state)


def _npz_member(name: str, header: dict[str, Any], payload: bytes, *, deflate: bool = False) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED if deflate else zipfile.ZIP_STORED) as z:
        head = io.BytesIO()
        np.lib.format.write_array_header_1_0(head, header)
        with z.open(f"{name}.npy", "w", force_zip64=True) as m:
            m.write(head.getvalue())
            for k in range(0, len(payload), 1 << 22):
                m.write(payload[k : k + (1 << 22)])
    return buf.getvalue()


def test_huge_declared_shapes_and_zip_bombs_are_refused_before_inflating(tiny_state: ServerState) -> None:
    from lmqc.runtime.protocol import MAX_NPZ_BYTES

    huge_shape = _npz_member("tok_seq", {"descr": "<i4", "fortran_order": False, "shape": (10**15,)}, b"\0" * 64)
    message = _refused(tiny_state, lambda: tiny_state.put_automaton("0" * 32, huge_shape))
    assert "declares" in message
    # a few hundred kB that inflate past the bound: refused by the sizes the archive declares, nothing inflated
    n = MAX_NPZ_BYTES // 4 + 1024
    bomb = _npz_member("tok_seq", {"descr": "<i4", "fortran_order": False, "shape": (n,)}, bytes(4 * n), deflate=True)
    assert len(bomb) < MAX_NPZ_BYTES // 100
    message = _refused(tiny_state, lambda: tiny_state.put_automaton("0" * 32, bomb))
    assert "inflate" in message
    pickled = _npz_member("meta", {"descr": "|O", "fortran_order": False, "shape": (1,)}, b"\0" * 8)
    assert "object arrays" in _refused(tiny_state, lambda: tiny_state.put_automaton("0" * 32, pickled))
    _healthy(tiny_state)


def test_malformed_decode_fields_are_400(tiny_state: ServerState) -> None:
    fp = tiny_state.fingerprint
    good = _body(fp, [[1, 300]], 3)
    sample = {"name": "sample", "temperature": 1.0, "top_k": 0, "top_p": 1.0}
    bad_fields = [
        {"strategy": {"name": "beam", "n": float("nan")}},
        {"strategy": {"name": "beam", "n": float("inf")}},
        {"strategy": {**sample, "top_k": float("nan")}},
        {"strategy": {**sample, "top_k": float("inf")}},
        {"rng": {"bit_generator": "MT19937", "state": {"key": [1, 2], "pos": 3}}},
        {"rng": {"bit_generator": "MT19937", "state": {"key": [0] * 624, "pos": 10**6}}},  # numpy would read past key
        {"rng": {"bit_generator": "Philox", "state": {"counter": [1], "key": [1]}, "buffer": [1], "buffer_pos": 3,
                 "has_uint32": 0, "uinteger": 0}},
        {"rng": {"bit_generator": "Philox", "state": {"counter": [0] * 4, "key": [0] * 2}, "buffer": [0] * 4,
                 "buffer_pos": -1, "has_uint32": 0, "uinteger": 0}},
        {"rng": {"bit_generator": "SFC64", "state": {"state": [1, 2, 3, 2**64]}, "has_uint32": 0, "uinteger": 0}},
        {"rng": {"bit_generator": "PCG64", "state": 5}},
        {"rng": [1, 2]},
    ]
    for extra in bad_fields:
        body = {**good, **extra}
        _refused(tiny_state, lambda body=body: tiny_state.decode_job(body))
    _healthy(tiny_state)


@pytest.mark.parametrize("kind", ["PCG64", "PCG64DXSM", "Philox", "SFC64", "MT19937"])
def test_every_numpy_bit_generator_state_round_trips(tiny_state: ServerState, kind: str) -> None:
    """Seeded sampling through the server equals in-process for each bit generator, and the state comes back."""
    gen = np.random.Generator(getattr(np.random, kind)(5))
    gen.random(3)  # a state mid-buffer (Philox/SFC64/MT19937 positions other than the start)
    sample = {"name": "sample", "temperature": 1.0, "top_k": 0, "top_p": 1.0}
    body = json.loads(json.dumps(_body(tiny_state.fingerprint, [[1, 300], [1, 301]], 6, strategy=sample,
                                       rng=rng_state(gen))))
    res = tiny_state.scheduler.submit(tiny_state.decode_job(body)).result(30)
    ref = decode.decode_hole(TinyBackend(), [[1, 300], [1, 301]], None, strategy=decode.Sample(1.0, 0, 1.0),
                             rng=gen, min_tokens=6, max_tokens=6)
    assert [c.tokens for c in res["completions"]] == [c.tokens for c in ref]
    from lmqc.runtime.server import _jsonable

    assert json.loads(json.dumps(_jsonable(res)))["rng"] == json.loads(json.dumps(rng_state(gen)))


# -- 2. memory bounded by bytes ----------------------------------------------------------------------------------


def test_server_memory_stays_under_its_byte_bound_under_distinct_uploads() -> None:
    """Distinct automata uploaded and used one after another: after every answer the automata and the tables
    decoding derived from them (masks, token-budget, healing tables) stay within ``automata_bytes``."""
    bound = 150_000
    state = ServerState(TinyBackend(n_seq=16), model="lmqc:tiny", automata_bytes=bound)
    try:
        for k in range(12):
            src = f'"A: [X]" from "lmqc:tiny" where len(X) < {k + 3} and len(TOKENS(X)) < 8'
            digest, arrays = automaton_hash(lmqc.compile(src).automaton("X"))
            state.put_automaton(digest, arrays_to_npz(arrays))
            body = _body(state.fingerprint, [[1, 300]], 0, automata=[digest], max_tokens=[6])
            res = state.scheduler.submit(state.decode_job(body)).result(30)
            assert res["completions"][0].ending in {"eos", "max_tokens"}
            assert state.automata_nbytes() <= bound or len(state.automata) == 1
        assert state.info()["automata_bytes"] <= bound
        _healthy(state)
    finally:
        state.scheduler.close()


# -- 3. bodies: chunked ones counted, deep JSON ------------------------------------------------------------------


def _asgi(state: ServerState, method: str, path: str, chunks: Iterator[bytes], headers: list | None = None) -> tuple[int, dict]:
    """One request straight through the ASGI app (a body without Content-Length, as uvicorn passes a chunked one)."""
    import asyncio

    from lmqc.runtime.server import create_app

    app = create_app(state)
    out: dict[str, Any] = {}
    ended = False
    answered: asyncio.Event | None = None

    async def receive() -> dict:
        nonlocal ended, answered
        if ended:  # the client waits for its answer, then hangs up
            answered = answered or asyncio.Event()
            await answered.wait()
            return {"type": "http.disconnect"}
        chunk = next(chunks, None)
        if chunk is None:
            ended = True
            return {"type": "http.request", "body": b"", "more_body": False}
        return {"type": "http.request", "body": chunk, "more_body": True}

    async def send(message: dict) -> None:
        nonlocal answered
        if message["type"] == "http.response.start":
            out["status"] = message["status"]
        elif message["type"] == "http.response.body":
            out["body"] = out.get("body", b"") + message.get("body", b"")
            if not message.get("more_body"):
                answered = answered or asyncio.Event()
                answered.set()

    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": method, "path": path,
        "raw_path": path.encode(), "query_string": b"", "headers": headers or [], "scheme": "http",
        "server": ("test", 80), "client": ("test", 1), "root_path": "",
    }
    asyncio.run(app(scope, receive, send))
    return out["status"], json.loads(out["body"])


def test_a_chunked_body_cannot_pass_the_body_limit(tiny_state: ServerState, monkeypatch: pytest.MonkeyPatch) -> None:
    from lmqc.runtime import server

    monkeypatch.setattr(server, "MAX_BODY", 1 << 20)
    sent = 0

    def endless() -> Iterator[bytes]:  # 4x the limit (a server that never counts would read it all)
        nonlocal sent
        block = b" " * (64 << 10)
        for _ in range(64):
            sent += len(block)
            yield block

    status, out = _asgi(tiny_state, "PUT", "/automata/" + "0" * 32, endless())
    assert status == 413 and out["error"] == "too_large"
    assert sent <= (1 << 20) + (64 << 10)  # refused as the limit passed, not after reading everything
    status, out = _asgi(tiny_state, "POST", "/decode", endless())
    assert status == 413
    body = json.dumps(_body(tiny_state.fingerprint, [[1, 300]], 3)).encode()
    status, out = _asgi(tiny_state, "POST", "/decode", iter([body[:10], body[10:]]))  # a small chunked body is fine
    assert status == 200 and len(out["completions"]) == 1


def test_deeply_nested_json_is_400(tiny_state: ServerState) -> None:
    for depth in (10_000, 200_000):
        status, out = _asgi(tiny_state, "POST", "/decode", iter([b"[" * depth + b"]" * depth]))
        assert status == 400 and out["error"] == "bad_request", out
        status, out = _asgi(tiny_state, "POST", "/decode", iter([b'{"a":' * depth + b"1" + b"}" * depth]))
        assert status == 400 and out["error"] == "bad_request", out
    _healthy(tiny_state)


# -- 5, 6. the process: arguments, shutdown during a stalled upload ----------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize(
    "args, message",
    [
        (["--n-ctx", "-5"], "--n-ctx: must be at least 1"),
        (["--n-ctx", "0"], "--n-ctx: must be at least 1"),
        (["--port", "70000"], "--port: must be between 0 and 65535"),
        (["--port", "-1"], "--port: must be between 0 and 65535"),
        (["--max-batch", "0"], "--max-batch: must be at least 1"),
        (["--max-len", "-3"], "--max-len: must be at least 1"),
    ],
)
def test_bad_serve_arguments_are_clear_errors(args: list[str], message: str) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "lmqc.cli", "serve", "--model", "lmqc:tiny", *args],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 2 and message in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr


def test_serve_api_refuses_bad_arguments() -> None:
    from lmqc.errors import ServeError
    from lmqc.runtime.server import serve

    for kwargs, match in (({"port": 70000}, "--port"), ({"n_ctx": -5}, "--n-ctx"), ({"max_len": 0}, "--max-len")):
        with pytest.raises(ServeError, match=match):
            serve("lmqc:tiny", **kwargs)


def test_a_port_in_use_is_a_clear_error() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        proc = subprocess.run(
            [sys.executable, "-m", "lmqc.cli", "serve", "--model", "lmqc:tiny", "--port", str(port)],
            capture_output=True, text=True, timeout=120,
        )
    assert proc.returncode == 1 and "could not listen" in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr


def test_sigterm_during_a_stalled_upload_shuts_down_promptly() -> None:
    """A client that sent its headers and part of its body, then stalls, does not hold the shutdown: its read is
    answered 503 at once (uvicorn would otherwise wait its whole graceful period, 60 s)."""
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "lmqc.cli", "serve", "--model", "lmqc:tiny", "--port", str(port)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    stalled = []
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(proc.communicate()[1]) from None
                time.sleep(0.1)
        for path, length in (("/automata/" + "0" * 32, 10_000), ("/decode", 5_000)):
            s = socket.create_connection(("127.0.0.1", port))
            method = "PUT" if path.startswith("/automata") else "POST"
            s.sendall(f"{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Length: {length}\r\n\r\n".encode() + b"x" * 100)
            stalled.append(s)
        time.sleep(0.5)  # the handlers are waiting for the rest of the bodies
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)  # well below uvicorn's 60 s graceful period
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0 and "lmqc serve: stopped" in err, err
    for s in stalled:
        s.settimeout(5)
        reply = s.recv(4096)
        s.close()
        assert reply.startswith(b"HTTP/1.1 503"), reply[:100]


_LLAMA_CONTEXT_FAILS = """
import gc, sys
from lmqc.errors import ModelError
from lmqc.runtime import llama, models
path = models.resolve_model("gemma-3-270m")
if sys.argv[1] == "refused":
    try:
        llama.LlamaBackend(path, n_ctx=-5)
    except ModelError as e:
        print("ModelError:", e)
else:  # llama.cpp itself cannot create the context: the model it loaded is freed once
    L = llama.llama_lib()
    L_init = L.llama_init_from_model
    L.llama_init_from_model = lambda model, params: None
    try:
        llama.LlamaBackend(path)
    except ModelError as e:
        print("ModelError:", e)
    L.llama_init_from_model = L_init
gc.collect()
print("alive")
"""


@pytest.mark.model
@pytest.mark.parametrize("case", ["refused", "context_fails"])
def test_a_context_llama_cannot_create_is_a_model_error_not_a_crash(case: str) -> None:
    pytest.importorskip("llama_cpp")
    proc = subprocess.run(
        [sys.executable, "-c", _LLAMA_CONTEXT_FAILS, case], capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, (proc.returncode, proc.stderr[-2000:])
    assert "ModelError:" in proc.stdout and proc.stdout.rstrip().endswith("alive")
    if case == "refused":
        assert "n_ctx must be a positive integer" in proc.stdout
