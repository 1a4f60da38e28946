"""Measurement: parameters, FLOPs, latency (shared by the CLI, the demo and ``make bench``), and the
benchmark suite behind ``edgeclip bench`` / ``edgeclip report`` (speed, train_cost, fidelity, energy, report)."""

from .stats import count_params, flops, latency_ms, model_stats

__all__ = ["count_params", "flops", "latency_ms", "model_stats"]
