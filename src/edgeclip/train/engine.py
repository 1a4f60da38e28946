"""One training loop for every trainer (reference teacher, distillation, EdgeVL, captioner).

It runs on Lightning Fabric, so ``devices=N, strategy='ddp'`` trains on several GPUs (or CPU
processes with gloo) without changes; AdamW + warmup/cosine schedule, AMP and channels_last on
GPU, gradient clipping, an atomic checkpoint every epoch and ``resume=True`` after a kill.
"""

from __future__ import annotations

import json
import math
import os
import pickle
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from edgeclip.core.checkpoint import unsafe_content_error
from edgeclip.core.io import write_json


@dataclass
class TrainConfig:
    epochs: int = 10
    batch_size: int = 128
    lr: float = 1e-3
    weight_decay: float = 0.05
    warmup_epochs: float = 0.5
    min_lr_ratio: float = 0.01
    grad_clip: float = 0.0
    seed: int = 0
    devices: int = 1
    strategy: str = "auto"
    accelerator: str = "auto"
    precision: str = "auto"  # auto: bf16-mixed/16-mixed on GPU, 32-true on CPU
    channels_last: bool = True
    num_workers: int = 0
    threads: int = 0  # torch threads on CPU (0 = leave as is)
    log_every: int = 50
    max_steps_per_epoch: int = 0  # 0 = full epoch (useful for equal step budgets)


def make_fabric(cfg: TrainConfig):
    from lightning.fabric import Fabric

    accel = cfg.accelerator
    if accel == "auto":
        accel = "cuda" if torch.cuda.is_available() else "cpu"
    prec = cfg.precision
    if prec == "auto":
        prec = (
            ("bf16-mixed" if torch.cuda.is_bf16_supported() else "16-mixed") if accel == "cuda" else "32-true"
        )
    strategy = cfg.strategy
    if strategy == "auto" and cfg.devices > 1:
        strategy = "ddp"
    if strategy == "ddp" and accel == "cpu":
        from lightning.fabric.strategies import DDPStrategy

        strategy = DDPStrategy(process_group_backend="gloo")
    fabric = Fabric(accelerator=accel, devices=cfg.devices, strategy=strategy, precision=prec)
    return fabric


def cosine_lambda(total_steps: int, warmup_steps: int, min_ratio: float) -> Callable[[int], float]:
    def f(step: int) -> float:
        if warmup_steps and step < warmup_steps:
            return (step + 1) / warmup_steps
        t = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, t)))

    return f


StepFn = Callable[[nn.Module, Any], dict[str, torch.Tensor]]


def fit(
    cfg: TrainConfig,
    model: nn.Module,
    dataset,
    step_fn: StepFn,
    out_dir: str | Path,
    *,
    resume: bool = False,
    save_fn: Callable[[nn.Module, Path, dict], None] | None = None,
    on_epoch_end: Callable[[nn.Module, int, dict], dict] | None = None,
    fabric=None,
    collate_fn=None,
    params=None,
    progress: bool = True,
) -> dict[str, Any]:
    """Train ``model`` with ``step_fn(model, batch) -> {'loss': ..., other metrics}``.

    Writes ``out_dir/last.ckpt`` (resumable state) every epoch, ``history.json`` and, via ``save_fn``,
    the final artefact. Returns the history dict.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    fabric = fabric or make_fabric(cfg)
    if cfg.threads and fabric.device.type == "cpu":
        torch.set_num_threads(cfg.threads)
    fabric.launch()
    fabric.seed_everything(cfg.seed + fabric.global_rank * 0)
    if cfg.channels_last and fabric.device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    params = params if params is not None else [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    iterable = isinstance(dataset, torch.utils.data.IterableDataset)
    loader = torch.utils.data.DataLoader(
        dataset,
        batch_size=cfg.batch_size,
        shuffle=not iterable,
        drop_last=len(dataset) > cfg.batch_size,
        num_workers=cfg.num_workers,
        collate_fn=collate_fn,
        persistent_workers=cfg.num_workers > 0,
    )
    model, opt = fabric.setup(model, opt)
    loader = fabric.setup_dataloaders(loader)
    n_batches = len(loader) if not iterable else max(1, len(dataset) // cfg.batch_size)
    steps_per_epoch = n_batches if not cfg.max_steps_per_epoch else min(n_batches, cfg.max_steps_per_epoch)
    total = steps_per_epoch * cfg.epochs
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, cosine_lambda(total, int(cfg.warmup_epochs * steps_per_epoch), cfg.min_lr_ratio)
    )
    history: dict[str, Any] = {
        "config": asdict(cfg),
        "epochs": [],
        "world_size": fabric.world_size,
        "device": str(fabric.device),
        "torch_threads": torch.get_num_threads(),
    }
    start_epoch = 0
    ck_path = out / "last.ckpt"
    if resume and ck_path.exists():
        state = {"model": model, "optimizer": opt, "scheduler": sched.state_dict(), "epoch": 0, "history": {}}
        try:  # plain data only (weights_only): no code runs from a checkpoint
            fabric.load(ck_path, state, weights_only=True)
        except pickle.UnpicklingError as e:
            raise unsafe_content_error(ck_path, e) from None
        sched.load_state_dict(state["scheduler"])
        start_epoch = int(state["epoch"])
        history = state["history"] or history
        fabric.print(f"resumed from {ck_path} at epoch {start_epoch}")
    elif resume:
        fabric.print(f"--resume: no checkpoint in {out}, starting fresh")
    t0 = time.time()
    for epoch in range(start_epoch, cfg.epochs):
        if history.get("stopped_early_at"):  # a resumed run that had already stopped early
            break
        model.train()
        if hasattr(loader, "sampler") and hasattr(loader.sampler, "set_epoch"):
            loader.sampler.set_epoch(epoch)
        torch.manual_seed(cfg.seed * 1000 + epoch)
        sums: dict[str, float] = {}
        n = 0
        te = time.time()
        it = loader
        bar = None
        if progress and fabric.is_global_zero:
            from tqdm.auto import tqdm

            bar = tqdm(
                total=steps_per_epoch, desc=f"epoch {epoch + 1}/{cfg.epochs}", leave=False, mininterval=2.0
            )
        for i, batch in enumerate(it):
            if i >= steps_per_epoch:
                break
            metrics = step_fn(model, batch)
            loss = metrics["loss"]
            opt.zero_grad(set_to_none=True)
            fabric.backward(loss)
            if cfg.grad_clip:
                fabric.clip_gradients(model, opt, max_norm=cfg.grad_clip)
            opt.step()
            sched.step()
            for k, v in metrics.items():
                sums[k] = sums.get(k, 0.0) + float(v.detach())
            n += 1
            if bar is not None:
                bar.update(1)
                if i % max(1, cfg.log_every) == 0:
                    bar.set_postfix(loss=f"{float(loss):.4f}")
        if bar is not None:
            bar.close()
        rec = {
            "epoch": epoch + 1,
            **{k: v / max(1, n) for k, v in sums.items()},
            "seconds": time.time() - te,
            "lr": sched.get_last_lr()[0],
            "steps": n,
        }
        if on_epoch_end is not None:
            rec.update(on_epoch_end(model, epoch + 1, rec) or {})
        stop = bool(rec.pop("stop_training", False))  # on_epoch_end may ask to stop (early stopping)
        if stop:
            history["stopped_early_at"] = epoch + 1
        history["epochs"].append(rec)
        fabric.print(json.dumps({k: (round(v, 5) if isinstance(v, float) else v) for k, v in rec.items()}))
        tmp = out / ".last.ckpt.tmp"
        fabric.save(
            tmp,
            {
                "model": model,
                "optimizer": opt,
                "scheduler": sched.state_dict(),
                "epoch": epoch + 1,
                "history": history,
            },
        )
        if fabric.is_global_zero:
            os.replace(tmp, ck_path)  # atomic: a kill never leaves a half-written checkpoint
        fabric.barrier()
        if stop:
            break
    history["train_seconds"] = history.get("train_seconds", 0.0) + time.time() - t0
    fabric.barrier()
    if fabric.world_size > 1:
        # DDP keeps parameters in sync; BatchNorm running statistics are per rank after the last step:
        # take rank 0's so that every rank holds (and rank 0 saves) one consistent model
        with torch.no_grad():
            for b in _unwrap(model).buffers():
                b.copy_(fabric.broadcast(b.detach().clone(), src=0))
        # every rank records a digest of its weights: identical digests prove the ranks stayed in sync
        import hashlib

        h = hashlib.sha256()
        for k, v in sorted(_unwrap(model).state_dict().items()):
            h.update(k.encode())
            h.update(v.detach().cpu().contiguous().numpy().tobytes())
        (out / f"rank{fabric.global_rank}.weights.sha256").write_text(h.hexdigest() + "\n")
    if fabric.is_global_zero:
        if save_fn is not None:
            save_fn(_unwrap(model), out, history)
        write_json(out / "history.json", history)
    fabric.barrier()
    return history


def _unwrap(model: nn.Module) -> nn.Module:
    """The user's module inside Fabric's wrapper (``_FabricModule.module`` is the original, never the DDP wrapper)."""
    return getattr(model, "module", model)
