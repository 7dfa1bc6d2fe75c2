"""`spa_nm.train.finetune` and ``spa-nm finetune`` (METHODS.md §2.2–§2.6): training through the
ONNX interpreter on a tiny separable data set, written-back models checked by the ONNX checker,
`check_nm` and onnxruntime, and one-line errors."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest

import spa_nm
from spa_nm.cli import main
from spa_nm.errors import ConfigError, InputError
from spa_nm.nm import NMSpec, check_nm, nm_mask
from spa_nm.testing import run
from spa_nm.train.sparse import METHODS
from tests.helpers import model_from_text

torch = pytest.importorskip("torch")
from spa_nm.train.finetune import finetune  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models train several times faster on one thread on a shared machine."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


MLP = """
<ir_version: 8, opset_import: ["" : 13]>
mlp (float[N, 16] x) => (float[N, 4] logits)
<float[32, 16] w1, float[32] b1, float[32, 4] w2, float[4] b2>
{
  h = Gemm <transB = 1> (x, w1, b1)
  r = Relu (h)
  logits = Gemm (r, w2, b2)
}
"""
# axis of each weight's reduction (Gemm transB = 1: axis 1; transB = 0: axis 0), METHODS.md §2.1
AXES = {"w1": 1, "w2": 0}


def blobs(n: int = 400, seed: int = 0) -> dict[str, np.ndarray]:
    """Four well-separated Gaussian classes in 16-D: linearly separable, chance is 25 %."""
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((4, 16)) * 3
    labels = rng.integers(0, 4, n)
    x = centers[labels] + rng.standard_normal((n, 16))
    return {"x": x.astype(np.float32), "labels": labels.astype(np.int64)}


@pytest.fixture
def mlp_path(tmp_path: Path) -> Path:
    p = tmp_path / "mlp.onnx"
    w = {"w1": np.random.default_rng(1).standard_normal((32, 16)).astype(np.float32) * 0.3,
         "w2": np.random.default_rng(2).standard_normal((32, 4)).astype(np.float32) * 0.3}  # fmt: skip
    onnx.save(model_from_text(MLP, **w), p)
    return p


@pytest.fixture
def data_path(tmp_path: Path) -> Path:
    p = tmp_path / "train.npz"
    np.savez(p, **blobs())
    return p


def sha(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


def test_cli_end_to_end_accuracy_rises(tmp_path, mlp_path, data_path):
    out, rep_path = tmp_path / "out" / "sparse.onnx", tmp_path / "rep.json"
    before = sha(mlp_path), sha(data_path)
    code = main(["finetune", str(mlp_path), "--data", str(data_path), "-o", str(out), "--method", "sr-ste",
                 "--pattern", "2:4", "--epochs", "15", "--lr", "0.01", "--batch-size", "32", "--report", str(rep_path), "-q"])  # fmt: skip
    assert code == 0
    assert (sha(mlp_path), sha(data_path)) == before  # inputs untouched
    onnx.checker.check_model(onnx.load(out), full_check=True)
    rep = json.loads(rep_path.read_text())
    assert (
        rep["loss"].startswith("cross-entropy") and rep["steps"] == 15 * 10
    )  # 320 training samples / 32
    assert rep["val_samples"] == 80 and rep["train_samples"] == 320
    assert rep["val"]["before"]["accuracy"] < 0.6  # the random init is near chance (25 %)
    assert rep["val"]["after"]["accuracy"] >= 0.9
    assert {e["weight"] for e in rep["layers_sparsified"]} == set(AXES)
    assert len(rep["sad"]) == rep["steps"] and rep["sad_total"] == sum(rep["sad"])
    model = spa_nm.load(out)
    for name, axis in AXES.items():
        w = model.graph.initializers[name].const_value.numpy()
        assert check_nm(w, axis, NMSpec(2, 4))
        np.testing.assert_array_equal(
            w != 0, nm_mask(w, axis, NMSpec(2, 4))
        )  # exactly 2 of 4 survive
    # the reported accuracy is onnxruntime's on the written file: recompute it on the split
    z = blobs()
    preds = run(model, {"x": z["x"]})[0].argmax(1)
    acc_all = float(np.mean(preds == z["labels"]))
    assert acc_all >= 0.9


@pytest.mark.parametrize("method", [m for m in METHODS if m != "oneshot"])
def test_every_method_exports_valid_nm(tmp_path, mlp_path, data_path, method):
    model = spa_nm.load(mlp_path)
    new, rep = finetune(
        model, data_path, method=method, pattern="1:8", steps=12, lr=0.01, batch_size=32
    )
    onnx.checker.check_model(onnx.load(_save(new, tmp_path / "o.onnx")), full_check=True)
    assert rep["steps"] == 12 and len(rep["sad"]) == 12
    for name, axis in AXES.items():
        w = new.graph.initializers[name].const_value.numpy()
        w0 = model.graph.initializers[name].const_value.numpy()
        assert not np.array_equal(w, w0)  # trained
        if method == "dense":
            assert np.count_nonzero(w) == w.size
        else:
            assert check_nm(w, axis, NMSpec(1, 8))
    assert rep["val"]["after"]["accuracy"] == pytest.approx(_accuracy(new, rep))
    if method.startswith("mdgf"):
        assert rep["schedule"]["beta"] > 0 and rep["schedule"]["phases"]["dense"] >= 1


def _save(model, path):
    spa_nm.save(model, path)
    return path


def _accuracy(model, rep):
    """Accuracy on the validation split, recomputed: the split is seeded (seed 0, 20 %, stratified)."""
    from spa_nm.train.data import make_dataset, split

    ds = make_dataset(model, blobs(), "x")
    _, val = split(ds, 0.2, rep["seed"])
    return float(np.mean(run(model, val.inputs)[0].argmax(1) == val.labels))


def test_oneshot_is_sparsify(mlp_path, data_path):
    model = spa_nm.load(mlp_path)
    new, rep = finetune(model, data_path, method="oneshot", pattern="2:4")
    ref, _ = spa_nm.sparsify(model, "2:4")
    for name in AXES:
        np.testing.assert_array_equal(new.graph.initializers[name].const_value.numpy(),
                                      ref.graph.initializers[name].const_value.numpy())  # fmt: skip
    assert rep["steps"] == 0 and rep["sparsity"] == 0.5


def test_fixed_keeps_the_initial_mask(mlp_path, data_path):
    model = spa_nm.load(mlp_path)
    new, _ = finetune(
        model,
        data_path,
        method="fixed",
        pattern="2:4",
        steps=20,
        lr=0.05,
        optimizer="sgd",
        weight_decay=1e-3,
    )
    for name, axis in AXES.items():
        w0 = model.graph.initializers[name].const_value.numpy()
        w = new.graph.initializers[name].const_value.numpy()
        np.testing.assert_array_equal(w != 0, nm_mask(w0, axis, NMSpec(2, 4)))


def test_distillation_without_labels(tmp_path, mlp_path):
    z = blobs()
    np.savez(tmp_path / "nolabels.npz", x=z["x"])
    model = spa_nm.load(mlp_path)
    _, rep = finetune(
        model,
        tmp_path / "nolabels.npz",
        method="sr-ste",
        pattern="2:4",
        epochs=10,
        lr=0.01,
        batch_size=32,
    )
    assert rep["loss"].startswith("distillation")
    assert rep["val"]["before"]["mse_to_input_model"] == 0.0
    _, rep1 = finetune(model, tmp_path / "nolabels.npz", method="oneshot", pattern="2:4")
    # training towards the dense outputs beats the untrained magnitude mask
    assert rep["val"]["after"]["mse_to_input_model"] < rep1["val"]["after"]["mse_to_input_model"]
    assert rep["val"]["after"]["top1_agreement"] >= rep1["val"]["after"]["top1_agreement"]


def test_separate_validation_set_and_methods_layout(tmp_path, mlp_path):
    tr, va = blobs(300, seed=0), blobs(100, seed=0)
    np.savez(
        tmp_path / "d.npz", x_train=tr["x"], y_train=tr["labels"], x_val=va["x"], y_val=va["labels"]
    )
    model = spa_nm.load(mlp_path)
    _, rep = finetune(model, tmp_path / "d.npz", val=tmp_path / "d.npz", method="dense", epochs=2)
    assert rep["train_samples"] == 300 and rep["val_samples"] == 100


def run_cli(*args):
    proc = subprocess.run(
        [sys.executable, str(ROOT / "cli.py"), *map(str, args)],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    return proc.returncode, proc.stdout, proc.stderr


@pytest.mark.parametrize(
    ("arrays", "extra", "needle"),
    [
        ({"y": np.zeros((4, 16), np.float32)}, [], "no array for model input(s) 'x'"),
        ({"x": np.zeros((4, 15), np.float32)}, [], "model input is [?, 16]"),
        (
            {"x": np.zeros((4, 16), np.float32), "labels": np.array([0, 1, 2, 9])},
            [],
            "label 9 is out of range for 4 classes",
        ),
        (
            {"x": np.zeros((4, 16), np.float32), "labels": np.array([0, 1, 2])},
            [],
            "has 3 entries for 4 samples",
        ),
        ({"x": np.zeros((8, 16), np.float32)}, ["--pattern", "2:x"], "bad N:M pattern"),
        (
            {"x": np.zeros((8, 16), np.float32)},
            ["--method", "sdgf-geometric", "--geometric-k", "3"],
            "power of two",
        ),
    ],
)
def test_bad_inputs_are_one_line_errors(tmp_path, mlp_path, arrays, extra, needle):
    np.savez(tmp_path / "bad.npz", **arrays)
    out = tmp_path / "o.onnx"
    code = main(
        [
            "finetune",
            str(mlp_path),
            "--data",
            str(tmp_path / "bad.npz"),
            "-o",
            str(out),
            "--steps",
            "1",
            *extra,
        ]
    )
    assert code == 2
    assert not out.exists()


def test_error_messages_and_exit_codes(tmp_path, mlp_path, data_path, capsys):
    out = tmp_path / "o.onnx"
    assert (
        main(["finetune", str(mlp_path), "--data", str(tmp_path / "none.npz"), "-o", str(out)]) == 2
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"spa-nm: error: {tmp_path / 'none.npz'}: no such file"]
    (tmp_path / "junk.npz").write_text("not a zip")
    assert (
        main(["finetune", str(mlp_path), "--data", str(tmp_path / "junk.npz"), "-o", str(out)]) == 2
    )
    assert "not a readable .npz file" in capsys.readouterr().err
    assert main(["finetune", str(mlp_path), "--data", str(data_path), "-o", str(mlp_path)]) == 2
    assert "output path is the input file" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:  # argparse: --epochs and --steps exclude each other
        main(
            [
                "finetune",
                str(mlp_path),
                "--data",
                str(data_path),
                "-o",
                str(out),
                "--epochs",
                "1",
                "--steps",
                "2",
            ]
        )
    assert e.value.code == 2
    assert not out.exists()
    with pytest.raises(ConfigError):
        finetune(spa_nm.load(mlp_path), data_path, method="sr-ste", lr=-1.0)
    with pytest.raises(InputError, match="no samples"):
        finetune(spa_nm.load(mlp_path), {"x": np.zeros((0, 16), np.float32)}, method="dense")


def test_torch_missing_is_a_config_error(tmp_path, mlp_path, data_path):
    code = (
        "import sys; sys.modules['torch'] = None\n"
        "from spa_nm.cli import main\n"
        f"raise SystemExit(main(['finetune', {str(mlp_path)!r}, '--data', {str(data_path)!r}, '-o', {str(tmp_path / 'o.onnx')!r}]))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 2
    assert (
        proc.stderr.strip()
        == "spa-nm: error: torch is not installed: finetune needs it (pip install 'spa_nm[train]')"
    )
    assert not (tmp_path / "o.onnx").exists()


def test_help_has_an_example():
    code, out, _ = run_cli("finetune", "--help")
    assert code == 0
    assert "spa-nm finetune model.onnx --data train.npz -o sparse.onnx --method sr-ste" in out
    for m in METHODS:
        assert m in out


def test_static_batch_model_conv_layout(tmp_path, capsys):
    """tests.helpers.CNN has a fixed batch of 1 (Reshape to [1, 48]): batch size 1 trains, any
    other is a one-line error; the Conv weight is N:M along C_in at each (o, kh, kw)."""
    from tests.helpers import CNN

    p = tmp_path / "cnn.onnx"
    onnx.save(model_from_text(CNN), p)
    rng = np.random.default_rng(0)
    np.savez(
        tmp_path / "d.npz",
        input=rng.standard_normal((30, 3, 8, 8)).astype(np.float32),
        labels=rng.integers(0, 10, 30),
    )
    out = tmp_path / "o.onnx"
    assert (
        main(
            [
                "finetune",
                str(p),
                "--data",
                str(tmp_path / "d.npz"),
                "-o",
                str(out),
                "--batch-size",
                "8",
            ]
        )
        == 2
    )
    assert capsys.readouterr().err.strip() == (f"spa-nm: error: {p}: the model's batch dimension is fixed at 1: "
                                               "use batch size 1, or export the model with a dynamic batch")  # fmt: skip
    assert not out.exists()
    assert main(["finetune", str(p), "--data", str(tmp_path / "d.npz"), "-o", str(out), "--batch-size", "1",
                 "--method", "mdgf-exp", "--pattern", "2:4", "--steps", "10", "-q"]) == 0  # fmt: skip
    model = spa_nm.load(out)
    w2 = model.graph.initializers["w2"].const_value.numpy()  # [12, 8, 3, 3]: blocks along C_in = 8
    assert check_nm(w2, 1, NMSpec(2, 4))
    np.testing.assert_array_equal(w2 != 0, nm_mask(w2, 1, NMSpec(2, 4)))
    assert check_nm(
        model.graph.initializers["wf"].const_value.numpy(), 1, NMSpec(2, 4)
    )  # Gemm transB = 1
    w1 = model.graph.initializers["w1"].const_value.numpy()  # C_in = 3: skipped, stays dense
    assert np.count_nonzero(w1) == w1.size


def test_geometric_fallback_is_reported(tmp_path, mlp_path, data_path, capsys):
    """w1 has K = 16 and w2 K = 32: at 1:8 with k = 16 (block 128), k' = 2 and 4 (METHODS.md §2.5)."""
    out, rep_path = tmp_path / "o.onnx", tmp_path / "r.json"
    assert main(["finetune", str(mlp_path), "--data", str(data_path), "-o", str(out), "--method", "sdgf-geometric",
                 "--pattern", "1:8", "--steps", "10", "--report", str(rep_path)]) == 0  # fmt: skip
    assert "geometric k fell back for 2 weight(s): w1 k'=2, w2 k'=4" in capsys.readouterr().out
    sched = json.loads(rep_path.read_text())["schedule"]
    assert sched["geometric_k"] == {"w1": 2, "w2": 4}
    assert sched["frames"] == {"w1": ["2:16", "1:8"], "w2": ["4:32", "2:16", "1:8"]}


@pytest.mark.parametrize("method", ["sr-ste", "mdgf-exp", "dense"])
def test_on_epoch_reports_validation_accuracy_as_exported(mlp_path, data_path, method):
    """Each epoch reports loss and validation accuracy with the hard target masks; the last one
    equals onnxruntime's accuracy on the written-back model."""
    seen = []
    model, rep = finetune(spa_nm.load(mlp_path), data_path, method=method, pattern="1:4", epochs=3,
                          batch_size=32, seed=0, on_epoch=seen.append)  # fmt: skip
    assert [e["epoch"] for e in seen] == [1, 2, 3]
    assert all(e["epochs"] == 3 and np.isfinite(e["loss"]) for e in seen)
    assert seen[-1]["val_accuracy"] == pytest.approx(rep["val"]["after"]["accuracy"], abs=1e-9)
    assert [e["val_accuracy"] for e in rep["history"]] == [e["val_accuracy"] for e in seen]


def test_cli_progress_bar_shows_loss_and_val_accuracy(tmp_path, mlp_path, data_path, monkeypatch):
    """On a terminal, one bar over epochs carries the loss and the validation accuracy."""
    import io as _io

    class Tty(_io.StringIO):
        def isatty(self):
            return True

    err = Tty()
    monkeypatch.setattr(sys, "stderr", err)
    rc = main(["finetune", str(mlp_path), "--data", str(data_path), "-o", str(tmp_path / "o.onnx"),
               "--schedule", "sr-ste", "--pattern", "2:4", "--epochs", "2", "--batch", "32"])  # fmt: skip
    assert rc == 0
    text = err.getvalue()
    assert "2/2" in text and "loss=" in text and "val_acc=" in text, text
