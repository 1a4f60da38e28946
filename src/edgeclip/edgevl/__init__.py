"""EdgeVL: dual-modality distillation, automatic curation, and quantization-aware contrastive training to int8.

    from edgeclip.edgevl import open_pairs, curate, distill_pairs, qat_pairs, ptq_pairs, evaluate_pairs
    ps = open_pairs("rgbd/")                                    # rgbd/rgb/*.jpg + rgbd/depth/*.png
    ps = open_pairs("cifar10/train", derive={"mono": "luminance"})  # monochrome camera from RGB
"""

from .curate import apply_manifest, curate, load_manifest
from .evaluate import evaluate_pairs, exported_embedder, onnx_embedder, torch_embedder
from .model import PairStudent, load_pair_student, modality_student
from .pairs import ModalitySpec, PairError, PairSet, default_specs, load_pair, open_pairs, preload_pairs
from .train import (PairDataConfig, PairDistillConfig, QATConfig, distill_pairs, ptq_pairs, qat_pairs,
                    semi_hard_triplet)

__all__ = ["ModalitySpec", "PairError", "PairSet", "default_specs", "load_pair", "open_pairs", "preload_pairs",
           "curate", "load_manifest", "apply_manifest", "PairStudent", "load_pair_student", "modality_student",
           "PairDataConfig", "PairDistillConfig", "QATConfig", "distill_pairs", "qat_pairs", "ptq_pairs",
           "semi_hard_triplet", "evaluate_pairs", "torch_embedder", "onnx_embedder", "exported_embedder"]
