"""Teacher-embedding cache, losses and label-free distillation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from edgeclip.core.errors import CacheMismatchError, EdgeClipError
from edgeclip.data import open_source
from edgeclip.data.transforms import apply_view, view_params
from edgeclip.losses import LOSSES, build_loss
from edgeclip.models import create_student, load_student
from edgeclip.models.teachers import load_teacher
from edgeclip.train.cache import EmbeddingCache, build_cache
from edgeclip.train.distill import DistillConfig, distill


@pytest.fixture(scope="module")
def teacher(tiny_teacher):
    return load_teacher(tiny_teacher)


def test_cache_matches_teacher_and_resumes(teacher, shapes, tmp_path):
    recs = open_source(shapes["test"]).records  # 36 images
    s1 = build_cache(recs[:20], teacher, tmp_path / "c", views=3, chunk=8, progress=False)
    assert (s1.computed, s1.reused, s1.failed) == (20, 0, 0)
    cache = EmbeddingCache(tmp_path / "c")
    assert len(cache) == 20 and cache.views == 3 and cache.dim == 384
    e = cache[recs[0].key]
    assert e.dtype == np.float16 and e.shape == (3, 384)
    x = teacher.preprocess(recs[0].load())[None]
    direct = teacher.encode_image(x)[0].numpy()
    assert np.abs(e[0].astype(np.float32) - direct).max() < 2e-3  # view 0 = the plain image
    box, flip = view_params(recs[0].key, 1, cache.view_spec)  # view 1 is that deterministic augmented crop
    assert box != (0.0, 0.0, 1.0, 1.0)
    v1 = teacher.encode_image(teacher.preprocess(apply_view(recs[0].load(), box, flip))[None])[0].numpy()
    assert np.abs(e[1].astype(np.float32) - v1).max() < 2e-3
    # a kill between the two writes of a part leaves an orphan .npy; the rebuild recomputes only what is missing
    last = sorted((tmp_path / "c").glob("part-*.keys.json"))[-1]
    last.unlink()
    s2 = build_cache(recs, teacher, tmp_path / "c", views=3, chunk=8, progress=False)
    assert s2.reused == 16 and s2.computed == 20 and s2.total == 36
    assert not [
        p
        for p in (tmp_path / "c").glob("part-*.npy")
        if not p.with_name(p.name.replace(".npy", ".keys.json")).exists()
    ]
    again = EmbeddingCache(tmp_path / "c")
    assert np.array_equal(again[recs[0].key], e)


def test_cache_refuses_other_teacher_or_views(teacher, shapes, tmp_path, tiny_teacher):
    recs = open_source(shapes["test"]).records[:4]
    build_cache(recs, teacher, tmp_path / "c", progress=False)
    with pytest.raises(CacheMismatchError, match="views"):
        build_cache(recs, teacher, tmp_path / "c", views=2, progress=False)
    other = load_teacher(tiny_teacher)
    other.id = "reference-lit:sha256:0000000000000000"
    with pytest.raises(CacheMismatchError, match="refusing to mix"):
        build_cache(recs, other, tmp_path / "c", progress=False)
    with pytest.raises(CacheMismatchError):
        EmbeddingCache(tmp_path / "c").check_teacher(other.describe())


def test_cache_skips_and_counts_corrupt(teacher, shapes, tmp_path):
    import shutil

    d = tmp_path / "imgs"
    d.mkdir()
    for r in open_source(shapes["test"]).records[:3]:
        shutil.copy(r.path, d / r.path.name.replace(".jpg", f"_{r.label}.jpg"))
    (d / "broken.jpg").write_bytes(b"\xff\xd8\xff garbage")
    s = build_cache(open_source(d), teacher, tmp_path / "c", progress=False)
    assert s.computed == 3 and s.failed == 1
    assert "broken.jpg" in (tmp_path / "c" / "failed.jsonl").read_text()
    s2 = build_cache(open_source(d), teacher, tmp_path / "c", progress=False)
    assert s2.computed == 0 and s2.failed == 1  # not retried unless asked


@pytest.mark.parametrize("name", LOSSES.names())
def test_losses_zero_at_match_and_differentiable(name):
    torch.manual_seed(0)
    t = torch.nn.functional.normalize(torch.randn(8, 16), dim=-1)
    s = torch.randn(8, 16, requires_grad=True)
    ctx = {"text_emb": torch.nn.functional.normalize(torch.randn(5, 16), dim=-1)}  # a prompt vocabulary
    fn = build_loss(name)
    far = fn(s, t, **ctx)
    far.backward()
    assert torch.isfinite(far) and s.grad is not None and s.grad.abs().sum() > 0
    near = fn(t * 3.0, t, **ctx)  # same direction: normalised losses ignore the scale
    assert float(near) < float(far)


def test_prompt_kl_matches_the_teachers_prompt_distribution():
    torch.manual_seed(0)
    te = torch.nn.functional.normalize(torch.randn(5, 16), dim=-1)
    t = torch.nn.functional.normalize(torch.randn(8, 16), dim=-1)
    fn = build_loss("prompt_kl")
    s = (t * 2.0).requires_grad_()
    at_match = fn(s, t, text_emb=te, logit_scale=20.0)
    at_match.backward()
    p_t = (t @ te.t() * 20.0).softmax(-1)
    entropy = -(p_t * p_t.log()).sum(-1).mean()
    assert torch.isclose(
        at_match, entropy, atol=1e-5
    )  # soft CE at the match = the teacher's entropy (KL = 0)
    assert s.grad.abs().max() < 1e-5  # and it is the minimum
    with pytest.raises(EdgeClipError, match="prompt vocabulary"):
        fn(s, t)


def test_loss_spec_combination_and_errors():
    t = torch.nn.functional.normalize(torch.randn(4, 8), dim=-1)
    s = torch.randn(4, 8)
    combo = build_loss("cosine+0.5*mse")(s, t)
    assert torch.isclose(combo, build_loss("cosine")(s, t) + 0.5 * build_loss("mse")(s, t))
    with pytest.raises(EdgeClipError, match="unknown distillation loss"):
        build_loss("nope")


def test_distill_from_cache_then_resume(teacher, tiny_teacher, shapes, tmp_path):
    build_cache(open_source(shapes["train"]), teacher, tmp_path / "c", views=2, progress=False)
    cfg = DistillConfig(
        teacher=tiny_teacher,
        data=str(shapes["train"]),
        cache=str(tmp_path / "c"),
        out=str(tmp_path / "s"),
        student={"arch": "shufflenet_v2_x0_5", "img_size": 32, "small_input": True, "head_hidden": 128},
        loss="cosine",
        val=str(shapes["test"]),
        train={"epochs": 2, "batch_size": 32, "lr": 2e-3},
    )
    hist = distill(cfg, progress=False, teacher=teacher)
    assert [e["epoch"] for e in hist["epochs"]] == [1, 2]
    assert hist["epochs"][-1]["loss"] < hist["epochs"][0]["loss"]
    assert 0.0 <= hist["epochs"][-1]["val_top1"] <= 1.0
    st, pp, ck = load_student(tmp_path / "s" / "student.pt")
    assert ck["teacher"]["id"] == teacher.id and pp.size == 32 and st.embed_dim == 384
    # resume after "a kill": raise the epoch budget; training continues from epoch 2, not from scratch
    cfg.train["epochs"] = 3
    hist2 = distill(cfg, resume=True, progress=False, teacher=teacher)
    assert [e["epoch"] for e in hist2["epochs"]] == [1, 2, 3]
    # --init: a new run that starts from the student (architecture from the checkpoint, not the default)
    fine = DistillConfig(
        teacher=tiny_teacher,
        data=str(shapes["train"]),
        cache=str(tmp_path / "c"),
        out=str(tmp_path / "f"),
        init=str(tmp_path / "s" / "student.pt"),
        loss="cosine",
        train={"epochs": 1, "batch_size": 32, "lr": 1e-9, "max_steps_per_epoch": 1},
    )
    distill(fine, progress=False, teacher=teacher)
    got = load_student(tmp_path / "f" / "student.pt")[0]
    assert got.config == st.config
    w = "head.net.0.weight"
    assert torch.allclose(
        got.state_dict()[w], load_student(tmp_path / "s" / "student.pt")[0].state_dict()[w], atol=1e-6
    )
    fine.student = {"img_size": 64}
    with pytest.raises(EdgeClipError, match="img_size=32 in the checkpoint, 64 in the config"):
        distill(fine, progress=False, teacher=teacher)


def test_distill_online_teacher_from_files(tiny_teacher, shapes, tmp_path):
    cfg = DistillConfig(
        teacher=tiny_teacher,
        data=str(shapes["test"]),
        out=str(tmp_path / "s"),
        preload=False,
        student={"arch": "mobilenet_v3_small", "img_size": 32, "head_hidden": 0},
        loss="clipkd",
        train={"epochs": 1, "batch_size": 12},
    )
    hist = distill(cfg, progress=False)
    assert hist["epochs"][0]["steps"] == 3 and np.isfinite(hist["epochs"][0]["loss"])


def test_distill_rejects_cache_of_other_teacher(teacher, tiny_teacher, shapes, tmp_path):
    recs = open_source(shapes["test"]).records
    other = load_teacher(tiny_teacher)
    other.id = "reference-lit:sha256:ffffffffffffffff"
    build_cache(recs, other, tmp_path / "c", progress=False)
    cfg = DistillConfig(
        teacher=tiny_teacher,
        data=str(shapes["test"]),
        cache=str(tmp_path / "c"),
        out=str(tmp_path / "s"),
        student={"arch": "shufflenet_v2_x0_5", "img_size": 32},
    )
    with pytest.raises(CacheMismatchError):
        distill(cfg, progress=False, teacher=teacher)


def test_student_registry_shapes():
    for arch in ("shufflenet_v2_x0_5", "mobilenet_v3_small", "efficientnet_b0", "timm:resnet10t"):
        s = create_student(arch, 64, img_size=32, small_input=True).eval()
        with torch.no_grad():
            e, g = s.forward_with_grid(torch.randn(2, 3, 32, 32))
        assert e.shape == (2, 64) and g.ndim == 4
    vit = create_student("timm:vit_tiny_patch16_224", 64, img_size=32).eval()
    with torch.no_grad():
        assert vit.grid(torch.randn(1, 3, 32, 32)).shape[-2:] == (2, 2)
    # model_args reach timm: a ViT with 4-px patches keeps an 8x8 grid at 32 px, and the config records them
    small = create_student(
        "timm:vit_tiny_patch16_224",
        64,
        img_size=32,
        model_args={"patch_size": 4, "depth": 1, "embed_dim": 32, "num_heads": 2},
    ).eval()
    with torch.no_grad():
        assert small.grid(torch.randn(1, 3, 32, 32)).shape[-3:] == (32, 8, 8)
    assert small.config["model_args"]["patch_size"] == 4
    with pytest.raises(EdgeClipError, match="model_args are for timm"):
        create_student("shufflenet_v2_x0_5", 8, model_args={"depth": 2})
    with pytest.raises(EdgeClipError, match="does not take model_args"):
        create_student("timm:resnet10t", 8, model_args={"patch_size": 4})
    with pytest.raises(EdgeClipError, match="unknown student backbone"):
        create_student("shufflenet_v3", 64)


def test_distill_streams_tar_shards_with_cache(teacher, tiny_teacher, shapes, tmp_path):
    import io
    import tarfile

    recs = open_source(shapes["test"]).records
    shard = tmp_path / "shard-000.tar"
    with tarfile.open(shard, "w") as tf:
        for r in recs:
            data = r.path.read_bytes()
            ti = tarfile.TarInfo(f"{r.label}_{r.path.stem}.jpg")
            ti.size = len(data)
            tf.addfile(ti, io.BytesIO(data))
    s = build_cache(open_source(str(shard)), teacher, tmp_path / "c", views=2, progress=False)
    assert s.computed == 36
    cfg = DistillConfig(
        teacher=tiny_teacher,
        data=str(shard),
        cache=str(tmp_path / "c"),
        out=str(tmp_path / "s"),
        student={"arch": "shufflenet_v2_x0_5", "img_size": 32, "head_hidden": 64},
        loss="cosine",
        train={"epochs": 2, "batch_size": 12},
    )
    hist = distill(cfg, progress=False, teacher=teacher)
    assert hist["n_train"] == 36 and [e["steps"] for e in hist["epochs"]] == [3, 3]
    st, pp, ck = load_student(tmp_path / "s" / "student.pt")
    assert ck["extra"]["streamed"] is True


def test_stem_stride_keeps_a_larger_grid_and_is_saved(tmp_path):
    from edgeclip.data.transforms import Preprocess
    from edgeclip.models.student import load_student, save_student

    x = torch.randn(1, 3, 32, 32)
    for arch, default, cifar in (("shufflenet_v2_x0_5", 2, 4), ("resnet18", 2, 4)):
        with torch.no_grad():
            assert create_student(arch, 8, img_size=32, small_input=True).eval().grid(x).shape[-1] == default
            s = create_student(arch, 8, img_size=32, small_input=True, stem_stride=1).eval()
            assert s.grid(x).shape[-1] == cifar
    save_student(s, tmp_path / "s.pt", Preprocess(size=32), {"id": "t"})
    back = load_student(tmp_path / "s.pt")[0]
    assert back.config["stem_stride"] == 1 and back.grid(x).shape[-1] == 4
    with pytest.raises(EdgeClipError, match="stem_stride must be 1 or 2"):
        create_student("mobilenet_v3_small", 8, stem_stride=3)
    with pytest.raises(EdgeClipError, match="only supported for the torchvision"):
        create_student("timm:resnet10t", 8, stem_stride=1)


def test_a_fixed_seed_gives_bit_identical_weights(tiny_teacher, shapes, tmp_path):
    """The student is built after seeding: two runs with one seed give the same weights (digest)."""
    import hashlib

    def digest(out):
        cfg = DistillConfig(
            teacher=tiny_teacher,
            data=str(shapes["train"]),
            out=str(out),
            student={"arch": "shufflenet_v2_x0_5", "img_size": 32, "small_input": True, "head_hidden": 32},
            train={"epochs": 1, "batch_size": 32, "seed": 3},
        )
        distill(cfg, progress=False)
        h = hashlib.sha256()
        for k, v in sorted(load_student(out / "student.pt")[0].state_dict().items()):
            h.update(k.encode() + v.numpy().tobytes())
        return h.hexdigest()

    assert digest(tmp_path / "a") == digest(tmp_path / "b")


def test_resume_into_another_run_and_a_second_cache_writer_are_refused(
    tiny_teacher, teacher, shapes, tmp_path
):
    from edgeclip.core.io import exclusive_lock

    base = dict(
        teacher=tiny_teacher,
        data=str(shapes["train"]),
        out=str(tmp_path / "s"),
        student={"arch": "shufflenet_v2_x0_5", "img_size": 32, "small_input": True, "head_hidden": 32},
        train={"epochs": 1, "batch_size": 32},
    )
    distill(DistillConfig(**base), progress=False)
    for change, key in (
        ({"loss": "mse"}, "loss"),
        ({"student": {**base["student"], "arch": "resnet18"}}, "student"),
    ):
        with pytest.raises(EdgeClipError, match=f"--resume: .* holds another run \\({key}:"):
            distill(DistillConfig(**{**base, **change}), resume=True, progress=False)
    # a cache folder another writer holds (flock: a second open file conflicts, in any process): one line
    with exclusive_lock(tmp_path / "c", "teacher-embedding cache"):
        with pytest.raises(EdgeClipError, match=r"cache .* is being written by pid \d+"):
            build_cache(open_source(shapes["train"]), teacher, tmp_path / "c", progress=False)
    assert not list((tmp_path / "c").glob("part-*"))
    build_cache(open_source(shapes["train"]), teacher, tmp_path / "c", progress=False)  # free again


def test_distill_defaults_are_the_shipped_recipe(teacher, shapes, tmp_path, monkeypatch):
    """`edgeclip distill` without flags trains with the recipe file's loss, student and train settings, under
    whatever the user gives; `edgeclip cache` takes its views from it."""
    import yaml

    import edgeclip.train.distill as d

    rec = d.distill_recipe()
    assert rec["loss"] and rec["student"]["arch"] and rec["train"]["epochs"] >= 1 and rec["views"] >= 1
    assert d.DistillConfig().loss == rec["loss"] and d.DistillConfig(loss="mse").loss == "mse"
    mine = tmp_path / "distill.yaml"
    mine.write_text(
        yaml.safe_dump({"loss": "clipkd", "views": 3, "student": {"img_size": 96}, "train": {"lr": 0.01}})
    )
    monkeypatch.setattr(d, "RECIPE", mine)
    assert d.DistillConfig().loss == "clipkd" and d.distill_recipe()["views"] == 3
    # a run that names only its data: the recipe's student and train settings, the user's keys over them
    mine.write_text(
        yaml.safe_dump(
            {
                "loss": "mse",
                "student": {"arch": "shufflenet_v2_x0_5", "img_size": 32},
                "train": {"epochs": 2, "batch_size": 16, "max_steps_per_epoch": 2},
            }
        )
    )
    cfg = d.DistillConfig(
        teacher="t", data=str(shapes["train"]), out=str(tmp_path / "s"), train={"epochs": 1}
    )
    hist = d.distill(cfg, progress=False, teacher=teacher)
    assert len(hist["epochs"]) == 1 and hist["epochs"][0]["steps"] == 2
    st, pp, ck = load_student(tmp_path / "s" / "student.pt")
    assert pp.size == 32 and st.config["arch"] == "shufflenet_v2_x0_5"
