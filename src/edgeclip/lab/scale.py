"""The scale benchmark (``experiments/scale.yaml``, in ``make bench``; issue 18): the teacher cache built by one and
by two torchrun workers of one thread each (and by one worker on every core, for reference), a synthetic cache of
a million keys opened in a fresh process (seconds and resident memory), and the distillation data path: images/s
of decode + augment alone against a full training step (student forward, loss, backward, optimizer), on the CPU
and, when one is there, on CUDA.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from edgeclip.core.errors import EdgeClipError


def _env(threads: int) -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": str(threads), "HF_HUB_OFFLINE": "1"}


def cache_rate(photos: str, teacher: str, out: Path, workers: int, threads: int, chunk: int = 64) -> dict:
    """``edgeclip cache`` of the list ``photos`` into a fresh folder by ``workers`` torchrun workers of ``threads``
    threads each: images/s over the launch's wall time (process start, teacher load and index included)."""
    import shutil

    if out.exists():
        shutil.rmtree(out)
    edge = ["-m", "edgeclip", "cache", photos, "--teacher", teacher, "--out", str(out), "--chunk", str(chunk)]
    cmd = (
        [sys.executable, *edge]
        if workers == 1
        else [
            str(Path(sys.executable).parent / "torchrun"),
            "--standalone",
            f"--nproc_per_node={workers}",
            *edge,
        ]
    )
    t0 = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True, env=_env(threads), timeout=3600)
    wall = time.perf_counter() - t0
    if r.returncode != 0:
        raise EdgeClipError(f"cache build failed: {r.stderr.strip().splitlines()[-1][:300]}")
    from edgeclip.train.cache import EmbeddingCache

    n = len(EmbeddingCache(out))
    return {
        "workers": workers,
        "threads_per_worker": threads,
        "images": n,
        "wall_s": wall,
        "images_per_s": n / wall,
    }


_OPEN_PROBE = """
import json, sys, time
def rss_mb():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
from edgeclip.train.cache import EmbeddingCache
base = rss_mb()
t1 = time.perf_counter()
c = EmbeddingCache(sys.argv[1])
t2 = time.perf_counter()
rss = rss_mb()
keys = json.loads(open(sys.argv[2]).read())
t3 = time.perf_counter()
held = [k for k in keys if k in c]
hits = len(held)
t4 = time.perf_counter()
arr = c.get_many(held[:1000])
t5 = time.perf_counter()
print(json.dumps({"open_s": t2 - t1, "n": len(c), "rss_mb_after_imports": base,
                  "open_mb": rss - base, "rss_mb_after_lookups": rss_mb(),
                  "lookup_us": (t4 - t3) / len(keys) * 1e6, "hits": hits,
                  "get_many_ms": (t5 - t4) * 1000, "get_many_n": len(arr), "shape": list(arr.shape)}))
"""


def synthetic_cache(root: Path, n_keys: int, part_rows: int = 1000, dim: int = 8) -> dict[str, Any]:
    """A cache folder of ``n_keys`` keys (random unit fp16 embeddings of ``dim`` dims: the index does not depend on
    the width) written the way a build writes it, then indexed; -> build figures and a sample of its keys."""
    from edgeclip.core.io import write_json
    from edgeclip.train.cache import CACHE_FORMAT, write_cache_index

    root.mkdir(parents=True, exist_ok=True)
    meta = {
        "format": CACHE_FORMAT,
        "teacher": {"id": "synthetic", "preprocess": {}},
        "views": 1,
        "view_spec": {"scale": [0.5, 1.0], "ratio": [0.75, 1.333], "flip": True, "seed": 0},
        "dim": dim,
        "dtype": "float16",
        "normalized": True,
        "source": "synthetic",
    }
    write_json(root / "meta.json", meta)
    rng = np.random.default_rng(0)
    t0 = time.perf_counter()
    sample = []
    for p in range(0, n_keys, part_rows):
        rows = min(part_rows, n_keys - p)
        keys = [
            f"/data/frames/cam{(p + i) % 997:03d}/frame{p + i:09d}.jpg|{40000 + i}|{1700000000 + p + i}"
            for i in range(rows)
        ]
        e = rng.standard_normal((rows, 1, dim)).astype(np.float16)
        name = f"part-{p // part_rows:06d}-synthetic"
        np.save(root / f"{name}.npy", e)
        (root / f"{name}.keys.json").write_text(json.dumps(keys))
        sample += keys[:: max(1, rows // 10)]
    t1 = time.perf_counter()
    write_cache_index(root, meta)
    t2 = time.perf_counter()
    return {
        "keys": n_keys,
        "parts": -(-n_keys // part_rows),
        "write_parts_s": t1 - t0,
        "index_build_s": t2 - t1,
        "sample": sample,
    }


def index_open(root: Path, sample: list[str]) -> dict[str, Any]:
    """Open the cache at ``root`` in a fresh process: seconds, memory (max RSS growth), per-key lookup time."""
    rng = np.random.default_rng(1)
    keys = [sample[i] for i in rng.choice(len(sample), size=min(10000, len(sample)), replace=False)]
    keys += [f"/not/there/{i}.jpg|1|1" for i in range(1000)]
    kf = root.parent / f"{root.name}.probe-keys.json"
    kf.write_text(json.dumps(keys))
    r = subprocess.run(
        [sys.executable, "-c", _OPEN_PROBE, str(root), str(kf)],
        capture_output=True,
        text=True,
        env=_env(1),
        timeout=600,
    )
    if r.returncode != 0:
        raise EdgeClipError(f"index probe failed: {r.stderr.strip().splitlines()[-1][:300]}")
    out = json.loads(r.stdout.strip().splitlines()[-1])
    out["lookups"] = len(keys)
    out["misses_expected"] = 1000
    return out


def data_path_rates(photos: str, cache: str, teacher: str, cfg: dict) -> dict[str, Any]:
    """Images/s of the distillation data path alone (decode, crop, resize, normalise, targets: the DataLoader with
    the training's workers) and of full training steps fed by it, on each device here (CPU; CUDA when present)."""
    import torch

    from edgeclip.train.distill import DistillConfig, DistillTask
    from edgeclip.train.engine import TrainConfig, Trainer

    size, bs = int(cfg.get("img_size", 224)), int(cfg.get("batch_size", 64))
    batches = int(cfg.get("batches", 8))
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    out: dict[str, Any] = {"img_size": size, "batch_size": bs, "batches": batches}
    for dev in devices:
        tc = {
            "epochs": 1,
            "batch_size": bs,
            "accelerator": dev,
            "num_workers": cfg.get("num_workers", "auto"),
        }
        dc = DistillConfig(
            teacher=teacher,
            data=photos,
            cache=cache,
            out=str(Path(cfg["work"]) / f"dp_{dev}"),
            student={"arch": cfg.get("arch", "shufflenet_v2_x1_0"), "img_size": size},
            train=tc,
        )
        from edgeclip.models.teachers import load_teacher

        task = DistillTask(dc, load_teacher(teacher, device="cpu"), TrainConfig(**tc), progress=False)
        trainer = Trainer(TrainConfig(**tc), dc.out, progress=False)
        trainer.launch()  # the Trainer's own first steps: the same loader and model a training run gets
        trainer.seed()
        task.setup(trainer)
        trainer.configure(task)
        loader = trainer.loader

        decode = _rate(loader, None, trainer, batches, bs)
        step = _rate(loader, task, trainer, batches, bs)
        out[dev] = {
            "decode_images_per_s": decode,
            "step_images_per_s": step,
            "step_over_decode": step / decode,
            "workers": trainer.history["data_workers"],
            "pin_memory": bool(getattr(loader, "pin_memory", False)),
        }
    return out


def _rate(loader, task, trainer, batches: int, bs: int) -> float:
    """Images/s over ``batches`` batches of ``loader`` after the first: batches alone (``task`` None), or each fed
    to a full training step (forward, loss, backward, optimizer) of ``task``."""
    import torch

    it = iter(loader)
    next(it)  # worker start-up and the first batch are not the steady rate
    t0 = time.perf_counter()
    for _ in range(batches):
        batch = next(it)
        if task is not None:
            metrics = task.training_step(trainer.model, batch)
            trainer.optimizer_step(metrics["loss"])
            if trainer.fabric.device.type == "cuda":
                torch.cuda.synchronize()
    return batches * bs / (time.perf_counter() - t0)


def scale_benchmark(cfg: dict, out: Path) -> dict[str, Any]:
    from edgeclip.core.machine import machine_info
    from edgeclip.data.captions import load_captions

    out.mkdir(parents=True, exist_ok=True)
    cs = load_captions(cfg["captions"], cfg.get("images"), cfg.get("split", "train"))
    paths = [str(it.record().path) for it in cs.items][: int(cfg.get("cache_images", 512))]
    photos = out / "photos.txt"
    photos.write_text("\n".join(paths) + "\n")
    teacher = cfg.get("teacher", "ViT-B-32:")
    threads = int(cfg.get("threads", 2))
    res: dict[str, Any] = {"machine": machine_info(), "teacher": teacher, "cache_images": len(paths)}
    # workers of 1 thread each (what adding machines adds); and 1 worker given both cores, for reference
    one = cache_rate(str(photos), teacher, out / "cache1", 1, 1)
    two = cache_rate(str(photos), teacher, out / "cache2", 2, 1)
    one_all = cache_rate(str(photos), teacher, out / "cache1all", 1, threads)
    res["cache_build"] = {"1_worker": one, "2_workers": two, f"1_worker_{threads}_threads": one_all}
    res["cache_images_per_s_1_worker"] = one["images_per_s"]
    res["cache_images_per_s_2_workers"] = two["images_per_s"]
    res["cache_speedup_2_workers"] = two["images_per_s"] / one["images_per_s"]
    from edgeclip.data.sources import open_source
    from edgeclip.train.cache import EmbeddingCache

    c1, c2 = EmbeddingCache(out / "cache1"), EmbeddingCache(out / "cache2")
    ks = [r.key for r in open_source(str(photos)).records]
    res["cache_2_workers_bit_identical"] = bool(np.array_equal(c1.get_many(ks), c2.get_many(ks)))
    c3 = EmbeddingCache(
        out / "cache1all"
    )  # other thread counts sum in another order: fp16-close, not bitwise
    res["cache_max_abs_diff_other_threads"] = float(
        np.abs(c1.get_many(ks).astype(np.float32) - c3.get_many(ks).astype(np.float32)).max()
    )
    syn = synthetic_cache(out / "synthetic_1m", int(cfg.get("index_keys", 1_000_000)))
    probe = index_open(out / "synthetic_1m", syn.pop("sample"))
    res["index"] = {**syn, **probe}
    res["index_open_seconds_1m"] = probe["open_s"]
    res["index_open_mb_1m"] = probe["open_mb"]
    res["data_path"] = data_path_rates(
        str(photos), str(out / "cache1"), teacher, {**cfg.get("data_path", {}), "work": str(out)}
    )
    return res
