"""The report's figures (matplotlib, Agg): accuracy-vs-latency Pareto plot, speed bars, training curves and the
sample-photo grid; each written atomically as PNG."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from edgeclip.core.errors import EdgeClipError
from edgeclip.core.io import atomic_path


def _save_fig(fig, path: Path) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


# ------------------------------------------------------------------------------------------- plots
def pareto_points(bench: dict[str, Any]) -> list[dict[str, Any]]:
    """(name, top-1, batch-1 latency) of the measured teacher/student variants of the accuracy section."""
    acc = bench.get("sections", {}).get("accuracy")
    speed = bench.get("sections", {}).get("speed")
    if not acc or not speed:
        return []
    by_name = {m["name"]: m for m in speed.get("models", [])}
    pts = []
    t = (
        by_name.get(f"teacher:{bench.get('inputs', {}).get('teacher')}")
        if bench.get("inputs", {}).get("teacher")
        else None
    )
    if t is None:
        t = next((m for m in speed.get("models", []) if m["name"].startswith("teacher:")), None)
    if t and "teacher_top1" in acc and "b1_median_ms" in t.get("torch", {}):
        pts.append(
            {
                "name": "teacher (torch fp32)",
                "top1": acc["teacher_top1"],
                "latency_ms": t["torch"]["b1_median_ms"],
                "params_m": t["params_m"],
            }
        )
    for i, ck in enumerate(bench.get("inputs", {}).get("students", [])):
        role = "student" if i == 0 else f"student{i + 1}"
        m = by_name.get(f"ckpt:{ck}")
        if not m:
            continue
        label = Path(ck).parent.name or Path(ck).stem
        # only pairs whose accuracy was measured on that very backend (torch fp32, ONNX Runtime int8)
        for be, key, tag in (
            ("torch", f"{role}_top1", "torch fp32"),
            ("ort_int8", f"{role}_int8_top1", "ONNX int8"),
        ):
            if key in acc and "b1_median_ms" in m.get(be, {}):
                pts.append(
                    {
                        "name": f"{label} ({tag})",
                        "top1": acc[key],
                        "latency_ms": m[be]["b1_median_ms"],
                        "params_m": m["params_m"],
                    }
                )
    return pts


def pareto_front(pts: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Points not dominated by another (higher-or-equal top-1 at lower-or-equal latency, one strictly)."""
    front = []
    for p in pts:
        dominated = any(
            q is not p
            and q["top1"] >= p["top1"]
            and q["latency_ms"] <= p["latency_ms"]
            and (q["top1"] > p["top1"] or q["latency_ms"] < p["latency_ms"])
            for q in pts
        )
        if not dominated:
            front.append(p)
    return sorted(front, key=lambda p: p["latency_ms"])


def plot_pareto(pts: Sequence[dict[str, Any]], path: Path, title: str) -> None:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for p in pts:
        ax.scatter(p["latency_ms"], p["top1"] * 100, s=40)
        ax.annotate(
            p["name"],
            (p["latency_ms"], p["top1"] * 100),
            textcoords="offset points",
            xytext=(5, 4),
            fontsize=8,
        )
    fr = pareto_front(pts)
    ax.plot(
        [p["latency_ms"] for p in fr],
        [p["top1"] * 100 for p in fr],
        "--",
        color="grey",
        lw=1,
        label="Pareto front",
    )
    ax.set_xscale("log")
    ax.set_xlabel("batch-1 latency (ms, log scale)")
    ax.set_ylabel("zero-shot top-1 (%)")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    _save_fig(fig, path)
    plt.close(fig)


def plot_speed(models: Sequence[dict[str, Any]], path: Path, title: str) -> None:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    marks = {
        "torch": ("o", "torch fp32"),
        "ort_fp32": ("s", "ONNX Runtime fp32"),
        "ort_int8": ("^", "ONNX Runtime int8"),
    }
    for be, (mk, lab) in marks.items():
        xs, ys = [], []
        for m in models:
            if "b1_median_ms" in m.get(be, {}):
                xs.append(m["gflops"])
                ys.append(m[be]["b1_median_ms"])
        ax.scatter(xs, ys, marker=mk, label=lab, s=36, alpha=0.8)
    for m in models:
        if "b1_median_ms" in m.get("torch", {}):
            ax.annotate(
                m["name"].replace("timm:", "").replace("clip:", "CLIP "),
                (m["gflops"], m["torch"]["b1_median_ms"]),
                textcoords="offset points",
                xytext=(4, 3),
                fontsize=7,
            )
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("GFLOPs per image")
    ax.set_ylabel("batch-1 latency (ms)")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    _save_fig(fig, path)
    plt.close(fig)


def plot_curves(curves: dict[str, list[float]], path: Path) -> None:
    plt = _plt()
    losses = {k: v for k, v in curves.items() if not k.endswith(("val_top1", "acc"))}
    accs = {k: v for k, v in curves.items() if k.endswith(("val_top1", "acc"))}
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for ax, group, ylab in ((axes[0], losses, "loss / cosine"), (axes[1], accs, "accuracy")):
        for k, ys in group.items():
            ax.plot(range(1, len(ys) + 1), ys, marker=".", label=k)
        ax.set_xlabel("epoch")
        ax.set_ylabel(ylab)
        ax.grid(alpha=0.3)
        if group:
            ax.legend(fontsize=7)
        else:
            ax.text(0.5, 0.5, "no curve measured yet", ha="center", va="center", transform=ax.transAxes)
    _save_fig(fig, path)
    plt.close(fig)


def sample_photo_figure(out: Path, models: Path = Path("models")) -> str | None:
    """scikit-image's sample photos (public domain), each with the shipped captioner's caption and the queries
    it is the shipped student's top photo for; None when the models or scikit-image are not here."""
    if not (models / "index.json").is_file():
        return None
    try:
        from edgeclip.lab.demo_photos import QUERIES, caption_photos, sample_photos
    except ImportError:
        return None
    import tempfile
    import textwrap

    from PIL import Image

    from edgeclip.lab.ship import shipped
    from edgeclip.zeroshot.embedder import load_embedder
    from edgeclip.zeroshot.evaluate import search_images

    idx = shipped(models)
    with tempfile.TemporaryDirectory() as tmp:
        try:
            photos = sample_photos(Path(tmp) / "photos")
        except EdgeClipError:
            return None
        st = load_embedder(teacher=idx["teacher"], student=idx["student"])
        res = search_images(None, {"student": st}, str(photos), QUERIES, k=1)["models"]["student"]["results"]
        best: dict[str, list[str]] = {}
        for row in res:
            best.setdefault(Path(row["hits"][0]["image"]).name, []).append(row["query"])
        caps = caption_photos(idx["captioner"], photos) if idx.get("captioner") else {}
        files = sorted(photos.glob("*.jpg"))
        plt = _plt()
        cols = 4
        rows = (len(files) + cols - 1) // cols
        fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 4.2 * rows))
        for ax in axes.flat:
            ax.axis("off")
        for ax, f in zip(axes.flat, files):
            with Image.open(f) as im:
                ax.imshow(im.convert("RGB"))
            lines = [f.stem]
            if f.name in caps:
                lines.append(f"caption: {caps[f.name]}")
            if f.name in best:
                lines.append("student's top photo for: " + "; ".join(f'"{q}"' for q in best[f.name]))
            ax.set_title("\n".join(textwrap.fill(x, 44) for x in lines), fontsize=8)
        path = out / "photos.png"
        _save_fig(fig, path)
    return path.name
