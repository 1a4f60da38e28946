"""The captioner: ShuffleNetV2 spatial encoder (49 x 512) + LSTM(512) with Bahdanau attention.

Encoder: a :class:`~edgeclip.models.Student` with ``keep_grid=True`` gives the (B, 1024, 7, 7) grid at
224 px; a reshape-and-project maps it to 49 locations x 512 features. The student's own head maps the
pooled feature to the teacher's embedding (the alpha * MSE distillation target).

Decoder (one step): word embedding -> LSTMCell(512) -> additive (Bahdanau) attention of the new hidden
state over the 49 locations -> [h; context] -> tanh bottleneck -> logits tied to the word embedding.
Attention on the current state ("spatial attention", Lu et al. 2017) keeps the LSTM input small, which
is what keeps the whole model under 4 M parameters.

The encoder and the single decoder step are separate modules (:class:`CaptionEncoder`,
:class:`DecoderStep`) so that both export to ONNX and decoding is shared by torch and ONNX Runtime.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from edgeclip.core.checkpoint import read_checkpoint, save_checkpoint
from edgeclip.core.errors import CheckpointError
from edgeclip.data.transforms import Preprocess
from edgeclip.data.vocab import PAD_ID, Vocab
from edgeclip.models.base import CHECKPOINT_KINDS, MODEL_KINDS, Loaded
from edgeclip.models.student import Student, create_student
from edgeclip.runtime.decode import Decoding

CAPTIONER_FORMAT = "edgeclip-captioner/1"


@dataclass
class CaptionModelConfig:
    arch: str = "shufflenet_v2_x1_0"
    img_size: int = 224
    feat_dim: int = 512  # per-location feature after the reshape-and-project
    hidden: int = 512  # LSTM size
    embed: int = 128  # word embedding (tied with the output layer)
    att_dim: int = 128
    dropout: float = 0.3
    teacher_dim: int = 512  # the teacher's embedding size (distillation head)


class CaptionEncoder(nn.Module):
    """image -> (features (B,L,F), attention keys (B,L,A), h0 (B,H), c0 (B,H))."""

    def __init__(self, student: Student, cfg: CaptionModelConfig):
        super().__init__()
        self.student = student
        self.proj = nn.Linear(student.feat_dim, cfg.feat_dim)
        self.att_enc = nn.Linear(cfg.feat_dim, cfg.att_dim)
        if cfg.hidden != cfg.feat_dim:
            raise CheckpointError(
                f"hidden ({cfg.hidden}) must equal feat_dim ({cfg.feat_dim}): h0 is the mean feature"
            )

    def features(self, grid: torch.Tensor):
        B, C = grid.shape[:2]
        feats = F.relu(self.proj(grid.reshape(B, C, -1).transpose(1, 2)))  # (B, H*W, F)
        h0 = torch.tanh(feats.mean(1))  # parameter-free initial state: the budget is 4 M parameters
        return feats, self.att_enc(feats), h0, torch.zeros_like(h0)

    def forward(self, x: torch.Tensor):
        return self.features(self.student.grid(x))


class DecoderStep(nn.Module):
    """(word (N,), h, c, feats, keys) -> (log-probs (N,V), h, c, attention (N,L))."""

    def __init__(self, vocab_size: int, cfg: CaptionModelConfig):
        super().__init__()
        self.embed = nn.Embedding(vocab_size, cfg.embed, padding_idx=PAD_ID)
        self.lstm = nn.LSTMCell(cfg.embed, cfg.hidden)
        self.att_dec = nn.Linear(cfg.hidden, cfg.att_dim, bias=False)
        self.att_v = nn.Linear(cfg.att_dim, 1, bias=False)
        self.drop = nn.Dropout(cfg.dropout)
        self.out = nn.Linear(cfg.hidden + cfg.feat_dim, cfg.embed)
        self.out_bias = nn.Parameter(torch.zeros(vocab_size))

    def logits(self, word, h, c, feats, keys):
        h, c = self.lstm(self.embed(word), (h, c))
        e = self.att_v(torch.tanh(keys + self.att_dec(h).unsqueeze(1))).squeeze(-1)  # (N, L)
        a = torch.softmax(e, dim=-1)
        ctx = torch.bmm(a.unsqueeze(1), feats).squeeze(1)
        z = torch.tanh(self.out(self.drop(torch.cat([h, ctx], -1))))
        return F.linear(self.drop(z), self.embed.weight, self.out_bias), h, c, a

    def forward(self, word, h, c, feats, keys):
        lg, h, c, a = self.logits(word, h, c, feats, keys)
        return torch.log_softmax(lg, dim=-1), h, c, a


class Captioner(nn.Module):
    def __init__(self, vocab: Vocab, cfg: CaptionModelConfig, weights: str | None = None):
        super().__init__()
        self.cfg = cfg
        self.vocab = vocab
        student = create_student(
            cfg.arch, cfg.teacher_dim, img_size=cfg.img_size, keep_grid=True, head_hidden=0, weights=weights
        )
        self.encoder = CaptionEncoder(student, cfg)
        self.decoder = DecoderStep(len(vocab), cfg)

    @property
    def student(self) -> Student:
        return self.encoder.student

    def encode(self, x: torch.Tensor, with_embedding: bool = False):
        """Encoder state; with ``with_embedding`` also the pooled feature projected to the teacher's space."""
        g = self.student.grid(x)
        state = self.encoder.features(g)
        if with_embedding:
            return state, self.student.head(g.mean(dim=(2, 3)))
        return state

    def forward(self, x: torch.Tensor, tokens: torch.Tensor, captions_per_image: int = 1, dense: int = 0):
        """Teacher forcing. ``tokens`` (B*k, T) starts with <bos>;
        returns (logits (B*k, T-1, V), teacher-space emb (B, D)), and with ``dense`` = n also the student's
        dense map in the teacher's space (B, n*n, D) (the spatial distillation term's input).

        Each image is encoded once and shared by its ``captions_per_image`` captions.
        """
        g = self.student.grid(x)
        state = self.encoder.features(g)
        emb = self.student.head(g.mean(dim=(2, 3)))
        if captions_per_image > 1:
            state = tuple(t.repeat_interleave(captions_per_image, 0) for t in state)
        logits = self.teacher_forced(state, tokens)
        return (logits, emb, self.student.dense(g, dense)) if dense else (logits, emb)

    def teacher_forced(self, state, tokens: torch.Tensor) -> torch.Tensor:
        """Next-word logits (N, T-1, V) for ``tokens`` (N, T) given one encoder state row per caption."""
        feats, keys, h, c = state
        outs = []
        for t in range(tokens.shape[1] - 1):
            lg, h, c, _ = self.decoder.logits(tokens[:, t], h, c, feats, keys)
            outs.append(lg)
        return torch.stack(outs, 1)

    def param_counts(self) -> dict[str, int]:
        n = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
        st = self.student
        return {
            "total": n(self),
            "encoder_backbone": n(st.backbone),
            "encoder_projection": n(self.encoder) - n(st),
            "distill_head": n(st.head),
            "decoder": n(self.decoder),
            "inference": n(self) - n(st.head),
        }


def init_encoder_from_student(model: Captioner, path: str | Path) -> dict[str, Any]:
    """Start the encoder from a distilled edgeclip student (e.g. the foundation lab's CLIP-distilled ShuffleNetV2).

    The backbone weights are copied (architecture must match; ``small_input``/``stem_stride`` are not weights, so
    a 32-px CIFAR student initialises a 224-px encoder). The distillation head is copied too when its shape fits
    (same teacher size and head), else it stays freshly initialised. Returns what was loaded (recorded in runs).
    """
    from edgeclip.core.io import sha256_file
    from edgeclip.models.student import load_student

    st, _, ck = load_student(path)
    arch = st.config["arch"]
    if arch != model.cfg.arch:
        raise CheckpointError(f"init {path}: a {arch} student cannot initialise a {model.cfg.arch} encoder")
    model.student.backbone.load_state_dict(st.backbone.state_dict())
    head_sd = st.head.state_dict()
    mine = model.student.head.state_dict()
    head = set(head_sd) == set(mine) and all(head_sd[k].shape == mine[k].shape for k in mine)
    if head:
        model.student.head.load_state_dict(head_sd)
    return {
        "checkpoint": str(path),
        "sha256": sha256_file(path),
        "arch": arch,
        "head_loaded": head,
        "student_config": st.config,
        "teacher": (ck.get("teacher") or {}).get("id"),
    }


def build_captioner(
    vocab: Vocab, cfg: CaptionModelConfig | dict[str, Any], weights: str | None = None
) -> Captioner:
    if isinstance(cfg, dict):
        from edgeclip.core.config import build_dataclass

        cfg = build_dataclass(CaptionModelConfig, cfg)
    return Captioner(vocab, cfg, weights=weights)


def save_captioner(
    model: Captioner,
    path: str | Path,
    preprocess: Preprocess,
    teacher: dict | None = None,
    extra: dict | None = None,
) -> None:
    """Atomic checkpoint with everything needed to rebuild it: config, vocabulary, preprocessing, teacher."""
    save_checkpoint(
        path,
        CAPTIONER_FORMAT,
        model.state_dict(),
        config=asdict(model.cfg),
        vocab=model.vocab.to_dict(),
        preprocess=preprocess.to_dict(),
        teacher=teacher,
        extra=extra or {},
    )


@CHECKPOINT_KINDS.register(CAPTIONER_FORMAT, help="captioner (ShuffleNetV2 grid encoder + LSTM/attention)")
def captioner_from_checkpoint(ck: dict, path: Path) -> Loaded:
    vocab = Vocab.from_dict(ck["vocab"])
    model = build_captioner(vocab, ck["config"])
    try:
        model.load_state_dict(ck["state_dict"])
    except RuntimeError as e:
        raise CheckpointError(
            f"{path}: weights do not fit the saved config/vocabulary: {str(e).splitlines()[0]}"
        ) from None
    info = {k: v for k, v in ck.items() if k != "state_dict"}
    return Loaded(model.eval(), Preprocess.from_dict(ck["preprocess"]), info, "captioner")


MODEL_KINDS.register("captioner", help="build_captioner(vocab, config)")(build_captioner)


def load_captioner(path: str | Path, map_location: str = "cpu") -> Loaded:
    """(captioner in eval mode, preprocessing, checkpoint info); CheckpointError for anything else."""
    return captioner_from_checkpoint(
        read_checkpoint(path, CAPTIONER_FORMAT, "captioner", map_location), Path(path)
    )


class TorchCaptioner:
    """A captioner checkpoint as an :class:`edgeclip.runtime.captioner.ImageCaptioner` (for the captioning loop)."""

    def __init__(self, path: str | Path, decoding: Decoding | None = None):
        self.model, self.pp, self.info = load_captioner(path)
        self.transform = self.pp.torch_transform()
        self.decoding = decoding or Decoding()

    def prepare(self, image) -> torch.Tensor:
        return self.transform(image)

    @torch.no_grad()
    def caption_prepared(self, xs: list) -> list[str]:
        from edgeclip.models.decode import generate

        return generate(self.model, torch.stack(xs), self.decoding)
