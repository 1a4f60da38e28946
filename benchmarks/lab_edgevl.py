"""EdgeVL lab on CIFAR-10 with the monochrome (luminance) image as the second modality.

The reference teacher sees RGB; one student learns RGB and monochrome from it, label-free. Measured:
  1. student on mono / teacher on RGB, student on RGB / teacher (targets >= 0.90 and >= 0.97);
  2. int8: QAT + semi-hard triplet vs plain QAT vs ONNX Runtime static PTQ, both modalities (target +1 point);
     with --per-tensor the same three again with one weight scale per tensor (per-tensor-only accelerators);
  3. curation: stage 1 on the teacher's top-20 % vs on all pairs, the same number of steps (with --per-label the
     main run keeps the top 20 % of each pseudo-label, and EdgeVL's global top 20 % runs beside it);
  4. unseen classes (EdgeVL's EuroSAT protocol): distill on the images of 5 classes, zero-shot on the other 5.

One command (fixed seeds; resumes finished stages):
    python benchmarks/lab_edgevl.py                       # everything, sequentially
    python benchmarks/lab_edgevl.py --part a & python benchmarks/lab_edgevl.py --part b; \
        python benchmarks/lab_edgevl.py --part report     # the same in two processes
Other students: --arch (any registry name, e.g. mobilenet_v3_small or timm:vit_tiny_patch16_224 with --model-args),
--stage2-from all (PTQ/QAT from the all-pairs student), --qat-data all, --only-main (skip the curated and
unseen-class stage-1 runs, for slow students).
The budget (images, steps, batch, architecture, minutes, CPU threads) is recorded in the JSON.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import random
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# the quantized runs: (folder, result file, model name in the JSON after the int8 / w4a8 prefix)
MAIN_RUNS = (
    ("ptq", "ptq.json", "ptq"),
    ("qat_triplet", "qat.json", "qat_triplet"),
    ("qat_plain", "qat.json", "qat_plain"),
)
PER_TENSOR = (
    ("ptq_pt", "ptq.json", "ptq_per_tensor"),
    ("qat_triplet_pt", "qat.json", "qat_triplet_per_tensor"),
    ("qat_plain_pt", "qat.json", "qat_plain_per_tensor"),
)
EDGEVL_MINING = (("qat_triplet_em", "qat.json", "qat_triplet_edgevl_mining"),)
# the lab's first triplet mining (random positive from both modalities, the nearest semi-hard negative, margin 0.2);
# --edgevl-mining adds qat_triplet_em with EdgeVL's published mining (QATConfig's defaults)
FIRST_MINING = {
    "margin": 0.2,
    "positive": "random",
    "negative": "hardest",
    "negatives": 1,
    "same_modality": False,
}
SEEN = ["airplane", "automobile", "bird", "cat", "deer"]
UNSEEN = ["dog", "frog", "horse", "ship", "truck"]


def cifar_dirs() -> dict:
    from edgeclip.core.env import shared_data_dir
    from edgeclip.data.sources import ensure_extracted

    local = ROOT / "benchmarks/artifacts/data/cifar10"
    if (local / "train").is_dir() and (local / "test").is_dir():
        return {"train": local / "train", "test": local / "test"}
    src = shared_data_dir() / "cifar10"
    for split in ("train", "test"):
        ensure_extracted(src / f"{split}.tar", local)
    return {"train": local / "train", "test": local / "test"}


def subset_indices(n_total: int, n: int, seed: int):
    return (
        sorted(random.Random(seed).sample(range(n_total), n)) if n and n < n_total else list(range(n_total))
    )


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--teacher", default=f"reference-lit:{ROOT / 'benchmarks/artifacts/lab/teacher/teacher.pt'}"
    )
    ap.add_argument("--arch", default="shufflenet_v2_x0_5")
    ap.add_argument(
        "--init",
        default="",
        help="start stage 1 from this RGB student checkpoint (e.g. the foundation "
        "lab's benchmarks/artifacts/lab/student/student.pt); its architecture is used",
    )
    ap.add_argument(
        "--stem-stride",
        type=int,
        default=0,
        help="1: stride-1 stem (torchvision backbones; a larger grid at 32 px)",
    )
    ap.add_argument(
        "--stage2-from",
        default="curated",
        choices=["curated", "all"],
        help="the stage-1 student that PTQ and QAT start from and whose fp32 ratios are the targets: the "
        "one distilled on the curated pairs (EdgeVL) or on all pool pairs (QAT's data: --qat-data)",
    )
    ap.add_argument("--model-args", default="", help="JSON for timm.create_model, e.g. '{\"patch_size\": 4}'")
    ap.add_argument(
        "--only-main",
        action="store_true",
        help="with --stage2-from all: only that student, PTQ and QAT (no curated or unseen-class stage-1 "
        "runs), for slow students",
    )
    ap.add_argument(
        "--qat-data",
        default="curated",
        choices=["curated", "all"],
        help="QAT trains on the curated pairs (EdgeVL) or on all pool pairs (pseudo-labels for all: "
        "the same data as the all-pairs stage 1)",
    )
    ap.add_argument("--train-images", type=int, default=5000)
    ap.add_argument("--test-images", type=int, default=1000)
    ap.add_argument("--steps", type=int, default=400, help="stage-1 optimiser steps (same for every run)")
    ap.add_argument("--qat-steps", type=int, default=100)
    ap.add_argument("--batch", type=int, default=64, help="pairs per batch (x2 images: RGB + mono)")
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--qat-lr", type=float, default=2e-4)
    ap.add_argument("--fraction", type=float, default=0.2)
    ap.add_argument(
        "--per-label",
        action="store_true",
        help="the main curated run keeps the top fraction within each pseudo-label (edgeclip curate "
        "--per-label); EdgeVL's global cut is then also run, as s1_curated_global",
    )
    ap.add_argument(
        "--per-tensor",
        action="store_true",
        help="also PTQ / QAT+triplet / plain QAT with per-tensor weight scales (ptq_pt, qat_triplet_pt, "
        "qat_plain_pt), for accelerators without per-channel scales",
    )
    ap.add_argument(
        "--edgevl-mining",
        action="store_true",
        help="also QAT+triplet with EdgeVL's published mining (nearest same-modality positive, 3 random "
        "semi-hard negatives, margin 0.3) as qat_triplet_em",
    )
    ap.add_argument(
        "--weight-bits",
        type=int,
        default=8,
        choices=[8, 4],
        help="4: every PTQ/QAT run is W4A8 (4-bit weights, uint8 activations) instead of int8; "
        "use its own --work folder (stage-1 students can be links to an int8 lab's)",
    )
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--note", default="2 CPU cores; reduced budget", help="recorded in the JSON's budget")
    ap.add_argument("--part", default="all", choices=["all", "a", "b", "report"])
    ap.add_argument("--work", default=str(ROOT / "benchmarks/artifacts/lab_edgevl"))
    ap.add_argument("--out", default=str(ROOT / "benchmarks/results/edgevl_cifar_mono.json"))
    args = ap.parse_args(argv)
    if args.only_main and args.stage2_from != "all":
        ap.error("--only-main needs --stage2-from all")

    import torch

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    from edgeclip.core.env import seed_everything
    from edgeclip.core.io import read_json
    from edgeclip.data.pairs import open_pairs
    from edgeclip.models.teachers import load_teacher
    from edgeclip.train.curate import curate
    from edgeclip.train.pair import (
        PairDataConfig,
        PairDistillConfig,
        QATConfig,
        distill_pairs,
        ptq_pairs,
        qat_pairs,
    )

    seed_everything(args.seed)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    data = cifar_dirs()
    teacher = load_teacher(args.teacher)
    derive = {"mono": "luminance"}
    cache = str(work / "cache")
    timings_path = work / f"timings_{args.part}.json"
    timings = json.loads(timings_path.read_text()) if timings_path.exists() else {}

    def timed(name, fn):
        t0 = time.time()
        r = fn()
        timings[name] = round(time.time() - t0, 1)
        timings_path.write_text(json.dumps(timings, indent=1))
        print(f"[lab] {name}: {timings[name]} s", flush=True)
        return r

    epochs_for = lambda n_pairs, steps: max(1, -(-steps * args.batch // n_pairs))  # noqa: E731
    student = (
        {}
        if args.init
        else {
            "arch": args.arch,
            "img_size": 32,
            "small_input": True,
            "head_hidden": 512,
            **({"stem_stride": args.stem_stride} if args.stem_stride else {}),
            **({"model_args": json.loads(args.model_args)} if args.model_args else {}),
        }
    )
    src = work / f"s1_{args.stage2_from}" / "student.pt"  # where PTQ and QAT start
    init = {"init": args.init} if args.init else {}

    def stage1(name, n_pairs, **kw):
        out = work / name
        if (out / "student.pt").exists():
            return
        kw.setdefault("cache", cache)
        cfg = PairDistillConfig(
            teacher=teacher.spec,
            data=str(data["train"]),
            derive=derive,
            out=str(out),
            student=student,
            loss="mse",
            seed=args.seed,
            train={
                "epochs": epochs_for(n_pairs, args.steps),
                "batch_size": args.batch,
                "lr": args.lr,
                "max_steps_per_epoch": -(-args.steps // epochs_for(n_pairs, args.steps)),
                "warmup_epochs": 0.1,
                "threads": torch.get_num_threads(),
                "log_every": 10**9,
            },
            **init,
            **kw,
        )
        timed(name, lambda: distill_pairs(cfg, teacher=teacher))

    def n_kept(curation: str) -> int:
        return read_json(work / curation / "manifest.json")["summary"]["n_kept"]

    def qat(name, tw, per_channel=True, mining=FIRST_MINING):
        """Stage 2 from the stage-1 student ``src`` on the curated pairs (pseudo-labels from the manifest)."""
        if (work / name / "qat.json").exists():
            return
        qd = "curate" if args.qat_data == "curated" else "curate_all"
        ep = epochs_for(n_kept(qd), args.qat_steps)
        cfg = QATConfig(
            student=str(src),
            data=str(data["train"]),
            derive=derive,
            out=str(work / name),
            cache=cache,
            manifest=str(work / qd / "manifest.json"),
            triplet_weight=tw,
            seed=args.seed,
            per_channel=per_channel,
            weight_bits=args.weight_bits,
            **mining,
            train={
                "epochs": ep,
                "batch_size": args.batch,
                "lr": args.qat_lr,
                "warmup_epochs": 0.0,
                "weight_decay": 0.0,
                "max_steps_per_epoch": -(-args.qat_steps // ep),
                "threads": torch.get_num_threads(),
                "log_every": 10**9,
            },
        )
        timed(name, lambda: qat_pairs(cfg, teacher=teacher))

    if args.part in ("all", "a"):

        def pool():  # the training pool: a fixed random subset of CIFAR-10 train
            ps = open_pairs(data["train"], derive=derive)
            return ps.subset(subset_indices(len(ps), args.train_images, args.seed))

        if not (work / "curate/manifest.json").exists():
            ps = pool()
            timed(
                "curate",
                lambda: curate(
                    teacher,
                    ps,
                    work / "curate",
                    fraction=args.fraction,
                    cache=cache,
                    per_label=args.per_label,
                ),
            )
            if args.per_label:
                curate(teacher, ps, work / "curate_global", fraction=args.fraction, cache=cache)
        if args.qat_data == "all" and not (work / "curate_all/manifest.json").exists():
            curate(
                teacher, pool(), work / "curate_all", fraction=1.0, cache=cache
            )  # every pool pair, pseudo-labelled
        if not args.only_main:
            stage1("s1_curated", n_kept("curate"), manifest=str(work / "curate/manifest.json"))
        if args.stage2_from == "curated":
            qat("qat_triplet", 1.0)
        if args.per_label:
            stage1(
                "s1_curated_global",
                n_kept("curate_global"),
                manifest=str(work / "curate_global/manifest.json"),
            )
    if args.part in ("all", "b"):
        while not (work / "curate/manifest.json").exists():  # part a builds the shared teacher cache first
            time.sleep(10)
        stage1("s1_all", args.train_images, max_images=args.train_images)
        if not args.only_main:
            stage1(
                "s1_unseen",
                args.train_images // 2,
                classes=SEEN,
                max_images=args.train_images // 2,
                cache=str(work / "cache_unseen"),
            )  # its own cache: part a reads the shared one meanwhile
        while not src.exists():
            time.sleep(10)
        if args.stage2_from != "curated":
            qat("qat_triplet", 1.0)
        for name, pc in (("ptq", True), ("ptq_pt", False))[: 2 if args.per_tensor else 1]:
            if not (work / name / "ptq.json").exists():
                timed(
                    name,
                    lambda name=name, pc=pc: ptq_pairs(
                        str(src),
                        PairDataConfig(
                            data=str(data["train"]),
                            derive=derive,
                            out=str(work / name),
                            cache=cache,
                            manifest=str(work / "curate/manifest.json"),
                            seed=args.seed,
                        ),
                        calib_images=256,
                        teacher=teacher,
                        per_channel=pc,
                        weight_bits=args.weight_bits,
                    ),
                )
        qat("qat_plain", 0.0)
        if args.per_tensor:
            qat("qat_triplet_pt", 1.0, per_channel=False)
            qat("qat_plain_pt", 0.0, per_channel=False)
        if args.edgevl_mining:
            qat("qat_triplet_em", 1.0, mining={})
    if args.part in ("all", "report"):
        report(args, work, data, teacher, derive, timings)


def report(args, work: Path, data, teacher, derive, timings) -> None:
    import torch

    from edgeclip.core.env import machine_info
    from edgeclip.core.io import read_json, sha256_file, write_json
    from edgeclip.data.pairs import open_pairs, preload_pairs
    from edgeclip.models.pair import load_pair_student
    from edgeclip.train.pair import quant_stem
    from edgeclip.zeroshot.modalities import (
        evaluate_pairs,
        exported_embedder,
        torch_embedder,
    )

    Q = quant_stem(args.weight_bits)  # int8 | w4a8: the quantized models' name prefix
    quantized = (
        MAIN_RUNS + (PER_TENSOR if args.per_tensor else ()) + (EDGEVL_MINING if args.edgevl_mining else ())
    )
    for p in ("all", "a", "b"):  # the stage timings of an earlier run of the same lab
        tp = work / f"timings_{p}.json"
        if tp.exists():
            timings.update(json.loads(tp.read_text()))
    allm, pre, _ = load_pair_student(work / "s1_all/student.pt")
    size = pre.size
    cur = None if args.only_main else load_pair_student(work / "s1_curated/student.pt")[0]
    uns = None if args.only_main else load_pair_student(work / "s1_unseen/student.pt")[0]
    glob = (
        {"fp32_curated_global": torch_embedder(load_pair_student(work / "s1_curated_global/student.pt")[0])}
        if args.per_label
        else {}
    )
    baseline = {}
    if args.init:  # the RGB student before stage 1, with the same modality normalisation: what stage 1 adds
        from edgeclip.models.student import load_student

        before = copy.deepcopy(allm)
        before.student.load_state_dict(load_student(args.init)[0].state_dict())
        baseline = {"fp32_init": torch_embedder(before)}
    ps = open_pairs(data["test"], derive=derive)
    ps = ps.subset(subset_indices(len(ps), args.test_images, args.seed))
    d = preload_pairs(ps, allm.specs, size)
    t0 = time.time()
    models = {
        **baseline,
        **({"fp32_curated": torch_embedder(cur)} if cur else {}),
        **glob,
        "fp32_all": torch_embedder(allm),
        **{f"{Q}_{name}": exported_embedder(work / n / f) for n, f, name in quantized},
    }
    ev = evaluate_pairs(d, ps.classes, "rgb", ["rgb", "mono"], models, teacher=teacher)
    # unseen classes: all test images of the 5 classes never distilled on, 5-way zero-shot
    evu = None
    if uns is not None:
        psu = open_pairs(data["test"], derive=derive)
        dsu = preload_pairs(psu, uns.specs, size)
        evu = evaluate_pairs(
            dsu,
            psu.classes,
            "rgb",
            ["rgb", "mono"],
            {**baseline, "fp32_seen5": torch_embedder(uns), "fp32_all10": torch_embedder(allm)},
            teacher=teacher,
            class_subset=UNSEEN,
        )
    timings["evaluate"] = round(time.time() - t0, 1)
    top = lambda e, m, mod: e[m][mod]["top1"]  # noqa: E731

    def points(name: str, a: str, b: str) -> dict:
        """{name_<modality>_points: top-1 of model a minus model b, in points} for both modalities."""
        return {f"{name}_{mod}_points": 100 * (top(ev, a, mod) - top(ev, b, mod)) for mod in ("rgb", "mono")}

    t_rgb = top(ev, "teacher", "rgb")
    main_student = f"fp32_{args.stage2_from}"  # the student PTQ and QAT start from
    # every quantized run's result file, read once: (folder, ptq.json | qat.json) -> its JSON
    runs = {n: read_json(work / n / f) for n, f, _ in quantized}
    qat_runs = [n for n in runs if n.startswith("qat")]
    res = {
        "what": "EdgeVL on CIFAR-10: teacher on RGB, one student on RGB + monochrome (luminance), label-free",
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "command": " ".join(
            ["python benchmarks/lab_edgevl.py"]
            + [a for i, a in enumerate(sys.argv[1:]) if a != "--part" and sys.argv[i] != "--part"]
        ),
        "run_as": f"--part {args.part}"
        if args.part != "report"
        else "--part all, then --part report"
        if (work / "timings_all.json").exists()
        else "--part a and --part b in two parallel processes, then --part report",
        "machine": machine_info(),
        "teacher": {**teacher.describe(), "sha256": sha256_file(teacher.spec.split(":", 1)[1])},
        "budget": {
            "device": "cpu",
            "torch_threads": torch.get_num_threads(),
            "quantized": {"weight_bits": args.weight_bits, "activation_bits": 8},
            "student": allm.student.config,
            "init": (
                {
                    "checkpoint": str(args.init),
                    "sha256": sha256_file(args.init),
                    "note": "RGB student distilled label-free on all 50k CIFAR-10 "
                    "train images (no monochrome images, no labels)",
                }
                if args.init
                else None
            ),
            "img_size": 32,
            "train_pool_images": args.train_images,
            "curated_fraction": args.fraction,
            "curation": "top fraction within each pseudo-label (main run); EdgeVL's global top fraction "
            "as fp32_curated_global"
            if args.per_label
            else "global top fraction (EdgeVL)",
            "stage1_steps": args.steps,
            "qat_steps": args.qat_steps,
            "batch_pairs": args.batch,
            "stage2_from": f"s1_{args.stage2_from}",
            "qat_data": args.qat_data,
            "test_images": len(d),
            "unseen_test_images": evu and evu["n"],
            "seconds": timings,
            "note": args.note,
        },
        "checkpoints": {
            n: sha256_file(work / n / "student.pt")
            for n in ("s1_curated", "s1_curated_global", "s1_all", "s1_unseen")
            if (work / n).is_dir()
        },
        "onnx": {n: {m: sha256_file(p) for m, p in r.get("exports", {}).items()} for n, r in runs.items()},
        "zero_shot_top1": {k: {mod: v["top1"] for mod, v in ev[k].items()} for k in ["teacher", *models]},
        "unseen_classes": {
            "distilled_on": SEEN,
            "evaluated_on": UNSEEN,
            "n": evu["n"],
            "top1_5way": {
                k: {mod: v["top1"] for mod, v in evu[k].items()}
                for k in ("teacher", *baseline, "fp32_seen5", "fp32_all10")
            },
        }
        if evu
        else "not run (--only-main)",
        "curation": read_json(work / "curate/manifest.json")["summary"],
        **(
            {"curation_global": read_json(work / "curate_global/manifest.json")["summary"]}
            if args.per_label
            else {}
        ),
        # runs written before per-tensor / 4-bit options existed were per-channel int8
        "qat": {
            n: {
                **{
                    k: runs[n].get(k, {"per_channel": True, "weight_bits": 8}.get(k))
                    for k in (
                        "reduce_range",
                        "per_channel",
                        "weight_bits",
                        "semi_hard_fraction",
                        "onnx_min_cosine_vs_torch_int8",
                        "seconds",
                    )
                },
                # runs written before the mining options existed used FIRST_MINING
                "mining": {k: runs[n]["config"].get(k, v) for k, v in FIRST_MINING.items()},
            }
            for n in qat_runs
        },
        "ptq": {
            **{
                k: runs["ptq"][k]
                for k in ("reduce_range", "calib_images", "calibrated_on", "per_channel", "method")
            },
            "weight_bits": runs["ptq"].get("weight_bits", 8),
        },
        **(
            {
                "ptq_per_tensor": {
                    **{
                        k: runs["ptq_pt"][k]
                        for k in ("reduce_range", "calib_images", "per_channel", "method")
                    },
                    "weight_bits": runs["ptq_pt"].get("weight_bits", 8),
                }
            }
            if args.per_tensor
            else {}
        ),
    }
    s_mono, s_rgb = top(ev, main_student, "mono"), top(ev, main_student, "rgb")
    res["targets"] = {
        "mono_over_teacher_rgb": {"value": s_mono / t_rgb, "target": 0.90, "met": s_mono / t_rgb >= 0.90},
        "rgb_over_teacher_rgb": {"value": s_rgb / t_rgb, "target": 0.97, "met": s_rgb / t_rgb >= 0.97},
        # the issue's +1 target is for int8; a --weight-bits 4 run reports the same differences without it
        **{
            f"qat_triplet_minus_ptq_{mod}_points": {
                "value": 100 * (top(ev, f"{Q}_qat_triplet", mod) - top(ev, f"{Q}_ptq", mod)),
                **(
                    {
                        "target": 1.0,
                        "met": 100 * (top(ev, f"{Q}_qat_triplet", mod) - top(ev, f"{Q}_ptq", mod)) >= 1.0,
                    }
                    if args.weight_bits == 8
                    else {}
                ),
            }
            for mod in ("rgb", "mono")
        },
        **{
            f"{m[5:]}_minus_all_{mod}_points": {"value": 100 * (top(ev, m, mod) - top(ev, "fp32_all", mod))}
            for m in (*(["fp32_curated"] if cur else []), *glob)
            for mod in ("rgb", "mono")
        },
        "qat_triplet_minus_plain_points": {
            mod: 100 * (top(ev, f"{Q}_qat_triplet", mod) - top(ev, f"{Q}_qat_plain", mod))
            for mod in ("rgb", "mono")
        },
        **points("ptq_minus_fp32", f"{Q}_ptq", main_student),  # what PTQ loses: what QAT can win back
        **points("qat_plain_minus_ptq", f"{Q}_qat_plain", f"{Q}_ptq"),
        # per-tensor weight scales: a second, separately labelled comparison; the +1 target above stays per-channel
        **(
            {
                "per_tensor_weights": {
                    **points("qat_triplet_minus_ptq", f"{Q}_qat_triplet_per_tensor", f"{Q}_ptq_per_tensor"),
                    **points("qat_plain_minus_ptq", f"{Q}_qat_plain_per_tensor", f"{Q}_ptq_per_tensor"),
                    **points("ptq_minus_fp32", f"{Q}_ptq_per_tensor", main_student),
                }
            }
            if args.per_tensor
            else {}
        ),
        **(
            {
                "edgevl_mining": {
                    **points("qat_triplet_minus_ptq", f"{Q}_qat_triplet_edgevl_mining", f"{Q}_ptq"),
                    **points("qat_triplet_minus_plain", f"{Q}_qat_triplet_edgevl_mining", f"{Q}_qat_plain"),
                }
            }
            if args.edgevl_mining
            else {}
        ),
        "main_student": main_student,
        # the same two ratios for every model, so no student's outcome is hidden behind the main one
        "ratios_by_model": {
            m: {f"{mod}_over_teacher_rgb": top(ev, m, mod) / t_rgb for mod in ("rgb", "mono")} for m in models
        },
    }
    write_json(args.out, res)
    print(
        json.dumps(
            {
                "zero_shot_top1": res["zero_shot_top1"],
                "unseen": res["unseen_classes"],
                "targets": res["targets"],
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
