"""Shared test set-up: a private lmqc cache per test session, so tests never see a user's cached artifacts."""

from __future__ import annotations

import os

import pytest


@pytest.fixture(autouse=True, scope="session")
def _private_cache(tmp_path_factory: pytest.TempPathFactory) -> None:
    if "LMQC_TEST_KEEP_CACHE" not in os.environ:
        os.environ["LMQC_CACHE_DIR"] = str(tmp_path_factory.mktemp("lmqc-cache"))
