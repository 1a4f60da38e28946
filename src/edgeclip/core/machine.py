"""The machine: the facts recorded in every results JSON (CPU, versions), the device a job runs on, seeds."""

from __future__ import annotations

import datetime as _dt
import os
import platform
import random
from typing import Any


def seed_everything(seed: int) -> None:
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def machine_info() -> dict[str, Any]:
    info: dict[str, Any] = {
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "hostname": platform.node(),
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
    }
    try:
        import torch

        info["torch"] = torch.__version__
        info["torch_threads"] = torch.get_num_threads()
        info["cuda"] = torch.cuda.is_available()
        if torch.cuda.is_available():
            info["gpu"] = torch.cuda.get_device_name(0)
    except ImportError:
        pass
    for mod in ("torchvision", "timm", "open_clip", "onnxruntime", "onnx", "numpy", "transformers"):
        try:
            m = __import__(mod)
            info[mod] = getattr(m, "__version__", "?")
        except Exception:
            pass
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    info["cpu_model"] = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return info


def resolve_device(device: str | None = None) -> str:
    import torch

    if device in (None, "auto"):
        if not torch.cuda.is_available():
            return "cpu"
        local = os.environ.get("LOCAL_RANK") or os.environ.get("SLURM_LOCALID")  # one GPU per launched worker
        return f"cuda:{int(local) % torch.cuda.device_count()}" if local else "cuda"
    return device
