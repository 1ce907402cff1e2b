"""JSONSchemaBench: the real-world JSON Schemas of JSONSchemaBench (arXiv:2501.10868) compiled to token automata on
the Gemma 3 vocabulary — lmqc against outlines-core, xgrammar and llguidance (the `anchors` extra) in the same run —
and, optionally, a sample run on Gemma 3 270M whose outputs are validated with `jsonschema`.

    .venv/bin/python benchmarks/jsonschemabench.py [--limit N] [--splits A,B] [--engines lmqc,xgrammar,...]
        [--timeout S] [--engine-limit outlines-core=20] [--step-sample K] [--generate N] [--data DIR] [--json PATH]
    make bench-jsonschema      # installs the optional extra 'anchors' first

Per split (``--limit N``: the first N schemas of each split): how many schemas each engine compiles, and its
compile time (schema text -> ready matcher on the prepared vocabulary: lmqc's token automaton through the same
``build_hole`` a query uses and the start of its hole (its masks materialized), caches cleared before every schema; xgrammar's ``compile_json_schema`` with a fresh
compiler and no cache; llguidance's matcher construction, which compiles lazily and does its work while decoding;
outlines-core's regex and index). Each engine runs in its own worker process, one schema at a time, with a time
limit per schema (a schema over it counts as not compiled, the worker is restarted). Layout is the same for all:
lmqc writes at most one space after ',' and ':'; xgrammar and llguidance are asked for no free whitespace
(``any_whitespace=False``, ``whitespace_flexible: false``: exactly ', ' and ': '); outlines-core gets the
whitespace pattern ``[ ]?``.

Per-step work (``--step-sample K`` schemas per split that lmqc compiled, a 32-step random walk each): lmqc's step
as in benchmarks/anchors.py (state -> mask lookup, the mask applied to a real Gemma logits row for the argmax, the
state advance), the anchors' bitmask fill; warm replays, median per schema, then the median and p90 over schemas.

``--generate N``: for N schemas per split that lmqc compiled, Gemma 3 270M writes a value (argmax, a prompt with the
schema, at most 200 tokens) and every value is validated with jsonschema (the schema's draft, its format checks).
"""

from __future__ import annotations

import importlib.metadata as md
import json
import multiprocessing as mp
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import ROOT, arg_parser, header, loadavg, table, write_json  # noqa: E402

DATA = ROOT.parent / "shared" / "jsonschemabench"
SPLITS = ("Github_trivial", "Github_easy", "Github_medium", "Github_hard", "Github_ultra", "Glaiveai2K",
          "JsonSchemaStore", "Kubernetes", "Snowplow", "WashingtonPost")
ENGINES = ("lmqc", "xgrammar", "llguidance", "outlines-core")
STEPS = 32


# --------------------------------------------------------------------------------------------------------------
# Engines (each lives in a worker process)


class LmqcEngine:
    name = "lmqc"

    def setup(self) -> None:
        import lmqc
        from lmqc.compiler import regular

        self.vocab = lmqc.vocabulary()
        self.vocab.levels.trie  # noqa: B018 - prepared once per vocabulary, like the anchors' tokenizer setup
        from _common import special_ids

        self.specials = special_ids(self.vocab)
        for k in "dws":  # Unicode class tables for negated regex classes: once per process
            regular._unicode_category(k)
        self.rows: Any = None

    def compile(self, text: str) -> Any:
        from lmqc.api import build_hole
        from lmqc.compiler import jsonschema as J
        from lmqc.compiler import regular
        from lmqc.compiler.nodes import JsonSchema
        from lmqc.runtime.decode import HoleSpec
        from lmqc.runtime.decode.hole import HoleTables

        for cache in (J._compile_cached, J._pattern_dfa, J._format_dfa, J._length_dfa, regular._compile_cached):
            cache.cache_clear()
        try:
            lang = J.compile_schema(text)
        except J.SchemaError as e:
            raise _Refused(e.keyword or _reason(str(e)), str(e)) from None
        _, automaton = build_hole("X", JsonSchema("X", text), self.vocab, None, "<bench>")
        # ready to decode: the hole started, which materializes its distinct masks (up to 256 of them; a lazy
        # automaton's on visit), as xgrammar's compile fills its token mask cache
        HoleTables(HoleSpec(automaton), self.vocab.size, self.vocab.eos_id, self.specials)
        self.last = automaton
        return {"states": automaton.n_states, "notes": list(lang.notes)[:3]}

    def steps(self) -> list[float]:
        from _common import real_logits, step_walk

        if self.rows is None:
            self.rows, _ = real_logits(64)
        wk = step_walk(self.last, self.vocab, self.rows, STEPS, seed=1, passes=3)
        return [float(x) for x in wk["warm"]]


class _AnchorEngine:
    name = "?"

    def setup(self) -> None:
        from anchors import ENGINES as A

        import lmqc

        self.vocab = lmqc.vocabulary()
        self.eng = A[self.name]()
        self.eng.setup(self.vocab)

    def steps(self) -> list[float]:
        from anchors import walk

        wk = walk(self.eng, self.last, self.vocab.size, self.vocab.eos_id, STEPS, 3, seed=1)
        return [float(x) for x in wk["warm"]]


class XGrammarEngine(_AnchorEngine):
    name = "xgrammar"

    def compile(self, text: str) -> Any:
        e = self.eng
        comp = e.xgr.GrammarCompiler(e.info, max_threads=2, cache_enabled=False)
        self.last = comp.compile_json_schema(text, any_whitespace=False, strict_mode=True)
        return {}


class LLGuidanceEngine(_AnchorEngine):
    name = "llguidance"

    def compile(self, text: str) -> Any:
        e = self.eng
        grammar = e.llg.LLMatcher.grammar_from_json_schema(text, defaults={"whitespace_flexible": False})
        m = e.llg.LLMatcher(e.tok, grammar, log_level=0)
        if m.is_error():
            raise RuntimeError(m.get_error())
        self.last = m
        return {}


class OutlinesEngine(_AnchorEngine):
    name = "outlines-core"

    def compile(self, text: str) -> Any:
        from outlines_core.json_schema import build_regex_from_schema

        regex = build_regex_from_schema(text, whitespace_pattern=r"[ ]?")
        self.last = self.eng.oc.Index(regex, self.eng.vocab)
        return {}


ENGINE_CLASSES = {"lmqc": LmqcEngine, "xgrammar": XGrammarEngine, "llguidance": LLGuidanceEngine,
                  "outlines-core": OutlinesEngine}


class _Refused(Exception):
    def __init__(self, keyword: str, message: str) -> None:
        super().__init__(message)
        self.keyword = keyword


def _reason(message: str) -> str:
    m = message.split(": ", 1)[-1]
    return m[:60]


def _worker(conn: Any, name: str) -> None:
    try:
        eng = ENGINE_CLASSES[name]()
        t0 = time.perf_counter()
        eng.setup()
        conn.send(("ready", time.perf_counter() - t0))
    except Exception as e:  # noqa: BLE001 - reported by the parent
        conn.send(("setup-error", f"{type(e).__name__}: {e}"))
        return
    while True:
        msg = conn.recv()
        if msg is None:
            return
        kind, payload = msg
        if kind == "compile":
            t0 = time.perf_counter()
            try:
                info = eng.compile(payload)
                conn.send(("ok", time.perf_counter() - t0, info))
            except _Refused as e:
                conn.send(("error", time.perf_counter() - t0, f"{e.keyword}: {e}"))
            except Exception as e:  # noqa: BLE001 - an engine's refusal or failure
                conn.send(("error", time.perf_counter() - t0, f"{type(e).__name__}: {str(e)[:300]}"))
        elif kind == "steps":
            try:
                conn.send(("steps", eng.steps()))
            except Exception as e:  # noqa: BLE001
                conn.send(("steps-error", f"{type(e).__name__}: {e}"))


class Worker:
    """One engine in a child process; a call over its time limit kills and restarts it."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.ctx = mp.get_context("spawn")
        self.proc: Any = None
        self.setup_s: float | None = None
        self.error: str | None = None
        self.start()

    def start(self) -> None:
        self.conn, child = self.ctx.Pipe()
        self.proc = self.ctx.Process(target=_worker, args=(child, self.name), daemon=True)
        self.proc.start()
        if not self.conn.poll(600):
            self.error = "setup timed out"
            return
        msg = self.conn.recv()
        if msg[0] == "ready":
            self.setup_s = self.setup_s or msg[1]
        else:
            self.error = msg[1]

    def call(self, msg: Any, timeout: float) -> Any:
        self.conn.send(msg)
        if self.conn.poll(timeout):
            try:
                return self.conn.recv()
            except EOFError:
                pass
        self.restart()
        return ("timeout",)

    def restart(self) -> None:
        self.proc.kill()
        self.proc.join()
        self.start()

    def close(self) -> None:
        try:
            self.conn.send(None)
        except (BrokenPipeError, OSError):
            pass
        self.proc.join(5)
        if self.proc.is_alive():
            self.proc.kill()


# --------------------------------------------------------------------------------------------------------------
# Runs


def load_split(data: Path, split: str, limit: int | None) -> list[tuple[str, str]]:
    out = []
    with open(data / f"{split}.jsonl") as fh:
        for line in fh:
            r = json.loads(line)
            out.append((r["id"], json.dumps(r["schema"], ensure_ascii=False)))
            if limit is not None and len(out) >= limit:
                break
    return out


def run_engine(name: str, splits: dict[str, list[tuple[str, str]]], timeout: float, limit: int | None,
               step_ids: dict[str, list[str]] | None, worker: Worker | None = None) -> dict[str, Any]:
    """Compile every schema of ``splits`` in a worker of engine ``name`` (``worker``: one kept alive across calls,
    left open; by default a fresh one, closed at the end)."""
    w = worker or Worker(name)
    rec: dict[str, Any] = {"setup_s": w.setup_s, "splits": {}}
    try:
        rec["version"] = md.version("lmqc" if name == "lmqc" else name)
    except md.PackageNotFoundError:
        rec["error"] = "not installed (make bench-anchors installs the optional extra 'anchors')"
        w.close()
        return rec
    if w.error:
        rec["error"] = f"setup failed: {w.error}"
        w.close()
        return rec
    t_start = time.perf_counter()
    for split, schemas in splits.items():
        sel = schemas[:limit] if limit is not None else schemas
        ok, times, errors, steps, per_schema = 0, [], Counter(), [], {}
        want_steps = set(step_ids.get(split, ())) if step_ids is not None else set()
        for sid, text in sel:
            res = w.call(("compile", text), timeout)
            if res[0] == "ok":
                ok += 1
                times.append(res[1])
                per_schema[sid] = "ok"
                if sid in want_steps:
                    st = w.call(("steps", None), max(timeout, 60))
                    if st[0] == "steps":
                        steps.append(float(np.median(st[1])) / 1e3)
            elif res[0] == "error":
                errors[_category(res[2])] += 1
                per_schema[sid] = res[2][:200]
            else:
                errors["timeout"] += 1
                per_schema[sid] = "timeout"
        rec["splits"][split] = {
            "total": len(sel), "compiled": ok, "compile_ms": [t * 1e3 for t in times],
            "errors": dict(errors.most_common()), "step_us": steps, "per_schema": per_schema,
        }
        med = f"{np.median(times) * 1e3:.1f} ms" if times else "-"
        print(f"  {name:13s} {split:16s} {ok:5d}/{len(sel):<5d} median {med}", flush=True)
    rec["wall_s"] = time.perf_counter() - t_start
    if worker is None:
        w.close()
    return rec


def _category(message: str) -> str:
    head = message.split(":", 1)[0]
    return head if len(head) < 40 else head[:40]


def generate(splits: dict[str, list[tuple[str, str]]], per_split: int, compiled: dict[str, Any]) -> dict[str, Any]:
    """Gemma 3 270M writes one value per schema; each is validated with jsonschema."""
    import jsonschema

    import lmqc

    src = ('"Write a JSON value that matches this JSON Schema.\\nSchema: {shown}\\nJSON: [X]" '
           "where JSON(X, schema) and len(TOKENS(X)) < 200")
    q = lmqc.compile(src, model="gemma-3-270m")
    out: dict[str, Any] = {"samples": [], "invalid": 0, "n": 0}
    for split, schemas in splits.items():
        done = 0
        for sid, text in schemas:
            if done >= per_split:
                break
            if compiled.get(split, {}).get("per_schema", {}).get(sid) != "ok":
                continue
            schema = json.loads(text)
            shown = text if len(text) <= 1200 else text[:1200] + " ..."
            t0 = time.perf_counter()
            try:
                r = lmqc.run(q, schema=schema, shown=shown)
            except lmqc.LmqcError as e:
                out["samples"].append({"split": split, "id": sid, "error": str(e)[:200]})
                continue
            head, sep, value_text = r.prompt.rpartition("\nJSON: ")
            cls = jsonschema.validators.validator_for(schema)
            try:
                if not sep:  # the prompt does not end with the value: an error of the run, counted as invalid
                    raise ValueError(f"no value at the end of the prompt: {r.prompt[-200:]!r}")
                errors = [e.message for e in cls(schema, format_checker=cls.FORMAT_CHECKER).iter_errors(
                    json.loads(value_text))]
            except Exception as e:  # noqa: BLE001 - a text that is not JSON, or a schema the validator cannot read
                errors = [f"{type(e).__name__}: {e}"]
            out["n"] += 1
            out["invalid"] += bool(errors)
            out["samples"].append({"split": split, "id": sid, "text": value_text[:400], "errors": errors[:3],
                                   "tokens": r.n_tokens, "seconds": time.perf_counter() - t0})
            done += 1
            mark = "INVALID " + errors[0][:80] if errors else "valid"
            print(f"  generate {split:16s} {sid[:28]:28s} {r.n_tokens:4d} tokens {mark}", flush=True)
    return out


def main() -> None:
    ap = arg_parser(__doc__)
    ap.add_argument("--limit", type=int, default=None, help="first N schemas of each split (default: all)")
    ap.add_argument("--splits", default=",".join(SPLITS))
    ap.add_argument("--engines", default=",".join(ENGINES))
    ap.add_argument("--engine-limit", default="", help="per-engine limit, e.g. outlines-core=20")
    ap.add_argument("--timeout", type=float, default=20.0, help="seconds per schema and engine")
    ap.add_argument("--step-sample", type=int, default=8, help="schemas per split for the per-step walk")
    ap.add_argument("--generate", type=int, default=0, help="schemas per split for the Gemma sample run")
    ap.add_argument("--data", type=Path, default=DATA)
    ap.add_argument("--interleave", action="store_true", help="run the engines split by split, in turn")
    args = ap.parse_args()
    mach = header("JSONSchemaBench: schemas compiled, compile time, per-step work; lmqc vs anchors")
    names = [s.strip() for s in args.splits.split(",") if s.strip()]
    splits = {s: load_split(args.data, s, args.limit) for s in names}
    engine_limits = dict(kv.split("=") for kv in args.engine_limit.split(",") if "=" in kv)
    engines = [e.strip() for e in args.engines.split(",") if e.strip()]
    print(f"# splits: {', '.join(f'{s} {len(v)}' for s, v in splits.items())}", flush=True)

    results: dict[str, Any] = {}
    step_ids: dict[str, list[str]] = {}
    # --interleave: split by split, every engine in turn (a machine whose speed drifts over the run then biases
    # no engine); otherwise each engine over every split, one after the other
    rounds = [{s: v} for s, v in splits.items()] if args.interleave else [splits]
    workers = {name: Worker(name) for name in engines} if args.interleave else {}  # warm across splits
    for part in rounds:
        for name in engines:
            lim = int(engine_limits[name]) if name in engine_limits else None
            rec = run_engine(name, part, args.timeout, lim, None if name == "lmqc" else step_ids, workers.get(name))
            if name == "lmqc":
                for split, r in rec["splits"].items():
                    ok_ids = [sid for sid, v in r["per_schema"].items() if v == "ok"]
                    step_ids[split] = ok_ids[: args.step_sample]
            if name not in results:
                results[name] = rec
            else:
                results[name]["splits"].update(rec.get("splits", {}))
                results[name]["wall_s"] = results[name].get("wall_s", 0) + rec.get("wall_s", 0)
    for w in workers.values():
        w.close()
    if "lmqc" in results:
        # per-step walks on a sample, in a second pass (compile times above are not disturbed by walks)
        _steps(results["lmqc"], splits, step_ids, args.timeout, "lmqc")

    _report(results, splits, engines, engine_limits)
    gen = None
    if args.generate:
        print("\n# Gemma 3 270M sample run (argmax, at most 200 tokens per value)", flush=True)
        gen = generate(splits, args.generate, results.get("lmqc", {}).get("splits", {}))
        print(f"\ngenerated {gen['n']} values, invalid {gen['invalid']}")
    print(f"# load average at end: {loadavg()}")
    write_json(args.json, "jsonschemabench.json", {"benchmark": "jsonschemabench", "machine": mach,
                                                   "limit": args.limit, "timeout_s": args.timeout,
                                                   "results": results, "generate": gen})


def _steps(rec: dict[str, Any], splits: dict[str, list[tuple[str, str]]], step_ids: dict[str, list[str]],
           timeout: float, name: str) -> None:
    w = Worker(name)
    for split, ids in step_ids.items():
        texts = dict(splits[split])
        out = []
        for sid in ids:
            if w.call(("compile", texts[sid]), timeout)[0] != "ok":
                continue
            st = w.call(("steps", None), max(timeout, 60))
            if st[0] == "steps":
                out.append(float(np.median(st[1])) / 1e3)
        rec["splits"][split]["step_us"] = out
    w.close()


def _report(results: dict[str, Any], splits: dict[str, Any], engines: list[str], limits: dict[str, str]) -> None:
    live = [e for e in engines if "error" not in results[e]]
    for e in engines:
        if "error" in results[e]:
            print(f"  {e}: {results[e]['error']}")
    print("\nsetup once per vocabulary: " + "; ".join(
        f"{e} {results[e]['setup_s']:.2f} s" for e in live if results[e].get("setup_s") is not None))
    print("\nschemas compiled / total, and compile ms (median / p90) per split:")
    hdr = ["split"]
    for e in live:
        hdr += [f"{e}", "median", "p90"]
    body = []
    totals = {e: [0, 0, []] for e in live}
    for split in splits:
        row: list[Any] = [split]
        for e in live:
            r = results[e]["splits"].get(split)
            if r is None:
                row += ["-", None, None]
                continue
            t = r["compile_ms"]
            totals[e][0] += r["compiled"]
            totals[e][1] += r["total"]
            totals[e][2] += t
            row += [f"{r['compiled']}/{r['total']}", float(np.median(t)) if t else None,
                    float(np.percentile(t, 90)) if t else None]
        body.append(row)
    row = ["all"]
    for e in live:
        c, n, t = totals[e]
        row += [f"{c}/{n}", float(np.median(t)) if t else None, float(np.percentile(t, 90)) if t else None]
    body.append(row)
    print(table(hdr, body))
    print("\nper-step µs over the sampled schemas (median of per-schema medians / p90). lmqc: lookup + mask applied "
          "to real logits + argmax + advance; anchors: bitmask fill only:")
    hdr = ["split"] + live
    body = []
    for split in splits:
        row = [split]
        for e in live:
            s = results[e]["splits"].get(split, {}).get("step_us", [])
            row.append(f"{np.median(s):.1f} / {np.percentile(s, 90):.1f} ({len(s)})" if s else "-")
        body.append(row)
    print(table(hdr, body))
    if "lmqc" in live:
        errs: Counter = Counter()
        for r in results["lmqc"]["splits"].values():
            errs.update(r["errors"])
        print("\nlmqc: schemas not compiled, by reason: " + (", ".join(f"{k} {v}" for k, v in errs.most_common()) or "none"))
    for e in live:
        if e in limits:
            print(f"({e}: first {limits[e]} schemas of each split only)")


if __name__ == "__main__":
    main()
