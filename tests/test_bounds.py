"""Memory bombs (docs/security.md, spa_nm/limits.py): a model file of a few KB that declares
gigabytes must not take them. Each bomb is built here with onnx.helper next to a prunable Conv
pair, run through the CLI in a subprocess under a 3 GB address-space limit and a timeout, and
must end in the contract: the Conv pair still prunes (or a bad input is refused in one
``spa-nm: error: FILE: cause`` line, exit 2), no traceback, peak RSS and time bounded. The
bounded folding, data propagation and size checks are also tested directly.

Two sizes: ``BIG`` bombs (10^10 elements) would not fit anywhere, so an unbounded evaluation
fails fast under the limit; ``FITS`` bombs (a few 10^8 elements, 1-2 GB) do fit, so only a
bound keeps the peak RSS low (the code before the bounds took 1.7-11 GB on them).
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnx import TensorProto as T
from onnx import helper as h
from onnx import numpy_helper as nh

import spa_nm
from spa_nm import io, limits
from spa_nm.errors import ConfigError, InputError
from spa_nm.metrics import count
from spa_nm.passes import fold_shape_arithmetic

ROOT = Path(__file__).resolve().parents[1]
MEMORY = 3 << 30  # address space of the CLI process
BIG, FITS = 100_000, 16_000  # the side D of a [D, D] bomb


# -- running the CLI ---------------------------------------------------------------------------


def _limit() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY, MEMORY))


def run_cli(*args: str, timeout: float = 120) -> tuple[int, str, int]:
    """(exit code, stderr, peak RSS in bytes) of ``spa-nm ARGS`` under the memory limit."""
    with open(os.devnull, "w") as out, tempfile.TemporaryFile("w+") as err:
        p = subprocess.Popen(
            [sys.executable, str(ROOT / "cli.py"), *args], stdout=out, stderr=err, text=True,
            preexec_fn=_limit, env={**os.environ, "OMP_NUM_THREADS": "1"},
        )  # fmt: skip
        timer = threading.Timer(timeout, p.kill)
        timer.start()
        try:
            _, status, usage = os.wait4(p.pid, 0)  # this child's own peak RSS
        finally:
            timer.cancel()
        p.returncode = rc = os.waitstatus_to_exitcode(status)
        err.seek(0)
        stderr = err.read()
    assert rc != -9, f"killed after {timeout} s: {stderr}"
    return rc, stderr, usage.ru_maxrss * 1024


def errors(stderr: str) -> list[str]:
    assert "Traceback" not in stderr, stderr
    return [ln for ln in stderr.splitlines() if ln.startswith("spa-nm: error:")]


# -- the bombs -----------------------------------------------------------------------------------


def _i64(name: str, v) -> onnx.TensorProto:
    return nh.from_array(np.asarray(v, dtype=np.int64), name)


def _f32(name: str, v) -> onnx.TensorProto:
    return nh.from_array(np.asarray(v, dtype=np.float32), name)


def _with_convs(nodes, inits, extra_inputs=(), extra_outputs=(), domains=()) -> onnx.ModelProto:
    """``x -> conv1 -> relu -> conv2 -> y`` (16 prunable channels) beside ``nodes``, whose
    ``z`` output (one float) is a graph output."""
    rng = np.random.default_rng(0)
    convs = [
        h.make_node("Conv", ["x", "w1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
        h.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        h.make_node("Conv", ["r1", "w2"], ["y"], name="conv2", pads=[1, 1, 1, 1]),
    ]
    weights = [_f32("w1", rng.standard_normal((16, 3, 3, 3))), _f32("w2", rng.standard_normal((4, 16, 3, 3)))]
    g = h.make_graph(
        convs + nodes, "g",
        [h.make_tensor_value_info("x", T.FLOAT, [1, 3, 8, 8]), *extra_inputs],
        [h.make_tensor_value_info("y", T.FLOAT, [1, 4, 8, 8]), h.make_tensor_value_info("z", T.FLOAT, [1]), *extra_outputs],
        weights + inits,
    )  # fmt: skip
    opsets = [h.make_opsetid("", 13)] + [h.make_opsetid(d, 1) for d in domains]
    return h.make_model(g, opset_imports=opsets, ir_version=8)


def _to_z(big: str) -> list[onnx.NodeProto]:
    """One float out of the huge tensor ``big`` (its max), as graph output ``z``."""
    return [
        h.make_node("ReduceMax", [big], ["zmax"], keepdims=0, name="zmax"),
        h.make_node("Reshape", ["zmax", "one"], ["z"], name="zshape"),
    ]


def constant_of_shape(d: int) -> onnx.ModelProto:
    fill = h.make_node("ConstantOfShape", ["cs"], ["big"], name="fill", value=_f32("v", [1.0]))
    return _with_convs([fill, *_to_z("big")], [_i64("cs", [d, d]), _i64("one", [1])])


def expand(d: int) -> onnx.ModelProto:
    node = h.make_node("Expand", ["e", "es"], ["big"], name="expand")
    return _with_convs([node, *_to_z("big")], [_f32("e", [[1.0]]), _i64("es", [d, d]), _i64("one", [1])])


def tile(d: int) -> onnx.ModelProto:
    node = h.make_node("Tile", ["t", "reps"], ["big"], name="tile")
    return _with_convs([node, *_to_z("big")], [_f32("t", np.ones((2, 2))), _i64("reps", [d // 2, d // 2]), _i64("one", [1])])


def range_(d: int) -> onnx.ModelProto:
    nodes = [h.make_node("Range", ["lo", "hi", "step"], ["ints"], name="range"),
             h.make_node("Cast", ["ints"], ["big"], to=T.FLOAT, name="cast")]  # fmt: skip
    return _with_convs([*nodes, *_to_z("big")], [_i64("lo", 0), _i64("hi", d * d), _i64("step", 1), _i64("one", [1])])


def where(d: int) -> onnx.ModelProto:
    """Three constants of at most 4096 elements each (the fold pass reads them) broadcast to
    about d^2 elements."""
    k = 4096
    node = h.make_node("Where", ["wc", "wa", "wb"], ["big"], name="where")
    inits = [nh.from_array(np.ones((k, 1, 1), bool), "wc"), _f32("wa", np.ones((1, k, 1))),
             _f32("wb", np.zeros((1, 1, max(1, d * d // (k * k))))), _i64("one", [1])]  # fmt: skip
    return _with_convs([node, *_to_z("big")], inits)


def resize(d: int) -> onnx.ModelProto:
    node = h.make_node("Resize", ["rx", "", "scales"], ["big"], name="resize", mode="nearest")
    inits = [_f32("rx", np.ones((1, 1, 4, 4))), _f32("scales", [1, 1, d // 4, d // 4]), _i64("one", [1])]
    return _with_convs([node, *_to_z("big")], inits)


def reshape(d: int) -> onnx.ModelProto:
    nodes = [h.make_node("ConstantOfShape", ["n"], ["flat"], name="fill", value=_f32("v", [1.0])),
             h.make_node("Reshape", ["flat", "target"], ["big"], name="reshape")]  # fmt: skip
    return _with_convs([*nodes, *_to_z("big")], [_i64("n", [d * d]), _i64("target", [d, d]), _i64("one", [1])])


def int_fill_symbolic(d: int) -> onnx.ModelProto:
    """An int64 fill (onnxruntime's symbolic shape inference builds its values with np.ones)
    next to an op it cannot infer, so that inference runs."""
    nodes = [
        h.make_node("ConstantOfShape", ["cs"], ["ints"], name="fill", value=_i64("v", [1])),
        h.make_node("Cast", ["ints"], ["big"], to=T.FLOAT, name="cast"),
        h.make_node("Opaque", ["y"], ["o0"], domain="custom.op", name="opaque"),
        h.make_node("Identity", ["o0"], ["o"], name="ident"),
    ]
    out = h.make_tensor_value_info("o", T.FLOAT, [1, 4, 8, 8])
    return _with_convs([*nodes, *_to_z("big")], [_i64("cs", [d, d]), _i64("one", [1])], extra_outputs=[out], domains=["custom.op"])


def long_vector(d: int) -> onnx.ModelProto:
    """A graph input declared [d^2] read by a Cast: ONNX data propagation would hold d^2
    protobuf messages for it."""
    nodes = [h.make_node("Cast", ["v"], ["big"], to=T.FLOAT, name="cast")]
    vec = h.make_tensor_value_info("v", T.INT64, [d * d])
    return _with_convs([*nodes, *_to_z("big")], [_i64("one", [1])], extra_inputs=[vec])


def concat_chain(d: int) -> onnx.ModelProto:
    """Concats of a 100-element constant, 1000 inputs each, twice: 10^8 elements from a 20 KB
    file (folding and data propagation)."""
    nodes = [h.make_node("Concat", ["a"] * 1000, ["b"], axis=0, name="cat1"),
             h.make_node("Concat", ["b"] * 1000, ["ints"], axis=0, name="cat2"),
             h.make_node("Cast", ["ints"], ["big"], to=T.FLOAT, name="cast")]  # fmt: skip
    return _with_convs([*nodes, *_to_z("big")], [_i64("a", np.arange(100)), _i64("one", [1])])


GRAPH_BOMBS = [constant_of_shape, expand, tile, range_, where, resize, reshape, int_fill_symbolic, long_vector, concat_chain]


def overflow_shapes() -> onnx.ModelProto:
    """Dims whose product overflows int64 (2^62 x 4 x 8) on a prunable MatMul pair, read by
    Shape -> ConstantOfShape and Size."""
    rng = np.random.default_rng(0)
    b = 2**62
    nodes = [
        h.make_node("MatMul", ["x", "w1"], ["m1"], name="mm1"),
        h.make_node("Relu", ["m1"], ["r1"], name="relu"),
        h.make_node("MatMul", ["r1", "w2"], ["y"], name="mm2"),
        h.make_node("Shape", ["x"], ["s"], name="shape"),
        h.make_node("ConstantOfShape", ["s"], ["fill"], name="fill"),
        h.make_node("Size", ["x"], ["n"], name="size"),
        h.make_node("Cast", ["n"], ["nf"], to=T.FLOAT, name="cast"),
        h.make_node("ReduceMax", ["fill"], ["fmax"], keepdims=0, name="fmax"),
        h.make_node("Add", ["fmax", "nf"], ["z0"], name="add"),
        h.make_node("Reshape", ["z0", "one"], ["z"], name="zshape"),
    ]
    g = h.make_graph(
        nodes, "g", [h.make_tensor_value_info("x", T.FLOAT, [b, 4, 8])],
        [h.make_tensor_value_info("y", T.FLOAT, [b, 4, 4]), h.make_tensor_value_info("z", T.FLOAT, [1])],
        [_f32("w1", rng.standard_normal((8, 16))), _f32("w2", rng.standard_normal((16, 4))), _i64("one", [1])],
    )  # fmt: skip
    return h.make_model(g, opset_imports=[h.make_opsetid("", 13)], ir_version=8)


def _save_all(folder: Path, models: dict[str, onnx.ModelProto]) -> dict[str, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name, m in models.items():
        paths[name] = folder / f"{name}.onnx"
        onnx.save(m, paths[name])
        assert paths[name].stat().st_size < 1 << 20
    return paths


def _report(path: Path) -> dict[str, dict]:
    return {Path(e["input"]).stem: e for e in json.loads(path.read_text())["models"]}


# -- the contract, through the CLI ---------------------------------------------------------------


def test_bombs_that_fit_nowhere_still_prune_their_conv_pair(tmp_path):
    """10^10-element bombs: every model of the batch is pruned (the Conv pair loses channels),
    its output passes the checker, no error line, well under the memory limit."""
    paths = _save_all(tmp_path / "in", {f.__name__: f(BIG) for f in GRAPH_BOMBS})
    rc, err, rss = run_cli("prune", str(tmp_path / "in"), "-o", str(tmp_path / "out"), "--ratio", "0.5",
                           "--report", str(tmp_path / "r.json"), "-q")  # fmt: skip
    assert errors(err) == [] and rc == 0, err
    assert rss < 2 << 30, rss
    report = _report(tmp_path / "r.json")
    assert set(report) == set(paths)
    for name, entry in report.items():
        assert entry["status"] == "ok" and entry["groups_pruned"] >= 1, (name, entry)
        assert entry["seconds"] < 60, (name, entry["seconds"])
        out = onnx.load(tmp_path / "out" / f"{name}.onnx")
        onnx.checker.check_model(out)
        w1 = next(t for t in out.graph.initializer if t.name == "w1")
        assert w1.dims[0] < 16, (name, list(w1.dims))


def test_bombs_that_fit_stay_small(tmp_path):
    """1-2 GB bombs, which an unbounded fold, data propagation or symbolic inference would
    build, and dims that overflow int64: planned (``--dry-run``) in well under 1 GB each."""
    models = {f.__name__: f(FITS) for f in GRAPH_BOMBS} | {"overflow_shapes": overflow_shapes()}
    paths = _save_all(tmp_path / "in", models)
    rc, err, rss = run_cli("prune", str(tmp_path / "in"), "-o", str(tmp_path / "out"), "--ratio", "0.5",
                           "--dry-run", "--report", str(tmp_path / "r.json"), "-q")  # fmt: skip
    assert errors(err) == [] and rc == 0, err
    assert rss < 1 << 30, f"peak RSS {rss >> 20} MiB"
    report = _report(tmp_path / "r.json")
    assert set(report) == set(paths)
    for name, entry in report.items():
        assert entry["status"] == "ok" and entry["groups_pruned"] >= 1, (name, entry)
        assert entry["seconds"] < 60, (name, entry["seconds"])


@pytest.mark.parametrize("bomb", [range_, long_vector, int_fill_symbolic, overflow_shapes], ids=lambda f: f.__name__)
def test_inspect_bombs(tmp_path, bomb):
    path = tmp_path / "m.onnx"
    onnx.save(bomb() if bomb is overflow_shapes else bomb(FITS), path)
    rc, err, rss = run_cli("inspect", str(path), "--json")
    assert errors(err) == [] and rc == 0, err
    assert rss < 1 << 30, f"peak RSS {rss >> 20} MiB"


def _declares_huge_raw() -> onnx.ModelProto:
    t = onnx.TensorProto(name="huge", data_type=T.FLOAT, dims=[10**6, 10**6], raw_data=b"\0" * 4)
    return _with_convs([h.make_node("Identity", ["huge"], ["big"], name="id"), *_to_z("big")], [t, _i64("one", [1])])


def _declares_overflow() -> onnx.ModelProto:
    t = onnx.TensorProto(name="huge", data_type=T.FLOAT, dims=[2**62, 4], raw_data=b"\0" * 4)
    return _with_convs([h.make_node("Identity", ["huge"], ["big"], name="id"), *_to_z("big")], [t, _i64("one", [1])])


def _external(folder: Path, length: int, dims=(10**6, 10**6), file_bytes: int = 16) -> Path:
    (folder / "w.bin").write_bytes(b"\0" * file_bytes)
    t = onnx.TensorProto(name="huge", data_type=T.FLOAT, dims=list(dims), data_location=T.EXTERNAL)
    for k, v in (("location", "w.bin"), ("offset", "0"), ("length", str(length))):
        t.external_data.add(key=k, value=v)
    m = _with_convs([h.make_node("Identity", ["huge"], ["big"], name="id"), *_to_z("big")], [t, _i64("one", [1])])
    onnx.save(m, folder / "m.onnx")
    return folder / "m.onnx"


@pytest.mark.parametrize("case", ["raw_10^12", "dims_overflow", "external_length"])
def test_declared_sizes_refused_in_one_line(tmp_path, case):
    if case == "external_length":
        path = _external(tmp_path, length=4)
    else:
        path = tmp_path / "m.onnx"
        onnx.save(_declares_huge_raw() if case == "raw_10^12" else _declares_overflow(), path)
    rc, err, rss = run_cli("prune", str(path), "-o", str(tmp_path / "out.onnx"), "--ratio", "0.5")
    lines = errors(err)
    assert rc == 2 and len(lines) == 1, err
    assert lines[0].startswith(f"spa-nm: error: {path}: "), lines[0]
    assert "huge" in lines[0], lines[0]
    assert not (tmp_path / "out.onnx").exists()
    if case == "external_length":
        assert "declares 10^12 elements (4 TB) but its external data holds 4 bytes" in lines[0], lines[0]


# -- the loader's size checks, directly --------------------------------------------------------


def test_load_refuses_raw_data_that_contradicts_dims(tmp_path):
    onnx.save(_declares_huge_raw(), tmp_path / "m.onnx")
    with pytest.raises(InputError) as e:
        spa_nm.load(tmp_path / "m.onnx")
    assert str(e.value) == f"{tmp_path / 'm.onnx'}: initializer 'huge' declares 10^12 elements (4 TB) but holds 4 bytes"


def test_load_refuses_too_much_raw_data(tmp_path):
    t = onnx.TensorProto(name="huge", data_type=T.FLOAT, dims=[2], raw_data=b"\0" * 12)
    onnx.save(_with_convs([h.make_node("Identity", ["huge"], ["big"]), *_to_z("big")], [t, _i64("one", [1])]), tmp_path / "m.onnx")
    with pytest.raises(InputError, match=r"initializer 'huge' declares 2 elements \(8 bytes\) but holds 12 bytes"):
        spa_nm.load(tmp_path / "m.onnx")


def test_load_refuses_typed_data_that_contradicts_dims(tmp_path):
    t = onnx.TensorProto(name="huge", data_type=T.FLOAT, dims=[10**6, 10**6])
    t.float_data.extend([1.0])
    onnx.save(_with_convs([h.make_node("Identity", ["huge"], ["big"]), *_to_z("big")], [t, _i64("one", [1])]), tmp_path / "m.onnx")
    with pytest.raises(InputError, match=r"initializer 'huge' declares 10\^12 elements \(4 TB\) but holds 1 value$"):
        spa_nm.load(tmp_path / "m.onnx")


def test_load_refuses_a_constant_node_that_contradicts_dims(tmp_path):
    t = onnx.TensorProto(name="cv", data_type=T.INT64, dims=[3], raw_data=b"\0" * 8)
    node = h.make_node("Constant", [], ["big0"], value=t)
    cast = h.make_node("Cast", ["big0"], ["big"], to=T.FLOAT)
    onnx.save(_with_convs([node, cast, *_to_z("big")], [_i64("one", [1])]), tmp_path / "m.onnx")
    with pytest.raises(InputError, match=r"tensor 'cv' declares 3 elements \(24 bytes\) but holds 8 bytes"):
        spa_nm.load(tmp_path / "m.onnx")


def test_load_refuses_dims_whose_product_overflows(tmp_path):
    onnx.save(_declares_overflow(), tmp_path / "m.onnx")
    with pytest.raises(InputError, match=r"initializer 'huge' declares 1.84e\+19 elements .*more than int64 can count"):
        spa_nm.load(tmp_path / "m.onnx")


@pytest.mark.parametrize(
    ("length", "dims", "file_bytes", "why"),
    [
        (4, (10**6, 10**6), 16, r"declares 10\^12 elements \(4 TB\) but its external data holds 4 bytes"),
        (16, (2,), 16, r"declares 2 elements \(8 bytes\) but its external data holds 16 bytes"),
        (8, (2,), 4, r"is truncated \('w.bin' has 4 bytes, needs 8\)"),
    ],
)
def test_load_refuses_external_data_that_contradicts_dims(tmp_path, length, dims, file_bytes, why):
    path = _external(tmp_path, length, dims, file_bytes)
    with pytest.raises(InputError, match=why):
        spa_nm.load(path)


def test_external_data_that_matches_loads(tmp_path):
    path = _external(tmp_path, length=8, dims=(2,), file_bytes=8)
    model = spa_nm.load(path)
    assert model.graph.initializers["huge"].const_value.numpy().tolist() == [0.0, 0.0]


# -- bounded folding, directly -------------------------------------------------------------------


def _ir(proto: onnx.ModelProto) -> ir.Model:
    return ir.serde.deserialize_model(proto)


@pytest.mark.parametrize("bomb", GRAPH_BOMBS, ids=lambda f: f.__name__)
def test_fold_leaves_bombs_symbolic(bomb):
    """The fold pass (with shapes inferred first, as the pruner runs it) computes nothing big:
    the bomb's node stays, only the constants it can bound fold, the graph stays valid."""
    model = io.infer_shapes(_ir(bomb(BIG)))
    ops = {n.op_type for n in model.graph}
    fold_shape_arithmetic(model)
    after = {n.op_type for n in model.graph}
    for op in ("ConstantOfShape", "Expand", "Tile", "Range", "Where", "Resize", "Reshape", "Concat"):
        if op in ops and op != "Reshape":
            assert op in after, (op, after)
    for v in model.graph.initializers.values():
        assert v.const_value.nbytes <= limits.fold_limit(), (v.name, v.const_value.nbytes)
    onnx.checker.check_model(ir.serde.serialize_model(model))


def test_fold_still_folds_small_shape_arithmetic():
    """Bounded is not off: Shape -> Gather -> Concat -> Reshape on static shapes folds to one
    constant target, a small Range and a small fill fold too."""
    nodes = [
        h.make_node("Shape", ["x"], ["s"]),
        h.make_node("Gather", ["s", "i0"], ["n"], axis=0),
        h.make_node("Unsqueeze", ["n", "ax"], ["n1"]),
        h.make_node("Concat", ["n1", "minus1"], ["target"], axis=0),
        h.make_node("Reshape", ["y", "target"], ["flat"]),
        h.make_node("Range", ["lo", "hi", "step"], ["ints"]),
        h.make_node("ConstantOfShape", ["cs"], ["fill"], value=_f32("v", [2.0])),
        h.make_node("Cast", ["ints"], ["intsf"], to=T.FLOAT),
        h.make_node("Mul", ["intsf", "fill"], ["prod"]),
        h.make_node("ReduceMax", ["prod"], ["pmax"], keepdims=0),
        h.make_node("ReduceMax", ["flat"], ["fmax"], keepdims=0),
        h.make_node("Add", ["pmax", "fmax"], ["z0"]),
        *_to_z("z0")[1:],
    ]
    nodes[-1].input[0] = "z0"
    inits = [_i64("i0", 0), _i64("ax", [0]), _i64("minus1", [-1]), _i64("lo", 0), _i64("hi", 10), _i64("step", 1),
             _i64("cs", [10]), _i64("one", [1])]  # fmt: skip
    model = io.infer_shapes(_ir(_with_convs(nodes, inits)))
    assert fold_shape_arithmetic(model) >= 3
    consts = model.graph.initializers
    assert consts["target"].const_value.numpy().tolist() == [1, -1]
    assert float(consts["pmax"].const_value.numpy()) == 18.0  # max(range(10) * fill of 2)
    assert {n.op_type for n in model.graph} >= {"Conv", "Reshape"}
    assert not {"Shape", "Gather", "Range", "ConstantOfShape"} & {n.op_type for n in model.graph}
    onnx.checker.check_model(ir.serde.serialize_model(model))


def test_fold_limit_is_one_setting(monkeypatch):
    """SPA_NM_FOLD_LIMIT_MB sets the largest fill folded: a 4 MB fill folds at the default, not
    at 1 MB; a value that is not a size is a ConfigError."""
    def fill_folds() -> bool:
        nodes = [h.make_node("ConstantOfShape", ["cs"], ["fill"], value=_f32("v", [1.0])), *_to_z("fill")]
        model = _ir(_with_convs(nodes, [_i64("cs", [1000, 1000]), _i64("one", [1])]))
        fold_shape_arithmetic(model)
        return "ConstantOfShape" not in {n.op_type for n in model.graph}

    monkeypatch.delenv(limits.FOLD_LIMIT_ENV, raising=False)
    assert limits.fold_limit() == 64 << 20 and fill_folds()
    monkeypatch.setenv(limits.FOLD_LIMIT_ENV, "1")
    assert limits.fold_limit() == 1 << 20 and not fill_folds()
    monkeypatch.setenv(limits.FOLD_LIMIT_ENV, "4")
    assert fill_folds()
    for bad in ("lots", "-1", "nan"):
        monkeypatch.setenv(limits.FOLD_LIMIT_ENV, bad)
        with pytest.raises(ConfigError, match=limits.FOLD_LIMIT_ENV):
            limits.fold_limit()


@pytest.mark.parametrize("bomb", [range_, constant_of_shape, where], ids=lambda f: f.__name__)
def test_pruning_beside_a_bomb(tmp_path, bomb):
    """The API on a BIG bomb: the bomb's branch stays as it was, the Conv pair prunes (the
    model is not run: the bomb would not fit), the result passes the full checker."""
    onnx.save(bomb(BIG), tmp_path / "m.onnx")
    model = spa_nm.load(tmp_path / "m.onnx")
    res = spa_nm.prune(model, 0.5, round_to=1)
    assert res.report["groups_pruned"] == 1, res.report["blocked"]
    inits = res.model.graph.initializers
    assert inits["w1"].const_value.shape[0] == 8 and inits["w2"].const_value.shape[1] == 8
    assert {n.op_type for n in model.graph} == {n.op_type for n in res.model.graph}
    onnx.checker.check_model(ir.serde.serialize_model(res.model), full_check=True)


# -- bounded data propagation, directly ---------------------------------------------------------


def test_data_propagation_cuts_only_long_or_unknown_vectors():
    """The light copy ONNX inference runs on reads a [10^10] vector through a stand-in (a graph
    input of the same type and rank, no dims); the shape vectors of ordinary shape arithmetic
    are left alone."""
    model = io.infer_shapes(_ir(long_vector(BIG)))
    proto, cuts = io._bounded_proto(model)
    assert len(cuts) == 1
    cast = next(n for n in proto.graph.node if n.name == "cast")
    stand_in = next(i for i in proto.graph.input if i.name == cast.input[0])
    assert stand_in.type.tensor_type.elem_type == T.INT64
    assert [d.WhichOneof("value") for d in stand_in.type.tensor_type.shape.dim] == [None]

    ordinary = _ir(_with_convs(
        [h.make_node("Shape", ["y"], ["s"]), h.make_node("Gather", ["s", "i0"], ["n"], axis=0),
         h.make_node("Cast", ["n"], ["nf"], to=T.FLOAT), h.make_node("Reshape", ["nf", "one"], ["z"])],
        [_i64("i0", 0), _i64("one", [1])],
    ))  # fmt: skip
    io.infer_shapes(ordinary)
    assert io._bounded_proto(ordinary)[1] == frozenset()
    assert ordinary.graph.outputs[1].shape == ir.Shape([1])


def test_data_propagation_keeps_shapes_around_a_cut():
    """An Add of an activation and a cut vector keeps the activation's shape."""
    vec = h.make_tensor_value_info("v", T.FLOAT, [limits.PROPAGATION_VALUE + 1])
    nodes = [h.make_node("Flatten", ["y"], ["yf"], axis=0), h.make_node("Cast", ["v"], ["vc"], to=T.FLOAT),
             h.make_node("Add", ["yf", "vc"], ["s"]), h.make_node("ReduceMax", ["s"], ["sm"], keepdims=0),
             *_to_z("sm")[1:]]  # fmt: skip
    nodes[-1].input[0] = "sm"
    model = io.infer_shapes(_ir(_with_convs(nodes, [_i64("one", [1])], extra_inputs=[vec])))
    assert io._bounded_proto(model)[1]
    values = ir.convenience.create_value_mapping(model.graph)
    assert values["yf"].shape == ir.Shape([1, 256])
    assert values["y"].shape == ir.Shape([1, 4, 8, 8])


# -- overflow-safe sizes ------------------------------------------------------------------------


def test_counts_on_dims_that_overflow_int64():
    model = io.infer_shapes(_ir(overflow_shapes()))
    c = count(model)
    assert c["params"] == 8 * 16 + 16 * 4
    assert c["macs"] == 2**62 * 4 * (8 * 16 + 16 * 4)  # Python ints, exact
    fold_shape_arithmetic(model)  # Size and the fill are too large to fold: no error
    assert {"ConstantOfShape", "Size"} <= {n.op_type for n in model.graph}


def test_limits_helpers():
    assert limits.numel([2**62, 4]) == 2**64
    assert limits.numel([3, None]) is None and limits.numel([3, -1]) is None and limits.numel([]) == 1
    assert limits.show_count(10**12) == "10^12" and limits.show_count(12345) == "12345"
    assert limits.show_bytes(4) == "4 bytes" and limits.show_bytes(4 * 10**12) == "4 TB"
    assert limits.show_bytes(64 << 20) == "67.1 MB"
