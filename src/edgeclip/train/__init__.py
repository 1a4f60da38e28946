"""Training: the one Lightning Fabric loop (``engine``), the teacher-embedding cache, curation, and the
training tasks (reference teacher, distillation, EdgeVL pair distillation and QAT, captioner)."""
