"""The main job (Clip4Retrofit): list students, cache teacher embeddings, distill, label, evaluate, measure."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from edgeclip.cli.common import device_of, echo_json
from edgeclip.core.errors import EdgeClipError
from edgeclip.core.prompts import DEFAULT_TEMPLATES

app = typer.Typer()


@app.command("students")
def students_list():
    """List the student backbones (registry); any timm model works as timm:<name>."""
    from edgeclip.models.backbones import BACKBONES

    for k, h in BACKBONES.describe().items():
        typer.echo(f"{k:22s} {h}")
    typer.echo(
        f"{'timm:<name>':22s} any timm model (e.g. timm:vit_small_patch16_224, timm:swin_tiny_patch4_window7_224)"
    )


@app.command("cache")
def cache_cmd(
    data: str = typer.Argument(..., help="images: ImageFolder, folder, list/CSV, or tar shards"),
    teacher: str = typer.Option(..., help="teacher spec"),
    out: Path = typer.Option(..., help="cache folder"),
    views: int | None = typer.Option(
        None, help="augmented views per image (view 0 = the plain image); default: the distill recipe's"
    ),
    batch_size: int = typer.Option(64),
    chunk: int = typer.Option(1024, help="images per part (the unit a worker computes and writes at once)"),
    workers: int = typer.Option(0, help="DataLoader workers"),
    kind: str = typer.Option("auto", help="auto | imagefolder | folder | list | wds"),
    retry_failed: bool = typer.Option(False, help="try images that failed before again"),
    device: str = typer.Option("auto"),
    format: str = typer.Option(
        "folder",
        "--format",
        help="folder (memory-mapped parts + key index) | wds (also reinforced WebDataset shards in OUT/shards: "
        "each image with its teacher embeddings and view parameters; distill from OUT/shards/shard-*.tar)",
    ),
):
    """Compute teacher image embeddings once (fp16, memory-mapped, resumable). On many workers, launch this same
    command with torchrun (or srun): each worker embeds its own chunks, one per GPU; they share --out."""
    from edgeclip.train.cache import CacheConfig, run_cache
    from edgeclip.train.distill import distill_recipe

    views = views if views is not None else int(distill_recipe()["views"] or 1)

    cfg = CacheConfig(
        data=data,
        teacher=teacher,
        out=str(out),
        views=views,
        batch_size=batch_size,
        chunk=chunk,
        workers=workers,
        kind=kind,
        retry_failed=retry_failed,
        device=device,
        format=format,
    )
    res, skipped = run_cache(cfg)
    echo_json(res)
    for r in skipped:
        typer.echo(f"skipped: {r}", err=True)


@app.command("cache-upgrade")
def cache_upgrade_cmd(folder: Path = typer.Argument(..., help="a cache folder of an older format")):
    """Convert an older teacher-embedding cache in place (its embeddings stay; a key index is added)."""
    from edgeclip.train.cache import upgrade_cache

    echo_json(upgrade_cache(folder))


@app.command("distill")
def distill_cmd(
    config: Path | None = typer.Argument(None, help="YAML experiment (configs/*.yaml)"),
    teacher: str | None = typer.Option(None),
    data: str | None = typer.Option(None),
    cache: str | None = typer.Option(None, help="teacher-embedding cache (omit to run the teacher online)"),
    student: str | None = typer.Option(None, help="student backbone, e.g. shufflenet_v2_x1_0"),
    img_size: int | None = typer.Option(None),
    loss: str | None = typer.Option(
        None, help="mse | cosine | l1 | affinity | contrastive | clipkd | a+0.5*b"
    ),
    epochs: int | None = typer.Option(None),
    batch_size: int | None = typer.Option(None),
    lr: float | None = typer.Option(None),
    out: str | None = typer.Option(None),
    val: str | None = typer.Option(None),
    devices: int | None = typer.Option(
        None, help="processes (GPUs) per node; under torchrun: --nproc_per_node"
    ),
    num_nodes: int | None = typer.Option(None, help="nodes (torchrun --nnodes, SLURM --nodes)"),
    strategy: str | None = typer.Option(None),
    accelerator: str | None = typer.Option(None),
    precision: str | None = typer.Option(None),
    resume: bool = typer.Option(False, help="continue from OUT/last.ckpt"),
    init: str | None = typer.Option(
        None, help="start from this student checkpoint (same teacher; its architecture)"
    ),
    set_: list[str] = typer.Option([], "--set", help="config override key.sub=value (repeatable)"),
):
    """Distill the teacher's image embedding into a student, without labels."""
    from edgeclip.core.config import config_from_cli
    from edgeclip.core.machine import launch_rank
    from edgeclip.train.distill import DistillConfig, distill

    cfg = config_from_cli(
        DistillConfig,
        config,
        [
            ("teacher", teacher),
            ("data", data),
            ("cache", cache),
            ("student.arch", student),
            ("student.img_size", img_size),
            ("loss", loss),
            ("train.epochs", epochs),
            ("train.batch_size", batch_size),
            ("train.lr", lr),
            ("out", out),
            ("val", val),
            ("train.devices", devices),
            ("train.num_nodes", num_nodes),
            ("train.strategy", strategy),
            ("train.accelerator", accelerator),
            ("train.precision", precision),
            ("init", init),
        ],
        set_,
    )
    hist = distill(cfg, resume=resume)
    if hist.get("world_size", 1) == 1 or launch_rank()[0] == 0:
        last = hist["epochs"][-1] if hist["epochs"] else {}
        typer.echo(f"student saved: {Path(cfg.out) / 'student.pt'}  last epoch: {json.dumps(last)}")


@app.command("label")
def label_cmd(
    images: list[str] = typer.Argument(..., help="image files, folders, a list/CSV, or tar shards"),
    labels: str = typer.Option(
        "", help="'cat,dog,car' or @labels.txt (any text with a --text-encoder bundle)"
    ),
    example: list[str] = typer.Option(
        [], help="a label from example images: 'my truck=ex1.jpg,ex2.jpg' (repeatable; query by example)"
    ),
    template: list[str] = typer.Option(
        list(DEFAULT_TEMPLATES), help="prompt template(s) (ensemble when repeated)"
    ),
    teacher: str | None = typer.Option(None),
    student: str | None = typer.Option(None),
    bundle: Path | None = typer.Option(None, help="an exported edge bundle (runs without torch)"),
    topk: int = typer.Option(5),
    grid: int = typer.Option(0, help="also label an N x N grid of regions"),
    # "\\[" keeps rich from reading "[x0,y0,x1,y1]" as a markup tag (it printed "[, ...]")
    boxes: Path | None = typer.Option(None, help='JSON {"image.jpg": [\\[x0,y0,x1,y1], ...]}'),
    out: Path | None = typer.Option(None, help="write .jsonl or .csv (default: JSONL to stdout)"),
    batch_size: int = typer.Option(32),
    device: str = typer.Option("auto"),
    precision: str = typer.Option("auto", help="bundle model: auto | fp32 | int8"),
    threads: int | None = typer.Option(None, help="bundle runtime threads (default: ONNX Runtime's)"),
):
    """Label images with any text prompts (open vocabulary) using a teacher, a student or a bundle."""
    from edgeclip.core.prompts import parse_examples, parse_labels
    from edgeclip.zeroshot.label import label_images, read_boxes, write_rows

    examples = parse_examples(example)
    if not labels.strip() and not examples:
        raise EdgeClipError(
            "no labels: give --labels 'cat,dog,car' (or @labels.txt) and/or --example 'LABEL=a.jpg,b.jpg'"
        )
    labs = parse_labels(labels) if labels.strip() else []
    src = _images_source(images)
    box_map = read_boxes(boxes) if boxes else None
    stats: dict = {}
    emb = _one_embedder(teacher, student, bundle, device, precision, threads)
    rows = label_images(
        iter(src),
        emb,
        labs,
        template,
        topk=topk,
        grid=grid,
        boxes=box_map,
        batch_size=batch_size,
        stats=stats,
        examples=examples,
    )
    if out is not None and out.is_dir():
        raise EdgeClipError(f"--out {out} is a folder: give a .jsonl or .csv file")
    n = write_rows(rows, out, echo=typer.echo)
    skipped = stats.get("skipped", []) + list(src.skipped)
    typer.echo(
        f"labeled {stats.get('images', 0)} images ({n} rows) with {emb.name}; skipped {len(skipped)}",
        err=True,
    )
    for s in skipped[:20]:
        typer.echo(f"  skipped: {s}", err=True)


@app.command("search")
def search_cmd(
    query: list[str] = typer.Argument(..., help="free-text queries, e.g. 'a dog running on the beach'"),
    images: list[str] = typer.Option([], help="image files, folders, a list/CSV or tar shards"),
    captions: str | None = typer.Option(
        None,
        help="or: a captions file (Flickr token.txt / COCO JSON); --images is then its photos folder/tar",
    ),
    split: str | None = typer.Option(None, help="captions form: one split (splits.json beside it)"),
    teacher: str | None = typer.Option(None),
    student: str | None = typer.Option(None),
    bundle: Path | None = typer.Option(None, help="an edge bundle with a text tower (runs without torch)"),
    k: int = typer.Option(5, "-k", help="photos per query"),
    as_json: bool = typer.Option(False, "--json", help="print JSON"),
    device: str = typer.Option("auto"),
    precision: str = typer.Option("auto", help="bundle model: auto | fp32 | int8"),
    threads: int | None = typer.Option(None, help="bundle runtime threads"),
):
    """Find the photos that best match free-text queries, with a teacher, a student or a torch-free bundle."""
    from edgeclip.zeroshot.evaluate import search_images

    if not images and not captions:
        raise EdgeClipError(
            "no photos: give --images DIR (files, folders, a list or tars) or --captions FILE"
        )
    emb = _one_embedder(teacher, student, bundle, device, precision, threads)
    photos = captions if captions else _images_source(images)
    res = search_images(
        None, {"model": emb}, photos, query, (images or [None])[0] if captions else None, split, k=k
    )
    found = res["models"]["model"]
    if as_json:  # the hits: the model, how many photos were searched, each query's top k
        hits = {"model": emb.name, "k": k, **found}
        typer.echo(json.dumps(hits, ensure_ascii=False))
        return
    for row in found["results"]:
        typer.echo(f"{row['query']}")
        for h in row["hits"]:
            typer.echo(
                f"  {h['score']:.3f}  {h['image']}" + (f"  ({h['caption']})" if "caption" in h else "")
            )


def _one_embedder(teacher, student, bundle, device: str, precision: str, threads):
    """The one model of a command's --teacher / --student / --bundle (a bundle runs on the CPU, torch-free)."""
    from edgeclip.zeroshot.embedder import load_embedder

    return load_embedder(
        teacher,
        student,
        bundle,
        device=device_of(device) if bundle is None else "cpu",
        precision=precision,
        threads=threads,
    )


def _images_source(images: list[str]):
    """One list/CSV/tar argument -> that source; otherwise files and folders (recursively)."""
    from edgeclip.data.sources import files_source, open_source

    if len(images) == 1:
        a = images[0]
        if (
            a.endswith(".tar")
            or "{" in a
            or (Path(a).is_file() and Path(a).suffix.lower() in (".txt", ".csv", ".tsv", ".lst"))
        ):
            return open_source(a)
    return files_source(images)


@app.command("eval")
def eval_cmd(
    data: str = typer.Argument(
        ...,
        help="ImageFolder (zero-shot top-1), or a captions file: Flickr token.txt / COCO JSON (retrieval)",
    ),
    images: str | None = typer.Option(None, help="captions form: the images folder (or .tar) it names"),
    split: str | None = typer.Option(None, help="captions form: one split (splits.json beside the captions)"),
    teacher: str | None = typer.Option(None),
    student: list[str] = typer.Option([], help="student checkpoint(s)"),
    bundle: list[Path] = typer.Option([], help="edge bundle(s), scored as students (runs without torch)"),
    precision: str = typer.Option("auto", help="bundle model: auto | fp32 | int8"),
    template: list[str] = typer.Option(list(DEFAULT_TEMPLATES)),
    batch_size: int = typer.Option(128),
    max_images: int = typer.Option(0),
    as_json: bool = typer.Option(False, "--json", help="print JSON"),
    out: Path | None = typer.Option(None, help="also write the JSON here"),
    device: str = typer.Option("auto"),
):
    """Zero-shot top-1/top-5 and agreement on an ImageFolder; image<->text Recall@1/5/10 on a captions file."""
    from edgeclip.core.io import write_json
    from edgeclip.core.machine import machine_info
    from edgeclip.zeroshot.embedder import load_embedder
    from edgeclip.zeroshot.evaluate import evaluate, evaluate_retrieval

    dev = device_of(device)
    t_emb = load_embedder(teacher=teacher, device=dev) if teacher else None
    studs = {}
    for i, s in enumerate(student):
        e = load_embedder(teacher=teacher, student=s, device=dev)
        studs["student" if i == 0 else f"student{i + 1}"] = e
        if t_emb is None:
            t_emb = load_embedder(teacher=e.teacher.spec, device=dev)
    for i, b in enumerate(bundle):
        studs["bundle" if i == 0 else f"bundle{i + 1}"] = load_embedder(bundle=str(b), precision=precision)
    if Path(data).is_file():  # a captions file: retrieval in the standard protocol
        res = evaluate_retrieval(
            t_emb, studs, data, images, split, batch_size=batch_size, max_images=max_images
        )
        if out:
            write_json(out, {**res, "machine": machine_info()})
        typer.echo(json.dumps(res) if as_json else "\n".join(f"{k:18s} {v}" for k, v in res.items()))
        return
    if t_emb is None:
        raise EdgeClipError(
            "zero-shot eval on an ImageFolder needs --teacher or --student (beside any --bundle)"
        )
    res = evaluate(t_emb, studs, data, template, batch_size=batch_size, max_images=max_images)
    res["machine"] = machine_info()
    if out:
        write_json(out, res)
    if as_json:
        echo_json(res)
    else:
        for k in (
            "teacher_top1",
            "teacher_top5",
            "student_top1",
            "student_top5",
            "agreement",
            "retention",
            "n",
        ):
            if k in res:
                typer.echo(f"{k:14s} {res[k]:.4f}" if isinstance(res[k], float) else f"{k:14s} {res[k]}")


@app.command("stats")
def stats_cmd(
    student: Path | None = typer.Option(None),
    arch: str | None = typer.Option(None),
    img_size: int = typer.Option(224),
    embed_dim: int = typer.Option(512),
):
    """Parameters, GFLOPs and batch-1 CPU latency of a student checkpoint or backbone."""
    from edgeclip.models import create_student, load_student
    from edgeclip.models.cost import model_stats

    if student:
        m, pp, _ = load_student(student)
        img_size = pp.size
    elif arch:
        m = create_student(arch, embed_dim)
    else:
        raise EdgeClipError("give --student CHECKPOINT or --arch NAME")
    echo_json(model_stats(m, img_size))
