"""Captioner model size, batched greedy/beam decoding, checkpoints, and ONNX Runtime parity."""

from __future__ import annotations

import math

import pytest
import torch

from edgeclip.core.errors import CheckpointError, EdgeClipError
from edgeclip.data.transforms import Preprocess
from edgeclip.data.vocab import BOS_ID, EOS_ID, PAD_ID, SPECIALS, Vocab
from edgeclip.models.captioner import (
    CaptionModelConfig,
    build_captioner,
    load_captioner,
    save_captioner,
)
from edgeclip.models.decode import beam_decode, generate, greedy_decode, torch_step

VOCAB = Vocab(list(SPECIALS) + [f"w{i}" for i in range(600)])


def _calibrated(cfg: CaptionModelConfig, x: torch.Tensor):
    """A random-init captioner whose BatchNorm statistics come from ``x`` (else eval-mode features are ~0
    and every image gets the same caption, which would make the comparisons below vacuous)."""
    torch.manual_seed(0)
    m = build_captioner(VOCAB, cfg)
    for mod in m.modules():
        if isinstance(mod, torch.nn.BatchNorm2d):
            mod.reset_running_stats()
            mod.momentum = None
    with torch.no_grad():
        m.train()
        m.student.grid(x)
    return m.eval()


def test_full_size_model_budget_and_grid():
    torch.manual_seed(0)
    m = build_captioner(VOCAB, CaptionModelConfig(teacher_dim=512)).eval()
    pc = m.param_counts()
    assert pc["total"] <= 4_000_000, pc  # whole model incl. the distillation head, 600-word vocabulary
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        assert m.student.grid(x).shape == (1, 1024, 7, 7)
        (feats, keys, h, c), emb = m.encode(x, with_embedding=True)
    assert feats.shape == (1, 49, 512) and keys.shape == (1, 49, 128) and h.shape == c.shape == (1, 512)
    assert emb.shape == (1, 512)


class _Chain:
    """A fixed Markov chain as a step function: greedy takes the locally best first word and loses."""

    def __init__(self, V=8):
        self.V = V
        lp = torch.full((V, V), -20.0)
        # from <bos>: w4 (0.55) or w5 (0.45); after w4 everything is flat; after w5 <eos> is certain
        lp[BOS_ID, 4], lp[BOS_ID, 5] = math.log(0.55), math.log(0.45)
        lp[4, 4:] = math.log(1 / (V - 4))
        lp[4, EOS_ID] = math.log(1 / (V - 4))
        lp[5, EOS_ID] = 0.0
        lp[6, EOS_ID] = 0.0
        self.lp = torch.log_softmax(lp, -1)
        self.calls = 0

    def __call__(self, words, dyn, static):
        self.calls += 1
        return self.lp[words], dyn


def test_beam_beats_greedy_and_is_batched():
    chain = _Chain()
    h = torch.zeros(3, 4)
    g = greedy_decode(chain, (h, h), (h,), max_len=6)
    assert g[0, 0].item() == 4  # greedy commits to the 0.55 word
    chain.calls = 0
    ids, score = beam_decode(chain, (h, h), (h,), beam=3, max_len=6, length_penalty=0.0)
    assert chain.calls <= 6  # one batched call per time step for all images and beams
    assert ids[:, :2].tolist() == [[5, EOS_ID]] * 3  # w5 <eos>: prob 0.45 > 0.55 * 1/4
    assert ids[:, 2:].eq(PAD_ID).all()
    assert torch.allclose(score, torch.full((3,), math.log(0.45)), atol=1e-4)


def test_beam_one_equals_greedy_and_batch_independence():
    x = torch.randn(4, 3, 64, 64)
    m = _calibrated(CaptionModelConfig(img_size=64, teacher_dim=32, dropout=0.0), x)
    assert generate(m, x, beam=1, max_len=8) == generate(m, x, beam=1, max_len=8)
    feats, keys, h, c = m.encode(x)
    step = torch_step(m.decoder)
    g = greedy_decode(step, (h, c), (feats, keys), 8)
    b1, _ = beam_decode(step, (h, c), (feats, keys), beam=1, max_len=8)
    assert torch.equal(g, b1)
    full = generate(m, x, beam=5, max_len=8)
    assert all(full) and len(set(full)) > 1
    one_by_one = [generate(m, x[i : i + 1], beam=5, max_len=8)[0] for i in range(4)]
    assert full == one_by_one
    with pytest.raises(EdgeClipError):
        beam_decode(step, (h, c), (feats, keys), beam=0, max_len=8)


def test_length_normalisation_changes_the_choice():
    V = 7
    lp = torch.full((V, V), -30.0)
    lp[BOS_ID, 4], lp[BOS_ID, 5] = math.log(0.6), math.log(0.4)
    lp[4, EOS_ID] = math.log(0.5)
    lp[4, 4] = math.log(0.5)  # w4 w4 <eos> (0.15) and longer repeats lose under both rules
    lp[5, 6], lp[5, EOS_ID] = math.log(0.6), math.log(0.4)
    lp[6, EOS_ID] = 0.0
    lp = torch.log_softmax(lp, -1)
    step = lambda w, d, s: (lp[w], d)  # noqa: E731
    z = torch.zeros(1, 2)
    short, _ = beam_decode(
        step, (z, z), (z,), beam=3, max_len=5, length_penalty=0.0
    )  # raw log-prob: w4 <eos> (0.30)
    longer, _ = beam_decode(
        step, (z, z), (z,), beam=3, max_len=5, length_penalty=1.0
    )  # per token: w5 w6 <eos> (0.24 over 3)
    assert short[0, :2].tolist() == [4, EOS_ID]
    assert longer[0, :3].tolist() == [5, 6, EOS_ID]


def test_checkpoint_roundtrip_and_errors(tmp_path):
    torch.manual_seed(0)
    m = build_captioner(VOCAB, CaptionModelConfig(img_size=64, teacher_dim=32)).eval()
    pp = Preprocess(size=64)
    save_captioner(m, tmp_path / "c.pt", pp, None, {"epoch": 1})
    m2, pp2, ck = load_captioner(tmp_path / "c.pt")
    x = torch.randn(2, 3, 64, 64)
    assert generate(m, x, beam=3) == generate(m2, x, beam=3) and pp2.size == 64 and ck["extra"]["epoch"] == 1
    torch.save({"format": "something-else"}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="not an edgeclip captioner"):
        load_captioner(tmp_path / "other.pt")
    ck["vocab"] = Vocab(list(SPECIALS) + ["a", "b"]).to_dict()  # vocabulary that does not fit the weights
    torch.save({**ck, "state_dict": m2.state_dict()}, tmp_path / "mismatch.pt")  # info + the weights
    with pytest.raises(CheckpointError, match="do not fit"):
        load_captioner(tmp_path / "mismatch.pt")


def test_onnx_greedy_matches_torch(tmp_path):
    pytest.importorskip("onnxruntime")
    from edgeclip.export.caption import export_captioner
    from edgeclip.runtime import load_bundle

    x = torch.randn(6, 3, 64, 64)
    m = _calibrated(CaptionModelConfig(img_size=64, teacher_dim=32), x)
    export_captioner(m, Preprocess(size=64), tmp_path)
    ort_cap = load_bundle(tmp_path)  # a captioner bundle: manifest, hashes, the torch-free runtime
    assert ort_cap.kind == "captioner"
    torch_caps = generate(m, x, beam=1, max_len=12)
    assert ort_cap.caption_arrays(x, beam=1, max_len=12) == torch_caps
    assert len(set(torch_caps)) > 1  # a real comparison, not six empty strings
    assert ort_cap.caption_arrays(x, beam=4, max_len=12) == generate(m, x, beam=4, max_len=12)


def test_encoder_init_from_a_distilled_student(tmp_path):
    """A 32-px CIFAR-style student (small_input, stem_stride 1) initialises the 224-px encoder: the strides are
    not weights. Its linear head is copied when the shape fits; another architecture is a one-line error."""
    from edgeclip.models import create_student
    from edgeclip.models.captioner import init_encoder_from_student
    from edgeclip.models.student import save_student

    torch.manual_seed(1)
    st = create_student("shufflenet_v2_x0_5", 16, small_input=True, stem_stride=1, img_size=32, head_hidden=0)
    save_student(st, tmp_path / "s.pt", Preprocess(size=32), {"id": "t"})
    cfg = CaptionModelConfig(
        arch="shufflenet_v2_x0_5", img_size=64, teacher_dim=16, feat_dim=32, hidden=32, embed=16, att_dim=16
    )
    m = build_captioner(VOCAB, cfg)
    info = init_encoder_from_student(m, tmp_path / "s.pt")
    assert info["head_loaded"] and info["teacher"] == "t" and len(info["sha256"]) == 64
    for k, v in st.backbone.state_dict().items():
        assert torch.equal(m.student.backbone.state_dict()[k], v), k
    assert m.student.grid(torch.randn(1, 3, 64, 64)).shape[-2:] == (2, 2)  # the captioner's own strides
    other = build_captioner(
        VOCAB,
        CaptionModelConfig(
            arch="shufflenet_v2_x0_5",
            img_size=64,
            teacher_dim=8,
            feat_dim=32,
            hidden=32,
            embed=16,
            att_dim=16,
        ),
    )
    assert not init_encoder_from_student(other, tmp_path / "s.pt")[
        "head_loaded"
    ]  # other teacher size: fresh head
    with pytest.raises(CheckpointError, match="cannot initialise a shufflenet_v2_x1_0"):
        init_encoder_from_student(
            build_captioner(VOCAB, CaptionModelConfig(teacher_dim=16)), tmp_path / "s.pt"
        )
    with pytest.raises(CheckpointError):
        init_encoder_from_student(m, tmp_path / "missing.pt")


def test_a_captioner_bundle_answers_post_caption_without_torch(tmp_path):
    """`edgeclip serve` of a captioner bundle: POST /caption through the torch-free runtime (torch blocked in a
    subprocess) gives the runtime's beam-5 caption of the same image file (ONNX Runtime vs torch decoding is
    compared in test_onnx_greedy_matches_torch)."""
    import numpy as np
    from PIL import Image

    from edgeclip.export.caption import export_captioner
    from test_export_fixtures import run_without_torch

    rng = np.random.default_rng(0)
    imgs = [Image.fromarray(rng.integers(0, 255, (80, 96, 3), dtype=np.uint8)) for _ in range(6)]
    pp = Preprocess(size=64)
    x = torch.stack([pp.torch_transform()(im) for im in imgs])
    m = _calibrated(CaptionModelConfig(img_size=64, teacher_dim=32), x)
    export_captioner(m, pp, tmp_path / "cap")
    imgs[2].save(tmp_path / "photo.png")
    from edgeclip.runtime import load_bundle

    want = load_bundle(tmp_path / "cap").caption(tmp_path / "photo.png", beam=5)
    code = f"""
from fastapi.testclient import TestClient
from edgeclip.serve.app import create_app
c = TestClient(create_app({str(tmp_path / "cap")!r}), base_url="http://127.0.0.1")
info = c.get("/api/info").json()
assert info["caption"] is True and info["kind"] == "captioner", info
r = c.post("/caption", files={{"file": ("photo.png", open({str(tmp_path / "photo.png")!r}, "rb").read())}})
assert r.status_code == 200, r.text
assert c.post("/label", files={{"file": ("photo.png", b"x")}}).status_code == 404
assert not [m for m in sys.modules if m.split('.')[0] == 'torch']
print(r.json()["caption"])
"""
    r = run_without_torch(code)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.strip().splitlines()[-1] == want and want


def test_repetition_penalty_and_ngram_block_break_a_loop():
    """A bigram model that loves "w4 w5 w4 w5 ...": plain beam search loops, the n-gram block never says a
    bigram twice, the repetition penalty prefers the fresh word; bad settings are one line."""
    V = 9
    lp = torch.full((V, V), -30.0)
    lp[BOS_ID, 4] = 0.0
    lp[4, 5], lp[4, EOS_ID] = math.log(0.9), math.log(0.1)
    lp[5, 4], lp[5, 6] = math.log(0.95), math.log(0.05)
    lp[6, EOS_ID] = 0.0
    lp = torch.log_softmax(lp, -1)
    step = lambda w, d, s: (lp[w], d)  # noqa: E731
    z = torch.zeros(1, 2)
    plain, _ = beam_decode(step, (z, z), (z,), beam=3, max_len=8, length_penalty=1.0)
    words = [w for w in plain[0].tolist() if w not in (PAD_ID, EOS_ID)]
    assert words[:4] == [4, 5, 4, 5]  # the loop
    for kw in ({"no_repeat_ngram": 2}, {"repetition_penalty": 3.0}):
        ids, _ = beam_decode(step, (z, z), (z,), beam=3, max_len=8, length_penalty=1.0, **kw)
        seq = [w for w in ids[0].tolist() if w not in (PAD_ID, EOS_ID)]
        bigrams = list(zip(seq, seq[1:]))
        assert len(bigrams) == len(set(bigrams)) and len(seq) < len(words), (kw, seq)
    with pytest.raises(EdgeClipError, match="repetition_penalty"):
        beam_decode(step, (z, z), (z,), beam=2, repetition_penalty=0.5)
    with pytest.raises(EdgeClipError, match="no_repeat_ngram"):
        beam_decode(step, (z, z), (z,), beam=2, no_repeat_ngram=1)


def test_decoding_is_one_checked_value():
    """Every captioner entry point takes one Decoding: built from a config section with overrides, checked once,
    an unknown option one line with its nearest name."""
    from edgeclip.runtime.decode import Decoding

    d = Decoding.of({"beam": "3", "no_repeat_ngram": 3}, max_len=12, length_penalty=None)
    assert d == Decoding(beam=3, max_len=12, no_repeat_ngram=3) and Decoding.of(d, beam=1).beam == 1
    assert d.as_dict()["max_len"] == 12
    with pytest.raises(EdgeClipError, match="did you mean 'repetition_penalty'"):
        Decoding.of({"repetition_penalti": 1.2})
    with pytest.raises(EdgeClipError, match="beam must be >= 1"):
        Decoding(beam=0)
