"""Small Hugging Face transformers built from config objects (random weights, nothing
downloaded), wrapped to return one tensor, and exported with either torch exporter.

    from models.transformers_zoo import TRANSFORMERS, build, export, cached_export
    net, inputs = build("llama_tiny")             # nn.Module in eval mode, tuple of tensors
    export("gpt2_tiny", "out/gpt2.onnx", "dynamo")

Each entry covers one attention layout of issue 4: GPT-2 (fused QKV Conv1D then Split), BERT
(separate Q/K/V Linear, padding-mask path), ViT (patch Conv, CLS token), Llama (RMSNorm,
rotary embeddings, SwiGLU MLP, grouped-query attention with repeat_kv), Llama with one K/V head
(multi-query), Swin (windowed attention, relative position bias). Weights are the model's own
initialization at ``initializer_range`` 0.1 with every 1-D parameter (biases, norm scales and
shifts) perturbed, so no head, bias or norm is trivial and no two tensors are equal (the dynamo
exporter would share equal initializers between nodes).

The legacy exporter cannot convert ``scaled_dot_product_attention`` with grouped-query heads,
so Llama-style models export with the eager attention (explicit ``repeat_kv``: Expand and
Reshape) there; everything else uses the model's default SDPA attention.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from models.export import _quiet as _export_quiet

__all__ = ["TRANSFORMERS", "TransformerSpec", "build", "cached_export", "export"]

LEGACY_OPSET = 17  # LayerNormalization is an ONNX op from 17


@dataclass(frozen=True)
class TransformerSpec:
    """``config()`` builds the transformers config, ``model(config)`` the module; ``inputs``
    is ``("ids", T)`` (token ids, batch 1) or ``("image", C, H, W)``."""

    name: str
    config: Callable[..., object]
    model: Callable[[object], object]
    inputs: tuple
    legacy_attention: str = "sdpa"
    tags: frozenset[str] = frozenset()


def _tf():
    import transformers

    return transformers


TRANSFORMERS: dict[str, TransformerSpec] = {
    s.name: s
    for s in (
        TransformerSpec(
            "gpt2_tiny",
            lambda **kw: _tf().GPT2Config(
                n_layer=2, n_embd=64, n_head=4, n_positions=32, vocab_size=96,
                initializer_range=0.1, bos_token_id=0, eos_token_id=0, **kw,
            ),
            lambda cfg: _tf().GPT2LMHeadModel(cfg),
            ("ids", 12),
            tags=frozenset({"fused_qkv", "layernorm", "causal"}),
        ),
        TransformerSpec(
            "bert_tiny",
            lambda **kw: _tf().BertConfig(
                hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
                vocab_size=96, max_position_embeddings=32, initializer_range=0.1, num_labels=3,
                **kw,
            ),
            lambda cfg: _tf().BertForSequenceClassification(cfg),
            ("ids", 12),
            tags=frozenset({"separate_qkv", "layernorm", "pooler"}),
        ),
        TransformerSpec(
            "vit_tiny",
            lambda **kw: _tf().ViTConfig(
                image_size=32, patch_size=8, hidden_size=64, num_hidden_layers=2,
                num_attention_heads=4, intermediate_size=128, num_labels=10,
                initializer_range=0.1, **kw,
            ),
            lambda cfg: _tf().ViTForImageClassification(cfg),
            ("image", 3, 32, 32),
            tags=frozenset({"separate_qkv", "layernorm", "cls_token", "conv"}),
        ),
        TransformerSpec(
            "llama_tiny",
            lambda **kw: _tf().LlamaConfig(
                hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                num_key_value_heads=2, vocab_size=96, max_position_embeddings=64,
                initializer_range=0.1, bos_token_id=0, eos_token_id=0, pad_token_id=0, **kw,
            ),
            lambda cfg: _tf().LlamaForCausalLM(cfg),
            ("ids", 12),
            legacy_attention="eager",
            tags=frozenset({"gqa", "rmsnorm", "rotary", "swiglu", "causal"}),
        ),
        TransformerSpec(
            "llama_mqa",
            lambda **kw: _tf().LlamaConfig(
                hidden_size=64, intermediate_size=96, num_hidden_layers=1, num_attention_heads=4,
                num_key_value_heads=1, vocab_size=96, max_position_embeddings=64,
                initializer_range=0.1, bos_token_id=0, eos_token_id=0, pad_token_id=0, **kw,
            ),
            lambda cfg: _tf().LlamaForCausalLM(cfg),
            ("ids", 12),
            legacy_attention="eager",
            tags=frozenset({"mqa", "rmsnorm", "rotary", "swiglu", "causal"}),
        ),
        TransformerSpec(
            "swin_tiny",
            lambda **kw: _tf().SwinConfig(
                image_size=32, patch_size=2, embed_dim=32, depths=[2, 2], num_heads=[2, 4],
                window_size=4, num_labels=10, initializer_range=0.1, **kw,
            ),
            lambda cfg: _tf().SwinForImageClassification(cfg),
            ("image", 3, 32, 32),
            tags=frozenset({"windowed", "layernorm", "relative_position_bias"}),
        ),
    )
}  # fmt: skip


class _OneTensor:
    """Wraps a transformers model so that it returns ``logits`` (or the last hidden state)."""

    def __new__(cls, model):
        import torch.nn as nn

        class OneTensor(nn.Module):
            def __init__(self, m):
                super().__init__()
                self.m = m

            def forward(self, x):
                out = self.m(x)
                return (
                    out.logits
                    if getattr(out, "logits", None) is not None
                    else out.last_hidden_state
                )

        return OneTensor(model).eval()


def _perturb(net, seed: int) -> None:
    """Random 1-D parameters (biases, norm scales and shifts start at 0 or 1)."""
    import torch

    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            if p.ndim == 1:
                p.add_(torch.randn(p.shape, generator=g) * 0.2)


def build(name: str, attention: str | None = None, seed: int = 0):
    """``(module, inputs)`` for entry ``name``: the same weights for the same ``seed``;
    ``attention`` overrides the attention implementation ("eager", "sdpa")."""
    import torch

    spec = TRANSFORMERS[name]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        kw = {} if attention is None else {"attn_implementation": attention}
        cfg = spec.config(**kw)
        with _quiet():
            net = spec.model(cfg)
        _perturb(net, seed + 1)
        g = torch.Generator().manual_seed(seed + 2)
        if spec.inputs[0] == "ids":
            x = torch.randint(0, cfg.vocab_size, (1, spec.inputs[1]), generator=g)
        else:
            x = torch.randn((1, *spec.inputs[1:]), generator=g)
    return _OneTensor(net.eval()), (x,)


def _quiet():
    return _export_quiet("transformers")


def export(
    name: str,
    path: str | os.PathLike,
    exporter: str = "legacy",
    opset: int | None = None,
    *,
    dynamic: bool = False,
) -> Path:
    """Export entry ``name`` to one ONNX file (input ``input``, output ``output``, batch 1);
    ``dynamic``: batch and sequence length (token models) or batch (image models) symbolic."""
    import torch

    if exporter not in ("legacy", "dynamo"):
        raise ValueError(f"unknown exporter {exporter!r}: legacy or dynamo")
    spec = TRANSFORMERS[name]
    attention = spec.legacy_attention if exporter == "legacy" else None
    net, args = build(name, attention)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    axes = {0: "batch", 1: "seq"} if spec.inputs[0] == "ids" else {0: "batch"}
    with _quiet():
        if exporter == "legacy":
            kw = {"dynamic_axes": {"input": axes, "output": {0: "batch"}}} if dynamic else {}
            torch.onnx.export(net, args, str(path), dynamo=False, opset_version=opset or LEGACY_OPSET,
                              input_names=["input"], output_names=["output"], **kw)  # fmt: skip
        else:
            kw = {} if opset is None else {"opset_version": opset}
            if dynamic:
                dims = {0: torch.export.Dim("batch", min=1, max=8)}
                if 1 in axes:
                    dims[1] = torch.export.Dim("seq", min=2, max=spec.inputs[1] * 2)
                kw["dynamic_shapes"] = (dims,)
            prog = torch.onnx.export(net, args, dynamo=True, input_names=["input"],
                                     output_names=["output"], verbose=False, **kw)  # fmt: skip
            prog.save(str(path), external_data=False)
    return path


def cached_export(
    name: str, exporter: str, cache_dir: str | os.PathLike, *, dynamic: bool = False
) -> Path:
    """`export` into ``cache_dir`` unless ``{name}-{exporter}[-dyn].onnx`` is already there;
    written to a scratch folder first, so an interrupted export leaves nothing behind."""
    cache_dir = Path(cache_dir)
    path = cache_dir / f"{name}-{exporter}{'-dyn' if dynamic else ''}.onnx"
    if path.exists():
        return path
    cache_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache_dir, prefix=".export-") as tmp:
        tmp_path = export(name, Path(tmp) / path.name, exporter, dynamic=dynamic)
        shutil.move(tmp_path, path)
    return path
