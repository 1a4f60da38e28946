"""Fidelity: what the students keep of the teacher.

Two parts:

* :func:`collect_lab_results` gathers the lab results JSONs that the other parts of the project write
  into ``benchmarks/results/`` (Clip4Retrofit distillation, EdgeVL modalities, captioner, edge bundle)
  into one summary. Files are read defensively: a missing file is "not yet measured", an unreadable
  one is reported with the reason, and only numeric metrics with recognised names are picked up.
* :func:`measure_accuracy` measures zero-shot top-1/top-5, teacher agreement and retention of given
  student checkpoints (torch fp32 and their ONNX Runtime int8 export) on an ImageFolder.
"""

from __future__ import annotations

import fnmatch
import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from edgeclip.core.errors import EdgeClipError
from edgeclip.core.prompts import DEFAULT_TEMPLATES, class_names

# area -> (glob patterns of its results files in benchmarks/results, what it measures)
LAB_AREAS: dict[str, tuple[tuple[str, ...], str]] = {
    "clip4retrofit": (
        ("lab_clip4retrofit*.json",),
        "label-free distillation: accuracy retention, int8 retention",
    ),
    "edgevl": (
        ("lab_edgevl*.json", "*edgevl*.json"),
        "other visual modalities (depth): zero-shot accuracy, int8",
    ),
    "caption": (
        ("lab_caption*.json", "*caption*.json"),
        "captioner: BLEU/METEOR/ROUGE-L/CIDEr/SPICE, images/s",
    ),
    "bundle": (
        ("lab_bundle*.json", "*bundle*.json", "*export*.json"),
        "edge bundle: size, parity, latency without torch",
    ),
}

# metric names worth showing (matched anywhere in the dotted key, case-insensitive)
METRIC_RE = re.compile(
    r"(top-?1|top-?5|acc(uracy)?|retention|agreement|int8|bleu|meteor|rouge|cider|spice|images_per_s|img_per_s|"
    r"throughput|latency|_ms$|size_mb|_mb$|bytes|params|gflops|gmacs|speedup|max_abs_diff|cos(ine)?|recall|map|miou)",
    re.IGNORECASE,
)
SKIP_RE = re.compile(
    r"(^|\.)(machine|config|versions|env|history|epochs|curve|args|load_average\w*)(\.|\[|$)", re.IGNORECASE
)


def flatten(
    obj: Any, prefix: str = "", out: dict[str, Any] | None = None, max_items: int = 2000
) -> dict[str, Any]:
    """Dotted-key view of nested dicts (lists are indexed ``key[i]``); leaves only."""
    out = {} if out is None else out
    if len(out) >= max_items:
        return out
    if isinstance(obj, dict):
        for k, v in obj.items():
            flatten(v, f"{prefix}.{k}" if prefix else str(k), out, max_items)
    elif isinstance(obj, list) and len(obj) <= 50:
        for i, v in enumerate(obj):
            flatten(v, f"{prefix}[{i}]", out, max_items)
    else:
        out[prefix] = obj
    return out


def pick_metrics(data: Any) -> dict[str, float]:
    """Numeric leaves whose names look like metrics (accuracy, retention, caption scores, speed, size)."""
    picked = {}
    for k, v in flatten(data).items():
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not np.isfinite(v):
            continue
        if SKIP_RE.search(k):
            continue
        # a metric name anywhere in the key: "zero_shot_top1.fp32_all.mono" is a top-1 per model and modality
        if METRIC_RE.search(k):
            picked[k] = float(v)
    return picked


def find_samples(data: Any, limit: int = 8) -> list[dict[str, Any]]:
    """Sample predictions (labels or captions) a lab JSON carries under 'samples'/'examples'/'captions'."""
    found: list[dict[str, Any]] = []

    def walk(o: Any, depth: int = 0):
        if depth > 4 or len(found) >= limit:
            return
        if isinstance(o, dict):
            for k, v in o.items():
                if k.lower() in (
                    "samples",
                    "examples",
                    "sample_captions",
                    "sample_labels",
                    "predictions",
                ) and isinstance(v, list):
                    for it in v[: limit - len(found)]:
                        found.append(it if isinstance(it, dict) else {"value": it})
                else:
                    walk(v, depth + 1)
        elif isinstance(o, list):
            for it in o[:20]:
                walk(it, depth + 1)

    walk(data)
    return found


def find_curves(data: Any) -> dict[str, list[float]]:
    """Per-epoch series (loss, val_top1, ...) from 'history'/'epochs' lists of per-epoch dicts."""
    curves: dict[str, list[float]] = {}

    def walk(o: Any, path: str, depth: int = 0):
        if depth > 5:
            return
        if isinstance(o, dict):
            for k, v in o.items():
                walk(v, f"{path}.{k}" if path else k, depth + 1)
        elif isinstance(o, list) and o and all(isinstance(e, dict) and "epoch" in e for e in o):
            for key in ("loss", "val_top1", "cos", "acc"):
                ys = [e.get(key) for e in o]
                if all(isinstance(y, (int, float)) for y in ys):
                    curves[f"{path}.{key}"] = [float(y) for y in ys]

    walk(data, "")
    return curves


def _read(path: Path) -> tuple[Any | None, str | None]:
    try:
        return json.loads(path.read_text()), None
    except (OSError, UnicodeDecodeError) as e:
        return None, f"unreadable: {e}"
    except json.JSONDecodeError as e:
        return None, f"not valid JSON ({e.msg} at line {e.lineno}); being written?"


def collect_lab_results(results_dir: str | Path, exclude: Sequence[str] = ("bench*.json",)) -> dict[str, Any]:
    """One summary of every lab result in ``results_dir`` (grouped by area; missing = not yet measured)."""
    root = Path(results_dir)
    files = (
        sorted(
            p
            for p in root.glob("*.json")
            if p.is_file() and not any(fnmatch.fnmatch(p.name, e) for e in exclude)
        )
        if root.is_dir()
        else []
    )
    used = set()
    areas: dict[str, Any] = {}
    for area, (patterns, what) in LAB_AREAS.items():
        mine = [p for p in files if p not in used and any(fnmatch.fnmatch(p.name, pat) for pat in patterns)]
        used.update(mine)
        entry: dict[str, Any] = {"measures": what, "files": []}
        for p in mine:
            data, err = _read(p)
            f: dict[str, Any] = {"file": p.name}
            if err:
                f["error"] = err
            else:
                f["metrics"] = pick_metrics(data)
                f["samples"] = find_samples(data)
                f["curves"] = find_curves(data)
                if isinstance(data, dict):
                    m = data.get("machine") or {}
                    f["date"] = data.get("date") or (m.get("date") if isinstance(m, dict) else None)
                    for k in ("budget", "notes", "targets"):
                        if k in data:
                            f[k] = data[k]
            entry["files"].append(f)
        entry["status"] = "measured" if any("metrics" in f for f in entry["files"]) else "not yet measured"
        areas[area] = entry
    others = [p for p in files if p not in used]
    other_entries = []
    for p in others:
        data, err = _read(p)
        other_entries.append(
            {"file": p.name, "error": err}
            if err
            else {"file": p.name, "metrics": pick_metrics(data), "curves": find_curves(data)}
        )
    return {"results_dir": str(root), "areas": areas, "other": other_entries}


# ------------------------------------------------------------------------------------- measured here
def _int8_student(ck, role, emb, workdir: Path, cal, calib, threads, embs: dict, info: dict, log) -> None:
    """The student exported and statically quantized (QDQ per-channel, MinMax) as ``ROLE_int8``; a failure is
    recorded, never hidden (the fp32 numbers still stand)."""
    from edgeclip.export.onnx import export_onnx
    from edgeclip.models.student import load_student
    from edgeclip.quant.ort import quantize_static_onnx
    from edgeclip.zeroshot.embedder import onnx_embedder

    st, pp, _ = load_student(ck)
    fp32, q = workdir / f"{role}.onnx", workdir / f"{role}.int8.onnx"
    try:
        export_onnx(st, fp32, input_shape=(1, 3, pp.size, pp.size))
        quantize_static_onnx(fp32, q, cal(pp.size))
        embs[f"{role}_int8"] = onnx_embedder(q, pp, emb.teacher, f"{emb.name} (ONNX int8)", threads)
        info[f"{role}_int8"] = {
            "checkpoint": str(ck),
            "onnx": q.name,
            "method": "static QDQ per-channel MinMax",
            "calibration": str(calib),
            "onnx_int8_mb": q.stat().st_size / 2**20,
        }
    except Exception as e:
        info[f"{role}_int8"] = {"error": f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"}
        log(f"  int8 export of {ck} failed: {info[f'{role}_int8']['error']}")


def measure_accuracy(
    teacher_spec: str | None,
    students: Sequence[str],
    data: str,
    workdir: Path,
    templates: Sequence[str] = DEFAULT_TEMPLATES,
    max_images: int = 0,
    int8: bool = True,
    calib: str | None = None,
    calib_images: int = 64,
    threads: int = 1,
    log=print,
) -> dict[str, Any]:
    """Zero-shot accuracy of the teacher and of each student checkpoint (torch fp32, and ONNX int8).

    int8 students are exported with :func:`export_onnx` and quantized statically with calibration
    images from ``calib`` (default: the ``train`` folder beside ``data`` when it exists, else ``data``).
    """
    from edgeclip.lab.speed import calibration_images
    from edgeclip.zeroshot.embedder import load_embedder
    from edgeclip.zeroshot.evaluate import evaluate

    if not students:
        raise EdgeClipError("measure_accuracy needs at least one student checkpoint")
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    embs: dict[str, Any] = {}
    first = load_embedder(teacher=teacher_spec, student=students[0])
    t_emb = load_embedder(teacher=teacher_spec or first.teacher.spec)
    info: dict[str, Any] = {}
    if calib is None:
        sib = Path(data).parent / "train"
        calib = str(sib) if sib.is_dir() and sib.resolve() != Path(data).resolve() else data
    cal = calibration_images([Path(calib)], calib_images, batch=16)
    for i, ck in enumerate(students):
        role = "student" if i == 0 else f"student{i + 1}"
        emb = first if i == 0 else load_embedder(teacher=t_emb.teacher.spec, student=ck)
        embs[role] = emb
        info[role] = {"checkpoint": str(ck), "arch": emb.info.get("arch")}
        if int8:
            _int8_student(ck, role, emb, workdir, cal, calib, threads, embs, info, log)
    log(f"  zero-shot evaluation on {data} ({max_images or 'all'} images)")
    res = evaluate(t_emb, embs, data, list(templates), max_images=max_images)
    res["models"] = info
    res["teacher_spec"] = t_emb.teacher.spec
    res["teacher_id"] = t_emb.teacher.id
    if "student_int8_top1" in res and res.get("student_top1"):
        res["int8_retention_vs_fp32_student"] = res["student_int8_top1"] / res["student_top1"]
    return res


def sample_labels(
    student: str,
    data: str,
    n: int = 8,
    templates: Sequence[str] = DEFAULT_TEMPLATES,
    teacher_spec: str | None = None,
) -> list[dict[str, Any]]:
    """Top-3 open-vocabulary labels of ``n`` evenly spaced images of ``data`` by the student (and the true class)."""
    from edgeclip.data.sources import open_source
    from edgeclip.zeroshot.embedder import load_embedder
    from edgeclip.zeroshot.label import label_images

    src = open_source(data)
    if not src.classes:
        raise EdgeClipError(f"{data}: sample labels need an ImageFolder (class names are the labels)")
    recs = src.records[:: max(1, len(src.records) // n)][:n]
    emb = load_embedder(teacher=teacher_spec, student=student)
    labels = class_names(src.classes)
    truth = {r.name: labels[r.label] for r in recs if r.label is not None}
    return [
        {
            "image": row["image"],
            "true": truth.get(row["image"]),
            "labels": row["labels"],
            "scores": row["scores"],
        }
        for row in label_images(recs, emb, labels, templates, topk=3)
    ]
