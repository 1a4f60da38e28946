"""EdgeVL stage 2: torchao PT2E QAT with the semi-hard triplet term, int8 QDQ ONNX that ONNX Runtime runs."""

from __future__ import annotations

import pytest
import torch

from edgeclip.data.pairs import open_pairs, preload_pairs
from edgeclip.models.pair import load_pair_student
from edgeclip.train.edgevl import PairDistillConfig, QATConfig, distill_pairs, qat_pairs
from edgeclip.zeroshot.modalities import evaluate_pairs, exported_embedder

DERIVE = {"mono": "luminance"}


def test_fold_batchnorm_keeps_outputs():
    from edgeclip.models import create_student
    from edgeclip.quant.qat import fold_batchnorm

    m = create_student("shufflenet_v2_x0_5", 8, small_input=True, img_size=16, head_hidden=0)
    m.train()
    for _ in range(2):  # non-trivial running statistics
        m(torch.randn(4, 3, 16, 16))
    m.eval()
    x = torch.randn(2, 3, 16, 16)
    ref = m(x)
    n = fold_batchnorm(m)
    assert n > 20 and not any(isinstance(t, torch.nn.BatchNorm2d) for t in m.modules())
    assert torch.allclose(m(x), ref, atol=1e-4)


@pytest.mark.slow
def test_qat_triplet_to_int8_onnx(shapes, tiny_teacher, tmp_path):
    import onnx

    from edgeclip.models.teachers import load_teacher

    t = load_teacher(tiny_teacher)
    s1 = PairDistillConfig(
        teacher=t.spec,
        data=str(shapes["train"]),
        derive=DERIVE,
        out=str(tmp_path / "s1"),
        cache=str(tmp_path / "cache"),
        classes=["circle", "square", "star"],
        student={"arch": "shufflenet_v2_x0_5", "img_size": 16, "head_hidden": 0},
        train={"epochs": 1, "batch_size": 24},
    )
    distill_pairs(s1, teacher=t)
    cfg = QATConfig(
        student=str(tmp_path / "s1" / "student.pt"),
        data=str(shapes["train"]),
        derive=DERIVE,
        out=str(tmp_path / "qat"),
        cache=str(tmp_path / "cache"),
        classes=["circle", "square", "star"],
        labels=["circle", "square", "star"],
        triplet_weight=1.0,
        margin=0.5,
        loss="mse+0.5*prompt_kl",  # the prompt vocabulary reaches the loss
        train={"epochs": 2, "batch_size": 24, "lr": 1e-4},
    )
    res = qat_pairs(cfg, teacher=t)
    hist = res["history"]
    assert len(hist) == 2 and all("triplet" in h and "semi_hard_fraction" in h for h in hist)
    assert 0.0 <= res["semi_hard_fraction"] <= 1.0
    path = res["exports"]["rgb"]
    assert res["exports"]["mono"] == path
    ops = {n.op_type for n in onnx.load(path).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear", "Conv"} <= ops
    inits = {i.name: i.data_type for i in onnx.load(path).graph.initializer}
    assert onnx.TensorProto.INT8 in inits.values()  # weights stored as int8
    # ONNX Runtime's int8 graph agrees with the converted torch model
    assert all(v > 0.99 for v in res["onnx_min_cosine_vs_torch_int8"].values())
    # and it evaluates on both modalities
    model, pre, _ = load_pair_student(tmp_path / "s1" / "student.pt")
    size = pre.size
    ps = open_pairs(shapes["test"], derive=DERIVE)
    d = preload_pairs(ps, model.specs, size)
    ev = evaluate_pairs(
        d,
        ps.classes,
        "rgb",
        ["rgb", "mono"],
        {"int8": exported_embedder(tmp_path / "qat" / "qat.json")},
        teacher=t,
    )
    assert ev["int8"]["mono"]["n"] == 36
    with pytest.raises(Exception, match="margin"):
        qat_pairs(QATConfig(student=cfg.student, data=cfg.data, derive=DERIVE, margin=0.0), teacher=t)
    with pytest.raises(Exception, match="positive must be one of"):
        qat_pairs(QATConfig(student=cfg.student, data=cfg.data, derive=DERIVE, positive="nearest"), teacher=t)


@pytest.mark.parametrize("per_channel,bits", [(True, 8), (False, 8), (True, 4)])
def test_qat_weight_scales_and_bits(per_channel, bits):
    """per_channel=False (accelerators with one scale per tensor) leaves no per-channel weight quantization;
    weight_bits=4 keeps every stored weight on the 4-bit grid [-8, 7]."""
    from edgeclip.models import create_student
    from edgeclip.quant.qat import convert_qat, prepare_qat

    torch.manual_seed(0)
    m = create_student("shufflenet_v2_x0_5", 8, small_input=True, img_size=16, head_hidden=0)
    core = prepare_qat(m, (4, 3, 16, 16), per_channel=per_channel, weight_bits=bits)
    core.train()
    core(torch.randn(4, 3, 16, 16))  # observers see data
    q = convert_qat(core)
    ops = {str(n.target) for n in q.graph.nodes if n.op == "call_function"}
    assert any("dequantize_per_tensor" in o for o in ops)
    assert any("dequantize_per_channel" in o for o in ops) == per_channel
    assert q(torch.randn(2, 3, 16, 16)).shape == (2, 8)
    w = torch.cat(
        [t.flatten() for _, t in (*q.named_buffers(), *q.named_parameters()) if t.dtype == torch.int8]
    )
    assert len(w) > 1000  # every conv/linear weight, stored as int8
    assert (int(w.min()), int(w.max())) == ((-8, 7) if bits == 4 else (-128, 127))


def test_weight_bits_are_checked(tmp_path):
    from edgeclip.core.errors import EdgeClipError
    from edgeclip.quant.ort import quantize_static_onnx
    from edgeclip.quant.qat import prepare_qat

    with pytest.raises(EdgeClipError, match="weight_bits must be one of"):
        prepare_qat(torch.nn.Linear(4, 4), (2, 4), weight_bits=2)
    (tmp_path / "m.onnx").write_bytes(b"")
    with pytest.raises(EdgeClipError, match="weight_bits must be one of"):
        quantize_static_onnx(tmp_path / "m.onnx", tmp_path / "q.onnx", [], weight_bits=16)


def test_qat_and_ptq_of_a_transformer_student(tmp_path):
    """A ViT student (timm, 4-px patches) goes through PT2E QAT -> int8 QDQ ONNX and ONNX Runtime static PTQ."""
    import numpy as np
    import onnxruntime as ort

    from edgeclip.export.onnx import export_onnx
    from edgeclip.models import create_student
    from edgeclip.quant.ort import quantize_static_onnx
    from edgeclip.quant.qat import convert_qat, export_qdq_onnx, prepare_qat

    torch.manual_seed(0)
    m = create_student(
        "timm:vit_tiny_patch16_224",
        16,
        img_size=16,
        head_hidden=0,
        model_args={"patch_size": 4, "depth": 1, "embed_dim": 32, "num_heads": 2},
    ).eval()
    x = torch.randn(8, 3, 16, 16)
    f32 = export_onnx(m, tmp_path / "fp32.onnx", (1, 3, 16, 16))
    ptq = quantize_static_onnx(
        f32, tmp_path / "ptq.onnx", [x.numpy()], per_channel=True, method="minmax", reduce_range=False
    )
    ptq4 = quantize_static_onnx(f32, tmp_path / "ptq4.onnx", [x.numpy()], weight_bits=4, reduce_range=False)
    import onnx

    assert onnx.TensorProto.INT4 in {i.data_type for i in onnx.load(ptq4).graph.initializer}
    core = prepare_qat(m, (4, 3, 16, 16))
    core.train()
    core(x)  # observers see data
    q = convert_qat(core)
    q.training = False  # a converted graph is not switched with .eval()
    path = export_qdq_onnx(q, tmp_path / "qat.onnx", (4, 3, 16, 16))
    ref = torch.nn.functional.normalize(q(x).detach(), dim=-1)
    for f in (path, ptq, ptq4):
        s = ort.InferenceSession(str(f), providers=["CPUExecutionProvider"])
        got = torch.from_numpy(s.run(None, {s.get_inputs()[0].name: x.numpy()})[0])
        assert got.shape == (8, 16) and np.isfinite(got.numpy()).all()
    got = torch.from_numpy(
        ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"image": x.numpy()})[0]
    )
    assert (
        float((ref * torch.nn.functional.normalize(got, dim=-1)).sum(-1).min()) > 0.99
    )  # ORT int8 == torch int8
