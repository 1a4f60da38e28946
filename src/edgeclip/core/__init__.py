"""The base every other layer stands on: errors, registries, strict configs, atomic I/O and checkpoints,
image decoding, prompt templates and machine facts. Imports nothing from the rest of edgeclip and no torch."""
