"""The CLI contract: outputs, report JSON, and one-line errors for every bad input."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest

from spa_nm.cli import main

ROOT = Path(__file__).resolve().parents[1]


def run_cli(*args: str) -> tuple[int, str, str]:
    """Run ``python cli.py`` in a subprocess: exit code, stdout, stderr."""
    p = subprocess.run(
        [sys.executable, str(ROOT / "cli.py"), *args], capture_output=True, text=True, timeout=120
    )
    return p.returncode, p.stdout, p.stderr


def assert_one_line_error(err: str, *needles: str) -> None:
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("spa-nm: error: ") or "error" in lines[0], err
    assert "Traceback" not in err
    for n in needles:
        assert n in lines[0], (n, lines[0])


def digest(p: Path) -> bytes:
    return p.read_bytes()


def test_prune_single_file_writes_output_and_report(cnn_path, tmp_path):
    out, rep = tmp_path / "small.onnx", tmp_path / "r" / "report.json"
    before = digest(cnn_path)
    assert (
        main(["prune", str(cnn_path), "-o", str(out), "--ratio", "0.5", "--report", str(rep), "-q"])
        == 0
    )
    assert digest(cnn_path) == before, "input modified"
    onnx.checker.check_model(onnx.load(out), full_check=True)
    data = json.loads(rep.read_text())
    (entry,) = data["models"]
    for key in (
        "input",
        "output",
        "status",
        "error",
        "params_before",
        "params_after",
        "macs_before",
        "macs_after",
        "groups_total",
        "groups_pruned",
        "blocked",
        "seconds",
    ):
        assert key in entry
    assert entry["status"] == "ok" and entry["error"] is None
    assert entry["params_after"] < entry["params_before"]
    assert entry["macs_after"] < entry["macs_before"]
    assert not list(tmp_path.glob(".spa_nm-*")), "temporary files left behind"


def test_prune_batch_folder_and_summary(cnn_path, tmp_path, capsys):
    src = tmp_path / "in"
    (src / "sub").mkdir(parents=True)
    shutil.copy(cnn_path, src / "a.onnx")
    shutil.copy(cnn_path, src / "sub" / "b.onnx")
    out = tmp_path / "out"
    assert main(["prune", str(src), "-o", str(out), "--ratio", "0.25"]) == 0
    assert sorted(p.name for p in out.glob("*.onnx")) == ["a.onnx", "b.onnx"]
    table = capsys.readouterr().out
    assert "a.onnx" in table and "b.onnx" in table and "→" in table


def test_batch_goes_on_after_a_bad_model(cnn_path, tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    shutil.copy(cnn_path, src / "good.onnx")
    (src / "bad.onnx").write_bytes(b"this is not a protobuf")
    out, rep = tmp_path / "out", tmp_path / "report.json"
    code, _, err = run_cli(
        "prune", str(src), "-o", str(out), "--ratio", "0.5", "--report", str(rep), "-q"
    )
    assert code != 0
    assert (out / "good.onnx").exists() and not (out / "bad.onnx").exists()
    status = {Path(e["input"]).name: e["status"] for e in json.loads(rep.read_text())["models"]}
    assert status == {"good.onnx": "ok", "bad.onnx": "error"}
    assert "bad.onnx" in err and "Traceback" not in err


def test_ratio_zero_gives_identical_outputs(cnn_path, tmp_path):
    from spa_nm.testing import random_feeds, run
    import spa_nm

    out = tmp_path / "same.onnx"
    assert main(["prune", str(cnn_path), "-o", str(out), "--ratio", "0", "-q"]) == 0
    a, b = spa_nm.load(cnn_path), spa_nm.load(out)
    feeds = random_feeds(a)
    for x, y in zip(run(a, feeds), run(b, feeds), strict=True):
        np.testing.assert_array_equal(x, y)


def test_inspect_text_and_json(cnn_path):
    code, out, _ = run_cli("inspect", str(cnn_path))
    assert code == 0 and "prunable" in out and "Conv" in out
    code, out, _ = run_cli("inspect", str(cnn_path), "--json")
    info = json.loads(out)
    assert info["prunable_groups"] >= 1 and info["params"] > 0 and info["macs"] > 0
    assert {"id", "size", "nodes", "blocked"} <= set(info["groups"][0])


def test_help_and_version():
    code, out, _ = run_cli("--help")
    assert code == 0 and "examples:" in out
    code, out, _ = run_cli("prune", "--help")
    assert code == 0 and "--ratio" in out and "examples:" in out
    code, out, _ = run_cli("--version")
    assert code == 0 and out.startswith("spa-nm ")


# -- bad input: one line naming the file and the cause, exit code 2, nothing written -------


def test_missing_file(tmp_path):
    code, _, err = run_cli(
        "prune", str(tmp_path / "nope.onnx"), "-o", str(tmp_path / "o.onnx"), "--ratio", "0.5"
    )
    assert code == 2
    assert_one_line_error(err, "nope.onnx", "no such file")
    assert not (tmp_path / "o.onnx").exists()


@pytest.mark.parametrize(
    ("content", "cause"),
    [
        (b"", "empty file"),
        (b"\x00garbage\xff" * 10, "not an ONNX model"),
        (b"hello world\n", "not an ONNX model"),
    ],
    ids=["empty", "garbage", "text"],
)
def test_not_an_onnx_file(tmp_path, content, cause):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(content)
    code, _, err = run_cli("prune", str(bad), "-o", str(tmp_path / "o.onnx"), "--ratio", "0.5")
    assert code == 2
    assert_one_line_error(err, "bad.onnx", cause)
    assert not (tmp_path / "o.onnx").exists()


def test_truncated_file(cnn_path, tmp_path):
    data = cnn_path.read_bytes()
    bad = tmp_path / "trunc.onnx"
    bad.write_bytes(data[: len(data) // 2])
    code, _, err = run_cli("prune", str(bad), "-o", str(tmp_path / "o.onnx"), "--ratio", "0.5")
    assert code == 2
    assert_one_line_error(err, "trunc.onnx")
    assert not (tmp_path / "o.onnx").exists()


@pytest.mark.parametrize("ratio", ["1", "1.5", "-0.1", "abc", "nan"])
def test_ratio_outside_range(cnn_path, tmp_path, ratio):
    code, _, err = run_cli("prune", str(cnn_path), "-o", str(tmp_path / "o.onnx"), "--ratio", ratio)
    assert code == 2
    assert "ratio" in err and "Traceback" not in err
    assert not (tmp_path / "o.onnx").exists()


def test_output_equal_to_input(cnn_path):
    before = digest(cnn_path)
    code, _, err = run_cli("prune", str(cnn_path), "-o", str(cnn_path), "--ratio", "0.5")
    assert code == 2
    assert_one_line_error(err, "cnn.onnx", "input")
    assert digest(cnn_path) == before


def test_output_folder_equal_to_input_folder(cnn_path):
    folder = cnn_path.parent
    before = digest(cnn_path)
    code, _, err = run_cli("prune", str(folder), "-o", str(folder), "--ratio", "0.5")
    assert code == 2
    assert_one_line_error(err, "input")
    assert digest(cnn_path) == before


def test_folder_without_models(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    code, _, err = run_cli("prune", str(empty), "-o", str(tmp_path / "out"), "--ratio", "0.5")
    assert code == 2
    assert_one_line_error(err, "empty", "no .onnx")


def test_unwritable_output_folder(cnn_path, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    code, _, err = run_cli(
        "prune", str(cnn_path), "-o", str(blocker / "sub" / "o.onnx"), "--ratio", "0.5"
    )
    assert code == 2
    assert_one_line_error(err, "cannot create the output folder")


@pytest.mark.skipif(
    os.geteuid() == 0 if hasattr(os, "geteuid") else True, reason="root ignores permissions"
)
def test_read_only_output_folder(cnn_path, tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        code, _, err = run_cli("prune", str(cnn_path), "-o", str(ro / "o.onnx"), "--ratio", "0.5")
        assert code == 2
        assert_one_line_error(err, "not writable")
    finally:
        ro.chmod(0o755)


def _external_model(tmp_path: Path, location: str) -> Path:
    from tests.helpers import CNN, model_from_text

    m = model_from_text(CNN)
    d = tmp_path / "ext"
    d.mkdir()
    onnx.save(
        m,
        d / "m.onnx",
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location="m.data",
        size_threshold=0,
    )
    proto = onnx.load(d / "m.onnx", load_external_data=False)
    for t in proto.graph.initializer:
        for e in t.external_data:
            if e.key == "location":
                e.value = location
    onnx.save(proto, d / "m.onnx")
    return d / "m.onnx"


@pytest.mark.parametrize("location", ["../m.data", "/etc/passwd", "missing.data"])
def test_external_data_outside_folder_or_missing(tmp_path, location):
    p = _external_model(tmp_path, location)
    code, _, err = run_cli("prune", str(p), "-o", str(tmp_path / "o.onnx"), "--ratio", "0.5")
    assert code == 2
    assert_one_line_error(err, "m.onnx", "external data")
    assert not (tmp_path / "o.onnx").exists()


def test_external_data_model_prunes(tmp_path):
    p = _external_model(tmp_path, "m.data")
    code, _, err = run_cli("prune", str(p), "-o", str(tmp_path / "o.onnx"), "--ratio", "0.5", "-q")
    assert code == 0, err
    onnx.checker.check_model(onnx.load(tmp_path / "o.onnx"), full_check=True)


def test_debug_shows_traceback(tmp_path):
    code, _, err = run_cli(
        "prune",
        str(tmp_path / "nope.onnx"),
        "-o",
        str(tmp_path / "o.onnx"),
        "--ratio",
        "0.5",
        "--debug",
    )
    assert code != 0 and "Traceback" in err


def test_duplicate_names_in_batch(cnn_path, tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    shutil.copy(cnn_path, a / "m.onnx")
    shutil.copy(cnn_path, b / "m.onnx")
    code, _, err = run_cli(
        "prune", str(a / "m.onnx"), str(b / "m.onnx"), "-o", str(tmp_path / "out"), "--ratio", "0.5"
    )
    assert code == 2
    assert_one_line_error(err, "m.onnx", "collide")


def test_import_does_not_load_torch_or_onnxruntime():
    code = "import sys, spa_nm, spa_nm.cli; print('torch' in sys.modules, 'onnxruntime' in sys.modules)"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert out.split() == ["False", "False"]


# -- batch isolation, dry run, interruption, verify, bench ------------------------------------


def test_jobs_match_serial_results(cnn_path, tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    for k in range(3):
        shutil.copy(cnn_path, src / f"m{k}.onnx")
    (src / "broken.onnx").write_bytes(b"\x08\x07garbage")
    code, _, err = run_cli("prune", str(src), "-o", str(tmp_path / "par"), "--ratio", "0.5", "--jobs", "2",
                           "--report", str(tmp_path / "par.json"), "-q")  # fmt: skip
    assert code == 1 and "broken.onnx" in err
    code2, _, _ = run_cli("prune", str(src), "-o", str(tmp_path / "ser"), "--ratio", "0.5",
                          "--report", str(tmp_path / "ser.json"), "-q")  # fmt: skip
    assert code2 == 1
    par = json.loads((tmp_path / "par.json").read_text())["models"]
    ser = json.loads((tmp_path / "ser.json").read_text())["models"]
    key = lambda e: (Path(e["input"]).name, e["status"], e.get("params_after"))  # noqa: E731
    assert sorted(map(key, par)) == sorted(map(key, ser))
    for k in range(3):
        assert (tmp_path / "par" / f"m{k}.onnx").read_bytes() == (tmp_path / "ser" / f"m{k}.onnx").read_bytes()


def test_jobs_survive_a_crashing_worker(cnn_path, tmp_path, monkeypatch):
    """A worker killed by a signal (as by the OOM killer) is one failed entry, not a dead batch."""
    src = tmp_path / "in"
    src.mkdir()
    shutil.copy(cnn_path, src / "a.onnx")
    shutil.copy(cnn_path, src / "b.onnx")
    hook = tmp_path / "sitecustomize.py"
    hook.write_text(
        "import os, sys\n"
        "if sys.argv[-1:] == ['-m'] or 'spa_nm._worker' in ' '.join(sys.argv):\n"
        "    data = sys.stdin.read()\n"
        "    if 'b.onnx' in data.split('\"src\"')[1][:400]:\n"
        "        os.kill(os.getpid(), 9)\n"
        "    import io; sys.stdin = io.StringIO(data)\n"
    )
    env = dict(os.environ, PYTHONPATH=f"{tmp_path}{os.pathsep}{ROOT}")
    p = subprocess.run([sys.executable, str(ROOT / "cli.py"), "prune", str(src), "-o", str(tmp_path / "out"),
                        "--ratio", "0.5", "--jobs", "2", "--report", str(tmp_path / "r.json"), "-q"],
                       capture_output=True, text=True, env=env, timeout=120)  # fmt: skip
    assert p.returncode == 1
    status = {Path(e["input"]).name: (e["status"], e["error"]) for e in json.loads((tmp_path / "r.json").read_text())["models"]}
    assert status["a.onnx"][0] == "ok"
    assert status["b.onnx"][0] == "error" and "signal 9" in status["b.onnx"][1]
    assert (tmp_path / "out" / "a.onnx").exists() and not (tmp_path / "out" / "b.onnx").exists()


def test_dry_run_writes_nothing(cnn_path, tmp_path):
    out = tmp_path / "out"
    code, stdout, _ = run_cli("prune", str(cnn_path), "-o", str(out / "o.onnx"), "--ratio", "0.5", "--dry-run",
                              "--report", str(tmp_path / "r.json"))  # fmt: skip
    assert code == 0 and "dry run" in stdout
    assert not out.exists()
    (entry,) = json.loads((tmp_path / "r.json").read_text())["models"]
    assert entry["output"] is None and entry["params_after"] < entry["params_before"]


def test_sigterm_mid_batch_leaves_no_partial_files(tmp_path):
    """SIGTERM during a batch: finished outputs are complete models, nothing partial remains."""
    import signal
    import time as _time

    from tests.helpers import model_from_text

    big = """
<ir_version: 8, opset_import: ["" : 13]>
big (float[1, 64, 32, 32] input) => (float[1, 10] output)
<float[512, 64, 3, 3] w1, float[512, 512, 3, 3] w2, float[512, 512, 3, 3] w3, float[10, 512] wf>
{
  a = Conv <pads = [1, 1, 1, 1]> (input, w1)
  b = Conv <pads = [1, 1, 1, 1]> (a, w2)
  c = Conv <pads = [1, 1, 1, 1]> (b, w3)
  g = GlobalAveragePool (c)
  f = Flatten (g)
  output = Gemm <transB = 1> (f, wf)
}
"""
    src = tmp_path / "in"
    src.mkdir()
    proto = model_from_text(big)
    for k in range(12):
        onnx.save(proto, src / f"m{k:02d}.onnx")
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, str(ROOT / "cli.py"), "prune", str(src), "-o", str(out), "--ratio", "0.5", "-q"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    deadline = _time.time() + 60
    while _time.time() < deadline and not (out.exists() and any(out.glob("*.onnx"))):
        _time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode != 0
    assert "Traceback" not in err
    leftovers = [p.name for p in out.iterdir() if not p.name.endswith(".onnx")]
    assert not leftovers, leftovers
    written = sorted(out.glob("*.onnx"))
    assert 0 < len(written) < 12
    for p in written:
        onnx.checker.check_model(onnx.load(p), full_check=True)


def test_verify_and_bench(cnn_path, tmp_path):
    small = tmp_path / "small.onnx"
    assert main(["prune", str(cnn_path), "-o", str(small), "--ratio", "0.0", "-q"]) == 0
    code, out, _ = run_cli("verify", str(cnn_path), str(small), "--json")
    rep = json.loads(out)
    assert code == 0 and rep["ok"] and rep["max_abs_diff"] == 0.0
    assert rep["outputs"][0]["top1_agreement"] == 1.0 and rep["provider"] == "cpu"
    pruned = tmp_path / "p.onnx"
    assert main(["prune", str(cnn_path), "-o", str(pruned), "--ratio", "0.5", "-q"]) == 0
    code, out, _ = run_cli("verify", str(cnn_path), str(pruned))
    assert code == 1 and "FAIL" in out  # pruning without fine-tuning changes the outputs
    code, out, _ = run_cli("bench", str(cnn_path), str(pruned), "--iters", "5", "--warmup", "1", "--json")
    res = json.loads(out)
    assert code == 0 and [Path(r["path"]).name for r in res] == ["cnn.onnx", "p.onnx"]
    assert all(r["median_ms"] > 0 and r["provider"] == "cpu" for r in res)


def test_verify_rejects_different_signatures(cnn_path, tmp_path):
    from tests.helpers import model_from_text

    other = tmp_path / "other.onnx"
    onnx.save(model_from_text(CNN_OTHER), other)
    code, _, err = run_cli("verify", str(cnn_path), str(other))
    assert code == 1
    assert_one_line_error(err, "differ")


def test_gpu_provider_where_none_runs(cnn_path):
    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this onnxruntime has CUDA")
    code, _, err = run_cli("bench", str(cnn_path), "--provider", "cuda", "--iters", "2")
    assert code == 2
    assert_one_line_error(err, "cuda", "not available")


CNN_OTHER = """
<ir_version: 8, opset_import: ["" : 13]>
other (float[1, 3, 8, 8] x) => (float[1, 10] output)
<float[10, 192] w>
{
  f = Flatten (x)
  output = Gemm <transB = 1> (f, w)
}
"""


def test_truncated_external_data(tmp_path):
    p = _external_model(tmp_path, "m.data")
    data = p.parent / "m.data"
    data.write_bytes(data.read_bytes()[: data.stat().st_size // 2])
    code, _, err = run_cli("prune", str(p), "-o", str(tmp_path / "o.onnx"), "--ratio", "0.5")
    assert code == 2
    assert_one_line_error(err, "m.onnx", "truncated")
    assert not (tmp_path / "o.onnx").exists()


# -- nothing to prune is a decline; --force -------------------------------------------------

BLOCKED = """
<ir_version: 8, opset_import: ["" : 13, "custom.ops" : 1]>
blocked (float[1, 3, 8, 8] input) => (float[1, 4, 8, 8] output)
<float[8, 3, 3, 3] w1, float[8, 8, 3, 3] w2, float[4, 8, 3, 3] w3, float[1, 8, 8, 8] b1, float[1, 8, 8, 8] b2>
{
  c1 = Conv <pads = [1, 1, 1, 1]> (input, w1)
  b1 = custom.ops.Blob (c1)
  c2 = Conv <pads = [1, 1, 1, 1]> (b1, w2)
  b2 = custom.ops.Blob (c2)
  output = Conv <pads = [1, 1, 1, 1]> (b2, w3)
}
"""


@pytest.fixture
def blocked_path(tmp_path: Path) -> Path:
    from tests.helpers import model_from_text

    p = tmp_path / "blocked.onnx"
    onnx.save(model_from_text(BLOCKED), p)
    return p


def test_nothing_to_prune_is_declined(blocked_path, tmp_path, capsys):
    out, rep = tmp_path / "out" / "o.onnx", tmp_path / "r.json"
    before = digest(blocked_path)
    assert main(["prune", str(blocked_path), "-o", str(out), "--ratio", "0.5", "--report", str(rep)]) == 1
    assert not out.exists() and digest(blocked_path) == before
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    # each Blob keeps the channels on both its sides (two groups), the graph input and output
    # one each; most common first
    assert lines == [f"spa-nm: {blocked_path}: nothing to prune: 6 groups blocked: "
                     "no rule for custom.ops::Blob (4), graph input (1), graph output (1)"]  # fmt: skip
    (entry,) = json.loads(rep.read_text())["models"]
    assert entry["status"] == "declined" and entry["output"] is None
    assert entry["error"] == lines[0].removeprefix("spa-nm: ")
    assert entry["groups_pruned"] == 0 and entry["params_after"] == entry["params_before"]
    assert "declined" in captured.out and "nothing to prune" in captured.out


def test_ratio_zero_and_dry_run_on_a_model_with_nothing_to_prune(blocked_path, tmp_path, capsys):
    """Ratio 0 asks for the model unchanged: ok and written. A dry run declines too."""
    same = tmp_path / "same.onnx"
    assert main(["prune", str(blocked_path), "-o", str(same), "--ratio", "0", "-q"]) == 0
    assert same.exists() and not capsys.readouterr().err
    rep = tmp_path / "r.json"
    assert main(["prune", str(blocked_path), "-o", str(tmp_path / "d" / "o.onnx"), "--ratio", "0.5", "--dry-run",
                 "--report", str(rep), "-q"]) == 1  # fmt: skip
    assert not (tmp_path / "d").exists()
    assert "nothing to prune" in capsys.readouterr().err
    (entry,) = json.loads(rep.read_text())["models"]
    assert entry["status"] == "declined" and entry["output"] is None


def test_a_decline_in_a_batch(blocked_path, cnn_path, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["prune", str(blocked_path), str(cnn_path), "-o", str(out), "--ratio", "0.5", "-q"]) == 1
    assert sorted(p.name for p in out.iterdir()) == ["cnn.onnx"]
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith(f"spa-nm: {blocked_path}: nothing to prune: ")


def test_a_ratio_that_removes_no_channel_is_declined(cnn_path, tmp_path, capsys):
    code = main(["prune", str(cnn_path), "-o", str(tmp_path / "o.onnx"), "--ratio", "0.05", "-q"])
    assert code == 1 and not (tmp_path / "o.onnx").exists()
    err = capsys.readouterr().err
    assert "nothing to prune: no channel of the 2 prunable groups is removed at --ratio 0.05 with --round-to 8" in err


def test_forced_output_may_keep_the_inputs_checker_error_only(cnn_path, tmp_path):
    """_save of a forced input: the same checker error (or none) is written, a new one is not."""
    import onnx_ir as ir

    import spa_nm
    from spa_nm.cli._input import model_checker_error
    from spa_nm.cli._prune import _save
    from spa_nm.errors import SurgeryError

    model = spa_nm.load(cnn_path)
    model.graph.outputs[0].shape = ir.Shape([1, 11])  # a lying output shape onnxruntime tolerates
    error = model_checker_error(model)
    assert error and "(10) vs (11)" in error
    with pytest.raises(SurgeryError, match="new error"):
        _save(model, str(tmp_path / "a.onnx"), [str(cnn_path)], forced="some other checker error")
    assert not (tmp_path / "a.onnx").exists()
    _save(model, str(tmp_path / "b.onnx"), [str(cnn_path)], forced=error)
    assert (tmp_path / "b.onnx").exists()
    _save(spa_nm.load(cnn_path), str(tmp_path / "c.onnx"), [str(cnn_path)], forced=error)  # no error: fine
    assert (tmp_path / "c.onnx").exists()
