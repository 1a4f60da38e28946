"""The int8 choice: the fastest variant within the fidelity gate, never one slower than fp32."""

from __future__ import annotations

import onnx
import pytest

from edgeclip.core.errors import EdgeClipError
from edgeclip.export.choose import INT8_VARIANTS, candidates, choose, fallback_int8

FP32 = {"batch1_ms": 10.0, "batch32_ms": 200.0}


def test_the_fastest_variant_within_the_gate_wins():
    v = {
        "a": {"batch1_ms": 6.0, "top1_agreement": 0.995},
        "b": {"batch1_ms": 5.0, "top1_agreement": 0.999},
        "c": {"batch1_ms": 4.0, "top1_agreement": 0.95},  # fastest, but fails the gate
    }
    pick = choose(FP32, v)
    assert pick["precision"] == "int8" and pick["variant"] == "b" and "2.00x" in pick["why"]


def test_a_variant_slower_than_fp32_is_never_the_default():
    v = {"a": {"batch1_ms": 12.0, "top1_agreement": 1.0}, "b": {"batch1_ms": 10.0, "top1_agreement": 1.0}}
    pick = choose(FP32, v)
    assert pick["precision"] == "fp32" and pick["variant"] is None and "not faster: a, b" in pick["why"]


def test_failing_the_gate_everywhere_keeps_fp32():
    v = {"a": {"batch1_ms": 3.0, "top1_agreement": 0.5}}
    pick = choose(FP32, v, gate=0.99)
    assert pick["precision"] == "fp32" and "below the gate: a" in pick["why"]


def test_with_fp32_as_default_the_int8_file_kept_is_the_most_faithful_fast_one():
    """The Flickr8k bundle's case: every recipe below the gate; the most faithful one (s8) was 1.7x slower than
    fp32. The file kept for --precision int8 is the most faithful of those faster than fp32."""
    v = {
        "s8": {"batch1_ms": 17.0, "top1_agreement": 0.98},
        "qdq": {"batch1_ms": 8.0, "top1_agreement": 0.96},
        "qdq_fast": {"batch1_ms": 7.0, "top1_agreement": 0.96},
        "qop": {"batch1_ms": 8.5, "top1_agreement": 0.90},
    }
    assert choose(FP32, v)["precision"] == "fp32" and fallback_int8(FP32, v) == "qdq_fast"
    slow = {k: {**x, "batch1_ms": 12.0} for k, x in v.items()}  # none faster: the most faithful of all
    assert fallback_int8(FP32, slow) == "s8"


def test_a_variant_within_timing_noise_of_fp32_is_not_chosen():
    v = {"a": {"batch1_ms": 9.9, "top1_agreement": 1.0}}  # 1 % faster: inside the 3 % noise margin
    assert choose(FP32, v)["precision"] == "fp32"
    assert choose(FP32, v, min_speedup=1.0)["variant"] == "a"


def test_candidates_per_family_and_mode():
    cnn, vit = candidates("cnn"), candidates("transformer")
    assert "qdq_per_channel_float_se" in cnn and "qdq_per_channel_float_se" not in vit
    assert candidates("cnn", "dynamic") == ["dynamic_per_channel", "dynamic_per_tensor"]
    assert all(INT8_VARIANTS.meta(n)["kind"] == "static" for n in candidates("transformer", "static"))
    assert all(
        "per-tensor" in INT8_VARIANTS.meta(n)["lever"]["weights"]
        for n in candidates("cnn", per_channel=False)
    )
    assert candidates("cnn", names=["qdq_per_tensor", "qdq_per_tensor"]) == ["qdq_per_tensor"]
    with pytest.raises(EdgeClipError, match="Did you mean: qdq_per_tensor"):
        candidates("cnn", names=["qdq_per_tensr"])


def _tiny_onnx(tmp_path):
    """A conv net with a hardswish block and a squeeze-excitation-like Mul, exported to ONNX."""
    import torch
    from torch import nn

    from edgeclip.export.onnx import export_onnx

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.c1, self.c2 = nn.Conv2d(3, 8, 3), nn.Conv2d(8, 8, 3)

        def forward(self, x):
            y = nn.functional.hardswish(self.c1(x))
            return self.c2(y * torch.sigmoid(y.mean((2, 3), keepdim=True))).mean((2, 3))

    torch.manual_seed(0)
    path = tmp_path / "net.onnx"
    export_onnx(
        Net().eval(), path, input_shape=(1, 3, 16, 16), dynamic_axes={"image": {0: "batch"}}, opset=17
    )
    return path


def test_quantizer_levers_change_the_graph(tmp_path):
    """s8 activations give int8 zero points; float_ops leave those op types between float tensors."""
    import numpy as np

    fp32 = _tiny_onnx(tmp_path)
    cal = [np.random.default_rng(i).standard_normal((4, 3, 16, 16)).astype(np.float32) for i in range(3)]

    def graph(name):
        return onnx.load(str(INT8_VARIANTS.get(name)(fp32, tmp_path / f"{name}.onnx", cal))).graph

    def zp_types(g):
        inits = {i.name: i for i in g.initializer}
        return {
            inits[n.input[2]].data_type for n in g.node if n.op_type == "QuantizeLinear" and len(n.input) > 2
        }

    assert zp_types(graph("qdq_per_tensor")) == {onnx.TensorProto.UINT8}
    assert zp_types(graph("qdq_per_tensor_s8")) == {onnx.TensorProto.INT8}
    plain, float_se = (
        quantized_ops(graph("qdq_per_channel")),
        quantized_ops(graph("qdq_per_channel_float_se")),
    )
    assert {"Conv", "Mul"} <= plain and "Conv" in float_se
    assert not float_se & {"Mul", "Sigmoid", "HardSwish", "HardSigmoid", "GlobalAveragePool"}


def quantized_ops(g) -> set[str]:
    """Op types that run between DequantizeLinear inputs and QuantizeLinear outputs: the ones ORT runs in int8."""
    inits = {i.name for i in g.initializer}
    prod = {o: n.op_type for n in g.node for o in n.output}
    cons: dict[str, list[str]] = {}
    for n in g.node:
        for i in n.input:
            cons.setdefault(i, []).append(n.op_type)
    out = set()
    for n in g.node:
        if n.op_type in ("QuantizeLinear", "DequantizeLinear"):
            continue
        ins = [i for i in n.input if i and i not in inits]
        if ins and all(prod.get(i) == "DequantizeLinear" for i in ins):
            if all(c == "QuantizeLinear" for o in n.output for c in cons.get(o, ["-"])):
                out.add(n.op_type)
    return out
