"""The writer (`spa_nm.io.save`): external data that onnxruntime can load (shape and axes
tensors inline), the post-write onnxruntime check, the paths a run may write, symlinks, and no
temporary left behind on any exception.

Every written file is loaded by onnxruntime; inputs are compared by sha256 after each run.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import onnx
import pytest
from tests.helpers import CNN, model_from_text

import onnx_ir as ir
import spa_nm
from spa_nm import io
from spa_nm.cli import main
from spa_nm.errors import InputError, SurgeryError

# x -> MatMul/Add -> Reshape -> Unsqueeze -> Slice -> Squeeze: four int64 shape/axes tensors the
# ops read while onnxruntime type-checks the graph, one 16 KiB weight
SHAPES = """
<ir_version: 8, opset_import: ["" : 17]>
shapes (float[1, 64] x) => (float[1, 8, 4] y)
<float[64, 64] w, float[64] b, int64[3] shape = {1, 8, 8}, int64[1] axes = {0},
 int64[1] starts = {0}, int64[1] ends = {4}, int64[1] last = {3}>
{
  h = MatMul (x, w)
  hb = Add (h, b)
  r = Reshape (hb, shape)
  u = Unsqueeze (r, axes)
  s = Slice (u, starts, ends, last)
  y = Squeeze (s, axes)
}
"""
SHAPE_TENSORS = {"shape", "axes", "starts", "ends", "last"}

# a com.microsoft op with no CPU kernel in onnxruntime (see tests/rules/test_contrib.py)
BIASADD = """
<ir_version: 8, opset_import: ["" : 17, "com.microsoft" : 1]>
biasadd (float[1, 2, 8] x, float[1, 2, 8] skip) => (float[1, 2, 8] y)
<float[8, 8] w, float[8] b>
{
  h = MatMul (x, w)
  y = com.microsoft.BiasAdd (h, b, skip)
}
"""


def sha(p: Path) -> str:
    return hashlib.sha256(Path(p).read_bytes()).hexdigest()


def shas(*paths: Path) -> dict[str, str]:
    return {str(p): sha(p) for p in paths}


def temporaries(folder: Path) -> list[Path]:
    return sorted(folder.rglob(".spa_nm-*"))


def external_names(path: Path) -> set[str]:
    proto = onnx.load(str(path), load_external_data=False)
    return {t.name for t in proto.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL}


def shapes_model(folder: Path, threshold: int = 1024, name: str = "m.onnx") -> Path:
    """SHAPES with its tensors of ``threshold`` bytes and more in ``<name>.data`` (0: every
    tensor, shape vectors included: onnxruntime refuses such a file)."""
    folder.mkdir(parents=True, exist_ok=True)
    p = folder / name
    proto = model_from_text(SHAPES)
    for t in proto.graph.initializer:  # raw data: onnx moves only that to the data file
        t.CopyFrom(onnx.numpy_helper.from_array(onnx.numpy_helper.to_array(t), t.name))
    onnx.save(proto, p, save_as_external_data=True, location=name + ".data",
              size_threshold=threshold)  # fmt: skip
    return p


def ort_run(path: Path, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    ort = pytest.importorskip("onnxruntime")
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return sess.run(None, feeds)


def x_feeds() -> dict[str, np.ndarray]:
    return {"x": np.random.default_rng(0).standard_normal((1, 64)).astype(np.float32)}


@pytest.fixture
def old_writer(monkeypatch):
    """The writer as it was: every tensor of any size to the data file."""
    monkeypatch.setattr(io, "_inline_values", lambda model, keep_inline: set())


# -- 1. what stays inline -------------------------------------------------------------------


@pytest.mark.parametrize("threshold", [1024, 0])
def test_shape_tensors_stay_inline_and_weights_go_external(tmp_path, threshold):
    """With the input's tensors all external (threshold 0) or only its weight: the output keeps
    every shape/axes tensor and the small bias inline, the weight in ``<name>.data``."""
    src = shapes_model(tmp_path / "in", threshold)
    before = shas(src, src.with_name("m.onnx.data"))
    out = tmp_path / "out" / "m.onnx"
    spa_nm.save(spa_nm.prune(spa_nm.load(src), 0.0).model, out, inputs=[src])
    assert external_names(out) == {"w"}
    assert (tmp_path / "out" / "m.onnx.data").is_file()
    onnx.checker.check_model(str(out), full_check=True)
    assert shas(src, src.with_name("m.onnx.data")) == before
    assert not temporaries(tmp_path)


def test_shape_tensors_stay_inline_whatever_their_size(tmp_path, monkeypatch):
    """With no size threshold at all, the tensors ops read as shapes or axes still stay inline."""
    monkeypatch.setattr(io, "_INLINE_BYTES", 0)
    src = shapes_model(tmp_path / "in", threshold=0)
    out = tmp_path / "out.onnx"
    spa_nm.save(spa_nm.load(src), out, inputs=[src], external_data=True)
    assert external_names(out) == {"w", "b"}
    proto = onnx.load(str(out), load_external_data=False)
    assert SHAPE_TENSORS <= {t.name for t in proto.graph.initializer} - external_names(out)


def test_an_all_inline_input_with_external_data_asked_moves_its_weights(tmp_path):
    """With no external data in the input, where its tensors were decides nothing:
    ``external_data=True`` moves every tensor over the threshold that no op reads as a shape."""
    src = tmp_path / "m.onnx"
    onnx.save(model_from_text(SHAPES), src)
    out = tmp_path / "o" / "m.onnx"
    spa_nm.save(spa_nm.load(src), out, inputs=[src], external_data=True)
    assert external_names(out) == {"w"}
    (a,), (b,) = ort_run(src, x_feeds()), ort_run(out, x_feeds())
    np.testing.assert_array_equal(a, b)


def test_a_large_inline_tensor_of_an_external_input_stays_inline(tmp_path, monkeypatch):
    """(Threshold lowered so the bias counts as large.) Its input has it inline, the weight
    external: so does the output."""
    src = shapes_model(tmp_path / "in")
    monkeypatch.setattr(io, "_INLINE_BYTES", 16)
    model = spa_nm.load(src)
    assert isinstance(model.graph.initializers["b"].const_value, ir.TensorProtoTensor)
    out = tmp_path / "out.onnx"
    spa_nm.save(model, out, inputs=[src])
    assert external_names(out) == {"w"}


def test_save_leaves_the_model_as_it_was(tmp_path):
    """The writer swaps initializers only while it serializes, and never releases the memory
    maps the model views its data file through (arrays read from them stay valid): the model
    keeps its external tensors and can be saved again, with or without a data file."""
    src = shapes_model(tmp_path / "in", threshold=0)
    model = spa_nm.load(src)
    held = {n: v.const_value.numpy() for n, v in model.graph.initializers.items()}  # views of the map
    kinds = {n: type(v.const_value) for n, v in model.graph.initializers.items()}
    assert set(kinds.values()) == {ir.ExternalTensor}
    spa_nm.save(model, tmp_path / "a.onnx", inputs=[src])
    assert {n: type(v.const_value) for n, v in model.graph.initializers.items()} == kinds
    spa_nm.save(model, tmp_path / "b.onnx", inputs=[src], external_data=False)
    assert external_names(tmp_path / "b.onnx") == set()
    for path in (tmp_path / "a.onnx", tmp_path / "b.onnx"):
        written = {t.name: onnx.numpy_helper.to_array(t) for t in onnx.load(str(path)).graph.initializer}
        assert written.keys() == held.keys()
        for name, arr in held.items():
            np.testing.assert_array_equal(written[name], arr)


def test_output_runs_like_the_input(tmp_path):
    src = shapes_model(tmp_path / "in")
    out = tmp_path / "out.onnx"
    spa_nm.save(spa_nm.prune(spa_nm.load(src), 0.0).model, out, inputs=[src])
    (a,), (b,) = ort_run(src, x_feeds()), ort_run(out, x_feeds())
    np.testing.assert_array_equal(a, b)


def test_large_tensors_are_aligned_in_the_data_file(tmp_path):
    """Tensors over 1 MiB start at a multiple of 64 KiB (as onnx aligns them, so a runtime
    can map them); smaller ones are packed."""
    h = onnx.helper
    inits = [onnx.numpy_helper.from_array(a, n) for n, a in (
        ("s", np.ones(8, np.float32)), ("pad", np.full(300, 2, np.float32)),
        ("w", np.zeros((512, 1024), np.float32)), ("v", np.ones((512, 1024), np.float32)))]  # fmt: skip
    io_ = [h.make_tensor_value_info(n, onnx.TensorProto.FLOAT, [512, 1024]) for n in ("x", "y")]
    graph = h.make_graph([h.make_node("Add", ["x", "w"], ["t"]), h.make_node("Add", ["t", "v"], ["y"])],
                         "big", io_[:1], io_[1:], inits)  # fmt: skip
    src = tmp_path / "big.onnx"
    onnx.save(h.make_model(graph, opset_imports=[h.make_opsetid("", 17)]), src)
    out = tmp_path / "o.onnx"
    spa_nm.save(spa_nm.load(src), out, inputs=[src], external_data=True)
    on_disk = onnx.load(str(out), load_external_data=False)
    info = {t.name: {e.key: e.value for e in t.external_data} for t in on_disk.graph.initializer}
    assert info["s"] == {} and info["pad"]["offset"] == "0"
    assert int(info["w"]["offset"]) % 65536 == 0 and int(info["v"]["offset"]) % 65536 == 0
    onnx.checker.check_model(str(out), full_check=True)
    (y,) = ort_run(out, {"x": np.zeros((512, 1024), np.float32)})
    np.testing.assert_array_equal(y, np.ones((512, 1024), np.float32))


# -- 2. the post-write check ----------------------------------------------------------------


def test_a_file_onnxruntime_refuses_is_an_error_and_not_written(tmp_path, old_writer):
    pytest.importorskip("onnxruntime")
    src = shapes_model(tmp_path / "in")
    before = shas(src, src.with_name("m.onnx.data"))
    out = tmp_path / "out" / "b.onnx"
    with pytest.raises(SurgeryError) as e:
        spa_nm.save(spa_nm.load(src), out, inputs=[src])
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith(str(out))
    assert "Cannot parse data from external tensors" in msg and ".spa_nm-" not in msg
    assert not out.exists() and not out.with_name("b.onnx.data").exists()
    assert not temporaries(tmp_path)
    assert shas(src, src.with_name("m.onnx.data")) == before


def test_verify_false_writes_without_asking_onnxruntime(tmp_path, old_writer):
    src = shapes_model(tmp_path / "in")
    out = tmp_path / "o.onnx"
    spa_nm.save(spa_nm.load(src), out, inputs=[src], verify=False)
    assert "shape" in external_names(out)


def test_an_input_refused_the_same_way_does_not_blame_the_output(tmp_path, old_writer):
    """The input itself holds its shape vectors externally (onnxruntime refuses it the same
    way): the output is not the writer's fault and is written."""
    pytest.importorskip("onnxruntime")
    src = shapes_model(tmp_path / "in", threshold=0)
    out = tmp_path / "o.onnx"
    spa_nm.save(spa_nm.load(src), out, inputs=[src])
    assert out.exists()


def test_a_run_failure_is_an_error(tmp_path):
    """A written model that loads but fails on its first run (a Reshape target that does not
    fit) is an error when its input runs."""
    pytest.importorskip("onnxruntime")
    src = shapes_model(tmp_path / "in")
    model = spa_nm.load(src)
    model.graph.initializers["shape"].const_value = ir.tensor(np.array([1, 8, 7], np.int64), name="shape")
    model.graph.outputs[0].shape = None
    for v in model.graph.initializers.values():
        v.const_value = ir.tensor(v.const_value.numpy(), name=v.name)
    with pytest.raises(SurgeryError, match="cannot run the written model"):
        spa_nm.save(model, tmp_path / "o.onnx", inputs=[src])
    assert not (tmp_path / "o.onnx").exists() and not temporaries(tmp_path)


def test_no_cpu_kernel_is_not_an_error(tmp_path):
    """BiasAdd has no CPU kernel: the output is written, with its input as a source or
    without any (the file parsed and type-checked; only a kernel is missing)."""
    ort = pytest.importorskip("onnxruntime")
    src = tmp_path / "biasadd.onnx"
    onnx.save(model_from_text(BIASADD), src)
    with pytest.raises(Exception, match="NOT_IMPLEMENTED"):
        ort.InferenceSession(str(src), providers=["CPUExecutionProvider"])
    model = spa_nm.load(src)
    spa_nm.save(model, tmp_path / "a.onnx", inputs=[src])
    spa_nm.save(model, tmp_path / "b.onnx")
    onnx.checker.check_model(str(tmp_path / "b.onnx"), full_check=True)
    rep = tmp_path / "r.json"
    code = main(["prune", str(src), "-o", str(tmp_path / "c.onnx"), "--ratio", "0", "-q", "--report", str(rep)])
    assert code == 0 and (tmp_path / "c.onnx").exists()
    assert json.loads(rep.read_text())["models"][0]["status"] == "ok"


def test_the_cli_reports_a_refused_file_as_an_error_entry(tmp_path, old_writer, capsys):
    pytest.importorskip("onnxruntime")
    src = shapes_model(tmp_path / "in")
    before = shas(src, src.with_name("m.onnx.data"))
    out, rep = tmp_path / "out" / "b.onnx", tmp_path / "rep.json"
    code = main(["prune", str(src), "-o", str(out), "--ratio", "0", "-q", "--report", str(rep)])
    (entry,) = json.loads(rep.read_text())["models"]
    assert code == 1 and entry["status"] == "error", entry
    assert "b.onnx: onnxruntime cannot load the written model" in entry["error"]
    assert "Cannot parse data from external tensors" in entry["error"] and "\n" not in entry["error"]
    assert not out.exists() and not out.with_name("b.onnx.data").exists()
    assert not temporaries(tmp_path)
    assert shas(src, src.with_name("m.onnx.data")) == before
    assert "Cannot parse data" in capsys.readouterr().err


def test_the_source_compared_is_the_input_the_output_was_made_from(tmp_path):
    """The only model among the inputs (data files aside), else the one named as the output
    (a batch writes out/<input name>), else none."""
    for p in ("a/a.onnx", "x/b.onnx", "d.npz"):
        (tmp_path / p).parent.mkdir(exist_ok=True)
        (tmp_path / p).write_bytes(b"x")
    a, b, d = tmp_path / "a/a.onnx", tmp_path / "x/b.onnx", tmp_path / "d.npz"
    out = tmp_path / "out" / "b.onnx"
    assert io._source_of(out, [a, d], None) == a
    assert io._source_of(out, [a, b, d], None) == b
    assert io._source_of(tmp_path / "out" / "c.onnx", [a, b], None) is None
    assert io._source_of(out, [a, b], a) == a


# -- 3. paths a run writes ------------------------------------------------------------------


def external_pair(folder: Path, name: str = "a.onnx", data: str = "a.onnx.data") -> Path:
    (folder / data).parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model_from_text(CNN), folder / name, save_as_external_data=True, location=data, size_threshold=0)
    return folder / name


def test_output_onto_an_input_sidecar_is_refused(tmp_path, capsys):
    src = external_pair(tmp_path)
    data = tmp_path / "a.onnx.data"
    before = shas(src, data)
    assert main(["prune", str(src), "-o", str(data), "--ratio", "0.5", "-q"]) == 2
    assert "holds the weights of input" in capsys.readouterr().err
    assert shas(src, data) == before and not temporaries(tmp_path)


def test_an_output_whose_data_file_is_an_inputs_weights_is_refused(tmp_path, capsys):
    """Input a.onnx reads w.onnx.data; output w.onnx would write its weights there."""
    src = external_pair(tmp_path, data="w.onnx.data")
    before = shas(src, tmp_path / "w.onnx.data")
    assert main(["prune", str(src), "-o", str(tmp_path / "w.onnx"), "--ratio", "0.5", "-q"]) == 2
    assert "w.onnx.data" in capsys.readouterr().err
    assert not (tmp_path / "w.onnx").exists() and shas(src, tmp_path / "w.onnx.data") == before


def test_a_batch_output_onto_another_inputs_weights_is_refused_before_any_write(tmp_path, capsys):
    """d/a.onnx reads d/o/b.onnx.data; a.onnx and e/b.onnx prune into d/o: b.onnx's weights
    would land on a's, so the run stops before a.onnx is written."""
    a = external_pair(tmp_path / "d", data="o/b.onnx.data")
    b = tmp_path / "e" / "b.onnx"
    b.parent.mkdir()
    onnx.save(model_from_text(CNN), b)
    shared = tmp_path / "d" / "o" / "b.onnx.data"
    before = shas(a, b, shared)
    assert main(["prune", str(a), str(b), "-o", str(tmp_path / "d" / "o"), "--ratio", "0.5", "-q"]) == 2
    assert "b.onnx.data, which holds the weights of input" in capsys.readouterr().err
    assert shas(a, b, shared) == before
    assert [p.name for p in shared.parent.iterdir()] == ["b.onnx.data"]


@pytest.mark.parametrize("target", ["model", "data", "input", "input_data"])
def test_a_report_onto_a_file_of_the_run_is_refused(tmp_path, capsys, target):
    src = external_pair(tmp_path / "in")
    out = tmp_path / "out.onnx"
    report = {"model": out, "data": tmp_path / "out.onnx.data", "input": src,
              "input_data": tmp_path / "in" / "a.onnx.data"}[target]  # fmt: skip
    before = shas(src, tmp_path / "in" / "a.onnx.data")
    for cmd in (["prune", "--ratio", "0.5"], ["sparsify", "--pattern", "2:4"]):
        assert main([cmd[0], str(src), "-o", str(out), *cmd[1:], "-q", "--report", str(report)]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and str(report) in err, err
        assert not out.exists() and shas(src, tmp_path / "in" / "a.onnx.data") == before


def test_finetune_report_onto_its_output_is_refused(tmp_path, capsys):
    src = tmp_path / "m.onnx"
    onnx.save(model_from_text(CNN), src)
    data = tmp_path / "d.npz"
    np.savez(data, x=np.zeros((2, 3, 8, 8), np.float32))
    out = tmp_path / "o.onnx"
    assert main(["finetune", str(src), "--data", str(data), "-o", str(out), "--report", str(out), "-q"]) == 2
    assert "written by this run" in capsys.readouterr().err and not out.exists()


def test_an_output_symlink_to_an_input_is_refused(tmp_path):
    src = tmp_path / "m.onnx"
    onnx.save(model_from_text(CNN), src)
    link = tmp_path / "o.onnx"
    link.symlink_to(src)
    before = sha(src)
    with pytest.raises(InputError, match="output path is the input file"):
        spa_nm.save(spa_nm.load(src), link, inputs=[src])
    assert main(["prune", str(src), "-o", str(link), "--ratio", "0.5", "-q"]) == 2
    assert sha(src) == before and link.is_symlink()


def test_check_run_paths_refuses_two_outputs_onto_one_file(tmp_path):
    a, b = tmp_path / "a.onnx", tmp_path / "sub" / ".." / "a.onnx"
    (tmp_path / "sub").mkdir()
    with pytest.raises(InputError, match="written by this run"):
        io.check_run_paths([a, b], [])
    with pytest.raises(InputError, match="written by this run"):
        io.check_run_paths([tmp_path / "m.onnx"], [], report=tmp_path / "m.onnx.data")
    io.check_run_paths([a, tmp_path / "c.onnx"], [], report=tmp_path / "r.json")


# -- 4. symlinks are replaced, never written through ----------------------------------------


def test_symlinks_in_the_output_folder_are_replaced_not_written_through(tmp_path):
    src = external_pair(tmp_path / "in")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    victims = {k: elsewhere / k for k in ("model", "data", "report")}
    for v in victims.values():
        v.write_bytes(b"do not touch " + v.name.encode())
    before = shas(*victims.values(), src, tmp_path / "in" / "a.onnx.data")
    out = tmp_path / "out"
    out.mkdir()
    (out / "a.onnx").symlink_to(victims["model"])
    (out / "a.onnx.data").symlink_to(victims["data"])
    (out / "r.json").symlink_to(victims["report"])
    assert main(["prune", str(src), "-o", str(out / "a.onnx"), "--ratio", "0", "-q", "--report", str(out / "r.json")]) == 0
    for name in ("a.onnx", "a.onnx.data", "r.json"):
        assert not (out / name).is_symlink() and (out / name).is_file(), name
    assert shas(*victims.values(), src, tmp_path / "in" / "a.onnx.data") == before
    assert json.loads((out / "r.json").read_text())["models"][0]["status"] == "ok"
    onnx.checker.check_model(str(out / "a.onnx"), full_check=True)
    ort_run(out / "a.onnx", {"input": np.zeros((1, 3, 8, 8), np.float32)})


# -- 5. temporaries ------------------------------------------------------------------------


@pytest.mark.parametrize("where", ["verify", "data", "model", "rename"])
@pytest.mark.parametrize("error", [KeyboardInterrupt, OSError])
def test_an_exception_anywhere_leaves_nothing_behind(tmp_path, monkeypatch, where, error):
    """Interrupted while writing the data file, the model file, checking or renaming: no
    temporary, no new file, an earlier output as it was."""
    src = shapes_model(tmp_path / "in")
    out = tmp_path / "out" / "m.onnx"
    out.parent.mkdir()
    out.write_bytes(b"earlier output")
    before = shas(src, src.with_name("m.onnx.data"), out)
    model = spa_nm.load(src)

    def boom(*a, **k):
        raise error("interrupted")

    calls = {"n": 0}
    real_replace = os.replace

    def replace_once(a, b):  # the data file is moved, then the model file fails
        calls["n"] += 1
        if calls["n"] == 2:
            raise error("interrupted")
        return real_replace(a, b)

    if where == "verify":
        monkeypatch.setattr(io, "_verify_written", boom)
    elif where == "data":
        monkeypatch.setattr(io, "_append", boom)
    elif where == "model":
        monkeypatch.setattr(io.onnx, "save", boom)
    else:
        monkeypatch.setattr(io.os, "replace", replace_once)
    with pytest.raises(KeyboardInterrupt if error is KeyboardInterrupt else InputError):
        spa_nm.save(model, out, inputs=[src])
    assert not temporaries(tmp_path)
    assert shas(src, src.with_name("m.onnx.data"), out) == before
    if where != "rename":
        assert not out.with_name("m.onnx.data").exists()


# -- dynamo exports with external data: every prune and sparsify output loads -----------------

SLOW = pytest.mark.slow


@pytest.fixture(scope="session")
def dynamo_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("dynamo_external")


def dynamo_export(name: str, export_dir: Path, folder: Path) -> Path:
    """``name`` exported with ``torch.onnx.export(..., dynamo=True)``, weights in
    ``<name>.onnx.data``. The exports are the session's shared ones (`export_dir`): the CNN's
    already has external data; a transformer's single file is saved here the way torch's
    ``ONNXProgram.save(..., external_data=True)`` does (``onnx_ir.save`` with its defaults)."""
    pytest.importorskip("torch")
    if name == "resnet_basic":
        from models.export import cached_export

        return cached_export(name, "dynamo", export_dir)
    pytest.importorskip("transformers")
    import onnx_ir as ir

    from models.transformers_zoo import cached_export

    path = folder / f"{name}.onnx"
    if not path.exists():
        ir.save(ir.load(cached_export(name, "dynamo", export_dir)), path, external_data=path.name + ".data")
    return path


@pytest.mark.torch
@pytest.mark.parametrize("name", ["resnet_basic", "gpt2_tiny", pytest.param("bert_tiny", marks=SLOW)])
def test_dynamo_external_data_outputs_load_and_run(export_dir, dynamo_dir, tmp_path, name):
    """Prune (0.5 and 0) and sparsify outputs pass the full checker and run in onnxruntime;
    ratio 0 gives the input's outputs. (Exports take 5-15 s; the BERT one only under -m slow.)"""
    ort = pytest.importorskip("onnxruntime")
    src = dynamo_export(name, export_dir, dynamo_dir)
    data = src.with_name(src.name + ".data")
    assert data.is_file()
    before = shas(src, data)
    model = spa_nm.load(src)
    sess = ort.InferenceSession(str(src), providers=["CPUExecutionProvider"])
    feeds = {i.name: io._random_feeds(sess)[i.name] for i in sess.get_inputs()}
    expected = sess.run(None, feeds)
    outputs = {
        "prune05": spa_nm.prune(model, 0.5, round_to=1).model,
        "prune0": spa_nm.prune(model, 0.0).model,
        "sparse": spa_nm.sparsify(model, "2:4")[0],
    }
    for tag, m in outputs.items():
        out = tmp_path / f"{tag}.onnx"
        spa_nm.save(m, out, inputs=[src])
        onnx.checker.check_model(str(out), full_check=True)
        got = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"]).run(None, feeds)
        assert got[0].shape == expected[0].shape, tag
        if tag == "prune0":
            for a, b in zip(expected, got, strict=True):
                np.testing.assert_array_equal(a, b)
    # the CLI writes through the same writer
    out = tmp_path / "cli" / f"{name}.onnx"
    for cmd in (["prune", "--ratio", "0"], ["sparsify", "--pattern", "2:4"]):
        assert main([cmd[0], str(src), "-o", str(out), *cmd[1:], "-q"]) == 0
        onnx.checker.check_model(str(out), full_check=True)
        ort.InferenceSession(str(out), providers=["CPUExecutionProvider"]).run(None, feeds)
    assert shas(src, data) == before
    assert not temporaries(tmp_path) and not temporaries(src.parent)
