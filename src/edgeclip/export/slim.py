"""Slimming a bundle for shipping: drop the precisions a tower does not run by default, re-hash, record it."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from edgeclip.core.errors import EdgeClipError
from edgeclip.core.io import write_json
from edgeclip.export.card import finish_bundle
from edgeclip.runtime.bundle import read_kind
from edgeclip.runtime.text import default_reason


def _move_text_default(folder: Path, man: dict[str, Any], text_default: dict[str, Any]) -> None:
    if not man.get("text"):
        raise EdgeClipError(f"{folder}: no text tower whose default could move")
    td = dict(text_default)
    ratio = float(td["value"]) / float(td["reference"]) if float(td["reference"]) else 0.0
    if td["precision"] not in man["text"].get("models", {}) or ratio < float(td.get("min_ratio", 0.99)):
        raise EdgeClipError(
            f"{folder}: the text tower's default stays {man['text'].get('default')}: {td['precision']} "
            f"reaches {ratio:.3f} of it ({td.get('measured', '?')}), below {td.get('min_ratio', 0.99)}"
        )
    man["text"]["default_moved"] = {"from": man["text"].get("default"), "ratio": ratio, **td}
    man["text"]["default"] = td["precision"]
    man["text"]["default_why"] = default_reason(man["text"])


def slim_bundle(
    folder: str | os.PathLike, keep: Sequence[str] = ("int8",), text_default: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Drop the image and text models of the precisions not in ``keep`` from a bundle folder (in place; for
    shipping a bundle small), re-hash it and record what was removed in its manifest; -> the manifest.
    ``keep``: precisions for both towers (``int8``) or one (``image:fp32``, ``text:int8``). A precision that a
    tower uses by default is never dropped: the bundle must run as exported, unless ``text_default`` moves the
    text tower's default with its evidence: ``{precision, value, reference, min_ratio, measured}`` (value /
    reference >= min_ratio, e.g. Recall@5 on a validation split with that precision and with the old one)."""
    folder = Path(folder)
    man = read_kind(folder, "labeler", verify=True, default_kind="labeler")
    keep = set(keep)
    removed: list[str] = []
    if text_default:
        _move_text_default(folder, man, text_default)
    towers = [("image", man, man.get("default_precision") or "fp32")]
    if man.get("text"):
        towers.append(("text", man["text"], man["text"].get("default", "fp32")))
    for what, cfg, default in towers:
        mine = {k.split(":", 1)[1] for k in keep if k.startswith(f"{what}:")} | {
            k for k in keep if ":" not in k
        }
        for prec in [p for p in cfg.get("models", {}) if p not in mine]:
            if prec == default:
                raise EdgeClipError(
                    f"{folder}: its {what} tower runs {prec} by default (the export's measured choice); "
                    f"keep {prec} or re-export"
                )
            removed.append(cfg["models"].pop(prec))
    for name in removed:
        (folder / name).unlink(missing_ok=True)
    if man.get("executorch") and "executorch" not in keep:  # the phone programs go too
        man.pop("executorch")
        for p in folder.glob("*.pte"):
            removed.append(p.name)
            p.unlink()
    man["slimmed"] = {"kept": sorted(keep), "removed": sorted(set(removed))}
    if man.get("text"):  # the text tower reads its own config file, which mirrors the manifest's entry
        from edgeclip.runtime.text import TEXT_CONFIG

        write_json(folder / TEXT_CONFIG, man["text"])
    finish_bundle(folder, man)
    return man
