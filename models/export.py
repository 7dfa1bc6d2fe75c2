"""Export zoo models to ONNX with the torch legacy (TorchScript) or dynamo exporter."""

from __future__ import annotations

import contextlib
import io
import os
import warnings
from pathlib import Path

from models import get_model

__all__ = ["cached_export", "export_onnx"]

LEGACY_OPSET = 13


def export_onnx(
    name: str, path: str | os.PathLike, exporter: str = "legacy", opset: int | None = None
) -> Path:
    """Export zoo model ``name`` to ``path``; inputs ``input`` (``input0``.. for several),
    output ``output``. The dynamo exporter may write weights to ``<path>.data`` beside it."""
    import torch

    spec = get_model(name)
    net = spec.build()
    args = tuple(torch.from_numpy(a) for a in spec.example_inputs())
    names = ["input"] if len(args) == 1 else [f"input{i}" for i in range(len(args))]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        if exporter == "legacy":
            torch.onnx.export(net, args, str(path), dynamo=False, opset_version=opset or LEGACY_OPSET,
                              input_names=names, output_names=["output"], do_constant_folding=True)  # fmt: skip
        elif exporter == "dynamo":
            kw = {} if opset is None else {"opset_version": opset}
            torch.onnx.export(net, args, str(path), dynamo=True, input_names=names, output_names=["output"],
                              verbose=False, **kw)  # fmt: skip
        else:
            raise ValueError(f"unknown exporter {exporter!r}: legacy or dynamo")
    return path


def cached_export(name: str, exporter: str, cache_dir: str | os.PathLike) -> Path:
    """Export once per cache folder."""
    path = Path(cache_dir) / f"{name}-{exporter}.onnx"
    if not path.exists():
        export_onnx(name, path, exporter)
    return path
