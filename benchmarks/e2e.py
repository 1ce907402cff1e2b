"""End-to-end decoding on Gemma 3 270M: constrained vs unconstrained tokens/s, forward passes saved by forced
tokens, and the cost of width (sample(n=4), beam(n=4)) against argmax.

    .venv/bin/python benchmarks/e2e.py [--quick] [--json PATH] [--tokens 32] [--repeat 3] [--threads N]

Per workload (DESIGN §4; each a real query ``"[X]" where ...`` compiled with ``lmqc.api.compile_query``):

* ``argmax``: the hole decoded by ``runtime.decode.decode_hole`` with its automaton and the hole's own limits
  (at most ``--tokens`` tokens, through ``max_len``; the prompt is evaluated before the clock starts, with a fresh KV cache for every run). A hole that ends
  after k < ``--tokens`` tokens is decoded ceil(tokens / k) times per measurement, so every measurement covers
  at least ``--tokens`` tokens;
* ``unconstrained``: the same prompt, the same backend, ``decode_hole`` with no automaton, exactly the same
  number of tokens per decode (min_tokens = max_tokens = k), the same number of decodes;
* the ratio of tokens/s (> 1: constrained is faster) and the backend counters (``backend.stats``: model steps,
  ``llama_decode`` calls, tokens fed) of one constrained and one unconstrained decode;
* ``sample(n=4)`` and ``beam(n=4)`` with the same automaton: wall time per model step relative to argmax.

Width on equal tokens: unconstrained argmax vs sample(n=4) vs beam(n=4), exactly ``--tokens`` tokens each.
External reference: llama-cpp-python's own ``Llama.generate`` greedy loop (temp=0) on the same file.

Each figure is the median of ``--repeat`` measurements. Nothing is asserted.
"""

from __future__ import annotations

import math
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import arg_parser, header, loadavg, med, model_path, selected, table, write_json  # noqa: E402

WIDTH = 4


def main() -> None:
    ap = arg_parser(__doc__)
    ap.add_argument("--tokens", type=int, default=None, help="tokens per measurement (default 32, quick 16)")
    ap.add_argument("--repeat", type=int, default=None, help="measurements per figure (default 3, quick 1)")
    ap.add_argument("--threads", type=int, default=None, help="llama.cpp threads (default $LMQC_N_THREADS or 2)")
    ap.add_argument("--no-reference", action="store_true", help="skip the llama-cpp-python Llama reference")
    args = ap.parse_args()
    N = args.tokens or (16 if args.quick else 32)
    R = args.repeat or (1 if args.quick else 3)
    mach = header("lmqc end-to-end benchmark on Gemma 3 270M (DESIGN §4)")

    from lmqc.api import compile_query, parse
    from lmqc.runtime.decode import Beam, Sample, decode_hole, hole_limits
    from lmqc.runtime.models import get_model

    t0 = time.perf_counter()
    model = get_model("gemma-3-270m", n_threads=args.threads)
    print(f"# model: {model!r}, loaded in {time.perf_counter() - t0:.2f} s; {N} tokens per measurement, median of {R}")
    vocab = model.vocabulary
    stats = model.stats

    def one(prompt: list[int], automaton: Any, **kw: Any) -> tuple[float, list[Any], dict[str, int]]:
        """One decode from a freshly cached prompt: wall seconds, completions, backend counters."""
        model.reset()
        model.eval([prompt])
        stats.reset()
        t = time.perf_counter()
        out = decode_hole(model, kw.pop("contexts", [prompt]), automaton, **kw)
        wall = time.perf_counter() - t
        return wall, out, {"eval_calls": stats.eval_calls, "decode_calls": stats.decode_calls, "tokens_fed": stats.tokens}

    results: dict[str, Any] = {}
    for w in selected(args.workloads):
        compiled = compile_query(parse(w.source), vocab)
        a = compiled.automata["X"]
        p = model.tokenize(w.prompt, bos=True)
        # The hole's own limits, as run_compiled passes them; runs are bounded by max_len (prompt + N tokens)
        # rather than by max_tokens, which would switch on the decoder's token-budget filtering.
        limits = {**hole_limits(compiled.holes["X"]), "max_len": len(p) + N}
        _, out, con_stats = one(p, a, **limits)
        k = out[0].n_tokens
        reps = max(1, math.ceil(N / max(k, 1)))
        uncon_kw = {"min_tokens": k, "max_tokens": k}
        _, uout, uncon_stats = one(p, None, **uncon_kw)
        con_t, uncon_t, samp, beam = [], [], [], []
        for i in range(R):
            # alternate which of the pair runs first, so that drift on a shared machine hits both alike
            pair = [(con_t, a, limits), (uncon_t, None, uncon_kw)]
            for dst, auto, kw in pair if i % 2 == 0 else pair[::-1]:
                dst.append(sum(one(p, auto, **kw)[0] for _ in range(reps)))
            ws, sout, ss = one(p, a, contexts=[p] * WIDTH, strategy=Sample(temperature=1.0), rng=len(samp), **limits)
            samp.append({"wall": ws, "steps": ss["eval_calls"], "tokens": [c.n_tokens for c in sout], **ss})
            wb, bout, bs = one(p, a, strategy=Beam(WIDTH), **limits)
            beam.append({"wall": wb, "steps": bs["eval_calls"], "tokens": [c.n_tokens for c in bout], **bs})
        tokens = k * reps
        con_tps, uncon_tps = tokens / med(con_t), tokens / med(uncon_t)
        arg_step = med(con_t) / reps / max(con_stats["eval_calls"], 1)
        s_step = med([s["wall"] / max(s["steps"], 1) for s in samp])
        b_step = med([b["wall"] / max(b["steps"], 1) for b in beam])
        results[w.name] = {
            "source": w.source,
            "prompt": w.prompt,
            "value": out[0].text,
            "ending": out[0].ending,
            "hole_tokens": k,
            "decodes_per_measurement": reps,
            "tokens_per_measurement": tokens,
            "argmax_s": con_t,
            "unconstrained_s": uncon_t,
            "argmax_tok_s": con_tps,
            "unconstrained_tok_s": uncon_tps,
            "speed_ratio": con_tps / uncon_tps,
            "argmax_stats": con_stats,
            "unconstrained_stats": uncon_stats,
            "sample": samp,
            "beam": beam,
            "argmax_s_per_step": arg_step,
            "sample_s_per_step": s_step,
            "beam_s_per_step": b_step,
        }
        r = results[w.name]
        print(f"  {w.name}: {k} tokens x {reps}, {con_tps:.1f} vs {uncon_tps:.1f} tok/s, {r['value'][:40]!r}", flush=True)

    print("\nconstrained argmax vs unconstrained greedy (same prompt, backend and token count; tok/s, median):")
    hdr = ["workload", "tokens", "argmax tok/s", "uncon tok/s", "ratio", "steps", "uncon steps", "decodes",
           "uncon decodes", "fed", "value"]
    print(
        table(
            hdr,
            [
                [
                    n,
                    f"{r['hole_tokens']}x{r['decodes_per_measurement']}",
                    r["argmax_tok_s"],
                    r["unconstrained_tok_s"],
                    f"{r['speed_ratio']:.2f}x",
                    r["argmax_stats"]["eval_calls"],
                    r["unconstrained_stats"]["eval_calls"],
                    r["argmax_stats"]["decode_calls"],
                    r["unconstrained_stats"]["decode_calls"],
                    r["argmax_stats"]["tokens_fed"],
                    repr(r["value"][:32]),
                ]
                for n, r in results.items()
            ],
            align="lrrrrrrrrrl",
        )
    )
    print("  (steps = decoder model steps, decodes = llama_decode calls, fed = tokens fed, for ONE constrained decode;"
          " forced tokens are fed with the next step's batch)")

    print("\nwidth, per workload: wall time per model step relative to argmax (same automaton; target <= 2x):")
    print(
        table(
            ["workload", "argmax ms/step", f"sample({WIDTH}) ms/step", "ratio", f"beam({WIDTH}) ms/step", "ratio",
             "sample tokens", "beam tokens"],
            [
                [
                    n,
                    r["argmax_s_per_step"] * 1e3,
                    r["sample_s_per_step"] * 1e3,
                    f"{r['sample_s_per_step'] / r['argmax_s_per_step']:.2f}x",
                    r["beam_s_per_step"] * 1e3,
                    f"{r['beam_s_per_step'] / r['argmax_s_per_step']:.2f}x",
                    str(r["sample"][-1]["tokens"]),
                    str(r["beam"][-1]["tokens"]),
                ]
                for n, r in results.items()
            ],
        )
    )

    # -- width on exactly N tokens, unconstrained ---------------------------------------------------------------
    base = model.tokenize(selected("len_lt_50")[0].prompt, bos=True)
    exact = {"min_tokens": N, "max_tokens": N}
    w_arg = [one(base, None, **exact)[0] for _ in range(R)]
    w_smp = [one(base, None, contexts=[base] * WIDTH, strategy=Sample(1.0), rng=i, **exact)[0] for i in range(R)]
    w_beam = [one(base, None, strategy=Beam(WIDTH), **exact)[0] for _ in range(R)]
    width = {"argmax_s": w_arg, "sample_s": w_smp, "beam_s": w_beam}
    print(f"\nwidth on exactly {N} tokens (unconstrained, per branch): argmax {med(w_arg):.2f} s, "
          f"sample(n={WIDTH}) {med(w_smp):.2f} s ({med(w_smp) / med(w_arg):.2f}x), "
          f"beam(n={WIDTH}) {med(w_beam):.2f} s ({med(w_beam) / med(w_arg):.2f}x)   target <= 2x")

    # -- the model's own cost of width: one batched step of 1 vs WIDTH sequences (one new token each) ---------------
    toks = [int(t) for t in model.tokenize(" the cat sat on", bos=False)][:WIDTH]
    toks += [toks[0]] * (WIDTH - len(toks))
    f1, fw = [], []
    for _ in range(5 * R):
        model.reset()
        model.eval([base])
        model.eval([base + [toks[0]]] * WIDTH)  # every slot holds the prompt (copies), untimed
        t = time.perf_counter()
        model.eval([base + [toks[0], toks[1]]])
        f1.append(time.perf_counter() - t)
        model.reset()
        model.eval([base])
        model.eval([base + [toks[0]]] * WIDTH)
        t = time.perf_counter()
        model.eval([base + [toks[0], x] for x in toks])
        fw.append(time.perf_counter() - t)
    width["model_step_1_s"], width[f"model_step_{WIDTH}_s"] = f1, fw
    print(f"model step alone (backend.eval, one new token per sequence): 1 sequence {med(f1) * 1e3:.1f} ms, "
          f"{WIDTH} sequences in one batch {med(fw) * 1e3:.1f} ms ({med(fw) / med(f1):.2f}x)")

    # -- external reference ---------------------------------------------------------------------------------------
    ref: dict[str, Any] | None = None
    if not args.no_reference:
        try:
            import llama_cpp

            threads = model_threads(args.threads)
            llm = llama_cpp.Llama(model_path=model_path(), n_ctx=1024, n_threads=threads, n_threads_batch=threads,
                                  verbose=False)
            tps = []
            for _ in range(R):
                marks = []
                for i, _tok in enumerate(llm.generate(base, temp=0.0, top_k=1, top_p=1.0, min_p=0.0, reset=True)):
                    marks.append(time.perf_counter())
                    if i + 1 >= N + 1:
                        break
                tps.append(N / (marks[-1] - marks[0]))  # excludes the prompt and first token, as above
            ours = N / med(w_arg)
            ref = {"tok_s": tps, "threads": threads, "lmqc_uncon_tok_s": ours}
            print(f"llama-cpp-python Llama.generate greedy ({threads} threads): {med(tps):.1f} tok/s; lmqc unconstrained "
                  f"decode_hole on the same prompt: {ours:.1f} tok/s ({ours / med(tps):.2f}x)")
            del llm
        except Exception as e:  # noqa: BLE001 - the reference is optional
            print(f"llama-cpp-python reference skipped: {type(e).__name__}: {e}")
            ref = {"error": str(e)}

    # -- targets ----------------------------------------------------------------------------------------------------
    checks = []
    for n, r in results.items():
        goal = 1.3 if n == "json_obj" else 0.99
        checks.append({"target": f"{n}: argmax vs unconstrained tok/s", "value": r["speed_ratio"], "limit": goal,
                       "met": r["speed_ratio"] >= goal, "kind": ">="})
    for what, val in (("sample", med(w_smp) / med(w_arg)), ("beam", med(w_beam) / med(w_arg))):
        checks.append({"target": f"{what}(n={WIDTH}) vs argmax, equal tokens", "value": val, "limit": 2.0,
                       "met": val <= 2.0, "kind": "<="})
    missed = [c for c in checks if not c["met"]]
    print(f"\nDESIGN §4 targets: {len(checks) - len(missed)} of {len(checks)} met" + (";" if missed else "."))
    for c in missed:
        print(f"  MISSED {c['target']}: {c['value']:.2f}x (target {c['kind']} {c['limit']}x)")
    print(f"# load average at end: {loadavg()}")
    write_json(args.json, "e2e.json", {"benchmark": "e2e", "machine": mach, "quick": args.quick, "tokens": N,
                                      "repeat": R, "model": repr(model), "workloads": results, "width": width,
                                      "llama_cpp_reference": ref, "targets": checks})


def model_threads(threads: int | None) -> int:
    import os

    return threads or int(os.environ.get("LMQC_N_THREADS", "2"))


if __name__ == "__main__":
    main()
