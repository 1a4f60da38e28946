"""Image captioning: CLIP-distilled ShuffleNetV2 spatial encoder + LSTM with Bahdanau attention.

    from edgeclip.caption import load_captions, train_captioner, load_captioner, generate
    cs = load_captions("captions.txt", split="test")
    model, pp, _ = load_captioner("runs/caption_vi/captioner.pt")
    caps = generate(model, pp.torch_transform()(img)[None], beam=5)
"""

from .data import CaptionItem, CaptionSet, load_captions
from .decode import beam_decode, generate, greedy_decode
from .model import CaptionModelConfig, Captioner, build_captioner, load_captioner, save_captioner
from .vocab import Vocab, tokenize

__all__ = ["CaptionItem", "CaptionSet", "load_captions", "beam_decode", "generate", "greedy_decode",
           "CaptionModelConfig", "Captioner", "build_captioner", "load_captioner", "save_captioner", "Vocab",
           "tokenize", "train_captioner", "evaluate_captioner", "CaptionTrainConfig"]


def __getattr__(name):  # the trainer pulls in the engine (Lightning): import it on demand
    if name in ("train_captioner", "evaluate_captioner", "CaptionTrainConfig"):
        from . import train

        return getattr(train, name)
    raise AttributeError(name)
