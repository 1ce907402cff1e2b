"""Two-process mode on Gemma 3 270M: throughput and latency of 1, 4 and 16 concurrent clients of one
``lmqc serve`` process, versus one in-process client running the same queries.

Every query fills one hole of exactly ``--tokens`` tokens (``len(TOKENS(X)) == N``, so every run generates the
same amount) after a short prompt that differs per client. Clients are threads of this process calling
``lmqc.run(..., endpoint=...)`` (each query: one /tokenize and one /decode request). Throughput is generated
tokens over wall time; latency is per query (p99 of a few dozen samples is close to the maximum). The last
column counts queries whose values equal the in-process values for the same topic (argmax: exact unless a
batched evaluation changes a near-tie in the logits).

Usage::

    .venv/bin/python benchmarks/serve.py [--quick] [--tokens 24] [--clients 1,4,16] [--decoder argmax]
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import header, loadavg, table, write_json  # noqa: E402

import lmqc  # noqa: E402

TOPICS = [
    "the sea", "mountains", "a city at night", "coffee", "rain", "the moon", "trains", "a library", "winter",
    "bees", "a bakery", "the desert", "music", "a storm", "gardens", "bridges",
]


def query(decoder: str, tokens: int) -> str:
    return f'''{decoder}
    "Write a few sentences about {{topic}}.\\n[X]"
where len(TOKENS(X)) == {tokens}
'''


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(endpoint: str, path: str) -> dict[str, Any]:
    with urllib.request.urlopen(f"http://{endpoint}{path}", timeout=10) as r:
        return json.loads(r.read())


def start_server(model: str, max_batch: int) -> tuple[subprocess.Popen, str]:
    port = _free_port()
    endpoint = f"127.0.0.1:{port}"
    proc = subprocess.Popen(
        [sys.executable, "-m", "lmqc.cli", "serve", "--model", model, "--port", str(port), "--max-batch", str(max_batch)],
        stderr=subprocess.PIPE, text=True,
    )
    deadline = time.monotonic() + 180
    while True:
        try:
            if _get(endpoint, "/health")["status"] == "ok":
                return proc, endpoint
        except OSError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise SystemExit(f"lmqc serve did not start: {proc.communicate()[1]}")
        time.sleep(0.2)


def run_level(compiled: Any, clients: int, rounds: int, endpoint: str | None) -> dict[str, Any]:
    """``clients`` threads, each running ``rounds`` queries back to back; latencies and total tokens."""
    lat: list[float] = []
    toks: list[int] = []
    values: dict[str, Any] = {}
    errors: list[BaseException] = []
    lock = threading.Lock()
    barrier = threading.Barrier(clients)

    def client(k: int) -> None:
        try:
            barrier.wait()
            for r in range(rounds):
                topic = TOPICS[(k + r * clients) % len(TOPICS)]
                t0 = time.perf_counter()
                res = lmqc.run(compiled, endpoint=endpoint, topic=topic)
                dt = time.perf_counter() - t0
                res = res if isinstance(res, list) else [res]
                with lock:
                    values[topic] = [x.variables for x in res]
                    lat.append(dt)
                    toks.append(sum(x.n_tokens for x in res))
        except BaseException as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    if errors:
        raise errors[0]
    return {
        "clients": clients, "queries": len(lat), "tokens": int(sum(toks)), "wall_s": wall,
        "tok_s": sum(toks) / wall, "p50_s": float(np.percentile(lat, 50)), "p99_s": float(np.percentile(lat, 99)),
        "values": values,
    }


def main() -> None:
    import argparse

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer queries per level")
    ap.add_argument("--json", type=Path, default=None, help="where to write the JSON results")
    ap.add_argument("--model", default="gemma-3-270m")
    ap.add_argument("--tokens", type=int, default=24, help="tokens generated per query")
    ap.add_argument("--clients", default="1,4,16", help="comma-separated concurrency levels")
    ap.add_argument("--decoder", default="argmax", help='decoder clause, e.g. "sample(seed=1)"')
    args = ap.parse_args()
    levels = [int(x) for x in args.clients.split(",")]
    machine = header("lmqc serve: throughput and latency vs concurrent clients")
    print(f"# model {args.model}, {args.tokens} tokens per query, decoder {args.decoder}, "
          f"LMQC_N_THREADS={os.environ.get('LMQC_N_THREADS', '2 (default)')}")
    src = query(args.decoder, args.tokens)
    base_queries = 4 if args.quick else 8

    def rounds(c: int) -> int:
        return max(1 if args.quick else 2, base_queries // c)

    rows: list[dict[str, Any]] = []
    # 1. in-process baseline (before the server exists, so the two never compete for the cores)
    compiled = lmqc.compile(src, args.model)
    lmqc.run(compiled, topic="warm-up")
    r = run_level(compiled, 1, base_queries, None)
    rows.append({"mode": "in-process", **r})
    reference = dict(r["values"])  # values of every topic in-process, to check the server's against
    for topic in TOPICS:
        if topic not in reference:
            res = lmqc.run(compiled, topic=topic)
            reference[topic] = [x.variables for x in (res if isinstance(res, list) else [res])]
    print(f"# in-process: {r['tok_s']:.1f} tok/s (load {loadavg()})", flush=True)
    from lmqc.runtime.models import loaded_models

    for backend in loaded_models().values():  # free the in-process model before the server loads its own
        close = getattr(backend, "close", None)
        if close:
            close()

    # 2. the server
    proc, endpoint = start_server(args.model, max(levels))
    try:
        remote = lmqc.compile(src, endpoint=endpoint)
        lmqc.run(remote, topic="warm-up")
        for c in levels:
            before = _get(endpoint, "/info")["stats"]
            r = run_level(remote, c, rounds(c), endpoint)
            after = _get(endpoint, "/info")["stats"]
            r["batches"] = after["batches"] - before["batches"]
            r["merged_batches"] = after["merged_batches"] - before["merged_batches"]
            r["equal"] = f"{sum(reference[t] == v for t, v in r['values'].items())}/{len(r['values'])}"
            rows.append({"mode": "serve", **r})
            print(f"# serve x{c}: {r['tok_s']:.1f} tok/s (load {loadavg()})", flush=True)
        info = _get(endpoint, "/info")
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
    base = rows[0]["tok_s"]
    print()
    print(table(
        ["mode", "clients", "queries", "tokens", "wall s", "tok/s", "vs in-process", "p50 s", "p99 s", "batches", "merged", "= in-process"],
        [
            [r["mode"], r["clients"], r["queries"], r["tokens"], r["wall_s"], r["tok_s"], f"{r['tok_s'] / base:.2f}x",
             r["p50_s"], r["p99_s"], r.get("batches"), r.get("merged_batches"), r.get("equal")]
            for r in rows
        ],
    ))
    print(f"# server largest batch {info['stats']['largest_batch']} branches; {info['stats']['merged_batches']} merged "
          f"batches of {info['stats']['batches']}")
    write_json(args.json, "serve.json", {"machine": machine, "args": vars(args), "rows": rows, "server_info": info})


if __name__ == "__main__":
    main()
