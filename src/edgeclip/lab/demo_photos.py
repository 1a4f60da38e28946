"""``edgeclip demo`` on real photos with the shipped models (``models/index.json``): free-text queries
and captions on the sample photos that scikit-image installs, teacher vs student speed at 224 px, an int8 bundle
exported and queried without torch, and a short label-free distillation so the pipeline itself runs. Offline,
no ../shared, a few minutes on 2 cores."""

from __future__ import annotations

import os
import time
from pathlib import Path

from edgeclip.core.errors import EdgeClipError
from edgeclip.core.io import write_json
from edgeclip.core.machine import machine_info

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
# each query -> the sample photo that answers it (the demo counts how many each model gets right)
ANSWERS = {
    "a cat": "chelsea.jpg",
    "a cup of coffee": "coffee.jpg",
    "a woman smiling": "astronaut.jpg",
    "a man taking a photograph": "camera.jpg",
    "a motorcycle": "motorcycle_left.jpg",
    "a rocket launching into the sky": "rocket.jpg",
    "stars in the night sky": "hubble_deep_field.jpg",
    "green grass": "grass.jpg",
    "a brick wall": "brick.jpg",
}
QUERIES = list(ANSWERS)
# CLIP-sized image towers timed beside the student (open_clip configs, random weights: speed only)
CLIP_TOWERS = ("ViT-B-32", "MobileCLIP2-S0")


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
    from edgeclip.data.sources import open_source
    from edgeclip.models.captioner import TorchCaptioner
    from edgeclip.runtime.captioner import caption_records
    from edgeclip.runtime.decode import Decoding

    rows = caption_records(
        TorchCaptioner(captioner, Decoding(beam=beam)), open_source(str(photos)), batch_size=64
    )
    return {Path(r["image"]).name: r["caption"] for r in rows}


def clip_tower_speed(names, size: int, reps: int) -> dict[str, dict]:
    """Batch-1 latency of open_clip image towers built from their configs with random weights (speed only, the
    same input size and threads as the student), reparameterised for inference as MobileCLIP ships them."""
    import logging

    import open_clip
    import torch

    from edgeclip.models.cost import model_stats

    out: dict[str, dict] = {}
    for name in names:
        if name not in open_clip.list_models():
            out[name] = {"unavailable": f"open_clip {open_clip.__version__} has no config {name}"}
            continue
        logging.disable(
            logging.WARNING
        )  # open_clip's "no pretrained weights loaded": random weights are the point
        try:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(0)
                visual = open_clip.create_model(name, pretrained=None).visual.eval()
        finally:
            logging.disable(logging.NOTSET)
        try:
            from timm.utils.model import reparameterize_model

            visual = reparameterize_model(
                visual
            )  # MobileCLIP's train-time branches folded (a no-op for a ViT)
        except ImportError:  # an older timm: timed as built
            pass
        out[name] = {**model_stats(visual, size, reps=reps), "weights": "random (speed only)"}
    return out


def _top_hits(res: dict, k: int) -> dict[str, dict[str, list[dict]]]:
    """role -> query -> its top ``k`` hits (photo name and cosine)."""
    return {
        role: {
            r["query"]: [{"image": h["image"], "score": h["score"]} for h in r["hits"][:k]]
            for r in m["results"]
        }
        for role, m in res["models"].items()
    }


def run_photos_demo(out: Path, models: Path = Path("models"), fast: bool = False) -> dict:
    """The photos demo as six named steps over one result dict (written to demo_result.json and the page)."""
    import torch

    from edgeclip.lab.demo_page import write_demo_page
    from edgeclip.lab.ship import shipped

    t0 = time.time()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    demo = _PhotosDemo(out, shipped(models), fast)
    for step in (demo.models, demo.queries, demo.captions, demo.speed, demo.bundle, demo.distill):
        step()
    result = demo.result
    result["seconds"] = time.time() - t0
    result["machine"] = machine_info()
    write_json(out / "demo_result.json", result)
    page = write_demo_page(out, result, demo.photos)
    print(f"\ntotal time: {result['seconds']:.0f}s   results: {out / 'demo_result.json'}")
    print(f"the page: {page}")
    return result


class _PhotosDemo:
    def __init__(self, out: Path, idx: dict, fast: bool):
        self.out, self.idx, self.fast = out, idx, fast
        self.result: dict = {
            "mode": "photos",
            "answers": dict(ANSWERS),  # the photo that answers each query (the page marks them)
            "models": {r: idx[r] for r in ("teacher", "student", "bundle", "captioner") if r in idx},
        }
        self.queries_ = QUERIES[:5] if fast else QUERIES

    def models(self) -> None:
        _say("1/6 the shipped models and scikit-image's sample photos")
        self.photos = sample_photos(self.out / "photos")
        names = sorted(p.name for p in self.photos.glob("*.jpg"))
        print(f"  {len(names)} photos: {', '.join(names)}")
        for role, spec in self.result["models"].items():
            print(f"  {role:9s} {spec}")

    def queries(self) -> None:
        from edgeclip.zeroshot.embedder import load_embedder
        from edgeclip.zeroshot.evaluate import search_images

        _say(
            "2/6 free-text queries: the best photos for each text, teacher vs student vs int8 bundle (no torch)"
        )
        idx, result, queries = self.idx, self.result, self.queries_
        teacher = load_embedder(teacher=idx["teacher"])
        models_ = {"student": load_embedder(teacher=idx["teacher"], student=idx["student"])}
        if "bundle" in idx:
            models_["bundle_int8"] = load_embedder(bundle=idx["bundle"], precision="int8", threads=2)
        res = search_images(teacher, models_, str(self.photos), queries, k=3)
        result["top3"] = _top_hits(res, 3)
        result["queries"] = {
            role: {q: hits[0]["image"] for q, hits in t.items()} for role, t in result["top3"].items()
        }
        result["right"] = {
            role: sum(ANSWERS[q] == top for q, top in tops.items())
            for role, tops in result["queries"].items()
        }
        _print_query_table(result, list(res["models"]), queries)
        agree = [
            sum(result["queries"][r][q] == result["queries"]["teacher"][q] for q in queries) / len(queries)
            for r in models_
        ]
        result["top1_photo_agreement_with_teacher"] = dict(zip(models_, agree))

    def captions(self) -> None:
        if "captioner" not in self.idx:
            _say("3/6 captions: no captioner is shipped in models/index.json yet (skipped)")
            return
        _say("3/6 captions (the shipped captioner, beam 5)")
        self.result["captions"] = caption_photos(self.idx["captioner"], self.photos)
        for n, c in self.result["captions"].items():
            print(f"  {Path(n).stem:22s} {c}")

    def speed(self) -> None:
        import torch

        from edgeclip.models import load_student
        from edgeclip.models.cost import model_stats
        from edgeclip.models.teachers import load_teacher

        threads, result = torch.get_num_threads(), self.result
        _say(
            f"4/6 speed at 224 px, batch 1, {threads} threads: the student beside its teacher and CLIP-sized towers"
        )
        self.teacher = t = load_teacher(self.idx["teacher"])
        st, spp, _ = load_student(self.idx["student"])
        reps = 5 if self.fast else 20
        speed = {
            "teacher_224": model_stats(t.image_encoder, 224, reps=reps),
            "student_224": model_stats(st, 224, reps=reps),
            "teacher_native": model_stats(t.image_encoder, t.image_size, reps=reps),
            "student_native": model_stats(st, spp.size, reps=reps),
        }
        clip = clip_tower_speed(CLIP_TOWERS, 224, reps=3 if self.fast else 10)
        result["speed"], result["clip_towers"] = speed, clip
        rows = [
            (f"student {st.arch} (shipped)", speed["student_224"]),
            (f"teacher {t.extra.get('arch', '')} (reference, trained here)", speed["teacher_224"]),
            *(
                (f"open_clip {n} image tower (random weights)", v)
                for n, v in clip.items()
                if "latency_ms" in v
            ),
        ]
        result["speed_rows"] = [
            {"model": m, **{k: v[k] for k in ("input_size", "params_m", "gflops", "latency_ms")}}
            for m, v in rows
        ]
        _print_speed_table(rows, speed["student_224"]["latency_ms"], threads)
        result["speedup_224"] = speed["teacher_224"]["latency_ms"] / speed["student_224"]["latency_ms"]
        load, cores = os.getloadavg()[0], os.cpu_count() or 1
        result["load_average_1min"] = load
        if load > 0.5 * cores:
            print(
                f"  (load average {load:.1f} on {cores} cores: other jobs share this CPU, so these latencies are noisy)"
            )

    def bundle(self) -> None:
        from edgeclip.data.sources import open_source
        from edgeclip.export.bundle import export_bundle
        from edgeclip.zeroshot.embedder import load_embedder

        _say("5/6 exporting the student as an int8 edge bundle, then the same queries without torch")
        out, queries, result = self.out, self.queries_, self.result
        bdir = out / "bundle"
        export_log: list[str] = []  # the export's own report (variants timed, the choice) goes to a file
        man = export_bundle(
            self.idx["student"],
            bdir,
            queries,  # the queries are the bundle's labels: their embeddings travel with it
            templates=["{}"],
            calib=str(self.photos),
            teacher=self.idx["teacher"],
            holdout=0.25,
            overwrite=True,
            int8_variants=["qdq_per_channel", "qoperator_per_channel"],
            log=export_log.append,
        )
        (out / "export.log").write_text("\n".join(export_log) + "\n", encoding="utf-8")
        lab = load_embedder(bundle=str(bdir), precision="int8", threads=2)
        self.recs = recs = list(open_source(str(self.photos)))
        sims = lab.text(queries, ["{}"]) @ lab.embed([r.load() for r in recs]).T
        top = {q: recs[int(sims[i].argmax())].name for i, q in enumerate(queries)}
        eb = result["exported_bundle"] = {
            "path": str(bdir),
            "default": man.get("default_precision"),
            "bytes": {k: v["bytes"] for k, v in man["files"].items()},
            "parity": man["parity"],
            "top_photo": top,
            "agrees_with_student": sum(top[q] == result["queries"]["student"][q] for q in queries)
            / len(queries),
        }
        sizes = ", ".join(f"{k} {v / 1e6:.1f} MB" for k, v in eb["bytes"].items() if k.endswith(".onnx"))
        print(
            f"  {bdir}: {sizes}; default {man.get('default_precision')} (how it chose: {out / 'export.log'})"
        )
        print(
            f"  int8 bundle's top photo = the torch student's for {eb['agrees_with_student']:.0%} of the queries"
        )

    def distill(self) -> None:
        import contextlib

        from edgeclip.train.cache import build_cache
        from edgeclip.train.distill import DistillConfig, distill

        _say("6/6 a short label-free distillation from the shipped teacher (the pipeline itself)")
        out, fast = self.out, self.fast
        cache = build_cache(
            list(self.recs), self.teacher, out / "cache", views=4 if fast else 8, progress=False
        )
        cfg = DistillConfig(
            teacher=self.idx["teacher"],
            data=str(self.photos),
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
        t_d = time.time()
        with open(out / "distill.log", "w", encoding="utf-8") as fh, contextlib.redirect_stdout(fh):
            hist = distill(
                cfg, progress=False, teacher=self.teacher, resume=(out / "student" / "last.ckpt").is_file()
            )
        ep = hist["epochs"]
        print(
            f"  {len(ep)} epochs on {len(self.recs)} photos in {time.time() - t_d:.0f} s: train cosine to the "
            f"teacher {ep[0]['cos']:.2f} -> {ep[-1]['cos']:.2f}; {out / 'student' / 'student.pt'} "
            f"(log: {out / 'distill.log'})"
        )
        self.result["distill"] = {
            "cache": cache.as_dict(),
            "epochs": ep,
            "student": str(out / "student" / "student.pt"),
        }


def _print_query_table(result: dict, roles: list[str], queries: list[str]) -> None:
    from rich.console import Console
    from rich.table import Table

    tab = Table(title="free-text queries: top photo (cosine); ✓ = the photo that answers it")
    tab.add_column("query")
    for role in roles:
        tab.add_column(f"{role} ({result['right'][role]}/{len(queries)} ✓)")
    for q in queries:
        cells = []
        for role in roles:
            h = result["top3"][role][q][0]
            cells.append(
                f"{Path(h['image']).stem} ({h['score']:.2f})" + (" ✓" if ANSWERS[q] == h["image"] else "")
            )
        tab.add_row(q, *cells)
    Console().print(tab)


def _print_speed_table(rows: list, base: float, threads: int) -> None:
    from rich.console import Console
    from rich.table import Table

    tab = Table(title=f"image towers at 224 px, batch 1, {threads} threads, torch eager")
    for c in ("model", "params (M)", "GFLOPs", "latency b1 (ms)", "vs student"):
        tab.add_column(c, justify="left" if c == "model" else "right")
    for m, v in rows:
        tab.add_row(
            m,
            f"{v['params_m']:.2f}",
            f"{v['gflops']:.3f}",
            f"{v['latency_ms']:.1f}",
            f"{v['latency_ms'] / base:.1f}x",
        )
    Console().print(tab)
