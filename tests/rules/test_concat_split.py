"""spa_nm/rules/concat_split.py: Concat, Split and Slice move channels to or from an offset on
the concatenation axis; sizes and bounds are rewritten from the kept channels."""

from __future__ import annotations

from tests.rules._harness import Case, check, net, variants

Q = "float[8, 3, 1, 1] wq, float[8] bq"  # q = Conv(x, wq, bq): a second producer


CASES: list[Case] = [
    # Concat on the channel axis: each input keeps its own group
    # Concat on the channel axis: one group, whose units are p's and q's channels
    Case(
        "concat_channels",
        net("q = Conv (x, wq, bq)\n y = Concat <axis = 1> (p, q)", Q, yc=16, consumer="3x3"),
        coupled=("q", "y"),
    ),
    Case(
        "concat_negative_axis",
        net("q = Conv (x, wq, bq)\n y = Concat <axis = -3> (q, p)", Q, yc=16),
    ),
    Case("concat_same_value_twice", net("y = Concat <axis = 1> (p, p)", yc=16)),
    Case(
        "concat_with_constant_part",
        net("y = Concat <axis = 1> (p, k)", "float[2, 4, 6, 6] k", yc=12),
    ),
    Case(
        "concat_spatial_couples",  # on H: channel c of p and of q are the same channel
        net("q = Conv (x, wq, bq)\n y = Concat <axis = 2> (p, q)", Q, consumer="3x3"),
        coupled=("q",),
    ),
    Case(
        "concat_dense_block",  # DenseNet style: the concat feeds a conv and is concatenated again
        net(
            "q = Conv (x, wq, bq)\n c1 = Concat <axis = 1> (q, p)\n r = Conv (c1, wr, br)\n"
            " y = Concat <axis = 1> (c1, r)",
            f"{Q}, float[4, 16, 1, 1] wr, float[4] br",
            yc=20,
        ),
    ),
    # Split: sizes as an attribute (opset 11), as an input (13), num_outputs (18), equal parts
    *[
        Case(
            f"split_concat_{tag}",
            net(f"{split}\n y = Concat <axis = 1> (b, a)", decl, opset=opset, consumer="3x3"),
            coupled=("a", "b"),
        )
        for tag, split, decl, opset in (
            ("attr_11", "a, b = Split <axis = 1, split = [3, 5]> (p)", "", 11),
            ("input_13", "a, b = Split <axis = 1> (p, sp)", "int64[2] sp = {3, 5}", 13),
            ("equal_13", "a, b = Split <axis = 1> (p)", "", 13),
            ("num_outputs_18", "a, b = Split <axis = 1, num_outputs = 2> (p)", "", 18),
        )
    ],
    Case(
        "split_uneven_num_outputs_18",  # 8 into 3: 3, 3, 2
        net(
            "a, b, c = Split <axis = 1, num_outputs = 3> (p)\n y = Concat <axis = 1> (c, a, b)",
            opset=18,
        ),
        coupled=("a", "b", "c"),
    ),
    Case(
        "split_into_two_convs",
        net(
            "a, b = Split <axis = 1> (p, sp)\n ca = Conv (a, wa)\n cb = Conv (b, wb)\n y = Add (ca, cb)",
            "int64[2] sp = {2, 6}, float[8, 2, 1, 1] wa, float[8, 6, 1, 1] wb",
        ),
    ),
    Case(
        "split_spatial",  # on H: both halves carry all channels
        net("a, b = Split <axis = 2> (p)\n y = Add (a, b)"),
        coupled=("a", "b"),
    ),
    Case(
        "split_runtime_sizes_blocks",
        net("a, b = Split <axis = 1> (p, sp)\n y = Concat <axis = 1> (b, a)", inputs="int64[2] sp"),
        "block:Split sizes are computed at run time",
        oracle=False,  # random sizes fed to sp are not a valid split
    ),
    # Slice: attributes (opset 9), inputs without steps (10), with axes and steps (13)
    Case(
        "slice_attrs_9",
        net("y = Slice <starts = [2], ends = [7], axes = [1]> (p)", opset=9, yc=5),
    ),
    Case(
        "slice_inputs_10",
        net("y = Slice (p, st, en, ax)", "int64[1] st = {2}, int64[1] en = {7}, int64[1] ax = {1}", opset=10, yc=5),
    ),
    *[
        Case(
            f"slice_inputs_13_{tag}",
            net("y = Slice (p, st, en, ax, sp)",
                f"int64[1] st = {{{s}}}, int64[1] en = {{{e}}}, int64[1] ax = {{1}}, int64[1] sp = {{1}}",
                yc=yc),
        )
        for tag, s, e, yc in (
            ("middle", 2, 7, 5),
            ("negative", -6, -1, 5),
            ("to_int_max", 3, 9223372036854775807, 5),
            ("clamped", -100, 100, 8),
        )
    ],
    Case(
        "slice_two_axes",  # one on channels, one on H
        net("y = Slice (p, st, en, ax)", "int64[2] st = {1, 0}, int64[2] en = {6, 4}, int64[2] ax = {1, 2}", yc=5),
    ),
    Case(
        "slice_spatial_only",
        net("y = Slice (p, st, en, ax)", "int64[1] st = {1}, int64[1] en = {5}, int64[1] ax = {3}", consumer="3x3"),
    ),
    Case(
        "slice_step2_blocks",
        net("y = Slice (p, st, en, ax, sp)",
            "int64[1] st = {0}, int64[1] en = {8}, int64[1] ax = {1}, int64[1] sp = {2}", yc=4),
        "block:Slice with step 2",
    ),
    Case(
        "slice_reverse_blocks",
        net("y = Slice (p, st, en, ax, sp)",
            "int64[1] st = {-1}, int64[1] en = {-9}, int64[1] ax = {1}, int64[1] sp = {-1}"),
        "block:Slice with step -1",
    ),
    Case(
        "slice_runtime_bounds_blocks",
        net("y = Slice (p, st, en, ax)", "int64[1] en = {8}, int64[1] ax = {1}", inputs="int64[1] st", yc=8),
        "block:computed at run time",
        oracle=False,  # the output's channel count depends on the fed start: no static model
    ),
]


@variants(CASES)
def test_case(case):
    check(case)


def test_concat_inputs_keep_separate_units():
    """p's channels and q's channels are different units of one group: the output channel
    off_q + c is q's channel c, never p's."""
    import numpy as np

    from spa_nm.facts import Slot

    (case,) = [c for c in CASES if c.id == "concat_channels"]
    res = check(case)
    dg = res.graph
    up, uq, uy = (dg.elements(Slot(v, (1,))) for v in ("p", "q", "y"))
    assert not set(up) & set(uq)
    np.testing.assert_array_equal(uy, np.concatenate([up, uq]))


def test_split_sizes_are_rewritten():
    """The Split sizes follow the kept channels of each part."""
    for cid in ("split_concat_attr_11", "split_concat_input_13", "split_concat_num_outputs_18"):
        (case,) = [c for c in CASES if c.id == cid]
        res = check(case)
        (node,) = [n for n in res.model.graph if n.op_type == "Split"]
        sizes = [int(o.shape[1]) for o in node.outputs]
        if "split" in node.attributes:
            assert list(node.attributes["split"].value) == sizes
        elif len(node.inputs) > 1 and node.inputs[1] is not None:
            assert list(node.inputs[1].const_value.numpy()) == sizes
        else:
            assert len(set(sizes)) == 1  # num_outputs kept only where the parts stay equal
        assert sum(sizes) == res.model.graph.initializers["wp"].const_value.shape[0]
