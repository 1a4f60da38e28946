"""``edgeclip caption``: ``run`` (caption images), ``train``, ``eval``, ``export``."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from edgeclip.cli.common import echo_json
from edgeclip.core.errors import EdgeClipError


def _images(images: list[str]):
    from edgeclip.data.sources import files_source, open_source

    if (
        len(images) == 1
        and Path(images[0]).is_file()
        and Path(images[0]).suffix.lower() in (".txt", ".csv", ".tsv", ".lst")
    ):
        return open_source(images[0], "list")
    return files_source(images)


app = typer.Typer(
    no_args_is_help=True, help="Captioner: caption images, train, evaluate (COCO metrics), export to ONNX."
)


@app.command("run")
def caption_cmd(
    images: list[str] = typer.Argument(..., help="image files and/or folders, or one list file"),
    model: Path | None = typer.Option(None, help="captioner checkpoint (captioner.pt)"),
    onnx: Path | None = typer.Option(
        None, help="an exported captioner folder (ONNX Runtime, no torch model needed)"
    ),
    beam: int = typer.Option(5, help="beam size (1 = greedy)"),
    max_len: int = typer.Option(20, help="max words"),
    length_penalty: float = typer.Option(1.0, help="beam scores are divided by length ** this"),
    repetition_penalty: float = typer.Option(1.0, help="a word already in the caption costs log(this) more"),
    no_repeat_ngram: int = typer.Option(0, help="no n-gram of this size twice in a caption (0: off)"),
    batch_size: int = typer.Option(16),
    out: Path | None = typer.Option(None, help="write JSONL here (default stdout)"),
):
    """Caption images with a trained captioner (torch checkpoint, or an exported ONNX folder: no torch needed)."""
    from edgeclip.runtime.captioner import caption_records
    from edgeclip.runtime.decode import Decoding

    if (model is None) == (onnx is None):
        raise EdgeClipError("give exactly one of --model CHECKPOINT or --onnx FOLDER")
    decoding = Decoding(beam, max_len, length_penalty, repetition_penalty, no_repeat_ngram)
    if onnx is not None:  # the device path: numpy preprocessing and ONNX Runtime, no torch
        from edgeclip.runtime.captioner import CaptionerBundle

        captioner = CaptionerBundle(onnx).decoding(decoding)  # checks the manifest's hashes when it has one
    else:
        from edgeclip.models.captioner import TorchCaptioner

        captioner = TorchCaptioner(model, decoding)
    src = _images(images)
    skipped = list(src.skipped)
    rows = caption_records(captioner, src, batch_size, on_skip=skipped.append)
    lines = [json.dumps(r, ensure_ascii=False) for r in rows]
    if out is None:
        for ln in lines:
            typer.echo(ln)
    else:
        from edgeclip.core.io import atomic_path

        with atomic_path(out) as tmp:
            tmp.write_text("".join(ln + "\n" for ln in lines), encoding="utf-8")
    typer.echo(f"captioned {len(rows)} images; skipped {len(skipped)}", err=True)
    for s in skipped[:20]:
        typer.echo(f"  skipped: {s}", err=True)


@app.command("train")
def caption_train_cmd(
    config: Path | None = typer.Argument(None, help="YAML experiment (configs/caption_vi.yaml)"),
    data: str | None = typer.Option(None, help="captions file"),
    images: str | None = typer.Option(None),
    teacher: str | None = typer.Option(None),
    out: str | None = typer.Option(None),
    alpha: float | None = typer.Option(None),
    beta: float | None = typer.Option(None),
    epochs: int | None = typer.Option(None),
    resume: bool = typer.Option(False, help="continue from OUT/last.ckpt"),
    init: str | None = typer.Option(
        None, help="start the encoder from a distilled edgeclip student (student.pt)"
    ),
    set_: list[str] = typer.Option([], "--set", help="config override key.sub=value (repeatable)"),
):
    """Train a captioner (alpha * teacher-embedding MSE + beta * cross-entropy), early-stopped on val CIDEr."""
    from edgeclip.core.config import config_from_cli
    from edgeclip.train.caption import CaptionTrainConfig, train_captioner

    cfg = config_from_cli(
        CaptionTrainConfig,
        config,
        [
            ("data", data),
            ("images", images),
            ("teacher", teacher),
            ("out", out),
            ("alpha", alpha),
            ("beta", beta),
            ("train.epochs", epochs),
            ("init", init),
        ],
        set_,
    )
    hist = train_captioner(cfg, resume=resume)
    best = hist.get("best", {})
    typer.echo(
        f"captioner saved: {Path(cfg.out) / 'captioner.pt'}  best val CIDEr {best.get('best')} "
        f"(epoch {best.get('best_epoch')}); skipped {hist['data']['train']['skipped']}"
    )


@app.command("eval")
def caption_eval_cmd(
    captions: str | None = typer.Argument(
        None, help="captions file (COCO JSON, Karpathy JSON, Flickr token.txt, IMAGE, caption)"
    ),
    model: Path = typer.Option(..., help="captioner checkpoint"),
    data: str | None = typer.Option(
        None, help="the captions file, as an option (the argument's other spelling)"
    ),
    images: str | None = typer.Option(None, help="images folder (default: found beside the captions file)"),
    split: str | None = typer.Option(None, help="split to evaluate (test, val, ...)"),
    splits: str | None = typer.Option(None, help="splits file (default: splits.json beside the captions)"),
    beam: int = typer.Option(5),
    max_len: int = typer.Option(20),
    length_penalty: float = typer.Option(1.0),
    repetition_penalty: float = typer.Option(1.0, help="a word already in the caption costs log(this) more"),
    no_repeat_ngram: int = typer.Option(0, help="no n-gram of this size twice in a caption (0: off)"),
    samples: int = typer.Option(10, help="sample captions in the JSON"),
    batch_size: int = typer.Option(32),
    out: Path | None = typer.Option(None, help="write the results JSON here"),
    allow_vocab_mismatch: bool = typer.Option(False, help="score even when most reference words are unknown"),
    as_json: bool = typer.Option(
        False, "--json", help="print one JSON line: the metrics, distinct_captions, n_images"
    ),
):
    """BLEU-1..4, METEOR, ROUGE-L, CIDEr (and SPICE when available) of a captioner on a caption set."""
    from edgeclip.core.io import sha256_file, write_json
    from edgeclip.core.machine import machine_info
    from edgeclip.data.captions import load_captions
    from edgeclip.models.captioner import load_captioner
    from edgeclip.runtime.decode import Decoding
    from edgeclip.train.caption import evaluate_captioner

    if (captions is None) == (data is None):
        raise EdgeClipError("give the captions file once: as the argument or as --data")
    m, pp, ck = load_captioner(model)
    cs = load_captions(captions or data, images, split, splits)
    res = evaluate_captioner(
        m,
        pp,
        cs,
        Decoding(beam, max_len, length_penalty, repetition_penalty, no_repeat_ngram),
        batch_size=batch_size,
        samples=samples,
        allow_vocab_mismatch=allow_vocab_mismatch,
    )
    res.update(
        {
            "model": str(model),
            "model_sha256": sha256_file(model),
            "data": cs.summary(),
            "machine": machine_info(),
        }
    )
    res["distinct_captions"] = len(set(res.get("captions", {}).values()))
    if out:
        write_json(out, res)
    if as_json:
        line = {**res["metrics"], "distinct_captions": res["distinct_captions"], "n_images": res["n_images"]}
        typer.echo(json.dumps({**line, "beam": beam}, ensure_ascii=False))
        return
    for k, v in res["metrics"].items():
        typer.echo(
            f"{k:8s} {v:.4f}"
            if isinstance(v, float)
            else f"{k:8s} unavailable ({res['unavailable'].get(k, '')})"
        )
    typer.echo(f"{res['n_images']} images, beam {beam}; skipped {res['skipped']}")


@app.command("export")
def caption_export_cmd(
    model: Path = typer.Option(..., help="captioner checkpoint"),
    out: Path = typer.Option(..., help="output folder"),
    check: bool = typer.Option(True, help="compare ONNX Runtime and torch greedy captions on random inputs"),
):
    """Export a captioner bundle: encoder + decoder step ONNX, vocabulary, manifest (`edgeclip serve` runs it)."""
    from edgeclip.export.caption import CaptionExportConfig, run_caption_export

    paths = run_caption_export(CaptionExportConfig(model=str(model), out=str(out), check=check))
    echo_json(paths)
