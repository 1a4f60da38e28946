"""``edgeclip demo`` on real photos with the shipped reference models (``models/index.json``): free-text queries
and captions on the sample photos that scikit-image installs, teacher vs student speed at 224 px, an int8 bundle
exported and queried without torch, and a short label-free distillation so the pipeline itself runs. Offline,
no ../shared, a few minutes on 2 cores."""

from __future__ import annotations

import os
import time
from pathlib import Path

from edgeclip.core.env import machine_info
from edgeclip.core.errors import EdgeClipError
from edgeclip.core.io import write_json

# scikit-image's sample photos (public domain / CC0; see skimage.data) that are photographs, by file name
SAMPLE_PHOTOS = {
    "astronaut.png": "astronaut Eileen Collins",
    "camera.png": "a man with a camera (greyscale)",
    "chelsea.png": "Chelsea the cat",
    "coffee.png": "a cup of coffee",
    "motorcycle_left.png": "a motorcycle",
    "rocket.jpg": "a rocket launch",
    "hubble_deep_field.jpg": "the Hubble deep field",
    "coins.png": "Greek coins (greyscale)",
    "grass.png": "grass",
    "gravel.png": "gravel",
    "brick.png": "a brick wall",
    "moon.png": "the moon's surface (greyscale)",
}
QUERIES = [
    "a cat",
    "a cup of coffee",
    "a woman smiling",
    "a man taking a photograph",
    "a motorcycle",
    "a rocket launching into the sky",
    "stars in the night sky",
    "green grass",
    "a brick wall",
]


def _say(msg: str) -> None:
    print(f"\n==> {msg}", flush=True)


def sample_photos(out: Path) -> Path:
    """Write scikit-image's sample photographs as RGB JPEGs into ``out`` (they are not in the repository)."""
    try:
        import skimage
    except ImportError:
        raise EdgeClipError("the photos demo needs scikit-image (pip install scikit-image)") from None
    from PIL import Image

    src = Path(skimage.__file__).parent / "data"
    out.mkdir(parents=True, exist_ok=True)
    for name in SAMPLE_PHOTOS:
        p = src / name
        if p.is_file():
            with Image.open(p) as im:
                im.convert("RGB").save(out / (Path(name).stem + ".jpg"), quality=92)
    if not any(out.glob("*.jpg")):
        raise EdgeClipError(f"no sample photos in {src} (scikit-image {skimage.__version__})")
    return out


def caption_photos(captioner: str, photos: Path, beam: int = 5) -> dict[str, str]:
    """{file name: caption} of every photo in the folder ``photos`` by the captioner checkpoint ``captioner``."""
    import torch

    from edgeclip.data.sources import open_source
    from edgeclip.models.captioner import load_captioner
    from edgeclip.models.decode import generate

    cap, pp, _ = load_captioner(captioner)
    tf = pp.torch_transform()
    recs = list(open_source(str(photos)))
    with torch.no_grad():
        caps = generate(cap, torch.stack([tf(r.load()) for r in recs]), beam=beam, max_len=20)
    return {Path(r.name).name: c for r, c in zip(recs, caps)}


def run_photos_demo(out: Path, models: Path = Path("models"), fast: bool = False) -> dict:
    import torch
    from rich.console import Console
    from rich.table import Table

    from edgeclip.data.sources import open_source
    from edgeclip.export.bundle import export_bundle
    from edgeclip.lab.ship import shipped
    from edgeclip.models import load_student
    from edgeclip.models.stats import model_stats
    from edgeclip.models.teachers import load_teacher
    from edgeclip.train.cache import build_cache
    from edgeclip.train.distill import DistillConfig, distill
    from edgeclip.zeroshot.embedder import load_embedder
    from edgeclip.zeroshot.evaluate import search_images

    t0 = time.time()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    idx = shipped(models)
    result: dict = {
        "mode": "photos",
        "models": {r: idx[r] for r in ("teacher", "student", "bundle", "captioner") if r in idx},
    }

    _say("1/6 the shipped reference models and scikit-image's sample photos")
    photos = sample_photos(out / "photos")
    names = sorted(p.name for p in photos.glob("*.jpg"))
    print(f"  {len(names)} photos: {', '.join(names)}")
    for role, spec in result["models"].items():
        print(f"  {role:9s} {spec}")

    _say("2/6 free-text queries: the best photo for each text, teacher vs student vs int8 bundle (no torch)")
    teacher = load_embedder(teacher=idx["teacher"])
    student = load_embedder(teacher=idx["teacher"], student=idx["student"])
    models_ = {"student": student}
    if "bundle" in idx:
        models_["bundle_int8"] = load_embedder(bundle=idx["bundle"], precision="int8", threads=2)
    queries = QUERIES[:5] if fast else QUERIES
    res = search_images(teacher, models_, str(photos), queries, k=1)
    tab = Table(title="free-text queries (top photo, cosine)")
    tab.add_column("query")
    for role in res["models"]:
        tab.add_column(role)
    for qi, q in enumerate(queries):
        cells = []
        for m in res["models"].values():
            h = m["results"][qi]["hits"][0]
            cells.append(f"{Path(h['image']).stem} ({h['score']:.2f})")
        tab.add_row(q, *cells)
    Console().print(tab)
    result["queries"] = {
        role: {r["query"]: r["hits"][0]["image"] for r in m["results"]} for role, m in res["models"].items()
    }
    agree = [
        sum(result["queries"][r][q] == result["queries"]["teacher"][q] for q in queries) / len(queries)
        for r in models_
    ]
    result["top1_photo_agreement_with_teacher"] = dict(zip(models_, agree))

    if "captioner" in idx:
        _say("3/6 captions (the shipped captioner, beam 5)")
        result["captions"] = caption_photos(idx["captioner"], photos)
        for n, c in result["captions"].items():
            print(f"  {Path(n).stem:22s} {c}")
    else:
        _say("3/6 captions: no captioner is shipped in models/index.json yet (skipped)")

    _say("4/6 speed at 224 px, batch 1, this CPU: teacher image tower vs student")
    t = load_teacher(idx["teacher"])
    st, spp, _ = load_student(idx["student"])
    reps = 10 if fast else 30
    speed = {
        "teacher_224": model_stats(t.image_encoder, 224, reps=reps),
        "student_224": model_stats(st, 224, reps=reps),
        "teacher_native": model_stats(t.image_encoder, t.image_size, reps=reps),
        "student_native": model_stats(st, spp.size, reps=reps),
    }
    tab = Table(title=f"teacher vs student ({torch.get_num_threads()} threads)")
    for c in ("model", "input", "params (M)", "GFLOPs", "latency b1 (ms)"):
        tab.add_column(c, justify="left" if c == "model" else "right")
    for k, s in speed.items():
        who = f"teacher {t.extra.get('arch', '')}" if k.startswith("teacher") else f"student {st.arch}"
        tab.add_row(
            who,
            f"{s['input_size']} px",
            f"{s['params_m']:.2f}",
            f"{s['gflops']:.3f}",
            f"{s['latency_ms']:.2f}",
        )
    Console().print(tab)
    result["speed"] = speed
    result["speedup_224"] = speed["teacher_224"]["latency_ms"] / speed["student_224"]["latency_ms"]
    print(f"  student speed-up at 224 px: {result['speedup_224']:.2f}x")
    load, cores = os.getloadavg()[0], os.cpu_count() or 1
    result["load_average_1min"] = load
    if load > 0.5 * cores:
        print(
            f"  (load average {load:.1f} on {cores} cores: other jobs share this CPU, so these latencies are noisy;"
            " benchmarks/results/ has quiet-machine figures)"
        )

    _say("5/6 exporting the student as an int8 edge bundle, then the same queries without torch")
    bdir = out / "bundle"
    man = export_bundle(
        idx["student"],
        bdir,
        queries,  # the queries are the bundle's labels: their embeddings travel with it
        templates=["{}"],
        calib=str(photos),
        teacher=idx["teacher"],
        holdout=0.25,
        overwrite=True,
        int8_variants=["qdq_per_channel", "qoperator_per_channel"],
    )
    lab = load_embedder(bundle=str(bdir), precision="int8", threads=2)
    recs = list(open_source(str(photos)))
    sims = lab.text(queries, ["{}"]) @ lab.embed([r.load() for r in recs]).T
    top = {q: recs[int(sims[i].argmax())].name for i, q in enumerate(queries)}
    result["exported_bundle"] = {
        "path": str(bdir),
        "default": man.get("default_precision"),
        "bytes": {k: v["bytes"] for k, v in man["files"].items()},
        "parity": man["parity"],
        "top_photo": top,
        "agrees_with_student": sum(top[q] == result["queries"]["student"][q] for q in queries) / len(queries),
    }
    sizes = ", ".join(
        f"{k} {v / 1e6:.1f} MB" for k, v in result["exported_bundle"]["bytes"].items() if k.endswith(".onnx")
    )
    print(f"  {bdir}: {sizes}; default {man.get('default_precision')}")
    print(
        f"  int8 bundle's top photo = the torch student's for {result['exported_bundle']['agrees_with_student']:.0%}"
        " of the queries"
    )

    _say("6/6 a short label-free distillation from the shipped teacher (the pipeline itself)")
    cache = build_cache(
        list(open_source(str(photos))), t, out / "cache", views=4 if fast else 8, progress=False
    )
    cfg = DistillConfig(
        teacher=idx["teacher"],
        data=str(photos),
        out=str(out / "student"),
        cache=str(out / "cache"),
        student={"arch": "shufflenet_v2_x0_5", "img_size": 96},
        train={
            "epochs": 3 if fast else 10,
            "batch_size": 16,
            "lr": 3e-3,
            "num_workers": 0,
            "log_every": 1000,
        },
    )
    hist = distill(cfg, progress=False, teacher=t, resume=True)
    result["distill"] = {
        "cache": cache.as_dict(),
        "epochs": hist["epochs"],
        "student": str(out / "student" / "student.pt"),
    }
    result["seconds"] = time.time() - t0
    result["machine"] = machine_info()
    write_json(out / "demo_result.json", result)
    print(f"\ntotal time: {result['seconds']:.0f}s   results: {out / 'demo_result.json'}")
    return result
