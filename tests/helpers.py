"""Test helpers: tiny ONNX models written from ONNX text (no torch needed)."""

from __future__ import annotations


import numpy as np
import onnx
import onnx.parser


def model_from_text(text: str, seed: int = 0, **weights: np.ndarray) -> onnx.ModelProto:
    """Parse ONNX text. Declarations in ``<...>`` without a value become float initializers with
    seeded random values of their declared shape (``*var*`` names get positive values);
    ``weights`` overrides values by name."""
    model = onnx.parser.parse_model(text)
    rng = np.random.default_rng(seed)
    produced = {o for n in model.graph.node for o in n.output}
    keep = []
    for vi in model.graph.value_info:
        if vi.name in produced:
            keep.append(vi)
            continue
        shape = [d.dim_value for d in vi.type.tensor_type.shape.dim]
        arr = weights.get(vi.name)
        if arr is None:
            arr = rng.standard_normal(shape).astype(np.float32)
            if "var" in vi.name:
                arr = np.abs(arr) + 0.5
        model.graph.initializer.append(
            onnx.numpy_helper.from_array(np.asarray(arr, np.float32), vi.name)
        )
    del model.graph.value_info[:]
    model.graph.value_info.extend(keep)
    for name, arr in weights.items():
        for init in model.graph.initializer:
            if init.name == name:
                init.CopyFrom(onnx.numpy_helper.from_array(np.asarray(arr), name))
    return model


CNN = """
<ir_version: 8, opset_import: ["" : 13]>
tiny (float[1, 3, 8, 8] input) => (float[1, 10] output)
<float[8, 3, 3, 3] w1, float[8] b1, float[8] scale, float[8] shift, float[8] mean, float[8] var,
 float[12, 8, 3, 3] w2, float[12] b2, float[10, 48] wf, float[10] bf, int64[2] shp = {1, 48}>
{
  c1 = Conv <pads = [1, 1, 1, 1]> (input, w1, b1)
  n1 = BatchNormalization (c1, scale, shift, mean, var)
  r1 = Relu (n1)
  c2 = Conv <strides = [2, 2], pads = [1, 1, 1, 1]> (r1, w2, b2)
  r2 = Relu (c2)
  p2 = MaxPool <kernel_shape = [2, 2], strides = [2, 2]> (r2)
  f = Reshape (p2, shp)
  output = Gemm <transB = 1> (f, wf, bf)
}
"""
