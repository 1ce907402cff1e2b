"""Decoder services: what the query driver decodes holes with (``runtime.decode.DecoderService``).

:class:`LocalDecoder` serves an in-process backend; ``runtime.client.RemoteModel`` serves the model of an
``lmqc serve`` process. :func:`decoder_service` picks one for a model spec.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from . import decode
from .decode import Completion, DecodeRequest, DecoderService

__all__ = ["LocalDecoder", "decoder_service"]


class LocalDecoder:
    """The decoder service of an in-process model: tokenization, :func:`decode.decode` and
    :func:`decode.score_options` on a loaded backend.
    """

    def __init__(self, backend: Any) -> None:
        self.backend = backend

    @property
    def fingerprint(self) -> str:
        return self.backend.vocabulary.fingerprint

    @property
    def vocabulary(self) -> Any:
        return self.backend.vocabulary

    def begin(self) -> None:
        """Start a query from an empty KV cache.

        llama.cpp's logits depend slightly on where a sequence's cells sit in the shared cache, so a seeded
        sample could otherwise change with whatever ran earlier in the process. Re-evaluating a prompt costs
        one batched step.
        """
        self.backend.reset()

    def tokenize(self, text: str | bytes, *, bos: bool = False, special: bool = False) -> list[int]:
        if special:
            try:
                return self.backend.tokenize(text, bos=bos, special=True)
            except TypeError:  # a backend without control-token parsing
                pass
        return self.backend.tokenize(text, bos=bos)

    def decode(self, request: DecodeRequest) -> list[Completion]:
        return decode.decode(self.backend, request)

    def score_options(self, context: Sequence[int], options: Sequence[Sequence[int]]) -> np.ndarray:
        return decode.score_options(self.backend, context, options)


def decoder_service(spec: str) -> DecoderService:
    """The decoder service for a model spec: a remote one for ``lmqc://HOST:PORT``, else the loaded model."""
    from .models import get_model

    model = get_model(spec)
    return model if hasattr(model, "decode") else LocalDecoder(model)
