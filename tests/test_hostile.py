"""Hostile and malformed model files (docs/security.md): each class is built here, run through
the CLI in a subprocess under a memory limit and a timeout, and must end in the contract —
exit 0 (pruned or a valid output), 1 (declined / failed for that model) or 2 (bad input), at
most one ``spa-nm: error: FILE: cause`` line naming the file, no traceback, the input folder
byte for byte as it was, and no partial or temporary file left.

The memory bombs, writer collisions and CLI error wording have their own files
(tests/test_bounds.py, tests/test_writer.py, tests/test_cli_contract.py); this one covers the
graph structure: cycles, duplicate and undefined names, wrong attribute types and dtypes,
recursive local functions, deep subgraph nesting, invalid UTF-8, and external data that points
at a FIFO, a device or out of the folder through a symlink.
"""

from __future__ import annotations

import hashlib
import os
import resource
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper
from onnx import numpy_helper as nh

ROOT = Path(__file__).resolve().parents[1]
MEMORY = 3 << 30  # address space for the CLI process: far below what a bomb would take


def _limit() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY, MEMORY))


def _run(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(ROOT / "cli.py"), *args],
        capture_output=True, text=True, timeout=timeout, preexec_fn=_limit,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )  # fmt: skip


def _snapshot(folder: Path) -> dict[str, str]:
    out = {}
    for p in sorted(folder.rglob("*")):
        if p.is_file() and not p.is_symlink():
            out[str(p.relative_to(folder))] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def _contract(p: subprocess.CompletedProcess, model: Path, out_dir: Path, before: dict) -> None:
    err = p.stderr
    assert "Traceback" not in err, err
    assert p.returncode in (0, 1, 2), (p.returncode, err)
    errors = [ln for ln in err.splitlines() if ln.startswith("spa-nm: error:")]
    assert len(errors) <= 1, err
    if p.returncode == 2:
        assert len(errors) == 1, err
    if errors:
        assert model.name in errors[0], errors[0]
    assert _snapshot(model.parent) == before, "the input folder changed"
    left = [q.name for q in out_dir.rglob("*") if q.name.startswith(".spa_nm-")] if out_dir.exists() else []
    assert not left, left
    if p.returncode == 0 and (out_dir / model.name).exists():
        import onnxruntime as ort

        ort.InferenceSession(str(out_dir / model.name), providers=["CPUExecutionProvider"])


def _conv_graph(nodes=None, inits=None, opset=17, **graph_kw) -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    inits = inits if inits is not None else [
        nh.from_array(rng.standard_normal((8, 3, 3, 3)).astype(np.float32), "w1"),
        nh.from_array(rng.standard_normal((4, 8, 1, 1)).astype(np.float32), "w2"),
    ]  # fmt: skip
    nodes = nodes if nodes is not None else [
        helper.make_node("Conv", ["x", "w1"], ["c"], pads=[1, 1, 1, 1], name="conv1"),
        helper.make_node("Relu", ["c"], ["r"], name="relu"),
        helper.make_node("Conv", ["r", "w2"], ["y"], name="conv2"),
    ]  # fmt: skip
    g = helper.make_graph(
        nodes, "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 6, 6])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 6, 6])],
        inits,
    )  # fmt: skip
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)], **graph_kw)
    m.ir_version = 8
    return m


def _cycle() -> onnx.ModelProto:
    m = _conv_graph()
    m.graph.node[1].input[0] = "y"  # relu reads conv2's output, conv2 reads relu's
    return m


def _duplicate_output() -> onnx.ModelProto:
    m = _conv_graph()
    m.graph.node.insert(1, helper.make_node("Sigmoid", ["c"], ["r"], name="dup"))
    return m


def _undefined_input() -> onnx.ModelProto:
    m = _conv_graph()
    m.graph.node[1].input[0] = "nowhere"
    return m


def _bad_attribute_type() -> onnx.ModelProto:
    m = _conv_graph()
    conv = m.graph.node[0]
    del conv.attribute[:]
    conv.attribute.append(helper.make_attribute("pads", "one"))  # a string where ints go
    return m


def _wrong_weight_dtype() -> onnx.ModelProto:
    m = _conv_graph()
    m.graph.initializer[0].CopyFrom(nh.from_array(np.ones((8, 3, 3, 3), np.int32), "w1"))
    return m


def _recursive_function() -> onnx.ModelProto:
    fn = helper.make_function(
        "local", "Loop", ["a"], ["b"], [helper.make_node("Loop", ["a"], ["b"], domain="local")],
        opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("local", 1)],
    )  # fmt: skip
    m = _conv_graph()
    m.graph.node.insert(2, helper.make_node("Loop", ["r"], ["r2"], domain="local"))
    m.graph.node[3].input[0] = "r2"
    m.functions.append(fn)
    m.opset_import.append(helper.make_opsetid("local", 1))
    return m


def _leaf(name: str) -> onnx.GraphProto:
    return helper.make_graph(
        [helper.make_node("Identity", ["r"], [name])], name, [],
        [helper.make_tensor_value_info(name, TensorProto.FLOAT, [1, 8, 6, 6])],
    )  # fmt: skip


def _deep_nesting(depth: int = 30) -> onnx.ModelProto:
    """If inside If inside If ... ``depth`` levels (about 90 message levels: near protobuf's
    parse limit), each returning the outer value."""
    body = _leaf("o0")
    for k in range(1, depth):
        node = helper.make_node("If", ["cond"], [f"o{k}"], then_branch=body, else_branch=_leaf(f"e{k}"))
        body = helper.make_graph(
            [node], f"b{k}", [], [helper.make_tensor_value_info(f"o{k}", TensorProto.FLOAT, [1, 8, 6, 6])]
        )
    m = _conv_graph()
    m.graph.node.insert(2, helper.make_node("If", ["cond"], ["deep"], then_branch=body, else_branch=_leaf("top")))
    m.graph.node[3].input[0] = "deep"
    m.graph.input.append(helper.make_tensor_value_info("cond", TensorProto.BOOL, []))
    return m


def _invalid_utf8_name() -> bytes:
    m = _conv_graph()
    m.graph.node[1].name = "RELU_NAME_PLACEHOLDER"
    raw = m.SerializeToString()
    return raw.replace(b"RELU_NAME_PLACEHOLDER", b"\xff\xfe\xfdbad-utf8\xc3\x28\x80\x80\x80")


BROKEN = {
    "cycle": _cycle,
    "duplicate_output": _duplicate_output,
    "undefined_input": _undefined_input,
    "bad_attribute_type": _bad_attribute_type,
    "wrong_weight_dtype": _wrong_weight_dtype,
    "recursive_function": _recursive_function,
    "deep_nesting": _deep_nesting,
    "invalid_utf8_name": _invalid_utf8_name,
}


@pytest.mark.parametrize("kind", sorted(BROKEN))
@pytest.mark.parametrize(
    "command",
    # inspect and sparsify share prune's input checks: the slow tier runs them too
    ["prune", pytest.param("inspect", marks=pytest.mark.slow), pytest.param("sparsify", marks=pytest.mark.slow)],
)
def test_malformed_graph_ends_in_the_contract(tmp_path, kind, command):
    src = tmp_path / "in" / f"{kind}.onnx"
    src.parent.mkdir()
    made = BROKEN[kind]()
    src.write_bytes(made if isinstance(made, bytes) else made.SerializeToString())
    before = _snapshot(src.parent)
    out = tmp_path / "out"
    args = {"prune": ["prune", str(src), "-o", str(out / src.name), "--ratio", "0.5"],
            "sparsify": ["sparsify", str(src), "-o", str(out / src.name), "--pattern", "2:4"],
            "inspect": ["inspect", str(src)]}[command]  # fmt: skip
    p = _run(*args)
    _contract(p, src, out, before)
    if kind in ("cycle", "undefined_input", "duplicate_output", "bad_attribute_type", "wrong_weight_dtype"):
        assert p.returncode == 2, p.stderr  # invalid by the ONNX spec: refused, nothing written
        assert not (out / src.name).exists()


def _external_model(folder: Path) -> Path:
    m = _conv_graph()
    path = folder / "m.onnx"
    onnx.save(m, path, save_as_external_data=True, location="m.data", size_threshold=0)
    return path


@pytest.mark.parametrize("kind", ["fifo", "device", "symlink_out", "directory"])
def test_external_data_that_is_not_a_file_in_the_folder_is_refused(tmp_path, kind):
    folder = tmp_path / "in"
    folder.mkdir()
    src = _external_model(folder)
    data = folder / "m.data"
    secret = tmp_path / "secret.bin"
    secret.write_bytes(data.read_bytes())
    data.unlink()
    if kind == "fifo":
        os.mkfifo(data)
    elif kind == "device":
        data.symlink_to("/dev/zero")
    elif kind == "symlink_out":
        data.symlink_to(secret)
    else:
        data.mkdir()
    before = _snapshot(folder)
    out = tmp_path / "out"
    p = _run("prune", str(src), "-o", str(out / "m.onnx"), "--ratio", "0.5", timeout=60)
    _contract(p, src, out, before)
    assert p.returncode == 2, p.stderr
    assert not (out / "m.onnx").exists()
