"""Student checkpoint -> edge bundle folder (ONNX fp32 + int8, labels, preprocessing, manifest, model card).

The folder runs with ``edgeclip.runtime`` (numpy + Pillow + ONNX Runtime only); see
``edgeclip.runtime.bundle`` for the layout. Steps:

1. export the student to ONNX fp32 (dynamic batch; dynamic height/width for CNNs) and check it
   against torch (max abs diff) on the calibration hold-out;
2. int8: ONNX Runtime static QDQ, per-channel, calibrated on the user's images (CNNs), or dynamic
   int8 (transformers); top-1 agreement with fp32 over the label set on the hold-out;
3. labels.json: the labels' teacher text embeddings, computed now with the teacher's text tower;
4. sizes, batch-1 latency, optional zero-shot accuracy on an ImageFolder; MODEL_CARD.md; manifest.json
   (sha256 + size of every file, versions) written last.
"""

from __future__ import annotations

import datetime as _dt
import os
import random
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgeclip.core.errors import EdgeClipError, ImageLoadError
from edgeclip.core.io import sha256_file, write_json
from edgeclip.core.modality import ModalityError
from edgeclip.core.prompts import DEFAULT_TEMPLATES, fill, prompt_ensemble
from edgeclip.export.card import finish_bundle, model_card  # noqa: F401  (model_card: its earlier home)
from edgeclip.export.slim import slim_bundle  # noqa: F401  (its earlier home)
from edgeclip.runtime.bundle import (
    BUNDLE_FORMAT,
    LABELS,
    MANIFEST,
    MODEL_FP32,
    MODEL_INT8,
    PREPROCESS,
    LabelSet,
)
from edgeclip.runtime.preprocess import NumpyPreprocess

QUANT_MODES = ("auto", "static", "dynamic", "none")


def is_transformer(model) -> bool:
    """True when the model has attention blocks (ViT/Swin/...): those get dynamic int8 and a fixed input size."""
    from torch import nn

    return any(
        isinstance(m, nn.MultiheadAttention) or "Attention" in type(m).__name__ for m in model.modules()
    )


def load_calibration(data: str, n: int, preprocess: NumpyPreprocess, seed: int = 0):
    """Up to ``n`` images of ``data`` (any edgeclip source), preprocessed -> ((N,3,S,S) float32, names, skipped)."""
    from edgeclip.data.sources import open_source

    src = open_source(data)
    recs = (
        list(src.records) if not src.is_stream else [r for _, r in zip(range(max(n * 2, n + 16)), iter(src))]
    )
    random.Random(seed).shuffle(recs)
    arrs, names, skipped = [], [], list(src.skipped)
    for r in recs:
        if len(arrs) >= n:
            break
        try:
            if preprocess.modality is not None:  # read as the bundle will read it: own depth and bands
                arrs.append(preprocess.modality_input(r.data if r.data is not None else r.path))
            else:
                arrs.append(preprocess(r.load()))
            names.append(r.name)
        except (ImageLoadError, ModalityError) as e:
            skipped.append(str(e))
    if not arrs:
        raise EdgeClipError(f"no readable calibration images in {data}")
    return np.stack(arrs), names, skipped


def batches_of(x: np.ndarray, bs: int):
    for i in range(0, len(x), bs):
        yield x[i : i + bs]


def int8_parity(fp32_path: Path, int8_path: Path, x: np.ndarray, text_emb: np.ndarray) -> dict[str, float]:
    """Top-1 agreement (over the label set) and embedding cosine of the int8 model with fp32 on ``x``."""
    from edgeclip.runtime.session import ort_session, run_batched
    from edgeclip.zeroshot.scores import topk, unit

    a = unit(run_batched(ort_session(fp32_path), x))
    b = unit(run_batched(ort_session(int8_path), x))
    ta = topk(a, text_emb, 1)
    agree = float((ta == topk(b, text_emb, 1)).mean())
    cos = (a * b).sum(1)
    return {
        "top1_agreement": agree,
        # how many labels fp32 picks at all: 1 makes the agreement say nothing (a feature-less model)
        "fp32_distinct_top1": int(len(np.unique(ta))),
        "mean_cosine": float(cos.mean()),
        "min_cosine": float(cos.min()),
        "n": int(len(x)),
    }


def ort_latency_ms(path: Path, size: int, threads: int = 1, reps: int = 30) -> dict[str, float]:
    """Batch-1 ONNX Runtime latency at ``size`` px (median after warm-up)."""
    from edgeclip.models.cost import latency_ms
    from edgeclip.runtime.session import ort_session

    sess = ort_session(path, threads=threads)
    name = sess.get_inputs()[0].name
    from edgeclip.export.choose import input_channels

    x = np.random.default_rng(0).standard_normal((1, input_channels(sess), size, size)).astype(np.float32)
    return latency_ms(lambda: sess.run(None, {name: x}), warmup=5, reps=reps)


def bundle_accuracy(
    bundle: str | os.PathLike,
    data: str,
    precision: str,
    templates: Sequence[str],
    max_images: int = 0,
    batch_size: int = 256,
    threads: int | None = None,
    text_emb: np.ndarray | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    """Zero-shot top-1 of a bundle on an ImageFolder, through the same loop as ``edgeclip eval``.
    Class-name embeddings: ``text_emb`` (C, D) in class order, else the bundle's own labels.json when it
    names every class."""
    from edgeclip.core.prompts import class_names
    from edgeclip.data.sources import labelled_source
    from edgeclip.runtime import Labeler
    from edgeclip.zeroshot.embedder import BundleEmbedder
    from edgeclip.zeroshot.evaluate import predict
    from edgeclip.zeroshot.scores import accuracy

    src, _ = labelled_source(data, "accuracy")
    names = class_names(src.classes)
    lab = Labeler(bundle, precision=precision, threads=threads)
    emb = BundleEmbedder(lab)
    class_emb = text_emb if text_emb is not None else emb.text(names, lab.known.templates or templates)
    recs = list(src.records)
    if max_images and max_images < len(recs):
        recs = random.Random(seed).sample(recs, max_images)
    top, kept, skipped, dt = predict(emb, recs, class_emb, batch_size)
    n = len(kept)
    return {
        "top1": accuracy(top, [recs[i].label for i in kept])["top1"],
        "n": n,
        "skipped": len(skipped),
        "precision": lab.precision,
        "images_per_s": n / max(1e-9, dt),
    }


@dataclass
class BundleConfig:
    """Everything an export takes (``edgeclip export``'s options, a lab ``bundle`` stage's keys)."""

    student: str = ""
    out: str = ""
    labels: Any = None  # a list, a comma-separated string or a labels file
    templates: list[str] = field(default_factory=lambda: list(DEFAULT_TEMPLATES))
    calib: str | None = None  # calibration images (any edgeclip source); none: fp32 only
    quant: str = "auto"  # auto | static | dynamic | none
    calib_images: int = 200
    holdout: float = 0.25  # share of the calibration images kept back to check int8
    per_channel: bool = True
    teacher: str | None = None  # default: the one the student records
    eval_data: str | None = None  # an ImageFolder: zero-shot top-1 in the model card
    eval_images: int = 0
    overwrite: bool = False
    seed: int = 0
    opset: int = 17
    text_encoder: bool = False  # also bundle the teacher's text tower (free-text queries on the device)
    threads: int = 2
    int8_variants: list[str] | None = None  # build and time only these int8 recipes
    formats: Any = ("onnx",)  # onnx (always) and executorch
    # an EdgeVL student's other modality (ir, depth, swir, ...): the bundle reads that input, its spec recorded
    modality: str | None = None

    def __post_init__(self) -> None:
        from edgeclip.core.prompts import check_templates, parse_labels

        if not self.student or not self.out:
            raise EdgeClipError("an export needs a student checkpoint and an --out folder")
        if self.quant not in QUANT_MODES:
            raise EdgeClipError(f"unknown quantization {self.quant!r} ({', '.join(QUANT_MODES)})")
        self.formats = _check_formats(self.formats)
        if self.int8_variants:
            from edgeclip.export.choose import INT8_VARIANTS

            for n in self.int8_variants:
                INT8_VARIANTS.get(n)  # unknown recipe: one line with "did you mean", before any work
        if not 0.0 < self.holdout < 1.0:
            raise EdgeClipError(f"holdout must be a fraction in (0, 1), got {self.holdout}")
        self.labels = parse_labels(self.labels)
        self.templates = check_templates(self.templates)
        if self.modality and "executorch" in self.formats:
            raise EdgeClipError("a bundle of another modality is ONNX only (no ExecuTorch programs yet)")


def export_bundle(
    student: str | os.PathLike,
    out: str | os.PathLike,
    labels: Sequence[str] | str,
    templates: Sequence[str] = DEFAULT_TEMPLATES,
    log: Callable[[str], None] = lambda s: None,
    **options: Any,
) -> dict[str, Any]:
    """Build a bundle folder at ``out``; returns its manifest (parity, sizes, latency, accuracy). ``options``: the
    other :class:`BundleConfig` keys. ``text_encoder``: also bundle the teacher's text tower (fp32 + int8 ONNX and
    its tokenizer), so that the torch-free runtime embeds labels it has never seen (see :mod:`edgeclip.export.text`).
    ``int8_variants``: build and time only these int8 recipes (default: every one for the model's family).
    ``formats``: onnx (always) and executorch (an ExecuTorch program for phones, XNNPACK fp32 + int8, beside
    the ONNX files; see :mod:`edgeclip.export.executorch`)."""
    from edgeclip.core.config import build_dataclass

    given = {"student": str(student), "out": str(out), "labels": labels, "templates": list(templates)}
    cfg = build_dataclass(BundleConfig, {**options, **given})
    return run_export(cfg, log)


def run_export(cfg: BundleConfig, log: Callable[[str], None] = lambda s: None) -> dict[str, Any]:
    """The export as named steps: check the destination, load the student and its teacher, split calibration
    images, then in a temporary folder: image models (fp32 + the measured int8 choice), labels and preprocessing,
    the text tower, ExecuTorch programs, latency, manifest + card, accuracy; then one rename into place."""
    out = _check_destination(Path(cfg.out), cfg.overwrite)
    job = _Export.load(cfg, log)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    try:
        manifest = job.build(tmp)
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return manifest


def _check_destination(out: Path, overwrite: bool) -> Path:
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        if not (out / MANIFEST).is_file():
            raise EdgeClipError(f"{out} exists and is not an edgeclip bundle; choose another --out")
        if not overwrite:
            raise EdgeClipError(f"{out} already holds a bundle; pass --overwrite to replace it")
    return out


@dataclass
class _Export:
    cfg: BundleConfig
    log: Callable[[str], None]
    st: Any  # the torch student
    pp: Any  # its Preprocess
    ck: dict
    teacher: Any
    text: np.ndarray  # (L, D) the labels' teacher text embeddings
    transformer: bool
    x_cal: np.ndarray
    x_hold: np.ndarray
    skipped: list
    npp: NumpyPreprocess  # what preprocess.json says: the runtime's reading of the input
    npp_dict: dict

    @classmethod
    def load(cls, cfg: BundleConfig, log) -> _Export:
        from edgeclip.models.student import load_student
        from edgeclip.models.teachers import teacher_of
        from edgeclip.zeroshot.text import text_embeddings

        loaded = load_student(cfg.student)  # first: a file that is no student is the news, not its options
        st, pp, ck = loaded
        if cfg.quant != "none" and not cfg.calib:
            raise EdgeClipError(
                "int8 export needs calibration images (--calib IMAGES), or --quant none for fp32 only"
            )
        t = teacher_of(ck, f"student {cfg.student}", cfg.teacher, embed_dim=st.embed_dim, near=cfg.student)
        text = text_embeddings(t, cfg.labels, cfg.templates).numpy().astype(np.float32)
        if cfg.modality:
            from edgeclip.export.modality import modality_model

            st, npp, npp_dict = modality_model(loaded, cfg.student, cfg.modality, cfg.calib)
            log(f"modality {cfg.modality}: {npp.in_channels}-channel input, {npp.channels} into the model")
        else:
            npp, npp_dict = NumpyPreprocess.from_dict(pp.to_dict()), pp.to_dict()
        x_cal, x_hold, skipped = split_calibration(
            cfg.calib, cfg.calib_images, npp, cfg.holdout, cfg.seed, log
        )
        return cls(cfg, log, st, pp, ck, t, text, is_transformer(st), x_cal, x_hold, skipped, npp, npp_dict)

    def build(self, folder: Path) -> dict[str, Any]:
        cfg = self.cfg
        models, parity = {"fp32": MODEL_FP32}, {"fp32": self.fp32(folder)}
        quantization: dict[str, Any] = {"method": cfg.quant}
        if cfg.quant != "none":
            quantization.update(self.int8(folder))
            models["int8"] = MODEL_INT8
            parity["int8"] = p8 = int8_parity(
                folder / MODEL_FP32, folder / MODEL_INT8, self.x_hold, self.text
            )
            self.log(
                f"int8 parity: top-1 agreement with fp32 {p8['top1_agreement']:.3f}, mean cosine "
                f"{p8['mean_cosine']:.4f} on {p8['n']} hold-out images"
            )
        self.side_files(folder)
        text_cfg = (
            _bundle_text_tower(self.teacher, folder, cfg.labels, cfg.templates, self.x_hold, self.log)
            if cfg.text_encoder
            else None
        )
        et_cfg = self.executorch(folder) if "executorch" in cfg.formats else None
        latency = {k: ort_latency_ms(folder / f, self.pp.size)["median_ms"] for k, f in models.items()}
        manifest = self.manifest(models, parity, quantization, latency, text_cfg, et_cfg)
        finish_bundle(folder, manifest)
        if cfg.eval_data and cfg.modality:
            self.log(
                "eval_data: zero-shot accuracy of a modality bundle is measured by `edgeclip edgevl eval`"
            )
        elif cfg.eval_data:
            manifest["accuracy"] = _accuracy(
                folder,
                cfg.student,
                self.teacher,
                models,
                cfg.eval_data,
                cfg.eval_images,
                cfg.templates,
                self.log,
            )
            finish_bundle(folder, manifest)
        return manifest

    def fp32(self, folder: Path) -> dict[str, Any]:
        """model.onnx (dynamic batch; dynamic height and width for CNNs), checked against torch on the hold-out."""
        import torch

        from edgeclip.export.onnx import export_onnx, onnx_parity

        size, axes = self.pp.size, {"image": {0: "batch"}, "embedding": {0: "batch"}}
        if not self.transformer:
            axes["image"].update({2: "height", 3: "width"})
        export_onnx(
            self.st,
            folder / MODEL_FP32,
            input_shape=(1, self.npp.channels, size, size),
            dynamic_axes=axes,
            opset=self.cfg.opset,
        )
        with torch.no_grad():
            par = onnx_parity(self.st, folder / MODEL_FP32, torch.from_numpy(self.x_hold))
        self.log(
            f"fp32 parity: max abs diff vs torch {par['max_abs_diff']:.2e} (mean {par['mean_abs_diff']:.2e})"
        )
        return {
            **par,
            "n": int(len(self.x_hold)),
            "inputs": "hold-out images" if self.cfg.calib else "random",
        }

    def int8(self, folder: Path) -> dict[str, Any]:
        """model.int8.onnx: the measured choice among the int8 variants for the model's family
        (:func:`edgeclip.export.choose.candidates`); -> the manifest's quantization entry."""
        from edgeclip.export.choose import candidates

        cfg = self.cfg
        family = "transformer" if self.transformer else "cnn"
        names = candidates(
            family, "auto" if cfg.quant == "auto" else cfg.quant, cfg.per_channel, cfg.int8_variants
        )
        choice = _choose_int8(
            folder, names, self.x_cal, self.x_hold, self.text, self.pp.size, cfg.threads, self.log
        )
        lever = choice["variants"][choice["int8_file"]]["lever"]
        q = {
            "method": "dynamic" if lever["format"] == "dynamic" else "static",
            "per_channel": "per-channel" in lever["weights"],
            **{k: lever[k] for k in ("format", "activations", "weights")},
            "choice": choice,
        }
        if lever["format"] != "dynamic":
            q.update(
                calibration="minmax", calibration_images=int(len(self.x_cal)), calibration_data=str(cfg.calib)
            )
        return q

    def side_files(self, folder: Path) -> None:
        """labels.json (the labels' teacher text embeddings, with the teacher id) and preprocess.json."""
        labels = LabelSet(self.cfg.labels, self.text, self.cfg.templates)  # validates before writing
        write_json(folder / LABELS, {**labels.to_dict(), "teacher": self.teacher.id})
        write_json(
            folder / PREPROCESS,
            {
                **(self.npp_dict if self.cfg.modality else self.pp.to_dict()),
                "input_name": "image",
                "layout": "NCHW",
                "dtype": "float32",
                "output_name": "embedding",
                "output": "unnormalised embedding; L2-normalise",
            },
        )

    def executorch(self, folder: Path) -> dict[str, Any]:
        from edgeclip.export.executorch import export_executorch

        return export_executorch(
            self.st, folder, self.pp.size, self.x_cal, self.x_hold, self.text, threads=self.cfg.threads,
            log=self.log, int8=self.cfg.quant != "none",
        )  # fmt: skip

    def manifest(self, models, parity, quantization, latency, text_cfg, et_cfg) -> dict[str, Any]:
        from edgeclip.core.machine import machine_info, versions

        cfg, st, extra = self.cfg, self.st, self.ck.get("extra") or {}
        choice = quantization.get("choice") or {}
        return {
            "format": BUNDLE_FORMAT,
            "kind": "labeler",
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "teacher": self.teacher.describe(),
            "student": {
                "arch": st.arch,
                "config": st.config,
                "checkpoint": Path(cfg.student).name,
                "checkpoint_sha256": sha256_file(cfg.student),
                "data": (extra.get("distill_config") or {}).get("data"),
                "n_train": extra.get("n_train"),
                "transformer": self.transformer,
            },
            "embed_dim": int(st.embed_dim),
            "input": {
                "name": "image",
                "size": self.pp.size,
                "dynamic_hw": not self.transformer,
                "modality": self.cfg.modality or "rgb",
                "channels": self.npp.channels,
                **({"file_channels": self.npp.in_channels} if self.cfg.modality else {}),
            },
            "labels": cfg.labels,
            "templates": cfg.templates,
            "models": models,
            "default_precision": choice.get("precision", "int8" if "int8" in models else "fp32"),
            "quantization": quantization,
            "parity": parity,
            "latency_ms": latency,
            "latency_setup": {"batch": 1, "threads": 1, "size": self.pp.size},
            "calibration_skipped": len(self.skipped),
            **({"text": text_cfg} if text_cfg else {}),
            **({"executorch": et_cfg} if et_cfg else {}),
            "versions": {**versions(BUNDLE_LIBRARIES), "opset": cfg.opset},
            "machine": machine_info(),
        }


BUNDLE_LIBRARIES = ("edgeclip", "torch", "onnx", "onnxruntime", "numpy", "PIL")


FORMATS = ("onnx", "executorch")


def _check_formats(formats: Sequence[str] | str) -> list[str]:
    """``formats`` as a list with onnx first (the bundle always has its ONNX models); unknown ones are one line."""
    fs = [f.strip() for f in (formats.split(",") if isinstance(formats, str) else formats) if f.strip()]
    for f in fs:
        if f not in FORMATS:
            import difflib

            close = difflib.get_close_matches(f, FORMATS, n=1)
            hint = f" Did you mean: {close[0]}?" if close else ""
            raise EdgeClipError(f"unknown export format {f!r}.{hint} Known: {', '.join(FORMATS)}")
    if "executorch" in fs:
        from edgeclip.export.executorch import executorch_missing

        why = executorch_missing()
        if why:
            raise EdgeClipError(f"{why}; install it with: pip install 'edgeclip[executorch]'")
    return ["onnx"] + [f for f in dict.fromkeys(fs) if f != "onnx"]


def split_calibration(calib, calib_images: int, npp, holdout: float, seed: int, log):
    """(calibration images, hold-out images, unreadable ones): a hold-out share checks int8; without ``calib``,
    seeded random inputs (fp32 only)."""
    if not calib:
        x = (
            np.random.default_rng(seed)
            .standard_normal((8, npp.channels, npp.size, npp.size))
            .astype(np.float32)
        )
        return x, x, []
    x, _, skipped = load_calibration(calib, calib_images, npp, seed)
    n_hold = max(1, int(round(holdout * len(x)))) if len(x) > 1 else 0
    x_cal, x_hold = (x[:-n_hold], x[-n_hold:]) if n_hold else (x, x)
    log(f"calibration: {len(x_cal)} images, hold-out: {len(x_hold)} (skipped {len(skipped)} unreadable)")
    return x_cal, x_hold, skipped


def _accuracy(
    folder: Path, student, teacher, models: dict, eval_data, eval_images: int, templates, log
) -> dict:
    """Zero-shot top-1 on ``eval_data`` of the torch student and of each bundle model, for the model card."""
    from edgeclip.zeroshot.embedder import load_embedder
    from edgeclip.zeroshot.evaluate import evaluate
    from edgeclip.zeroshot.text import text_embeddings

    log(f"zero-shot accuracy on {eval_data} ...")
    res = evaluate(
        None,
        {"student": load_embedder(student=str(student), teacher=teacher.spec)},
        eval_data,
        templates,
        max_images=eval_images,
    )
    cemb = text_embeddings(teacher, res["classes"], templates).numpy()
    acc = {"data": str(eval_data), "n": res["n"], "torch_fp32": res["student_top1"]}
    for k in models:
        acc[f"bundle_{k}"] = bundle_accuracy(folder, eval_data, k, templates, eval_images, text_emb=cemb)[
            "top1"
        ]
    log("accuracy: " + ", ".join(f"{k} {v:.4f}" for k, v in acc.items() if isinstance(v, float)))
    return acc


def _choose_int8(
    folder: Path,
    names: Sequence[str],
    x_cal: np.ndarray,
    x_hold: np.ndarray,
    text: np.ndarray,
    size: int,
    threads: int,
    log,
) -> dict[str, Any]:
    """Build each int8 variant in ``names``, time it at batch 1 and 32 on ``threads`` threads beside fp32, check
    its top-1 agreement with fp32 on the hold-out images; the chosen one becomes model.int8.onnx (see
    :mod:`edgeclip.export.choose`), and the bundle's default precision is int8 only when it is faster than fp32.
    Without a chosen one, the shipped int8 file is the most faithful variant (fp32 stays the default)."""
    from edgeclip.export.choose import (
        AGREEMENT_GATE,
        INT8_VARIANTS,
        MIN_SPEEDUP,
        choose,
        fallback_int8,
        time_model,
    )

    work = folder / ".variants"
    work.mkdir()
    fp32 = time_model(folder / MODEL_FP32, size, threads)
    variants: dict[str, dict[str, Any]] = {}
    for n in names:
        path = INT8_VARIANTS.get(n)(folder / MODEL_FP32, work / f"{n}.onnx", list(batches_of(x_cal, 16)))
        p = int8_parity(folder / MODEL_FP32, path, x_hold, text)
        variants[n] = {
            **time_model(path, size, threads),
            **p,
            "bytes": path.stat().st_size,
            "lever": INT8_VARIANTS.meta(n)["lever"],
        }
        log(
            f"int8 {n}: {variants[n]['batch1_ms']:.2f} ms at batch 1 (fp32 {fp32['batch1_ms']:.2f}), "
            f"agreement {p['top1_agreement']:.3f}"
        )
    pick = choose(fp32, variants, AGREEMENT_GATE, MIN_SPEEDUP)
    ship = pick["variant"] or fallback_int8(fp32, variants, MIN_SPEEDUP)
    os.replace(work / f"{ship}.onnx", folder / MODEL_INT8)
    shutil.rmtree(work)
    log(f"default precision: {pick['precision']} ({pick['why']})")
    return {
        **pick,
        "int8_file": ship,
        "threads": threads,
        "gate": {"top1_agreement": AGREEMENT_GATE, "min_speedup": MIN_SPEEDUP},
        "fp32": fp32,
        "variants": variants,
    }


def _bundle_text_tower(teacher, folder: Path, labels, templates, x_hold: np.ndarray, log) -> dict[str, Any]:
    """The teacher's text tower into the bundle, its int8 zero-shot agreement measured on the hold-out images
    (their fp32 bundle embeddings, ranked over the bundle's labels)."""
    from edgeclip.export.text import export_text_tower
    from edgeclip.runtime.session import ort_session, run_batched

    img = run_batched(ort_session(folder / MODEL_FP32), x_hold)

    def classifier(encode):
        return prompt_ensemble(encode, labels, templates)

    prompts = [fill(tpl, lb) for tpl in templates for lb in labels]
    return export_text_tower(teacher, folder, prompts, img, classifier if len(labels) > 1 else None, log=log)
