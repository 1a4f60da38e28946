"""``edgeclip edgevl``: ``pairs``, ``curate``, ``distill`` (stage 1), ``qat`` (stage 2), ``ptq``, ``eval``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from edgeclip.cli.common import echo_json
from edgeclip.core.config import config_from_cli
from edgeclip.core.errors import EdgeClipError
from edgeclip.core.prompts import DEFAULT_TEMPLATES

DATA_HELP = "paired data: ROOT/<modality>/..., a folder of <stem>_<modality> files, or images + --derive"

# Options shared by several commands, declared once (Typer's Annotated form).
Derive = Annotated[
    list[str],
    typer.Option(
        help="derived modality NAME=luminance (monochrome from RGB) or NAME=bands (other bands of a multi-band "
        "file: name them with NAME.bands=swir)"
    ),
]
Split = Annotated[
    str | None, typer.Option(help="only this split's pairs (ROOT/splits.json or train/ val/ test/)")
]
Modality = Annotated[list[str], typer.Option(help="modality folder/suffix names (default: detected)")]
Cache = Annotated[str | None, typer.Option(help="teacher-embedding cache folder")]
Manifest = Annotated[str | None, typer.Option(help="curation manifest (pseudo-labels + kept pairs)")]
DataOpt = Annotated[str | None, typer.Option(help=DATA_HELP)]
Epochs = Annotated[int | None, typer.Option()]
BatchSize = Annotated[int | None, typer.Option()]
Lr = Annotated[float | None, typer.Option()]
Sets = Annotated[list[str], typer.Option("--set", help="override key.sub=value (repeatable)")]
WEIGHT_BITS_HELP = "8: int8 weights; 4: W4A8 (4-bit weights, uint8 activations)"
WeightBits = Annotated[int | None, typer.Option(help=WEIGHT_BITS_HELP)]
Templates = Annotated[list[str], typer.Option(help="prompt template(s)")]


def _derive(items: list[str]) -> dict[str, str]:
    out = {}
    for it in items or []:
        if "=" not in it:
            raise EdgeClipError(f"--derive {it!r} must look like NAME=luminance")
        k, v = it.split("=", 1)
        out[k.strip()] = v.strip()
    return out


def _echo(obj) -> None:
    echo_json(obj)


app = typer.Typer(
    no_args_is_help=True,
    help="EdgeVL: paired RGB + depth/IR students, curation, int8 QAT/PTQ, per-modality eval.",
)


@app.command("pairs")
def pairs_cmd(
    data: str = typer.Argument(..., help=DATA_HELP),
    modality: Modality = [],
    primary: str | None = typer.Option(None, help="the RGB modality (default: rgb/color/...)"),
    derive: Derive = [],
    split: Split = None,
    size: int = typer.Option(64, help="decode at this size to check every pair"),
    set_: list[str] = typer.Option([], "--set", help="modality settings, e.g. depth.adapter=colormap"),
):
    """Check a paired-modality dataset: pairs found, pairs usable, and why any were skipped."""
    from edgeclip.core.config import apply_overrides
    from edgeclip.data.pairs import (
        default_specs,
        open_pairs,
        preload_pairs,
        summarize,
    )

    ps = open_pairs(data, modality or None, primary, _derive(derive), split)
    specs = default_specs(ps, apply_overrides({}, set_))
    _echo(summarize(ps, preload_pairs(ps, specs, size)))


@app.command("curate")
def curate_cmd(
    data: str = typer.Argument(..., help=DATA_HELP),
    teacher: str = typer.Option(..., help="teacher spec"),
    out: Path = typer.Option(..., help="folder for manifest.json + confidence_hist.png"),
    labels: str | None = typer.Option(None, help="'a,b,c' or @labels.txt (default: the class folder names)"),
    template: Templates = list(DEFAULT_TEMPLATES),
    fraction: float = typer.Option(0.2, help="keep this top fraction (0, 1] of the pairs by confidence"),
    threshold: float | None = typer.Option(None, help="keep pairs with confidence >= this instead"),
    per_label: bool = typer.Option(
        False,
        "--per-label",
        help="keep the top fraction within each pseudo-label (no class left out) instead of over all pairs",
    ),
    modality: Modality = [],
    primary: str | None = typer.Option(None),
    derive: Derive = [],
    split: Split = None,
    set_: list[str] = typer.Option([], "--set", help="modality settings, e.g. rgb.bands=rgb rgb.scale=3000"),
    cache: Path | None = typer.Option(None, help="teacher-embedding cache (default OUT/cache)"),
    views: int = typer.Option(
        1, help="cache views (reuse the cache for `edgevl distill` with the same number)"
    ),
    device: str = typer.Option("auto"),
):
    """Teacher confidence on RGB (max softmax over prompts); keep the top fraction; write the manifest."""
    from edgeclip.core.config import apply_overrides
    from edgeclip.core.prompts import parse_labels
    from edgeclip.train.curate import CurateConfig, run_curate

    cfg = CurateConfig(
        teacher=teacher,
        data=data,
        out=str(out),
        modalities=modality or None,
        primary=primary,
        derive=_derive(derive),
        split=split,
        modality=apply_overrides({}, set_),
        labels=parse_labels(labels) if labels else None,
        templates=template,
        fraction=fraction,
        threshold=threshold,
        per_label=per_label,
        cache=str(cache) if cache else None,
        views=views,
        device=device,
    )
    res = run_curate(cfg)
    _echo(res)


@app.command("distill")
def distill_pair_cmd(
    config: Path | None = typer.Argument(None, help="YAML experiment (configs/edgevl*.yaml)"),
    teacher: str | None = typer.Option(None),
    data: DataOpt = None,
    out: str | None = typer.Option(None),
    manifest: Manifest = None,
    derive: Derive = [],
    modality: Modality = [],
    cache: Cache = None,
    split: Split = None,
    student: str | None = typer.Option(None, help="student backbone"),
    img_size: int | None = typer.Option(None),
    init: str | None = typer.Option(None, help="start from this RGB student checkpoint (its architecture)"),
    loss: str | None = typer.Option(None, help="any foundation loss: mse | l1 | cosine | affinity | ..."),
    epochs: Epochs = None,
    batch_size: BatchSize = None,
    lr: Lr = None,
    resume: bool = typer.Option(False),
    set_: Sets = [],
):
    """Stage 1: distill the teacher (on RGB) into one student for RGB and the other modality, label-free."""
    from edgeclip.train.edgevl import PairDistillConfig, distill_pairs

    cfg = config_from_cli(
        PairDistillConfig,
        config,
        [
            ("teacher", teacher),
            *_pair_data(data, out, manifest, derive, modality, cache, split),
            ("student.arch", student),
            ("student.img_size", img_size),
            ("init", init),
            ("loss", loss),
            *_schedule(epochs, batch_size, lr),
        ],
        set_,
    )
    hist = distill_pairs(cfg, resume=resume, progress=True)
    typer.echo(f"student saved: {Path(cfg.out) / 'student.pt'}  last epoch: {json.dumps(hist['epochs'][-1])}")
    typer.echo(f"data: {json.dumps(hist['data_info'])}")


def _pair_data(data, out, manifest, derive, modality, cache, split) -> list[tuple[str, object]]:
    """The paired-data options of stage 1 and stage 2 as config keys."""
    return [
        ("data", data),
        ("out", out),
        ("manifest", manifest),
        ("derive", _derive(derive)),
        ("modalities", modality or None),
        ("cache", cache),
        ("split", split),
    ]


def _schedule(epochs, batch_size, lr) -> list[tuple[str, object]]:
    return [("train.epochs", epochs), ("train.batch_size", batch_size), ("train.lr", lr)]


@app.command("qat")
def qat_cmd(
    config: Path | None = typer.Argument(None, help="YAML experiment"),
    student: str | None = typer.Option(None, help="stage-1 student checkpoint"),
    data: DataOpt = None,
    out: str | None = typer.Option(None),
    manifest: Manifest = None,
    derive: Derive = [],
    modality: Modality = [],
    cache: Cache = None,
    split: Split = None,
    teacher: str | None = typer.Option(None),
    triplet_weight: float | None = typer.Option(None, help="0 = plain QAT without the contrastive term"),
    margin: float | None = typer.Option(None),
    epochs: Epochs = None,
    batch_size: BatchSize = None,
    lr: Lr = None,
    per_channel: bool | None = typer.Option(
        None,
        "--per-channel/--per-tensor",
        help="weight scales per output channel (default) or one per tensor",
    ),
    weight_bits: WeightBits = None,
    set_: Sets = [],
):
    """Stage 2: quantization-aware training (torchao PT2E) + semi-hard triplet; int8 QDQ ONNX out."""
    from edgeclip.train.edgevl import QATConfig, qat_pairs

    cfg = config_from_cli(
        QATConfig,
        config,
        [
            ("student", student),
            *_pair_data(data, out, manifest, derive, modality, cache, split),
            ("teacher", teacher),
            ("triplet_weight", triplet_weight),
            ("margin", margin),
            ("per_channel", per_channel),
            ("weight_bits", weight_bits),
            *_schedule(epochs, batch_size, lr),
        ],
        set_,
    )
    res = qat_pairs(cfg, progress=True)
    _echo({k: res[k] for k in ("exports", "semi_hard_fraction", "onnx_min_cosine_vs_torch_int8", "seconds")})


@app.command("ptq")
def ptq_cmd(
    student: str = typer.Option(..., help="stage-1 student checkpoint"),
    data: str = typer.Option(..., help="calibration pairs (" + DATA_HELP + ")"),
    out: str = typer.Option(...),
    derive: Derive = [],
    modality: Modality = [],
    cache: Cache = None,
    split: Split = None,
    calib_images: int = typer.Option(256),
    method: str = typer.Option("minmax", help="minmax | entropy | percentile"),
    reduce_range: str = typer.Option(
        "auto", help="auto | true | false: 7-bit weights for x86 CPUs without VNNI"
    ),
    per_channel: bool = typer.Option(
        True,
        "--per-channel/--per-tensor",
        help="weight scales per output channel (default) or one per tensor",
    ),
    weight_bits: int = typer.Option(8, help=WEIGHT_BITS_HELP),
):
    """Baseline: ONNX Runtime static int8 (QDQ), calibrated on images of every modality."""
    from edgeclip.train.edgevl import PTQConfig, run_ptq

    rr = {"auto": "auto", "true": True, "false": False}.get(reduce_range.lower())
    if rr is None:
        raise EdgeClipError(f"--reduce-range must be auto, true or false, got {reduce_range!r}")
    cfg = PTQConfig(
        data=data,
        out=out,
        derive=_derive(derive),
        modalities=modality or None,
        cache=cache,
        split=split,
        student=student,
        calib_images=calib_images,
        method=method,
        reduce_range=rr,
        per_channel=per_channel,
        weight_bits=weight_bits,
    )
    _echo(run_ptq(cfg))


@app.command("eval")
def eval_pair_cmd(
    data: str = typer.Argument(..., help="labelled paired data (class sub-folders)"),
    student: str = typer.Option(..., help="stage-1 student checkpoint (fp32)"),
    onnx: list[Path] = typer.Option([], help="qat.json / ptq.json of int8 exports (repeatable)"),
    derive: Derive = [],
    modality: Modality = [],
    split: Split = None,
    classes: str | None = typer.Option(None, help="only these classes, e.g. unseen ones: 'cat,dog'"),
    template: Templates = list(DEFAULT_TEMPLATES),
    max_images: int = typer.Option(0),
    out: Path | None = typer.Option(None, help="also write the JSON here"),
):
    """Zero-shot top-1 per modality: the teacher on RGB (and on each 3-channel modality fed as if RGB); the
    student fp32 and int8 on every modality."""
    from edgeclip.core.io import write_json
    from edgeclip.core.machine import machine_info
    from edgeclip.core.prompts import parse_labels
    from edgeclip.zeroshot.modalities import evaluate_pair_student

    res = evaluate_pair_student(
        data,
        student,
        [str(p) for p in onnx],
        _derive(derive),
        modality or None,
        parse_labels(classes) if classes else None,
        template,
        max_images,
        split=split,
    )
    res["machine"] = machine_info()
    if out:
        write_json(out, res)
    _echo(res)
