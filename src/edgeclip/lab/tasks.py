"""The lab's tasks: what one experiment stage runs (``edgeclip lab tasks`` lists them).

A task is ``(config dict, stage folder, context) -> JSON-able result dict``; its config is the experiment's base
config for the task overridden by the stage's ``set``. Tasks are thin: each hands its config to one library or
training call and returns the figures the experiment's metrics point at.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from edgeclip.core.errors import EdgeClipError
from edgeclip.core.registry import Registry

TASKS: Registry[Callable[[dict, Path, dict], dict]] = Registry("lab task")


def _minutes(history: dict) -> float:
    return history.get("train_seconds", 0.0) / 60


def _students(cfg: dict) -> dict:
    """A stage's ``students: {role: CHECKPOINT or {bundle: DIR, precision, text_precision}}`` as embedders
    (precisions: auto | fp32 | int8; text_precision: the bundled text tower's)."""
    from edgeclip.runtime.labeler import Labeler
    from edgeclip.zeroshot.embedder import BundleEmbedder, load_embedder

    out = {}
    for role, s in (cfg.get("students") or {}).items():
        if isinstance(s, dict):
            if set(s) - {"bundle", "precision", "text_precision"} or "bundle" not in s:
                raise EdgeClipError(
                    f"student {role}: expected a checkpoint or {{bundle, precision, text_precision}}, got {s}"
                )
            lab = Labeler(
                s["bundle"],
                s.get("precision", "auto"),
                threads=2,
                text_precision=s.get("text_precision", "auto"),
            )
            out[role] = BundleEmbedder(lab)
        else:
            out[role] = load_embedder(teacher=cfg.get("teacher"), student=s)
    return out


def _teacher_and_students(cfg: dict) -> tuple:
    """(the stage's teacher embedder or None, its students) for the tasks that score several models."""
    from edgeclip.zeroshot.embedder import load_embedder

    teacher = cfg.get("teacher")
    return (load_embedder(teacher=teacher) if teacher else None), _students(cfg)


@TASKS.register("extract", help="unpack tar archives once: {archives: [...], into: DIR}")
def _extract(cfg: dict, out: Path, ctx: dict) -> dict:
    from edgeclip.data.sources import ensure_extracted

    into = Path(cfg.get("into") or out)
    for a in cfg.get("archives") or []:
        if not Path(a).is_file():
            raise EdgeClipError(
                f"archive not found: {a} (is the shared data folder there? EDGECLIP_SHARED_DATA)"
            )
        ensure_extracted(Path(a), into)
    return {"path": str(into)}


@TASKS.register("reference-teacher", help="train the reference-lit teacher (train_reference arguments)")
def _reference_teacher(cfg: dict, out: Path, ctx: dict) -> dict:
    from edgeclip.train.reference import train_reference

    # the committed experiments give epochs, batch_size, lr, ... beside the task keys: train_reference's shape
    cfg = dict(cfg)
    hist = train_reference(cfg.pop("data"), out, resume=True, progress=False, **cfg)
    return {
        "teacher": f"reference-lit:{out / 'teacher.pt'}",
        "epochs": len(hist["epochs"]),
        "train_minutes": _minutes(hist),
        "curve": [{k: e.get(k) for k in ("epoch", "loss", "acc", "val_top1")} for e in hist["epochs"]],
    }


@TASKS.register("cache", help="teacher-embedding cache: {teacher, data, views, batch_size}")
def _cache(cfg: dict, out: Path, ctx: dict) -> dict:
    from edgeclip.data.sources import open_source
    from edgeclip.models.teachers import load_teacher
    from edgeclip.train.cache import build_cache

    s = build_cache(
        open_source(cfg["data"]),
        load_teacher(cfg["teacher"]),
        out,
        views=int(cfg.get("views", 1)),
        batch_size=int(cfg.get("batch_size", 64)),
        progress=False,
    )
    return {"cache": str(out), **s.as_dict()}


@TASKS.register("distill", help="label-free distillation (DistillConfig keys)")
def _distill(cfg: dict, out: Path, ctx: dict) -> dict:
    from edgeclip.core.config import build_dataclass
    from edgeclip.train.distill import DistillConfig, distill

    dc = build_dataclass(DistillConfig, {**cfg, "out": str(out)})
    hist = distill(dc, resume=True, progress=False)
    return {
        "student": str(out / "student.pt"),
        "epochs": len(hist["epochs"]),
        "train_minutes": _minutes(hist),
        "curve": [{k: e.get(k) for k in ("epoch", "loss", "cos")} for e in hist["epochs"]],
    }


@TASKS.register(
    "eval", help="zero-shot top-1/top-5 on an ImageFolder: {data, teacher, students: {role: ckpt}}"
)
def _eval(cfg: dict, out: Path, ctx: dict) -> dict:
    from edgeclip.core.prompts import DEFAULT_TEMPLATES
    from edgeclip.zeroshot.embedder import load_embedder
    from edgeclip.zeroshot.evaluate import evaluate

    res = evaluate(
        load_embedder(teacher=cfg["teacher"]),
        _students(cfg),
        cfg["data"],
        cfg.get("templates") or DEFAULT_TEMPLATES,
        batch_size=int(cfg.get("batch_size", 256)),
        max_images=int(cfg.get("max_images", 0)),
    )
    return {k: v for k, v in res.items() if k != "classes"}


@TASKS.register(
    "edgevl-curate", help="EdgeVL curation by teacher confidence (curate() arguments + data, derive)"
)
def _edgevl_curate(cfg: dict, out: Path, ctx: dict) -> dict:
    from edgeclip.core.config import build_dataclass
    from edgeclip.train.curate import CurateConfig, run_curate

    res = run_curate(build_dataclass(CurateConfig, {"plot": False, **cfg, "out": str(out)}))
    return {
        "manifest": str(out / "manifest.json"),
        **{k: v for k, v in res.items() if not isinstance(v, (list, dict))},
    }


@TASKS.register(
    "edgevl-distill", help="EdgeVL stage 1: one student for RGB and the other modality (PairDistillConfig)"
)
def _edgevl_distill(cfg: dict, out: Path, ctx: dict) -> dict:
    from edgeclip.core.config import build_dataclass
    from edgeclip.train.edgevl import PairDistillConfig, distill_pairs

    hist = distill_pairs(build_dataclass(PairDistillConfig, {**cfg, "out": str(out)}), resume=True)
    return {
        "student": str(out / "student.pt"),
        "epochs": len(hist["epochs"]),
        "train_minutes": _minutes(hist),
    }


@TASKS.register("edgevl-qat", help="EdgeVL stage 2: QAT (+ semi-hard triplet) to int8 ONNX (QATConfig)")
def _edgevl_qat(cfg: dict, out: Path, ctx: dict) -> dict:
    from edgeclip.core.config import build_dataclass
    from edgeclip.train.edgevl import QATConfig, qat_pairs

    qat_pairs(build_dataclass(QATConfig, {**cfg, "out": str(out)}), resume=True)
    return {"result": str(out / "qat.json")}


@TASKS.register("edgevl-ptq", help="ONNX Runtime static int8 of a stage-1 student: {student, data, ...}")
def _edgevl_ptq(cfg: dict, out: Path, ctx: dict) -> dict:
    from edgeclip.core.config import build_dataclass
    from edgeclip.train.edgevl import PTQConfig, run_ptq

    run_ptq(build_dataclass(PTQConfig, {**cfg, "out": str(out)}))
    return {"result": str(out / "ptq.json")}


@TASKS.register(
    "edgevl-eval", help="top-1 per modality: {data, student, onnx: [qat.json, ...], derive, classes}"
)
def _edgevl_eval(cfg: dict, out: Path, ctx: dict) -> dict:
    from edgeclip.zeroshot.modalities import evaluate_pair_student

    return evaluate_pair_student(**cfg)


@TASKS.register(
    "edgevl-agreement",
    help="no human labels: each model's reading of the non-RGB frames against the teacher's reading of the paired "
    "RGB frames (top-1 agreement over a vocabulary, mean cosine): {data, split, student, labels, templates, onnx: "
    "{name: qat.json}, rgb_students: {name: ckpt}, derive}",
)
def _edgevl_agreement(cfg: dict, out: Path, ctx: dict) -> dict:
    from edgeclip.zeroshot.modalities import evaluate_agreement

    return evaluate_agreement(**cfg)


# --------------------------------------------------------------------------------------- edge bundle
@TASKS.register(
    "bundle",
    help="edge bundle of a student (export_bundle arguments: student, labels or data, calib, eval_data, ...) "
    "+ batch-1 latency (latency_sizes) and a loopback load test of `edgeclip serve` (load_test: {requests, "
    "concurrency})",
)
def _bundle(cfg: dict, out: Path, ctx: dict) -> dict:
    import torch

    from edgeclip.core.prompts import class_names
    from edgeclip.data.sources import open_source
    from edgeclip.export.bundle import export_bundle, ort_latency_ms
    from edgeclip.models import load_student
    from edgeclip.models.cost import latency_ms

    cfg = dict(cfg)
    sizes, threads = cfg.pop("latency_sizes", [224]), int(cfg.pop("threads", 2))
    load = cfg.pop("load_test", {"requests": 200, "concurrency": 16})
    student = cfg.pop("student")
    labels = cfg.pop("labels", None) or class_names(open_source(cfg["eval_data"]).classes)
    folder = out / "bundle"
    man = export_bundle(student, folder, labels, overwrite=True, **cfg)
    st, pp, _ = load_student(student)
    latency = {}
    for size in sorted({*map(int, sizes), pp.size}):
        x = torch.randn(1, 3, size, size)
        with torch.no_grad():
            lt = latency_ms(lambda x=x: st(x), warmup=5, reps=30)
        lf = ort_latency_ms(folder / "model.onnx", size, threads=threads)
        l8 = ort_latency_ms(folder / "model.int8.onnx", size, threads=threads)
        latency[f"{size}px"] = {
            "torch_fp32_ms": lt["median_ms"],
            "bundle_fp32_ms": lf["median_ms"],
            "bundle_int8_ms": l8["median_ms"],
        }
    res = {
        "bundle": str(folder),
        "accuracy": man.get("accuracy"),
        "parity": man["parity"],
        "sizes_bytes": {k: v["bytes"] for k, v in man["files"].items()},
        "latency_batch1": latency,
        "threads": threads,
    }
    if load and man.get("accuracy"):
        res["load_test"] = _load_test(folder, cfg["eval_data"], threads, **load)
    return res


def _load_test(folder: Path, data: str, threads: int, requests: int = 200, concurrency: int = 16) -> dict:
    from edgeclip.data.sources import open_source
    from edgeclip.serve.app import create_app
    from edgeclip.serve.loadtest import load_test, running_server

    image = Path(open_source(data).records[0].path).read_bytes()
    with running_server(create_app(folder, threads=threads)) as url:
        r = load_test(url, image, requests=requests, concurrency=concurrency)
    return {k: r[k] for k in ("requests", "concurrency", "errors", "p50_ms", "p95_ms", "requests_per_s")}


# ----------------------------------------------------------------------------------------- captioner
@TASKS.register(
    "caption-train", help="train a captioner: CaptionTrainConfig keys (config: a shipped config name as base)"
)
def _caption_train(cfg: dict, out: Path, ctx: dict) -> dict:
    from edgeclip.core.config import build_dataclass, load_config
    from edgeclip.train.caption import CaptionTrainConfig, train_captioner

    cfg = dict(cfg)
    base = load_config(cfg.pop("config")) if cfg.get("config") else {}
    for k, v in cfg.items():
        base[k] = {**base[k], **v} if isinstance(v, dict) and isinstance(base.get(k), dict) else v
    hist = train_captioner(
        build_dataclass(CaptionTrainConfig, {**base, "out": str(out)}), resume=True, progress=False
    )
    return {
        "captioner": str(out / "captioner.pt"),
        "selected_epoch": hist["best"].get("best_epoch"),
        "val_cider_selected": hist["best"].get("best"),
        "epochs_run": len(hist["epochs"]),
        "stopped_early_at": hist.get("stopped_early_at"),
        "train_minutes": _minutes(hist),
        "params": hist.get("params"),
        "data": hist.get("data", {}).get("train"),
        "curve": [
            {k: e.get(k) for k in ("epoch", "loss", "ce", "mse", "spatial", "val_cider") if k in e}
            for e in hist["epochs"]
        ],
    }


def _caption_set(cfg: dict):
    from edgeclip.data.captions import load_captions

    cs = load_captions(cfg["data"], cfg.get("images"), cfg.get("split", "test"), cfg.get("splits"))
    if cfg.get("max_images"):
        cs.items = cs.items[: int(cfg["max_images"])]
    return cs


@TASKS.register(
    "caption-eval",
    help="caption a split and score it (BLEU/METEOR/ROUGE-L/CIDEr): {captioner, data, images, split, beams, "
    "samples} + how much the decoder uses the image (grounding)",
)
def _caption_eval(cfg: dict, out: Path, ctx: dict) -> dict:
    from edgeclip.models.captioner import load_captioner
    from edgeclip.runtime.decode import Decoding
    from edgeclip.train.caption import evaluate_captioner, image_grounding

    model, pp, ck = load_captioner(cfg["captioner"])
    cs = _caption_set(cfg)
    decoding = {
        k: cfg[k] for k in ("max_len", "length_penalty", "repetition_penalty", "no_repeat_ngram") if k in cfg
    }
    res: dict = {"n_images": len(cs.items), "selected_epoch": (ck.get("extra") or {}).get("epoch")}
    for beam in cfg.get("beams", [5, 1]):
        ev = evaluate_captioner(
            model, pp, cs, Decoding.of(decoding, beam=beam), samples=int(cfg.get("samples", 15))
        )
        key = "greedy" if int(beam) == 1 else f"beam{beam}"
        res[key] = {k: v for k, v in ev.items() if k != "captions"}
        res[key]["distinct_captions"] = len(set(ev["captions"].values()))
    if cfg.get("grounding", True):
        res["grounding"] = image_grounding(model, pp, cs)
    return res


@TASKS.register(
    "caption-speed",
    help="captioner images/s end to end (greedy / beam 5, batch 1 / 32) in torch and, exported, in the torch-free "
    "runtime (ONNX Runtime), and its params / GFLOPs: {captioner} or, for the worst case (untrained weights decode "
    "max_len steps), {config, data} with seeded random weights",
)
def _caption_speed(cfg: dict, out: Path, ctx: dict) -> dict:
    from edgeclip.lab.caption_speed import caption_speed_stage

    return caption_speed_stage(cfg, out)


# ------------------------------------------------------------------------------------------- streams
@TASKS.register(
    "stream",
    help="edgeclip watch on a generated 1280x720 H.264 slideshow of real photos: int8 / fp32 bundle vs the "
    "teacher's tower, fps, latency, triggers' precision / recall, text-query latency (lab/stream.py)",
)
def _stream(cfg: dict, out: Path, ctx: dict) -> dict:
    from edgeclip.lab.stream import stream_benchmark

    return stream_benchmark(cfg, out)


@TASKS.register(
    "speed",
    help="params, GFLOPs, batch-1 latency and throughput of {models: [clip:ARCH[@SIZE][+reparam], NAME, "
    "ckpt:PATH, teacher:SPEC]} on {backends} with {threads}, int8 calibrated on {calibration: [folders]} "
    "(lab/speed.py)",
)
def _speed(cfg: dict, out: Path, ctx: dict) -> dict:
    from edgeclip.lab.speed import speed_stage

    return speed_stage(cfg, out, ctx.get("log", print))


@TASKS.register(
    "fleet",
    help="the fleet simulation: device processes uploading through a fault-injecting proxy to a collector that is "
    "killed mid-run, a campaign pushed mid-run; lost/duplicated events, seconds to searchable, the teacher "
    "cascade's precision, novelty, ingest throughput (lab/fleet.py)",
)
def _fleet(cfg: dict, out: Path, ctx: dict) -> dict:
    from edgeclip.lab.fleet import fleet_benchmark

    return fleet_benchmark(cfg, out)


@TASKS.register(
    "int8-speed",
    help="per student model: fp32 vs every int8 variant at batch 1 / 32, fidelity, the export's choice, and the "
    "other runtimes' levers (OpenVINO, ExecuTorch XNNPACK, fixed shapes, offline graphs; lab/int8speed.py)",
)
def _int8_speed(cfg: dict, out: Path, ctx: dict) -> dict:
    from edgeclip.lab.int8speed import int8_speed_benchmark

    return int8_speed_benchmark(cfg, out)


@TASKS.register(
    "scale",
    help="the teacher cache on 1 vs 2 torchrun workers, a 1M-key cache index opened in a fresh process, and the "
    "distillation data path: decode-only vs full-step images/s (lab/scale.py)",
)
def _scale(cfg: dict, out: Path, ctx: dict) -> dict:
    from edgeclip.lab.scale import scale_benchmark

    return scale_benchmark(cfg, out)


# ------------------------------------------------------------------------------ open-vocabulary teachers
@TASKS.register(
    "caption-teacher",
    help="an open-vocabulary reference-lit teacher on a caption set (CaptionTeacherConfig keys + train: {...})",
)
def _caption_teacher(cfg: dict, out: Path, ctx: dict) -> dict:
    from edgeclip.core.config import build_dataclass
    from edgeclip.train.reference import CaptionTeacherConfig, run_caption_teacher

    hist = run_caption_teacher(
        build_dataclass(CaptionTeacherConfig, {**cfg, "out": str(out)}), resume=True, progress=False
    )
    keys = ("epoch", "loss", "acc", "val_i2t_r1", "val_i2t_r5", "val_i2t_r10", "val_t2i_r1", "val_t2i_r5")
    keys += ("val_t2i_r10",)
    last = hist["epochs"][-1] if hist["epochs"] else {}
    return {
        "teacher": f"reference-lit:{out / 'teacher.pt'}",
        "epochs": len(hist["epochs"]),
        "train_minutes": _minutes(hist),
        "curve": [{k: e.get(k) for k in keys} for e in hist["epochs"]],
        "val": {
            k.removeprefix("val_"): v for k, v in last.items() if k.startswith("val_")
        },  # the saved model's
    }


@TASKS.register(
    "choose",
    help="the best of several earlier stages by a validation figure: {candidates: {name: {score: X or [X, ...], "
    "...}}, higher: true} -> the winner's fields + chosen + scores (a list scores its mean; never choose on test)",
)
def _choose(cfg: dict, out: Path, ctx: dict) -> dict:
    def score(v) -> float | None:
        s = v.get("score") if isinstance(v, dict) else None
        s = s if isinstance(s, list) and s else [s]
        if not all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in s):
            return None
        return sum(float(x) for x in s) / len(s)

    cands = cfg.get("candidates") or {}
    scores = {k: score(v) for k, v in cands.items()}
    if not cands or None in scores.values():
        raise EdgeClipError(
            "choose: candidates must be {name: {score: NUMBER or [NUMBER, ...], ...}} (at least one)"
        )
    pick = (max if cfg.get("higher", True) else min)(cands, key=lambda k: scores[k])
    return {**cands[pick], "chosen": pick, "scores": scores}


@TASKS.register(
    "photos",
    help="a list file of photos (a source for cache / distill): one split of a caption set {captions, split, "
    "images} and/or more sources {add: [PATH or {path, max_images}]} (folders, ImageFolders, lists), in order, "
    "each photo once; photos of the caption set's other splits are never added",
)
def _photos(cfg: dict, out: Path, ctx: dict) -> dict:
    from edgeclip.core.io import atomic_path
    from edgeclip.data.captions import photo_pool

    paths, counts, skipped = photo_pool(
        cfg.get("captions"),
        cfg.get("split"),
        cfg.get("images"),
        cfg.get("add") or [],
        int(cfg.get("seed", 0)),
    )
    with atomic_path(out / "photos.txt") as tmp:
        tmp.write_text("\n".join(paths) + "\n")
    return {"list": str(out / "photos.txt"), "n": len(paths), "counts": counts, "skipped": skipped}


@TASKS.register(
    "retrieval",
    help="image<->text Recall@1/5/10 on a caption set: {captions, split, teacher, students: {role: ckpt}}",
)
def _retrieval(cfg: dict, out: Path, ctx: dict) -> dict:
    from edgeclip.zeroshot.evaluate import evaluate_retrieval

    return evaluate_retrieval(
        *_teacher_and_students(cfg),
        cfg["captions"],
        cfg.get("images"),
        cfg.get("split", "test"),
        max_images=int(cfg.get("max_images", 0)),
    )


@TASKS.register(
    "search",
    help="free-text image search on a caption set's photos: {captions, split, teacher, students, queries: "
    "[text or {text, must: [words]}], k}",
)
def _search(cfg: dict, out: Path, ctx: dict) -> dict:
    from edgeclip.zeroshot.evaluate import search_images

    return search_images(
        *_teacher_and_students(cfg),
        cfg["captions"],
        cfg["queries"],
        cfg.get("images"),
        cfg.get("split", "test"),
        k=int(cfg.get("k", 5)),
        max_images=int(cfg.get("max_images", 0)),
    )


@TASKS.register(
    "ship",
    help="ship shipped models into the repository: {into, photos (check images), teacher, student, bundle, "
    "captioner, names: {role: file}, card: {role: text}} -> fp16 copies checked against the originals, "
    "model cards and INTO/index.json",
)
def _ship(cfg: dict, out: Path, ctx: dict) -> dict:
    from edgeclip.lab.ship import ship_models

    return ship_models(**cfg)


# ---------------------------------------------------------------- the bench (`edgeclip bench`, configs/bench.yaml)
@TASKS.register(
    "bench-inputs", help="the bench's inputs (a BenchConfig): data, teacher, students, repetitions"
)
def _bench_inputs(cfg: dict, out: Path, ctx: dict) -> dict:
    from edgeclip.lab.suite import bench_inputs

    return bench_inputs(cfg, Path(ctx["vars"]["workdir"]))


def _bench_section(name: str, help: str):
    """Register ``bench-NAME``: the section function of lab.suite over the run's inputs."""

    def task(cfg: dict, out: Path, ctx: dict) -> dict:
        from edgeclip.lab import suite

        inp = suite.inputs_of(ctx)
        log = ctx.get("log", print)
        if name == "energy":
            return suite.bench_energy(inp, log, ctx["stages"].get("speed"))
        return getattr(suite, f"bench_{name}")(inp, log)

    TASKS.register(f"bench-{name.replace('_', '-')}", help=help)(task)


for _name, _help in (
    ("speed", "latency, throughput, size of CLIP towers and students on torch / ORT fp32 / ORT int8"),
    ("train_cost", "one cached vs one online distillation epoch on the same images"),
    ("accuracy", "zero-shot top-1 of the teacher and the students (fp32, ONNX int8), sample labels"),
    ("fidelity", "the lab results beside the bench (results folder)"),
    ("energy", "energy per image from the speed stage of the same run"),
    ("data_path", "decode + augment alone vs the distillation step it feeds"),
    ("gpu", "GPU distillation throughput (AMP + channels_last) vs data loading"),
):
    _bench_section(_name, _help)
