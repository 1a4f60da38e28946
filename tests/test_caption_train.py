"""Captioner training (distillation cache + CE), early stopping, resume, vocabulary mismatch, metrics, CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from edgeclip.caption_metrics import score_captions
from edgeclip.core.errors import CheckpointError, EdgeClipError

WORDS = {
    "circle": "round",
    "square": "boxy",
    "triangle": "pointy",
    "star": "shiny",
    "cross": "plus",
    "ring": "hollow",
}


@pytest.fixture(scope="module")
def caption_data(shapes, tmp_path_factory):
    """An ``IMAGE, caption`` file + splits.json over the shapes images (train: train/, val: test/)."""
    root = Path(shapes["train"]).parent
    d = tmp_path_factory.mktemp("capdata")
    lines, splits = [], {"train": [], "val": []}
    for split, key in (("train", "train"), ("test", "val")):
        for p in sorted((root / split).rglob("*.jpg")):
            s = p.parent.name
            rel = str(p.relative_to(root))
            lines += [f"{rel}, a {WORDS[s]} {s} .", f"{rel}, the {s} shape", f"{rel}, một hình {s}"]
            splits[key].append(rel)
    (d / "captions.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    (d / "splits.json").write_text(json.dumps(splits))
    return {"captions": d / "captions.txt", "images": root}


def _cfg(caption_data, out, **kw):
    from edgeclip.train.caption import CaptionTrainConfig

    base = dict(
        data=str(caption_data["captions"]),
        images=str(caption_data["images"]),
        out=str(out),
        model={"img_size": 64, "teacher_dim": 384},
        vocab={"min_count": 1, "max_len": 8},
        train={"epochs": 2, "batch_size": 32, "lr": 3e-3, "max_steps_per_epoch": 3},
        captions_per_image=3,
        patience=0,
        val_max_images=12,
    )
    base.update(kw)
    return CaptionTrainConfig(**base)


def test_distilled_training_resume_and_eval(caption_data, tiny_teacher, tmp_path):
    from edgeclip.data.captions import load_captions
    from edgeclip.models.captioner import load_captioner
    from edgeclip.train.caption import evaluate_captioner, train_captioner

    out = tmp_path / "a"
    cfg = _cfg(caption_data, out, teacher=tiny_teacher, alpha=0.7, beta=0.3)
    h = train_captioner(cfg, progress=False)
    ep = h["epochs"]
    assert len(ep) == 2 and all("mse" in e and "ce" in e and "val_cider" in e for e in ep)
    assert ep[-1]["ce"] < ep[0]["ce"]  # it learns
    assert (out / "teacher-cache" / "meta.json").is_file() and h["data"]["not_in_cache"] == 0
    m, pp, ck = load_captioner(out / "captioner.pt")
    assert ck["teacher"]["spec"] == tiny_teacher and ck["extra"]["epoch"] in (1, 2)
    assert len(m.vocab) == ck["extra"]["vocab_size"] and pp.size == 64
    # resume: the finished run does not train again; more epochs continue from the checkpoint
    cfg.train = {**cfg.train, "epochs": 3}
    h2 = train_captioner(cfg, resume=True, progress=False)
    assert [e["epoch"] for e in h2["epochs"]] == [1, 2, 3]
    # a changed vocabulary (min_count) is refused on resume
    cfg.vocab = {"min_count": 100, "max_len": 8}
    with pytest.raises(CheckpointError, match="vocabulary mismatch"):
        train_captioner(cfg, resume=True, progress=False)
    cs = load_captions(caption_data["captions"], caption_data["images"], split="val")
    cs.items = cs.items[:6]
    res = evaluate_captioner(m, pp, cs, beam=3, max_len=8, samples=2)
    for k in ("Bleu_1", "Bleu_4", "METEOR", "ROUGE_L", "CIDEr"):
        assert isinstance(res["metrics"][k], float) and res["metrics"][k] >= 0.0
    assert res["metrics"]["SPICE"] is None or isinstance(res["metrics"]["SPICE"], float)
    if res["metrics"]["SPICE"] is None:
        assert res["unavailable"]["SPICE"]
    assert len(res["samples"]) == 2 and res["n_images"] == 6
    # grounding: caption cross-entropy with the image's own features vs another image's
    from edgeclip.train.caption import image_grounding

    g = image_grounding(m, pp, cs, max_len=8)
    assert g["n_images"] == 6 and g["n_captions"] == 18 and g["ce_own_image"] > 0
    assert g["gain_nats_per_word"] == pytest.approx(g["ce_other_image"] - g["ce_own_image"])
    with torch.no_grad():  # a decoder that cannot see the image gains nothing from it
        m.encoder.proj.weight.zero_()
        m.encoder.proj.bias.zero_()
    assert abs(image_grounding(m, pp, cs, max_len=8)["gain_nats_per_word"]) < 1e-5


def test_beta_only_needs_no_teacher_and_early_stops(caption_data, tmp_path):
    from edgeclip.train.caption import train_captioner

    cfg = _cfg(
        caption_data,
        tmp_path / "b",
        alpha=0.0,
        beta=1.0,
        patience=1,
        train={"epochs": 6, "batch_size": 32, "lr": 0.0, "max_steps_per_epoch": 1, "warmup_epochs": 0},
    )  # lr 0: val CIDEr cannot improve
    h = train_captioner(cfg, progress=False)
    assert h.get("stopped_early_at") == 2 and len(h["epochs"]) == 2 and "mse" not in h["epochs"][0]
    assert h["best"]["best_epoch"] == 1
    h2 = train_captioner(cfg, resume=True, progress=False)  # a run that stopped early stays stopped
    assert len(h2["epochs"]) == 2
    with pytest.raises(EdgeClipError, match="needs a teacher"):
        train_captioner(_cfg(caption_data, tmp_path / "c", alpha=0.5), progress=False)


def test_metrics_known_values():
    refs = {
        "1": ["a dog runs on the grass", "the dog is running"],
        "2": ["một người leo núi", "người leo núi"],
    }
    perfect = score_captions(
        refs, {"1": "a dog runs on the grass", "2": "một người leo núi"}, metrics=("BLEU", "CIDEr")
    )
    worse = score_captions(refs, {"1": "a cat", "2": "một con mèo"}, metrics=("BLEU", "CIDEr"))
    assert perfect["Bleu_1"] == pytest.approx(1.0, abs=1e-6) and perfect["CIDEr"] > worse["CIDEr"]
    assert worse["Bleu_4"] < 0.01
    with pytest.raises(EdgeClipError, match="no references"):
        score_captions(refs, {"3": "x"})


def test_cli_errors_are_one_line(tmp_path, capsys, caption_data):
    from edgeclip.cli import main

    bogus = tmp_path / "x.pt"
    torch.save({"format": "nope"}, bogus)
    with pytest.raises(SystemExit) as e:
        main(["caption", "eval", "--model", str(bogus), "--data", str(caption_data["captions"])])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not an edgeclip captioner" in err[0]
    with pytest.raises(SystemExit) as e:
        main(["caption", "run", str(caption_data["captions"])])
    assert e.value.code == 2 and "exactly one of --model" in capsys.readouterr().err


def test_cli_train_caption_eval(caption_data, tmp_path, capsys):
    from edgeclip.cli import main

    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        f"data: {caption_data['captions']}\nimages: {caption_data['images']}\nalpha: 0\nbeta: 1\n"
        "model: {img_size: 64, teacher_dim: 16}\nvocab: {min_count: 1, max_len: 6}\ncaptions_per_image: 2\n"
        "val_max_images: 6\ntrain: {epochs: 1, batch_size: 32, lr: 0.003, max_steps_per_epoch: 2}\n"
    )
    out = tmp_path / "run"
    main(["caption", "train", str(cfg), "--out", str(out)])
    assert (out / "captioner.pt").is_file()
    assert "captioner saved" in capsys.readouterr().out
    img_dir = caption_data["images"] / "test" / "star"
    main(
        [
            "caption",
            "run",
            str(img_dir),
            "--model",
            str(out / "captioner.pt"),
            "--beam",
            "2",
            "--max-len",
            "6",
        ]
    )
    rows = [json.loads(ln) for ln in capsys.readouterr().out.strip().splitlines()]
    assert len(rows) == len(list(img_dir.glob("*.jpg"))) and all("caption" in r for r in rows)
    # references in a vocabulary the model never saw (another language/dataset) are refused with one line
    foreign = tmp_path / "foreign.txt"
    first = sorted(img_dir.glob("*.jpg"))[0]
    foreign.write_text(f"{first.name}, zebras grazing beside acacia trees\n")
    with pytest.raises(SystemExit) as e:
        main(
            [
                "caption",
                "eval",
                "--model",
                str(out / "captioner.pt"),
                "--data",
                str(foreign),
                "--images",
                str(img_dir),
            ]
        )
    assert e.value.code == 2 and "vocabulary mismatch" in capsys.readouterr().err
    # the form: CAPTIONS as the argument, one JSON line with pycocoevalcap's metric names
    args = [caption_data["captions"], "--images", caption_data["images"], "--split", "val"]
    main(["caption", "eval", *map(str, args), "--model", str(out / "captioner.pt"), "--beam", "2", "--json"])
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 1, lines  # one JSON line: no download notice of pycocoevalcap's SPICE on stdout
    res = json.loads(lines[0])
    assert {"Bleu_1", "Bleu_4", "METEOR", "ROUGE_L", "CIDEr", "distinct_captions", "n_images"} <= set(res)
    assert (
        res["n_images"]
        == len(list((caption_data["images"] / "test").rglob("*.jpg")))
        >= res["distinct_captions"]
    )
    assert res["distinct_captions"] >= 1 and res["beam"] == 2


def test_label_smoothing_raises_the_loss_of_a_confident_model_and_is_checked(caption_data, tmp_path):
    """Label smoothing spreads part of each target over the vocabulary: the same confident logits cost more with
    it; a training run records it in its fingerprint; out-of-range values are one line."""
    import torch

    from edgeclip.train.caption import next_word_ce, train_captioner

    tokens = torch.tensor([[1, 4, 5, 2]])
    logits = torch.full((1, 3, 8), -10.0)
    for t, w in enumerate([4, 5, 2]):
        logits[0, t, w] = 10.0
    assert (
        float(next_word_ce(logits, tokens, label_smoothing=0.1)) > float(next_word_ce(logits, tokens)) + 0.5
    )
    with pytest.raises(EdgeClipError, match="label_smoothing"):
        train_captioner(
            _cfg(caption_data, tmp_path / "x", alpha=0.0, beta=1.0, label_smoothing=1.0), progress=False
        )
    cfg = _cfg(
        caption_data,
        tmp_path / "ls",
        alpha=0.0,
        beta=1.0,
        label_smoothing=0.1,
        train={"epochs": 1, "batch_size": 32, "max_steps_per_epoch": 1, "warmup_epochs": 0},
    )
    h = train_captioner(cfg, progress=False)
    assert len(h["epochs"]) == 1 and h["epochs"][0]["ce"] > 0


def test_the_spatial_term_aligns_the_dense_maps(caption_data, tiny_teacher, tmp_path):
    """The seed's feature term on the spatial grid: the student's head read at each of 7x7 locations against the
    teacher's, teacher online on the same augmented views. It is logged, it falls while training, and bad
    settings are one line."""
    from edgeclip.train.caption import train_captioner

    cfg = _cfg(
        caption_data,
        tmp_path / "sp",
        alpha=0.7,
        beta=0.3,
        teacher=tiny_teacher,
        spatial=1.0,
        train={"epochs": 3, "batch_size": 16, "lr": 3e-3, "max_steps_per_epoch": 4, "warmup_epochs": 0},
    )
    h = train_captioner(cfg, progress=False)
    sp = [e["spatial"] for e in h["epochs"]]
    assert all(0.0 <= s <= 2.0 for s in sp) and sp[-1] < sp[0], sp
    with pytest.raises(EdgeClipError, match="needs `teacher:`"):
        train_captioner(_cfg(caption_data, tmp_path / "x", alpha=0.0, beta=1.0, spatial=0.5), progress=False)
    with pytest.raises(EdgeClipError, match="spatial_grid"):
        train_captioner(_cfg(caption_data, tmp_path / "y", spatial=0.5, spatial_grid=0), progress=False)
