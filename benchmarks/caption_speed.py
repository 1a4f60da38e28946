"""Captioner speed on this CPU, independent of training: the worst case of decoding.

A captioner with the lab architecture (configs/caption_vi.yaml) and the vi-captions vocabulary (train split,
min count 5) is built with seeded random weights. Untrained, it almost never emits <eos>, so greedy and
beam search run all ``max_len`` (20) steps for every image: decoding does the most work it can do, and a
trained model (whose captions end earlier) is at least as fast. The encoder's cost does not depend on
the weights. Measured end to end as in the lab (normalisation + encoder + decoding; images already decoded
to 224 px uint8), greedy and beam 5, batch 1 and 32, 2 torch threads.

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/caption_speed.py   # -> benchmarks/results/caption_speed.json

Run it on an idle machine: the JSON records the load average before and after.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402

from edgeclip.core.config import load_config  # noqa: E402
from edgeclip.core.env import machine_info, shared_data_dir  # noqa: E402
from edgeclip.core.io import write_json  # noqa: E402
from edgeclip.data.captions import load_captions  # noqa: E402
from edgeclip.data.memory import preload  # noqa: E402
from edgeclip.data.transforms import CLIP_MEAN, CLIP_STD, Preprocess  # noqa: E402
from edgeclip.data.vocab import Vocab  # noqa: E402
from edgeclip.models.captioner import build_captioner  # noqa: E402
from lab_caption import model_cost, throughput  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default=str(ROOT / "src" / "edgeclip" / "configs" / "caption_vi.yaml"))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "caption_speed.json"))
    ap.add_argument("--note", default="", help="recorded in the JSON (e.g. how the machine was kept idle)")
    args = ap.parse_args(argv)

    cfg = load_config(args.config)
    data = shared_data_dir() / "vi-captions" / "captions.txt"
    if not data.is_file():
        raise SystemExit(f"vi-captions not found at {data} (set EDGECLIP_SHARED_DATA)")
    train = load_captions(data, split="train")
    vocab = Vocab.build(train.all_captions(), min_count=int(cfg["vocab"]["min_count"]))
    torch.manual_seed(0)
    model = build_captioner(vocab, cfg["model"]).eval()
    size = int(cfg["model"]["img_size"])
    pp = Preprocess(size=size, mean=CLIP_MEAN, std=CLIP_STD)
    test = load_captions(data, split="test")
    x, _, _ = preload([it.record() for it in test.items[:32]], size, progress=False)
    load_before = os.getloadavg()
    res = throughput(model, x, pp, threads=args.threads)
    out = {
        "what": "captioner end-to-end images/s on CPU, untrained weights = every caption decodes max_len=20 steps "
        "(worst case; a trained model stops earlier)",
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "command": "OMP_NUM_THREADS=2 python benchmarks/caption_speed.py",
        "vocab_size": len(vocab),
        "max_len": 20,
        "config": Path(args.config).name,
        "note": args.note,
        "throughput_cpu": res,
        "load_average_before": load_before,
        "targets": {
            "beam5_ge_30_images_per_s_batch32": res["beam5_batch32"]["images_per_s"] >= 30,
            "beam5_ge_30_images_per_s_batch1": res["beam5_batch1"]["images_per_s"] >= 30,
        },
        "cost": model_cost(model),
        "machine": machine_info(),
    }
    write_json(args.out, out)
    print(
        {
            k: round(v["images_per_s"], 1)
            for k, v in res.items()
            if isinstance(v, dict) and "images_per_s" in v
        }
    )


if __name__ == "__main__":
    main()
