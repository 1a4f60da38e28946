"""The stream benchmark (``experiments/stream.yaml``, in ``make bench``): a 1280x720 H.264 slideshow of real photos
with known segments, decoded and labeled by ``edgeclip watch`` with an int8 student bundle at 224 px, and by the
same loop with the teacher's image tower (torch fp32) in the same run; + the bundled text tower's query latency and
the triggers' precision / recall against the segments.

Speed does not depend on the weights, and no pretrained CLIP exists offline: the teacher is open_clip's real
ViT-B-32 architecture with seeded random weights, the student a ShuffleNetV2 x1.0 at 224 px whose BatchNorm
statistics are fitted to the photos. The rules (one per photo, its example a frame of the footage, as a user picks
one with "more like this") make the watcher do all its work, but with random weights their events say nothing
about quality: the triggers are checked against ground truth in tests/test_watch.py, on a student whose features
tell its test photos apart.
"""

from __future__ import annotations

import random
import time
from pathlib import Path
from typing import Any

import numpy as np


class TorchTowerLabeler:
    """The watcher's labeler interface over a teacher's image tower in torch (the comparison the bundle must beat)."""

    has_text_tower = False

    def __init__(self, teacher, threads: int):
        import torch

        from edgeclip.runtime.bundle import LabelSet
        from edgeclip.runtime.preprocess import NumpyPreprocess

        torch.set_num_threads(threads)
        self.teacher = teacher.eval()
        self.preprocess = NumpyPreprocess(teacher.image_size, tuple(teacher.mean), tuple(teacher.std))
        self.logit_scale = teacher.logit_scale
        self.known = LabelSet(["-"], np.ones((1, teacher.embed_dim), np.float32))
        self.name = f"torch:{teacher.id}"

    def embed(self, images) -> np.ndarray:
        import torch

        from edgeclip.runtime.labeler import to_image

        x = torch.from_numpy(self.preprocess.batch([to_image(i) for i in images]))
        with torch.inference_mode():
            return self.teacher.encode_image(x).numpy()


def feature_student(
    teacher,
    photos: list[str],
    out: Path,
    size: int = 224,
    steps: int = 20,
    arch: str = "shufflenet_v2_x1_0",
    name: str = "student.pt",
) -> Path:
    """A student (``arch``, default ShuffleNetV2 x1.0) of ``teacher`` at ``size`` px with BatchNorm statistics fitted
    to ``photos`` (random weights: its embeddings of natural photos are nearly alike, which does not change its
    speed; its activations have the ranges real photos give, which int8 calibration sees)."""
    import torch

    from edgeclip.data.transforms import Preprocess
    from edgeclip.models.student import create_student, save_student
    from edgeclip.runtime.labeler import to_image
    from edgeclip.runtime.preprocess import NumpyPreprocess

    torch.manual_seed(0)
    st = create_student(arch, teacher.embed_dim, img_size=size)
    pp = Preprocess(size=size, mean=tuple(teacher.mean), std=tuple(teacher.std))
    npp = NumpyPreprocess(size, tuple(teacher.mean), tuple(teacher.std))
    x = torch.from_numpy(npp.batch([to_image(p) for p in photos]))
    st.train()
    with torch.no_grad():
        for _ in range(steps):
            st(x[torch.randperm(len(x))[:16]])
    st.eval()
    path = out / name
    save_student(
        st, path, pp, teacher.describe(), {"what": "random features, BatchNorm fitted to the photos"}
    )
    return path


RUN_KEYS = (
    "sampled",
    "wall_seconds",
    "fps_end_to_end",
    "decode_fps",
    "latency_ms",
    "batch_ms",
    "events",
    "kept_frames",
)


def stream_benchmark(cfg: dict, out: Path) -> dict[str, Any]:
    """A slideshow video of real photos watched by the int8 and fp32 student bundles and by torch teachers, with
    one example rule per photo: end-to-end fps, latency, events; -> the results."""
    import torch

    from edgeclip.models.teachers import load_teacher
    from edgeclip.runtime import load_bundle
    from edgeclip.runtime.watch import watch

    threads = int(cfg.get("threads", 2))
    torch.manual_seed(0)
    teacher = load_teacher(cfg.get("teacher", "ViT-B-32:"))  # "ARCH:" with no tag: random weights
    pool, video = _footage(cfg, out)
    bundle = _student_bundle(teacher, pool, out)
    rules = _example_rules(cfg, pool, video, out)
    labelers = [
        ("student_int8", lambda: load_bundle(bundle, precision="int8", threads=threads)),
        ("student_fp32", lambda: load_bundle(bundle, precision="fp32", threads=threads)),
        ("teacher_torch_fp32", lambda: TorchTowerLabeler(teacher, threads)),
    ]
    for spec in cfg.get("more_teachers", []):  # other CLIP towers, for the ratio against a heavier teacher
        labelers.append(
            (
                f"teacher_{spec.rstrip(':')}_torch_fp32",
                lambda s=spec: TorchTowerLabeler(load_teacher(s), threads),
            )
        )
    runs = {}
    for name, make in labelers:
        limit = int(cfg.get("teacher_frames", 120)) if name.startswith("teacher") else 0
        s = watch(
            video["path"],
            make(),
            rules,
            out / f"watch_{name}",
            max_frames=limit,
            progress=False,
            log=lambda s: None,
        )
        runs[name] = {k: s[k] for k in RUN_KEYS}
    res = {
        "video": {k: video[k] for k in ("fps", "size", "frames")}
        | {"segments": len(video["segments"]), "codec": "h264 (libx264, crf 23)"},
        "threads": threads,
        "input_px": 224,
        "runs": runs,
        "fps_end_to_end": runs["student_int8"]["fps_end_to_end"],
        "teacher": teacher.id,
        "teacher_fps": runs["teacher_torch_fp32"]["fps_end_to_end"],
        "ratio_vs_teachers": {
            k: runs["student_int8"]["fps_end_to_end"] / v["fps_end_to_end"]
            for k, v in runs.items()
            if k.startswith("teacher") and v["fps_end_to_end"]
        },
        "text_query": text_query_latency(out / "text", threads) if cfg.get("text_tower", True) else None,
    }
    res["ratio_vs_teacher"] = res["fps_end_to_end"] / res["teacher_fps"] if res["teacher_fps"] else None
    return res


def _footage(cfg: dict, out: Path) -> tuple[list[str], dict]:
    """The photo pool and its slideshow video (each photo shown in several segments, seeded order)."""
    from edgeclip.data.captions import load_captions
    from edgeclip.lab.video import make_slideshow

    cs = load_captions(cfg["captions"], cfg.get("images"), cfg.get("split", "test"))
    photos = [str(it.record().path) for it in cs.items]
    rng = random.Random(int(cfg.get("seed", 0)))
    n_photos = int(cfg.get("photos", 8))
    pool = rng.sample(photos, n_photos)
    order = [pool[i % n_photos] for i in range(int(cfg.get("segments", 16)))]
    rng.shuffle(order)
    seconds = float(cfg.get("seconds_per_photo", 2.0))
    w, h = cfg.get("size", [1280, 720])
    video = make_slideshow(
        [(p, seconds, Path(p).stem) for p in order], out / "slides.mp4", size=(w, h), fps=30
    )
    return pool, video


def _student_bundle(teacher, pool: list[str], out: Path) -> Path:
    from edgeclip.export.bundle import export_bundle

    student = feature_student(teacher, pool, out)
    bundle = out / "bundle"
    calib = write_path_list(pool, out)
    export_bundle(
        student, bundle, ["a photo"], calib=calib, calib_images=len(pool), quant="static", overwrite=True
    )
    return bundle


def _example_rules(cfg: dict, pool: list[str], video: dict, out: Path):
    """One rule per photo, its example a frame of the footage (what a user picks with "more like this")."""
    from edgeclip.lab.video import frame_at
    from edgeclip.runtime.watch import load_rules

    (out / "examples").mkdir(parents=True, exist_ok=True)
    examples = {}
    for p in pool:
        seg = next(sg for sg in video["segments"] if sg["image"] == p)
        examples[Path(p).stem] = str(out / "examples" / f"{Path(p).stem}.jpg")
        frame_at(video["path"], (seg["start"] + seg["end"]) / 2).save(examples[Path(p).stem], quality=95)
    rule_list = [
        {"name": k, "examples": [v], "threshold": 0.5, "min_duration": 0.2, "max_frames": 5}
        for k, v in examples.items()
    ]
    return load_rules(
        {
            "batch": int(cfg.get("batch", 8)),
            "smoothing": float(cfg.get("smoothing", 0.6)),
            "scale": 100,
            "rules": rule_list,
        }
    )


def write_path_list(paths: list[str], out: Path) -> str:
    p = out / "calibration.txt"
    p.write_text("\n".join(paths) + "\n")
    return str(p)


def text_query_latency(folder: Path, threads: int, reps: int = 50) -> dict[str, Any]:
    """The reference teacher's text tower (MiniLM) as a bundle ships it: one new query's latency, fp32 and int8."""
    from edgeclip.export.text import export_text_tower
    from edgeclip.models.teachers.minilm import shared_text_tower
    from edgeclip.runtime.text import TextTower

    class _MiniLM:  # the part of a Teacher the export reads
        spec = "reference-lit text tower (all-MiniLM-L6-v2)"
        text_export = staticmethod(shared_text_tower().text_export)

    folder.mkdir(parents=True, exist_ok=True)
    cfg = export_text_tower(_MiniLM(), folder, ["a photo of a truck."])
    res: dict[str, Any] = {"kind": cfg["kind"], "bytes": cfg["bytes"], "threads": threads}
    for prec in ("fp32", "int8"):
        tower = TextTower(folder, prec, threads)
        tower.embed(["warm up"])
        ms = []
        for i in range(reps):
            t0 = time.perf_counter()
            tower.embed([f"a red truck parked next to building number {i}"])
            ms.append((time.perf_counter() - t0) * 1000)
        res[f"{prec}_ms"] = {
            "p50": float(np.percentile(ms, 50)),
            "p95": float(np.percentile(ms, 95)),
            "reps": reps,
        }
    return res
