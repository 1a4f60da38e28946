"""Prompt templates and label lists: the one place that knows what a template and a label look like.

Torch-free, so the bundle runtime and the server clean labels exactly as training and evaluation do.
"""

from __future__ import annotations

import re
import string
from collections.abc import Callable, Sequence
from pathlib import Path

from edgeclip.core.errors import EdgeClipError

DEFAULT_TEMPLATE = "a photo of a {}."
DEFAULT_TEMPLATES = (DEFAULT_TEMPLATE,)


def check_templates(templates: Sequence[str] | None) -> list[str]:
    """Templates with exactly one positional ``{}`` (the label); the default when none are given."""
    templates = list(templates or DEFAULT_TEMPLATES)
    for t in templates:
        try:
            fields = [f for _, f, _, _ in string.Formatter().parse(t) if f is not None]
        except ValueError as e:
            raise EdgeClipError(f"prompt template {t!r} is not a valid format string ({e})") from None
        if fields != [""]:
            raise EdgeClipError(
                f"prompt template {t!r} must hold exactly one '{{}}' placeholder for the label"
            )
    return templates


ARTICLES = ("a", "an", "the")


def fill(template: str, label: str) -> str:
    """The prompt for ``label`` in ``template``: ``"a photo of a {}."`` with ``"a truck"`` is ``"a photo of a
    truck."``, not ``"a photo of a a truck."`` (an article right before ``{}`` gives way to the label's own)."""
    head, sep, tail = template.partition("{}")
    words = label.split(maxsplit=1)
    if sep and head.endswith(" ") and len(words) == 2 and words[0].lower() in ARTICLES:
        prev = head.rstrip().rsplit(maxsplit=1)
        if prev and prev[-1].lower() in ARTICLES:
            return head.rstrip()[: -len(prev[-1])] + label + tail
    return template.format(label)


MAX_LABELS = 10_000  # one cap on every label list (the CLI, a bundle's labeler, the server)


def prompt_ensemble(encode: Callable[[list[str]], object], labels: Sequence[str], templates: Sequence[str]):
    """The zero-shot classifier (L, D) float32, the one prompt ensemble every path uses (torch, bundle, export):
    per label, the normalised mean over templates of the normalised embeddings of its prompts. ``encode``: a list
    of prompts -> (N, D) embeddings (any text tower; numpy or anything ``np.asarray`` takes)."""
    import numpy as np

    def unit(a):
        return a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-12)

    per_t = [
        unit(np.asarray(encode([fill(t, lb) for lb in labels]), dtype=np.float32))
        for t in templates or ["{}"]
    ]
    return unit(np.mean(per_t, axis=0)).astype(np.float32)


def clean_labels(names: str | Sequence[str], cap: int = MAX_LABELS) -> list[str]:
    """Whitespace-normalised, de-duplicated labels in their order (``"a,b"`` or a list); linear time, the cap
    checked before anything is cleaned."""
    if isinstance(names, str):
        names = names.split(",")
    names = list(names)
    if len(names) > cap:
        raise EdgeClipError(f"too many labels ({len(names)}; at most {cap})")
    out: list[str] = []
    seen: set[str] = set()
    for n in names:
        n = " ".join(str(n).split())
        if n and n not in seen:
            seen.add(n)
            out.append(n)
    if not out:
        raise EdgeClipError("the label list is empty")
    return out


def parse_labels(labels: str | Sequence[str] | None) -> list[str]:
    """``"cat,dog"``, a list, or ``@file.txt`` (one label per line) -> cleaned, de-duplicated labels."""
    if labels is None:
        raise EdgeClipError("no labels given (--labels 'cat,dog,car' or --labels @labels.txt)")
    if isinstance(labels, str) and labels.startswith("@"):
        p = Path(labels[1:])
        if not p.is_file():
            raise EdgeClipError(f"label file not found: {p}")
        return clean_labels(p.read_text(encoding="utf-8").splitlines())
    return clean_labels(labels)


MAX_EXAMPLES = 64  # example images per label


def parse_examples(specs: Sequence[str] | None) -> dict[str, list[str]]:
    """``["my truck=ex1.jpg,ex2.jpg", ...]`` -> {label: [image paths]}: a label made from example images (a query by
    example). Paths must exist; a label may be given once."""
    out: dict[str, list[str]] = {}
    for spec in specs or []:
        name, sep, files = str(spec).partition("=")
        name = " ".join(name.split())
        paths = [f.strip() for f in files.split(",") if f.strip()]
        if not sep or not name or not paths:
            raise EdgeClipError(f"--example {spec!r}: expected 'LABEL=image1.jpg,image2.jpg'")
        if name in out:
            raise EdgeClipError(f"--example: label {name!r} is given twice")
        if len(paths) > MAX_EXAMPLES:
            raise EdgeClipError(f"--example {name!r}: at most {MAX_EXAMPLES} images, got {len(paths)}")
        missing = [p for p in paths if not Path(p).is_file()]
        if missing:
            raise EdgeClipError(f"--example {name!r}: image not found: {missing[0]}")
        out[name] = paths
    return out


_CAMEL = re.compile(r"(?<=[a-z])(?=[A-Z])")


def class_names(classes: Sequence[str]) -> list[str]:
    """ImageFolder class folders as prompt words: ``pickup_truck`` -> ``pickup truck``, and a capitalised or
    CamelCase folder (e.g. EuroSAT's ``Forest``, ``AnnualCrop``, ``SeaLake``) -> ``forest``, ``annual crop``,
    ``sea lake``; acronyms (``ATM``) stay as they are."""
    out = []
    for c in classes:
        c = c.replace("_", " ")
        if c[:1].isupper() and not c.isupper():
            c = " ".join(w.lower() for w in _CAMEL.sub(" ", c).split())
        out.append(c)
    return out
