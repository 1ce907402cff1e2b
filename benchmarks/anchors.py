"""lmqc against the constrained-decoding engines of DESIGN §4 (outlines-core, xgrammar, llguidance), same machine,
same run, same Gemma 3 vocabulary, same eight regexes.

    .venv/bin/python benchmarks/anchors.py [--quick] [--json PATH] [--workloads ...] [--anchors a,b,c]
    make bench-anchors     # installs the optional extra 'anchors' into .venv first

Per engine: one-off setup per vocabulary (its tokenizer description built from lmqc's ``Vocabulary`` token
bytes), compile (regex -> ready matcher; median of a few runs, one run if the first takes over 2 s) and the
per-step mask fill over a 64-step random walk (the engine's own fill of a token bitmask; the walk continues with
a random allowed non-EOS token, restarting when the value has ended; per step the median over replays of the
same walk, plus the worst step of the first pass). lmqc's columns are its compile (``compile_query`` of the
``"[X]" where ...`` query) and its per-step work as in compile.py: state -> mask lookup, the mask applied to a
real Gemma logits row for argmax, and the state advance — more work than an anchor's mask fill alone.

An engine that is not installed or fails is reported as such, and the others still run.
"""

from __future__ import annotations

import gc
import importlib.metadata as md
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (  # noqa: E402
    arg_parser,
    header,
    loadavg,
    med,
    model_path,
    real_logits,
    selected,
    stats_us,
    step_walk,
    table,
    write_json,
)

ANCHORS = ("outlines-core", "xgrammar", "llguidance")


class Engine:
    """Uniform driver: setup(vocab) once, compile(regex), matcher(compiled), fill(m, bitmask), advance(m, tok)."""

    name = "?"

    def setup(self, vocab: Any) -> None:
        raise NotImplementedError

    def compile(self, regex: str) -> Any:
        raise NotImplementedError

    def matcher(self, compiled: Any) -> Any:
        raise NotImplementedError

    def fill(self, m: Any, bitmask: np.ndarray) -> None:
        raise NotImplementedError

    def advance(self, m: Any, tok: int) -> None:
        raise NotImplementedError


def _pieces(vocab: Any) -> list[bytes]:
    buf, off = vocab.buffer.tobytes(), vocab.offsets
    return [buf[off[i] : off[i + 1]] for i in range(vocab.size)]


class Outlines(Engine):
    name = "outlines-core"

    def setup(self, vocab: Any) -> None:
        import outlines_core as oc

        self.oc = oc
        groups: dict[bytes, list[int]] = {}
        never = vocab.never
        for i, p in enumerate(_pieces(vocab)):
            if not never[i]:
                groups.setdefault(p, []).append(i)
        self.vocab = oc.Vocabulary(vocab.eos_id, groups)

    def compile(self, regex: str) -> Any:
        return self.oc.Index(regex, self.vocab)

    def matcher(self, compiled: Any) -> Any:
        return self.oc.Guide(compiled)

    def fill(self, m: Any, bitmask: np.ndarray) -> None:
        m.write_mask_into(bitmask.ctypes.data, bitmask.size, 4)

    def advance(self, m: Any, tok: int) -> None:
        m.advance(tok, return_tokens=False)


class XGrammar(Engine):
    name = "xgrammar"

    def setup(self, vocab: Any) -> None:
        import xgrammar as xgr

        self.xgr = xgr
        pieces = _pieces(vocab)
        self.info = xgr.TokenizerInfo(pieces, xgr.VocabType.RAW, vocab_size=vocab.size, stop_token_ids=[vocab.eos_id])

    def compile(self, regex: str) -> Any:
        # a fresh compiler without cache, so that every run compiles
        comp = self.xgr.GrammarCompiler(self.info, max_threads=2, cache_enabled=False)
        return comp.compile_regex(regex)

    def matcher(self, compiled: Any) -> Any:
        return self.xgr.GrammarMatcher(compiled)

    def fill(self, m: Any, bitmask: np.ndarray) -> None:
        m.fill_next_token_bitmask(bitmask[None, :])

    def advance(self, m: Any, tok: int) -> None:
        if not m.accept_token(tok):
            raise RuntimeError(f"xgrammar rejected token {tok} it allowed")


class LLGuidance(Engine):
    name = "llguidance"

    def setup(self, vocab: Any) -> None:
        import llama_cpp
        import llguidance
        import llguidance.numpy as lln

        self.llg, self.lln = llguidance, lln
        llm = llama_cpp.Llama(model_path=model_path(), vocab_only=True, verbose=False)
        never = vocab.never

        class _Tok:
            eos_token_id = vocab.eos_id
            bos_token_id = None
            tokens = [b"" if never[i] else p for i, p in enumerate(_pieces(vocab))]
            special_token_ids = [int(i) for i in np.flatnonzero(never)]

            def __call__(self, s: bytes) -> list[int]:
                return llm.tokenize(s, add_bos=False, special=False)

        self.tok = llguidance.LLTokenizer(llguidance.TokenizerWrapper(_Tok()))

    def compile(self, regex: str) -> Any:
        g = self.llg.LLMatcher.grammar_from_regex(regex)
        m = self.llg.LLMatcher(self.tok, g, log_level=0)
        if m.is_error():
            raise RuntimeError(m.get_error())
        return m

    def matcher(self, compiled: Any) -> Any:
        return compiled.deep_copy()

    def fill(self, m: Any, bitmask: np.ndarray) -> None:
        m.unsafe_compute_mask_ptr(bitmask.ctypes.data, bitmask.size * 4)

    def advance(self, m: Any, tok: int) -> None:
        if not m.consume_token(tok):
            raise RuntimeError(f"llguidance rejected token {tok}: {m.get_error()}")


ENGINES: dict[str, Callable[[], Engine]] = {"outlines-core": Outlines, "xgrammar": XGrammar, "llguidance": LLGuidance}


def _allowed(bitmask: np.ndarray, V: int) -> np.ndarray:
    return np.flatnonzero(np.unpackbits(bitmask.view(np.uint8), bitorder="little")[:V])


def walk(engine: Engine, compiled: Any, V: int, eos: int, steps: int, passes: int, seed: int = 1) -> dict[str, Any]:
    """Random walk: per step the mask fill is timed; the first pass picks the tokens, later passes replay them."""
    bitmask = np.zeros((V + 31) // 32, np.int32)
    rng = np.random.default_rng(seed)
    plan: list[int] = []  # token per step, -1 = restart after this step
    runs: list[list[int]] = []
    for p in range(passes):
        m = engine.matcher(compiled)
        ns: list[int] = []
        gc.collect()
        gc.disable()
        try:
            for i in range(steps):
                t0 = time.perf_counter_ns()
                engine.fill(m, bitmask)
                ns.append(time.perf_counter_ns() - t0)
                if p == 0:
                    ids = _allowed(bitmask, V)
                    ids = ids[ids != eos]
                    plan.append(int(ids[rng.integers(len(ids))]) if len(ids) else -1)
                tok = plan[i]
                if tok >= 0:
                    engine.advance(m, tok)
                    # ended when only EOS (or nothing) is allowed next: restart (checked on the next fill)
                if tok < 0:
                    m = engine.matcher(compiled)
        finally:
            gc.enable()
        runs.append(ns)
    cold = np.asarray(runs[0], np.float64)
    warm = np.median(np.asarray(runs[1:], np.float64), axis=0) if passes > 1 else cold
    return {"cold": cold, "warm": warm, "restarts": plan.count(-1)}


def main() -> None:
    ap = arg_parser(__doc__)
    ap.add_argument("--anchors", default=",".join(ANCHORS))
    ap.add_argument("--steps", type=int, default=64)
    args = ap.parse_args()
    R = 2 if args.quick else 5
    passes = 2 if args.quick else 5
    mach = header("lmqc vs anchors: compile and per-step mask work (DESIGN §4)")
    import lmqc
    from lmqc.api import compile_query, parse

    vocab = lmqc.vocabulary()
    vocab.levels  # noqa: B018
    compile_query(parse('"[X]" where len(X) < 7'), vocab)
    rows, _ = real_logits(64)
    workloads = selected(args.workloads)
    V, eos = vocab.size, vocab.eos_id

    out: dict[str, Any] = {"lmqc": {"version": md.version("lmqc"), "workloads": {}}}
    for w in workloads:
        times = []
        for _ in range(R):
            t = time.perf_counter()
            c = compile_query(parse(w.source), vocab)
            times.append(time.perf_counter() - t)
        wk = step_walk(c.automata["X"], vocab, rows, args.steps, seed=1, passes=1 + passes)
        out["lmqc"]["workloads"][w.name] = {"compile_ms": med(times) * 1e3, "step_warm_us": stats_us(wk["warm"]),
                                             "step_first_pass_us": stats_us(wk["cold"])}
    print("  lmqc: done", flush=True)

    for name in [a.strip() for a in args.anchors.split(",") if a.strip()]:
        rec: dict[str, Any] = {"workloads": {}}
        out[name] = rec
        try:
            rec["version"] = md.version(name)
        except md.PackageNotFoundError:
            rec["error"] = "not installed (make bench-anchors installs the optional extra 'anchors')"
            print(f"  {name}: {rec['error']}")
            continue
        eng = ENGINES[name]()
        try:
            t = time.perf_counter()
            eng.setup(vocab)
            rec["setup_s"] = time.perf_counter() - t
        except Exception as e:  # noqa: BLE001 - report and go on
            rec["error"] = f"setup failed: {type(e).__name__}: {e}"
            print(f"  {name}: {rec['error']}")
            continue
        for w in workloads:
            try:
                times = []
                compiled = None
                for _ in range(R):
                    t = time.perf_counter()
                    compiled = eng.compile(w.regex)
                    times.append(time.perf_counter() - t)
                    if times[-1] > 2.0:
                        break
                wk = walk(eng, compiled, V, eos, args.steps, 1 + passes)
                rec["workloads"][w.name] = {"compile_ms": med(times) * 1e3, "compile_runs": len(times),
                                            "fill_warm_us": stats_us(wk["warm"]),
                                            "fill_first_pass_us": stats_us(wk["cold"])}
            except Exception as e:  # noqa: BLE001
                rec["workloads"][w.name] = {"error": f"{type(e).__name__}: {e}"}
            print(f"  {name} {w.name}: done", flush=True)

    anchors = [a for a in out if a != "lmqc"]
    print("\nsetup once per vocabulary: " + "; ".join(
        f"{a} {out[a]['setup_s']:.2f} s" if "setup_s" in out[a] else f"{a}: {out[a].get('error')}" for a in anchors))
    print("\ncompile ms (regex/query -> ready matcher), and each anchor's time relative to lmqc (x = anchor / lmqc):")
    hdr = ["workload", "lmqc"]
    for a in anchors:
        hdr += [a, "x"]
    body = []
    for w in workloads:
        lm = out["lmqc"]["workloads"][w.name]["compile_ms"]
        row: list[Any] = [w.name, lm]
        for a in anchors:
            r = out[a]["workloads"].get(w.name)
            if r is None or "error" in r:
                row += [("error" if r else "-"), None]
            else:
                row += [r["compile_ms"], f"{r['compile_ms'] / lm:.2f}x"]
        body.append(row)
    print(table(hdr, body))
    print("\nper-step µs, median / max (warm replays; first-pass max in brackets). lmqc: lookup + mask applied to real "
          "logits + argmax + advance; anchors: bitmask fill only:")
    hdr = ["workload", "lmqc"] + anchors
    body = []
    for w in workloads:
        lm = out["lmqc"]["workloads"][w.name]
        row = [w.name, _cell(lm["step_warm_us"], lm["step_first_pass_us"])]
        for a in anchors:
            r = out[a]["workloads"].get(w.name)
            row.append("-" if r is None else r.get("error", "")[:40] if "error" in r else
                       _cell(r["fill_warm_us"], r["fill_first_pass_us"]))
        body.append(row)
    print(table(hdr, body))
    print("\nmedian per-step ratio anchor / lmqc (> 1: lmqc is faster):")
    hdr = ["workload"] + anchors
    body = []
    for w in workloads:
        lm = out["lmqc"]["workloads"][w.name]["step_warm_us"]["median"]
        row = [w.name]
        for a in anchors:
            r = out[a]["workloads"].get(w.name)
            row.append("-" if r is None or "error" in r else f"{r['fill_warm_us']['median'] / lm:.2f}x")
        body.append(row)
    print(table(hdr, body))
    print(f"# load average at end: {loadavg()}")
    write_json(args.json, "anchors.json", {"benchmark": "anchors", "machine": mach, "quick": args.quick,
                                          "steps": args.steps, "results": out})


def _cell(warm: dict[str, float], cold: dict[str, float]) -> str:
    return f"{warm['median']:.1f} / {warm['max']:.0f} [{cold['max']:.0f}]"


if __name__ == "__main__":
    main()
