"""In-process batching of concurrent async queries on Gemma 3 270M: N queries run one after another with
``lmqc.run`` versus N at once with ``asyncio.gather(lmqc.run_async(...))``, which share the model through one
batching worker (one batched model evaluation per step for every running hole).

Every query fills one hole of exactly ``--tokens`` tokens (``len(TOKENS(X)) == N``) after a prompt that differs
per query. Throughput is generated tokens over wall time; "model calls" counts the backend's ``eval`` calls.
The last column counts concurrent values equal to the sequential ones (argmax: equal unless a batched evaluation
flips a near-tie in llama.cpp's logits).

Usage::

    .venv/bin/python benchmarks/async_batching.py [--tokens 24] [--queries 1,4,8] [--model gemma-3-270m]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import header, loadavg, table, write_json  # noqa: E402

import lmqc  # noqa: E402

TOPICS = ["the sea", "mountains", "coffee", "rain", "the moon", "trains", "a library", "winter", "bees", "music",
          "a storm", "gardens", "bridges", "a bakery", "the desert", "a city at night"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tokens", type=int, default=24)
    ap.add_argument("--queries", default="1,4,8")
    ap.add_argument("--model", default="gemma-3-270m")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    machine = header("lmqc.run_async: concurrent queries batched in-process vs sequential lmqc.run")
    source = f'"A short poem about {{topic}}:\\n[X]" where len(TOKENS(X)) == {args.tokens}\n'
    compiled = lmqc.compile(source, args.model)
    backend = lmqc.model(args.model)
    lmqc.run(compiled, topic="warm-up")  # load the model and build the tables once
    rows = []
    for n in [int(x) for x in args.queries.split(",")]:
        topics = (TOPICS * (n // len(TOPICS) + 1))[:n]
        backend.stats.reset()
        t0 = time.perf_counter()
        sequential = [lmqc.run(compiled, topic=t) for t in topics]
        t_seq = time.perf_counter() - t0
        calls_seq = backend.stats.eval_calls

        async def together(topics: list[str] = topics) -> list[object]:
            return await asyncio.gather(*[lmqc.run_async(compiled, topic=t) for t in topics])

        backend.stats.reset()
        t0 = time.perf_counter()
        concurrent = asyncio.run(together())
        t_conc = time.perf_counter() - t0
        calls_conc = backend.stats.eval_calls
        tokens = sum(r.n_tokens for r in sequential)
        same = sum(a.variables == b.variables for a, b in zip(sequential, concurrent, strict=True))
        rows.append({
            "queries": n, "tokens": tokens, "seq_s": t_seq, "seq_tok_s": tokens / t_seq, "seq_calls": calls_seq,
            "conc_s": t_conc, "conc_tok_s": tokens / t_conc, "conc_calls": calls_conc, "same_values": same,
            "loadavg": loadavg(),
        })
    print(table(
        ["queries", "tokens", "sequential s", "tok/s", "model calls", "concurrent s", "tok/s", "model calls",
         "speed-up", "same values"],
        [[r["queries"], r["tokens"], f"{r['seq_s']:.2f}", f"{r['seq_tok_s']:.1f}", r["seq_calls"],
          f"{r['conc_s']:.2f}", f"{r['conc_tok_s']:.1f}", r["conc_calls"], f"{r['seq_s'] / r['conc_s']:.2f}x",
          f"{r['same_values']}/{r['queries']}"] for r in rows],
    ))
    write_json(args.json, "async_batching.json", {"machine": machine, "args": vars(args), "rows": rows})


if __name__ == "__main__":
    main()
