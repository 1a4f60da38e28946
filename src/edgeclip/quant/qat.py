"""Quantization-aware training with torchao's PT2E flow, exported as a QDQ ONNX model for ONNX Runtime.

    core = prepare_qat(model, example_shape=(8, 3, 32, 32))  # torch.export + fake-quant (QAT config)
    ... train ``core`` like any module (``.train()`` / ``.eval()`` work) ...
    int8 = convert_qat(core)                                  # quantize/dequantize ops + int8 weights
    export_qdq_onnx(int8, "model.int8.onnx", (1, 3, 32, 32))  # QuantizeLinear/DequantizeLinear graph

The quantizer is torchao's X86 inductor quantizer in QAT mode: int8 symmetric per-channel weights,
uint8 affine per-tensor activations, conv + batch-norm folded during training. The same scheme as
ONNX Runtime's static QDQ quantization, so the QAT model and the PTQ baseline are comparable.
``per_channel=False`` gives one weight scale per tensor instead (accelerators that only support
per-tensor scales; ONNX Runtime's ``per_channel=False`` is the matching PTQ). ``weight_bits=4`` trains
4-bit weights (W4A8); the exported QDQ graph stores them as int8 values in [-8, 7], which ONNX Runtime
runs unchanged (ONNX Runtime's PTQ with ``weight_bits=4`` is the matching baseline).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from edgeclip.core.errors import EdgeClipError
from edgeclip.core.io import atomic_path
from edgeclip.quant.ort import check_weight_bits, cpu_has_vnni, resolve_reduce_range  # noqa: F401 (re-exported)


class QATModule(nn.Module):
    """A PT2E-prepared graph module that follows ``.train()`` / ``.eval()`` the way torchao requires
    (plain ``GraphModule.train()`` is refused for exported models)."""

    def __init__(self, gm: nn.Module, **attrs):
        super().__init__()
        self.gm = gm
        for k, v in attrs.items():
            setattr(self, k, v)

    def train(self, mode: bool = True):
        from torchao.quantization.pt2e import (
            move_exported_model_to_eval,
            move_exported_model_to_train,
        )

        (move_exported_model_to_train if mode else move_exported_model_to_eval)(self.gm)
        self.training = mode
        return self

    def forward(self, x):
        return self.gm(x)


def fold_batchnorm(model: nn.Module) -> int:
    """Fold every BatchNorm2d that directly follows a Conv2d inside a Sequential into the conv (in place,
    with the BN's running statistics) and replace it by Identity. Returns how many were folded.

    QAT then trains the folded weights, i.e. exactly the int8 weights that are deployed, and torchao's
    conv-bn pattern rewriting (a fixed ~100 torch.export calls per prepare/convert) is not needed.
    """
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    n = 0
    for mod in list(model.modules()):
        if not isinstance(mod, nn.Sequential):
            continue
        keys = list(mod._modules)
        for a, b in zip(keys, keys[1:]):
            conv, bn = mod._modules[a], mod._modules[b]
            if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d) and bn.track_running_stats:
                mod._modules[a] = fuse_conv_bn_eval(conv.eval(), bn.eval())
                mod._modules[b] = nn.Identity()
                n += 1
    return n


def qat_quantization_config(reduce_range: bool = False, per_channel: bool = True, weight_bits: int = 8):
    """torchao's default X86 QAT config; with ``per_channel=False`` its weights get one symmetric scale per
    tensor (moving-average min/max fake-quant); ``weight_bits=4`` limits the symmetric weight grid to
    [-8, 7] (W4A8: activations stay uint8). Everything else unchanged."""
    import dataclasses

    from torchao.quantization.pt2e import (
        FusedMovingAvgObsFakeQuantize,
        MovingAverageMinMaxObserver,
    )
    from torchao.quantization.pt2e.quantizer import QuantizationConfig, QuantizationSpec
    from torchao.quantization.pt2e.quantizer.x86_inductor_quantizer import (
        get_default_x86_inductor_quantization_config,
    )

    cfg = get_default_x86_inductor_quantization_config(is_qat=True, reduce_range=reduce_range)
    w = cfg.weight
    if not per_channel:
        w = QuantizationSpec(
            dtype=torch.int8,
            quant_min=-128,
            quant_max=127,
            qscheme=torch.per_tensor_symmetric,
            is_dynamic=False,
            observer_or_fake_quant_ctr=FusedMovingAvgObsFakeQuantize.with_args(
                eps=2**-12, observer=MovingAverageMinMaxObserver
            ),
        )
    if check_weight_bits(weight_bits) != 8:
        w = dataclasses.replace(w, quant_min=-(2 ** (weight_bits - 1)), quant_max=2 ** (weight_bits - 1) - 1)
    if w is cfg.weight:
        return cfg
    return QuantizationConfig(cfg.input_activation, cfg.output_activation, w, cfg.bias, True)


def prepare_qat(
    model: nn.Module,
    example_shape: Sequence[int],
    max_batch: int = 4096,
    fold_bn: bool = True,
    reduce_range: bool = False,
    per_channel: bool = True,
    weight_bits: int = 8,
    **attrs,
) -> QATModule:
    """torch.export ``model`` (dynamic batch) and insert QAT fake-quantization. Extra ``attrs`` are kept
    on the wrapper (e.g. ``embed_dim``). ``reduce_range``: 7-bit activations, for x86 CPUs without VNNI
    (see :func:`resolve_reduce_range`). ``per_channel=False``: per-tensor weight scales (see
    :func:`qat_quantization_config`); ``weight_bits=4``: W4A8 (same function). ``fold_bn`` folds conv+BN
    first (see :func:`fold_batchnorm`);
    the model is modified in place then, so pass a copy when the float model is still needed."""
    if fold_bn:
        fold_batchnorm(model)
    from torchao.quantization.pt2e.quantize_pt2e import prepare_qat_pt2e
    from torchao.quantization.pt2e.quantizer.x86_inductor_quantizer import (
        X86InductorQuantizer,
    )

    model = model.train()
    ex = torch.randn(*example_shape)
    try:
        gm = torch.export.export(
            model, (ex,), dynamic_shapes=({0: torch.export.Dim("batch", min=2, max=max_batch)},)
        ).module()
    except Exception as e:  # pragma: no cover - depends on the architecture
        raise EdgeClipError(
            f"torch.export of the model failed (QAT needs an exportable model): "
            f"{str(e).splitlines()[0][:300]}"
        ) from None
    q = X86InductorQuantizer().set_global(qat_quantization_config(reduce_range, per_channel, weight_bits))
    try:
        prepared = prepare_qat_pt2e(gm, q)
    except Exception as e:  # e.g. torchao's X86 quantizer refuses some conv-bn-add patterns (ResNet)
        raise EdgeClipError(
            f"QAT preparation failed for {type(model).__name__} "
            f"({getattr(model, 'arch', '?')}): {str(e).splitlines()[0][:300]}"
        ) from None
    return QATModule(prepared, **attrs)


def convert_qat(core: QATModule) -> nn.Module:
    """Fake-quant -> real quantize/dequantize ops with int8 weights (a GraphModule; do not call .eval() on it)."""
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e

    core.train(False)
    return convert_pt2e(core.gm)


def export_qdq_onnx(
    model: nn.Module, path: str | Path, input_shape: Sequence[int], max_batch: int = 4096
) -> Path:
    """Export a converted PT2E model (or a module wrapping one) to ONNX QDQ with a dynamic batch axis.

    Uses the dynamo exporter, which maps the quantize/dequantize ops to QuantizeLinear/DequantizeLinear.
    """
    path = Path(path)
    with atomic_path(path) as tmp:
        try:
            torch.onnx.export(
                model,
                (torch.randn(*input_shape),),
                str(tmp),
                dynamo=True,
                verbose=False,
                input_names=["image"],
                output_names=["embedding"],
                dynamic_shapes=({0: torch.export.Dim("batch", min=1, max=max_batch)},),
            )
        except Exception as e:  # pragma: no cover
            raise EdgeClipError(f"int8 ONNX export failed: {str(e).splitlines()[0][:300]}") from None
    return path
