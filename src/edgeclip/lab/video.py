"""Test videos whose content is known: a slideshow of photos, each shown for a known stretch of time, encoded as
H.264 by PyAV (libx264). The ground truth of the triggers' test and the stream benchmark."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from PIL import Image

from edgeclip.core.images import load_image
from edgeclip.core.io import atomic_path


def make_slideshow(
    segments: Sequence[tuple[str | Path, float, str]],
    out: str | Path,
    size: tuple[int, int] = (1280, 720),
    fps: int = 30,
    crf: int = 23,
) -> dict[str, Any]:
    """Encode ``segments`` [(image, seconds, tag), ...] in order into an H.264 MP4 at ``size`` and ``fps``; each
    photo is scaled to fit and letterboxed onto a black frame.
    -> {"path", "fps", "size", "frames", "segments": [{tag, image, start, end}]}."""
    import av
    import numpy as np

    out = Path(out)
    w, h = size
    truth, t = [], 0.0
    with atomic_path(out) as tmp:
        with av.open(str(tmp), mode="w", format="mp4") as c:
            st = c.add_stream("libx264", rate=fps)
            st.width, st.height, st.pix_fmt = w, h, "yuv420p"
            st.options = {"crf": str(crf), "preset": "veryfast"}
            n_total = 0
            for img_path, seconds, tag in segments:
                img = load_image(img_path)
                k = min(w / img.width, h / img.height)  # fit the frame, up or down
                img = img.resize((max(1, round(img.width * k)), max(1, round(img.height * k))), Image.BICUBIC)
                canvas = Image.new("RGB", (w, h))
                canvas.paste(img, ((w - img.width) // 2, (h - img.height) // 2))
                arr = np.asarray(canvas)
                n = max(1, round(seconds * fps))
                for _ in range(n):
                    frame = av.VideoFrame.from_ndarray(arr, format="rgb24")
                    frame.pts = n_total
                    for packet in st.encode(frame):
                        c.mux(packet)
                    n_total += 1
                truth.append({"tag": tag, "image": str(img_path), "start": t, "end": t + n / fps})
                t += n / fps
            for packet in st.encode():
                c.mux(packet)
    return {"path": str(out), "fps": fps, "size": [w, h], "segments": truth, "frames": n_total}


def precision_recall(events_jsonl: str | Path, truth: dict, rule_tags: dict[str, str]) -> dict[str, dict]:
    """Per rule: precision and recall of its kept frames against the segments tagged ``rule_tags[rule]``
    (a kept frame is right when its time stamp lies in such a segment; recall counts the tagged segments with at
    least one kept frame, and the share of the tagged time covered by events)."""
    import json

    p = Path(events_jsonl)
    rows = [json.loads(x) for x in p.read_text().splitlines() if x.strip()] if p.is_file() else []
    out = {}
    for rule, tag in rule_tags.items():
        segs = [s for s in truth["segments"] if s["tag"] == tag]
        kept = [r["t"] for r in rows if r["type"] == "frame" and r["rule"] == rule]
        hit = [any(s["start"] - 1e-6 <= t < s["end"] + 1e-6 for s in segs) for t in kept]
        found = [s for s in segs if any(s["start"] - 1e-6 <= t < s["end"] + 1e-6 for t in kept)]
        out[rule] = {
            "kept_frames": len(kept),
            "precision": sum(hit) / len(kept) if kept else None,
            "segments": len(segs),
            "segments_found": len(found),
            "recall": len(found) / len(segs) if segs else None,
            "events": sum(1 for r in rows if r["type"] == "start" and r["rule"] == rule),
        }
    return out


def frame_at(video: str | Path, t: float) -> Image.Image:
    """The decoded frame shown at ``t`` seconds (an example frame a user would pick from the footage)."""
    from edgeclip.runtime.sources import VideoSource

    last = None
    for fr in VideoSource(str(video)).frames(max(0.0, t - 1.0)):
        if fr.t > t + 1e-6:
            break
        last = fr
    if last is None:
        raise ValueError(f"{video} has no frame at {t} s")
    return last.full()
