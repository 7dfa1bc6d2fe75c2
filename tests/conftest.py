"""Shared fixtures."""

from __future__ import annotations

from pathlib import Path

import onnx
import pytest

from tests.helpers import CNN, model_from_text


@pytest.fixture
def cnn_path(tmp_path: Path) -> Path:
    p = tmp_path / "cnn.onnx"
    onnx.save(model_from_text(CNN), p)
    return p


@pytest.fixture(scope="session")
def export_dir(tmp_path_factory):
    """One export cache for every zoo test of the session (each model exported once)."""
    return tmp_path_factory.mktemp("zoo_exports")
