"""Shared fixtures."""

from __future__ import annotations

import os
from pathlib import Path

import onnx
import pytest

from tests.helpers import CNN, model_from_text

# A rule that raises is a bug: the library turns it into a "rule error" block reason (never a
# crash for users); under the test suite, including CLI subprocesses, it fails the test instead.
os.environ["SPA_NM_STRICT_RULES"] = "1"


@pytest.fixture
def cnn_path(tmp_path: Path) -> Path:
    p = tmp_path / "cnn.onnx"
    onnx.save(model_from_text(CNN), p)
    return p


@pytest.fixture(scope="session")
def export_dir(tmp_path_factory):
    """One export cache for every zoo test of the session (each model exported once)."""
    return tmp_path_factory.mktemp("zoo_exports")
