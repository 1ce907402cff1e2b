"""lmqc against the constrained-decoding engines of DESIGN §4 (outlines-core, xgrammar, llguidance), same machine,
same run, same Gemma 3 vocabulary, same eight regexes.

    .venv/bin/python benchmarks/anchors.py [--quick] [--json PATH] [--workloads ...] [--anchors a,b,c]
    make bench-anchors     # installs the optional extra 'anchors' into .venv first

Per engine: one-off setup per vocabulary (its tokenizer description built from lmqc's ``Vocabulary`` token
bytes), compile (regex -> ready matcher; the first run and the median of the next few, back to back, the engines
taking turns workload by workload; one run if the first takes over 2 s) and the per-step work over a 64-step
random walk. Every engine's step is the same work: the allowed set for the current state (an anchor fills its
token bitmask; lmqc looks up the state's mask), that set applied to the same real Gemma logits row, and the
argmax. Anchors apply the bitmask with their own CPU kernel where they ship one that
needs neither torch nor numba (xgrammar's C++ ``apply_token_bitmask_inplace_cpu`` called on NumPy buffers,
llguidance's ``llguidance.numpy.apply_token_bitmask_inplace``); outlines-core's NumPy kernel needs numba, so it
gets a plain NumPy apply (the "apply" line of the output names what each engine used). lmqc applies its mask
through the decoder's own ``choose_argmax``. The row is copied into one buffer before each (timed) step, as a
model writes it. The state advance is timed separately, and the unconstrained step (``argmax`` of the raw row)
is measured in the same harness: what a step costs beyond it is step i minus unconstrained step i. The walk
continues with a random allowed non-EOS token, restarting when the value has ended; per step the median over
replays of the same walk, plus the worst step of the first pass.
lmqc's compile is ``compile_query`` of the ``"[X]" where ...`` query (parse included) and the start of its hole,
which materializes every distinct mask (what xgrammar's compile does for its token mask cache).

An engine that is not installed or fails is reported as such, and the others still run.
"""

from __future__ import annotations

import contextlib
import gc
import importlib.metadata as md
import sys
import time
from collections.abc import Callable, Iterator
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
    special_ids,
    stats_us,
    table,
    write_json,
)

ANCHORS = ("outlines-core", "xgrammar", "llguidance")


def numpy_apply(logits: np.ndarray, bitmask: np.ndarray) -> None:
    """Set the logits of tokens whose bit is clear to -inf (for an engine without a NumPy-only kernel)."""
    logits[np.unpackbits(bitmask.view(np.uint8), bitorder="little", count=len(logits)) == 0] = -np.inf


class Engine:
    """Uniform driver: setup(vocab) once, compile(regex), matcher(compiled), fill(m, bitmask), apply(logits,
    bitmask), advance(m, tok)."""

    name = "?"
    apply_name = "NumPy (unpackbits; the engine's own kernel needs numba)"

    def apply(self, logits: np.ndarray, bitmask: np.ndarray) -> None:
        numpy_apply(logits, bitmask)

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

    apply_name = "xgrammar C++ apply_token_bitmask_inplace_cpu on NumPy buffers"

    def setup(self, vocab: Any) -> None:
        import xgrammar as xgr
        from xgrammar.base import _core

        self.xgr = xgr
        self._kernel = _core.kernels.apply_token_bitmask_inplace_cpu
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

    def apply(self, logits: np.ndarray, bitmask: np.ndarray) -> None:
        # what xgrammar.apply_token_bitmask_inplace runs for CPU tensors, without building torch tensors
        v, w = len(logits), len(bitmask)
        self._kernel(logits.ctypes.data, (1, v), (v, 1), bitmask.ctypes.data, (1, w), (w, 1), v, None, "float32")

    def advance(self, m: Any, tok: int) -> None:
        if not m.accept_token(tok):
            raise RuntimeError(f"xgrammar rejected token {tok} it allowed")


class LLGuidance(Engine):
    name = "llguidance"

    apply_name = "llguidance.numpy.apply_token_bitmask_inplace"

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

    def apply(self, logits: np.ndarray, bitmask: np.ndarray) -> None:
        self.lln.apply_token_bitmask_inplace(logits, bitmask)

    def advance(self, m: Any, tok: int) -> None:
        if not m.consume_token(tok):
            raise RuntimeError(f"llguidance rejected token {tok}: {m.get_error()}")


ENGINES: dict[str, Callable[[], Engine]] = {"outlines-core": Outlines, "xgrammar": XGrammar, "llguidance": LLGuidance}


def _allowed(bitmask: np.ndarray, V: int) -> np.ndarray:
    return np.flatnonzero(np.unpackbits(bitmask.view(np.uint8), bitorder="little", count=V))


class _Lmqc:
    """lmqc's side of the walk: the state's allowed set (``HoleTables.allowed``), ``choose_argmax`` on the row,
    ``automaton.step``."""

    def __init__(self, automaton: Any, vocab: Any) -> None:
        from lmqc.runtime.decode import HoleSpec
        from lmqc.runtime.decode.hole import HoleTables
        from lmqc.runtime.decode.strategies import choose_argmax

        self.a = automaton
        self.hole = HoleTables(HoleSpec(automaton), vocab.size, vocab.eos_id, special_ids(vocab))
        self.choose_argmax = choose_argmax
        self.state, self.n = int(automaton.initial), 0
        self.ids: Any = None
        self.dense: Any = None

    def restart(self) -> None:
        self.state, self.n = int(self.a.initial), 0

    def step(self, row: np.ndarray) -> int:
        self.ids, self.dense = self.hole.allowed(self.state, self.n)
        return self.choose_argmax(row, self.ids, self.dense)

    def allowed(self) -> np.ndarray:
        return self.ids if self.ids is not None else self.dense.all_ids()

    def advance(self, tok: int) -> None:
        self.state = self.a.step(self.state, tok)
        self.n += 1


def walk(engine: Engine | None, compiled: Any, vocab: Any, rows: np.ndarray, steps: int, passes: int,
         seed: int = 1) -> dict[str, Any]:
    """Random walk; per step the allowed set + apply + argmax is timed (and the advance separately).

    ``engine=None`` walks lmqc's automaton ``compiled``. The first pass picks the tokens (a random allowed
    non-EOS token), later passes replay them.
    """
    V, eos = vocab.size, vocab.eos_id
    bitmask = np.zeros((V + 31) // 32, np.int32)
    buf = np.empty(rows.shape[1], np.float32)
    rng = np.random.default_rng(seed)
    plan: list[int] = []  # token per step, -1 = restart after this step
    runs: list[list[int]] = []
    adv: list[list[int]] = []
    for p in range(passes):
        lm = _Lmqc(compiled, vocab) if engine is None else None
        m = None if engine is None else engine.matcher(compiled)
        ns: list[int] = []
        ans: list[int] = []
        with _pass():
            for i in range(steps):
                buf[:] = rows[i % len(rows)]  # the model has just written this row (cache-warm)
                if lm is not None:
                    t0 = time.perf_counter_ns()
                    lm.step(buf)
                    ns.append(time.perf_counter_ns() - t0)
                else:
                    t0 = time.perf_counter_ns()
                    engine.fill(m, bitmask)
                    engine.apply(buf, bitmask)
                    int(buf.argmax())
                    ns.append(time.perf_counter_ns() - t0)
                if p == 0:
                    ids = lm.allowed() if lm is not None else _allowed(bitmask, V)
                    ids = ids[ids != eos]
                    tok = int(ids[rng.integers(len(ids))]) if len(ids) else -1
                    if lm is not None and tok >= 0:
                        nxt = lm.a.step(lm.state, tok)
                        tok = tok if nxt >= 0 and not lm.a.is_stopped(nxt) else -1  # the value has ended
                    plan.append(tok)
                tok = plan[i]
                if tok >= 0:
                    t0 = time.perf_counter_ns()
                    if lm is not None:
                        lm.advance(tok)
                    else:
                        engine.advance(m, tok)
                    ans.append(time.perf_counter_ns() - t0)
                elif lm is not None:
                    lm.restart()
                else:
                    m = engine.matcher(compiled)
        runs.append(ns)
        adv.append(ans)
    return {"cold": np.asarray(runs[0], np.float64), "warm": _warm(runs), "advance": _warm(adv),
            "restarts": plan.count(-1)}


def unconstrained(rows: np.ndarray, steps: int, passes: int) -> np.ndarray:
    """Per step, the argmax of the raw row (nothing masked), median over passes; in the walk's own conditions
    (a collection before each pass, the collector off during it), so that step i here and step i of a walk
    start from the same caches (the first step of a pass runs right after the collection, cold)."""
    buf = np.empty(rows.shape[1], np.float32)
    runs = []
    for _ in range(passes):
        ns = []
        with _pass():
            for i in range(steps):
                buf[:] = rows[i % len(rows)]
                t0 = time.perf_counter_ns()
                int(buf.argmax())
                ns.append(time.perf_counter_ns() - t0)
        runs.append(ns)
    return _warm(runs)


@contextlib.contextmanager
def _pass() -> Iterator[None]:
    """The conditions of one timed pass (a walk's or the unconstrained run's, alike so that their steps compare):
    a collection first, the collector off during it."""
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def _warm(runs: list[list[int]]) -> np.ndarray:
    """Per step, the median over the passes after the first (the only one if there is one)."""
    return np.median(np.asarray(runs[1:] if len(runs) > 1 else runs, np.float64), axis=0)


def _engine_table(out: dict[str, Any], workloads: list, anchors: list[str], cell: Callable[[dict], Any]) -> str:
    """A table of one cell per workload (rows) and engine (columns, lmqc first), ``-`` where an engine has no
    record of the workload."""
    body = []
    for w in workloads:
        row: list[Any] = [w.name]
        for a in ["lmqc", *anchors]:
            r = out[a]["workloads"].get(w.name)
            row.append("-" if r is None else cell(r))
        body.append(row)
    return table(["workload", "lmqc", *anchors], body)


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

    uncon_steps = unconstrained(rows, args.steps, 1 + passes)
    uncon = stats_us(uncon_steps)
    out: dict[str, Any] = {"lmqc": {"version": md.version("lmqc"), "apply": "lmqc choose_argmax (runtime.decode)",
                                    "workloads": {}}, "unconstrained_step_us": uncon}
    engines: dict[str, Engine] = {}
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
        rec["apply"] = eng.apply_name
        try:
            t = time.perf_counter()
            eng.setup(vocab)
            rec["setup_s"] = time.perf_counter() - t
        except Exception as e:  # noqa: BLE001 - report and go on
            rec["error"] = f"setup failed: {type(e).__name__}: {e}"
            print(f"  {name}: {rec['error']}")
            continue
        engines[name] = eng

    from lmqc.runtime.decode import HoleSpec
    from lmqc.runtime.decode.hole import HoleTables

    specials = special_ids(vocab)

    def compile_with(name: str, w: Any) -> Any:
        if name == "lmqc":
            # ready to decode: the query compiled and its hole started, which materializes every distinct mask
            # (as xgrammar's compile fills its token mask cache)
            automaton = compile_query(parse(w.source), vocab).automata["X"]
            HoleTables(HoleSpec(automaton), vocab.size, vocab.eos_id, specials)
            return automaton
        return engines[name].compile(w.regex)

    for w in workloads:
        # Engines take turns workload by workload, so that the VM's drifting speed (up to 2x within minutes here)
        # favours none of them; each engine's runs stay back to back (alternating run by run would measure each
        # engine in caches the other just filled). An engine whose run took over 2 s is not run again.
        times: dict[str, list[float]] = {n: [] for n in ["lmqc", *engines]}
        compiled: dict[str, Any] = {}
        failed: dict[str, str] = {}
        for n in times:
            try:
                for _ in range(R + 1):  # the first run is reported apart (cold caches), the median is of the rest
                    t = time.perf_counter()
                    compiled[n] = compile_with(n, w)
                    times[n].append(time.perf_counter() - t)
                    if times[n][-1] > 2.0:
                        break
            except Exception as e:  # noqa: BLE001 - report and go on
                failed[n] = f"{type(e).__name__}: {e}"
        for n, ts in times.items():
            rec = out[n]["workloads"]
            if n in failed:
                rec[w.name] = {"error": failed[n]}
                continue
            try:
                wk = walk(None if n == "lmqc" else engines[n], compiled[n], vocab, rows, args.steps, 1 + passes)
            except Exception as e:  # noqa: BLE001
                rec[w.name] = {"error": f"{type(e).__name__}: {e}"}
                continue
            rec[w.name] = {"compile_ms": med(ts[1:] or ts) * 1e3, "compile_first_ms": ts[0] * 1e3, "compile_runs": len(ts),
                           "step_warm_us": stats_us(wk["warm"]), "step_first_pass_us": stats_us(wk["cold"]),
                           "beyond_paired_us": stats_us(wk["warm"] - uncon_steps),
                           "advance_us": stats_us(wk["advance"])}
        print(f"  {w.name}: done", flush=True)

    anchors = [a for a in out if a not in ("lmqc", "unconstrained_step_us")]
    print("\nsetup once per vocabulary: " + "; ".join(
        f"{a} {out[a]['setup_s']:.2f} s" if "setup_s" in out[a] else f"{a}: {out[a].get('error')}" for a in anchors))
    print("\ncompile ms (regex/query -> ready matcher; median of the runs after the first), and each anchor's time "
          "relative to lmqc (x = anchor / lmqc):")
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
    print("\nfirst compile of each workload (ms; caches cold: right after another engine's work, before any "
          "per-process cache of the engine holds the workload):")
    print(_engine_table(out, workloads, anchors, lambda r: "-" if "error" in r else r["compile_first_ms"]))
    print(f"\nper-step µs: the allowed set, applied to a real Gemma logits row, and the argmax, the same work for every "
          f"engine; median / max of the warm replays, first-pass max in brackets. Unconstrained step (argmax of the "
          f"raw row): median {uncon['median']:.1f}, max {uncon['max']:.0f}. Applied with:")
    for a in ["lmqc", *anchors]:
        print(f"  {a}: {out[a].get('apply', '-')}")
    print(_engine_table(out, workloads, anchors, lambda r: r["error"][:40] if "error" in r else
                        _cell(r["step_warm_us"], r["step_first_pass_us"])))
    print(f"\nper-step µs beyond the unconstrained step: step i of the walk minus step i of the unconstrained run "
          f"(same harness: both start each pass right after a collection), median and max over the steps; the "
          f"worst step minus the unconstrained median ({uncon['median']:.1f}) in brackets; and the state advance "
          "(median, timed apart):")
    hdr = ["workload"] + [f"{a} {k}" for a in ["lmqc", *anchors] for k in ("med+", "max+", "adv")]
    body = []
    for w in workloads:
        row = [w.name]
        for a in ["lmqc", *anchors]:
            r = out[a]["workloads"].get(w.name)
            if r is None or "error" in r:
                row += ["-", "-", "-"]
            else:
                b = r["beyond_paired_us"]
                row += [b["median"], f"{b['max']:.0f} [{r['step_warm_us']['max'] - uncon['median']:.0f}]",
                        r["advance_us"]["median"]]
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
            row.append("-" if r is None or "error" in r else f"{r['step_warm_us']['median'] / lm:.2f}x")
        body.append(row)
    print(table(hdr, body))
    print(f"# load average at end: {loadavg()}")
    write_json(args.json, "anchors.json", {"benchmark": "anchors", "machine": mach, "quick": args.quick,
                                          "steps": args.steps, "results": out})


def _cell(warm: dict[str, float], cold: dict[str, float]) -> str:
    return f"{warm['median']:.1f} / {warm['max']:.0f} [{cold['max']:.0f}]"


if __name__ == "__main__":
    main()
