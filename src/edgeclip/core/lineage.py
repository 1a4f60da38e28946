"""The one teacher-compatibility rule: an artefact (student, cache, shards, curation manifest, bundle, captioner)
is used only with the teacher it records.

- Everything records its teacher's ``describe()``; the weights id (a hash of the weights) must match.
- An artefact that holds image embeddings of preprocessed views (an embedding cache, reinforced shards) also needs
  the same preprocessing: the same weights fed other pixels give other targets.

Torch-free, so the runtime and the server can hold bundles to the same rule.
"""

from __future__ import annotations

from edgeclip.core.errors import EdgeClipError

TEXT_SPACE = "its embeddings do not live in this teacher's text space"


def check_teacher(
    recorded: dict | None,
    actual: dict,
    what: str,
    *,
    views: bool = False,
    fix: str = TEXT_SPACE,
    error: type[EdgeClipError] = EdgeClipError,
) -> None:
    """Raise ``error`` (one line: ``WHAT was made with teacher A, not B: FIX``) unless ``recorded`` and ``actual``
    (teacher descriptions: ``{"id": ..., "preprocess": ...}``) name the same weights, and, with ``views``, the
    same preprocessing."""
    recorded = recorded or {}
    rid, aid = recorded.get("id"), actual.get("id")
    if rid != aid:
        raise error(f"{what} was made with teacher {rid}, not {aid}: {fix}")
    if views and recorded.get("preprocess") != actual.get("preprocess"):
        raise error(
            f"{what} was made with teacher {rid} at other preprocessing ({recorded.get('preprocess')} vs "
            f"{actual.get('preprocess')}): {fix}"
        )
