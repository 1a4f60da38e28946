"""Parameters, FLOPs (torch's FlopCounterMode) and median latency after warm-up."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch
from torch import nn


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _extra_flop_formulas() -> dict:
    """torch's own attention formula for the CPU flash-attention kernel, which its registry lacks."""
    from torch.utils import flop_counter as fcm

    op = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)
    if op is None or op in fcm.flop_registry:
        return {}

    def cpu_sdpa(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
        return fcm.sdpa_flop_count(query_shape, key_shape, value_shape)

    return {op: cpu_sdpa}


def flops(model: nn.Module, input_size: int, batch: int = 1, channels: int = 3) -> float:
    """Forward FLOPs per image (multiply-add = 2 FLOPs), counted by torch.utils.flop_counter.

    Counted with autograd enabled (eval mode): without it, ``nn.MultiheadAttention`` takes its fused
    inference fast path, whose projections the counter does not see (ViT-B/32 would read 5.9 instead
    of 8.8 GFLOPs); the CPU flash-attention kernel is counted with torch's own SDPA formula.
    """
    from torch.utils.flop_counter import FlopCounterMode

    was = model.training
    model.eval()
    dev = next(model.parameters()).device
    x = torch.zeros(batch, channels, input_size, input_size, device=dev)
    with torch.enable_grad(), FlopCounterMode(display=False, custom_mapping=_extra_flop_formulas()) as fc:
        model(x)
    model.train(was)
    return fc.get_total_flops() / batch


def latency_ms(
    fn: Callable[[], object],
    warmup: int = 5,
    reps: int = 20,
    min_seconds: float = 0.0,
    max_seconds: float = 0.0,
    min_reps: int = 3,
) -> dict[str, float]:
    """Median / p90 wall-clock milliseconds of ``fn()`` over ``reps`` runs after ``warmup`` runs.

    ``max_seconds`` > 0 caps the timed loop for slow models: it stops once ``min_reps`` runs are done
    and the time is up (the number of runs actually timed is returned as ``reps``).
    """
    for _ in range(warmup):
        fn()
    times = []
    t_start = time.perf_counter()
    while len(times) < reps or (time.perf_counter() - t_start) < min_seconds:
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1000)
        if len(times) > 10 * reps:
            break
        if max_seconds and len(times) >= min_reps and (time.perf_counter() - t_start) >= max_seconds:
            break
    times.sort()
    return {
        "median_ms": statistics.median(times),
        "p90_ms": times[int(0.9 * (len(times) - 1))],
        "min_ms": times[0],
        "reps": len(times),
    }


@torch.no_grad()
def model_stats(model: nn.Module, input_size: int, batch: int = 1, reps: int = 20) -> dict[str, float]:
    model.eval()
    dev = next(model.parameters()).device
    x = torch.randn(batch, 3, input_size, input_size, device=dev)
    f = flops(model, input_size)
    lat = latency_ms(lambda: model(x), reps=reps)
    return {
        "params": count_params(model),
        "params_m": count_params(model) / 1e6,
        "gflops": f / 1e9,
        "gmacs": f / 2e9,
        "input_size": input_size,
        "batch": batch,
        "latency_ms": lat["median_ms"],
        "latency_p90_ms": lat["p90_ms"],
        "threads": torch.get_num_threads(),
    }
