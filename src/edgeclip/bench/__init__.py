"""Measurement: parameters, FLOPs, latency (shared by the CLI, the demo and ``make bench``)."""

from .stats import count_params, flops, latency_ms, model_stats

__all__ = ["count_params", "flops", "latency_ms", "model_stats"]
