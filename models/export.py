"""Export zoo models to ONNX with the torch legacy (TorchScript) or dynamo (torch.export) exporter.

    from models.export import export_onnx, cached_export
    export_onnx("resnet_basic", "out/resnet_basic.onnx", exporter="dynamo")

What each exporter gives (torch 2.13, onnxscript 0.7):

* ``legacy``: ``torch.onnx.export(..., dynamo=False)``, opset 13 unless told, constant folding on,
  one self-contained file. Eval-mode Conv+BatchNorm pairs are fused into the Conv
  (``_jit_pass_onnx_eval_peephole``); ``fold_bn=False`` exports with ``TrainingMode.PRESERVE``
  instead, which keeps the BatchNormalization nodes (the model is still in eval mode).
* ``dynamo``: ``torch.onnx.export(..., dynamo=True)``, opset 20 (torch's default) unless told.
  torch runs the onnxscript optimizer, whose rewrite rules fuse BatchNorm into the preceding
  Conv/ConvTranspose/Gemm; ``fold_bn=False`` exports unoptimized and runs the same clean-up
  without the BatchNorm fusion rules. Weights go to an external ``<path>.data`` file beside
  the model by default (tensors over 256 bytes, onnx-ir's threshold); ``external_data=False``
  writes one file.

Inputs are named ``input`` (``input_0``, ``input_1``.. for several), the output ``output``;
shapes are static (batch 1).
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import shutil
import tempfile
import warnings
from pathlib import Path

from models import get_model

__all__ = ["EXPORTERS", "LEGACY_OPSET", "cached_export", "data_path", "export_onnx"]

EXPORTERS = ("legacy", "dynamo")
LEGACY_OPSET = 13
_QUIET_LOGGERS = ("torch.onnx", "torch.export", "torch._dynamo", "torch.fx", "onnxscript")


def data_path(path: str | os.PathLike) -> Path:
    """Where an export's external weights go: ``<path>.data`` (it exists only when some
    tensors were written externally)."""
    path = Path(path)
    return path.with_name(path.name + ".data")


@contextlib.contextmanager
def _quiet(*more_loggers: str):
    """Silence the exporters' progress prints, warnings and log lines (e.g. 'torchvision is not
    installed'), and those of ``more_loggers``."""
    loggers = [logging.getLogger(n) for n in (*_QUIET_LOGGERS, *more_loggers)]
    levels = [lg.level for lg in loggers]
    try:
        for lg in loggers:
            lg.setLevel(logging.ERROR)
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, lv in zip(loggers, levels, strict=True):
            lg.setLevel(lv)


def _optimize_keep_bn(model) -> None:
    """The onnxscript optimizer torch runs after a dynamo export (``optimize_ir``), minus the
    rules that fuse BatchNormalization into Conv/ConvTranspose/Gemm."""
    import onnx_ir.passes.common as cp
    from onnxscript import optimizer, rewriter
    from onnxscript.rewriter.rules import common as rc

    bn_rules = {
        rc.fuse_batchnorm_into_conv_rule,
        rc.fuse_batchnorm_into_conv_transpose_rule,
        rc.fuse_batchnorm_into_gemm_rule,
    }
    rules = [r for r in getattr(rewriter, "_DEFAULT_REWRITE_RULES", ()) if r not in bn_rules]
    cp.InlinePass()(model)
    for _ in range(2):
        optimizer.fold_constants(model)
        if rules:
            rewriter.rewrite(model, pattern_rewrite_rules=rules)
        cp.RemoveUnusedNodesPass()(model)
    cp.RemoveUnusedFunctionsPass()(model)
    cp.RemoveUnusedOpsetsPass()(model)
    cp.LiftConstantsToInitializersPass(lift_all_constants=True, size_limit=0)(model)
    cp.DeduplicateInitializersPass()(model)
    cp.CommonSubexpressionEliminationPass()(model)


def _externalize(path: Path) -> None:
    """Move a single-file model's tensors over 256 bytes into ``<path>.data`` (as dynamo does)."""
    import onnx

    proto = onnx.load(path)
    onnx.save_model(proto, path, save_as_external_data=True, all_tensors_to_one_file=True,
                    location=data_path(path).name, size_threshold=257)  # fmt: skip


def export_onnx(
    name: str,
    path: str | os.PathLike,
    exporter: str = "legacy",
    opset: int | None = None,
    *,
    fold_bn: bool = True,
    external_data: bool | None = None,
) -> Path:
    """Export zoo model ``name`` to ``path`` and return ``path``.

    ``exporter``: ``"legacy"`` (opset default 13) or ``"dynamo"`` (opset default: torch's, 20).
    ``fold_bn=False`` keeps BatchNormalization nodes that the exporter would fuse into the
    preceding Conv. ``external_data``: ``None`` is the exporter's own default (legacy: one
    file; dynamo: weights in ``<path>.data``), ``True``/``False`` force it. A stale
    ``<path>.data`` from an earlier export is removed.
    """
    import torch

    if exporter not in EXPORTERS:
        raise ValueError(f"unknown exporter {exporter!r}: one of {', '.join(EXPORTERS)}")
    spec = get_model(name)
    net = spec.builder()
    args = tuple(torch.from_numpy(a) for a in spec.example_inputs())
    names = list(spec.input_names)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data_path(path).unlink(missing_ok=True)
    with _quiet():
        if exporter == "legacy":
            training = torch.onnx.TrainingMode.EVAL if fold_bn else torch.onnx.TrainingMode.PRESERVE
            torch.onnx.export(net, args, str(path), dynamo=False, opset_version=opset or LEGACY_OPSET,
                              input_names=names, output_names=["output"], do_constant_folding=True,
                              training=training)  # fmt: skip
            if external_data:
                _externalize(path)
        else:
            kw = {} if opset is None else {"opset_version": opset}
            ext = True if external_data is None else bool(external_data)
            prog = torch.onnx.export(net, args, dynamo=True, input_names=names, output_names=["output"],
                                     verbose=False, optimize=fold_bn, **kw)  # fmt: skip
            if not fold_bn:
                _optimize_keep_bn(prog.model)
            prog.save(str(path), external_data=ext)
    return path


def cached_export(
    name: str,
    exporter: str,
    cache_dir: str | os.PathLike,
    *,
    fold_bn: bool = True,
    external_data: bool | None = None,
) -> Path:
    """`export_onnx` into ``cache_dir`` unless that file is already there. The file name
    encodes the options (``{name}-{exporter}[-bn][-ext|-single].onnx``). The export is
    written to a scratch folder first and moved in, so an interrupted export leaves no
    half-written file behind."""
    suffix = ("" if fold_bn else "-bn") + {None: "", True: "-ext", False: "-single"}[external_data]
    cache_dir = Path(cache_dir)
    path = cache_dir / f"{name}-{exporter}{suffix}.onnx"
    if path.exists():
        return path
    cache_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache_dir, prefix=".export-") as tmp:
        tmp_path = export_onnx(
            name, Path(tmp) / path.name, exporter, fold_bn=fold_bn, external_data=external_data
        )
        if data_path(tmp_path).exists():
            shutil.move(data_path(tmp_path), data_path(path))
        shutil.move(tmp_path, path)
    return path
