"""The zero-group oracle on every architecture of the zoo, with both torch exporters.

For each model: ratio 0 gives identical outputs; ratio 0.5 (local and global) removes channels,
drops parameters and MACs, passes the full checker, and equals the zeroed original on
onnxruntime within 1e-5.
"""

from __future__ import annotations

import numpy as np
import pytest

import spa_nm
from spa_nm.surgery import check_model
from spa_nm.testing import assert_prune_equivalent, random_feeds, run

torch = pytest.importorskip("torch")
models = pytest.importorskip("models")
from models.export import cached_export  # noqa: E402

pytestmark = [pytest.mark.zoo, pytest.mark.torch]

# "-bn" keeps BatchNormalization nodes (both exporters fold Conv+BN by default), so the
# Conv -> BN coupling and the BN members are exercised too
EXPORTERS = ("legacy", "dynamo", "legacy-bn", "dynamo-bn")
CASES = [(name, exp) for name in models.list_models() for exp in EXPORTERS]


def load_case(export_dir, name, exporter):
    base, _, bn = exporter.partition("-")
    return spa_nm.load(cached_export(name, base, export_dir, fold_bn=not bn))


@pytest.mark.parametrize(("name", "exporter"), CASES, ids=[f"{n}-{e}" for n, e in CASES])
def test_ratio_zero_is_identity(export_dir, name, exporter):
    model = load_case(export_dir, name, exporter)
    res = spa_nm.prune(model, 0.0)
    feeds = random_feeds(model)
    for a, b in zip(run(model, feeds), run(res.model, feeds), strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("global_ranking", [False, True], ids=["local", "global"])
@pytest.mark.parametrize(("name", "exporter"), CASES, ids=[f"{n}-{e}" for n, e in CASES])
def test_zero_group_oracle(export_dir, name, exporter, global_ranking):
    model = load_case(export_dir, name, exporter)
    res = spa_nm.prune(model, 0.5, global_ranking=global_ranking)
    r = res.report
    assert r["channels_removed"] > 0, f"nothing pruned; blocked: {r['blocked'][:3]}"
    assert r["params_after"] < r["params_before"]
    assert r["macs_after"] < r["macs_before"]
    check_model(res.model)
    assert_prune_equivalent(model, res, atol=1e-5)
