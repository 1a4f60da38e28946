"""The caption teacher's extra pairs (#29): more caption files and ImageFolders under prompt templates, with one
loss group per class (UniCL), and the main file's held-out photos never coming back in as extra pairs."""

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from edgeclip.core.checkpoint import read_checkpoint
from edgeclip.core.errors import EdgeClipError
from edgeclip.train.reference import (
    CaptionTeacherConfig,
    caption_pairs,
    grouped_contrastive,
    run_caption_teacher,
)


def _caption_files(tmp_path: Path, shapes) -> tuple[Path, Path]:
    """A main captions.txt (train = the train folder, val/test = the test folder) and an extra COCO JSON that
    holds 2 new photos and 1 photo of the main file's test split."""
    root = Path(shapes["train"]).parent
    lines, splits = [], {"train": [], "val": [], "test": []}
    for split, keys in (("train", ("train",)), ("test", ("val", "test"))):
        for f in sorted((root / split).rglob("*.jpg")):
            rel = str(f.relative_to(root))
            lines += [f"{rel}, a {f.parent.name} shape", f"{rel}, a drawing of a {f.parent.name}"]
            for k in keys:
                splits[k].append(rel)
    main = tmp_path / "main" / "captions.txt"
    main.parent.mkdir()
    main.write_text("\n".join(lines) + "\n")
    (main.parent / "splits.json").write_text(json.dumps(splits))
    for rel in splits["train"] + splits["test"]:  # the images beside the file, as load_captions finds them
        dst = main.parent / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        dst.write_bytes((root / rel).read_bytes())
    extra = tmp_path / "coco" / "captions.json"
    (extra.parent / "images").mkdir(parents=True)
    test_photo = main.parent / splits["test"][0]
    new = sorted((root / "train").rglob("*.jpg"))[:2]
    imgs, anns = [], []
    for i, name in enumerate(["a.jpg", "b.jpg", "held.jpg"]):
        imgs.append({"id": i, "file_name": name})
        anns.append({"id": i, "image_id": i, "caption": f"an extra photo number {i}"})
    # the held-out photo: the very file of the main test split, named through a link into the coco folder
    (extra.parent / "images" / "a.jpg").write_bytes(new[0].read_bytes())
    (extra.parent / "images" / "b.jpg").write_bytes(new[1].read_bytes())
    (extra.parent / "images" / "held.jpg").symlink_to(test_photo)
    extra.write_text(json.dumps({"images": imgs, "annotations": anns}))
    return main, extra


def test_the_grouped_loss_is_clips_loss_when_every_group_is_its_own_and_spreads_over_a_class():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(6, 6, generator=g)
    y = torch.arange(6)
    clip = (F.cross_entropy(logits, y) + F.cross_entropy(logits.t(), y)) / 2
    out = grouped_contrastive(logits, torch.arange(6))
    assert torch.allclose(out["loss"], clip, atol=1e-6)
    # rows 0 and 1 one class: either column is a hit, and raising their score lowers the loss (a positive) where
    # CLIP's targets would push them apart (a negative)
    group = torch.tensor([7, 7, 1, 2, 3, 4])
    same = (torch.eye(6) * 5).requires_grad_()
    grad = {}
    for name, grp in (("grouped", group), ("clip", torch.arange(6))):
        out = grouped_contrastive(same, grp)
        (g,) = torch.autograd.grad(out["loss"], same)
        grad[name] = float(g[0, 1])
    assert grad["grouped"] < 0 < grad["clip"]
    hit = torch.eye(6)
    hit[0] = torch.tensor([0.0, 1, 0, 0, 0, 0])  # row 0 ranks its classmate first
    assert (
        grouped_contrastive(hit, group)["acc"] == 1 and grouped_contrastive(hit, torch.arange(6))["acc"] < 1
    )


def test_caption_pairs_join_extra_captions_and_class_folders(tmp_path, shapes):
    main, extra = _caption_files(tmp_path, shapes)
    c = CaptionTeacherConfig(
        captions=str(main),
        img_size=32,
        extra_captions=[str(extra)],
        class_folders=[str(shapes["train"])],
        class_templates=["a photo of a {}.", "a sketch of a {}."],
        class_max_images=12,
    )
    p = caption_pairs(c, seed=0, progress=False)
    n_train = len(list(Path(shapes["train"]).rglob("*.jpg")))
    assert p.counts == {"captions": n_train + 2, str(shapes["train"]): 12}  # the held-out photo is not in
    assert any("held-out split" in s for s in p.skipped)
    assert (
        p.images.shape == (n_train + 2 + 12, 3, 32, 32) and len(p.rows) == len(p.groups) == p.images.shape[0]
    )
    n_classes = len([d for d in Path(shapes["train"]).iterdir() if d.is_dir()])
    assert len(p.texts) == 2 * n_train + 2 + n_classes * 2  # class prompts stored once per class
    captioned, classed = p.groups[: n_train + 2], p.groups[n_train + 2 :]
    assert len(set(captioned.tolist())) == n_train + 2 and set(captioned.tolist()).isdisjoint(
        classed.tolist()
    )
    for r, grp in zip(p.rows[n_train + 2 :], classed.tolist()):  # one class, one group, one set of prompts
        assert all(p.rows[j] == r for j in range(n_train + 2, len(p.rows)) if p.groups[j] == grp)
    assert p.texts[p.rows[-1][1]].startswith("a sketch of a")
    # the same seed draws the same class images
    assert torch.equal(caption_pairs(c, seed=0, progress=False).images, p.images)


def test_a_caption_teacher_trains_on_the_joined_pairs(tmp_path, shapes):
    main, extra = _caption_files(tmp_path, shapes)
    c = CaptionTeacherConfig(
        captions=str(main),
        arch="shufflenet_v2_x0_5",
        img_size=32,
        head_hidden=32,
        extra_captions=[str(extra)],
        class_folders=[str(shapes["train"])],
        out=str(tmp_path / "t"),
        train={"epochs": 1, "batch_size": 16},
    )
    hist = run_caption_teacher(c, progress=False)
    e = hist["epochs"][0]
    assert torch.isfinite(torch.tensor(e["loss"])) and e["val_t2i_r10"] is not None
    info = read_checkpoint(tmp_path / "t" / "teacher.pt", None, "teacher")["info"]
    assert info["sources"][str(shapes["train"])] == len(list(Path(shapes["train"]).rglob("*.jpg")))
    # a second teacher starts from the first (its tower and temperature) and goes on with lr 0: its weights stay
    # the same (BatchNorm's running statistics still move: they are buffers, not learnt)
    import dataclasses

    from edgeclip.models.teachers import load_teacher

    ft = dataclasses.replace(
        c, init=str(tmp_path / "t" / "teacher.pt"), out=str(tmp_path / "ft"),
        train={"epochs": 1, "batch_size": 16, "lr": 0.0, "warmup_epochs": 0},
    )  # fmt: skip
    run_caption_teacher(ft, progress=False)
    a, b = load_teacher(str(tmp_path / "t" / "teacher.pt")), load_teacher(str(tmp_path / "ft" / "teacher.pt"))
    pa, pb = dict(a.image_encoder.named_parameters()), dict(b.image_encoder.named_parameters())
    assert pa.keys() == pb.keys() and all(torch.allclose(pa[k], pb[k], atol=1e-6) for k in pa)
    assert abs(a.logit_scale - b.logit_scale) < 1e-4
    with pytest.raises(EdgeClipError, match="tower"):
        run_caption_teacher(dataclasses.replace(ft, img_size=64, out=str(tmp_path / "bad")), progress=False)


@pytest.mark.parametrize(
    "bad, why",
    [({"class_templates": ["a photo"]}, "placeholder"), ({"class_max_images": -1}, "class_max_images")],
)
def test_bad_extra_pair_settings_are_one_line_errors(bad, why):
    with pytest.raises(EdgeClipError, match=why):
        CaptionTeacherConfig(captions="x.txt", **bad)


def test_a_photo_pool_adds_sources_once_and_never_a_held_out_photo(tmp_path, shapes):
    """The `photos` lab task's pool (#29's unlabeled pool for distillation): a caption split, then folders and
    seeded subsets, each photo once, the caption set's val/test photos refused and counted."""
    from edgeclip.data.captions import photo_pool

    main, extra = _caption_files(tmp_path, shapes)
    n_train = len(list(Path(shapes["train"]).rglob("*.jpg")))
    test_dir = main.parent / "test"  # the main file's held-out photos themselves
    paths, counts, skipped = photo_pool(
        str(main),
        "train",
        None,
        [str(extra.parent / "images"), str(test_dir), {"path": str(shapes["train"]), "max_images": 5}],
    )
    assert (
        counts["captions"] == n_train and counts[str(extra.parent / "images")] == 2
    )  # held.jpg links a test one
    assert counts[str(test_dir)] == 0 and skipped["held_out"] == 1 + len(list(test_dir.rglob("*.jpg")))
    assert counts[str(shapes["train"])] == 5 and len(paths) == n_train + 2 + 5 == len(set(paths))
    again = photo_pool(str(main), "train", None, [{"path": str(shapes["train"]), "max_images": 5}])[0]
    assert again == photo_pool(str(main), "train", None, [{"path": str(shapes["train"]), "max_images": 5}])[0]
    with pytest.raises(EdgeClipError, match="no photos"):
        photo_pool(None, None, None, [])
