"""EdgeVL's post-training baseline: ONNX Runtime static int8 (QDQ) of a stage-1 student, calibrated on images of
every modality (``weight_bits=4``: W4A8, int4 weights)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgeclip.core.errors import EdgeClipError
from edgeclip.core.io import write_json
from edgeclip.data.pairs import normalize_modality
from edgeclip.models.pair import ModalityModel, PairStudent, load_pair_student
from edgeclip.quant.qat import check_weight_bits, resolve_reduce_range
from edgeclip.train.edgevl.data import PairDataConfig, Prepared, prepare_pairs
from edgeclip.train.edgevl.qat import quant_stem


@dataclass
class PTQConfig(PairDataConfig):
    student: str = ""  # stage-1 checkpoint
    calib_images: int = 256
    per_channel: bool = True
    method: str = "minmax"
    reduce_range: Any = "auto"
    weight_bits: int = 8

    def __post_init__(self) -> None:
        check_weight_bits(self.weight_bits)
        if self.calib_images < 1:
            raise EdgeClipError(f"calib_images must be >= 1, got {self.calib_images}")


def run_ptq(cfg: PTQConfig, teacher=None, progress: bool = False) -> dict:
    """Static int8 of ``cfg.student``: one ONNX model per input group (shared 3-channel or a modality's own
    adapter), calibrated on every modality it serves in equal parts; writes OUT/ptq.json -> its content."""
    from edgeclip.models.teachers import teacher_of

    if not cfg.student:
        raise EdgeClipError("PTQ starts from a stage-1 student: give --student CHECKPOINT")
    fp, pre, ck = load_pair_student(cfg.student)
    teacher = teacher_of(ck, f"student {cfg.student}", teacher or cfg.teacher, near=cfg.student)
    cfg.modality = {m: {**s.to_dict(), **cfg.modality.get(m, {})} for m, s in fp.specs.items()}
    if cfg.max_images == 0 or cfg.max_images > cfg.calib_images:
        cfg.max_images = cfg.calib_images
    p = prepare_pairs(cfg, teacher, pre.size, progress=progress)
    reduce_range = resolve_reduce_range(cfg.reduce_range, cfg.weight_bits)
    exports = _quantize_groups(cfg, fp, p, pre.size, reduce_range)
    res = {
        "format": "edgeclip-edgevl-ptq/1",
        "student": cfg.student,
        "exports": exports,
        "calib_images": len(p.data),
        "calibrated_on": p.ps.modalities,
        "per_channel": cfg.per_channel,
        "weight_bits": cfg.weight_bits,
        "method": cfg.method,
        "reduce_range": reduce_range,
        "specs": {m: s.to_dict() for m, s in fp.specs.items()},
        "primary": fp.primary,
        "img_size": pre.size,
        "teacher": teacher.describe(),
    }
    write_json(Path(cfg.out) / "ptq.json", res)
    return res


def _quantize_groups(cfg: PTQConfig, fp: PairStudent, p: Prepared, size: int, reduce_range) -> dict[str, str]:
    from edgeclip.export.onnx import export_onnx
    from edgeclip.quant.ort import quantize_static_onnx

    out = Path(cfg.out)
    groups = {m: (m if m in fp.adapters else None) for m in p.ps.modalities}
    exports = {}
    for g in sorted(set(groups.values()), key=lambda x: (x is not None, x or "")):
        mods = [m for m, gg in groups.items() if gg == g]
        model = ModalityModel(fp.student, fp.adapters[g] if g else None).eval()
        c = p.data.x[g].shape[1] if g else 3
        stem = "fp32" if g is None else f"fp32_{g}"
        f32 = export_onnx(model, out / f"{stem}.onnx", (1, c, size, size))
        batches = []
        for m in mods:  # the shared model sees every modality it serves, in equal parts
            x = normalize_modality(p.data.x[m], fp.specs[m])
            batches += [x[i : i + 32].numpy() for i in range(0, len(x), 32)]
        i8 = quantize_static_onnx(
            f32,
            out / f"{stem.replace('fp32', 'ptq_' + quant_stem(cfg.weight_bits))}.onnx",
            batches,
            per_channel=cfg.per_channel,
            method=cfg.method,
            reduce_range=reduce_range,
            weight_bits=cfg.weight_bits,
        )
        for m in mods:
            exports[m] = str(i8)
    return exports


def ptq_pairs(
    student: str,
    cfg: PairDataConfig,
    calib_images: int = 256,
    per_channel: bool = True,
    method: str = "minmax",
    teacher=None,
    reduce_range: Any = "auto",
    weight_bits: int = 8,
    progress: bool = False,
) -> dict:
    """The earlier call shape of :func:`run_ptq` (a data config plus keyword settings); kept for one release."""
    from dataclasses import asdict

    full = PTQConfig(
        **asdict(cfg),
        student=student,
        calib_images=calib_images,
        per_channel=per_channel,
        method=method,
        reduce_range=reduce_range,
        weight_bits=weight_bits,
    )
    return run_ptq(full, teacher=teacher, progress=progress)
