"""The house rules of issue 28: shipped configs carry no repository paths, old public names keep working for one
release (with a DeprecationWarning naming the new place), one rank helper, one teacher rule, one prompt ensemble."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from edgeclip.core.errors import EdgeClipError

OLD_NAMES = {
    "edgeclip.metrics": ("score_captions", "edgeclip.caption_metrics"),
    "edgeclip.models.stats": ("model_stats", "edgeclip.models.cost"),
    "edgeclip.core.env": ("machine_info", "edgeclip.core.machine"),
    "edgeclip.train.pair": ("distill_pairs", "edgeclip.train.edgevl"),
}


def test_shipped_configs_carry_no_repository_paths():
    from edgeclip.core.config import load_config, shipped_configs

    def strings(o):
        if isinstance(o, dict):
            for v in o.values():
                yield from strings(v)
        elif isinstance(o, list):
            for v in o:
                yield from strings(v)
        elif isinstance(o, str):
            yield o

    for name in shipped_configs():
        bad = [
            s
            for s in strings(load_config(name))
            if "shared/" in s or "benchmarks/" in s or s.startswith("..")
        ]
        assert not bad, f"{name}.yaml names repository paths: {bad}"


@pytest.mark.parametrize("old", sorted(OLD_NAMES))
def test_old_module_names_work_with_a_deprecation_line(old):
    name, new = OLD_NAMES[old]
    code = (
        "import warnings\n"
        "with warnings.catch_warnings(record=True) as w:\n"
        "    warnings.simplefilter('always')\n"
        f"    import {old} as m\n"
        f"assert callable(m.{name})\n"
        "print([str(x.message) for x in w if issubclass(x.category, DeprecationWarning)])\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert new in out and "deprecated" in out


def test_the_old_frame_source_name_points_to_the_new_one():
    import edgeclip.runtime.sources as s

    with pytest.warns(DeprecationWarning, match="open_frames"):
        assert s.open_source is s.open_frames


def test_one_rank_helper(monkeypatch):
    from edgeclip.core.machine import launch_rank, local_rank

    for k in ("RANK", "WORLD_SIZE", "SLURM_PROCID", "SLURM_NTASKS", "LOCAL_RANK", "SLURM_LOCALID"):
        monkeypatch.delenv(k, raising=False)
    assert launch_rank() == (0, 1) and local_rank() is None
    monkeypatch.setenv("SLURM_NTASKS", "4")
    monkeypatch.setenv("SLURM_PROCID", "3")
    monkeypatch.setenv("SLURM_LOCALID", "1")
    assert launch_rank() == (3, 4) and local_rank() == 1
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "2")  # torchrun's variables come first, and are checked
    with pytest.raises(EdgeClipError, match="bad launch"):
        launch_rank()


def test_one_teacher_rule():
    from edgeclip.core.lineage import check_teacher

    a = {"id": "t:1", "preprocess": "224 bicubic"}
    check_teacher(a, {"id": "t:1", "preprocess": "other"}, "a student")  # a student needs the weights only
    with pytest.raises(EdgeClipError, match="was made with teacher t:1, not t:2"):
        check_teacher(a, {"id": "t:2"}, "a student")
    with pytest.raises(EdgeClipError, match="other preprocessing"):
        check_teacher(a, {"id": "t:1", "preprocess": "other"}, "a cache", views=True)


def test_one_prompt_ensemble_for_numpy_and_torch():
    """The torch classifier is the numpy ensemble: per label, the normalised mean over templates of normalised
    prompt embeddings."""
    import torch

    from edgeclip.core.prompts import prompt_ensemble
    from edgeclip.zeroshot.text import text_classifier

    rng = np.random.default_rng(0)
    table = {}

    def encode(prompts):
        return np.stack([table.setdefault(p, rng.standard_normal(8).astype(np.float32)) for p in prompts])

    labels, templates = ["cat", "dog"], ["a photo of a {}.", "a drawing of a {}."]
    got = prompt_ensemble(encode, labels, templates)
    unit = [encode([t.format(lb) for lb in labels]) for t in templates]
    unit = [u / np.linalg.norm(u, axis=1, keepdims=True) for u in unit]
    want = np.mean(unit, axis=0)
    want /= np.linalg.norm(want, axis=1, keepdims=True)
    assert np.allclose(got, want, atol=1e-6)
    torch_got = text_classifier(lambda p: torch.from_numpy(encode(p)), labels, templates)
    assert np.array_equal(torch_got.numpy(), got)


def test_the_per_modality_models_are_embedders(tiny_teacher, shapes):
    """One embedder type: the per-modality evaluation's models are Embedders too (images, texts), besides
    embedding modality tensors."""
    from PIL import Image

    from edgeclip.models.teachers import load_teacher
    from edgeclip.zeroshot.embedder import Embedder
    from edgeclip.zeroshot.modalities import PairEmbedder, teacher_embedder

    t = load_teacher(tiny_teacher)
    e = teacher_embedder(t, "rgb")
    assert isinstance(e, PairEmbedder) and all(hasattr(e, k) for k in Embedder.__annotations__)
    img = Image.open(next(iter(sorted(shapes["test"].rglob("*.jpg")))))
    v = e.embed([img, img])
    assert v.shape == (2, t.embed_dim) and np.allclose(np.linalg.norm(v, axis=1), 1, atol=1e-5)
    assert e.text(["circle", "star"], ["a photo of a {}."]).shape == (2, t.embed_dim)
    with pytest.raises(EdgeClipError, match="RGB-like"):  # 3-channel modalities pass; 1-channel ones do not
        e("mono", np.zeros((1, 1, 8, 8)))
