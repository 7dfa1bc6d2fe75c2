"""The CLI's contract on bad input, batches and signals, through the real command in a subprocess:
one ``spa-nm: error: FILE: cause`` line per error (warnings aside), the documented exit code, no
traceback, inputs byte-identical, no ``.spa_nm-*`` temporary left; ``--jobs`` never stalls on a
large report entry, ``--timeout`` stops a model, SIGTERM/SIGINT exit 128 + the signal."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto as T
from onnx import helper as h
from onnx import numpy_helper as nh

ROOT = Path(__file__).resolve().parents[1]


def run_cli(*args: str, cwd: Path | None = None, timeout: float = 120) -> tuple[int, str, str]:
    p = subprocess.run([sys.executable, str(ROOT / "cli.py"), *args], capture_output=True, text=True,
                       cwd=cwd, timeout=timeout)  # fmt: skip
    return p.returncode, p.stdout, p.stderr


def problems(err: str) -> list[str]:
    """The stderr lines that are not warnings."""
    return [ln for ln in err.splitlines() if ln.strip() and not ln.lower().startswith("spa-nm: warning")]


def assert_one_error(err: str, name: str) -> str:
    assert "Traceback" not in err, err
    lines = problems(err)
    assert len(lines) == 1, err
    assert lines[0].startswith(f"spa-nm: error: {name}: "), lines[0]
    return lines[0]


def sha(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


def no_temporaries(*folders: Path) -> None:
    for f in folders:
        if f.exists():
            left = [p.name for p in f.rglob(".spa_nm-*")]
            assert not left, left


# -- bad inputs, each built here -------------------------------------------------------------

X = h.make_tensor_value_info("x", T.FLOAT, [1, 3, 8, 8])


def _y(*shape: int) -> onnx.ValueInfoProto:
    return h.make_tensor_value_info("y", T.FLOAT, list(shape))


def _w(name: str, *shape: int, dtype=np.float32) -> onnx.TensorProto:
    return nh.from_array(np.random.default_rng(0).standard_normal(shape).astype(dtype), name)


def _model(nodes, inputs, outputs, inits, value_info=(), sparse=()) -> onnx.ModelProto:
    g = h.make_graph(nodes, "g", inputs, outputs, inits, value_info=list(value_info), sparse_initializer=list(sparse))
    return h.make_model(g, opset_imports=[h.make_opsetid("", 13)], ir_version=8)


def _cnn(strides=(1, 1), w1=None, tail=None, inputs=(), value_info=(), out=(1, 4, 8, 8), sparse_w2=False):
    """``x -> Conv(w1) -> Relu -> Conv(w2) -> y``, a prunable pair unless something is wrong."""
    nodes = [
        h.make_node("Conv", ["x", "w1"], ["c1"], name="conv1", pads=[1, 1, 1, 1], strides=list(strides)),
        h.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        h.make_node("Conv", ["r1", "w2"], ["c2" if tail else "y"], name="conv2", pads=[1, 1, 1, 1]),
    ]
    inits = [w1 if w1 is not None else _w("w1", 8, 3, 3, 3)]
    sparse = []
    w2 = _w("w2", 4, 8, 3, 3)
    if sparse_w2:
        flat = nh.to_array(w2).reshape(-1)
        sparse = [h.make_sparse_tensor(nh.from_array(flat[:10].copy(), "w2"), nh.from_array(np.arange(10, dtype=np.int64), "w2_i"), [4, 8, 3, 3])]
    else:
        inits.append(w2)
    if tail:
        nodes += tail[0]
        inits += tail[1]
    return _model(nodes, [X, *inputs], [_y(*out)], inits, value_info, sparse)


def _bytes(m: onnx.ModelProto) -> bytes:
    return m.SerializeToString()


def _raw_too_long() -> bytes:
    m = _cnn()
    m.graph.initializer[1].raw_data += b"\0" * 16
    return _bytes(m)


def _typed_too_long() -> bytes:
    m = _cnn()
    t = m.graph.initializer[1]
    values = nh.to_array(t).reshape(-1).tolist()
    t.ClearField("raw_data")
    t.float_data.extend([*values, 0.0, 0.0])
    return _bytes(m)


def _name_not_utf8() -> bytes:
    data = _bytes(_cnn())
    assert data.count(b"conv1") == 1
    return data.replace(b"conv1", b"conv\xff")


def _if_branches() -> bytes:
    vi = h.make_tensor_value_info
    then = h.make_graph([h.make_node("Identity", ["r1"], ["t1"])], "then", [], [vi("t1", T.FLOAT, [1, 8, 8, 8])])
    other = h.make_graph([h.make_node("Identity", ["r1"], ["e1"]), h.make_node("Identity", ["r1"], ["e2"])], "else", [],
                         [vi("e1", T.FLOAT, [1, 8, 8, 8]), vi("e2", T.FLOAT, [1, 8, 8, 8])])  # fmt: skip
    m = _cnn()
    m.graph.node[2].input[0] = "b"
    m.graph.node.insert(2, h.make_node("If", ["cond"], ["b"], then_branch=then, else_branch=other, name="if"))
    m.graph.input.append(vi("cond", T.BOOL, []))
    return _bytes(m)


BAD: dict[str, Callable[[], bytes]] = {
    # the full checker refuses these (strict shape inference)
    "init_vs_input": lambda: _bytes(_cnn(inputs=[h.make_tensor_value_info("w1", T.FLOAT, [8, 3, 5, 5])])),
    "conv_strides_0": lambda: _bytes(_cnn(strides=(0, 0))),
    "reshape_two_minus_1": lambda: _bytes(_cnn(out=(4, 64), tail=([h.make_node("Reshape", ["c2", "s"], ["y"], name="rs")],
                                                                   [nh.from_array(np.array([-1, -1], np.int64), "s")]))),  # fmt: skip
    "weight_dtype": lambda: _bytes(_cnn(w1=_w("w1", 8, 3, 3, 3, dtype=np.float64))),
    "lying_value_info": lambda: _bytes(_cnn(value_info=[h.make_tensor_value_info("c1", T.FLOAT, [1, 5, 8, 8])])),
    "lying_output": lambda: _bytes(_cnn(out=(1, 6, 8, 8))),
    "if_branches": _if_branches,
    # the checker lets these through; spa_nm cannot read them
    "negative_dim": lambda: _bytes(_model(_cnn().graph.node, [h.make_tensor_value_info("x", T.FLOAT, [1, 3, -8, 8])],
                                          [_y(1, 4, -8, 8)], _cnn().graph.initializer)),  # fmt: skip
    "raw_too_long": _raw_too_long,
    "typed_too_long": _typed_too_long,
    "sparse_initializer": lambda: _bytes(_cnn(sparse_w2=True)),
    "name_not_utf8": _name_not_utf8,
}


def _write_bad(folder: Path, kinds=tuple(BAD)) -> dict[str, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    for k in kinds:
        out[k] = folder / f"{k}.onnx"
        out[k].write_bytes(BAD[k]())
    return out


# every command, and every kind of bad input at least once; the file as the user wrote it
# (each subprocess costs ~2 s of imports: the batches below give every kind to prune and sparsify)
SINGLE = [
    ("inspect", "raw_too_long"),
    ("inspect", "name_not_utf8"),
    ("prune", "conv_strides_0"),
    ("sparsify", "weight_dtype"),
    ("verify", "lying_output"),
    ("bench", "negative_dim"),
    ("sensitivity", "if_branches"),
    ("finetune", "lying_value_info"),
    ("regime", "typed_too_long"),
]


@pytest.mark.parametrize(("command", "kind"), SINGLE, ids=[f"{c}-{k}" for c, k in SINGLE])
def test_bad_input_is_one_line(tmp_path, command, kind):
    bad = _write_bad(tmp_path / "in", [kind])[kind]
    good = tmp_path / "in" / "good.onnx"
    onnx.save(_cnn(), good)
    np.savez(tmp_path / "d.npz", x=np.zeros((4, 3, 8, 8), np.float32))
    before = sha(bad)
    name = f"./in/{kind}.onnx"  # as typed: the message must name it so
    out = tmp_path / "out"
    args = {
        "inspect": ["inspect", name],
        "prune": ["prune", name, "-o", "out/o.onnx", "--ratio", "0.5"],
        "sparsify": ["sparsify", name, "-o", "out/o.onnx", "--pattern", "2:4"],
        "verify": ["verify", "in/good.onnx", name],
        "bench": ["bench", name, "--iters", "1", "--warmup", "0"],
        "sensitivity": ["sensitivity", name, "-o", "out/sens"],
        "finetune": ["finetune", name, "--data", "d.npz", "-o", "out/o.onnx", "--steps", "1"],
        "regime": ["regime", "prune-train", name, "--data", "d.npz", "-o", "out/o.onnx", "--ratio", "0.5"],
    }[command]
    code, _, err = run_cli(*args, cwd=tmp_path)
    assert code == 2, err
    line = assert_one_error(err, name)
    if kind not in ("negative_dim", "raw_too_long", "typed_too_long", "sparse_initializer", "name_not_utf8"):
        assert ": invalid model: [" in line, line  # the checker's own message
    assert sha(bad) == before
    assert not out.exists() or not any(out.rglob("*.onnx"))
    no_temporaries(tmp_path)


@pytest.mark.parametrize("command", ["prune", "sparsify"])
def test_batch_of_bad_inputs(tmp_path, command):
    """One error line per bad model, naming it (no extra lines: sparse initializers once printed
    16); the good model, which differs from each bad one by its defect only, is written; exit 1.
    Today's prune exited 0 on init_vs_input, conv_strides_0 and reshape_two_minus_1 and wrote an
    output that fails the full checker."""
    bad = _write_bad(tmp_path / "in")
    onnx.save(_cnn(), tmp_path / "in" / "good.onnx")
    onnx.checker.check_model(str(tmp_path / "in" / "good.onnx"), full_check=True)
    before = {p: sha(p) for p in (tmp_path / "in").iterdir()}
    out = tmp_path / "out"
    extra = ["--ratio", "0.5"] if command == "prune" else ["--pattern", "2:4"]
    code, _, err = run_cli(command, str(tmp_path / "in"), "-o", str(out), *extra, "--report", str(tmp_path / "r.json"), "-q")
    assert code == 1, err
    assert "Traceback" not in err
    lines = problems(err)
    assert len(lines) == len(bad), err
    for kind, p in bad.items():
        (line,) = [ln for ln in lines if f"/{kind}.onnx: " in ln]
        assert line.startswith(f"spa-nm: error: {p}: "), line
    status = {Path(e["input"]).stem: e["status"] for e in json.loads((tmp_path / "r.json").read_text())["models"]}
    assert status == {"good": "ok", **{k: "error" for k in bad}}
    assert sorted(p.name for p in out.glob("*.onnx")) == ["good.onnx"]
    assert before == {p: sha(p) for p in (tmp_path / "in").iterdir()}
    no_temporaries(out, tmp_path / "in")


def test_force_prunes_an_invalid_input_and_keeps_its_error_only(tmp_path):
    bad = _write_bad(tmp_path, ["init_vs_input"])["init_vs_input"]
    out = tmp_path / "o.onnx"
    code, _, err = run_cli("prune", str(bad), "-o", str(out), "--ratio", "0.5", "--force", "--report", str(tmp_path / "r.json"))
    assert code == 0 and not problems(err), err
    assert any("--force" in ln for ln in err.splitlines())  # the warning says it was forced
    (entry,) = json.loads((tmp_path / "r.json").read_text())["models"]
    assert entry["status"] == "ok" and entry["params_after"] < entry["params_before"]
    from spa_nm.cli._input import checker_error

    forced = checker_error(bad)
    assert forced is not None and checker_error(out) in (None, forced)  # never a new error


# -- batches: large entries, timeouts, signals -----------------------------------------------


def _blocked_chain(n: int) -> onnx.ModelProto:
    """``n`` ops of a custom domain in a chain: each one a blocked op of the report."""
    nodes = [h.make_node("Blob", [f"t{i - 1}" if i else "x"], [f"t{i}"], domain="custom.ops", name=f"blob{i}") for i in range(n)]
    nodes.append(h.make_node("Identity", [f"t{n - 1}"], ["y"]))
    g = h.make_graph(nodes, "chain", [h.make_tensor_value_info("x", T.FLOAT, [1, 4])], [h.make_tensor_value_info("y", T.FLOAT, [1, 4])])
    return h.make_model(g, opset_imports=[h.make_opsetid("", 13), h.make_opsetid("custom.ops", 1)], ir_version=8)


def test_jobs_do_not_stall_on_a_large_report_entry(tmp_path):
    """A report entry over a pipe's 64 KiB used to block its worker forever."""
    src = tmp_path / "in"
    src.mkdir()
    onnx.save(_blocked_chain(1000), src / "chain.onnx")
    onnx.save(_cnn(), src / "good.onnx")
    rep = tmp_path / "r.json"
    code, _, err = run_cli("prune", str(src), "-o", str(tmp_path / "out"), "--ratio", "0.5", "--jobs", "2",
                           "--report", str(rep), "-q", timeout=90)  # fmt: skip
    assert code == 1, err  # the chain has nothing to prune
    entries = {Path(e["input"]).name: e for e in json.loads(rep.read_text())["models"]}
    chain = entries["chain.onnx"]
    assert chain["status"] == "declined" and len(chain["blocked"]) >= 1000
    assert len(json.dumps(chain)) > 65536
    assert entries["good.onnx"]["status"] == "ok" and (tmp_path / "out" / "good.onnx").exists()
    assert problems(err) == [f"spa-nm: {chain['error']}"]
    no_temporaries(tmp_path / "out")


def test_timeout_stops_a_model(tmp_path):
    good = tmp_path / "good.onnx"
    onnx.save(_cnn(), good)
    out, rep = tmp_path / "out", tmp_path / "r.json"
    code, _, err = run_cli("prune", str(good), "-o", str(out / "o.onnx"), "--ratio", "0.5", "--timeout", "0.01",
                           "--report", str(rep))  # fmt: skip
    assert code == 1
    assert "timed out after 0.01 s" in assert_one_error(err, str(good))
    (entry,) = json.loads(rep.read_text())["models"]
    assert entry["status"] == "timeout" and entry["output"] is None
    assert not (out / "o.onnx").exists()
    no_temporaries(out)


def test_remove_temporaries_takes_only_the_killed_writers(tmp_path):
    """What io.save of out/m.onnx leaves when killed goes; another writer's temporary stays."""
    from spa_nm.cli._batch import remove_temporaries

    since = time.time()
    mine, theirs, empty = tmp_path / ".spa_nm-a1", tmp_path / ".spa_nm-b2", tmp_path / ".spa_nm-c3"
    for d in (mine, theirs, empty):
        d.mkdir()
    (mine / "m.onnx").write_bytes(b"partial")
    (mine / "m.onnx.data").write_bytes(b"partial")
    (theirs / "other.onnx").write_bytes(b"partial")
    remove_temporaries(tmp_path / "m.onnx", since)
    assert not mine.exists() and not empty.exists() and theirs.exists()


BIG = """
<ir_version: 8, opset_import: ["" : 13]>
big (float[1, 64, 32, 32] input) => (float[1, 10] output)
<float[384, 64, 3, 3] w1, float[384, 384, 3, 3] w2, float[384, 384, 3, 3] w3, float[10, 384] wf>
{
  a = Conv <pads = [1, 1, 1, 1]> (input, w1)
  b = Conv <pads = [1, 1, 1, 1]> (a, w2)
  c = Conv <pads = [1, 1, 1, 1]> (b, w3)
  g = GlobalAveragePool (c)
  f = Flatten (g)
  output = Gemm <transB = 1> (f, wf)
}
"""


def _children(pid: int) -> list[int]:
    kids = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                stat = Path(f"/proc/{d}/stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                kids.append(int(d))
    return kids


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="needs /proc to find the workers")
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_mid_jobs_batch(tmp_path, sig):
    """The parent stops every worker (SIGTERM, then SIGKILL), no temporary remains anywhere, the
    finished outputs are whole, and the exit code is 128 + the signal."""
    from tests.helpers import model_from_text

    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    proto = model_from_text(BIG)
    for k in range(6):
        onnx.save(proto, src / f"m{k}.onnx")
    before = sha(src / "m0.onnx")
    proc = subprocess.Popen([sys.executable, str(ROOT / "cli.py"), "prune", str(src), "-o", str(out), "--ratio", "0.5",
                             "--jobs", "2", "-q"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    deadline = time.time() + 60
    while time.time() < deadline and not (out.exists() and any(out.glob("*.onnx"))):
        time.sleep(0.02)  # one model is done: the other workers are busy
    workers = _children(proc.pid)
    assert workers, "no worker process running"
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + sig, err
    assert "Traceback" not in err and not problems(err)[1:], err
    assert not [w for w in workers if Path(f"/proc/{w}").exists() and "zombie" not in Path(f"/proc/{w}/status").read_text()]
    no_temporaries(out)
    assert not [p.name for p in out.iterdir() if not p.name.endswith(".onnx")]
    written = sorted(out.glob("*.onnx"))
    assert 0 < len(written) < 6
    for p in written:
        onnx.checker.check_model(str(p), full_check=True)
    assert sha(src / "m0.onnx") == before


def test_a_valid_contrib_op_model_is_not_refused(tmp_path, capsys):
    """onnxruntime's com.microsoft ops have no ONNX schema and SimplifiedLayerNormalization sits
    in the ONNX domain (spa_nm registers its schema): the checker must let such a model in."""
    from spa_nm.cli import main
    from tests.helpers import model_from_text
    from tests.rules.test_contrib import gemm_tokens

    text = gemm_tokens("s = com.microsoft.FastGelu (h, b)\n a = SimplifiedLayerNormalization (s, g)", "float[8] b, float[8] g")
    src = tmp_path / "contrib.onnx"
    onnx.save(model_from_text(text), src)
    out = tmp_path / "o.onnx"
    assert main(["prune", str(src), "-o", str(out), "--ratio", "0.5", "--allow-approximate", "-q"]) == 0
    assert out.exists() and not capsys.readouterr().err
