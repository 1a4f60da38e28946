"""The int8 choice: the fastest variant within the fidelity gate, never one slower than fp32."""

from __future__ import annotations

from edgeclip.export.choose import choose

FP32 = {"batch1_ms": 10.0, "batch32_ms": 200.0}


def test_the_fastest_variant_within_the_gate_wins():
    v = {
        "a": {"batch1_ms": 6.0, "top1_agreement": 0.995},
        "b": {"batch1_ms": 5.0, "top1_agreement": 0.999},
        "c": {"batch1_ms": 4.0, "top1_agreement": 0.95},  # fastest, but fails the gate
    }
    pick = choose(FP32, v)
    assert pick["precision"] == "int8" and pick["variant"] == "b" and "2.00x" in pick["why"]


def test_a_variant_slower_than_fp32_is_never_the_default():
    v = {"a": {"batch1_ms": 12.0, "top1_agreement": 1.0}, "b": {"batch1_ms": 10.0, "top1_agreement": 1.0}}
    pick = choose(FP32, v)
    assert pick["precision"] == "fp32" and pick["variant"] is None and "slower: a, b" in pick["why"]


def test_failing_the_gate_everywhere_keeps_fp32():
    v = {"a": {"batch1_ms": 3.0, "top1_agreement": 0.5}}
    pick = choose(FP32, v, gate=0.99)
    assert pick["precision"] == "fp32" and "below the gate: a" in pick["why"]
