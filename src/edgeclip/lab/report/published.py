"""The seed systems' published figures, and ours beside them where a comparison means something."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from edgeclip.core.io import read_json
from edgeclip.lab.report.document import fmt as _f

PUBLISHED: list[dict[str, str]] = [
    {
        "system": "Clip4Retrofit",
        "source": 'Zhong et al., "Clip4Retrofit: Enabling Real-Time Image Labeling on Edge Devices via '
        "Cross-Architecture "
        'CLIP Distillation", CVPR 2025 Workshops, arXiv:2505.18039',
        "published": "CLIP distilled into EfficientNet-B3 + MLP projection heads, real-time labeling on the Retrofit "
        "in-car camera. No accuracy or latency figure is quoted here: the abstract gives none and we have "
        "not verified the paper's tables.",
        "compare": "clip4retrofit",
        "data": "Theirs: a real CLIP ViT teacher, in-vehicle camera images, the Retrofit device. Ours: reference LiT "
        "teachers (MiniLM text tower) on Flickr8k photos (128 px teacher, 160 px students) and on CIFAR-10 at "
        "32 px, and random-weight CLIP towers for speed, on the CPU the bench JSON names.",
    },
    {
        "system": "EdgeVL",
        "source": 'Cai et al., "Self-Adapting Large Visual-Language Models to Edge Devices across Visual Modalities", '
        "ECCV 2024, arXiv:2403.04908",
        "published": "Up to 15.4 % accuracy improvement on multiple datasets and up to 93-fold model-size reduction "
        "(abstract). Pseudo-label selection keeps the top 20 % of samples by teacher confidence (project brief).",
        "compare": "edgevl",
        "data": "Theirs: full-scale paired RGB / non-RGB benchmark datasets and a real CLIP teacher. "
        "Ours: CIFAR-10 RGB + "
        "monochrome (luminance) pairs with the reference LiT teacher for accuracy, the handful of real RGB-D pairs "
        "in ../shared/data/rgbd-samples for loading, and CLIP towers with random weights for size/speed.",
    },
    {
        "system": "CLIP-distilled ShuffleNetV2 captioner",
        "source": "the seed captioning system named in the project brief (we could not identify the paper, so only the "
        "brief's figures are quoted)",
        "published": "5.7 images/s; training loss 0.7 x MSE (to the CLIP embedding) + 0.3 x cross-entropy (captions).",
        "compare": "caption",
        "data": "Theirs: device and dataset not known to us. Ours: Flickr8k photos (6,000 train, 500 test; "
        "experiments/caption_flickr8k.yaml) on a shared 2-core CPU.",
    },
    {
        "system": "Show, Attend and Tell (the captioner's decoder design), Flickr8k",
        "source": 'Xu et al., "Show, Attend and Tell: Neural Image Caption Generation with Visual Attention", '
        "ICML 2015, Table 1",
        "published": "soft attention on Flickr8k: BLEU-4 19.5, METEOR 18.93 (BLEU-1 67, BLEU-2 44.8, BLEU-3 29.9)",
        "compare": "caption_flickr8k",
        "data": "Theirs: an ImageNet-pretrained VGG encoder, the full 1,000-photo test split. Ours: a ShuffleNetV2 "
        "x1.0 encoder with no ImageNet weights (none exist offline; it starts from our label-free distilled "
        "student), 224x224 squashed photos, 500 test photos (a fixed half of the official test split), beam 5, "
        "a few epochs on a 2-core CPU.",
    },
]


def section_published_numbers(doc, r) -> None:
    """Published numbers."""
    bench = r.bench
    fid = r.fid
    doc.h("Published numbers of the seed systems, beside ours")
    prow = []
    for p in PUBLISHED:
        ours = (
            _ours_flickr8k_captions(r.results or r.out)
            if p["compare"] == "caption_flickr8k"
            else _ours_for(p["compare"], bench, fid)
        )
        prow.append([p["system"], p["published"], ours, p["data"], p["source"]])
    doc.table(["system", "published", "ours (this project, measured)", "difference in data", "source"], prow)


def _ours_flickr8k_captions(results: Path) -> str:
    p = results / "caption_flickr8k.json"
    if not p.is_file():
        return "not yet measured"
    m = read_json(p)
    runs = [(x, m.get(f"{x}_bleu4_beam5"), m.get(f"{x}_cider_beam5")) for x in ("a", "b", "c")]
    parts = [f"run {x}: BLEU-4 {_f(100 * b, 1)}, CIDEr {_f(c, 3)}" for x, b, c in runs if b is not None]
    if m.get("a_meteor_beam5") is not None:
        parts.append(f"run a METEOR {_f(100 * m['a_meteor_beam5'], 2)}")
    return "; ".join(parts) or "not yet measured"


def _ours_for(kind: str, bench: dict[str, Any], fid: dict[str, Any]) -> str:
    sp = bench.get("sections", {}).get("speed", {})
    ratios = sp.get("ratios", [])
    models = {m["name"]: m for m in sp.get("models", []) if "error" not in m}
    parts = []
    if kind == "clip4retrofit":
        r = next(
            (r for r in ratios if r["student"] == "efficientnet_b3" and r["teacher"] == "clip:ViT-B-32"), None
        )
        if r:
            parts.append(
                f"EfficientNet-B3 student vs CLIP ViT-B-32 tower (224 px, CPU): {_f(r.get('torch_b1_speedup'), 1)}x "
                f"faster (torch), {_f(r['params_reduction'], 1)}x fewer parameters"
            )
        acc = bench.get("sections", {}).get("accuracy")
        if acc and acc.get("retention") is not None:
            parts.append(
                f"measured student ({_student_dir(acc)}) "
                f"retention {_f(acc['retention'], 3)} of its teacher's top-1"
            )
        parts += [f"{k} = {_f(v, 3)}" for k, v in _best_lab_metrics(fid, "clip4retrofit", "retention")[:3]]
    elif kind == "edgevl":
        t = models.get("clip:ViT-B-32")
        smalls = [
            m
            for m in models.values()
            if m["role"] == "student" and m.get("onnx_int8_mb") and m["img_size"] == 224
        ]
        if t and t.get("onnx_fp32_mb") and smalls:
            s = min(smalls, key=lambda m: m["onnx_int8_mb"])
            parts.append(
                f"size: CLIP ViT-B-32 tower fp32 ONNX {_f(t['onnx_fp32_mb'], 1)} MB vs {s['name']} int8 ONNX "
                f"{_f(s['onnx_int8_mb'], 2)} MB = {_f(t['onnx_fp32_mb'] / s['onnx_int8_mb'], 1)}-fold"
            )
        parts += [
            f"{k} = {_f(v, 3)}" for k, v in _best_lab_metrics(fid, "edgevl", r"top-?1|acc|retention")[:4]
        ]
    elif kind == "caption":
        parts += [
            f"{k} = {_f(v, 2)}" for k, v in _best_lab_metrics(fid, "caption", r"(images|img)_per_s$")[:4]
        ]
        parts += [f"{k} = {_f(v, 3)}" for k, v in _best_lab_metrics(fid, "caption", r"^cider$")[:2]]
    return "; ".join(parts) if parts else "not yet measured"


def _student_dir(acc: dict) -> str:
    return Path(str(acc.get("models", {}).get("student", {}).get("checkpoint", "?"))).parent.name


def _best_lab_metrics(fid: dict[str, Any], area: str, pattern: str) -> list[tuple[str, float]]:
    import re

    rx = re.compile(pattern, re.IGNORECASE)
    out = []
    for f in fid.get("areas", {}).get(area, {}).get("files", []):
        for k, v in (f.get("metrics") or {}).items():
            if rx.search(k.split(".")[-1]):
                out.append((f"{f['file']}: {k}", v))
    return out
