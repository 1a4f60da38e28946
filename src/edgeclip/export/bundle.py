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
from pathlib import Path
from typing import Any

import numpy as np

from edgeclip.core.errors import EdgeClipError, ImageLoadError
from edgeclip.core.io import sha256_file, write_json
from edgeclip.core.prompts import DEFAULT_TEMPLATES, fill, prompt_ensemble
from edgeclip.runtime.bundle import (
    BUNDLE_FORMAT,
    LABELS,
    MANIFEST,
    MODEL_CARD,
    MODEL_FP32,
    MODEL_INT8,
    PREPROCESS,
    LabelSet,
    read_kind,
)
from edgeclip.runtime.preprocess import NumpyPreprocess
from edgeclip.runtime.text import default_reason

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
            arrs.append(preprocess(r.load()))
            names.append(r.name)
        except ImageLoadError as e:
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
    x = np.random.default_rng(0).standard_normal((1, 3, size, size)).astype(np.float32)
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


def _versions() -> dict[str, str]:
    out = {}
    for mod in ("edgeclip", "torch", "onnx", "onnxruntime", "numpy", "PIL"):
        try:
            m = __import__(mod)
            out[mod] = getattr(m, "__version__", "?")
        except Exception:
            pass
    return out


def _model_card(m: dict[str, Any]) -> str:
    t, s = m["teacher"], m["student"]
    lines = [
        f"# Edge bundle: {s['arch']} student of {t['id']}",
        "",
        "Open-vocabulary image labeler. Runs with numpy + Pillow + ONNX Runtime (`edgeclip.runtime`).",
        "",
        "## Source",
        f"- teacher: `{t['spec']}` (id `{t['id']}`, {t['embed_dim']}-d embeddings, logit scale {t['logit_scale']:.1f})",
        f"- student: `{s['arch']}` at {m['input']['size']} px, checkpoint sha256 `{s['checkpoint_sha256'][:16]}...`",
        f"- distillation data: {s.get('data') or 'not recorded in the checkpoint'}"
        + (f" ({s['n_train']} images)" if s.get("n_train") else ""),
        f"- labels ({len(m['labels'])}): {', '.join(m['labels'][:30])}{' ...' if len(m['labels']) > 30 else ''}",
        f"- prompt templates: {', '.join(repr(x) for x in m['templates'])}",
        "",
        "## Files and size",
        "| file | bytes |",
        "| --- | ---: |",
    ]
    lines += [f"| {k} | {v['bytes']:,} |" for k, v in m["files"].items()]
    lines += [
        "",
        "## Parity and quantization",
        f"- fp32 ONNX vs torch: max abs diff {m['parity']['fp32']['max_abs_diff']:.2e} on "
        f"{m['parity']['fp32']['n']} images",
    ]
    if "int8" in m["parity"]:
        p = m["parity"]["int8"]
        q = m["quantization"]
        lines.append(
            f"- int8 ({q['method']}{', per-channel' if q.get('per_channel') else ''}, calibrated on "
            f"{q.get('calibration_images', 0)} images): top-1 agreement with fp32 {p['top1_agreement']:.3f}, "
            f"mean embedding cosine {p['mean_cosine']:.4f} on {p['n']} hold-out images"
        )
    if m.get("text"):
        tx = m["text"]
        b = tx["bytes"]
        par = tx["parity"]
        added = sum(b.values()) + tx.get("tokenizer_bytes", 0)
        lines += [
            "",
            "## Text tower (new labels on the device)",
            f"- {tx['kind']}: fp32 {b['fp32']:,} bytes"
            + (f", int8 {b['int8']:,} bytes" if "int8" in b else "")
            + f", tokenizer {tx.get('tokenizer_bytes', 0):,} bytes: {added / 1e6:.1f} MB added to the bundle",
            f"- tokenizer: identical token ids to the teacher's on {tx['token_parity']['n']} texts",
            f"- fp32 vs torch: min cosine {par['fp32']['min_cosine']:.5f} on {par['fp32']['n_texts']} texts",
        ]
        if "int8" in par:
            z = par["int8"].get("zero_shot_agreement")
            lines.append(
                f"- int8: min cosine {par['int8']['min_cosine']:.4f}"
                + (
                    f", zero-shot agreement with torch {z:.3f} on {par['int8']['zero_shot_images']} images"
                    if z is not None
                    else ""
                )
            )
        lines.append(f"- default precision {default_reason(tx)}")
    ch = (m.get("quantization") or {}).get("choice")
    if ch:
        lines += [
            "",
            f"## Which precision runs by default: {ch['precision']}",
            f"{ch['why']} (measured on this machine, {ch['threads']} ONNX Runtime threads; gate: top-1 agreement"
            f" with fp32 >= {ch['gate']['top1_agreement']}).",
            "",
            "| model | batch 1 ms | batch 32 ms | top-1 agreement | bytes |",
            "| --- | ---: | ---: | ---: | ---: |",
            f"| fp32 | {ch['fp32']['batch1_ms']:.2f} | {ch['fp32']['batch32_ms']:.1f} | 1 | |",
        ]
        for k, v in ch["variants"].items():
            lines.append(
                f"| int8 {k}{' (shipped)' if k == ch['int8_file'] else ''} | {v['batch1_ms']:.2f} | "
                f"{v['batch32_ms']:.1f} | {v['top1_agreement']:.3f} | {v['bytes']:,} |"
            )
    if m.get("executorch"):
        e = m["executorch"]
        lines += [
            "",
            f"## ExecuTorch programs (phones; {e['delegate']} delegate, input {'x'.join(map(str, e['input']))})",
            "| program | batch 1 ms | vs torch: top-1 agreement | min cosine |",
            "| --- | ---: | ---: | ---: |",
        ]
        for k, f in e["files"].items():
            p = e["parity"][k]
            lines.append(
                f"| {f} ({k}) | {e['latency_ms'][k]:.2f} | {p['top1_agreement']:.3f} | {p['min_cosine']:.4f} |"
            )
    lines += ["", "## Latency (batch 1, ONNX Runtime, 1 thread, this machine)"]
    for k, v in m.get("latency_ms", {}).items():
        lines.append(f"- {k}: {v:.2f} ms")
    if m.get("accuracy"):
        a = m["accuracy"]
        lines += ["", f"## Zero-shot accuracy on `{a['data']}` ({a['n']} images)"]
        for k in ("torch_fp32", "bundle_fp32", "bundle_int8"):
            if k in a:
                lines.append(f"- {k}: top-1 {a[k]:.4f}")
    else:
        lines += [
            "",
            "## Accuracy",
            "Not measured at export (`edgeclip export ... --eval IMAGEFOLDER` adds it here).",
        ]
    lines += [
        "",
        f"Created {m['created']} on {m['machine'].get('cpu_model', m['machine'].get('processor', '?'))}.",
        "",
    ]
    return "\n".join(lines)


def export_bundle(
    student: str | os.PathLike,
    out: str | os.PathLike,
    labels: Sequence[str] | str,
    templates: Sequence[str] = DEFAULT_TEMPLATES,
    calib: str | None = None,
    quant: str = "auto",
    calib_images: int = 200,
    holdout: float = 0.25,
    per_channel: bool = True,
    teacher: str | None = None,
    eval_data: str | None = None,
    eval_images: int = 0,
    overwrite: bool = False,
    seed: int = 0,
    opset: int = 17,
    text_encoder: bool = False,
    threads: int = 2,
    int8_variants: Sequence[str] | None = None,
    formats: Sequence[str] = ("onnx",),
    log: Callable[[str], None] = lambda s: None,
) -> dict[str, Any]:
    """Build a bundle folder at ``out``; returns its manifest (parity, sizes, latency, accuracy).
    ``text_encoder``: also bundle the teacher's text tower (fp32 + int8 ONNX and its tokenizer), so that the
    torch-free runtime embeds labels it has never seen (see :mod:`edgeclip.export.text`).
    ``int8_variants``: build and time only these int8 recipes (default: every one for the model's family).
    ``formats``: onnx (always) and executorch (an ExecuTorch program for phones, XNNPACK fp32 + int8, beside
    the ONNX files; see :mod:`edgeclip.export.executorch`)."""

    from edgeclip.core.machine import machine_info
    from edgeclip.core.prompts import check_templates, parse_labels
    from edgeclip.models.student import load_student
    from edgeclip.models.teachers import teacher_of
    from edgeclip.zeroshot.text import text_embeddings

    if quant not in QUANT_MODES:
        raise EdgeClipError(f"unknown quantization {quant!r} ({', '.join(QUANT_MODES)})")
    formats = _check_formats(formats)
    if int8_variants:
        from edgeclip.export.choose import INT8_VARIANTS

        for n in int8_variants:
            INT8_VARIANTS.get(n)  # unknown recipe: one line with "did you mean", before any work
    if not 0.0 < holdout < 1.0:
        raise EdgeClipError(f"holdout must be a fraction in (0, 1), got {holdout}")
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        if not (out / MANIFEST).is_file():
            raise EdgeClipError(f"{out} exists and is not an edgeclip bundle; choose another --out")
        if not overwrite:
            raise EdgeClipError(f"{out} already holds a bundle; pass --overwrite to replace it")
    labels = parse_labels(labels)
    templates = check_templates(templates)

    st, pp, ck = load_student(student)
    t = teacher_of(ck, f"student {student}", teacher, embed_dim=st.embed_dim, near=student)
    text = text_embeddings(t, labels, templates).numpy().astype(np.float32)
    npp = NumpyPreprocess.from_dict(pp.to_dict())
    transformer = is_transformer(st)
    mode = quant
    if mode != "none" and not calib:
        raise EdgeClipError(
            "int8 export needs calibration images (--calib IMAGES), or --quant none for fp32 only"
        )

    x_cal, x_hold, skipped = split_calibration(calib, calib_images, npp, holdout, seed, log)

    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    try:
        models, parity, quantization = _onnx_models(
            st,
            tmp,
            pp.size,
            transformer,
            mode,
            per_channel,
            x_cal,
            x_hold,
            text,
            calib,
            threads,
            opset,
            log,
            int8_variants,
        )

        LabelSet(labels, text, templates)  # validates before writing
        write_json(tmp / LABELS, {**LabelSet(labels, text, templates).to_dict(), "teacher": t.id})
        write_json(
            tmp / PREPROCESS,
            {
                **pp.to_dict(),
                "input_name": "image",
                "layout": "NCHW",
                "dtype": "float32",
                "output_name": "embedding",
                "output": "unnormalised embedding; L2-normalise",
            },
        )
        text_cfg = _bundle_text_tower(t, tmp, labels, templates, x_hold, log) if text_encoder else None
        et_cfg = None
        if "executorch" in formats:
            from edgeclip.export.executorch import export_executorch

            et_cfg = export_executorch(
                st, tmp, pp.size, x_cal, x_hold, text, threads=threads, log=log, int8=mode != "none"
            )
        latency = {k: ort_latency_ms(tmp / f, pp.size)["median_ms"] for k, f in models.items()}
        extra = ck.get("extra") or {}
        dcfg = extra.get("distill_config") or {}
        manifest: dict[str, Any] = {
            "format": BUNDLE_FORMAT,
            "kind": "labeler",
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "teacher": t.describe(),
            "student": {
                "arch": st.arch,
                "config": st.config,
                "checkpoint": Path(student).name,
                "checkpoint_sha256": sha256_file(student),
                "data": dcfg.get("data"),
                "n_train": extra.get("n_train"),
                "transformer": transformer,
            },
            "embed_dim": int(st.embed_dim),
            "input": {"name": "image", "size": pp.size, "dynamic_hw": not transformer},
            "labels": labels,
            "templates": templates,
            "models": models,
            "default_precision": (quantization.get("choice") or {}).get(
                "precision", "int8" if "int8" in models else "fp32"
            ),
            "quantization": quantization,
            "parity": parity,
            "latency_ms": latency,
            "latency_setup": {"batch": 1, "threads": 1, "size": pp.size},
            "calibration_skipped": len(skipped),
            **({"text": text_cfg} if text_cfg else {}),
            **({"executorch": et_cfg} if et_cfg else {}),
            "versions": {**_versions(), "opset": opset},
            "machine": machine_info(),
        }
        _finish(tmp, manifest)
        if eval_data:
            manifest["accuracy"] = _accuracy(tmp, student, t, models, eval_data, eval_images, templates, log)
            _finish(tmp, manifest)
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return manifest


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
        x = np.random.default_rng(seed).standard_normal((8, 3, npp.size, npp.size)).astype(np.float32)
        return x, x, []
    x, _, skipped = load_calibration(calib, calib_images, npp, seed)
    n_hold = max(1, int(round(holdout * len(x)))) if len(x) > 1 else 0
    x_cal, x_hold = (x[:-n_hold], x[-n_hold:]) if n_hold else (x, x)
    log(f"calibration: {len(x_cal)} images, hold-out: {len(x_hold)} (skipped {len(skipped)} unreadable)")
    return x_cal, x_hold, skipped


def _onnx_models(
    st,
    folder: Path,
    size: int,
    transformer: bool,
    mode: str,
    per_channel: bool,
    x_cal,
    x_hold,
    text,
    calib,
    threads: int,
    opset: int,
    log,
    int8_variants: Sequence[str] | None = None,
) -> tuple[dict, dict, dict]:
    """model.onnx (checked against torch) and, unless ``mode`` is none, model.int8.onnx: the measured choice
    among the int8 variants for the model's family (:func:`edgeclip.export.choose.candidates`)
    -> (models, parity, quantization)."""
    import torch

    from edgeclip.export.onnx import export_onnx, onnx_parity

    axes = {"image": {0: "batch"}, "embedding": {0: "batch"}}
    if not transformer:
        axes["image"].update({2: "height", 3: "width"})
    export_onnx(st, folder / MODEL_FP32, input_shape=(1, 3, size, size), dynamic_axes=axes, opset=opset)
    with torch.no_grad():
        par = onnx_parity(st, folder / MODEL_FP32, torch.from_numpy(x_hold))
    parity: dict[str, Any] = {
        "fp32": {**par, "n": int(len(x_hold)), "inputs": "hold-out images" if calib else "random"}
    }
    log(f"fp32 parity: max abs diff vs torch {par['max_abs_diff']:.2e} (mean {par['mean_abs_diff']:.2e})")
    models = {"fp32": MODEL_FP32}
    quantization: dict[str, Any] = {"method": mode}
    if mode == "none":
        return models, parity, quantization
    from edgeclip.export.choose import candidates

    family = "transformer" if transformer else "cnn"
    names = candidates(family, "auto" if mode == "auto" else mode, per_channel, int8_variants)
    choice = _choose_int8(folder, names, x_cal, x_hold, text, size, threads, log)
    lever = choice["variants"][choice["int8_file"]]["lever"]
    quantization.update(
        method="dynamic" if lever["format"] == "dynamic" else "static",
        per_channel="per-channel" in lever["weights"],
        format=lever["format"],
        activations=lever["activations"],
        weights=lever["weights"],
        choice=choice,
    )
    if lever["format"] != "dynamic":
        quantization.update(
            calibration="minmax", calibration_images=int(len(x_cal)), calibration_data=str(calib)
        )
    models["int8"] = MODEL_INT8
    parity["int8"] = p8 = int8_parity(folder / MODEL_FP32, folder / MODEL_INT8, x_hold, text)
    log(
        f"int8 parity: top-1 agreement with fp32 {p8['top1_agreement']:.3f}, mean cosine "
        f"{p8['mean_cosine']:.4f} on {p8['n']} hold-out images"
    )
    return models, parity, quantization


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


def _finish(folder: Path, manifest: dict[str, Any]) -> None:
    """Hash every file, write the model card, then the manifest (with the card's hash) last."""
    files = {
        p.name: {"sha256": sha256_file(p), "bytes": p.stat().st_size}
        for p in sorted(folder.iterdir())
        if p.is_file() and p.name not in (MANIFEST, MODEL_CARD)
    }
    manifest["files"] = files
    (folder / MODEL_CARD).write_text(_model_card(manifest), encoding="utf-8")
    files[MODEL_CARD] = {
        "sha256": sha256_file(folder / MODEL_CARD),
        "bytes": (folder / MODEL_CARD).stat().st_size,
    }
    write_json(folder / MANIFEST, manifest)
    for p in folder.iterdir():
        p.chmod(0o644)  # atomic writes create 0600 files; a bundle is meant to be copied and shared


def slim_bundle(
    folder: str | os.PathLike, keep: Sequence[str] = ("int8",), text_default: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Drop the image and text models of the precisions not in ``keep`` from a bundle folder (in place; for
    shipping a bundle small), re-hash it and record what was removed in its manifest; -> the manifest.
    ``keep``: precisions for both towers (``int8``) or one (``image:fp32``, ``text:int8``). A precision that a
    tower uses by default is never dropped: the bundle must run as exported, unless ``text_default`` moves the
    text tower's default with its evidence: ``{precision, value, reference, min_ratio, measured}`` (value /
    reference >= min_ratio, e.g. Recall@5 on a validation split with that precision and with the old one)."""
    folder = Path(folder)
    man = read_kind(folder, "labeler", verify=True, default_kind="labeler")
    keep = set(keep)
    removed: list[str] = []
    if text_default:
        if not man.get("text"):
            raise EdgeClipError(f"{folder}: no text tower whose default could move")
        td = dict(text_default)
        ratio = float(td["value"]) / float(td["reference"]) if float(td["reference"]) else 0.0
        if td["precision"] not in man["text"].get("models", {}) or ratio < float(td.get("min_ratio", 0.99)):
            raise EdgeClipError(
                f"{folder}: the text tower's default stays {man['text'].get('default')}: {td['precision']} "
                f"reaches {ratio:.3f} of it ({td.get('measured', '?')}), below {td.get('min_ratio', 0.99)}"
            )
        man["text"]["default_moved"] = {"from": man["text"].get("default"), "ratio": ratio, **td}
        man["text"]["default"] = td["precision"]
        man["text"]["default_why"] = default_reason(man["text"])
    towers = [("image", man, man.get("default_precision") or "fp32")]
    if man.get("text"):
        towers.append(("text", man["text"], man["text"].get("default", "fp32")))
    for what, cfg, default in towers:
        mine = {k.split(":", 1)[1] for k in keep if k.startswith(f"{what}:")} | {
            k for k in keep if ":" not in k
        }
        for prec in [p for p in cfg.get("models", {}) if p not in mine]:
            if prec == default:
                raise EdgeClipError(
                    f"{folder}: its {what} tower runs {prec} by default (the export's measured choice); "
                    f"keep {prec} or re-export"
                )
            removed.append(cfg["models"].pop(prec))
    for name in removed:
        (folder / name).unlink(missing_ok=True)
    if man.get("executorch") and "executorch" not in keep:  # the phone programs go too
        man.pop("executorch")
        for p in folder.glob("*.pte"):
            removed.append(p.name)
            p.unlink()
    man["slimmed"] = {"kept": sorted(keep), "removed": sorted(set(removed))}
    if man.get("text"):  # the text tower reads its own config file, which mirrors the manifest's entry
        from edgeclip.runtime.text import TEXT_CONFIG

        write_json(folder / TEXT_CONFIG, man["text"])
    _finish(folder, man)
    return man
