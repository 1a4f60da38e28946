"""Teachers load through exactly the specs users pass, from checkpoints the tests save themselves."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from edgeclip.core.errors import CheckpointError, EdgeClipError
from edgeclip.models.teachers import load_teacher, resolve_kind

TINY_OPEN_CLIP = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 8, "head_width": 16},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}


def _img(seed=0, size=48):
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8))


@pytest.fixture(scope="module")
def tiny_open_clip(tmp_path_factory):
    import open_clip

    d = tmp_path_factory.mktemp("oc")
    cfg = d / "edgeclip-test-tiny-vit.json"
    cfg.write_text(json.dumps(TINY_OPEN_CLIP))
    open_clip.add_model_config(cfg)
    torch.manual_seed(0)
    model = open_clip.create_model("edgeclip-test-tiny-vit").eval()
    ckpt = d / "tiny.pt"
    torch.save(model.state_dict(), ckpt)
    return d, cfg, ckpt, model


def test_open_clip_arch_and_local_file(tiny_open_clip):
    d, cfg, ckpt, ref = tiny_open_clip
    t = load_teacher(f"{cfg}:{ckpt}")
    assert t.embed_dim == 32 and t.image_size == 32
    assert t.id.startswith("open_clip:edgeclip-test-tiny-vit:sha256:")
    x = t.preprocess(_img())[None]
    with torch.no_grad():
        want = torch.nn.functional.normalize(ref.encode_image(x), dim=-1)
    assert torch.allclose(t.encode_image(x), want, atol=1e-5)
    txt = t.encode_text(["a photo of a cat", "a photo of a dog"])
    assert txt.shape == (2, 32) and torch.allclose(txt.norm(dim=-1), torch.ones(2), atol=1e-5)


def test_open_clip_local_dir(tiny_open_clip, tmp_path):
    from safetensors.torch import save_file

    _, _, _, ref = tiny_open_clip
    (tmp_path / "open_clip_config.json").write_text(
        json.dumps({"model_cfg": TINY_OPEN_CLIP, "preprocess_cfg": {}})
    )
    save_file(
        {k: v.contiguous() for k, v in ref.state_dict().items()}, tmp_path / "open_clip_model.safetensors"
    )
    for spec in (f"local-dir:{tmp_path}", str(tmp_path)):
        t = load_teacher(spec)
        x = t.preprocess(_img(1))[None]
        with torch.no_grad():
            want = torch.nn.functional.normalize(ref.encode_image(x), dim=-1)
        assert torch.allclose(t.encode_image(x), want, atol=1e-5)


def test_open_clip_missing_weights_is_one_clear_error(tmp_path):
    with pytest.raises(EdgeClipError, match="weights file not found"):
        load_teacher(f"ViT-B-32:{tmp_path}/nope.safetensors")
    with pytest.raises(EdgeClipError, match="no pretrained tag"):
        load_teacher("ViT-B-32:not-a-tag")
    with pytest.raises(EdgeClipError, match="unknown open_clip architecture"):
        load_teacher("NoSuchArch:openai")


def test_open_clip_hub_tag_offline_fails_clearly(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(EdgeClipError) as e:
        load_teacher("RN50:openai")
    msg = str(e.value)
    assert "openai" in msg and "local" in msg and "\n" not in msg


def test_an_offline_hub_tag_fails_fast_and_whole():
    """Offline, a hub tag is refused before open_clip (6 s to import) or a download is tried, and the message is
    whole (it was cut mid-word at 300 characters)."""
    code = (
        "import sys\n"
        "from edgeclip.core.errors import EdgeClipError\n"
        "from edgeclip.models.teachers import load_teacher\n"
        "try:\n"
        "    load_teacher('ViT-B-32:openai')\n"
        "except EdgeClipError as e:\n"
        "    print(e)\n"
        "print('open_clip' in sys.modules)\n"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    msg, imported = r.stdout.strip().splitlines()
    assert imported == "False", r.stdout
    assert (
        "HF_HUB_OFFLINE" in msg
        and msg.endswith("local-dir:/folder or hf:/folder")
        and "ERROR" not in r.stderr
    )


def _byte_chars():
    """The GPT-2/CLIP byte-to-unicode alphabet (a char-level BPE vocabulary for a tiny tokenizer)."""
    bs = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    cs, n = bs[:], 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return [chr(c) for c in cs]


def _save_tiny_hf(folder):
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPTokenizer

    chars = _byte_chars()
    vocab = {c: i for i, c in enumerate(chars)}
    for c in chars:
        vocab[c + "</w>"] = len(vocab)
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    tok = CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"))
    cfg = CLIPConfig(
        text_config=dict(
            vocab_size=len(vocab),
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=1,
            num_attention_heads=2,
            max_position_embeddings=32,
            bos_token_id=vocab["<|startoftext|>"],
            eos_token_id=vocab["<|endoftext|>"],
            pad_token_id=vocab["<|endoftext|>"],
        ),
        vision_config=dict(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=1,
            num_attention_heads=2,
            image_size=32,
            patch_size=8,
        ),
        projection_dim=24,
    )
    torch.manual_seed(0)
    model = CLIPModel(cfg).eval()
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(
        folder
    )
    return model


def test_hf_clip_folder(tmp_path):
    ref = _save_tiny_hf(tmp_path)
    for spec in (f"hf:{tmp_path}", str(tmp_path)):
        t = load_teacher(spec)
        assert t.embed_dim == 24 and t.image_size == 32 and t.id.startswith("hf:sha256:")
        x = t.preprocess(_img(2))[None]
        with torch.no_grad():
            out = ref.get_image_features(pixel_values=x)
            out = out if isinstance(out, torch.Tensor) else out.pooler_output
        assert torch.allclose(t.encode_image(x), torch.nn.functional.normalize(out, dim=-1), atol=1e-5)
        assert t.encode_text(["a cat", "a much longer prompt about a dog"]).shape == (2, 24)


def test_hf_folder_errors(tmp_path):
    with pytest.raises(EdgeClipError, match="not a Hugging Face model folder"):
        load_teacher(f"hf:{tmp_path}")


def test_reference_teacher_roundtrip(tiny_teacher, shapes):
    t = load_teacher(tiny_teacher)
    assert t.embed_dim == 384 and t.image_size == 32 and t.id.startswith("reference-lit:sha256:")
    txt = t.encode_text(["a photo of a circle.", "a photo of a square."])
    assert txt.shape == (2, 384)
    # the text tower is the real MiniLM: related sentences are closer than unrelated ones
    a, b, c = t.encode_text(["a photo of a dog", "a picture of a puppy", "quarterly tax report"])
    assert float(a @ b) > float(a @ c) + 0.2
    assert load_teacher(tiny_teacher.split(":", 1)[1]).id == t.id  # a bare path works too


def test_reference_wrong_checkpoint(tmp_path):
    bad = tmp_path / "bad.pt"
    torch.save({"hello": 1}, bad)
    with pytest.raises(CheckpointError, match="not an edgeclip reference-lit teacher checkpoint"):
        load_teacher(f"reference-lit:{bad}")
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="cannot read"):
        load_teacher(str(junk))
    with pytest.raises(CheckpointError, match="not found"):
        load_teacher(f"reference-lit:{tmp_path}/missing.pt")


def test_resolve_kind_errors():
    with pytest.raises(EdgeClipError):
        resolve_kind("")
    with pytest.raises(EdgeClipError, match="cannot tell"):
        resolve_kind("no-such-thing")
