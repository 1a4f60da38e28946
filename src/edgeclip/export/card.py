"""A bundle's MODEL_CARD.md, written from its manifest (one function per section), and :func:`finish_bundle`, which
hashes every file and writes the card, then the manifest, last."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from edgeclip.core.io import sha256_file, write_json
from edgeclip.runtime.bundle import MANIFEST, MODEL_CARD
from edgeclip.runtime.text import default_reason


def _source(m: dict[str, Any]) -> list[str]:
    t, s = m["teacher"], m["student"]
    return [
        f"# Edge bundle: {s['arch']} student of {t['id']}",
        "",
        "Open-vocabulary image labeler. Runs with numpy + Pillow + ONNX Runtime (`edgeclip.runtime`).",
        "",
        "## Source",
        f"- teacher: `{t['spec']}` (id `{t['id']}`, {t['embed_dim']}-d embeddings, logit scale {t['logit_scale']:.1f})",
        f"- student: `{s['arch']}` at {m['input']['size']} px, checkpoint sha256 `{s['checkpoint_sha256'][:16]}...`",
        f"- distillation data: {s.get('data') or 'not recorded in the checkpoint'}"
        + (f" ({s['n_train']} images)" if s.get("n_train") else ""),
        f"- labels ({len(m['labels'])}): {', '.join(m['labels'][:30])}{' ...' if len(m['labels']) > 30 else ''}",
        f"- prompt templates: {', '.join(repr(x) for x in m['templates'])}",
        "",
        "## Files and size",
        "| file | bytes |",
        "| --- | ---: |",
        *[f"| {k} | {v['bytes']:,} |" for k, v in m["files"].items()],
    ]


def _parity(m: dict[str, Any]) -> list[str]:
    lines = [
        "",
        "## Parity and quantization",
        f"- fp32 ONNX vs torch: max abs diff {m['parity']['fp32']['max_abs_diff']:.2e} on "
        f"{m['parity']['fp32']['n']} images",
    ]
    if "int8" in m["parity"]:
        p, q = m["parity"]["int8"], m["quantization"]
        lines.append(
            f"- int8 ({q['method']}{', per-channel' if q.get('per_channel') else ''}, calibrated on "
            f"{q.get('calibration_images', 0)} images): top-1 agreement with fp32 {p['top1_agreement']:.3f}, "
            f"mean embedding cosine {p['mean_cosine']:.4f} on {p['n']} hold-out images"
        )
    return lines


def _text(m: dict[str, Any]) -> list[str]:
    if not m.get("text"):
        return []
    tx = m["text"]
    b, par = tx["bytes"], tx["parity"]
    added = sum(b.values()) + tx.get("tokenizer_bytes", 0)
    lines = [
        "",
        "## Text tower (new labels on the device)",
        f"- {tx['kind']}: fp32 {b['fp32']:,} bytes"
        + (f", int8 {b['int8']:,} bytes" if "int8" in b else "")
        + f", tokenizer {tx.get('tokenizer_bytes', 0):,} bytes: {added / 1e6:.1f} MB added to the bundle",
        f"- tokenizer: identical token ids to the teacher's on {tx['token_parity']['n']} texts",
        f"- fp32 vs torch: min cosine {par['fp32']['min_cosine']:.5f} on {par['fp32']['n_texts']} texts",
    ]
    if "int8" in par:
        z = par["int8"].get("zero_shot_agreement")
        agree = f", zero-shot agreement with torch {z:.3f} on {par['int8']['zero_shot_images']} images"
        lines.append(f"- int8: min cosine {par['int8']['min_cosine']:.4f}" + (agree if z is not None else ""))
    lines.append(f"- default precision {default_reason(tx)}")
    return lines


def _choice(m: dict[str, Any]) -> list[str]:
    ch = (m.get("quantization") or {}).get("choice")
    if not ch:
        return []
    lines = [
        "",
        f"## Which precision runs by default: {ch['precision']}",
        f"{ch['why']} (measured on this machine, {ch['threads']} ONNX Runtime threads; gate: top-1 agreement"
        f" with fp32 >= {ch['gate']['top1_agreement']}).",
        "",
        "| model | batch 1 ms | batch 32 ms | top-1 agreement | bytes |",
        "| --- | ---: | ---: | ---: | ---: |",
        f"| fp32 | {ch['fp32']['batch1_ms']:.2f} | {ch['fp32']['batch32_ms']:.1f} | 1 | |",
    ]
    for k, v in ch["variants"].items():
        lines.append(
            f"| int8 {k}{' (shipped)' if k == ch['int8_file'] else ''} | {v['batch1_ms']:.2f} | "
            f"{v['batch32_ms']:.1f} | {v['top1_agreement']:.3f} | {v['bytes']:,} |"
        )
    return lines


def _executorch(m: dict[str, Any]) -> list[str]:
    if not m.get("executorch"):
        return []
    e = m["executorch"]
    lines = [
        "",
        f"## ExecuTorch programs (phones; {e['delegate']} delegate, input {'x'.join(map(str, e['input']))})",
        "| program | batch 1 ms | vs torch: top-1 agreement | min cosine |",
        "| --- | ---: | ---: | ---: |",
    ]
    for k, f in e["files"].items():
        p = e["parity"][k]
        lines.append(
            f"| {f} ({k}) | {e['latency_ms'][k]:.2f} | {p['top1_agreement']:.3f} | {p['min_cosine']:.4f} |"
        )
    return lines


def _latency_accuracy(m: dict[str, Any]) -> list[str]:
    lines = ["", "## Latency (batch 1, ONNX Runtime, 1 thread, this machine)"]
    lines += [f"- {k}: {v:.2f} ms" for k, v in m.get("latency_ms", {}).items()]
    if m.get("accuracy"):
        a = m["accuracy"]
        lines += ["", f"## Zero-shot accuracy on `{a['data']}` ({a['n']} images)"]
        lines += [f"- {k}: top-1 {a[k]:.4f}" for k in ("torch_fp32", "bundle_fp32", "bundle_int8") if k in a]
    else:
        lines += [
            "",
            "## Accuracy",
            "Not measured at export (`edgeclip export ... --eval IMAGEFOLDER` adds it here).",
        ]
    machine = m["machine"].get("cpu_model", m["machine"].get("processor", "?"))
    return lines + ["", f"Created {m['created']} on {machine}.", ""]


SECTIONS = (_source, _parity, _text, _choice, _executorch, _latency_accuracy)  # the card, in order


def model_card(m: dict[str, Any]) -> str:
    """MODEL_CARD.md of a labeler bundle, from its manifest."""
    return "\n".join(line for section in SECTIONS for line in section(m))


def finish_bundle(folder: Path, manifest: dict[str, Any]) -> None:
    """Hash every file, write the model card, then the manifest (with the card's hash) last."""
    files = {
        p.name: {"sha256": sha256_file(p), "bytes": p.stat().st_size}
        for p in sorted(folder.iterdir())
        if p.is_file() and p.name not in (MANIFEST, MODEL_CARD)
    }
    manifest["files"] = files
    (folder / MODEL_CARD).write_text(model_card(manifest), encoding="utf-8")
    files[MODEL_CARD] = {
        "sha256": sha256_file(folder / MODEL_CARD),
        "bytes": (folder / MODEL_CARD).stat().st_size,
    }
    write_json(folder / MANIFEST, manifest)
    for p in folder.iterdir():
        p.chmod(0o644)  # atomic writes create 0600 files; a bundle is meant to be copied and shared
