"""The report's section on reference lab v3 (experiments/flickr8k_lab_v3.yaml): the teacher chosen on val, the
distillation recipe study step by step, the three students' retention on test beside their cost (and the CLIP
image towers' cost from experiments/cost_table.yaml, random weights, speed only), the int8 bundle and the
captioner. A results file still filling in (a lab that spans sessions) shows what it has."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from edgeclip.core.io import read_json
from edgeclip.lab.report.document import Doc
from edgeclip.lab.report.document import fmt as _f

# (role in the lab, architecture name in the cost table, label)
STUDENTS = (
    ("shufflenet", "shufflenet_v2_x1_0", "ShuffleNetV2 x1.0"),
    ("mnv3", "mobilenet_v3_large", "MobileNetV3-Large"),
    ("effb0", "efficientnet_b0", "EfficientNet-B0"),
)
# the study's choose stages, in order: (stage, the lever it settles)
STUDY = (
    ("teacher", "teacher"),
    ("loss", "loss"),
    ("ema", "EMA of the weights"),
    ("size", "input size"),
    ("views", "cached views per photo"),
    ("pool", "unlabeled photo pool"),
    ("recipe", "schedule (epochs)"),
    ("best", "student to ship"),
)


def study_rows(stages: dict[str, Any]) -> list[list[Any]]:
    """[lever, candidate, val score, chosen] for every choose stage that has run."""
    rows = []
    for name, lever in STUDY:
        st = stages.get(name) or {}
        for cand, score in (st.get("scores") or {}).items():
            rows.append([lever, cand, _f(score, 4), "yes" if cand == st.get("chosen") else ""])
    return rows


def retention_cost_rows(lab: dict[str, Any], cost: dict[str, Any]) -> list[list[Any]]:
    """[model, test t2i R@5 retention, test i2t R@5 retention, params (M), GFLOPs, ORT fp32 ms, ORT int8 ms]:
    the students (retention from the lab's test split), then the CLIP towers (speed only)."""
    ts = (lab.get("stages") or {}).get("test_students") or {}
    by_name = {m.get("name"): m for m in cost.get("models") or []}

    def cost_cells(m: dict) -> list:
        return [
            _f(m.get("params_m"), 2),
            _f(m.get("gflops"), 3),
            _f((m.get("ort_fp32") or {}).get("b1_median_ms"), 1),
            _f((m.get("ort_int8") or {}).get("b1_median_ms"), 1),
        ]

    rows = [
        [f"student {label}"]
        + [_f(ts.get(f"{role}_retention_{d}_r5"), 3) for d in ("t2i", "i2t")]
        + cost_cells(by_name.get(arch) or {})
        for role, arch, label in STUDENTS
    ]
    rows += [
        [
            f"{m['name'].removeprefix('clip:')} ({m.get('weights', 'random weights')})",
            "-",
            "-",
            *cost_cells(m),
        ]
        for m in cost.get("models") or []
        if str(m.get("name", "")).startswith("clip:")
    ]
    return rows


def section_lab_v3(doc: Doc, results: Path) -> None:
    """Reference lab v3, as far as its results file goes."""
    from edgeclip.lab.report.sections import _recall_rows, _search_table, target_rows

    p = results / "flickr8k_lab_v3.json"
    part = results / "flickr8k_lab_v3_partial.json"  # a lab still running: what its finished stages gave
    if not p.is_file() and not part.is_file():
        return
    lab = read_json(p if p.is_file() else part)
    st = lab.get("stages") or {}
    doc.h("Reference lab v3: a stronger teacher, the distillation recipe study, the captioner")
    doc.p(
        "experiments/flickr8k_lab_v3.yaml, run stage by stage across sessions from a separate clone; every "
        "choice below is made on the 1,000 Flickr8k val photos (the mean of t2i and i2t R@5 for students), "
        "never on the 500 test photos."
        + (
            ""
            if p.is_file()
            else f" Still running: {len(lab.get('pending_stages') or [])} stages to go "
            f"({', '.join((lab.get('pending_stages') or [])[:6])}, ...); the figures so far come from {part.name}."
        )
    )
    rows = study_rows(st)
    if rows:
        doc.table(["lever", "candidate", "val score", "chosen"], rows)
    roles = [("teacher", "teacher (chosen on val)")] + [(r, f"student {lab_}") for r, _, lab_ in STUDENTS]
    rec = _recall_rows(st.get("test_students") or st.get("test") or {}, roles)
    rec += _recall_rows(
        st.get("test_bundle") or {},
        [("bundle_fp32", "bundle fp32 (ONNX Runtime)"), ("bundle_int8", "bundle int8")],
    )
    if rec:
        doc.table(["model (test)", "i2t R@1", "i2t R@5", "i2t R@10", "t2i R@1", "t2i R@5", "t2i R@10"], rec)
    cp = results / "cost_table.json"
    cost = read_json(cp) if cp.is_file() else {}
    doc.p(
        "Retention against cost: R@5 retention is the student's test R@5 over the teacher's; the cost columns "
        "come from experiments/cost_table.yaml (one process, 224 px, batch 1, 2 threads, ONNX Runtime), where "
        "the CLIP image towers are built from open_clip configs with random weights: their rows are speed only."
    )
    doc.table(
        [
            "model",
            "t2i R@5 retention",
            "i2t R@5 retention",
            "params (M)",
            "GFLOPs",
            "ORT fp32 ms",
            "ORT int8 ms",
        ],
        retention_cost_rows(lab, cost),
    )
    tgt = target_rows(lab.get("targets"))
    if tgt:
        doc.table(["target", "value", "target value", "met"], tgt)
    timings = lab.get("timings") or {}
    if timings:
        total = sum(v for v in timings.values() if isinstance(v, (int, float)))
        doc.p(f"Stage minutes so far (total {total:.0f} min on this machine's CPU):")
        doc.table(["stage", "minutes"], [[k.removesuffix("_minutes"), _f(v, 1)] for k, v in timings.items()])
    _search_table(doc, (st.get("search") or {}).get("models") or {})
