"""A tiny Hugging Face model built locally (no downloads), and an lmqc backend that runs it with transformers.

:func:`build_tiny_model` writes a 2-layer Llama-architecture model with random (seeded) weights and a byte-level
BPE tokenizer trained with ``tokenizers`` on this repository's README and examples. :class:`TorchBackend` is an
lmqc ``Backend`` over the same weights (a full forward pass per call, no KV cache: the model is tiny), so lmqc's
in-process decoder and vLLM can be compared on the same model.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parent.parent


def _corpus() -> list[str]:
    texts = [(REPO / "README.md").read_text(encoding="utf-8")]
    texts += [p.read_text(encoding="utf-8") for p in sorted((REPO / "examples").glob("*.lmql"))]
    texts.append("0123456789 2024-01-31 positive negative neutral yes no Paris France. Hello, Bob! é ü 日本 👍")
    return texts


def build_tiny_model(path: str | Path, *, vocab_size: int = 1000, seed: int = 0) -> Path:
    """Write tokenizer and model files of a tiny random Llama into ``path`` (idempotent)."""
    path = Path(path)
    if (path / "model.safetensors").is_file():
        return path
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import LlamaConfig, LlamaForCausalLM

    path.mkdir(parents=True, exist_ok=True)
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=["<pad>", "<bos>", "<eos>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False,
    )
    tok.train_from_iterator(_corpus(), trainer)
    bos, eos = tok.token_to_id("<bos>"), tok.token_to_id("<eos>")
    tok.post_processor = processors.TemplateProcessing(single="<bos> $A", special_tokens=[("<bos>", bos)])
    tok.save(str(path / "tokenizer.json"))
    (path / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<bos>", "eos_token": "<eos>",
        "pad_token": "<pad>", "model_max_length": 512, "add_bos_token": True,
    }))
    n = tok.get_vocab_size(with_added_tokens=True)
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=n, hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=1, head_dim=64, max_position_embeddings=512, bos_token_id=bos, eos_token_id=eos,
        pad_token_id=tok.token_to_id("<pad>"), tie_word_embeddings=False, initializer_range=0.5,
        rms_norm_eps=1e-5,
    )
    model = LlamaForCausalLM(config).to(torch.float32).eval()
    with torch.no_grad():  # a confident model: well separated logits, so two engines' argmax agree
        model.lm_head.weight.mul_(4.0)
    model.save_pretrained(str(path), safe_serialization=True)
    (path / "generation_config.json").write_text(json.dumps({"bos_token_id": bos, "eos_token_id": eos}))
    return path


class TorchBackend:
    """lmqc's ``Backend`` protocol over the tiny model with transformers (float32, CPU, no KV cache)."""

    def __init__(self, path: str | Path) -> None:
        import torch
        from transformers import LlamaForCausalLM

        from lmqc.integrations.hf import hf_tokenizer
        from lmqc.runtime.backend import EvalStats

        self.tok = hf_tokenizer(str(path))
        self.model = LlamaForCausalLM.from_pretrained(str(path), torch_dtype=torch.float32).eval()
        self.vocabulary = self.tok.vocabulary
        self.n_vocab = self.tok.n_vocab
        self.bos_id = self.tok.bos_id
        self.eos_id = self.tok.eos_id
        self.eog_ids = self.tok.eog_ids
        self.special_ids = self.tok.special_ids
        self.n_ctx = self.tok.n_ctx
        self.n_seq = 64
        self.stats = EvalStats()
        self._torch = torch

    def tokenize(self, text: str | bytes, *, bos: bool = False, special: bool = False) -> list[int]:
        return self.tok.tokenize(text, bos=bos, special=special)

    def detokenize(self, ids: Sequence[int]) -> bytes:
        return self.tok.detokenize(ids)

    def piece(self, token: int) -> bytes:
        return self.tok.piece(token)

    def reset(self) -> None:
        pass

    def _rows(self, ctx: Sequence[int], k: int) -> np.ndarray:
        torch = self._torch
        with torch.no_grad():
            out = self.model(torch.tensor([list(ctx)], dtype=torch.long)).logits[0]
        return out[len(ctx) - k :].float().numpy()

    def eval(self, contexts: Sequence[Sequence[int]]) -> np.ndarray:
        self.stats.eval_calls += 1
        return np.stack([self._rows(c, 1)[0] for c in contexts]).astype(np.float32)

    def eval_rows(self, contexts: Sequence[Sequence[int]], rows: Sequence[int]) -> list[np.ndarray]:
        self.stats.eval_calls += 1
        return [self._rows(c, int(k)).astype(np.float32) for c, k in zip(contexts, rows, strict=True)]

    def chat_template(self) -> Any:
        return None
