"""The report's sections: one function each, ``section(doc, r)``, in page order (:data:`SECTIONS`)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgeclip.core.io import read_json
from edgeclip.lab.report.document import Doc
from edgeclip.lab.report.document import fmt as _f
from edgeclip.lab.report.figures import (
    pareto_front,
    pareto_points,
    plot_curves,
    plot_pareto,
    plot_speed,
    sample_photo_figure,
)
from edgeclip.lab.report.lab_v3 import section_lab_v3
from edgeclip.lab.report.published import section_published_numbers


def _cell(rec: dict[str, Any], backend: str, key: str) -> Any:
    d = rec.get(backend, {})
    return d[key] if key in d else ("failed" if "error" in d else None)


def _curves(bench: dict[str, Any], fid: dict[str, Any]) -> dict[str, list[float]]:
    from edgeclip.lab.fidelity import find_curves

    curves: dict[str, list[float]] = {}
    inp = bench.get("inputs", {})
    paths = {}
    if inp.get("teacher", "") and inp["teacher"].startswith("reference-lit:"):
        paths["teacher"] = Path(inp["teacher"].split(":", 1)[1]).parent / "history.json"
    for i, s in enumerate(inp.get("students", [])):
        paths["student" if i == 0 else f"student{i + 1}"] = Path(s).parent / "history.json"
    for role, hp in paths.items():
        if hp.is_file():
            try:
                for k, v in find_curves({role: read_json(hp)}).items():
                    curves[k] = v
            except (OSError, json.JSONDecodeError):
                continue
    for area, entry in fid.get("areas", {}).items():
        for f in entry.get("files", []):
            for k, v in (f.get("curves") or {}).items():
                curves[f"{area}:{k}"] = v
    return curves


def target_rows(targets: Any) -> list[list[Any]]:
    """The rows of a lab JSON's ``targets`` that name a target: [name, value, target, met] (met as text)."""
    rows: list[list[Any]] = []

    def walk(o: Any, path: str) -> None:
        if not isinstance(o, dict):
            return
        if "target" in o and "value" in o:
            rows.append(
                [path, _f(o["value"], 3), o["target"], {True: "met", False: "not met"}.get(o.get("met"), "")]
            )
            return
        for k, v in o.items():
            walk(v, f"{path}.{k}" if path else str(k))

    walk(targets, "")
    return rows


@dataclass
class ReportInput:
    bench: dict[str, Any]
    fid: dict[str, Any]
    out: Path
    results: Path | None = None


def _section_headline(doc: Doc, r: ReportInput) -> None:
    """Headline."""
    secs = r.bench.get("sections", {})
    acc = r.bench.get("sections", {}).get("accuracy")
    sp = r.bench.get("sections", {}).get("speed", {})
    doc.h("Summary")
    rows = []
    acc = secs.get("accuracy")
    if acc:
        rows.append(["zero-shot top-1 retention (student fp32 / teacher)", _f(acc.get("retention"), 3)])
        if "student_int8_top1" in acc:
            rows.append(
                [
                    "int8 retention (student ONNX int8 / teacher)",
                    _f(acc["student_int8_top1"] / acc["teacher_top1"], 3) if acc.get("teacher_top1") else "-",
                ]
            )
        rows.append(["teacher-student top-1 agreement", _f(acc.get("agreement"), 3)])
    sp = secs.get("speed", {})
    for r in sp.get("ratios", []):
        if r["teacher"] == "clip:ViT-B-32" and r["student"] in (
            "shufflenet_v2_x1_0",
            "efficientnet_b3",
            "shufflenet_v2_x0_5",
        ):
            rows.append(
                [
                    f"{r['student']} vs CLIP ViT-B-32 tower at {r['img_size']} px: speed-up torch / "
                    "int8-vs-teacher-fp32 / size",
                    f"{_f(r.get('torch_b1_speedup'), 1)}x / {_f(r.get('int8_vs_teacher_fp32_b1_speedup'), 1)}x / "
                    f"{_f(r['params_reduction'], 1)}x fewer parameters",
                ]
            )
    tc = secs.get("train_cost", {}).get("runs", {})
    if tc:
        h = tc.get(secs["train_cost"].get("headline")) or next(iter(tc.values()))
        rows.append(
            [
                "training epoch, cached teacher vs online (target >= 5x)",
                f"{_f(h['speedup_cached_vs_online'], 1)}x ({'met' if h['target_met'] else 'NOT met'})",
            ]
        )
    doc.table(["what", "measured"], rows or [["(nothing measured yet)", "-"]])


def _section_pareto(doc: Doc, r: ReportInput) -> None:
    """Pareto."""
    bench = r.bench
    out = r.out
    acc = r.bench.get("sections", {}).get("accuracy")
    doc.h("Accuracy vs latency (Pareto)")
    pts = pareto_points(bench)
    if pts:
        plot_pareto(
            pts,
            out / "pareto.png",
            f"zero-shot top-1 on {Path(str(acc.get('data', ''))).name} "
            f"({acc.get('n')} images) vs batch-1 CPU latency",
        )
        doc.img("pareto.png", "accuracy vs latency")
        doc.table(
            ["model", "top-1", "batch-1 latency (ms)", "params (M)", "on the Pareto front"],
            [[p["name"], p["top1"], p["latency_ms"], p["params_m"], p in pareto_front(pts)] for p in pts],
        )
    else:
        doc.p(
            "No accuracy measured in this run (no student checkpoint given and no lab student yet): "
            "run `edgeclip bench --teacher SPEC --student student.pt --data TEST_IMAGEFOLDER`."
        )


SPEED_COLUMNS = ["model", "role", "px", "params (M)", "GFLOPs", "ONNX fp32 MB", "ONNX int8 MB", "torch b1 ms"]
SPEED_COLUMNS += ["ORT fp32 b1 ms", "ORT int8 b1 ms"]
RATIO_COLUMNS = ["student", "teacher", "px", "fewer params", "fewer FLOPs", "torch b1 speed-up"]
RATIO_COLUMNS += ["ORT fp32 b1 speed-up", "ORT int8 b1 speed-up", "student int8 vs teacher torch fp32"]
RATIO_KEYS = (
    "torch_b1_speedup",
    "ort_fp32_b1_speedup",
    "ort_int8_b1_speedup",
    "int8_vs_teacher_fp32_b1_speedup",
)
BACKENDS = ("torch", "ort_fp32", "ort_int8")


def _section_speed(doc: Doc, r: ReportInput) -> None:
    """Speed."""
    sp = r.bench.get("sections", {}).get("speed", {})
    doc.h(f"Speed and size at {sp.get('img_size', 224)} px" if sp else "Speed and size")
    if not sp:
        return
    models = [x for x in sp.get("models", []) if "error" not in x]
    plot_speed(models, r.out / "speed.png", f"batch-1 latency vs FLOPs ({sp.get('threads')} thread(s))")
    doc.img("speed.png", "latency vs FLOPs")
    bs = sp.get("batch", 32)
    hdr = SPEED_COLUMNS + [f"torch b{bs} img/s", f"ORT fp32 b{bs} img/s", f"ORT int8 b{bs} img/s"]
    fixed = ("name", "role", "img_size", "params_m", "gflops")
    trs = [
        [x[k] for k in fixed]
        + [x.get("onnx_fp32_mb"), x.get("onnx_int8_mb")]
        + [_cell(x, be, k) for k in ("b1_median_ms", "throughput_images_per_s") for be in BACKENDS]
        for x in models
    ]
    doc.table(hdr, trs)
    for x in models:
        for be in BACKENDS:
            if "error" in x.get(be, {}):
                doc.p(f"{x['name']} {be} failed: {x[be]['error']}")
    for x in sp.get("models", []):
        if "error" in x:
            doc.p(f"{x['name']}: not measured ({x['error']})")
    cap = (
        f" (each timed loop capped at {_f(sp['max_seconds_b1'], 0)} s / {_f(sp['max_seconds_throughput'], 0)} s, "
        "at least 3 runs; the runs actually timed are in the JSON)"
        if sp.get("max_seconds_b1")
        else ""
    )
    doc.p(
        f"Method: {sp.get('method')}. Batch-1: {sp.get('reps_b1')} timed runs after {sp.get('warmup', 3)} warm-up "
        f"runs; batch {bs}: {sp.get('reps_throughput')} timed runs after 1 warm-up{cap}; medians. "
        "int8: static QDQ for CNNs, dynamic for transformers."
    )
    if sp.get("ratios"):
        doc.h("Student vs teacher, same run", 3)
        fixed = ("student", "teacher", "img_size", "params_reduction", "gflops_reduction")
        doc.table(
            RATIO_COLUMNS, [[x[k] for k in fixed] + [x.get(k) for k in RATIO_KEYS] for x in sp["ratios"]]
        )


def _section_accuracy(doc: Doc, r: ReportInput) -> None:
    """Accuracy detail + samples."""
    acc = r.bench.get("sections", {}).get("accuracy")
    if acc:
        doc.h("Zero-shot accuracy of the given models")
        rws = [["teacher", acc.get("teacher_top1"), acc.get("teacher_top5"), None, None]]
        for k in sorted(acc):
            if k.endswith("_top1") and k != "teacher_top1":
                role = k[:-5]
                agr = acc.get("agreement") if role == "student" else acc.get(f"{role}_agreement")
                ret = acc.get("retention") if role == "student" else acc.get(f"{role}_retention")
                rws.append([role, acc[k], acc.get(f"{role}_top5"), agr, ret])
        doc.table(["model", "top-1", "top-5", "agreement with teacher", "retention"], rws)
        doc.p(
            f"{acc.get('n')} images of {acc.get('data')}; teacher {acc.get('teacher_id')}; prompts "
            f"{acc.get('templates')}."
        )
        if acc.get("samples"):
            doc.h("Sample labels (student, open vocabulary)", 3)
            doc.table(
                ["image", "true class", "top-3 labels (softmax score)"],
                [
                    [
                        s["image"],
                        s.get("true"),
                        ", ".join(f"{lb} ({sc:.2f})" for lb, sc in zip(s["labels"], s["scores"])),
                    ]
                    for s in acc["samples"]
                ],
            )


def _section_training_cost(doc: Doc, r: ReportInput) -> None:
    """Training cost."""
    secs = r.bench.get("sections", {})
    tc = secs.get("train_cost", {}).get("runs", {})
    doc.h("Training cost: cached teacher vs teacher run online")
    if tc:
        doc.table(
            [
                "run",
                "teacher",
                "student",
                "images",
                "cache build s",
                "cached epoch s",
                "online epoch s",
                "speed-up",
                "target 5x",
                "break-even epochs",
            ],
            [
                [
                    k,
                    v["teacher"],
                    f"{v['student']} @ {v['student_img_size']} px",
                    v["n_images"],
                    v["cache_build_seconds"],
                    v["cached"]["epoch_seconds"],
                    v["online"]["epoch_seconds"],
                    v["speedup_cached_vs_online"],
                    "met" if v["target_met"] else "not met",
                    v.get("break_even_epochs"),
                ]
                for k, v in tc.items()
            ],
        )
        doc.p(
            (
                secs["train_cost"].get("note", "")
                + " Method: "
                + next(iter(tc.values())).get("method", "")
                + "."
            ).strip()
        )
    else:
        doc.p("not measured in this run")


def _section_lab_results(doc: Doc, r: ReportInput) -> None:
    """Lab results of the other parts."""
    fid = r.fid
    doc.h("Fidelity: lab results of the other parts of the project")
    for area, entry in fid.get("areas", {}).items():
        doc.h(f"{area}: {entry['measures']}", 3)
        if entry["status"] != "measured":
            errs = [f"{f['file']}: {f['error']}" for f in entry["files"] if "error" in f]
            doc.p("not yet measured" + (f" ({'; '.join(errs)})" if errs else ""))
            continue
        for f in entry["files"]:
            if "error" in f:
                doc.p(f"{f['file']}: {f['error']}")
                continue
            mets = list((f.get("metrics") or {}).items())
            doc.p(
                f"{f['file']}"
                + (f" ({f['date']})" if f.get("date") else "")
                + f": {len(mets)} metrics"
                + (" (first 40 shown)" if len(mets) > 40 else "")
            )
            tgt = target_rows(f.get("targets"))
            if tgt:
                doc.table(["target", "value", "target value", "met"], tgt)
            if mets:
                # 4 decimals: a top-1 of 0.8042 vs 0.8012 is the 0.3-point difference the labs are about
                doc.table(["metric", "value"], [[k, _f(v, 4)] for k, v in mets[:40]])
            if f.get("samples"):
                doc.table(["sample"], [[json.dumps(s, ensure_ascii=False)[:300]] for s in f["samples"]])
    if fid.get("other"):
        doc.p("Other results files: " + ", ".join(o["file"] for o in fid["other"]))


def _section_curves(doc: Doc, r: ReportInput) -> None:
    """Curves."""
    bench = r.bench
    fid = r.fid
    out = r.out
    doc.h("Training curves")
    curves = _curves(bench, fid)
    plot_curves(curves, out / "curves.png")
    doc.img("curves.png", "training curves")
    if curves:
        doc.p("Curves: " + ", ".join(f"{k} ({len(v)} epochs)" for k, v in curves.items()))
    else:
        doc.p("No training history found yet (lab runs write history.json beside their checkpoints).")


def _section_energy(doc: Doc, r: ReportInput) -> None:
    """Energy."""
    secs = r.bench.get("sections", {})
    en = secs.get("energy")
    doc.h("Energy per image")
    if en:
        doc.table(
            [
                "model",
                "px",
                "GFLOPs",
                "estimate J/image",
                "measured J/image (RAPL)",
                "CPU core-s/image (measured)",
                "method",
            ],
            [
                [
                    r["name"],
                    r["img_size"],
                    r["gflops"],
                    r["estimate_joules_per_image"],
                    r.get("measured_joules_per_image"),
                    r.get("cpu_core_seconds_per_image"),
                    r["method"],
                ]
                for r in en["rows"]
            ],
        )
        doc.p(
            (
                "RAPL counters were read on this machine. "
                if en["rapl_available"]
                else "RAPL energy counters are not readable on this machine, so energy is an ESTIMATE: "
                f"GFLOPs x {en['joules_per_gflop_assumed']} J/GFLOP (an assumption; only the ratios between models are "
                "meaningful). "
            )
            + "CPU core-seconds per image are measured (batch throughput x threads)."
        )
    else:
        doc.p("not measured in this run")


def _section_gpu(doc: Doc, r: ReportInput) -> None:
    """GPU."""
    bench = r.bench
    secs = r.bench.get("sections", {})
    doc.h("GPU throughput")
    g = secs.get("gpu")
    if g:
        doc.table(
            [
                "device",
                "precision",
                "channels_last",
                "student",
                "px",
                "batch",
                "workers",
                "data loading only img/s",
                "distillation img/s",
                "distillation / loading",
            ],
            [
                [
                    g["device"],
                    g["precision"],
                    g["channels_last"],
                    g["student"],
                    g["img_size"],
                    g["batch_size"],
                    g["workers"],
                    g["data_loading_images_per_s"],
                    g["distill_images_per_s"],
                    g["distill_vs_loading"],
                ]
            ],
        )
    else:
        doc.p(bench.get("skipped", {}).get("gpu", "not measured"))


def _recall_rows(stage: dict[str, Any], roles: Sequence[tuple[str, str]]) -> list[list[Any]]:
    keys = [f"{d}_r{k}" for d in ("i2t", "t2i") for k in (1, 5, 10)]
    return [
        [label] + [_f(stage.get(f"{role}_{k}"), 3) for k in keys]
        for role, label in roles
        if f"{role}_t2i_r5" in stage
    ]


def _search_table(doc: Doc, search: dict) -> None:
    """Each model's top photo per free-text query (its first human caption) and precision@5."""
    if not search:
        return
    roles = list(search)
    doc.p(
        "Free-text queries on the test photos: each model's top photo (its first human caption; Flickr8k's "
        "photos are not in the repository) and precision@5, the share of the top 5 whose captions mention "
        "the query's key words."
    )
    rows = []
    for qi, q in enumerate(search[roles[0]]["results"]):
        row = [q["query"]]
        for role in roles:
            res = search[role]["results"][qi]
            top = res["hits"][0]
            row.append(f"{top.get('caption', top['image'])} (P@5 {_f(res.get('precision_at_k'), 1)})")
        rows.append(row)
    rows.append(["mean precision@5"] + [_f(search[x].get("mean_precision_at_k"), 3) for x in roles])
    doc.table(["query", *roles], rows)


def _section_photos(doc: Doc, r: ReportInput) -> None:
    """Headline: the lab on real photos (experiments/flickr8k_lab.yaml)."""
    p = (r.results or r.out) / "flickr8k_lab.json"
    if not p.is_file():
        return
    lab = read_json(p)
    st = lab.get("stages", {})
    doc.h("Real photos: an open-vocabulary teacher and its students on Flickr8k")
    doc.p(
        "experiments/flickr8k_lab.yaml: a ResNet-18 image tower (128 px) trained with the LiT objective against "
        "the frozen all-MiniLM-L6-v2 text tower on Flickr8k's 6,000 train photos and their captions; students "
        "distilled from its cache of 8 views per train photo without labels or captions; image<->text Recall@K "
        f"on {st.get('test_students', st.get('test', {})).get('n_images', '?')} test photos (5 captions each)."
    )
    rows = _recall_rows(st.get("test", {}), [("teacher", "teacher ResNet-18, 128 px")])
    rows += _recall_rows(
        st.get("test_students", {}),
        [("shufflenet", "student ShuffleNetV2 x1.0, 160 px"), ("mnv3", "student MobileNetV3-Large, 160 px")],
    )
    rows += _recall_rows(
        st.get("test_bundle", {}),
        [
            ("bundle_fp32", "ShuffleNetV2 bundle fp32 (ONNX Runtime)"),
            ("bundle_int8", "ShuffleNetV2 bundle int8"),
        ],
    )
    if rows:
        doc.table(["model", "i2t R@1", "i2t R@5", "i2t R@10", "t2i R@1", "t2i R@5", "t2i R@10"], rows)
    cz = {
        **st.get("cifar_zero_shot", {}),
        **{k: v for k, v in st.get("cifar_bundle", {}).items() if "bundle" in k},
    }
    zs = [[k.removesuffix("_top1"), _f(v, 4)] for k, v in cz.items() if k.endswith("_top1")]
    if zs:
        n = st.get("cifar_zero_shot", {}).get("n", "?")
        doc.p(
            f"CIFAR-10 zero-shot top-1 ({n} test images, prompt ensemble), classes none of them trained on:"
        )
        doc.table(["model", "top-1"], zs)
    tgt = target_rows(lab.get("targets"))
    if tgt:
        doc.table(["target", "value", "target value", "met"], tgt)
    _search_table(doc, st.get("search", {}).get("models", {}))
    fig = sample_photo_figure(r.out)
    if fig:
        doc.img(fig, "sample photos with the shipped models' captions and free-text queries")


def _section_lab_v3(doc: Doc, r: ReportInput) -> None:
    """Reference lab v3 (experiments/flickr8k_lab_v3.yaml), as far as it has run."""
    section_lab_v3(doc, r.results or r.out)


SECTIONS = [
    _section_lab_v3,
    _section_photos,
    _section_headline,
    _section_pareto,
    _section_speed,
    _section_accuracy,
    _section_training_cost,
    _section_lab_results,
    _section_curves,
    _section_energy,
    _section_gpu,
    section_published_numbers,
]  # the page, in order
