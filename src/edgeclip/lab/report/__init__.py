"""``edgeclip report``: one HTML page + a Markdown twin from a bench JSON (and the lab results).

What a reader gets: what the student keeps (accuracy retention, int8 retention, lab results of the
other parts), what it gains (speed-up, size), a Pareto plot of accuracy vs latency, speed plots,
training curves, sample labels/captions, energy, training cost, and the published numbers of the
three seed systems beside ours where a comparison means something, with the difference in data.
The lab results are re-read when the report is built, so results that land later are folded in.

- :mod:`.document`: the Markdown/HTML document and number formatting;
- :mod:`.figures`: the plots;
- :mod:`.sections`: the page's sections in order; :mod:`.published`: the seed systems' figures beside ours.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from edgeclip.core.errors import EdgeClipError
from edgeclip.core.io import atomic_path, read_json
from edgeclip.lab.report.document import Doc, fmt
from edgeclip.lab.report.document import fmt as _f
from edgeclip.lab.report.figures import pareto_front, pareto_points
from edgeclip.lab.report.sections import SECTIONS, ReportInput, target_rows

__all__ = ["SECTIONS", "Doc", "build_report", "fmt", "pareto_front", "pareto_points", "target_rows"]


def build_report(
    bench_json: str | Path, out_dir: str | Path, results_dir: str | Path | None = None
) -> dict[str, str]:
    """Write ``out_dir/index.html``, ``out_dir/report.md`` and the plots; returns their paths."""
    from edgeclip.lab.fidelity import collect_lab_results

    bp = Path(bench_json)
    if not bp.is_file():
        raise EdgeClipError(f"bench results not found: {bp} (run `edgeclip bench --out {bp.parent}` first)")
    try:
        bench = read_json(bp)
    except json.JSONDecodeError as e:
        raise EdgeClipError(f"{bp} is not valid JSON ({e.msg}, line {e.lineno})") from None
    if not isinstance(bench, dict) or bench.get("kind") != "edgeclip-bench/1":
        raise EdgeClipError(
            f"{bp} is not an edgeclip bench result (kind: {bench.get('kind') if isinstance(bench, dict) else '?'})"
        )
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    fid = collect_lab_results(
        results_dir or bp.parent
    )  # re-read: lab results that landed since the bench run
    m = bench.get("machine", {})
    doc = Doc("edgeclip benchmark: what the student gains and what it loses")
    doc.p(
        f"Run {bench.get('date')} ({bench.get('mode')} mode) on {m.get('cpu_model', m.get('processor', '?'))}, "
        f"{m.get('cpu_count')} logical CPUs, {bench.get('threads')} torch/ORT thread(s); torch {m.get('torch')}, "
        f"onnxruntime {m.get('onnxruntime')}, timm {m.get('timm')}, open_clip {m.get('open_clip')}. "
        f"Budget: {_f(bench.get('budget', {}).get('minutes'), 1)} minutes on "
        f"{bench.get('budget', {}).get('device', 'cpu')}. "
        f"Load average at start / end: {_load(bench.get('load_average_start'))} / "
        f"{_load(bench.get('load_average_end'))}: "
        "the CPU is shared with other jobs, so absolute timings are noisy; ratios come from the same run."
    )
    if bench.get("skipped"):
        doc.p("Not measured in this run: " + "; ".join(f"{k}: {v}" for k, v in bench["skipped"].items()))

    r = ReportInput(bench, fid, out, Path(results_dir or bp.parent))
    for section in SECTIONS:
        section(doc, r)

    md = doc.markdown()
    with atomic_path(out / "report.md") as tmp:
        tmp.write_text(md, encoding="utf-8")
    with atomic_path(out / "index.html") as tmp:
        tmp.write_text(doc.html(), encoding="utf-8")
    return {"html": str(out / "index.html"), "markdown": str(out / "report.md")}


def _load(la: Any) -> str:
    return ", ".join(f"{x:.2f}" for x in la) if isinstance(la, list) else "?"
