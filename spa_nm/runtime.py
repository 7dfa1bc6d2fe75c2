"""onnxruntime sessions, numeric verification and latency benchmarks.

The execution provider that *actually* runs is read back from the session after creation:
onnxruntime-gpu lists CUDA even on a machine without a GPU and then falls back to the CPU
silently. ``provider="auto"`` takes the best available and says (INFO) when that is the CPU;
asking for ``cuda`` or ``tensorrt`` where it cannot run is an error.
"""

from __future__ import annotations

import logging
import os
import statistics
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from spa_nm.errors import ConfigError, InputError, SpaNmError, VerificationError

__all__ = [
    "PROVIDERS",
    "BenchResult",
    "Session",
    "as_array",
    "bench",
    "make_feeds",
    "open_session",
    "verify",
]

log = logging.getLogger(__name__)

PROVIDERS = ("auto", "cpu", "cuda", "tensorrt")
_EP = {
    "cpu": "CPUExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "tensorrt": "TensorrtExecutionProvider",
}
_OPT = {"disable": "ORT_DISABLE_ALL", "basic": "ORT_ENABLE_BASIC", "extended": "ORT_ENABLE_EXTENDED", "all": "ORT_ENABLE_ALL"}


def _ort():
    try:
        import onnxruntime as ort
    except ImportError as e:
        raise ConfigError(
            "onnxruntime is not installed: pip install 'spa_nm[cpu]' (or 'spa_nm[gpu]' for CUDA)"
        ) from e
    return ort


@dataclass
class Session:
    """An ORT session and the provider that really runs it."""

    sess: Any
    path: str
    provider: str  # "cpu", "cuda" or "tensorrt": from the session, not from what is installed

    def run(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        return self.sess.run(None, feeds)


def open_session(
    path: str | os.PathLike,
    provider: str = "auto",
    threads: int | None = None,
    optimization: str = "all",
    provider_options: dict[str, Any] | None = None,
) -> Session:
    """Open ``path`` on ``provider``; raises ConfigError if a GPU provider was asked for and
    does not run."""
    ort = _ort()
    if provider not in PROVIDERS:
        raise ConfigError(f"unknown provider {provider!r}; choose from {', '.join(PROVIDERS)}")
    available = ort.get_available_providers()
    if provider == "auto":
        wanted = [p for p in ("tensorrt", "cuda") if _EP[p] in available] + ["cpu"]
    else:
        if _EP[provider] not in available:
            raise ConfigError(
                f"provider {provider!r} is not available in this onnxruntime "
                f"(available: {', '.join(available)}); use --provider auto or install onnxruntime-gpu"
            )
        wanted = [provider] if provider == "cpu" else [provider, "cpu"]
    so = ort.SessionOptions()
    so.log_severity_level = 3
    if threads:
        so.intra_op_num_threads = int(threads)
        so.inter_op_num_threads = 1
    so.graph_optimization_level = getattr(ort.GraphOptimizationLevel, _OPT[optimization])
    providers = [(_EP[p], (provider_options or {}).get(p, {})) for p in wanted]
    try:
        sess = ort.InferenceSession(str(path), so, providers=providers)
    except Exception as e:
        raise SpaNmError(f"{path}: onnxruntime cannot load the model ({str(e).splitlines()[0][:300]})") from e
    actual = {v: k for k, v in _EP.items()}.get(sess.get_providers()[0], sess.get_providers()[0])
    if provider not in ("auto", "cpu") and actual != provider:
        raise ConfigError(f"{path}: asked for {provider}, but onnxruntime runs it on {actual}")
    if provider == "auto" and actual == "cpu":
        log.info("%s: no GPU execution provider runs here: using the CPU", path)
    return Session(sess, str(path), actual)


_NP = {
    "tensor(float)": np.float32,
    "tensor(double)": np.float64,
    "tensor(float16)": np.float16,
    "tensor(int64)": np.int64,
    "tensor(int32)": np.int32,
    "tensor(int8)": np.int8,
    "tensor(uint8)": np.uint8,
    "tensor(bool)": np.bool_,
}


def np_dtype(ort_type: str):
    """The numpy dtype of an onnxruntime input type string (float32 when unknown)."""
    return _NP.get(ort_type, np.float32)


def random_input(rng: np.random.Generator, info, batch: int, other: int, high: int = 8) -> np.ndarray:
    """A random array for onnxruntime input ``info`` (a NodeArg): symbolic dims resolved, the
    first to ``batch`` and the others to ``other``; floats normal, bools fair, integers in
    [0, high) (token ids stay inside any vocabulary of at least ``high``)."""
    shape = [d if isinstance(d, int) and d > 0 else (batch if j == 0 else other) for j, d in enumerate(info.shape)]
    dt = np_dtype(info.type)
    if np.issubdtype(dt, np.floating):
        return rng.standard_normal(shape).astype(dt)
    if dt is np.bool_:
        return rng.random(shape) > 0.5
    return rng.integers(0, high, size=shape).astype(dt)


def make_feeds(session: Session, batch: int = 1, seed: int = 0, data: dict[str, np.ndarray] | None = None) -> dict[str, np.ndarray]:
    """Feeds for every input: from ``data`` when given (by name, or in order), else random with
    symbolic dims resolved (the first to ``batch``, others to 1)."""
    rng = np.random.default_rng(seed)
    feeds = {}
    inputs = session.sess.get_inputs()
    for k, i in enumerate(inputs):
        if data is not None:
            arr = data.get(i.name)
            if arr is None and len(data) >= len(inputs):
                arr = list(data.values())[k]
            if arr is None:
                raise InputError(f"data has no array for input {i.name!r}")
            feeds[i.name] = np.asarray(arr).astype(np_dtype(i.type), copy=False)
            continue
        feeds[i.name] = random_input(rng, i, batch, 1)
    return feeds


def as_array(out: Any) -> np.ndarray:
    """An onnxruntime output as an array: a sequence of maps (skl2onnx's ZipMap
    probabilities, one dict per row) becomes rows of its values in key order."""
    if isinstance(out, list) and out and isinstance(out[0], dict):
        return np.asarray([[row[k] for k in sorted(row)] for row in out])
    return np.asarray(out)


def verify(
    original: str | os.PathLike,
    candidate: str | os.PathLike,
    atol: float = 1e-4,
    data: str | os.PathLike | None = None,
    provider: str = "cpu",
    batch: int = 2,
) -> dict[str, Any]:
    """Compare two models on the same inputs; raises VerificationError past ``atol``."""
    a = open_session(original, provider, optimization="disable")
    b = open_session(candidate, provider, optimization="disable")
    sig = lambda s, kind: [(x.name, x.type, len(x.shape)) for x in getattr(s.sess, kind)()]  # noqa: E731
    for kind in ("get_inputs", "get_outputs"):
        if sig(a, kind) != sig(b, kind):
            what = kind.removeprefix("get_")
            raise VerificationError(f"{candidate}: {what} differ from {original}: {sig(b, kind)} vs {sig(a, kind)}")
    arrays = None
    if data is not None:
        arrays = _load_npz(data)
    feeds = make_feeds(a, batch=batch, data=arrays)
    ra, rb = [as_array(o) for o in a.run(feeds)], [as_array(o) for o in b.run(feeds)]
    outputs = []
    worst = 0.0
    for o, x, y in zip(a.sess.get_outputs(), ra, rb, strict=True):
        if x.shape != y.shape:
            raise VerificationError(f"{candidate}: output {o.name} has shape {y.shape}, expected {x.shape}")
        diff = np.abs(x.astype(np.float64) - y.astype(np.float64)) if x.size else np.zeros(1)
        entry = {"name": o.name, "max_abs_diff": float(diff.max()), "mean_abs_diff": float(diff.mean())}
        if x.ndim == 2 and x.shape[1] > 1 and np.issubdtype(x.dtype, np.floating):
            entry["top1_agreement"] = float(np.mean(x.argmax(1) == y.argmax(1)))
        worst = max(worst, entry["max_abs_diff"])
        outputs.append(entry)
    report = {"original": str(original), "candidate": str(candidate), "atol": atol, "outputs": outputs,
              "max_abs_diff": worst, "ok": bool(worst <= atol), "provider": a.provider}  # fmt: skip
    return report


def _load_npz(path: str | os.PathLike) -> dict[str, np.ndarray]:
    from spa_nm.io import read_npz

    arrays = read_npz(path)
    if "x_val" in arrays:  # the training-data layout: verify on the validation inputs
        return {"x": arrays["x_val"]}
    return arrays


@dataclass
class BenchResult:
    path: str
    provider: str
    batch: int
    median_ms: float
    p90_ms: float
    throughput: float  # samples per second
    session_mb: float  # resident memory added by opening the session and running it

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def _rss_mb() -> float:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except OSError:
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def bench(
    paths: list[str | os.PathLike],
    provider: str = "auto",
    batch: int = 1,
    threads: int | None = None,
    warmup: int = 10,
    iters: int = 100,
    provider_options: dict[str, Any] | None = None,
) -> list[BenchResult]:
    """Median and p90 latency of each model, runs interleaved across models (machines are noisy).

    ``provider_options`` maps a provider to its options, e.g.
    ``{"tensorrt": {"trt_sparsity_enable": True}}``.
    """
    sessions, feeds, mem = [], [], []
    for p in paths:
        before = _rss_mb()
        s = open_session(p, provider, threads, provider_options=provider_options)
        f = make_feeds(s, batch=batch)
        s.run(f)
        mem.append(max(0.0, _rss_mb() - before))
        sessions.append(s)
        feeds.append(f)
    for _ in range(warmup):
        for s, f in zip(sessions, feeds, strict=True):
            s.run(f)
    times: list[list[float]] = [[] for _ in paths]
    for _ in range(iters):
        for k, (s, f) in enumerate(zip(sessions, feeds, strict=True)):
            t = time.perf_counter()
            s.run(f)
            times[k].append((time.perf_counter() - t) * 1e3)
    out = []
    for s, t, m in zip(sessions, times, mem, strict=True):
        med = statistics.median(t)
        out.append(BenchResult(s.path, s.provider, batch, med, float(np.percentile(t, 90)), 1e3 * batch / med, m))
    return out
