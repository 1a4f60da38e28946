"""Speed suite: teacher towers and students side by side, torch fp32 vs ONNX Runtime fp32 / int8.

Every model is measured in the same process with the same thread count: parameters, GFLOPs, batch-1
latency (median of repeated runs after warm-up) and batch-N throughput, for three backends:

* ``torch``: eager PyTorch fp32 (``torch.inference_mode``);
* ``ort_fp32``: the model exported with :func:`edgeclip.export.onnx.export_onnx`, run by ONNX Runtime;
* ``ort_int8``: that graph quantized by :func:`edgeclip.quant.ort.quantize_static_onnx` (static QDQ,
  calibrated on real images) or, for transformers, :func:`quantize_dynamic_onnx`.

Model specs:

* ``clip:ARCH``      open_clip image tower with its real architecture and *random* weights (speed does
                     not depend on the weights, and no hub is needed), e.g. ``clip:ViT-B-32``, ``clip:RN50``;
                     ``clip:ARCH@SIZE`` at another input size, ``+reparam`` folded for inference
                     (``clip:MobileCLIP2-S0@224+reparam``), TinyCLIP sizes from ``configs/clip_arch``;
* ``NAME``           a student backbone from the registry (+ the MLP projection head), e.g. ``mobilenet_v3_large``,
                     ``timm:vit_small_patch16_224``;
* ``ckpt:PATH``      a distilled student checkpoint (measured at its own input size);
* ``teacher:SPEC``   the image tower of any teacher spec (``reference-lit:/p/teacher.pt``, ...).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from edgeclip.core.errors import EdgeClipError
from edgeclip.models.cost import count_params, flops, latency_ms
from edgeclip.runtime.session import ort_session

TEACHERS_FULL = ["clip:ViT-B-32", "clip:RN50"]
STUDENTS_FULL = [
    "shufflenet_v2_x0_5",
    "shufflenet_v2_x1_0",
    "mobilenet_v3_small",
    "mobilenet_v3_large",
    "efficientnet_b0",
    "efficientnet_b3",
    "timm:vit_small_patch16_224",
]
TEACHERS_QUICK = ["clip:ViT-B-32"]
STUDENTS_QUICK = ["shufflenet_v2_x0_5", "mobilenet_v3_small"]
BACKENDS = ("torch", "ort_fp32", "ort_int8")


@dataclass
class SpeedModel:
    """A model to measure: ``role`` is teacher or student; ``img_size`` its input resolution."""

    name: str
    role: str
    img_size: int
    module: nn.Module
    transformer: bool = False
    info: dict[str, Any] = field(default_factory=dict)


class _ClipTower(nn.Module):
    def __init__(self, visual: nn.Module):
        super().__init__()
        self.visual = visual

    def forward(self, x):
        return self.visual(x)


CLIP_ARCH_DIR = Path(__file__).resolve().parents[1] / "configs" / "clip_arch"


def _clip_tower(spec: str, role: str | None) -> SpeedModel:
    """``clip:ARCH[@SIZE][+reparam]``: open_clip's image tower of ARCH with random weights, at its own input size
    or SIZE, ``+reparam``: with its train-time branches folded for inference (timm's ``reparameterize_model``,
    as MobileCLIP ships its towers). ARCH may also be one of ``configs/clip_arch/*.json`` (TinyCLIP sizes)."""
    import open_clip

    body, _, flags = spec[5:].partition("+")
    arch, _, size_s = body.partition("@")
    if arch not in open_clip.list_models() and (CLIP_ARCH_DIR / f"{arch}.json").is_file():
        open_clip.add_model_config(CLIP_ARCH_DIR)
    if arch not in open_clip.list_models():
        raise EdgeClipError(f"unknown open_clip architecture {arch!r} in {spec!r}")
    if flags not in ("", "reparam"):
        raise EdgeClipError(f"{spec!r}: the only flag is +reparam")
    torch.manual_seed(0)
    m = open_clip.create_model(arch, pretrained=None)  # random weights: no hub, same speed
    visual = m.visual.eval()
    if flags == "reparam":
        from timm.utils.model import reparameterize_model

        visual = reparameterize_model(visual)
    size = m.visual.image_size
    size = int(size_s) if size_s else (size[0] if isinstance(size, (tuple, list)) else int(size))
    return SpeedModel(
        spec,
        role or "teacher",
        size,
        _ClipTower(visual).eval(),
        transformer="vit" in arch.lower(),
        info={"weights": "random (speed only)", "reparameterized": flags == "reparam"},
    )


def build_speed_model(
    spec: str, img_size: int = 224, embed_dim: int = 512, role: str | None = None
) -> SpeedModel:
    """Build the module named by ``spec`` (see the module docstring) in eval mode on the CPU."""
    if spec.startswith("clip:"):
        return _clip_tower(spec, role)
    if spec.startswith("ckpt:"):
        from edgeclip.models.student import load_student

        st, pp, ck = load_student(spec[5:])
        return SpeedModel(
            spec,
            role or "student",
            pp.size,
            st.eval(),
            transformer="vit" in st.arch.lower(),
            info={"arch": st.arch, "teacher": ck.get("teacher", {}).get("id")},
        )
    if spec.startswith("teacher:"):
        from edgeclip.models.teachers import load_teacher

        t = load_teacher(spec[8:], device="cpu")
        arch = str(t.extra.get("arch", t.id))
        return SpeedModel(
            spec,
            role or "teacher",
            t.image_size,
            t.image_encoder.eval(),
            transformer="vit" in arch.lower(),
            info={"id": t.id},
        )
    from edgeclip.models.student import create_student

    torch.manual_seed(0)
    st = create_student(spec, embed_dim, img_size=img_size)
    return SpeedModel(
        spec,
        role or "student",
        img_size,
        st.eval(),
        transformer="vit" in spec.lower(),
        info={"embed_dim": embed_dim, "weights": "random (speed only)"},
    )


def _timed(
    fn: Callable[[], object], batch: int, warmup: int, reps: int, max_seconds: float
) -> dict[str, float]:
    r = latency_ms(fn, warmup=warmup, reps=reps, max_seconds=max_seconds, min_reps=min(reps, 3))
    return {**r, "images_per_s": batch / (r["median_ms"] / 1000.0)}


def measure_backend(
    run: Callable[[np.ndarray], object],
    img_size: int,
    batch: int,
    reps: int,
    thr_reps: int,
    warmup: int = 3,
    max_seconds: float = 0.0,
) -> dict[str, float]:
    """Batch-1 latency and batch-``batch`` throughput of ``run`` (a callable on a float32 NCHW array).

    ``max_seconds`` caps each timed loop (at least 3 runs) so that slow teachers do not take forever;
    the number of timed runs is recorded.
    """
    rng = np.random.default_rng(0)
    x1 = rng.standard_normal((1, 3, img_size, img_size), dtype=np.float32)
    xb = rng.standard_normal((batch, 3, img_size, img_size), dtype=np.float32)
    b1 = _timed(lambda: run(x1), 1, warmup, reps, max_seconds)
    bn = _timed(lambda: run(xb), batch, 1, thr_reps, max_seconds * 3)
    return {
        "b1_median_ms": b1["median_ms"],
        "b1_p90_ms": b1["p90_ms"],
        "b1_reps": b1["reps"],
        f"b{batch}_median_ms": bn["median_ms"],
        "throughput_images_per_s": bn["images_per_s"],
        "throughput_batch": batch,
        "throughput_reps": bn["reps"],
    }


def _torch_runner(module: nn.Module) -> Callable[[np.ndarray], object]:
    module.eval()

    def run(x: np.ndarray):
        with torch.inference_mode():
            return module(torch.from_numpy(x))

    return run


def _ort_runner(path: Path, threads: int) -> Callable[[np.ndarray], object]:
    sess = ort_session(path, threads)
    name = sess.get_inputs()[0].name
    return lambda x: sess.run(None, {name: x})


def _short(e: BaseException) -> str:
    return f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"


def _runner(be: str, sm: SpeedModel, files: tuple[Path, Path], calibration, threads: int, rec: dict):
    """The batch -> output function of one backend; the ONNX files exported (and int8 quantized) on the way,
    their sizes and int8 method recorded in ``rec``."""
    from edgeclip.export.onnx import export_onnx
    from edgeclip.quant.ort import quantize_dynamic_onnx, quantize_static_onnx

    fp32, int8 = files
    if be == "torch":
        return _torch_runner(sm.module)
    if be not in ("ort_fp32", "ort_int8"):
        raise EdgeClipError(f"unknown backend {be!r} ({', '.join(BACKENDS)})")
    if be == "ort_fp32" or not fp32.is_file():
        export_onnx(sm.module, fp32, input_shape=(1, 3, sm.img_size, sm.img_size))
    if be == "ort_fp32":
        rec["onnx_fp32_mb"] = fp32.stat().st_size / 2**20
        return _ort_runner(fp32, threads)
    if sm.transformer:
        quantize_dynamic_onnx(fp32, int8)
        rec["int8_method"] = "dynamic (weights int8, activations at run time)"
    else:
        quantize_static_onnx(fp32, int8, calibration(sm.img_size))
        rec["int8_method"] = "static QDQ per-channel, MinMax on real images"
    rec["onnx_int8_mb"] = int8.stat().st_size / 2**20
    return _ort_runner(int8, threads)


def measure_model(
    sm: SpeedModel,
    workdir: Path,
    calibration: Callable[[int], list[np.ndarray]],
    threads: int,
    batch: int = 32,
    reps: int = 20,
    thr_reps: int = 5,
    backends: Sequence[str] = BACKENDS,
    log: Callable[[str], None] = print,
    rapl=None,
    energy_seconds: float = 3.0,
    warmup: int = 3,
    max_seconds: float = 0.0,
) -> dict[str, Any]:
    """Measure one model on every backend. A backend that fails is recorded with its error, never hidden."""
    rec: dict[str, Any] = {
        "name": sm.name,
        "role": sm.role,
        "img_size": sm.img_size,
        "transformer": sm.transformer,
        **sm.info,
    }
    rec["params"] = count_params(sm.module)
    rec["params_m"] = rec["params"] / 1e6
    rec["torch_fp32_mb"] = sum(p.numel() * p.element_size() for p in sm.module.parameters()) / 2**20
    rec["gflops"] = flops(sm.module, sm.img_size) / 1e9
    safe = sm.name.replace(":", "_").replace("/", "_")
    files = (workdir / f"{safe}-{sm.img_size}.onnx", workdir / f"{safe}-{sm.img_size}.int8.onnx")
    for be in backends:
        t0 = time.time()
        try:
            run = _runner(be, sm, files, calibration, threads, rec)
            rec[be] = measure_backend(
                run, sm.img_size, batch, reps, thr_reps, warmup=warmup, max_seconds=max_seconds
            )
            rec[be]["seconds"] = time.time() - t0
            if be == "torch" and rapl is not None and rapl.available:
                from edgeclip.lab.energy import measure_energy

                xb = np.random.default_rng(1).standard_normal(
                    (batch, 3, sm.img_size, sm.img_size), dtype=np.float32
                )
                rec["energy_rapl"] = measure_energy(
                    lambda run=run, xb=xb: run(xb), batch, seconds=energy_seconds, rapl=rapl
                )
            log(
                f"  {sm.name:32s} {be:9s} b1 {rec[be]['b1_median_ms']:9.2f} ms   "
                f"b{batch} {rec[be]['throughput_images_per_s']:8.1f} img/s"
            )
        except Exception as e:  # export/quantization failures are model specific: record and go on
            rec[be] = {"error": _short(e)}
            log(f"  {sm.name:32s} {be:9s} FAILED: {rec[be]['error']}")
    return rec


def ratios(records: Sequence[dict[str, Any]], backends: Sequence[str] = BACKENDS) -> list[dict[str, Any]]:
    """Student vs teacher within the same run (same input size): speed-up, size and FLOPs reduction.

    ``speedup_*`` = teacher latency / student latency; ``int8_vs_teacher_fp32`` compares the deployable
    student (ONNX int8) with the teacher as usually run (torch fp32).
    """
    out = []
    teachers = [r for r in records if r["role"] == "teacher"]
    for s in (r for r in records if r["role"] == "student"):
        for t in teachers:
            if t["img_size"] != s["img_size"]:
                continue
            row: dict[str, Any] = {
                "student": s["name"],
                "teacher": t["name"],
                "img_size": s["img_size"],
                "params_reduction": t["params"] / max(1, s["params"]),
                "gflops_reduction": t["gflops"] / s["gflops"] if s["gflops"] else None,
            }
            for be in backends:
                ts, ss = t.get(be, {}), s.get(be, {})
                if "b1_median_ms" in ts and "b1_median_ms" in ss:
                    row[f"{be}_b1_speedup"] = ts["b1_median_ms"] / ss["b1_median_ms"]
                    row[f"{be}_throughput_ratio"] = (
                        ss["throughput_images_per_s"] / ts["throughput_images_per_s"]
                    )
            if "b1_median_ms" in s.get("ort_int8", {}) and "b1_median_ms" in t.get("torch", {}):
                row["int8_vs_teacher_fp32_b1_speedup"] = (
                    t["torch"]["b1_median_ms"] / s["ort_int8"]["b1_median_ms"]
                )
            out.append(row)
    return out


def calibration_images(sources: Iterable[Path], n: int, batch: int = 4, seed: int = 0):
    """A function ``size -> list of (B,3,size,size) float32 batches`` of real images (CLIP normalisation).

    The first existing source folder is used; images that fail to decode are skipped.
    """
    from edgeclip.core.errors import ImageLoadError
    from edgeclip.data.sources import open_source
    from edgeclip.data.transforms import Preprocess

    recs = None
    for s in sources:
        if s is not None and Path(s).exists():
            try:
                recs = open_source(str(s)).records
                break
            except EdgeClipError:
                continue
    if not recs:
        raise EdgeClipError("no calibration images found for int8 quantization")
    rng = np.random.default_rng(seed)
    pick = [recs[i] for i in rng.permutation(len(recs))[: max(n * 2, n)]]
    cache: dict[int, list[np.ndarray]] = {}

    def get(size: int) -> list[np.ndarray]:
        if size not in cache:
            tf = Preprocess(size=size).torch_transform()
            xs = []
            for r in pick:
                try:
                    xs.append(tf(r.load()).numpy())
                except ImageLoadError:
                    continue
                if len(xs) >= n:
                    break
            cache[size] = [np.stack(xs[i : i + batch]) for i in range(0, len(xs), batch)]
        return cache[size]

    return get


def run_speed_suite(
    models: Sequence[str],
    workdir: Path,
    calibration,
    threads: int,
    img_size: int = 224,
    embed_dim: int = 512,
    batch: int = 32,
    reps: int = 20,
    thr_reps: int = 5,
    backends: Sequence[str] = BACKENDS,
    log: Callable[[str], None] = print,
    roles: dict[str, str] | None = None,
    energy_seconds: float = 3.0,
    warmup: int = 3,
    max_seconds: float = 0.0,
) -> dict[str, Any]:
    from edgeclip.lab.energy import Rapl

    workdir.mkdir(parents=True, exist_ok=True)
    rapl = Rapl()
    records = []
    t0 = time.time()
    for spec in models:
        try:
            sm = build_speed_model(spec, img_size=img_size, embed_dim=embed_dim, role=(roles or {}).get(spec))
        except EdgeClipError as e:
            records.append({"name": spec, "role": (roles or {}).get(spec, "?"), "error": str(e)})
            log(f"  {spec}: skipped ({e})")
            continue
        timing = {
            "rapl": rapl,
            "energy_seconds": energy_seconds,
            "warmup": warmup,
            "max_seconds": max_seconds,
        }
        records.append(
            measure_model(sm, workdir, calibration, threads, batch, reps, thr_reps, backends, log, **timing)
        )
        del sm
    settings = {"img_size": img_size, "batch": batch, "reps_b1": reps, "reps_throughput": thr_reps}
    settings.update(warmup=warmup, max_seconds_b1=max_seconds, max_seconds_throughput=max_seconds * 3)
    ok = [r for r in records if "error" not in r]
    return {
        **settings,
        "threads": threads,
        "backends": list(backends),
        "models": records,
        "ratios": ratios(ok, backends),
        "seconds": time.time() - t0,
        "method": SPEED_METHOD,
    }


SPEED_METHOD = (
    "median wall-clock of repeated runs after warm-up, all models in one process with the same thread count; "
    "random inputs; teacher towers have random weights (speed only)"
)


# ------------------------------------------------------------------------------------------ captioner
def speed_stage(cfg: dict, out: Path, log: Callable[[str], None] = print) -> dict[str, Any]:
    """The ``speed`` lab task: {models, backends, threads, img_size, embed_dim, calibration: [folders], calib,
    batch, reps, thr_reps} -> :func:`run_speed_suite`'s results, int8 calibrated on real photos."""
    calib = calibration_images([Path(p) for p in cfg.get("calibration", [])], int(cfg.get("calib", 32)))
    return run_speed_suite(
        list(cfg["models"]),
        out / "onnx",
        calib,
        int(cfg.get("threads", 2)),
        img_size=int(cfg.get("img_size", 224)),
        embed_dim=int(cfg.get("embed_dim", 512)),
        batch=int(cfg.get("batch", 32)),
        reps=int(cfg.get("reps", 30)),
        thr_reps=int(cfg.get("thr_reps", 3)),
        backends=tuple(cfg.get("backends", BACKENDS)),
        log=log,
        roles={m: ("teacher" if m.startswith(("clip:", "teacher:")) else "student") for m in cfg["models"]},
        energy_seconds=0.0,
    )
