"""No code runs from a checkpoint: a pickle payload planted in every kind of file edgeclip loads never runs.

Every checkpoint edgeclip writes is a safetensors file (tensors + JSON metadata); files of earlier releases
and third-party weights (open_clip .pt, Hugging Face .bin, backbone .pth, the resume state) go through
torch's weights-only unpickler. The payload below writes a marker file when unpickled; each test asserts
the load fails with one clear error and the marker never appears.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from edgeclip.cli import main
from edgeclip.core.errors import CheckpointError, EdgeClipError


class _Payload:
    """Unpickling this runs ``exec`` (what a crafted checkpoint does with os.system)."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').write('code ran')",))


def _plant(path: Path, marker: Path, **fields) -> Path:
    torch.save({**fields, "state_dict": {}, "extra": _Payload(marker)}, path)
    return path


def _cli(args, capsys):
    """-> (exit code, stderr lines) of the CLI run in-process."""
    code = 0
    try:
        main([str(a) for a in args])
    except SystemExit as e:
        code = e.code or 0
    return code, capsys.readouterr().err.strip().splitlines()


@pytest.fixture
def marker(tmp_path):
    m = tmp_path / "PWNED"
    yield m
    assert not m.exists(), "code from a checkpoint ran"


def _student(tmp_path):
    from edgeclip.data.transforms import Preprocess
    from edgeclip.models.student import create_student, save_student

    st = create_student("shufflenet_v2_x0_5", 16, img_size=32, small_input=True, head_hidden=32)
    save_student(st, tmp_path / "ok.pt", Preprocess(size=32), {"id": "t:1", "spec": "t"})
    return st, tmp_path / "ok.pt"


def test_edgeclip_checkpoints_are_safetensors_and_round_trip(tmp_path):
    from safetensors import safe_open

    from edgeclip.models.student import load_student

    st, p = _student(tmp_path)
    with safe_open(str(p), framework="pt") as f:  # parses as tensors + JSON: there is no pickle inside
        meta = json.loads(f.metadata()["edgeclip"])
    assert meta["format"] == "edgeclip-student/1" and meta["teacher"]["id"] == "t:1"
    st2, pp, ck = load_student(p)
    x = torch.randn(2, 3, 32, 32)
    st.eval()
    assert torch.equal(st(x), st2(x)) and pp.size == 32 and ck["config"] == st.config


def test_checkpoint_of_an_earlier_release_loads_and_converts(tmp_path, capsys):
    """A torch-zip student as main wrote it before safetensors: loads through the safe path, converts."""
    import numpy as np

    from edgeclip.models.student import load_student

    st, _ = _student(tmp_path)
    old = tmp_path / "old.pt"
    torch.save(
        {
            "format": "edgeclip-student/1",
            "config": st.config,
            "preprocess": {"size": 32},
            "teacher": {"id": "t:1"},
            "state_dict": st.state_dict(),
            "extra": {"val_top1": np.float64(0.5), "out": Path("runs/x")},
        },
        old,
    )
    st2, _, ck = load_student(old)
    assert ck["extra"]["val_top1"] == 0.5
    code, err = _cli(["checkpoint", "convert", old, "--out", tmp_path / "new.pt"], capsys)
    assert code == 0, err
    st3, _, ck3 = load_student(tmp_path / "new.pt")
    assert all(torch.equal(a, b) for a, b in zip(st2.state_dict().values(), st3.state_dict().values()))
    assert ck3["extra"] == {"val_top1": 0.5, "out": "runs/x"}


def test_corrupt_metadata_and_plain_safetensors_are_one_line(tmp_path):
    from safetensors.torch import save_file

    from edgeclip.models.student import load_student

    save_file({"w": torch.zeros(2)}, str(tmp_path / "plain.safetensors"))
    with pytest.raises(CheckpointError, match="without edgeclip metadata"):
        load_student(tmp_path / "plain.safetensors")
    save_file({"w": torch.zeros(2)}, str(tmp_path / "bad.safetensors"), metadata={"edgeclip": "{not json"})
    with pytest.raises(CheckpointError, match="corrupt checkpoint metadata"):
        load_student(tmp_path / "bad.safetensors")
    (tmp_path / "trunc.pt").write_bytes(b'\x10\x00\x00\x00\x00\x00\x00\x00{"w"')
    with pytest.raises(CheckpointError):
        load_student(tmp_path / "trunc.pt")


def test_payload_never_runs_from_any_edgeclip_checkpoint_kind(tmp_path, marker):
    from edgeclip.core.checkpoint import convert_checkpoint
    from edgeclip.models.captioner import CAPTIONER_FORMAT, load_captioner
    from edgeclip.models.pair import load_pair_student
    from edgeclip.models.student import STUDENT_FORMAT, load_student
    from edgeclip.models.teachers import load_teacher
    from edgeclip.models.teachers.reference import REFERENCE_FORMAT

    student = _plant(tmp_path / "student.pt", marker, format=STUDENT_FORMAT)
    for load in (load_student, load_pair_student, lambda p: convert_checkpoint(p, tmp_path / "out.pt")):
        with pytest.raises(CheckpointError, match="never unpickles"):
            load(student)
    with pytest.raises(CheckpointError, match="never unpickles"):
        load_teacher(f"reference-lit:{_plant(tmp_path / 'teacher.pt', marker, format=REFERENCE_FORMAT)}")
    with pytest.raises(CheckpointError, match="never unpickles"):
        load_captioner(_plant(tmp_path / "captioner.pt", marker, format=CAPTIONER_FORMAT))


def test_payload_never_runs_from_third_party_weights_or_resume_state(tmp_path, marker):
    import open_clip

    from edgeclip.models.student import create_student
    from edgeclip.models.teachers import load_teacher
    from edgeclip.train.engine import TrainConfig, fit

    evil = _plant(tmp_path / "evil.pt", marker)
    with pytest.raises(EdgeClipError):  # backbone weights (--set student.weights=...)
        create_student("shufflenet_v2_x0_5", 16, weights=str(evil))
    cfg = tmp_path / "edgeclip-test-safety-vit.json"
    cfg.write_text(
        json.dumps(
            {
                "embed_dim": 16,
                "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 8, "head_width": 16},
                "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
            }
        )
    )
    open_clip.add_model_config(cfg)
    with pytest.raises(EdgeClipError):  # open_clip ARCH:FILE
        load_teacher(f"edgeclip-test-safety-vit:{evil}")
    run = tmp_path / "run"
    run.mkdir()
    _plant(run / "last.ckpt", marker)  # the resume state of the training loop
    model = torch.nn.Linear(2, 1)
    data = torch.utils.data.TensorDataset(torch.randn(4, 2))
    with pytest.raises(CheckpointError, match="never unpickles"):
        fit(
            TrainConfig(epochs=1, batch_size=2),
            model,
            data,
            lambda m, b: {"loss": m(b[0]).sum()},
            run,
            resume=True,
            progress=False,
        )


def test_payload_never_runs_from_a_hugging_face_bin(tmp_path, marker):
    from edgeclip.models.teachers import load_teacher
    from test_teachers import _save_tiny_hf

    _save_tiny_hf(tmp_path)
    (tmp_path / "model.safetensors").unlink()
    _plant(tmp_path / "pytorch_model.bin", marker)
    with pytest.raises(EdgeClipError):
        load_teacher(f"hf:{tmp_path}")


@pytest.mark.parametrize(
    "args",
    [
        ["stats", "--student", "{p}"],
        ["label", "{img}", "--student", "{p}", "--labels", "a,b"],
        ["teacher", "info", "reference-lit:{p}"],
        ["export", "{p}", "--out", "{tmp}/bundle", "--labels", "a,b"],
        ["caption", "run", "{img}", "--model", "{p}"],
    ],
)
def test_cli_commands_refuse_a_planted_checkpoint_in_one_line(args, tmp_path, marker, capsys):
    from PIL import Image

    from edgeclip.models.student import STUDENT_FORMAT

    p = _plant(tmp_path / "evil.pt", marker, format=STUDENT_FORMAT)
    img = tmp_path / "x.jpg"
    Image.new("RGB", (32, 32), "red").save(img)
    code, err = _cli([a.format(p=p, img=img, tmp=tmp_path) for a in args], capsys)
    assert code == 2 and len(err) == 1 and err[0].startswith("error:"), err
