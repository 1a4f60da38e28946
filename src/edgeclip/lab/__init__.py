"""The lab: benchmarks (speed, training cost, fidelity, energy), the report, the demo and the experiment runner.
Stands on the library and the training layer; nothing below imports it."""
