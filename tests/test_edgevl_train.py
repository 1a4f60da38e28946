"""EdgeVL curation, stage-1 dual-modality distillation, the triplet miner, PTQ and per-modality evaluation
(CPU, tiny)."""

from __future__ import annotations

import json
import math

import pytest
import torch

from edgeclip.core.errors import EdgeClipError
from edgeclip.data.pairs import open_pairs, preload_pairs
from edgeclip.losses import semi_hard_triplet
from edgeclip.models.pair import load_pair_student
from edgeclip.train.curate import curate
from edgeclip.train.edgevl import PairDistillConfig, PTQConfig, distill_pairs, run_ptq
from edgeclip.zeroshot.modalities import (
    evaluate_pairs,
    exported_embedder,
    torch_embedder,
)

DERIVE = {"mono": "luminance"}


@pytest.fixture(scope="module")
def teacher(tiny_teacher):
    from edgeclip.models.teachers import load_teacher

    return load_teacher(tiny_teacher)


@pytest.fixture(scope="module")
def stage1(shapes, teacher, tmp_path_factory):
    """Curate (top 25 %), then a short stage-1 run on the curated pairs."""
    w = tmp_path_factory.mktemp("edgevl")
    ps = open_pairs(shapes["train"], derive=DERIVE)
    cur = curate(teacher, ps, w / "cur", fraction=0.25, cache=w / "cache")
    cfg = PairDistillConfig(
        teacher=teacher.spec,
        data=str(shapes["train"]),
        derive=DERIVE,
        out=str(w / "s1"),
        cache=str(w / "cache"),
        manifest=cur["manifest"],
        student={"arch": "shufflenet_v2_x0_5", "img_size": 32, "head_hidden": 64},
        loss="cosine",
        train={"epochs": 2, "batch_size": 12, "lr": 2e-3},
    )
    hist = distill_pairs(cfg, teacher=teacher)
    return {"dir": w, "curate": cur, "hist": hist, "ps": ps}


def test_curation_manifest(stage1, teacher):
    cur = stage1["curate"]
    man = json.loads(open(cur["manifest"]).read())
    items = man["items"]
    n = len(stage1["ps"])
    assert len(items) == n == cur["n_scored"] == 144
    kept = [it for it in items if it["kept"]]
    assert len(kept) == math.ceil(0.25 * n) == cur["n_kept"]
    # the kept pairs are exactly the most confident ones
    assert min(it["confidence"] for it in kept) >= max(it["confidence"] for it in items if not it["kept"])
    assert all(0 < it["confidence"] <= 1 and it["pseudo_label"] in man["labels"] for it in items)
    assert (stage1["dir"] / "cur" / "confidence_hist.png").stat().st_size > 1000
    # confidences are the teacher's softmax with its logit scale as temperature: recompute one
    from edgeclip.data import load_image
    from edgeclip.zeroshot.text import text_embeddings

    it = items[0]
    img = teacher.preprocess(load_image(it["file"]))[None]
    p = (
        teacher.logit_scale * teacher.encode_image(img) @ text_embeddings(teacher, man["labels"]).t()
    ).softmax(-1)
    assert abs(float(p.max()) - it["confidence"]) < 2e-3  # fp16 cache
    # threshold mode
    thr = curate(
        teacher,
        stage1["ps"],
        stage1["dir"] / "cur_thr",
        threshold=0.0,
        fraction=None,
        cache=stage1["dir"] / "cache",
        plot=False,
    )
    assert thr["n_kept"] == n
    # per-label: the top 25 % within each pseudo-label, so every pseudo-label the teacher gave keeps pairs
    pl = curate(
        teacher,
        stage1["ps"],
        stage1["dir"] / "cur_pl",
        fraction=0.25,
        per_label=True,
        cache=stage1["dir"] / "cache",
        plot=False,
    )
    pitems = json.loads(open(pl["manifest"]).read())["items"]
    assert pl["per_label"] is True and cur["per_label"] is False
    for lab in {it["pseudo_label"] for it in pitems}:
        group = [it for it in pitems if it["pseudo_label"] == lab]
        kept = [it for it in group if it["kept"]]
        assert len(kept) == math.ceil(0.25 * len(group)) == pl["kept_per_label"][lab]
        if len(kept) < len(group):
            assert min(it["confidence"] for it in kept) >= max(
                it["confidence"] for it in group if not it["kept"]
            )
    with pytest.raises(EdgeClipError, match="per-label curation keeps a top fraction"):
        curate(teacher, stage1["ps"], stage1["dir"] / "x", threshold=0.5, fraction=None, per_label=True)
    for bad in (0.0, -0.1, 1.5, float("nan")):
        with pytest.raises(EdgeClipError, match=r"fraction must be in \(0, 1\]"):
            curate(teacher, stage1["ps"], stage1["dir"] / "x", fraction=bad)


def test_stage1_trains_both_modalities(stage1, shapes):
    h = stage1["hist"]
    assert h["data_info"]["n_train"] == 36  # only the curated pairs
    first, last = h["epochs"][0], h["epochs"][-1]
    assert {"cos_rgb", "cos_mono"} <= set(last)
    assert last["loss"] < first["loss"]
    model, pre, ck = load_pair_student(stage1["dir"] / "s1" / "student.pt")
    size = pre.size
    assert model.primary == "rgb" and set(model.specs) == {"rgb", "mono"} and size == 32
    assert ck["extra"]["edgevl"]["specs"]["mono"]["derive"] == "luminance"
    assert len(model.specs["mono"].mean) == 3  # per-modality normalisation measured on the data
    # the checkpoint is a foundation student too (RGB)
    from edgeclip.models import load_student

    st, pp, _ = load_student(stage1["dir"] / "s1" / "student.pt")
    assert pp.size == 32 and st.arch == "shufflenet_v2_x0_5"


def test_semi_hard_mining():
    # anchor at angle 0; bank: positive at 0.5 rad, negatives at 0.3 (hard), 0.7 (semi-hard), 2.0 (easy)
    ang = torch.tensor([0.5, 0.3, 0.7, 2.0])
    bank = torch.stack([ang.cos(), ang.sin()], 1)
    labels = torch.tensor([0, 1, 1, 1])
    a = torch.tensor([[1.0, 0.0]], requires_grad=True)
    loss, n = semi_hard_triplet(a, torch.tensor([0]), bank, labels, margin=0.5)
    d = lambda t: float(2 * math.sin(t / 2))  # chord length between unit vectors  # noqa: E731
    assert n == 1
    assert abs(float(loss) - (d(0.5) - d(0.7) + 0.5)) < 1e-5  # the semi-hard one, not the hard 0.3
    loss.backward()
    assert a.grad is not None and a.grad.abs().sum() > 0
    # no negative inside (d_p, d_p + margin): the anchor adds nothing and is counted out
    loss2, n2 = semi_hard_triplet(a.detach(), torch.tensor([0]), bank, labels, margin=0.05)
    assert n2 == 0 and float(loss2) == 0.0
    # the anchor's own bank row is never its positive
    bank2 = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    _, n3 = semi_hard_triplet(
        a.detach(), torch.tensor([0]), bank2, torch.tensor([0, 1]), 3.0, exclude=torch.tensor([[True, False]])
    )
    assert n3 == 0


def test_triplet_mining_options():
    # anchor at angle 0; positives at 0.2 (near) and 0.6 (far); negatives at 0.3, 0.45, 0.5 (semi-hard for the
    # near positive with margin 0.4) and 1.5 (outside the band)
    d = lambda t: float(2 * math.sin(t / 2))  # noqa: E731
    ang = torch.tensor([0.2, 0.6, 0.3, 0.45, 0.5, 1.5])
    bank = torch.stack([ang.cos(), ang.sin()], 1)
    labels = torch.tensor([0, 0, 1, 1, 1, 1])
    a = torch.tensor([[1.0, 0.0]])
    lab = torch.tensor([0])
    # easy positive (EdgeVL): the near one; every semi-hard negative when up to 3 are drawn
    loss, n = semi_hard_triplet(a, lab, bank, labels, margin=0.4, positive="easy", negatives=3)
    want = sum(d(0.2) - d(t) + 0.4 for t in (0.3, 0.45, 0.5))
    assert n == 1 and abs(float(loss) - want) < 1e-5
    # hardest: the nearest semi-hard negative only
    loss, _ = semi_hard_triplet(a, lab, bank, labels, margin=0.4, negative="hardest", negatives=1)
    assert abs(float(loss) - (d(0.2) - d(0.3) + 0.4)) < 1e-5
    # hard positive (the far one, d=0.6): only 1.5 is beyond it and it is outside the band
    _, n = semi_hard_triplet(a, lab, bank, labels, margin=0.4, positive="hard")
    assert n == 0
    # columns that are not allowed (another modality) are neither positives nor negatives
    allowed = torch.tensor([[False, True, True, True, True, True]])
    loss, n = semi_hard_triplet(a, lab, bank, labels, margin=0.4, allowed=allowed, negatives=3)
    assert n == 0  # positive now at 0.6: nothing in (d(0.6), d(0.6)+0.4) among the negatives
    with pytest.raises(Exception, match="mining"):
        semi_hard_triplet(a, lab, bank, labels, margin=0.4, positive="nearest")


def test_ptq_and_eval_per_modality(stage1, shapes, teacher):
    w = stage1["dir"]
    r = run_ptq(
        PTQConfig(
            student=str(w / "s1" / "student.pt"),
            data=str(shapes["train"]),
            derive=DERIVE,
            out=str(w / "ptq"),
            cache=str(w / "cache"),
            calib_images=48,
        ),
        teacher=teacher,
    )
    assert r["calib_images"] == 48 and r["calibrated_on"] == ["rgb", "mono"]
    assert r["exports"]["rgb"] == r["exports"]["mono"]  # one shared int8 model (repeat adapter)
    import onnx

    ops = {n.op_type for n in onnx.load(r["exports"]["rgb"]).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    model, pre, _ = load_pair_student(w / "s1" / "student.pt")
    size = pre.size
    tps = open_pairs(shapes["test"], derive=DERIVE)
    d = preload_pairs(tps, model.specs, size)
    res = evaluate_pairs(
        d,
        tps.classes,
        "rgb",
        ["rgb", "mono"],
        {"fp32": torch_embedder(model), "int8": exported_embedder(w / "ptq" / "ptq.json")},
        teacher=teacher,
    )
    # the teacher on RGB, and on the monochrome map repeated to 3 channels (a CLIP user's way of feeding it)
    assert res["n"] == 36 and set(res["teacher"]) == {"rgb", "mono"}
    for k in ("fp32", "int8"):
        for m in ("rgb", "mono"):
            assert 0.0 <= res[k][m]["top1"] <= 1.0 and res[k][m]["n"] == 36
    # int8 embeddings stay close to fp32 ones
    x = d.x["mono"][:8]
    e32 = torch.nn.functional.normalize(torch_embedder(model)("mono", x), dim=-1)
    e8 = torch.nn.functional.normalize(exported_embedder(w / "ptq" / "ptq.json")("mono", x).float(), dim=-1)
    assert float((e32 * e8).sum(-1).mean()) > 0.9
    # the unseen-class protocol: evaluate only on some classes, choosing among them
    sub = evaluate_pairs(
        d,
        tps.classes,
        "rgb",
        ["mono"],
        {"fp32": torch_embedder(model)},
        teacher=teacher,
        class_subset=["star", "ring"],
    )
    assert sub["n"] == 12 and sub["classes"] == ["star", "ring"]


def _cli(argv, capsys):
    from edgeclip.cli import main

    capsys.readouterr()
    try:
        main(argv)
        rc = 0
    except SystemExit as e:
        rc = e.code
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_cli_distill_pair_and_eval(stage1, shapes, teacher, tmp_path, capsys):
    rc, out, err = _cli(
        [
            "edgevl",
            "distill",
            "--teacher",
            teacher.spec,
            "--data",
            str(shapes["train"]),
            "--derive",
            "mono=luminance",
            "--out",
            str(tmp_path / "s1"),
            "--cache",
            str(stage1["dir"] / "cache"),
            "--student",
            "shufflenet_v2_x0_5",
            "--img-size",
            "32",
            "--epochs",
            "1",
            "--batch-size",
            "48",
            "--loss",
            "l1",
            "--set",
            "student.head_hidden=0",
            "--set",
            "classes=[circle,square]",
        ],
        capsys,
    )
    assert rc == 0, err[-2000:]
    assert (tmp_path / "s1" / "student.pt").is_file() and '"n_train": 48' in out
    rc, out, err = _cli(
        [
            "edgevl",
            "ptq",
            "--student",
            str(tmp_path / "s1" / "student.pt"),
            "--data",
            str(shapes["train"]),
            "--derive",
            "mono=luminance",
            "--out",
            str(tmp_path / "ptq"),
            "--cache",
            str(stage1["dir"] / "cache"),
            "--calib-images",
            "24",
            "--per-tensor",
        ],
        capsys,
    )
    assert rc == 0, err[-2000:]
    assert json.loads(out)["calib_images"] == 24 and json.loads(out)["per_channel"] is False
    ptq_args = [
        "edgevl",
        "ptq",
        "--student",
        str(tmp_path / "s1" / "student.pt"),
        "--data",
        str(shapes["train"]),
        "--derive",
        "mono=luminance",
        "--cache",
        str(stage1["dir"] / "cache"),
        "--calib-images",
        "24",
    ]
    rc, out, err = _cli([*ptq_args, "--out", str(tmp_path / "ptq4"), "--weight-bits", "4"], capsys)
    assert rc == 0, err[-2000:]
    res = json.loads(out)
    assert res["weight_bits"] == 4 and res["exports"]["rgb"].endswith("ptq_w4a8.onnx")
    rc, out, err = _cli([*ptq_args, "--out", str(tmp_path / "ptq3"), "--weight-bits", "3"], capsys)
    assert rc == 2 and "weight_bits must be one of (4, 8), got 3" in err and "Traceback" not in err
    rc, out, err = _cli(
        [
            "edgevl",
            "eval",
            str(shapes["test"]),
            "--student",
            str(tmp_path / "s1" / "student.pt"),
            "--derive",
            "mono=luminance",
            "--classes",
            "triangle,star,cross",
            "--onnx",
            str(tmp_path / "ptq" / "ptq.json"),
            "--out",
            str(tmp_path / "ev.json"),
        ],
        capsys,
    )
    assert rc == 0, err[-2000:]
    res = json.loads(out)
    assert res["n"] == 18 and set(res["fp32"]) == {"rgb", "mono"} and set(res["ptq"]) == {"rgb", "mono"}
    assert json.loads((tmp_path / "ev.json").read_text())["machine"]["cpu_count"]
    rc, out, err = _cli(
        [
            "edgevl",
            "distill",
            "--teacher",
            teacher.spec,
            "--data",
            str(shapes["train"]),
            "--derive",
            "mono=luminance",
            "--out",
            str(tmp_path / "bad"),
            "--set",
            "classes=[unicorn]",
        ],
        capsys,
    )
    assert rc == 2 and "unknown class 'unicorn'" in err


@pytest.mark.slow
def test_cli_qat_from_the_shipped_config(stage1, shapes, teacher, tmp_path, capsys):
    """`edgeclip qat edgevl_qat` (the shipped config, by name) with CLI overrides: W4A8 QAT + triplet."""
    from pathlib import Path

    args = [
        "edgevl",
        "qat",
        "edgevl_qat",
        "--student",
        str(stage1["dir"] / "s1" / "student.pt"),
        "--data",
        str(shapes["train"]),
        "--manifest",
        stage1["curate"]["manifest"],
        "--cache",
        str(stage1["dir"] / "cache"),
        "--teacher",
        teacher.spec,
        "--out",
        str(tmp_path / "qat"),
        "--epochs",
        "1",
        "--batch-size",
        "12",
    ]
    rc, out, err = _cli([*args, "--weight-bits", "4"], capsys)
    assert rc == 0, err[-2000:]
    res = json.loads(out.strip().splitlines()[-1])  # per-epoch lines first, then the result as one JSON line
    assert res["exports"]["rgb"].endswith("w4a8.onnx") and Path(res["exports"]["rgb"]).is_file()
    assert res["semi_hard_fraction"] is not None and min(res["onnx_min_cosine_vs_torch_int8"].values()) > 0.99
    saved = json.loads((tmp_path / "qat" / "qat.json").read_text())
    assert saved["weight_bits"] == 4 and saved["config"]["margin"] == 0.3  # the shipped config's mining
    rc, out, err = _cli([*args, "--weight-bits", "5"], capsys)
    assert rc == 2 and "weight_bits must be one of (4, 8), got 5" in err and "Traceback" not in err


def test_real_rgbd_conv_adapter_from_yaml(shared_data, teacher, tmp_path):
    """The shipped RGB-D config on the real pairs: 16-bit depth in mm, a learned 1x1-conv adapter."""

    from edgeclip.core.config import apply_overrides, build_dataclass, load_config
    from edgeclip.models.pair import modality_student

    d = load_config("edgevl_rgbd")
    d = apply_overrides(
        d,
        [
            f"data={shared_data / 'rgbd-samples'}",
            f"out={tmp_path / 'rgbd'}",
            f"teacher={teacher.spec}",
            "student.img_size=32",
            "student.head_hidden=0",
            "student.arch=shufflenet_v2_x0_5",
            "train.epochs=2",
            "train.batch_size=5",
        ],
    )
    cfg = build_dataclass(PairDistillConfig, d)
    hist = distill_pairs(cfg, teacher=teacher)
    assert hist["data_info"]["n_train"] == 5
    model, pre, ck = load_pair_student(tmp_path / "rgbd" / "student.pt")
    size = pre.size
    assert set(model.adapters) == {"depth"} and model.adapters["depth"].in_channels == 1
    w0 = torch.full((3, 1, 1, 1), 1.0)
    assert not torch.allclose(model.adapters["depth"].weight, w0)  # the adapter was trained
    st = modality_student(model, "depth")
    assert st.config["in_chans"] == 1
    ps = open_pairs(cfg.data, cfg.modalities, cfg.primary)
    dd = preload_pairs(ps, model.specs, size)
    assert dd.x["depth"].shape == (5, 1, 32, 32)
    from edgeclip.data.pairs import normalize_modality

    assert torch.allclose(
        st.eval()(normalize_modality(dd.x["depth"], model.specs["depth"])),
        torch_embedder(model)("depth", dd.x["depth"]),
        atol=1e-5,
    )


def test_stage1_init_from_rgb_student(stage1, shapes, teacher, tmp_path):
    """--init takes the architecture from the RGB student; a contradicting config key is one clear error."""
    from edgeclip.data.transforms import Preprocess
    from edgeclip.models.student import load_student, save_student

    pair, pre, _ = load_pair_student(stage1["dir"] / "s1" / "student.pt")
    size = pre.size
    rgb = tmp_path / "rgb.pt"
    save_student(
        pair.student, rgb, Preprocess(size=size, mean=teacher.mean, std=teacher.std), teacher.describe()
    )
    base = dict(
        teacher=teacher.spec,
        data=str(shapes["train"]),
        derive=DERIVE,
        cache=str(stage1["dir"] / "cache"),
        init=str(rgb),
        loss="cosine",
        train={"epochs": 1, "batch_size": 12, "lr": 1e-9, "max_steps_per_epoch": 1},
    )
    distill_pairs(PairDistillConfig(out=str(tmp_path / "a"), **base), teacher=teacher)
    got, _, _ = load_pair_student(tmp_path / "a" / "student.pt")
    assert got.student.config["head_hidden"] == 64  # from the checkpoint, not the default
    want = load_student(rgb)[0].state_dict()
    w = "backbone.body.0.0.weight"
    assert torch.allclose(got.student.state_dict()[w], want[w], atol=1e-5)  # lr ~0: weights are the init's
    with pytest.raises(EdgeClipError, match="head_hidden=64 in the checkpoint, 128 in the config"):
        distill_pairs(
            PairDistillConfig(out=str(tmp_path / "b"), student={"head_hidden": 128}, **base), teacher=teacher
        )
