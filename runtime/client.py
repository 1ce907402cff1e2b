"""Client side of two-process mode: a query runs here, its holes are decoded by ``lmqc serve``.

:class:`RemoteModel` is the decoder service of a server (the same ``tokenize`` / ``decode`` /
``score_options`` interface as ``runtime.service.LocalDecoder``: ``runtime.decode.DecoderService``), so
``run_compiled`` drives a remote query exactly like an in-process one: the prompt program, branches and results
stay here; per hole, ONE request carries the :class:`~runtime.decode.DecodeRequest` of every branch and the
server decodes the whole hole.

Only the standard library is used here (``http.client`` + ``json``); the server's extra (``lmqc[serve]``) is not
needed by clients. The wire protocol and its codecs are ``runtime.protocol``.
"""

from __future__ import annotations

import http.client
import json
import math
import os
import socket
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from lmqc.cache import atomic_write, cache_dir
from lmqc.errors import ArtifactError, DecodeError, ServeError, ServeTimeoutError, VocabularyError

from .protocol import (
    PROTOCOL,
    ProtocolError,
    arrays_to_npz,
    automaton_hash,
    decode_completion,
    decode_float,
    decode_progress,
    encode_request,
    encode_text,
    npz_to_arrays,
    parse_endpoint,
    rng_from_state,
)

if TYPE_CHECKING:
    from lmqc.compiler.vocabulary import Vocabulary

    from .decode import Completion, DecodeRequest

__all__ = ["CONNECT_TIMEOUT", "MAX_RESPONSE_BYTES", "READ_TIMEOUT", "RemoteModel", "remote_model"]

#: Default seconds to open a connection: a server on a reachable host accepts in milliseconds, so a longer wait
#: means a wrong address, a firewall dropping packets, or a server too wedged to accept.
CONNECT_TIMEOUT = 10.0
#: Default seconds for one whole response, from sending the request to its last byte. One ``/decode`` request
#: decodes a whole hole, possibly queued behind other clients' holes: minutes on a CPU are normal, an hour is not.
READ_TIMEOUT = 600.0
#: Largest response body read (a vocabulary is a few MB, a decode response of 16 branches of 32k tokens ~4 MB).
MAX_RESPONSE_BYTES = 256 << 20


def _env_timeout(name: str, default: float) -> float | None:
    """A timeout from the environment: seconds, or ``0`` / ``none`` for no limit."""
    raw = os.environ.get(name, "").strip().lower()
    if not raw:
        return default
    if raw in ("0", "none", "inf"):
        return None
    try:
        value = float(raw)
    except ValueError:
        raise ServeError(f"{name}={raw!r}: expected seconds (a positive number) or 0 for no limit") from None
    if not math.isfinite(value) or value < 0:
        raise ServeError(f"{name}={raw!r}: expected seconds (a positive number) or 0 for no limit")
    return value or None


def _timeout_arg(name: str, value: float | None) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value <= 0:
        raise ServeError(f"{name} must be a positive number of seconds or None (no limit), not {value!r}")
    return float(value)


_DEFAULT = object()


# -- the remote model ----------------------------------------------------------------------------------------


class RemoteModel:
    """The model of an ``lmqc serve`` process, as a decoder service.

    Parameters
    ----------
    endpoint : str
        ``"HOST:PORT"`` of the server.
    timeout : float or None, optional
        Seconds for one whole response, from sending the request to its last byte (``None``: no limit).
        Default: ``$LMQC_TIMEOUT`` or :data:`READ_TIMEOUT` (600 s).
    connect_timeout : float or None, optional
        Seconds to open the connection. Default: ``$LMQC_CONNECT_TIMEOUT`` or :data:`CONNECT_TIMEOUT` (10 s).

    Raises
    ------
    ServeTimeoutError
        From any call, when the server does not accept or answer in time (a :class:`ServeError`).
    ServeError
        From any call, when the server cannot be reached, refuses, or answers something malformed.

    Notes
    -----
    Thread-safe: every call opens its own connection. ``tokenize`` results are cached per process.
    """

    def __init__(
        self, endpoint: str, *, timeout: float | None | object = _DEFAULT, connect_timeout: float | None | object = _DEFAULT
    ) -> None:
        self.endpoint = parse_endpoint(endpoint)
        self.host, port = self.endpoint.rsplit(":", 1)
        self.port = int(port)
        self.timeout = (
            _env_timeout("LMQC_TIMEOUT", READ_TIMEOUT) if timeout is _DEFAULT else _timeout_arg("timeout", timeout)  # type: ignore[arg-type]
        )
        self.connect_timeout = (
            _env_timeout("LMQC_CONNECT_TIMEOUT", CONNECT_TIMEOUT)
            if connect_timeout is _DEFAULT
            else _timeout_arg("connect_timeout", connect_timeout)  # type: ignore[arg-type]
        )
        self._info: dict[str, Any] | None = None
        self._vocab: Vocabulary | None = None
        self._lock = threading.Lock()
        self._tok_cache: OrderedDict[tuple[str | bytes, bool, bool], list[int]] = OrderedDict()
        self._uploaded: set[str] = set()

    def __repr__(self) -> str:
        return f"RemoteModel('lmqc://{self.endpoint}')"

    # -- HTTP ---------------------------------------------------------------------------------------------

    def _request(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        *,
        content_type: str = "application/json",
        on_line: Callable[[dict[str, Any]], None] | None = None,
    ) -> tuple[int, bytes, str]:
        """One HTTP exchange: ``(status, body, content type)``; every failure is a :class:`ServeError`.

        With ``on_line``, an NDJSON response (a streamed ``/decode``) is read line by line: ``on_line`` gets each
        ``progress`` object as it arrives, and the last line's ``result`` (or error) is returned as the body.
        """
        conn = http.client.HTTPConnection(self.host, self.port, timeout=self.connect_timeout)
        where = f"lmqc serve at {self.endpoint}"
        try:
            conn.connect()
        except ConnectionRefusedError:
            conn.close()
            raise ServeError(
                f"cannot reach {where}: connection refused (start one with `lmqc serve --model M --port PORT`)"
            ) from None
        except TimeoutError:
            conn.close()
            raise ServeTimeoutError(
                f"cannot reach {where}: no connection within {self.connect_timeout:g} s "
                "(connect_timeout=, $LMQC_CONNECT_TIMEOUT)"
            ) from None
        except OSError as e:
            conn.close()
            raise ServeError(f"cannot reach {where}: {type(e).__name__}: {e}") from None
        # http.client's timeout bounds each socket operation only: a server that sends a byte now and then
        # would hold us forever. A timer bounds the whole exchange by shutting the socket down, which wakes
        # a blocked send or receive.
        expired = threading.Event()
        timer = None
        sock = conn.sock
        sock.settimeout(self.timeout)
        if self.timeout is not None:

            def expire() -> None:
                expired.set()
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass  # already closed

            timer = threading.Timer(self.timeout, expire)
            timer.daemon = True
            timer.start()
        try:
            headers = {"Content-Type": content_type} if body is not None else {}
            conn.request(method, path, body=body, headers=headers)
            resp = conn.getresponse()
            ctype = resp.getheader("Content-Type", "") or ""
            if on_line is not None and resp.status == 200 and ctype.startswith("application/x-ndjson"):
                status, data = self._read_stream(resp, on_line)
            else:
                status, data = resp.status, _read_bounded(resp)
            if expired.is_set():
                raise TimeoutError
            return status, data, ctype
        except (TimeoutError, OSError, http.client.HTTPException) as e:
            if expired.is_set() or isinstance(e, TimeoutError):
                raise ServeTimeoutError(
                    f"{where} did not answer {method} {path} within {self.timeout:g} s (timeout=, $LMQC_TIMEOUT)"
                ) from None
            raise ServeError(f"{where}: {type(e).__name__}: {e}") from None
        except _TooLarge:
            raise ServeError(f"{where} sent a response over {MAX_RESPONSE_BYTES >> 20} MiB to {method} {path}") from None
        finally:
            if timer is not None:
                timer.cancel()
            conn.close()

    def _read_stream(self, resp: http.client.HTTPResponse, on_line: Callable[[dict[str, Any]], None]) -> tuple[int, bytes]:
        """(status, body) of a streamed response: progress lines to ``on_line``, the final line as the body."""
        where = f"lmqc serve at {self.endpoint}"
        total = 0
        while True:
            line = resp.readline(MAX_RESPONSE_BYTES - total + 1)
            total += len(line)
            if total > MAX_RESPONSE_BYTES:
                raise _TooLarge
            if not line:
                raise ServeError(f"{where} ended a streamed response without a result")
            if not line.strip():
                continue
            try:
                item = json.loads(line.decode("utf-8"))
            except (UnicodeDecodeError, ValueError, RecursionError):
                raise ServeError(f"{where} sent a malformed stream line: {_excerpt(line)}") from None
            if not isinstance(item, dict):
                raise ServeError(f"{where} sent a malformed stream line: {_excerpt(line)}")
            if "progress" in item:
                on_line(item)
                continue
            if "result" in item:
                return 200, json.dumps(item["result"]).encode()
            status = item.get("status")
            if not isinstance(status, int) or isinstance(status, bool) or not 400 <= status < 600:
                raise ServeError(f"{where} sent a malformed stream line: {_excerpt(line)}")
            return status, json.dumps({"error": item.get("error"), "message": item.get("message")}).encode()

    def _json(
        self,
        method: str,
        path: str,
        payload: dict[str, Any] | None = None,
        on_line: Callable[[dict[str, Any]], None] | None = None,
    ) -> dict[str, Any]:
        body = None if payload is None else json.dumps(payload, allow_nan=False).encode("utf-8")
        status, data, _ = self._request(method, path, body, on_line=on_line)
        return self._check(status, data, f"{method} {path}")

    def _check(self, status: int, data: bytes, what: str = "the request") -> dict[str, Any]:
        """The JSON object of a 200 response; an error response (or anything malformed) raised as an LmqcError."""
        where = f"lmqc serve at {self.endpoint}"
        try:
            out = json.loads(data.decode("utf-8")) if data else None
        except (UnicodeDecodeError, ValueError, RecursionError):  # JSONDecodeError is a ValueError
            out = None
        if status == 200:
            if not isinstance(out, dict):
                raise ServeError(f"{where} sent a malformed response to {what} (expected a JSON object): {_excerpt(data)}")
            return out
        if not isinstance(out, dict):
            raise ServeError(f"{where} refused {what} (HTTP {status}): {_excerpt(data) or 'no body'}")
        msg = out.get("message") or out.get("error") or f"HTTP {status}"
        msg = msg if isinstance(msg, str) else _excerpt(json.dumps(msg).encode())
        kind = out.get("error")
        if kind == "decode_error":
            raise DecodeError(msg)
        if kind == "vocabulary_mismatch":
            raise ArtifactError(msg)
        if kind == "unknown_automata":
            missing = out.get("missing")
            if not isinstance(missing, list) or not all(isinstance(h, str) for h in missing):
                raise ServeError(f"{where} sent a malformed unknown_automata error: {_excerpt(data)}")
            raise _Missing(missing)
        raise ServeError(f"{where} refused {what} (HTTP {status}): {msg}")

    # -- model description ----------------------------------------------------------------------------------

    def info(self, *, refresh: bool = False) -> dict[str, Any]:
        """The server's ``GET /info`` (model, vocabulary fingerprint, versions, limits, batch stats)."""
        if self._info is None or refresh:
            info = self._json("GET", "/info")
            if info.get("protocol") != PROTOCOL:
                raise ServeError(
                    f"lmqc serve at {self.endpoint} speaks protocol {info.get('protocol')!r}; this lmqc speaks "
                    f"{PROTOCOL}: use matching lmqc versions"
                )
            fp = info.get("vocab_fingerprint")
            if not isinstance(fp, str) or not fp:
                raise ServeError(f"lmqc serve at {self.endpoint} sent /info without a vocabulary fingerprint")
            self._info = info
        return self._info

    @property
    def fingerprint(self) -> str:
        return str(self.info()["vocab_fingerprint"])

    @property
    def vocabulary(self) -> Vocabulary:
        """The server model's vocabulary: from memory, the disk cache (by fingerprint), or ``GET /vocab``."""
        with self._lock:
            if self._vocab is not None:
                return self._vocab
            from lmqc.compiler.vocabulary import Vocabulary

            fp = self.fingerprint
            path = cache_dir("remote-vocab") / f"{fp[:32]}.npz"
            vocab = None
            if path.exists():
                try:
                    vocab = Vocabulary.from_arrays(npz_to_arrays(path.read_bytes()))
                    if vocab.fingerprint != fp:
                        vocab = None
                except (OSError, ValueError, TypeError, IndexError, KeyError, OverflowError, VocabularyError):
                    vocab = None
            if vocab is None:
                status, data, _ = self._request("GET", "/vocab")
                if status != 200:
                    self._check(status, data, "GET /vocab")
                try:
                    vocab = Vocabulary.from_arrays(npz_to_arrays(data))
                except (ValueError, TypeError, IndexError, KeyError, OverflowError, VocabularyError) as e:
                    raise ServeError(f"lmqc serve at {self.endpoint} sent a malformed vocabulary: {e}") from None
                if vocab.fingerprint != fp:
                    raise ServeError(f"lmqc serve at {self.endpoint} sent a vocabulary that does not match its fingerprint")
                atomic_write(path, data, cache=True)
            self._vocab = vocab
            return vocab

    # -- the decoder service ------------------------------------------------------------------------------

    def begin(self) -> None:
        """Nothing to prepare: the server manages its own KV cache."""

    def tokenize(self, text: str | bytes, *, bos: bool = False, special: bool = False) -> list[int]:
        """Token ids of ``text`` by the server model's tokenizer (cached per process)."""
        key = (text, bool(bos), bool(special))
        with self._lock:
            hit = self._tok_cache.get(key)
            if hit is not None:
                self._tok_cache.move_to_end(key)
                return list(hit)
        body = {"protocol": PROTOCOL, "texts": [encode_text(text)], "bos": bool(bos), "special": bool(special)}
        out = self._json("POST", "/tokenize", body).get("ids")
        if not (isinstance(out, list) and len(out) == 1 and isinstance(out[0], list)):
            raise ServeError(f"lmqc serve at {self.endpoint} sent a malformed /tokenize response (ids)")
        ids = self._token_ids(out[0], "/tokenize ids")
        with self._lock:
            self._tok_cache[key] = ids
            while len(self._tok_cache) > 4096:
                self._tok_cache.popitem(last=False)
        return list(ids)

    #: ``decode`` takes an observer (streams progress), as ``LocalDecoder.decode`` does
    streams_progress = True

    def decode(self, request: DecodeRequest, observer: Callable[[Any], None] | None = None) -> list[Completion]:
        """:func:`runtime.decode.decode` on the server, same request and results (one HTTP request).

        The request's generator is advanced exactly as an in-process decode would advance it (its state travels
        with the request and comes back), so seeded sampling gives the same values. With ``observer`` the
        response is streamed and ``observer`` gets each branch's value bytes so far after every step, as
        in-process (``runtime.service.progress``; argmax and sample holes; a beam hole reports nothing).
        """
        if not request.contexts:
            return []
        hashes: list[str | None] = []
        arrays: dict[str, dict[str, np.ndarray]] = {}
        for spec in request.specs:
            if spec.automaton is None:
                hashes.append(None)
                continue
            h, arr = automaton_hash(spec.automaton)
            hashes.append(h)
            arrays[h] = arr
        payload = encode_request(request, hashes, self.fingerprint)
        # Upload what this server has not seen from us; the server may also have evicted an automaton.
        for h, arr in arrays.items():
            if h not in self._uploaded:
                self._upload(h, arr)
        on_line = None
        if observer is not None:
            payload = {**payload, "stream": True}
            on_line = self._progress_reader(observer, len(request.contexts))
        for _attempt in range(3):
            try:
                out = self._json("POST", "/decode", payload, on_line)
                break
            except _Missing as m:
                for h in m.missing:
                    if h not in arrays:
                        raise ServeError(f"lmqc serve at {self.endpoint} asked for an automaton it was not sent") from None
                    self._upload(h, arrays[h])
        else:
            raise ServeError(f"lmqc serve at {self.endpoint} keeps evicting this query's automata (cache too small?)")
        raw = out.get("completions")
        if not isinstance(raw, list):
            raise ServeError(f"lmqc serve at {self.endpoint} sent a /decode response without completions")
        try:
            completions = [decode_completion(c, len(request.contexts)) for c in raw]
        except ProtocolError as e:
            raise ServeError(f"lmqc serve at {self.endpoint} sent malformed completions: {e}") from None
        if out.get("rng") is not None:
            # checked on a generator of its own first: a bad state must not half-update the caller's generator
            try:
                state = rng_from_state(out["rng"]).bit_generator.state
                request.rng.bit_generator.state = state
            except (ProtocolError, TypeError, ValueError, KeyError) as e:
                raise ServeError(f"lmqc serve at {self.endpoint} sent a malformed generator state: {e}") from None
        return completions

    def _progress_reader(self, observer: Callable[[Any], None], branches: int) -> Callable[[dict[str, Any]], None]:
        """A stream-line handler: each branch's new bytes appended, ``observer`` handed the values so far."""
        values: dict[int, bytes] = {}

        def on_line(item: dict[str, Any]) -> None:
            try:
                so_far = decode_progress(item, branches, values)
            except ProtocolError as e:
                raise ServeError(f"lmqc serve at {self.endpoint} sent a malformed progress line: {e}") from None
            observer(so_far)

        return on_line

    def _upload(self, digest: str, arrays: dict[str, np.ndarray]) -> None:
        status, data, _ = self._request(
            "PUT", f"/automata/{digest}", arrays_to_npz(arrays), content_type="application/octet-stream"
        )
        self._check(status, data, "PUT /automata")
        self._uploaded.add(digest)

    def score_options(self, context: Sequence[int], options: Sequence[Sequence[int]]) -> np.ndarray:
        """:func:`runtime.decode.score_options` on the server (one request)."""
        out = self._json(
            "POST",
            "/score",
            {
                "protocol": PROTOCOL,
                "vocab_fingerprint": self.fingerprint,
                "context": [int(t) for t in context],
                "options": [[int(t) for t in o] for o in options],
            },
        )
        lps = out.get("logprobs")
        if not isinstance(lps, list) or len(lps) != len(options):
            raise ServeError(f"lmqc serve at {self.endpoint} sent a malformed /score response (logprobs)")
        try:
            return np.asarray([decode_float(x) for x in lps], np.float64)
        except ProtocolError as e:
            raise ServeError(f"lmqc serve at {self.endpoint} sent a malformed /score response: {e}") from None

    def _token_ids(self, ids: Any, what: str) -> list[int]:
        if not all(type(t) is int and t >= 0 for t in ids):
            raise ServeError(f"lmqc serve at {self.endpoint} sent malformed {what} (not token ids)")
        return list(ids)


class _TooLarge(Exception):
    pass


def _read_bounded(resp: http.client.HTTPResponse) -> bytes:
    """A response's body, refusing more than :data:`MAX_RESPONSE_BYTES` before holding it."""
    length = resp.getheader("Content-Length")
    if length is not None and length.strip().isdigit() and int(length) > MAX_RESPONSE_BYTES:
        raise _TooLarge
    parts: list[bytes] = []
    total = 0
    while True:
        chunk = resp.read(1 << 20)
        if not chunk:
            return b"".join(parts)
        total += len(chunk)
        if total > MAX_RESPONSE_BYTES:
            raise _TooLarge
        parts.append(chunk)


def _excerpt(data: bytes, limit: int = 200) -> str:
    text = data[:limit].decode("utf-8", "replace").strip()
    return text + (" ..." if len(data) > limit else "")


class _Missing(Exception):
    def __init__(self, missing: list[str]) -> None:
        super().__init__(f"server lacks automata {missing}")
        self.missing = missing


_remotes: dict[str, RemoteModel] = {}
_remotes_lock = threading.Lock()


def remote_model(endpoint: str) -> RemoteModel:
    """The :class:`RemoteModel` of an endpoint, shared by the whole process."""
    key = parse_endpoint(endpoint)
    with _remotes_lock:
        m = _remotes.get(key)
        if m is None:
            m = _remotes[key] = RemoteModel(key)
        return m
