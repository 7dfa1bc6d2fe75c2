"""spa-nm sensitivity: one group at a time, per ratio, against the original on onnxruntime."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest

import spa_nm
from spa_nm.cli import main
from spa_nm.errors import ConfigError, InputError
from spa_nm.sensitivity import format_table, sensitivity, write_outputs
from tests.helpers import model_from_text

pytest.importorskip("onnxruntime")

ZOO = Path(__file__).resolve().parents[1] / "models" / "onnx"

# group c1 reaches out_a; group c2 is all zeros (rows and bias): removing any of it is exact
TWO_HEADS = """
<ir_version: 8, opset_import: ["" : 13]>
m (float[2, 3, 6, 6] input) => (float[2, 4, 6, 6] out_a, float[2, 4, 6, 6] out_b)
<float[8, 3, 3, 3] w1, float[8] b1, float[6, 8, 1, 1] w2, float[6] b2,
 float[4, 8, 1, 1] wa, float[4, 6, 1, 1] wb>
{
  c1 = Conv <pads = [1, 1, 1, 1]> (input, w1, b1)
  r1 = Relu (c1)
  c2 = Conv (r1, w2, b2)
  r2 = Relu (c2)
  out_a = Conv (r1, wa)
  out_b = Conv (r2, wb)
}
"""


def two_heads(tmp_path) -> Path:
    p = tmp_path / "two.onnx"
    z = np.zeros
    onnx.save(model_from_text(TWO_HEADS, w2=z((6, 8, 1, 1), np.float32), b2=z(6, np.float32)), p)
    return p


def test_zero_group_has_zero_error(tmp_path):
    res = sensitivity(spa_nm.load(two_heads(tmp_path)), [0.3, 0.5, 0.8])
    by_layer = {e["layers"][0]: e for e in res["entries"]}
    assert set(by_layer) == {"Conv_0", "Conv_2"}
    zero, live = by_layer["Conv_2"], by_layer["Conv_0"]  # c2's producer; c1's producer
    assert [r["channels_removed"] for r in zero["results"]] == [1, 3, 4]
    for r in zero["results"]:
        assert r["max_abs_error"] == 0.0 and r["mean_abs_error"] == 0.0
    assert all(r["max_abs_error"] > 1e-3 for r in live["results"])


def test_errors_grow_with_ratio_on_a_zoo_model():
    res = sensitivity(spa_nm.load(ZOO / "vgg_bn.onnx"), [0.1, 0.3, 0.5, 0.7], samples=8)
    assert len(res["entries"]) == 5
    mean = np.zeros(4)
    for e in res["entries"]:
        removed = [r["channels_removed"] for r in e["results"]]
        assert removed == sorted(removed) and removed[0] >= 1 and removed[-1] > removed[0]
        errs = [r["mean_abs_error"] for r in e["results"]]
        assert errs[-1] > errs[0] > 0, e
        assert [r["macs_after"] for r in e["results"]] == sorted(
            (r["macs_after"] for r in e["results"]), reverse=True
        )
        mean += np.array(errs) / np.mean(errs)
    assert np.all(np.diff(mean) > 0), mean  # on average over groups, strictly growing
    assert all(0 <= r["top1_agreement"] <= 1 for e in res["entries"] for r in e["results"])


def test_json_schema_table_and_plot(tmp_path, capsys):
    out = tmp_path / "sens"
    rc = main(
        [
            "sensitivity",
            str(ZOO / "mlp.onnx"),
            "-o",
            str(out),
            "--ratios",
            "0.25,0.5",
            "--samples",
            "4",
        ]
    )
    assert rc == 0
    data = json.loads((out / "sensitivity.json").read_text())
    assert {
        "model",
        "criterion",
        "ratios",
        "per",
        "round_to",
        "inputs",
        "samples",
        "entries",
    } <= set(data)
    assert data["ratios"] == [0.25, 0.5] and data["inputs"] == "random" and data["samples"] == 4
    for e in data["entries"]:
        assert {"group", "size", "layers", "results"} <= set(e)
        for r in e["results"]:
            assert {"ratio", "channels_removed", "params_after", "macs_after", "max_abs_error",
                    "mean_abs_error", "top1_agreement"} <= set(r)  # fmt: skip
    text = capsys.readouterr().out
    assert "R=0.25" in text and "R=0.5" in text and "sensitivity.json" in text
    if "matplotlib" in sys.modules or _has_matplotlib():
        png = (out / "sensitivity.png").read_bytes()
        assert png[:8] == b"\x89PNG\r\n\x1a\n"


def _has_matplotlib() -> bool:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def test_without_matplotlib_writes_json_only(tmp_path, monkeypatch, caplog):
    res = sensitivity(spa_nm.load(ZOO / "mlp.onnx"), [0.5], samples=2)
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    written = write_outputs(res, tmp_path / "o")
    assert [p.name for p in written] == ["sensitivity.json"]
    assert not (tmp_path / "o" / "sensitivity.png").exists()
    assert "matplotlib is not installed" in caplog.text


def test_per_layer_and_labelled_data(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((12, 64)).astype(np.float32)
    m = spa_nm.load(ZOO / "mlp.onnx")
    from spa_nm.testing import run

    logits = np.concatenate([run(m, {"input": x[i : i + 1]})[0] for i in range(12)])
    y = logits.argmax(1)
    y[:3] = (y[:3] + 1) % 10  # 9 of 12 right
    npz = tmp_path / "val.npz"
    np.savez(npz, x_val=x, y_val=y)
    res = sensitivity(m, [0.5], per="layer", data=npz, samples=100)
    assert res["inputs"] == "data" and res["samples"] == 12
    assert res["accuracy"] == pytest.approx(0.75)
    for e in res["entries"]:
        assert "layer" in e and "shared_with" in e
        r = e["results"][0]
        assert r["accuracy_drop"] == pytest.approx(0.75 - r["accuracy"])
    assert "accuracy drop" in format_table(res)


def test_bad_inputs(tmp_path, capsys):
    model = str(ZOO / "mlp.onnx")
    out = str(tmp_path / "o")
    assert main(["sensitivity", str(tmp_path / "nope.onnx"), "-o", out]) == 2
    assert "nope.onnx" in capsys.readouterr().err
    for bad in ("0.1,abc", "1.5", "0", ""):
        with pytest.raises(SystemExit) as e:
            main(["sensitivity", model, "-o", out, "--ratios", bad])
        assert e.value.code == 2
    assert main(["sensitivity", model, "-o", out, "--data", str(tmp_path / "none.npz")]) == 2
    npz = tmp_path / "wrong.npz"
    np.savez(npz, a=np.zeros((3, 2)), b=np.zeros(3))
    assert main(["sensitivity", model, "-o", out, "--data", str(npz)]) == 2
    assert "wrong.npz" in capsys.readouterr().err
    afile = tmp_path / "file.txt"
    afile.write_text("x")
    assert main(["sensitivity", model, "-o", str(afile)]) == 2
    assert not Path(out).exists()  # no partial output on any error
    with pytest.raises(ConfigError):
        sensitivity(spa_nm.load(model), [0.0])
    with pytest.raises(ConfigError):
        sensitivity(spa_nm.load(model), [0.5], per="node")
    with pytest.raises(InputError):
        sensitivity(spa_nm.load(model), [0.5], data=npz)
