"""The one model factory: create_model by name or config, load_model for every checkpoint kind."""

from __future__ import annotations

import pytest
import torch

from edgeclip.core.errors import CheckpointError, EdgeClipError
from edgeclip.data.transforms import Preprocess
from edgeclip.models.factory import CHECKPOINT_KINDS, MODEL_KINDS, create_model, load_model
from edgeclip.models.student import save_student


def test_create_model_by_name_and_config():
    st = create_model("shufflenet_v2_x0_5", embed_dim=16, img_size=32, small_input=True, head_hidden=0)
    assert st.arch == "shufflenet_v2_x0_5" and st.embed_dim == 16
    st2 = create_model({"kind": "student", "arch": "resnet18", "embed_dim": 8, "img_size": 32})
    assert st2.eval()(torch.randn(1, 3, 32, 32)).shape == (1, 8)
    assert {"student", "pair-student", "captioner"} <= set(MODEL_KINDS.names())
    with pytest.raises(EdgeClipError, match="unknown model kind 'studnet'.*Did you mean: student"):
        create_model({"kind": "studnet", "arch": "resnet18"})


def test_load_model_dispatches_on_the_recorded_format(tmp_path, tiny_teacher):
    from edgeclip.data.vocab import Vocab
    from edgeclip.models.captioner import CaptionModelConfig, build_captioner, save_captioner

    st = create_model("shufflenet_v2_x0_5", embed_dim=384, img_size=32, small_input=True, head_hidden=0)
    save_student(st, tmp_path / "s.pt", Preprocess(size=32), {"id": "t:1", "spec": "t"})
    got = load_model(tmp_path / "s.pt")
    model, pp, info = got  # unpacks as (model, preprocess, info)
    assert (
        got.kind == "student"
        and pp.size == 32
        and info["teacher"]["id"] == "t:1"
        and "state_dict" not in info
    )
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(model(x), st.eval()(x))

    vocab = Vocab.build(["a dog runs", "a cat sits"], min_count=1)
    cap = build_captioner(vocab, CaptionModelConfig(img_size=64, teacher_dim=16))
    save_captioner(cap, tmp_path / "c.pt", Preprocess(size=64))
    assert load_model(tmp_path / "c.pt").kind == "captioner"

    teacher = load_model(tiny_teacher.split(":", 1)[1])
    assert teacher.kind == "teacher-tower" and teacher.info["format"] == "edgeclip-reference-lit/1"
    assert set(CHECKPOINT_KINDS.names()) == {
        "edgeclip-student/1",
        "edgeclip-captioner/1",
        "edgeclip-reference-lit/1",
    }

    with pytest.raises(CheckpointError, match="not an edgeclip captioner checkpoint"):
        load_model(tmp_path / "s.pt", kind="captioner")
    with pytest.raises(CheckpointError, match="without modality information"):
        load_model(tmp_path / "s.pt", kind="pair-student")


def test_weights_that_do_not_fit_the_config_are_one_line(tmp_path):
    from edgeclip.core.checkpoint import read_checkpoint, save_checkpoint

    st = create_model("shufflenet_v2_x0_5", embed_dim=16, img_size=32, head_hidden=0)
    save_student(st, tmp_path / "s.pt", Preprocess(size=32), {"id": "t:1"})
    ck = read_checkpoint(tmp_path / "s.pt", "edgeclip-student/1", "student")
    sd = ck.pop("state_dict")
    ck["config"]["embed_dim"] = 32  # the head in the file is 16-d
    save_checkpoint(tmp_path / "bad.pt", ck.pop("format"), sd, **ck)
    with pytest.raises(CheckpointError, match="student weights do not fit the saved config"):
        load_model(tmp_path / "bad.pt")
