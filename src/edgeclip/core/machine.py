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


MACHINE_LIBRARIES = ("torchvision", "timm", "open_clip", "onnxruntime", "onnx", "numpy", "transformers")


def versions(modules, missing: str | None = "omit") -> dict[str, str | None]:
    """The provenance helper: ``{module: __version__}`` of each module that imports (``"?"`` without a version);
    a module that does not import is left out, or recorded as None with ``missing=None``."""
    out: dict[str, str | None] = {}
    for mod in modules:
        try:
            out[mod] = getattr(__import__(mod), "__version__", "?")
        except Exception:
            if missing is None:
                out[mod] = None
    return out


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
    info.update(versions(MACHINE_LIBRARIES))
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    info["cpu_model"] = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return info


def launch_rank() -> tuple[int, int]:
    """The one rank helper: (rank, world size) of this process: torch.distributed's when a process group is up,
    else the launcher's (torchrun: RANK / WORLD_SIZE; SLURM srun: SLURM_PROCID / SLURM_NTASKS); (0, 1) alone."""
    import sys

    dist = getattr(sys.modules.get("torch"), "distributed", None)  # no torch import for the torch-free side
    if dist is not None and dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    for r, w in (("RANK", "WORLD_SIZE"), ("SLURM_PROCID", "SLURM_NTASKS")):
        if os.environ.get(w):
            rank, world = int(os.environ.get(r, "0")), int(os.environ[w])
            if not 0 <= rank < world:
                from edgeclip.core.errors import EdgeClipError

                raise EdgeClipError(f"bad launch: {r}={rank} with {w}={world}")
            return rank, world
    return 0, 1


def local_rank() -> int | None:
    """This process's index on its node (torchrun LOCAL_RANK, SLURM_LOCALID), or None when launched alone."""
    local = os.environ.get("LOCAL_RANK") or os.environ.get("SLURM_LOCALID")
    return int(local) if local else None


def resolve_device(device: str | None = None) -> str:
    import torch

    if device in (None, "auto"):
        if not torch.cuda.is_available():
            return "cpu"
        local = local_rank()  # one GPU per launched worker
        return f"cuda:{local % torch.cuda.device_count()}" if local is not None else "cuda"
    return device
