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
