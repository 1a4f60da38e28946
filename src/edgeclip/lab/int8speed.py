"""The int8 speed benchmark (``experiments/int8_speed.yaml``, in ``make bench``; issue 19): per student model, fp32
and every int8 variant ``edgeclip export`` builds, at batch 1 and 32 on the same threads, their fidelity, and the
choice the export makes; beside it the levers that are not ONNX quantization recipes: ONNX Runtime with the
bundle's free dimensions fixed, an offline-optimised graph, OpenVINO's CPU runtime on the same ONNX files, and the
ExecuTorch XNNPACK programs. Every figure comes from the bundle an ordinary export writes, so the JSON shows why
each bundle's default precision is what it is.

A model is ``{arch: NAME}`` (random weights with BatchNorm statistics fitted to real photos: speed does not depend
on the weights, but their agreement figures are then those of a feature-less net, which flips its top-1 on tiny
changes) or ``{arch: NAME, checkpoint: PATH}`` (a distilled student: the agreement that matters).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from edgeclip.core.errors import EdgeClipError

MODELS = [
    "shufflenet_v2_x0_5",
    "shufflenet_v2_x1_0",
    "mobilenet_v3_small",
    "mobilenet_v3_large",
    "efficientnet_b0",
    "timm:vit_small_patch16_224",
]


def cpu_flags() -> dict[str, Any]:
    """The int8-relevant x86 instruction sets of this CPU (VNNI decides which int8 kernels ONNX Runtime runs)."""
    try:
        flags = set(open("/proc/cpuinfo").read().split("flags", 1)[1].split("\n", 1)[0].split())
    except (OSError, IndexError):
        return {}
    want = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_int8", "amx_bf16")
    return {f: f in flags for f in want}


def _versions() -> dict[str, str | None]:
    from edgeclip.core.machine import versions

    return versions(("onnxruntime", "openvino", "executorch", "torch", "torchao"), missing=None)


def _input(size: int, batch: int) -> np.ndarray:
    return np.random.default_rng(0).standard_normal((batch, 3, size, size)).astype(np.float32)


def ort_fixed_ms(path: Path, size: int, threads: int, reps: int = 30) -> float:
    """Batch-1 ms with the graph's free dimensions (batch, height, width) fixed at session creation, which lets
    ONNX Runtime fold the shape arithmetic of dynamic-shape graphs (ShuffleNet's channel shuffle)."""
    import onnxruntime as ort

    from edgeclip.models.cost import latency_ms

    so = ort.SessionOptions()
    so.intra_op_num_threads, so.inter_op_num_threads, so.log_severity_level = threads, 1, 3
    for dim, v in (("batch", 1), ("height", size), ("width", size)):
        so.add_free_dimension_override_by_name(dim, v)
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    name, x = sess.get_inputs()[0].name, _input(size, 1)
    return latency_ms(lambda: sess.run(None, {name: x}), warmup=5, reps=reps)["median_ms"]


def ort_offline(path: Path, size: int, threads: int, work: Path, reps: int = 30) -> dict[str, float]:
    """ONNX Runtime's offline mode: the graph optimised once (ORT_ENABLE_EXTENDED, which stays portable) and saved,
    then opened (the hardware-specific layout passes still run at load); session creation and batch-1 ms, against
    the online path."""
    import onnxruntime as ort

    from edgeclip.models.cost import latency_ms

    def session(p: Path, level, save: Path | None = None):
        so = ort.SessionOptions()
        so.intra_op_num_threads, so.inter_op_num_threads, so.log_severity_level = threads, 1, 3
        so.graph_optimization_level = level
        if save is not None:
            so.optimized_model_filepath = str(save)
        t = time.perf_counter()
        s = ort.InferenceSession(str(p), so, providers=["CPUExecutionProvider"])
        return s, (time.perf_counter() - t) * 1000

    L = ort.GraphOptimizationLevel
    saved = work / f"{path.stem}.offline.onnx"
    session(path, L.ORT_ENABLE_EXTENDED, saved)
    out = {}
    for key, p, level in (("online", path, L.ORT_ENABLE_ALL), ("offline", saved, L.ORT_ENABLE_ALL)):
        s, load = session(p, level)
        name, x = s.get_inputs()[0].name, _input(size, 1)
        out[f"{key}_load_ms"] = load
        ms = latency_ms(lambda s=s, n=name, x=x: s.run(None, {n: x}), warmup=5, reps=reps)
        out[f"{key}_batch1_ms"] = ms["median_ms"]
    saved.unlink()
    return out


def openvino_ms(
    path: Path, size: int, threads: int, batches=(1, 32), reps: int = 30
) -> dict[str, float] | None:
    """OpenVINO's CPU runtime on the same ONNX file (fp32 inference precision forced: on CPUs with AMX it would
    otherwise run fp32 graphs in bf16), latency-hint, one stream, ``threads`` threads; None without OpenVINO."""
    try:
        import openvino as ov
    except ImportError:
        return None
    from edgeclip.models.cost import latency_ms

    core = ov.Core()
    out = {}
    for b in batches:
        try:
            m = core.read_model(str(path))
        except (
            Exception
        ) as e:  # a graph OpenVINO's ONNX frontend cannot convert (QOperator's com.microsoft ops)
            return {"error": str(e).strip().splitlines()[-1][:200]}
        m.reshape([b, 3, size, size])
        c = core.compile_model(
            m,
            "CPU",
            {
                "INFERENCE_NUM_THREADS": threads,
                "PERFORMANCE_HINT": "LATENCY",
                "NUM_STREAMS": 1,
                "INFERENCE_PRECISION_HINT": "f32",
            },
        )
        req, x = c.create_infer_request(), _input(size, b)
        out[f"batch{b}_ms"] = latency_ms(
            lambda req=req, x=x: req.infer({0: x}), warmup=3, reps=reps if b == 1 else max(3, reps // 4)
        )["median_ms"]
    return out


def _student(entry: dict, teacher, photos: list[str], work: Path, size: int) -> tuple[Path, str]:
    from edgeclip.lab.stream import feature_student

    if entry.get("teacher_tower"):  # a trained tower (a reference teacher's), exported as a student of itself
        from edgeclip.data.transforms import Preprocess
        from edgeclip.models.student import save_student
        from edgeclip.models.teachers import load_teacher

        spec = entry["teacher_tower"]
        t = load_teacher(spec)
        p = work / f"{entry['name']}.pt"
        pp = Preprocess(size=t.image_size, mean=tuple(t.mean), std=tuple(t.std))
        save_student(t.image_encoder.eval(), p, pp, t.describe(), {"what": f"the image tower of {spec}"})
        return p, f"trained (the image tower of {spec})"
    if entry.get("checkpoint"):
        p = Path(entry["checkpoint"])
        if not p.is_file():
            raise EdgeClipError(f"student checkpoint not found: {p}")
        return p, "distilled"
    arch = entry["arch"]
    p = feature_student(teacher, photos[:64], work, size=size, arch=arch, name=f"{arch.replace(':', '_')}.pt")
    return p, "random, BatchNorm fitted to photos"


def measure_model(
    entry: dict, teacher, photos: list[str], labels: list[str], work: Path, cfg: dict, log
) -> dict[str, Any]:
    """One model: its bundle exported the ordinary way (every int8 variant timed and checked, the choice made),
    then the other runtimes' levers on the bundle's files."""
    from edgeclip.export.bundle import export_bundle
    from edgeclip.export.executorch import executorch_missing
    from edgeclip.lab.stream import write_path_list

    threads, size = int(cfg.get("threads", 2)), int(cfg.get("size", 224))
    labels = list(entry.get("labels") or labels)
    ckpt, weights = _student(entry, teacher, photos, work, size)
    name = entry.get("name") or entry.get("arch") or ckpt.stem
    folder = work / name.replace(":", "_")
    et = cfg.get("executorch", True) and executorch_missing() is None
    t0 = time.time()
    man = export_bundle(
        ckpt,
        folder,
        labels,
        calib=write_path_list(photos, work),
        calib_images=int(cfg.get("calib_images", 200)),
        holdout=float(cfg.get("holdout", 0.5)),
        threads=threads,
        formats=("onnx", "executorch") if et else ("onnx",),
        int8_variants=cfg.get("int8_variants"),
        overwrite=True,
        log=lambda s: log(f"  {name}: {s}"),
    )
    res = {"weights": weights, "threads": threads, **_choice_figures(man)}
    lev = _levers(folder, man, photos, work, cfg, threads)
    res["levers"] = lev
    res["best_runtime"] = _best_runtime(res)
    res["seconds"] = time.time() - t0
    log(
        f"{name}: fp32 {res['fp32_ms']:.2f} ms, int8 ({res['int8_variant']}) {res['int8_ms']:.2f} ms = "
        f"{res['speedup']:.2f}x, agreement {res['agreement']:.3f}; default {res['default_precision']}"
    )
    return res


def _choice_figures(man: dict) -> dict[str, Any]:
    """The export's measured int8 choice, as the study's row: fp32 vs the shipped variant, and every variant."""
    ch = man["quantization"]["choice"]
    fp32, shipped = ch["fp32"], ch["variants"][ch["int8_file"]]
    return {
        "arch": man["student"]["arch"],
        "size": man["input"]["size"],
        "fp32_ms": fp32["batch1_ms"],
        "fp32_batch32_ms": fp32["batch32_ms"],
        "int8_ms": shipped["batch1_ms"],
        "int8_batch32_ms": shipped["batch32_ms"],
        "int8_variant": ch["int8_file"],
        "default_precision": man["default_precision"],
        "default_ms": shipped["batch1_ms"] if man["default_precision"] == "int8" else fp32["batch1_ms"],
        "speedup": fp32["batch1_ms"] / shipped["batch1_ms"],
        "agreement": shipped["top1_agreement"],
        "fp32_distinct_top1": shipped.get("fp32_distinct_top1"),
        "mean_cosine": shipped["mean_cosine"],
        "why": ch["why"],
        "holdout_images": shipped["n"],
        "variants": {
            k: {
                kk: v[kk]
                for kk in ("batch1_ms", "batch32_ms", "top1_agreement", "mean_cosine", "bytes", "lever")
            }
            | {"speedup": fp32["batch1_ms"] / v["batch1_ms"]}
            for k, v in ch["variants"].items()
        },
        "bytes": {k: man["files"][f]["bytes"] for k, f in man["models"].items()},
    }


def _levers(
    folder: Path, man: dict, photos: list[str], work: Path, cfg: dict, threads: int
) -> dict[str, Any]:
    """The other runtimes' levers on the bundle's files: fixed shapes, offline-optimised ORT, OpenVINO, ExecuTorch."""
    from edgeclip.export.executorch import executorch_missing
    from edgeclip.runtime.bundle import MODEL_FP32, MODEL_INT8

    size = man["input"]["size"]
    lev: dict[str, Any] = {
        "ort_fixed_shape": {
            "fp32_ms": ort_fixed_ms(folder / MODEL_FP32, size, threads),
            "int8_ms": ort_fixed_ms(folder / MODEL_INT8, size, threads),
        },
        "ort_offline_optimised": {
            "fp32": ort_offline(folder / MODEL_FP32, size, threads, work),
            "int8": ort_offline(folder / MODEL_INT8, size, threads, work),
        },
    }
    ov32 = openvino_ms(folder / MODEL_FP32, size, threads)
    if ov32 is not None:
        qdq = _qdq_file(folder, man, photos, work, cfg)
        lev["openvino"] = {"fp32": ov32, "int8": openvino_ms(qdq, size, threads), "int8_file": qdq.name}
    else:
        lev["openvino"] = {"skipped": "openvino is not installed (pip install 'edgeclip[openvino]')"}
    if "executorch" in man:
        e = man["executorch"]
        lev["executorch_xnnpack"] = {
            "fp32_ms": e["latency_ms"]["fp32"],
            "int8_ms": e["latency_ms"]["int8"],
            "int8_agreement_vs_torch": e["parity"]["int8"]["top1_agreement"],
            "fp32_min_cosine_vs_torch": e["parity"]["fp32"]["min_cosine"],
        }
    else:
        lev["executorch_xnnpack"] = {"skipped": executorch_missing() or "disabled in the experiment"}
    return lev


def _qdq_file(folder: Path, man: dict, photos: list[str], work: Path, cfg: dict) -> Path:
    """The bundle's int8 file when it is QDQ (what other runtimes read), else the qdq_per_channel variant built
    from the export's own calibration images."""
    from edgeclip.core.io import read_json
    from edgeclip.export.bundle import batches_of, split_calibration
    from edgeclip.export.choose import INT8_VARIANTS
    from edgeclip.lab.stream import write_path_list
    from edgeclip.runtime.bundle import MODEL_FP32, MODEL_INT8, PREPROCESS
    from edgeclip.runtime.preprocess import NumpyPreprocess

    if man["quantization"].get("format") == "QDQ":
        return folder / MODEL_INT8
    npp = NumpyPreprocess.from_dict(read_json(folder / PREPROCESS))
    n, hold = int(cfg.get("calib_images", 200)), float(cfg.get("holdout", 0.5))
    x_cal, _, _ = split_calibration(write_path_list(photos, work), n, npp, hold, 0, lambda s: None)
    out = work / f"{folder.name}.qdq_per_channel.onnx"
    return INT8_VARIANTS.get("qdq_per_channel")(folder / MODEL_FP32, out, list(batches_of(x_cal, 16)))


def _best_runtime(res: dict) -> dict[str, Any]:
    """The fastest batch-1 path of all measured (runtime, precision), beside the bundle's default."""
    cands = {"onnxruntime fp32": res["fp32_ms"], f"onnxruntime int8 {res['int8_variant']}": res["int8_ms"]}
    ov = res["levers"].get("openvino", {})
    for p in ("fp32", "int8"):
        if "batch1_ms" in (ov.get(p) or {}):
            cands[f"openvino {p}"] = ov[p]["batch1_ms"]
    et = res["levers"].get("executorch_xnnpack", {})
    if "fp32_ms" in et:
        cands["executorch fp32"] = et["fp32_ms"]
        cands["executorch int8"] = et["int8_ms"]
    best = min(cands, key=cands.get)
    return {"name": best, "batch1_ms": cands[best], "all": cands}


def int8_speed_benchmark(cfg: dict, out: Path, log=print) -> dict[str, Any]:
    """Every model of ``cfg['models']`` (names or {arch, checkpoint, name}) measured by :func:`measure_model`."""
    import torch

    from edgeclip.core.machine import machine_info
    from edgeclip.data.captions import load_captions
    from edgeclip.models.teachers import load_teacher

    threads = int(cfg.get("threads", 2))
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    teacher = load_teacher(cfg.get("teacher", "ViT-B-32:"))
    cs = load_captions(cfg["captions"], cfg.get("images"), cfg.get("split", "val"))
    photos = [str(it.record().path) for it in cs.items]
    rng = np.random.default_rng(int(cfg.get("seed", 0)))
    photos = [photos[i] for i in rng.permutation(len(photos))[: int(cfg.get("calib_images", 200))]]
    labels = list(cfg.get("labels") or [])
    if len(labels) < 2:
        raise EdgeClipError("the int8 speed benchmark needs >= 2 labels to measure top-1 agreement")
    models = [m if isinstance(m, dict) else {"arch": m} for m in (cfg.get("models") or MODELS)]
    out.mkdir(parents=True, exist_ok=True)
    res: dict[str, Any] = {
        "cpu_flags": cpu_flags(),
        "versions": _versions(),
        "machine": machine_info(),
        "threads": threads,
        "photos": {"captions": str(cfg["captions"]), "split": cfg.get("split", "val"), "n": len(photos)},
        "labels": labels,
        "models": {},
    }
    for m in models:
        key = m.get("name") or m.get("arch")
        need = m.get("teacher_tower", "").split(":", 1)[-1] or m.get("checkpoint")
        if m.get("optional") and need and not Path(need).is_file():
            res.setdefault("skipped", {})[key] = f"{need} is not here (an artefact of another experiment)"
            continue
        res["models"][key] = measure_model(m, teacher, photos, labels, out, cfg, log)
    res["summary"] = {
        k: {
            kk: v[kk]
            for kk in ("fp32_ms", "int8_ms", "agreement", "speedup", "default_precision", "int8_variant")
        }
        for k, v in res["models"].items()
    }
    res["no_default_slower_than_fp32"] = all(v["default_ms"] <= v["fp32_ms"] for v in res["models"].values())
    return res
