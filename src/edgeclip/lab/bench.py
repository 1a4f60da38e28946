"""``edgeclip bench``: the shipped ``bench`` experiment (``edgeclip/configs/bench.yaml``) run by the one experiment
runner, with a :class:`~edgeclip.lab.suite.BenchConfig` as its inputs, then the report."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

from edgeclip.lab.suite import BenchConfig

BENCH_EXPERIMENT = Path(__file__).resolve().parents[1] / "configs" / "bench.yaml"


def run_bench(cfg: BenchConfig, log: Callable[[str], None] = print) -> dict[str, Any]:
    """``edgeclip bench``: the shipped ``bench`` experiment (``edgeclip/configs/bench.yaml``; the repository's
    ``experiments/bench.yaml`` extends it) run by the one experiment runner with ``cfg`` as its inputs: every
    section a stage, measured anew each run, one that fails recorded and the others still run; then the
    report."""
    from edgeclip.lab.experiment import read_experiment, run_experiment

    logging.getLogger().setLevel(logging.ERROR)  # open_clip's "random weights" notice is expected here
    mode = "quick" if cfg.quick else "full"
    name = "bench_quick.json" if cfg.quick else "bench.json"
    exp = read_experiment(BENCH_EXPERIMENT)
    exp["results"] = str(Path(cfg.out) / name)
    exp["workdir"] = str(Path(cfg.workdir) / mode)
    exp["base"] = {"bench-inputs": asdict(cfg)}
    exp["stages"] = [st for st in exp["stages"] if st["name"] not in cfg.skip]
    result = run_experiment(exp, log=log)
    result["path"] = exp["results"]
    log(f"({result['budget']['minutes']:.1f} min, {result['threads']} threads)")
    if cfg.report:
        from edgeclip.lab.report import build_report

        out = Path(cfg.out)
        rep = build_report(out / name, out / ("report_quick" if cfg.quick else "report"), results_dir=out)
        log(f"report: {rep['html']}  {rep['markdown']}")
        result["report"] = rep
    return result
