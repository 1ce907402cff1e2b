"""Integrations of lmqc's compiled constraints with other inference engines.

* :mod:`lmqc.integrations.hf` — an lmqc vocabulary and tokenizer from a Hugging Face tokenizer
  (``tokenizer.json``: byte-level BPE or SentencePiece-style pieces with byte fallback).
* :mod:`lmqc.integrations.vllm` — a vLLM V1 logits processor that applies a compiled hole's token automaton, and
  the decoder service behind ``lmqc.run(query, model="vllm:MODEL")``.

Nothing here is imported by ``import lmqc``; each module imports its engine only when used.
"""
