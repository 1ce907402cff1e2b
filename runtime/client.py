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
import threading
from collections import OrderedDict
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from lmqc.cache import atomic_write, cache_dir
from lmqc.errors import ArtifactError, DecodeError, ServeError

from .protocol import (
    PROTOCOL,
    arrays_to_npz,
    automaton_hash,
    decode_completion,
    decode_float,
    encode_request,
    encode_text,
    npz_to_arrays,
    parse_endpoint,
)

if TYPE_CHECKING:
    from lmqc.compiler.vocabulary import Vocabulary

    from .decode import Completion, DecodeRequest

__all__ = ["RemoteModel", "remote_model"]


# -- the remote model ----------------------------------------------------------------------------------------


class RemoteModel:
    """The model of an ``lmqc serve`` process, as a decoder service.

    Parameters
    ----------
    endpoint : str
        ``"HOST:PORT"`` of the server.
    timeout : float, optional
        Seconds to wait for any one response (default: no limit; a hole may take long).

    Notes
    -----
    Thread-safe: every call opens its own connection. ``tokenize`` results are cached per process.
    """

    def __init__(self, endpoint: str, *, timeout: float | None = None) -> None:
        self.endpoint = parse_endpoint(endpoint)
        self.host, port = self.endpoint.rsplit(":", 1)
        self.port = int(port)
        self.timeout = timeout
        self._info: dict[str, Any] | None = None
        self._vocab: Vocabulary | None = None
        self._lock = threading.Lock()
        self._tok_cache: OrderedDict[tuple[str | bytes, bool, bool], list[int]] = OrderedDict()
        self._uploaded: set[str] = set()

    def __repr__(self) -> str:
        return f"RemoteModel('lmqc://{self.endpoint}')"

    # -- HTTP ---------------------------------------------------------------------------------------------

    def _request(
        self, method: str, path: str, body: bytes | None = None, *, content_type: str = "application/json"
    ) -> tuple[int, bytes, str]:
        conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
        try:
            headers = {"Content-Type": content_type} if body is not None else {}
            conn.request(method, path, body=body, headers=headers)
            resp = conn.getresponse()
            return resp.status, resp.read(), resp.getheader("Content-Type", "")
        except ConnectionRefusedError:
            raise ServeError(
                f"cannot reach lmqc serve at {self.endpoint}: connection refused "
                "(start one with `lmqc serve --model M --port PORT`)"
            ) from None
        except (OSError, http.client.HTTPException) as e:
            raise ServeError(f"lmqc serve at {self.endpoint}: {type(e).__name__}: {e}") from None
        finally:
            conn.close()

    def _json(self, method: str, path: str, payload: dict[str, Any] | None = None) -> dict[str, Any]:
        body = None if payload is None else json.dumps(payload, allow_nan=False).encode("utf-8")
        status, data, _ = self._request(method, path, body)
        return self._check(status, data)

    def _check(self, status: int, data: bytes) -> dict[str, Any]:
        try:
            out = json.loads(data.decode("utf-8")) if data else {}
        except (UnicodeDecodeError, json.JSONDecodeError):
            out = {"message": data[:200].decode("utf-8", "replace")}
        if not isinstance(out, dict):
            raise ServeError(f"lmqc serve at {self.endpoint}: malformed response")
        if status == 200:
            return out
        msg = str(out.get("message") or out.get("error") or f"HTTP {status}")
        kind = out.get("error")
        if kind == "decode_error":
            raise DecodeError(msg)
        if kind == "vocabulary_mismatch":
            raise ArtifactError(msg)
        if kind == "unknown_automata":
            raise _Missing(list(out.get("missing") or []))
        raise ServeError(f"lmqc serve at {self.endpoint} refused the request (HTTP {status}): {msg}")

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
            from lmqc.errors import VocabularyError

            fp = self.fingerprint
            path = cache_dir("remote-vocab") / f"{fp[:32]}.npz"
            vocab = None
            if path.exists():
                try:
                    vocab = Vocabulary.from_arrays(npz_to_arrays(path.read_bytes()))
                    if vocab.fingerprint != fp:
                        vocab = None
                except (OSError, ValueError, VocabularyError):
                    vocab = None
            if vocab is None:
                status, data, _ = self._request("GET", "/vocab")
                if status != 200:
                    self._check(status, data)
                try:
                    vocab = Vocabulary.from_arrays(npz_to_arrays(data))
                except (ValueError, VocabularyError) as e:
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
        ids = [int(t) for t in self._json("POST", "/tokenize", body)["ids"][0]]
        with self._lock:
            self._tok_cache[key] = ids
            while len(self._tok_cache) > 4096:
                self._tok_cache.popitem(last=False)
        return list(ids)

    def decode(self, request: DecodeRequest) -> list[Completion]:
        """:func:`runtime.decode.decode` on the server, same request and results (one HTTP request).

        The request's generator is advanced exactly as an in-process decode would advance it (its state travels
        with the request and comes back), so seeded sampling gives the same values.
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
        for _attempt in range(3):
            try:
                out = self._json("POST", "/decode", payload)
                break
            except _Missing as m:
                for h in m.missing:
                    if h not in arrays:
                        raise ServeError(f"lmqc serve at {self.endpoint} asked for an automaton it was not sent") from None
                    self._upload(h, arrays[h])
        else:
            raise ServeError(f"lmqc serve at {self.endpoint} keeps evicting this query's automata (cache too small?)")
        if out.get("rng") is not None:
            request.rng.bit_generator.state = out["rng"]
        try:
            return [decode_completion(c) for c in out["completions"]]
        except (KeyError, TypeError, ValueError) as e:
            raise ServeError(f"lmqc serve at {self.endpoint} sent malformed completions: {e}") from None

    def _upload(self, digest: str, arrays: dict[str, np.ndarray]) -> None:
        status, data, _ = self._request(
            "PUT", f"/automata/{digest}", arrays_to_npz(arrays), content_type="application/octet-stream"
        )
        self._check(status, data)
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
        return np.asarray([decode_float(x) for x in out["logprobs"]], np.float64)


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
