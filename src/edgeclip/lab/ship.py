"""Shipping a lab's shipped models into the repository (``models/``): fp16 safetensors copies of the teacher,
the student and the captioner, the edge bundle as it was exported, a model card each, and ``models/index.json``
(role -> the spec or path the CLI takes, with sha256 and bytes), so that anyone can re-evaluate the published
figures without re-training.

Every copy is checked before it is listed: the fp16 teacher and student must give the fp32 originals'
embeddings (min cosine over real photos), the student must load against the shipped teacher (its teacher id),
and the bundle is re-verified file by file against its manifest.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from edgeclip.core.checkpoint import convert_checkpoint
from edgeclip.core.errors import EdgeClipError
from edgeclip.core.io import atomic_path, read_json, sha256_file, write_json
from edgeclip.core.models_index import INDEX  # the one name of a models index file

ROLES = ("teacher", "student", "bundle", "captioner")
MIN_COSINE = 0.999


def _files(path: Path) -> dict[str, dict[str, Any]]:
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    return {
        str(p.relative_to(path.parent)): {"sha256": sha256_file(p), "bytes": p.stat().st_size} for p in files
    }


def _photos(spec: str, n: int) -> list:
    from edgeclip.data.sources import open_source

    out = []
    for r in open_source(spec):
        try:
            out.append(r.load())
        except Exception:  # noqa: BLE001 -- an unreadable photo is not a check photo
            continue
        if len(out) == n:
            break
    if not out:
        raise EdgeClipError(f"ship: no readable check photos in {spec}")
    return out


def _min_cos(a, b) -> float:
    import numpy as np

    return float(np.min(np.sum(a * b, axis=1)))


def ship_models(
    into: str | Path,
    photos: str | None,
    teacher: str,
    student: str | None = None,
    bundle: str | None = None,
    captioner: str | dict[str, dict[str, Any]] | None = None,
    names: dict[str, str] | None = None,
    card: dict[str, str] | None = None,
    check_images: int = 64,
    bundle_keep: list[str] | None = None,
    bundle_text_default: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Copy the given models into ``into`` (fp16 where they are checkpoints), check them, write their cards and
    ``index.json``; -> the index. ``photos``: an image source for the checks. ``names``: file names per role.
    ``card``: text per role (training data, licence) for the model cards. ``bundle_keep``: ship only these
    precisions of the bundle (e.g. ``[int8]``, ``[image:fp32, text:int8]``; see ``export.slim.slim_bundle``),
    ``bundle_text_default``: move its text tower's default, with the evidence ``slim_bundle`` checks.
    ``captioner``: a checkpoint, or ``{run: {captioner: PATH, val_cider: X}}``: the run best on validation CIDEr
    is shipped (never chosen on test). A ``teacher`` that is already the shipped file (a later experiment that
    trained on the shipped teacher) is kept as it was shipped, with its checks; ``photos`` is then needed only
    for a student."""
    into = Path(into)
    into.mkdir(parents=True, exist_ok=True)
    names = {
        "teacher": "teacher.safetensors",
        "student": "student.safetensors",
        "bundle": "bundle",
        "captioner": "captioner.safetensors",
        **(names or {}),
    }
    index: dict[str, Any] = {"format": "edgeclip-models/1", "models": {}}
    checks: dict[str, Any] = {}
    old = read_json(into / INDEX) if (into / INDEX).is_file() else {}
    src_t = teacher.split(":", 1)[1] if teacher.startswith("reference-lit:") else teacher
    old_t = ((old.get("models") or {}).get("teacher") or {}).get("spec", "")
    # the teacher already shipped (whatever its file's name) is kept as it was shipped, with its checks
    kept_teacher = bool(old_t) and Path(src_t).resolve() == Path(old_t.split(":", 1)[-1]).resolve()
    t_spec = old_t if kept_teacher else f"reference-lit:{into / names['teacher']}"
    to_check = bool(student) or not kept_teacher  # a new teacher or student copy is checked on photos
    if to_check and not photos:
        raise EdgeClipError("ship: `photos` (check images) are needed to check a teacher or student copy")
    imgs = _photos(photos, check_images) if to_check else []
    if not kept_teacher:
        index["models"]["teacher"] = _ship_teacher(teacher, src_t, into / names["teacher"], imgs, checks)
    if student:
        index["models"]["student"] = _ship_student(
            teacher, t_spec, student, into / names["student"], imgs, checks
        )
    if bundle:
        index["models"]["bundle"] = _ship_bundle(
            bundle, into / names["bundle"], bundle_keep, bundle_text_default
        )
    if captioner:
        index["models"]["captioner"] = _ship_captioner(captioner, into / names["captioner"])
    _write_cards(into, index["models"], card or {}, checks)
    given = {
        *(() if kept_teacher else ("teacher",)),
        *(r for r, v in (("student", student), ("bundle", bundle), ("captioner", captioner)) if v),
    }
    checks = _keep_earlier(index, old, given, checks)
    index["checks"] = checks
    index["total_bytes"] = sum(m["bytes"] for m in index["models"].values())
    # the CLI-facing view: role -> spec (what `--teacher`, `--student`, `--bundle`, `--model` take)
    index.update({role: index["models"][role]["spec"] for role in ROLES if role in index["models"]})
    write_json(into / INDEX, index)
    return index


def _keep_earlier(index: dict, old: dict, given: set, checks: dict) -> dict:
    """A later ship (the captioner, trained by another experiment) keeps the roles shipped before it, with their
    checks; every check must pass. A role shipped anew under another file name keeps its old entry under
    ``previous`` (its files stay: experiments built on them, e.g. an earlier lab's teacher that a later lab
    fine-tunes, still find them). -> the checks."""
    index["previous"] = dict(old.get("previous") or {})
    for role, m in (old.get("models") or {}).items():
        if role not in given:
            index["models"][role] = m
        elif m.get("spec") != index["models"][role]["spec"]:
            index["previous"][role] = m
    if not index["previous"]:
        del index["previous"]
    checks = {
        **{k: v for k, v in (old.get("checks") or {}).items() if k.split("_")[0] not in given},
        **checks,
    }
    for name, v in checks.items():
        if v < MIN_COSINE:
            raise EdgeClipError(f"ship: {name} = {v:.5f} < {MIN_COSINE}: the fp16 copy is not the model")
    return checks


def _ship_teacher(teacher: str, src: str, dst: Path, imgs, checks: dict) -> dict[str, Any]:
    from edgeclip.zeroshot.embedder import load_embedder

    convert_checkpoint(src, dst, half=True)
    t32, t16 = load_embedder(teacher=teacher), load_embedder(teacher=f"reference-lit:{dst}")
    checks["teacher_min_cosine"] = _min_cos(t32.embed(imgs), t16.embed(imgs))
    if t32.teacher.id != t16.teacher.id:  # an fp16 copy keeps its id (the hash of the fp32 weights)
        raise EdgeClipError(f"ship: the fp16 teacher answers to {t16.teacher.id}, not {t32.teacher.id}")
    return {"spec": f"reference-lit:{dst}", "id": t16.teacher.id}


def _ship_student(teacher: str, t_spec: str, student: str, dst: Path, imgs, checks: dict) -> dict[str, Any]:
    from edgeclip.zeroshot.embedder import load_embedder

    convert_checkpoint(student, dst, half=True)
    s32 = load_embedder(teacher=teacher, student=student)
    s16 = load_embedder(teacher=t_spec, student=str(dst))  # the shipped pair: its teacher id checked
    checks["student_min_cosine"] = _min_cos(s32.embed(imgs), s16.embed(imgs))
    return {"spec": str(dst), "arch": s16.info.get("arch")}


def _ship_bundle(bundle: str, dst: Path, keep, text_default) -> dict[str, Any]:
    from edgeclip.runtime.labeler import Labeler

    tmp = dst.with_name(dst.name + ".part")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(bundle, tmp)
    if keep:
        from edgeclip.export.slim import slim_bundle

        slim_bundle(tmp, keep, text_default=text_default)
    Labeler(tmp, verify=True)  # every file against the manifest's sha256
    shutil.rmtree(dst, ignore_errors=True)
    tmp.rename(dst)
    return {"spec": str(dst)}


def _ship_captioner(captioner: str | dict, dst: Path) -> dict[str, Any]:
    """A checkpoint, or the run best on validation CIDEr among ``{run: {captioner, val_cider}}``."""
    from edgeclip.models.captioner import load_captioner

    chosen = None
    if isinstance(captioner, dict):
        runs = {k: v for k, v in captioner.items() if isinstance(v, dict) and v.get("val_cider") is not None}
        if not runs:
            raise EdgeClipError("ship: captioner candidates need {captioner: PATH, val_cider: X} each")
        best = max(runs, key=lambda k: float(runs[k]["val_cider"]))
        chosen = {"run": best, "by": "val CIDEr", **{k: float(v["val_cider"]) for k, v in runs.items()}}
        captioner = str(runs[best]["captioner"])
    convert_checkpoint(captioner, dst, half=True)
    load_captioner(str(dst))
    return {"spec": str(dst), **({"chosen": chosen} if chosen else {})}


def _write_cards(into: Path, models: dict[str, dict], card: dict[str, str], checks: dict) -> None:
    for role, m in models.items():
        p = Path(m["spec"].split(":", 1)[1] if m["spec"].startswith("reference-lit:") else m["spec"])
        m["files"] = _files(p)
        m["bytes"] = sum(f["bytes"] for f in m["files"].values())
        cpath = into / f"{p.stem if p.is_file() else p.name}.md"
        with atomic_path(cpath) as tmp:
            tmp.write_text(_card(role, m, card.get(role, ""), checks), encoding="utf-8")
        m["card"] = str(cpath)


def _card(role: str, m: dict, text: str, checks: dict) -> str:
    lines = [f"# edgeclip reference {role}", "", text.strip(), "", f"Load it with: `{m['spec']}`", ""]
    lines += ["| file | bytes | sha256 |", "|---|---:|---|"]
    lines += [f"| {k} | {v['bytes']} | `{v['sha256']}` |" for k, v in m["files"].items()]
    c = {k: v for k, v in checks.items() if k.startswith(role)}
    if c:
        lines += ["", "Checked when shipped: " + ", ".join(f"{k} {v:.5f}" for k, v in c.items())]
    return "\n".join(lines) + "\n"


def shipped(root: str | Path = "models") -> dict[str, Any]:
    """``models/index.json`` -> the index; a missing or partial index is one line."""
    p = Path(root) / INDEX
    if not p.is_file():
        raise EdgeClipError(f"no shipped models: {p} is missing (run the lab that ships them)")
    idx = read_json(p)
    if not isinstance(idx, dict) or "teacher" not in idx:
        raise EdgeClipError(f"{p} is not an edgeclip models index (no 'teacher')")
    return idx
