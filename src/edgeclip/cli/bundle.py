"""Edge bundles: ``edgeclip export`` (student -> bundle folder) and ``edgeclip serve`` (HTTP service + web page)."""

from __future__ import annotations

from pathlib import Path

import typer

from edgeclip.cli.common import echo_json
from edgeclip.core.errors import EdgeClipError
from edgeclip.core.prompts import DEFAULT_TEMPLATES

app = typer.Typer()


@app.command("export")
def export_cmd(
    student: Path = typer.Argument(..., help="student checkpoint (student.pt)"),
    out: Path = typer.Option(..., help="bundle folder to write"),
    labels: str = typer.Option(
        ..., help="'cat,dog,car' or @labels.txt: embedded now with the teacher's text tower"
    ),
    template: list[str] = typer.Option(
        list(DEFAULT_TEMPLATES), help="prompt template(s) (ensemble when repeated)"
    ),
    calib: str | None = typer.Option(None, help="calibration images (folder, list, ImageFolder, shards)"),
    calib_images: int = typer.Option(200, help="images to take from --calib (a hold-out share checks int8)"),
    holdout: float = typer.Option(0.25, help="share of the calibration images held out for the parity check"),
    quant: str = typer.Option(
        "auto",
        help="auto (every int8 recipe for the model, timed and checked; the fastest within the gate) | static"
        " | dynamic | none",
    ),
    per_channel: bool = typer.Option(True, help="per-channel weight scales (static int8)"),
    teacher: str | None = typer.Option(None, help="teacher spec (default: the one the student records)"),
    eval_data: str | None = typer.Option(
        None, "--eval", help="ImageFolder: zero-shot accuracy for the model card"
    ),
    eval_images: int = typer.Option(0, help="evaluate on a random subset of this size (0: all)"),
    overwrite: bool = typer.Option(False, help="replace an existing bundle at --out"),
    text_encoder: bool = typer.Option(
        False,
        help="also bundle the teacher's text tower (ONNX fp32 + int8, tokenizer): new labels without torch",
    ),
    threads: int = typer.Option(
        2, help="ONNX Runtime threads the int8 variants are timed with (the device's)"
    ),
    int8_variants: str | None = typer.Option(
        None, help="comma-separated int8 recipes to build and time (default: all for the model's family)"
    ),
    format: str = typer.Option(
        "onnx", "--format", help="onnx | onnx,executorch | executorch (ONNX is always written)"
    ),
    modality: str | None = typer.Option(
        None,
        help="an EdgeVL student's other modality (ir, depth, swir, ...): the bundle reads that input "
        "(calibrate it on that modality's files)",
    ),
):
    """Export a student to a bundle: ONNX fp32 + int8, labels.json, preprocess.json, manifest, model card."""
    from edgeclip.export.bundle import BundleConfig, run_export

    cfg = BundleConfig(
        student=str(student),
        out=str(out),
        labels=labels,
        templates=template,
        calib=calib,
        quant=quant,
        calib_images=calib_images,
        holdout=holdout,
        per_channel=per_channel,
        teacher=teacher,
        eval_data=eval_data,
        eval_images=eval_images,
        overwrite=overwrite,
        text_encoder=text_encoder,
        threads=threads,
        int8_variants=[v.strip() for v in int8_variants.split(",") if v.strip()] if int8_variants else None,
        formats=format,
        modality=modality,
    )
    man = run_export(cfg, log=lambda s: typer.echo(s, err=True))
    summary = {
        "bundle": str(out),
        "models": man["models"],
        "parity": man["parity"],
        "bytes": {k: v["bytes"] for k, v in man["files"].items()},
        "latency_ms": man["latency_ms"],
    }
    summary["default_precision"] = man.get("default_precision")
    if "executorch" in man:
        summary["executorch"] = {k: man["executorch"][k] for k in ("files", "parity", "latency_ms")}
    if "accuracy" in man:
        summary["accuracy"] = man["accuracy"]
    if "text" in man:
        tx = man["text"]
        summary["text_tower"] = {"default": tx["default"], "bytes": tx["bytes"], "parity": tx["parity"]}
    echo_json(summary)


@app.command("serve")
def serve_cmd(
    bundle: Path = typer.Argument(..., help="an exported bundle folder"),
    host: str = typer.Option("127.0.0.1", help="address to bind (default loopback only)"),
    port: int = typer.Option(8000),
    precision: str = typer.Option("auto", help="auto (int8 when present) | fp32 | int8"),
    threads: int | None = typer.Option(None, help="ONNX Runtime intra-op threads"),
    max_upload_mb: float = typer.Option(8.0, help="reject uploads larger than this (HTTP 413)"),
    max_megapixels: float = typer.Option(
        16.0, help="refuse images whose header claims more pixels (HTTP 415)"
    ),
    topk: int = typer.Option(5, help="default number of labels shown"),
    teacher: str | None = typer.Option(
        None, help="teacher spec: free-text labels for a bundle without its text tower (needs torch)"
    ),
    token: str | None = typer.Option(
        None, envvar="EDGECLIP_SERVE_TOKEN", help="token for label edits (default: a new one, printed)"
    ),
    read_only: bool = typer.Option(False, help="nobody may change the labels"),
    allow_host: list[str] = typer.Option([], help="Host names the server answers to besides loopback"),
):
    """Serve a bundle: POST /label, a web page at / to upload an image and edit the labels (with the token)."""
    import secrets

    import uvicorn

    from edgeclip.serve.app import LOOPBACK_HOSTS, create_app
    from edgeclip.serve.protocol import uvicorn_config

    token = token or secrets.token_urlsafe(18)
    hosts = [*LOOPBACK_HOSTS, *allow_host] + ([host] if host not in ("0.0.0.0", "::") else [])
    if host not in LOOPBACK_HOSTS:
        typer.echo(
            f"warning: binding {host} exposes the server beyond this machine; label edits need the token,"
            " and only these Host names are answered: " + ", ".join(hosts),
            err=True,
        )
    enc = _text_encoder(bundle, teacher) if teacher else None
    application = create_app(
        bundle,
        precision=precision,
        threads=threads,
        max_upload_bytes=int(max_upload_mb * 1024 * 1024),
        max_pixels=int(max_megapixels * 1e6),
        topk=topk,
        text_encoder=enc,
        token=token,
        read_only=read_only,
        allowed_hosts=hosts,
    )
    where = f"http://{host}:{port}/" + ("" if read_only else f"#token={token}")
    typer.echo(f"serving {bundle} ({application.state.model.name}) on {where}", err=True)
    # slow clients: a request head must arrive within 10 s, idle keep-alive connections close after 5 s
    uvicorn.Server(uvicorn_config(application, host=host, port=port)).run()


def _text_encoder(bundle: Path, spec: str):
    """names -> (L, D) embeddings with the bundle's teacher text tower and templates (checked by teacher id)."""
    from edgeclip.core.lineage import check_teacher
    from edgeclip.models.teachers import load_teacher
    from edgeclip.runtime.bundle import read_manifest
    from edgeclip.zeroshot.text import text_embeddings

    man = read_manifest(bundle)
    t = load_teacher(spec, device="cpu")
    check_teacher(man.get("teacher"), {"id": t.id}, f"the labels of bundle {bundle}")
    templates = man.get("templates") or list(DEFAULT_TEMPLATES)
    return lambda names: text_embeddings(t, names, templates).numpy()


@app.command("watch")
def watch_cmd(
    source: str = typer.Argument(
        ..., help="a video file, a frame folder, /dev/videoN or an rtsp:// / http:// stream"
    ),
    bundle: Path = typer.Option(..., help="an exported bundle (with --text-encoder for free-text queries)"),
    rules: Path = typer.Option(..., help="rules YAML: queries, thresholds, durations, cooldowns, caps"),
    out: Path = typer.Option(Path("watch_out"), help="events.jsonl, kept frames, state.json, summary.json"),
    resume: bool = typer.Option(False, help="a file source: go on after the last labeled frame"),
    max_frames: int = typer.Option(0, help="stop after this many labeled frames (0: the whole source)"),
    precision: str = typer.Option("auto", help="bundle model: auto | fp32 | int8"),
    threads: int | None = typer.Option(2, help="ONNX Runtime threads"),
    follow: bool = typer.Option(False, help="a frame folder: keep watching for new files"),
    folder_fps: float = typer.Option(10.0, help="a frame folder: frames per second (time stamps)"),
    progress: bool = typer.Option(True, help="a live progress line (fps, latency, events)"),
    as_json: bool = typer.Option(False, "--json", help="print the summary as one JSON line on stdout"),
    upload: str | None = typer.Option(
        None, help="a collector's address: send kept frames there (store-and-forward)"
    ),
    device_id: str | None = typer.Option(None, help="this device's id at the collector (with --upload)"),
    token_file: Path | None = typer.Option(None, help="the device token (else $EDGECLIP_DEVICE_TOKEN)"),
    outbox: Path | None = typer.Option(None, help="where frames wait to be sent (default OUT/outbox)"),
    outbox_mb: float = typer.Option(
        500.0, help="the outbox's size cap; past it the oldest frames are evicted"
    ),
    campaign_poll: float = typer.Option(30.0, help="seconds between campaign polls"),
    drain_seconds: float = typer.Option(10.0, help="at the end, wait this long for the outbox to empty"),
    realtime: bool = typer.Option(
        False, help="play a video file at its own pace, as a camera delivers frames"
    ),
):
    """Label a video / camera / frame folder in real time and keep the frames that match the rules (no torch)."""
    from edgeclip.runtime import load_bundle
    from edgeclip.runtime.sources import open_frames
    from edgeclip.runtime.watch import load_rules, watch

    r = load_rules(rules)
    link = None
    if upload:
        from edgeclip.runtime.watch.uplink import FleetLink, read_token

        if not device_id:
            raise EdgeClipError("--upload needs --device-id")
        link = FleetLink(
            outbox or Path(out) / "outbox",
            upload,
            device_id,
            read_token(token_file=token_file),
            max_bytes=int(outbox_mb * 1e6),
            poll=campaign_poll,
            log=lambda s: typer.echo(s, err=True),
        )
    src = open_frames(source, fps=folder_fps, follow=follow)
    summary = watch(
        src,
        load_bundle(bundle, precision=precision, threads=threads),
        r,
        out,
        resume,
        max_frames,
        progress,
        log=lambda s: typer.echo(s, err=True),
        link=link,
        drain=drain_seconds,
        realtime=realtime,
    )
    if as_json:  # else the watcher's own closing line (stderr) says what happened, and summary.json holds it
        echo_json(summary)
    # an unreadable or broken source: what was labeled is kept, and the exit code says so
    if summary.get("error"):
        kept = f"what was labeled is kept; summary: {Path(out) / 'summary.json'}"
        raise EdgeClipError(f"{summary['error']} ({kept})")
