"""EdgeVL (label-free RGB + depth/IR students, then int8), one stage per module:

- :mod:`.data`: the paired data every stage prepares, and the mixed-batch distillation term;
- :mod:`.distill`: stage 1, dual-modality distillation (:func:`distill_pairs`);
- :mod:`.qat`: stage 2, quantization-aware training with the semi-hard triplet loss (:func:`qat_pairs`);
- :mod:`.ptq`: the post-training int8 baseline (:func:`run_ptq`).
"""

from edgeclip.train.edgevl.data import PairDataConfig, Prepared, kd_terms, modality_batch, prepare_pairs
from edgeclip.train.edgevl.distill import PairDistillConfig, PairDistillTask, distill_pairs
from edgeclip.train.edgevl.ptq import PTQConfig, ptq_pairs, run_ptq
from edgeclip.train.edgevl.qat import (
    QATConfig,
    QATTask,
    embedding_bank,
    export_int8_onnx,
    qat_pairs,
    quant_stem,
    vocabulary_embeddings,
)

__all__ = [
    "PTQConfig",
    "PairDataConfig",
    "PairDistillConfig",
    "PairDistillTask",
    "Prepared",
    "QATConfig",
    "QATTask",
    "distill_pairs",
    "embedding_bank",
    "export_int8_onnx",
    "kd_terms",
    "modality_batch",
    "prepare_pairs",
    "ptq_pairs",
    "qat_pairs",
    "quant_stem",
    "run_ptq",
    "vocabulary_embeddings",
]
