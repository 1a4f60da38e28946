"""The page ``edgeclip demo`` ends with (``demo_out/index.html``): one self-contained HTML file beside thumbnails of
the sample photos, readable offline in any browser. It shows what the run measured and nothing it did not: each
query's top photos for the teacher, the student and the int8 bundle side by side; each photo with its caption; the
speed table with CLIP-sized image towers; and two sentences of framing."""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any

from edgeclip.core.io import atomic_path

THUMB = 160  # px, the long side of a thumbnail
ROLES = {
    "teacher": "teacher (reference)",
    "student": "student (ShuffleNetV2)",
    "bundle_int8": "int8 bundle, no torch",
}

CSS = """
body { font: 15px/1.45 system-ui, sans-serif; margin: 24px auto; max-width: 1180px; padding: 0 16px; color: #1d2329; }
h1 { font-size: 24px; margin-bottom: 4px; } h2 { font-size: 19px; margin-top: 32px; }
.frame { background: #f3f6f9; border-left: 4px solid #5b7fa6; padding: 10px 14px; }
table { border-collapse: collapse; margin: 8px 0; } td, th { padding: 6px 10px; border-bottom: 1px solid #dde3ea; }
th { text-align: left; background: #f3f6f9; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
.hits { display: flex; gap: 6px; } .hit { width: 104px; font-size: 12px; text-align: center; }
.hit img { width: 100px; height: 100px; object-fit: cover; border: 3px solid transparent; border-radius: 4px; }
.hit.right img { border-color: #2e9d57; } .hit .sc { color: #5c6670; }
.photos { display: grid; grid-template-columns: repeat(auto-fill, minmax(200px, 1fr)); gap: 14px; }
.photo img { width: 100%; height: 150px; object-fit: cover; border-radius: 4px; } .photo p { margin: 4px 0; }
.cap { font-style: italic; } .muted { color: #5c6670; font-size: 13px; }
"""


def _thumbs(out: Path, photos: Path) -> dict[str, str]:
    """{photo name: thumbnail path relative to ``out``}: JPEG thumbnails in out/thumbs."""
    from PIL import Image

    d = out / "thumbs"
    d.mkdir(exist_ok=True)
    rel = {}
    for p in sorted(photos.glob("*.jpg")):
        with Image.open(p) as im:
            im = im.convert("RGB")
            im.thumbnail((THUMB * 2, THUMB * 2))
            with atomic_path(d / p.name) as tmp:
                im.save(tmp, "JPEG", quality=85)
        (d / p.name).chmod(0o644)
        rel[p.name] = f"thumbs/{p.name}"
    return rel


def framing(result: dict[str, Any]) -> list[str]:
    """The two plain sentences: what the shipped models are and are not, and what a real CLIP changes."""
    right, n = result.get("right", {}), len(result.get("queries", {}).get("teacher", {}))
    got = ", ".join(f"the {r.split('_')[0]} {right[r]}" for r in ROLES if r in right)
    return [
        "The shipped models here were trained on this project's machines from 6,000 Flickr8k photos, with no "
        "pretrained weights (a 128-px ResNet-18 teacher locked to the real all-MiniLM-L6-v2 text encoder, and its "
        f"distilled students), so their answers are weak: of these {n} queries, {got} rank the photo that "
        "answers them first, and the captioner knows Flickr8k's scenes rather than these photos.",
        "With a real CLIP teacher (--teacher ViT-B-32:openai, an open_clip weights file or an hf: folder) the same "
        "commands cache, distill, export and serve its student; what changes is the quality of the answers, and "
        "the speed table shows what a student saves against CLIP-sized image towers.",
    ]


def _queries(result: dict, thumbs: dict[str, str]) -> list[str]:
    roles = [r for r in ROLES if r in result["top3"]]
    right = result.get("right", {})
    n = len(result["queries"]["teacher"])
    head = "".join(
        f"<th>{html.escape(ROLES[r])}<br><span class='muted'>right first for {right.get(r, 0)} of {n}</span></th>"
        for r in roles
    )
    rows = [f"<table><tr><th>query</th>{head}</tr>"]
    for q in result["queries"]["teacher"]:
        cells = []
        for r in roles:
            hits = []
            for h in result["top3"][r][q]:
                ok = " right" if result.get("answers", {}).get(q) == h["image"] else ""
                src = thumbs.get(h["image"], "")
                hits.append(
                    f"<div class='hit{ok}'><img src='{html.escape(src)}' alt='{html.escape(h['image'])}'>"
                    f"<br>{html.escape(Path(h['image']).stem)} <span class='sc'>{h['score']:.2f}</span></div>"
                )
            cells.append(f"<td><div class='hits'>{''.join(hits)}</div></td>")
        rows.append(f"<tr><td>{html.escape(q)}</td>{''.join(cells)}</tr>")
    rows.append(
        "</table><p class='muted'>Top 3 photos by cosine; a green frame marks the photo that answers the "
        "query.</p>"
    )
    return rows


def _speed(result: dict) -> list[str]:
    rows = result.get("speed_rows") or []
    if not rows:
        return []
    base = rows[0]["latency_ms"]
    m = result.get("machine", {})
    out = [
        "<table><tr><th>image tower</th><th>input</th><th>params (M)</th><th>GFLOPs</th>"
        "<th>latency, batch 1 (ms)</th><th>vs student</th></tr>"
    ]
    for r in rows:
        out.append(
            f"<tr><td>{html.escape(r['model'])}</td><td class='num'>{r['input_size']} px</td>"
            f"<td class='num'>{r['params_m']:.2f}</td><td class='num'>{r['gflops']:.3f}</td>"
            f"<td class='num'>{r['latency_ms']:.1f}</td><td class='num'>{r['latency_ms'] / base:.1f}x</td></tr>"
        )
    out.append(
        f"</table><p class='muted'>Measured by this run: torch eager, {m.get('torch_threads', '?')} threads, "
        f"{html.escape(str(m.get('cpu_model', m.get('processor', '?'))))}; median of repeated batch-1 calls. "
        "The open_clip towers have random weights: their rows are speed only. "
        f"Load average during the run: {result.get('load_average_1min', 0):.1f}.</p>"
    )
    return out


def _captions(result: dict, thumbs: dict[str, str]) -> list[str]:
    caps = result.get("captions") or {}
    if not caps:
        return ["<p>No captioner is shipped.</p>"]
    out = ["<div class='photos'>"]
    for name, cap in caps.items():
        out.append(
            f"<div class='photo'><img src='{html.escape(thumbs.get(name, ''))}' alt='{html.escape(name)}'>"
            f"<p><b>{html.escape(Path(name).stem)}</b></p><p class='cap'>{html.escape(cap)}</p></div>"
        )
    out.append("</div>")
    return out


def write_demo_page(out: Path, result: dict[str, Any], photos: Path) -> Path:
    """Write ``out/index.html`` (and ``out/thumbs``) from the demo's result; -> the page's path."""
    out = Path(out)
    thumbs = _thumbs(out, photos)
    b = result.get("exported_bundle") or {}
    parts = [
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>",
        "<meta name='viewport' content='width=device-width, initial-scale=1'>",
        f"<title>edgeclip demo</title><style>{CSS}</style></head><body>",
        "<h1>edgeclip demo: the shipped models on real photos</h1>",
        "<div class='frame'>" + "".join(f"<p>{html.escape(s)}</p>" for s in framing(result)) + "</div>",
        "<h2>Free-text queries: teacher, student and int8 bundle side by side</h2>",
        *_queries(result, thumbs),
        "<h2>Each photo with its caption (the shipped captioner, beam 5)</h2>",
        *_captions(result, thumbs),
        "<h2>Speed: the student beside its teacher and CLIP-sized image towers (224 px)</h2>",
        *_speed(result),
    ]
    if b:
        parts.append(
            f"<h2>A fresh int8 bundle</h2><p>Exported by this run to <code>{html.escape(b['path'])}</code> "
            f"(default precision {html.escape(str(b.get('default')))}): its top photo is the torch student's for "
            f"{b['agrees_with_student']:.0%} of the queries, answered without torch.</p>"
        )
    parts.append(
        f"<p class='muted'>Written by <code>edgeclip demo</code> in {result.get('seconds', 0):.0f} s; every figure "
        "on this page is in demo_result.json beside it.</p></body></html>"
    )
    page = out / "index.html"
    with atomic_path(page) as tmp:
        tmp.write_text("\n".join(parts), encoding="utf-8")
    page.chmod(0o644)
    return page
