"""``reference-lit``: the offline reference teacher.

An image tower (any student backbone + projection) trained with a LiT objective (locked text tower)
against the frozen, real all-MiniLM-L6-v2 text encoder. It is saved as a checkpoint that
``load_teacher('reference-lit:/path/teacher.pt')`` (or just the path) loads like any CLIP teacher.
"""

from __future__ import annotations

from pathlib import Path

from edgeclip.core.checkpoint import read_checkpoint, save_checkpoint
from edgeclip.core.errors import CheckpointError
from edgeclip.core.io import sha256_file
from edgeclip.data.transforms import Preprocess
from edgeclip.models.base import CHECKPOINT_KINDS, Loaded, load_weights
from edgeclip.models.teachers.base import Teacher
from edgeclip.models.teachers.minilm import (
    TEXT_DIM,
    TEXT_MODEL_ID,
    shared_text_tower,
)

REFERENCE_FORMAT = "edgeclip-reference-lit/1"


def save_reference(tower, path: Path, preprocess: Preprocess, logit_scale: float, info: dict) -> None:
    save_checkpoint(
        path,
        REFERENCE_FORMAT,
        tower.state_dict(),
        tower_config=tower.config,
        preprocess=preprocess.to_dict(),
        text_model=TEXT_MODEL_ID,
        embed_dim=TEXT_DIM,
        logit_scale=logit_scale,
        info=info,
    )


@CHECKPOINT_KINDS.register(
    REFERENCE_FORMAT, help="reference-lit teacher: its image tower (the text tower is MiniLM)"
)
def reference_tower_from_checkpoint(ck: dict, path: Path) -> Loaded:
    from edgeclip.models.student import Student

    cfg = dict(ck["tower_config"])
    try:
        tower = Student(cfg.pop("arch"), cfg.pop("embed_dim"), **cfg)
    except (KeyError, TypeError) as e:
        raise CheckpointError(f"{path}: corrupt teacher tower config ({type(e).__name__}: {e})") from None
    load_weights(tower, ck["state_dict"], path, "reference teacher tower")
    info = {k: v for k, v in ck.items() if k != "state_dict"}
    return Loaded(tower.eval(), Preprocess.from_dict(ck["preprocess"]), info, "teacher-tower")


def load_reference(spec: str, device: str = "cpu") -> Teacher:
    path = Path(spec.split(":", 1)[1] if spec.startswith("reference-lit:") else spec)
    if not path.is_file():
        raise CheckpointError(
            f"reference teacher checkpoint not found: {path} (give --teacher the path of an existing one, e.g. "
            "the shipped models/flickr8k-teacher-resnet18-128.safetensors, or train one: edgeclip teacher train)"
        )
    tower, pp, ck = reference_tower_from_checkpoint(
        read_checkpoint(path, REFERENCE_FORMAT, "reference-lit teacher"), path
    )
    tower.to(device)
    # an fp16 copy (`edgeclip checkpoint convert --half`) answers to the id of the fp32 file it was made from:
    # the students distilled from that file name it, and its embeddings match it (cosine > 0.999, checked when
    # the lab ships it)
    src_hash = (ck.get("converted_from") or {}).get("sha256")
    wid = str(src_hash)[:16] if ck.get("stored_dtype") == "float16" and src_hash else sha256_file(path)[:16]
    text = shared_text_tower().to(device)
    return Teacher(
        spec=f"reference-lit:{path}",
        id=f"reference-lit:sha256:{wid}",
        image_encoder=tower,
        text_encoder=text,
        tokenizer=text.tokenize,
        preprocess=pp.torch_transform(),
        preprocess_desc=pp.describe(),
        image_size=pp.size,
        embed_dim=int(ck["embed_dim"]),
        logit_scale=float(ck["logit_scale"]),
        mean=pp.mean,
        std=pp.std,
        extra={"info": ck.get("info", {}), "arch": tower.arch},
        device=device,
        text_export=text.text_export,
    )
