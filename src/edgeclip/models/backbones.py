"""Backbone registry: every entry returns a module mapping images to a spatial grid (B, C, H, W).

torchvision models are registered by name; any timm model is available as ``timm:<name>``.
``small_input=True`` drops the stem max-pool (torchvision ResNet/ShuffleNet) so that 32-px inputs
keep a usable grid; ``stem_stride=1`` also makes the first convolution stride 1 (the usual CIFAR
adaptation: with small_input, a 32-px image keeps a 4x4 grid at the end of ShuffleNetV2 instead of 2x2). Both are
attribute swaps on the torchvision model, not rewritten models.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from edgeclip.core.errors import EdgeClipError
from edgeclip.core.registry import Registry

BACKBONES: Registry[Callable[..., Backbone]] = Registry("student backbone")


class Backbone(nn.Module):
    """Wraps a feature extractor; ``forward`` returns (B, C, H, W)."""

    def __init__(
        self, body: nn.Module, out_dim: int, name: str, tokens: str = "nchw", prefix_tokens: int = 0
    ):
        super().__init__()
        self.body = body
        self.out_dim = out_dim
        self.name = name
        self.tokens = tokens  # nchw | nhwc | nlc
        self.prefix_tokens = prefix_tokens

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.body(x)
        if self.tokens == "nhwc":
            f = f.permute(0, 3, 1, 2)
        elif self.tokens == "nlc":
            f = f[:, self.prefix_tokens :, :]
            n = int(f.shape[1])  # a plain int also when traced (ONNX export of ViT students)
            s = int(round(n**0.5))
            if s * s != n:
                raise EdgeClipError(f"{self.name}: {n} patch tokens do not form a square grid")
            f = f.transpose(1, 2).reshape(f.shape[0], f.shape[2], s, s)
        return f


def _tv(fn_name: str):
    import torchvision

    return getattr(torchvision.models, fn_name)


def _load_weights(model: nn.Module, weights: str | None, name: str) -> None:
    if not weights:
        return
    from pathlib import Path

    p = Path(weights)
    if not p.is_file():
        raise EdgeClipError(
            f"backbone weights for {name} not found: {weights} (pass a local .pth file; hub downloads are not used)"
        )
    from edgeclip.core.checkpoint import safe_torch_load

    try:
        sd = safe_torch_load(p)
    except EdgeClipError:
        raise
    except Exception as e:
        raise EdgeClipError(
            f"cannot read backbone weights {weights}: {str(e).strip().splitlines()[0][:200]}"
        ) from None
    sd = sd.get("state_dict", sd) if isinstance(sd, dict) else sd
    missing, unexpected = model.load_state_dict(sd, strict=False)
    if len(missing) > len(sd) // 2:
        raise EdgeClipError(
            f"{weights} does not look like weights for {name} ({len(missing)} tensors missing)"
        )


def _set_stem_stride(conv: nn.Conv2d, stride: int, name: str) -> None:
    if not stride:
        return
    if stride not in (1, 2):
        raise EdgeClipError(f"{name}: stem_stride must be 1 or 2, got {stride}")
    conv.stride = (stride, stride)


def _shufflenet(width: str):
    def make(small_input: bool = False, weights: str | None = None, stem_stride: int = 0, **_) -> Backbone:
        m = _tv(f"shufflenet_v2_{width}")(weights=None)
        _load_weights(m, weights, f"shufflenet_v2_{width}")
        if small_input:
            m.maxpool = nn.Identity()
        _set_stem_stride(m.conv1[0], stem_stride, f"shufflenet_v2_{width}")
        body = nn.Sequential(m.conv1, m.maxpool, m.stage2, m.stage3, m.stage4, m.conv5)
        return Backbone(body, m.conv5[0].out_channels, f"shufflenet_v2_{width}")

    return make


def _features(tv_name: str):
    """torchvision models whose convolutional body is ``.features`` (MobileNetV3, EfficientNet)."""

    def make(small_input: bool = False, weights: str | None = None, stem_stride: int = 0, **_) -> Backbone:
        m = _tv(tv_name)(weights=None)
        _load_weights(m, weights, tv_name)
        _set_stem_stride(m.features[0][0], stem_stride, tv_name)
        return Backbone(m.features, m.features[-1].out_channels, tv_name)

    return make


def _resnet(depth: int):
    def make(small_input: bool = False, weights: str | None = None, stem_stride: int = 0, **_) -> Backbone:
        m = _tv(f"resnet{depth}")(weights=None)
        _load_weights(m, weights, f"resnet{depth}")
        if small_input:
            m.maxpool = nn.Identity()
        _set_stem_stride(m.conv1, stem_stride, f"resnet{depth}")
        body = nn.Sequential(m.conv1, m.bn1, m.relu, m.maxpool, m.layer1, m.layer2, m.layer3, m.layer4)
        return Backbone(body, m.fc.in_features, f"resnet{depth}")

    return make


for _w in ("x0_5", "x1_0", "x1_5", "x2_0"):
    BACKBONES.register(f"shufflenet_v2_{_w}", help=f"torchvision ShuffleNetV2 {_w.replace('_', '.')}")(
        _shufflenet(_w)
    )
for _s in ("small", "large"):
    BACKBONES.register(f"mobilenet_v3_{_s}", help=f"torchvision MobileNetV3 {_s}")(
        _features(f"mobilenet_v3_{_s}")
    )
for _v in ("b0", "b1", "b2", "b3"):
    BACKBONES.register(f"efficientnet_{_v}", help=f"torchvision EfficientNet-{_v.upper()}")(
        _features(f"efficientnet_{_v}")
    )
for _d in (18, 34, 50):
    BACKBONES.register(f"resnet{_d}", help=f"torchvision ResNet-{_d}")(_resnet(_d))


def _timm(
    name: str, img_size: int | None = None, weights: str | None = None, model_args: dict | None = None, **kw
) -> Backbone:
    """``model_args`` go to ``timm.create_model`` (e.g. ``{"patch_size": 4, "depth": 6}``: a ViT for 32-px input)."""
    import timm

    if kw.get("stem_stride"):
        raise EdgeClipError(
            f"timm:{name}: stem_stride is only supported for the torchvision backbones "
            "(timm models take their stem from the model name, e.g. resnet18d)"
        )
    if name not in timm.list_models():
        close = timm.list_models(f"*{name}*")[:5]
        raise EdgeClipError(
            f"unknown timm model {name!r}" + (f" (close: {', '.join(close)})" if close else "")
        )
    extra: dict = {}
    if img_size is not None and any(k in name for k in ("vit", "deit", "swin", "eva", "beit")):
        extra["img_size"] = img_size
    try:
        m = timm.create_model(
            name, pretrained=False, num_classes=0, global_pool="", **extra, **(model_args or {})
        )
    except TypeError as e:
        raise EdgeClipError(f"timm:{name} does not take model_args {model_args}: {e}") from None
    _load_weights(m, weights, name)

    class _Feat(nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, x):
            return self.inner.forward_features(x)

    with torch.no_grad():
        was = m.training
        m.eval()
        probe = m.forward_features(torch.zeros(1, 3, img_size or 224, img_size or 224))
        m.train(was)
    nf = m.num_features
    if probe.ndim == 3:
        tokens, prefix = "nlc", getattr(m, "num_prefix_tokens", 0)
    elif probe.ndim == 4 and probe.shape[-1] == nf and probe.shape[1] != nf:
        tokens, prefix = "nhwc", 0
    else:
        tokens, prefix = "nchw", 0
    return Backbone(_Feat(m), nf, f"timm:{name}", tokens, prefix)


def create_backbone(name: str, **kw) -> Backbone:
    if name.startswith("timm:"):
        return _timm(name[5:], **kw)
    if kw.pop("model_args", None):
        raise EdgeClipError(
            f"{name}: model_args are for timm backbones (timm:<name>); the torchvision ones take "
            "small_input / stem_stride"
        )
    return BACKBONES.get(name)(**kw)


def list_backbones() -> tuple[str, ...]:
    return tuple(BACKBONES.names()) + ("timm:<any timm model>",)
