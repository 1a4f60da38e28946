"""Energy per image: measured with CPU energy counters where readable, otherwise an estimate.

Method (in this order):

1. **measured (RAPL)**: when ``/sys/class/powercap/intel-rapl:*/energy_uj`` (package domains) is
   readable, the counters are read before and after running the model's batch-N inference for at
   least ``seconds``; joules / images processed = energy per image. Counter wrap-around is handled
   with ``max_energy_range_uj``. This is whole-package energy, so other processes on the machine
   are included: it is an upper bound on a shared machine.
2. **estimate (FLOPs)**: otherwise, energy/image = forward GFLOPs x an *assumed* energy per GFLOP
   (``joules_per_gflop``, default 0.1 J/GFLOP, i.e. 10 GFLOP/s per watt, the order of magnitude
   of a modern CPU core running vectorised fp32 convolutions). It is labelled ``estimate`` in
   every output: the absolute value depends on that assumption, the student/teacher *ratio*
   equals the FLOPs ratio and does not.

Alongside either, the measured **CPU core-seconds per image** (wall time per image at batch N x
threads) is reported: on one machine, energy scales with it at a given power draw.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

POWERCAP = Path("/sys/class/powercap")
DEFAULT_J_PER_GFLOP = 0.1


class Rapl:
    """Reader of the package-level RAPL energy counters (``intel-rapl:N``, not sub-domains)."""

    def __init__(self, root: Path = POWERCAP):
        self.root = Path(root)
        self.domains: list[Path] = []
        if self.root.is_dir():
            for d in sorted(self.root.glob("intel-rapl:*")):
                if d.name.count(":") != 1:  # intel-rapl:0:0 etc. are sub-domains of a package
                    continue
                f = d / "energy_uj"
                try:
                    int(f.read_text().strip())
                except (OSError, ValueError):
                    continue
                self.domains.append(d)

    @property
    def available(self) -> bool:
        return bool(self.domains)

    def read(self) -> list[int]:
        return [int((d / "energy_uj").read_text().strip()) for d in self.domains]

    def delta_joules(self, before: Sequence[int], after: Sequence[int]) -> float:
        total = 0
        for d, a, b in zip(self.domains, before, after):
            diff = b - a
            if diff < 0:  # the counter wrapped around
                try:
                    rng = int((d / "max_energy_range_uj").read_text().strip())
                except (OSError, ValueError):
                    rng = 2**32
                diff += rng
            total += diff
        return total / 1e6


def measure_energy(
    run: Callable[[], object], images_per_call: int, seconds: float = 3.0, rapl: Rapl | None = None
) -> dict[str, float] | None:
    """Joules per image of ``run`` over at least ``seconds`` (None when RAPL is not readable)."""
    rapl = rapl or Rapl()
    if not rapl.available:
        return None
    run()  # warm-up
    calls = 0
    before = rapl.read()
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < seconds or calls == 0:
        run()
        calls += 1
    dt = time.perf_counter() - t0
    j = rapl.delta_joules(before, rapl.read())
    n = calls * images_per_call
    return {"joules_per_image": j / n, "watts": j / dt, "images": n, "seconds": dt}


def energy_table(
    models: Sequence[dict[str, Any]],
    threads: int,
    joules_per_gflop: float = DEFAULT_J_PER_GFLOP,
    backend: str = "torch",
) -> dict[str, Any]:
    """Per-model energy per image from speed-suite records: measured (their ``energy_rapl``) where
    present, else the FLOPs estimate (labelled as such)."""
    measured = {m["name"]: m["energy_rapl"] for m in models if m.get("energy_rapl")}
    rows = []
    for m in models:
        if "gflops" not in m:
            continue
        be = m.get(backend, {})
        row: dict[str, Any] = {
            "name": m["name"],
            "role": m["role"],
            "img_size": m["img_size"],
            "gflops": m["gflops"],
            "estimate_joules_per_image": m["gflops"] * joules_per_gflop,
        }
        if "throughput_images_per_s" in be:
            row["cpu_core_seconds_per_image"] = threads / be["throughput_images_per_s"]
        if m["name"] in measured:
            row["measured_joules_per_image"] = measured[m["name"]]["joules_per_image"]
            row["measured_watts"] = measured[m["name"]]["watts"]
            row["method"] = "measured (RAPL package counters)"
        else:
            row["method"] = "estimate (FLOPs x assumed J/GFLOP)"
        rows.append(row)
    return {
        "rapl_available": bool(measured),
        "joules_per_gflop_assumed": joules_per_gflop,
        "backend": backend,
        "rows": rows,
        "method": __doc__.split("Method (in this order):", 1)[1].strip(),
    }
