"""Standard caption metrics through pycocoevalcap: BLEU-1..4, METEOR, ROUGE-L, CIDEr, SPICE.

Captions are tokenised with the Stanford PTB tokenizer that pycocoevalcap ships (Java), exactly as the
COCO evaluation server does. METEOR and the PTB tokenizer need Java; without it METEOR is reported as
unavailable and edgeclip's own Unicode tokeniser is used. SPICE needs Stanford CoreNLP, which
pycocoevalcap downloads on first use: offline that download fails and SPICE is reported as unavailable
with the reason, never as a number.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import sys
from collections.abc import Iterable
from typing import Any

from edgeclip.core.errors import EdgeClipError
from edgeclip.data.vocab import tokenize

METRIC_KEYS = ("Bleu_1", "Bleu_2", "Bleu_3", "Bleu_4", "METEOR", "ROUGE_L", "CIDEr", "SPICE")


@contextlib.contextmanager
def _java_utf8():
    """Make Java read and write UTF-8 (Vietnamese, accents) even under a non-UTF-8 locale."""
    loc = " ".join(os.environ.get(k, "") for k in ("LC_ALL", "LC_CTYPE", "LANG")).lower()
    if "utf-8" in loc or "utf8" in loc:
        yield
        return
    old = os.environ.get("JAVA_TOOL_OPTIONS")
    os.environ["JAVA_TOOL_OPTIONS"] = ((old + " ") if old else "") + "-Dfile.encoding=UTF-8"
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("JAVA_TOOL_OPTIONS", None)
        else:
            os.environ["JAVA_TOOL_OPTIONS"] = old


def java_available() -> bool:
    return shutil.which("java") is not None


def _tokenize(refs: dict[str, list[str]], hyps: dict[str, str], use_java: bool):
    if use_java:
        from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

        tok = PTBTokenizer()
        with _java_utf8():
            g = tok.tokenize({k: [{"caption": c} for c in v] for k, v in refs.items()})
            r = tok.tokenize({k: [{"caption": hyps[k]}] for k in refs})
        return g, r, "ptb (Stanford CoreNLP 3.4.1, pycocoevalcap)"
    g = {k: [" ".join(tokenize(c)) for c in v] for k, v in refs.items()}
    r = {k: [" ".join(tokenize(hyps[k]))] for k in refs}
    return g, r, "edgeclip unicode tokeniser (no java)"


def spice_missing() -> str | None:
    """Why SPICE cannot run here without a download, or None: it needs Stanford CoreNLP's jars, which pycocoevalcap
    fetches on first use (offline that is a failed download, so it is never attempted: SPICE is reported
    unavailable instead)."""
    from pycocoevalcap.spice import get_stanford_models as g

    jar = os.path.join(g.SPICEDIR, g.SPICELIB, f"{g.JAR}.jar")
    if os.path.exists(jar):
        return None
    return (
        f"Stanford CoreNLP ({g.JAR}.jar) is not installed; online, fetch it once with: "
        "python -m pycocoevalcap.spice.get_stanford_models"
    )


def _spice(gts, res, timeout: float) -> float:
    from pycocoevalcap.spice.spice import Spice

    old = socket.getdefaulttimeout()
    socket.setdefaulttimeout(timeout)  # the CoreNLP download must not hang an offline machine
    try:
        # pycocoevalcap prints its CoreNLP download notice: keep stdout for the caller's JSON line
        with _java_utf8(), contextlib.redirect_stdout(sys.stderr):
            score, _ = Spice().compute_score(gts, res)
    finally:
        socket.setdefaulttimeout(old)
    return float(score)


def _meteor(gts, res, use_java: bool, unavailable: dict) -> float | None:
    if not use_java:
        unavailable["METEOR"] = "java not found (METEOR 1.5 is a Java program)"
        return None
    from pycocoevalcap.meteor.meteor import Meteor

    with _java_utf8():
        m = Meteor()
        try:
            return float(m.compute_score(gts, res)[0])
        finally:
            del m


def _spice_or_why(gts, res, use_java: bool, timeout: float, unavailable: dict) -> float | None:
    corenlp = spice_missing()
    if not use_java or corenlp:
        unavailable["SPICE"] = "java not found" if not use_java else corenlp
        return None
    try:
        return _spice(gts, res, timeout)
    except Exception as e:  # download or Java failure: report, never invent a number
        unavailable["SPICE"] = f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}".strip()
        return None


def score_captions(
    refs: dict[str, list[str]],
    hyps: dict[str, str],
    metrics: Iterable[str] = ("BLEU", "METEOR", "ROUGE_L", "CIDEr", "SPICE"),
    spice_timeout: float = 20.0,
) -> dict[str, Any]:
    """Corpus scores of ``hyps`` (image id -> caption) against ``refs`` (image id -> reference captions).

    Returns ``{"Bleu_1": .., ..., "CIDEr": .., "SPICE": float|None, "unavailable": {metric: reason}, "n": ..}``.
    """
    metrics = set(metrics)
    if not hyps:
        raise EdgeClipError("no generated captions to score")
    missing = [k for k in hyps if k not in refs]
    if missing:
        raise EdgeClipError(f"{len(missing)} generated captions have no references (first: {missing[0]})")
    refs = {k: [c for c in refs[k] if c and c.strip()] for k in hyps}
    empty = [k for k, v in refs.items() if not v]
    if empty:
        raise EdgeClipError(f"{len(empty)} images have no reference caption (first: {empty[0]})")
    use_java = java_available()
    gts, res, tok_name = _tokenize(refs, hyps, use_java)
    out: dict[str, Any] = {}
    unavailable: dict[str, str] = {}
    if "BLEU" in metrics:
        from pycocoevalcap.bleu.bleu import Bleu

        b, _ = Bleu(4).compute_score(gts, res, verbose=0)
        out.update({f"Bleu_{i + 1}": float(v) for i, v in enumerate(b)})
    if "METEOR" in metrics:
        out["METEOR"] = _meteor(gts, res, use_java, unavailable)
    if "ROUGE_L" in metrics:
        from pycocoevalcap.rouge.rouge import Rouge

        out["ROUGE_L"] = float(Rouge().compute_score(gts, res)[0])
    if "CIDEr" in metrics:
        from pycocoevalcap.cider.cider import Cider

        out["CIDEr"] = float(Cider().compute_score(gts, res)[0])
    if "SPICE" in metrics:
        out["SPICE"] = _spice_or_why(gts, res, use_java, spice_timeout, unavailable)
    out["unavailable"] = unavailable
    out["tokenizer"] = tok_name
    out["n"] = len(hyps)
    return out
