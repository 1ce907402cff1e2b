"""``lmqc serve``: one process holds the model; short-lived clients run queries against it.

Clients compile locally (for the server model's vocabulary), run the prompt program locally, and send ONE request
per hole with every branch's context; the server decodes the whole hole with the same arguments and the same
code as in-process (:class:`runtime.decode.HoleRun`, the engine of :func:`runtime.decode.decode`) and returns
the completions. Automata are content-addressed and uploaded once; the server keeps an LRU of them, with the mask
tables each one owns, bounded by count (256) and by bytes (``DEFAULT_AUTOMATA_BYTES``, 1 GiB: arrays plus tables;
the tables of one automaton are themselves bounded by ``runtime.decode.masks.TABLE_BYTES``).

The wire protocol (routes, bodies, the codecs) is ``runtime.protocol``. ``GET /info`` stats: requests, batches
(busy periods: holes decoded while others overlap them count as one; each hole run alone counts one),
merged_batches (busy periods with more than one request), largest_batch (branches of the requests decoding at
once), steps (batched model steps of step-level decoding), merged_steps (steps holding sequences of more than one
request), largest_step (sequences in one step), most_requests_in_step, branches, tokens, cancelled, errors,
queue, uptime_s, backend counters (eval/decode calls, tokens fed).

Errors are ``{"error": code, "message": text}``: 400 ``bad_request`` (malformed JSON or fields, wrong protocol),
404 ``unknown_automata`` (with ``"missing": [hash]``: upload them and retry), 409 ``vocabulary_mismatch``
(compiled for another vocabulary), 413 ``too_large`` (more branches than ``--max-batch``, a context longer than
the model's context), 422 ``decode_error`` (the decoder's own ``DecodeError``, e.g. an unsatisfiable constraint
within the token budget) or ``over_limit`` (``max_len`` above ``--max-len``), 503 ``shutting_down``,
500 ``internal`` (the server keeps serving; the KV cache is reset).

Streaming
---------
A ``/decode`` body with ``"stream": true`` is answered as NDJSON (``application/x-ndjson``) once the request is
accepted (errors found before decoding starts keep their status): one ``{"progress": [[branch, base64 bytes],
...]}`` line per step with the bytes each branch added to its value (a value's possible stop-phrase tail is held
back, so what was sent is always a prefix of the value; beam holes and ``--no-merge`` holes send none), then
``{"result": <the /decode response>}``, or ``{"error": code, "message": text, "status": HTTP status}`` if decoding
failed. The client (``RemoteModel.decode(request, observer)``) turns the lines into the same progress as
in-process decoding, so ``on_token=`` events and streaming decorators work against a server too.

Scheduling
----------
One worker thread owns the backend (llama.cpp contexts are not thread-safe) and does step-level continuous
batching (``runtime.scheduler.Scheduler``, shared with the library's async API). It holds a set of running holes
(:class:`runtime.decode.HoleRun`, one per ``argmax``, ``sample`` or ``beam`` request) and advances ALL of them by
one token per step with ONE batched model evaluation (:func:`runtime.decode.eval_seqs` over every running hole's
pending sequences; scoring holes get their extra forced-tail rows in the same call). Between two steps, queued requests join while their branches fit in
``--max-batch`` beside the running ones, and a request whose hole is done is answered at once, while the others
go on. Each request keeps its own generator and draws in its own branch order, exactly as in-process
``decode``, so seeded sampling, argmax and beam search give the in-process tokens whenever the logits of a sequence
do not depend on the batch it is evaluated in (true of the tiny test backend). A beam request counts ``max(B, n)``
sequences against ``--max-batch`` (its width after the first step). Admission is FIFO: a request that does not fit
yet holds back the decode requests behind it, so wide requests are not starved.

With ``--no-merge`` every request waits until no hole is running and is then decoded whole, alone, as one
``decode`` call. ``/score`` requests (one model call each) run between two steps. llama.cpp's logits depend
slightly on the batch a sequence is evaluated in, so under concurrency a near-tie can resolve differently than
the same hole decoded alone (in-process batching of branches has the same property); ``--no-merge``
(``merge=False``) decodes every request alone, for results bit-identical to in-process.

A client that disconnects is noticed while its request waits or runs: a waiting request is dropped, a running
hole is dropped before the next model step (a ``--no-merge`` hole stops at its next step). SIGTERM stops accepting connections and lets
in-flight requests finish (uvicorn's graceful shutdown), then stops the worker.
"""

from __future__ import annotations

import asyncio
import json
import signal
import sys
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from lmqc.errors import ArtifactError, DecodeError, LmqcError, ServeError

from . import decode
from .decode.masks import tables_of
from .protocol import (
    MAX_NPZ_BYTES,
    PROTOCOL,
    ProtocolError,
    arrays_to_npz,
    decode_request,
    decode_text,
    encode_completion,
    encode_float,
    encode_progress,
    hash_arrays,
    npz_to_arrays,
    request_automata,
    rng_state,
    token_ids,
)
from .scheduler import DEFAULT_MAX_BATCH, HTTPError, Job, Scheduler

__all__ = ["DEFAULT_MAX_BATCH", "Scheduler", "create_app", "load_backend", "serve"]

DEFAULT_AUTOMATA_BYTES = 1 << 30  # automata and their decode tables kept between requests (LRU beyond)
MAX_BODY = MAX_NPZ_BYTES + (1 << 20)  # request bodies, counted while they stream in (chunked ones too)
BODY_IDLE_TIMEOUT = 30.0  # a client that sends no byte of its body for this long gets 408
_BODY_POLL = 0.2  # how often a body read checks whether the server is shutting down
# The arrays of an uploaded automaton, by name: their rank (dtypes must be integer or bool). Checked before the
# automaton is rebuilt, so a malformed upload is a 400 with the array named.
_AUTOMATON_RANKS = {
    "meta": 1, "never": 1, "next_table": 2, "tok_seq": 1, "final": 1, "stopped": 1, "mask_of_state": 1,
    "mask_seqs": 2, "mask_final": 1, "min_tokens_to_end": 1, "forced_token": 1,
}


# -- request parsing ---------------------------------------------------------------------------------------


def _bad(message: str) -> HTTPError:
    return HTTPError(400, "bad_request", message)


# -- the app -----------------------------------------------------------------------------------------------


class ServerState:
    """What the HTTP handlers share: backend facts, tokenizer, automaton LRU, scheduler, limits."""

    def __init__(
        self,
        backend: Any,
        *,
        model: str,
        max_batch: int = DEFAULT_MAX_BATCH,
        max_len: int | None = None,
        automata_cache: int = 256,
        automata_bytes: int = DEFAULT_AUTOMATA_BYTES,
        merge: bool = True,
    ) -> None:
        from lmqc import __version__

        self.merge = merge
        self.backend = backend
        self.model = model
        self.vocab = backend.vocabulary
        self.fingerprint = self.vocab.fingerprint
        self.V = int(backend.n_vocab)
        self.n_ctx = int(backend.n_ctx)
        self.max_batch = int(max_batch)
        self.max_len = max_len
        self.version = __version__
        self.started = time.monotonic()
        self._vocab_npz: bytes | None = None
        self.automata: OrderedDict[str, Any] = OrderedDict()
        self.automata_cache = automata_cache
        self.automata_bytes = automata_bytes
        # the event loop (uploads, requests) and the worker (trims after each request) both touch the LRU
        self._automata_lock = threading.RLock()
        #: True once the server shuts down (``serve`` points it at uvicorn's flag): body reads stop waiting
        self.stopping: Callable[[], bool] = lambda: False
        self.tokenize = _tokenizer(backend)
        self.scheduler = Scheduler(backend, self.max_batch, after_job=self._trim)

    def vocab_npz(self) -> bytes:
        if self._vocab_npz is None:
            self._vocab_npz = arrays_to_npz(self.vocab.to_arrays())
        return self._vocab_npz

    def info(self) -> dict[str, Any]:
        stats: dict[str, Any] = dict(self.scheduler.stats)
        stats["queue"] = self.scheduler.queued()
        stats["uptime_s"] = round(time.monotonic() - self.started, 3)
        bs = getattr(self.backend, "stats", None)
        if bs is not None:
            stats["backend"] = {k: getattr(bs, k) for k in ("eval_calls", "decode_calls", "tokens", "rows", "copies")}
        return {
            "protocol": PROTOCOL,
            "lmqc_version": self.version,
            "model": self.model,
            "vocab_fingerprint": self.fingerprint,
            "vocab_size": self.V,
            "n_ctx": self.n_ctx,
            "limits": {"max_batch": self.max_batch, "max_len": self.max_len, "max_context": self.n_ctx},
            "merge": self.merge,
            "automata_cached": len(self.automata),
            "automata_bytes": self.automata_nbytes(),
            "stats": stats,
        }

    # -- automata ------------------------------------------------------------------------------------------

    def put_automaton(self, digest: str, data: bytes) -> None:
        from lmqc.compiler.automaton import TokenAutomaton

        try:
            arrays = npz_to_arrays(data)  # bounded: nothing inflates past MAX_NPZ_BYTES
        except ValueError as e:
            raise _bad(f"automaton upload: {e}") from None
        for name, a in arrays.items():
            rank = _AUTOMATON_RANKS.get(name)
            if rank is None:
                raise _bad(f"automaton upload: unknown array {name!r}")
            if a.ndim != rank or a.dtype.kind not in "biu":
                raise _bad(f"automaton upload: {name} must be a {rank}-D integer array, got {a.ndim}-D {a.dtype}")
        if hash_arrays(arrays) != digest:
            raise _bad("automaton upload: the arrays do not match the hash in the URL")
        try:
            automaton = TokenAutomaton.from_arrays(arrays)  # validated, not yet tied to a vocabulary
        except ArtifactError as e:
            raise _bad(f"automaton upload: {e}") from None
        except (ValueError, TypeError, IndexError, OverflowError) as e:  # what the loader's own checks missed
            raise _bad(f"automaton upload: malformed arrays ({type(e).__name__}: {e})") from None
        n_vocab = len(automaton.tok_seq)
        if n_vocab != self.V or automaton.eos_id != self.vocab.eos_id:
            raise HTTPError(
                409, "vocabulary_mismatch",
                f"the automaton was built for another vocabulary ({n_vocab} tokens, EOS {automaton.eos_id}) than "
                f"this server's model {self.model!r} ({self.V} tokens, EOS {self.vocab.eos_id}): recompile the "
                "query for this model",
            )
        automaton = TokenAutomaton.from_arrays(arrays, vocab=self.vocab)
        with self._automata_lock:
            self.automata[digest] = automaton
            self.automata.move_to_end(digest)
            self._trim()

    def automata_nbytes(self) -> int:
        """Memory of the cached automata: their arrays and the tables decoding derived from them."""
        with self._automata_lock:
            return sum(a.nbytes + tables_of(a).nbytes for a in self.automata.values())

    def _trim(self) -> None:
        """Evict least recently used automata past ``automata_cache`` entries or ``automata_bytes`` bytes.

        Runs after every upload, before every decode and (on the worker) before every answer: the tables of an
        automaton grow while holes decode with it. The newest automaton stays even if alone it is larger; a
        running hole keeps its automaton (and its tables, bounded per automaton by
        ``runtime.decode.masks.TABLE_BYTES``) alive until it is done.
        """
        with self._automata_lock:
            sizes = [a.nbytes + tables_of(a).nbytes for a in self.automata.values()]
            total, k = sum(sizes), 0
            while len(self.automata) > 1 and (len(self.automata) > self.automata_cache or total > self.automata_bytes):
                self.automata.popitem(last=False)
                total -= sizes[k]
                k += 1

    # -- request bodies ------------------------------------------------------------------------------------

    def _common(self, body: Any) -> dict[str, Any]:
        if not isinstance(body, dict):
            raise _bad("the request body must be a JSON object")
        if body.get("protocol") != PROTOCOL:
            raise _bad(f"protocol {body.get('protocol')!r} is not supported: this server speaks protocol {PROTOCOL}")
        fp = body.get("vocab_fingerprint")
        if fp is not None and fp != self.fingerprint:
            raise HTTPError(
                409, "vocabulary_mismatch",
                f"the query was compiled for another vocabulary (fingerprint {str(fp)[:12]}) than this server's "
                f"model {self.model!r} ({self.fingerprint[:12]}): recompile it for this model",
            )
        return body

    def _context(self, x: Any, name: str) -> list[int]:
        try:
            ctx = token_ids(x, name, self.V, nonempty=True)
        except ProtocolError as e:
            raise _bad(str(e)) from None
        if len(ctx) > self.n_ctx:
            raise HTTPError(413, "too_large", f"{name} has {len(ctx)} tokens; the model's context holds {self.n_ctx}")
        return ctx

    def decode_job(self, body: Any) -> Job:
        body = self._common(body)
        contexts = body.get("contexts")
        if not isinstance(contexts, list) or not contexts:
            raise _bad("contexts must be a non-empty list of token-id lists")
        B = len(contexts)
        if B > self.max_batch:
            raise HTTPError(413, "too_large", f"{B} branches in one request; this server takes at most {self.max_batch} (--max-batch)")
        try:
            ctxs = [self._context(c, f"contexts[{i}]") for i, c in enumerate(contexts)]
            with self._automata_lock:  # the worker's trim must not evict them between the check and the lookup
                missing = sorted({h for h in request_automata(body, B) if h is not None and h not in self.automata})
                if missing:
                    raise HTTPError(
                        404, "unknown_automata", "upload these automata (PUT /automata/{hash}) and retry", missing=missing
                    )
                request = decode_request(body, ctxs, self._automaton)
        except ProtocolError as e:
            raise _bad(str(e)) from None
        strategy = request.strategy
        if isinstance(strategy, decode.Beam) and strategy.n > self.max_batch:
            raise HTTPError(413, "too_large", f"beam width {strategy.n} exceeds this server's --max-batch {self.max_batch}")
        if self.max_len is not None and (request.max_len is None or request.max_len > self.max_len):
            raise HTTPError(
                422, "over_limit",
                f"max_len={request.max_len} exceeds this server's limit of {self.max_len} tokens (--max-len): pass "
                f"max_len <= {self.max_len} in the decoder clause",
            )
        self._trim()  # tables grow while holes decode
        key = ("step",) if self.merge else None  # joins the running holes step by step (see Scheduling)
        return Job("decode", {"request": request}, key)

    def _automaton(self, digest: str) -> Any:
        with self._automata_lock:
            self.automata.move_to_end(digest)
            return self.automata[digest]

    def score_job(self, body: Any) -> Job:
        body = self._common(body)
        ctx = self._context(body.get("context"), "context")
        options = body.get("options")
        if not isinstance(options, list):
            raise _bad("options must be a list of token-id lists")
        try:
            opts = [token_ids(o, f"options[{i}]", self.V) for i, o in enumerate(options)]
        except ProtocolError as e:
            raise _bad(str(e)) from None
        if len(opts) > 4 * self.max_batch:
            raise HTTPError(413, "too_large", f"{len(opts)} options in one request; at most {4 * self.max_batch}")
        if any(len(ctx) + len(o) > self.n_ctx for o in opts):
            raise HTTPError(413, "too_large", f"context plus an option exceeds the model's context ({self.n_ctx})")
        return Job("score", {"context": ctx, "options": opts})


def _tokenizer(backend: Any) -> Callable[[str | bytes, bool, bool], list[int]]:
    """Tokenization usable on the event-loop thread while the worker decodes.

    llama.cpp: a separate vocabulary-only model handle (``LlamaBackend.tokenize`` shares a buffer with the
    worker); the same call and BOS rule as ``LlamaBackend.tokenize``. Other backends: their own ``tokenize``.
    """
    path = getattr(backend, "model_path", None)
    if path is None:
        from .service import LocalDecoder

        return lambda text, bos, special: LocalDecoder(backend).tokenize(text, bos=bos, special=special)
    from .llama import llama_lib, load_llama_model

    L = llama_lib()
    handle = load_llama_model(path, vocab_only=True)
    vocab_p = L.llama_model_get_vocab(handle)
    bos_id = backend.bos_id

    def tokenize(text: str | bytes, bos: bool, special: bool) -> list[int]:
        data = text.encode("utf-8") if isinstance(text, str) else bytes(text)
        buf = (L.llama_token * (len(data) + 8))()
        n = L.llama_tokenize(vocab_p, data, len(data), buf, len(buf), False, bool(special))
        if n < 0:
            raise DecodeError(f"tokenization of {len(data)} bytes failed")
        ids = list(buf[:n])
        if bos and bos_id is not None:
            ids.insert(0, bos_id)
        return ids

    tokenize.handle = handle  # type: ignore[attr-defined]  # keep the model alive with the closure
    return tokenize


def _jsonable(result: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {"protocol": PROTOCOL}
    if "completions" in result:
        out["completions"] = [encode_completion(c) for c in result["completions"]]
        out["rng"] = rng_state(result["rng"])
        out["batch"] = result["batch"]
    if "logprobs" in result:
        out["logprobs"] = [encode_float(float(x)) for x in result["logprobs"]]
    return out


def create_app(state: ServerState) -> Any:
    """The Starlette application of a server state (routes as in the module docstring)."""
    try:
        from starlette.applications import Starlette
        from starlette.requests import Request
        from starlette.responses import JSONResponse, Response, StreamingResponse
        from starlette.routing import Route
    except ImportError as e:
        raise ServeError("lmqc serve needs the 'serve' extra: pip install 'lmqc[serve]'") from e

    def error(e: HTTPError) -> JSONResponse:
        # refused while (or instead of) reading the body: the rest of it may still be on the way, so the
        # connection cannot carry another request
        headers = {"Connection": "close"} if e.status in (408, 413, 503) else None
        return JSONResponse({"error": e.code, "message": e.message, **e.extra}, status_code=e.status, headers=headers)

    async def read_json(request: Request) -> Any:
        body = await read_body(request)
        try:
            return json.loads(body.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise _bad(f"malformed JSON: {e}") from None
        except RecursionError:
            raise _bad("malformed JSON: nested too deeply") from None

    async def read_body(request: Request) -> bytes:
        """The body, counted while it streams in (a chunked body has no Content-Length to check first).

        Refused as soon as it passes ``MAX_BODY``; a client that sends nothing for ``BODY_IDLE_TIMEOUT`` gets
        408; a shutdown stops the wait at once (503), so a stalled upload cannot hold the graceful shutdown.
        """
        n = request.headers.get("content-length")
        if n is not None and n.isdigit() and int(n) > MAX_BODY:
            raise HTTPError(413, "too_large", f"request body over {MAX_BODY} bytes")
        chunks: list[bytes] = []
        size = 0
        stream = request.stream().__aiter__()
        while True:
            nxt = asyncio.ensure_future(stream.__anext__())
            idle = 0.0
            while True:
                done, _ = await asyncio.wait({nxt}, timeout=_BODY_POLL)
                if done:
                    break
                idle += _BODY_POLL
                if state.stopping() or idle >= BODY_IDLE_TIMEOUT:
                    nxt.cancel()
                    if state.stopping():
                        raise HTTPError(503, "shutting_down", "the server is shutting down")
                    raise HTTPError(408, "timeout", f"no byte of the request body for {BODY_IDLE_TIMEOUT:.0f} s")
            try:
                chunk = nxt.result()
            except StopAsyncIteration:
                break
            size += len(chunk)
            if size > MAX_BODY:
                raise HTTPError(413, "too_large", f"request body over {MAX_BODY} bytes")
            chunks.append(chunk)
        return b"".join(chunks)

    async def wait_disconnect(request: Request) -> None:
        while True:
            message = await request.receive()
            if message["type"] == "http.disconnect":
                return

    async def run_job(request: Request, job: Job) -> Any:
        fut = asyncio.wrap_future(state.scheduler.submit(job))
        watch = asyncio.ensure_future(wait_disconnect(request))
        try:
            done, _ = await asyncio.wait({fut, watch}, return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:  # server shutdown cancelled this handler
            job.cancelled = True
            raise
        finally:
            if not watch.done():
                watch.cancel()
        if fut not in done:
            job.cancelled = True  # the client is gone: drop the job, or stop its batch at the next step
            fut.cancel()
            return None
        return fut.result()

    def handler(fn: Callable[[Request], Any]) -> Callable[[Request], Any]:
        async def wrapped(request: Request) -> Response:
            try:
                return await fn(request)
            except HTTPError as e:
                return error(e)
            except DecodeError as e:
                return error(HTTPError(422, "decode_error", str(e)))
            except LmqcError as e:
                return error(HTTPError(400, "bad_request", str(e)))
            except asyncio.CancelledError:
                raise
            except Exception as e:  # noqa: BLE001 - never take the server down
                print(f"lmqc serve: internal error: {type(e).__name__}: {e}", file=sys.stderr)
                return error(HTTPError(500, "internal", f"{type(e).__name__}: {e}"))

        return wrapped

    @handler
    async def health(request: Request) -> Response:
        return JSONResponse({"status": "ok", "protocol": PROTOCOL})

    @handler
    async def info(request: Request) -> Response:
        return JSONResponse(state.info())

    @handler
    async def vocab(request: Request) -> Response:
        return Response(
            state.vocab_npz(), media_type="application/octet-stream",
            headers={"X-Lmqc-Vocab-Fingerprint": state.fingerprint},
        )

    @handler
    async def tokenize(request: Request) -> Response:
        body = await read_json(request)
        if not isinstance(body, dict) or body.get("protocol") != PROTOCOL:
            raise _bad(f"the request must be a JSON object with \"protocol\": {PROTOCOL}")
        texts = body.get("texts")
        if not isinstance(texts, list):
            raise _bad("texts must be a list")
        try:
            items = [decode_text(t) for t in texts]
        except ValueError as e:
            raise _bad(str(e)) from None
        bos, special = bool(body.get("bos", False)), bool(body.get("special", False))
        return JSONResponse({"protocol": PROTOCOL, "ids": [state.tokenize(t, bos, special) for t in items]})

    @handler
    async def put_automaton(request: Request) -> Response:
        digest = request.path_params["digest"]
        state.put_automaton(digest, await read_body(request))
        return JSONResponse({"protocol": PROTOCOL, "hash": digest})

    async def respond(request: Request, job: Any) -> Response:
        result = await run_job(request, job)
        if result is None:  # the client went away; nobody reads this
            return Response(status_code=499)
        return JSONResponse(_jsonable(result))

    async def stream(job: Job) -> Response:
        """A decode job answered as NDJSON: ``{"progress": [[branch, base64 bytes], ...]}`` lines while it decodes
        (each branch's new value bytes; a value's possible stop-phrase tail is held back), then one
        ``{"result": <the /decode response>}`` or ``{"error": code, "message": text, "status": http status}``."""
        from .service import progress

        loop = asyncio.get_running_loop()
        events: asyncio.Queue[Any] = asyncio.Queue()
        job.on_step = lambda run: loop.call_soon_threadsafe(events.put_nowait, progress(run))
        fut = asyncio.wrap_future(state.scheduler.submit(job))
        fut.add_done_callback(lambda _: events.put_nowait(None))

        async def lines() -> Any:
            sent: dict[int, int] = {}
            try:
                while (item := await events.get()) is not None:
                    if line := encode_progress(item, sent):
                        yield (json.dumps(line) + "\n").encode()
                try:
                    out: dict[str, Any] = {"result": _jsonable(fut.result())}
                except HTTPError as e:
                    out = {"error": e.code, "message": e.message, "status": e.status}
                except DecodeError as e:
                    out = {"error": "decode_error", "message": str(e), "status": 422}
                except LmqcError as e:
                    out = {"error": "bad_request", "message": str(e), "status": 400}
                except Exception as e:  # noqa: BLE001 - the stream has begun: the error travels in it
                    out = {"error": "internal", "message": f"{type(e).__name__}: {e}", "status": 500}
                yield (json.dumps(out) + "\n").encode()
            finally:
                if not fut.done():  # the client went away (Starlette cancels the stream): drop the hole
                    job.cancelled = True
                    fut.cancel()

        return StreamingResponse(lines(), media_type="application/x-ndjson")

    @handler
    async def decode_(request: Request) -> Response:
        body = await read_json(request)
        job = state.decode_job(body)
        if isinstance(body, dict) and body.get("stream") is True:
            return await stream(job)
        return await respond(request, job)

    @handler
    async def score(request: Request) -> Response:
        return await respond(request, state.score_job(await read_json(request)))

    from contextlib import asynccontextmanager

    @asynccontextmanager
    async def lifespan(app: Any) -> Any:
        yield
        # uvicorn has let in-flight requests finish (or cancelled them after its grace period)
        await asyncio.get_running_loop().run_in_executor(None, lambda: state.scheduler.close(abort=True))

    routes = [
        Route("/health", health, methods=["GET"]),
        Route("/info", info, methods=["GET"]),
        Route("/vocab", vocab, methods=["GET"]),
        Route("/tokenize", tokenize, methods=["POST"]),
        Route("/automata/{digest}", put_automaton, methods=["PUT"]),
        Route("/decode", decode_, methods=["POST"]),
        Route("/score", score, methods=["POST"]),
    ]
    return Starlette(routes=routes, lifespan=lifespan)


def load_backend(spec: str, *, max_batch: int = DEFAULT_MAX_BATCH, n_ctx: int | None = None) -> Any:
    """The model a server holds, with enough KV-cache slots for ``max_batch`` branches decoded together."""
    from .models import REMOTE_PREFIX, TINY_MODEL, get_model, resolve_model

    path = resolve_model(spec)
    if path.startswith(REMOTE_PREFIX):
        raise ServeError(f"lmqc serve needs a local model, not another server ({spec!r})")
    n_seq = max(8, int(max_batch))
    if path == TINY_MODEL:
        from .backend import TinyBackend

        return TinyBackend(n_seq=n_seq)  # same vocabulary and logits as the in-process lmqc:tiny
    options: dict[str, Any] = {"n_seq": n_seq}
    if n_ctx is not None:
        options["n_ctx"] = n_ctx
    return get_model(spec, **options)


def serve(
    model: str,
    *,
    host: str = "127.0.0.1",
    port: int = 8080,
    max_batch: int = DEFAULT_MAX_BATCH,
    max_len: int | None = None,
    n_ctx: int | None = None,
    merge: bool = True,
    log_level: str = "warning",
) -> None:
    """Load ``model`` and serve it until SIGINT/SIGTERM (graceful: in-flight requests finish first)."""
    try:
        import uvicorn
    except ImportError as e:
        raise ServeError("lmqc serve needs the 'serve' extra: pip install 'lmqc[serve]'") from e
    if max_batch < 1:
        raise ServeError(f"--max-batch must be >= 1, got {max_batch}")
    if not 0 <= port <= 65535:
        raise ServeError(f"--port must be between 0 and 65535, got {port}")
    if n_ctx is not None and n_ctx < 1:
        raise ServeError(f"--n-ctx must be >= 1, got {n_ctx}")
    if max_len is not None and max_len < 1:
        raise ServeError(f"--max-len must be >= 1, got {max_len}")
    t0 = time.perf_counter()
    backend = load_backend(model, max_batch=max_batch, n_ctx=n_ctx)
    state = ServerState(backend, model=model, max_batch=max_batch, max_len=max_len, merge=merge)
    app = create_app(state)
    config = uvicorn.Config(
        app, host=host, port=port, log_level=log_level, timeout_graceful_shutdown=60, lifespan="on",
        access_log=False,
    )
    server = uvicorn.Server(config)
    state.stopping = lambda: server.should_exit
    print(
        f"lmqc serve: {model} loaded in {time.perf_counter() - t0:.1f} s (vocabulary {state.fingerprint[:12]}, "
        f"n_ctx {state.n_ctx}, max batch {max_batch}); listening on http://{host}:{port}",
        file=sys.stderr, flush=True,
    )
    # uvicorn shuts down gracefully on SIGINT/SIGTERM and then re-raises the signal to the handler that was
    # installed before it ran: make that handler a no-op, so a requested shutdown exits with status 0.
    previous = {}
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            previous[sig] = signal.signal(sig, lambda signum, frame: None)
        except ValueError:  # not the main thread: leave signals to the caller
            break
    try:
        server.run()
    except SystemExit as e:  # uvicorn's way to report a socket it could not bind (after logging why)
        if server.started:
            raise
        raise ServeError(f"lmqc serve could not listen on {host}:{port} (see the error above)") from e
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    print("lmqc serve: stopped", file=sys.stderr, flush=True)
