"""Builders shared by the export / runtime / serve tests (imported by those modules; no tests here)."""

from __future__ import annotations

from pathlib import Path

SHAPE_LABELS = ["circle", "square", "triangle", "star", "cross", "ring"]


def make_student(teacher_spec: str, data: Path, out: Path) -> Path:
    """A ShuffleNetV2 x0.5 student at 32 px, distilled label-free from the tiny teacher for one short epoch."""
    from edgeclip.distill.trainer import DistillConfig, distill

    cfg = DistillConfig(teacher=teacher_spec, data=str(data), out=str(out),
                        student={"arch": "shufflenet_v2_x0_5", "img_size": 32, "small_input": True, "head_hidden": 128},
                        train={"epochs": 1, "batch_size": 48, "lr": 2e-3, "seed": 0, "accelerator": "cpu"})
    distill(cfg, progress=False)
    return out / "student.pt"


def make_bundle(student: Path, calib: Path, out: Path, quant: str = "auto", **kw) -> Path:
    from edgeclip.export.bundle import export_bundle

    export_bundle(student, out, SHAPE_LABELS, calib=str(calib), calib_images=48, quant=quant, **kw)
    return out


def bundle_for_tests(tmp_path_factory, tiny_teacher: str, shapes) -> dict:
    """Student + bundle built once per test module: {'student': Path, 'bundle': Path, 'images': [Path], 'teacher': spec}."""
    root = tmp_path_factory.mktemp("bundle")
    student = make_student(tiny_teacher, shapes["train"], root / "student")
    bundle = make_bundle(student, shapes["test"], root / "bundle")
    images = sorted(Path(shapes["test"]).glob("*/*.jpg"))
    return {"student": student, "bundle": bundle, "images": images, "teacher": tiny_teacher, "root": root}


class running_server:
    """Run a FastAPI app with uvicorn on 127.0.0.1 (a free port) in a thread: ``with running_server(app) as url``."""

    def __init__(self, app):
        import socket

        import uvicorn

        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))

    def __enter__(self) -> str:
        import threading
        import time

        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)
        self.thread.start()
        deadline = time.time() + 30
        while not self.server.started:
            if time.time() > deadline or not self.thread.is_alive():
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.05)
        return self.url

    def __exit__(self, *exc):
        self.server.should_exit = True
        self.thread.join(timeout=30)
        self.sock.close()
