"""Builders shared by the export / runtime / serve tests (imported by those modules; no tests here)."""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path

import pytest

from edgeclip.serve.loadtest import running_server  # noqa: F401  (re-exported for the serve tests)

SHAPE_LABELS = ["circle", "square", "triangle", "star", "cross", "ring"]


def make_student(teacher_spec: str, data: Path, out: Path, student: dict | None = None) -> Path:
    """A ShuffleNetV2 x0.5 student at 32 px (or ``student``), distilled label-free from the tiny teacher for one
    short epoch."""
    from edgeclip.train.distill import DistillConfig, distill

    cfg = DistillConfig(
        teacher=teacher_spec,
        data=str(data),
        out=str(out),
        student=student
        or {"arch": "shufflenet_v2_x0_5", "img_size": 32, "small_input": True, "head_hidden": 128},
        train={"epochs": 1, "batch_size": 48, "lr": 2e-3, "seed": 0, "accelerator": "cpu", "num_workers": 0},
    )
    distill(cfg, progress=False)
    return out / "student.pt"


def make_bundle(student: Path, calib: Path, out: Path, quant: str = "auto", **kw) -> Path:
    from edgeclip.export.bundle import export_bundle

    export_bundle(student, out, SHAPE_LABELS, calib=str(calib), calib_images=48, quant=quant, **kw)
    return out


def fake_timer(int8: str):
    """A stand-in for ``edgeclip.export.choose.time_model`` that makes every int8 variant ``faster`` or ``slower``
    than fp32 (10 ms at batch 1), so that a test controls the measured choice instead of inheriting this CPU's."""
    ms = {"faster": 5.0, "slower": 20.0}[int8]

    def time_model(path, size, threads, batches=(1, 32), reps=20):
        b1 = 10.0 if Path(path).name == "model.onnx" else ms
        return {f"batch{b}_ms": b1 * b for b in batches}

    return time_model


@contextmanager
def int8_speed(int8: str):
    """Within the block, bundle exports see int8 ``faster`` or ``slower`` than fp32 (see :func:`fake_timer`)."""
    import edgeclip.export.choose as choose

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(choose, "time_model", fake_timer(int8))
        yield


def wait_until_serving(url: str, proc, timeout: float = 90.0) -> None:
    """Poll ``url``/api/info until the `edgeclip serve` subprocess ``proc`` answers 200 (it dies or times out:
    the test fails with its stderr)."""
    import time

    import httpx

    deadline = time.time() + timeout
    while True:
        try:
            if httpx.get(f"{url}/api/info", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        assert proc.poll() is None, proc.stderr.read()
        assert time.time() < deadline, "the server did not start"
        time.sleep(0.3)


_BUILT: dict = {}


def bundle_for_tests(tmp_path_factory, tiny_teacher: str, shapes) -> dict:
    """Student + bundle, built once per test session (tests must not modify them; copy first):
    {'student': Path, 'bundle': Path, 'images': [Path], 'teacher': spec, 'root': Path}."""
    if tiny_teacher in _BUILT and _BUILT[tiny_teacher]["bundle"].is_dir():
        return _BUILT[tiny_teacher]
    root = tmp_path_factory.mktemp("bundle")
    student = make_student(tiny_teacher, shapes["train"], root / "student")
    with int8_speed("faster"):  # the runtime and server tests exercise the int8 model as the default
        bundle = make_bundle(student, shapes["test"], root / "bundle")
    images = sorted(Path(shapes["test"]).glob("*/*.jpg"))
    _BUILT[tiny_teacher] = {
        "student": student,
        "bundle": bundle,
        "images": images,
        "teacher": tiny_teacher,
        "root": root,
    }
    return _BUILT[tiny_teacher]


# Python code that makes every import of torch and the libraries built on it fail: the head of a subprocess that
# proves a code path runs without torch.
NO_TORCH = """
import sys
class _Block:
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in ('torch', 'torchvision', 'timm', 'open_clip', 'transformers', 'lightning'):
            raise ImportError('blocked for this test: ' + name)
sys.meta_path.insert(0, _Block())
"""


def run_without_torch(code: str, timeout: int = 300):
    """Run ``code`` in a fresh interpreter where torch cannot be imported; -> the CompletedProcess."""
    import subprocess
    import sys

    return subprocess.run(
        [sys.executable, "-c", NO_TORCH + code], capture_output=True, text=True, timeout=timeout
    )
