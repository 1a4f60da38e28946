"""One training loop for every task (reference teacher, distillation, EdgeVL, QAT, captioner): ``Trainer``.

It runs on Lightning Fabric, so ``devices=N, strategy='ddp'`` trains on several GPUs (or CPU
processes with gloo) without changes; AdamW + warmup/cosine schedule, channels_last (CPU and GPU), AMP on
GPU, gradient clipping, an atomic checkpoint every epoch and ``resume=True`` after a kill.
"""

from __future__ import annotations

import itertools
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
from edgeclip.core.errors import CheckpointError, EdgeClipError
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
    devices: int = 1  # processes (GPUs) per node
    num_nodes: int = 1  # nodes (torchrun --nnodes / SLURM): world size = devices x num_nodes
    strategy: str = "auto"
    accelerator: str = "auto"
    precision: str = "auto"  # auto: bf16-mixed/16-mixed on GPU, 32-true on CPU
    channels_last: bool = True
    num_workers: Any = (
        "auto"  # DataLoader worker processes; auto: 0 for in-memory data, else min(4, cores - 1)
    )
    pin_memory: Any = "auto"  # auto: when training on a GPU
    shuffle: bool = True  # False: the data's own order (reproducing a run across data paths)
    threads: int = 0  # torch threads on CPU (0 = leave as is)
    log_every: int = 50
    max_steps_per_epoch: int = 0  # 0 = full epoch (useful for equal step budgets)
    max_steps: int = 0  # a budget in optimizer steps: the epochs it takes are derived, the run stops there
    ema: float = (
        0.0  # decay of an exponential moving average of the weights (e.g. 0.999): the EMA copy is what
    )
    # the epoch hooks evaluate and what is saved; 0: off

    def __post_init__(self) -> None:
        """Budgets and sizes that cannot train are refused here, at config time, in one line."""
        bad = [
            (k, getattr(self, k), rule)
            for k, rule in (
                ("epochs", ">= 1"),
                ("batch_size", ">= 1"),
                ("devices", ">= 1"),
                ("num_nodes", ">= 1"),
                ("lr", ">= 0"),
                ("threads", ">= 0"),
                ("max_steps", ">= 0"),
                ("max_steps_per_epoch", ">= 0"),
                ("warmup_epochs", ">= 0"),
                ("grad_clip", ">= 0"),
                ("weight_decay", ">= 0"),
            )
            if not _holds(getattr(self, k), rule)
        ]
        if not (self.num_workers == "auto" or _holds(self.num_workers, ">= 0")):
            bad.append(("num_workers", self.num_workers, ">= 0 or auto"))
        if self.pin_memory not in ("auto", True, False):
            bad.append(("pin_memory", self.pin_memory, "auto, true or false"))
        if isinstance(self.ema, bool) or not isinstance(self.ema, (int, float)) or not 0 <= self.ema < 1:
            bad.append(("ema", self.ema, "in [0, 1) (0: off)"))
        if bad:
            k, v, rule = bad[0]
            raise EdgeClipError(f"train.{k} must be {rule}, got {v!r}")

    def workers_for(self, dataset) -> int:
        """The DataLoader workers for ``dataset``: as set, or (auto) none for tensors already in memory and
        min(4, cores - 1) for data that is decoded per sample (files, shards)."""
        if self.num_workers != "auto":
            return int(self.num_workers)
        if isinstance(dataset, torch.utils.data.TensorDataset):
            return 0
        return max(0, min(4, (os.cpu_count() or 1) - 1))


def _holds(v: Any, rule: str) -> bool:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return False
    return v >= 1 if rule == ">= 1" else v > 0 if rule == "> 0" else v >= 0


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
    if strategy == "auto" and cfg.devices * cfg.num_nodes > 1:
        strategy = "ddp"
    if strategy == "ddp" and accel == "cpu":
        from lightning.fabric.strategies import DDPStrategy

        strategy = DDPStrategy(process_group_backend="gloo")
    fabric = Fabric(
        accelerator=accel, devices=cfg.devices, num_nodes=cfg.num_nodes, strategy=strategy, precision=prec
    )
    return fabric


def cosine_lambda(total_steps: int, warmup_steps: int, min_ratio: float) -> Callable[[int], float]:
    def f(step: int) -> float:
        if warmup_steps and step < warmup_steps:
            return (step + 1) / warmup_steps
        t = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, t)))

    return f


StepFn = Callable[[nn.Module, Any], dict[str, torch.Tensor]]


class Task:
    """One training job, run by :class:`Trainer` (Lightning's build-your-own-trainer pattern).

    ``setup`` builds what the task trains (after the Trainer has seeded every RNG, so a fixed seed gives
    bit-identical weights) and sets ``model``, ``dataset`` and optionally ``collate_fn`` / ``params``;
    ``training_step`` returns ``{"loss": ..., other metrics}``; ``on_epoch_end`` may add to the epoch's record
    (``stop_training: True`` ends the run: early stopping); ``save`` writes the task's artefact.
    A ``fingerprint`` set in ``setup`` (teacher id, student config, data, loss, ...) is stored with the resume
    state, and resuming a folder that holds another run is refused in one line.
    """

    model: nn.Module
    dataset: Any
    collate_fn: Callable | None = None
    params: Any = None
    fingerprint: dict | None = None

    def setup(self, trainer: Trainer) -> None:
        raise NotImplementedError

    def training_step(self, model: nn.Module, batch: Any) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def on_epoch_end(self, model: nn.Module, epoch: int, record: dict) -> dict | None:
        return None

    def save(self, model: nn.Module, out_dir: Path, history: dict) -> None:
        return None


class FunctionTask(Task):
    """A task from a built model, a dataset and a step function (what ``fit`` takes)."""

    def __init__(
        self, model, dataset, step_fn: StepFn, save_fn=None, on_epoch_end=None, collate_fn=None, params=None
    ):
        self.model, self.dataset, self.step_fn = model, dataset, step_fn
        self.save_fn, self.epoch_fn, self.collate_fn, self.params = save_fn, on_epoch_end, collate_fn, params

    def setup(self, trainer: Trainer) -> None:
        return None

    def training_step(self, model, batch):
        return self.step_fn(model, batch)

    def on_epoch_end(self, model, epoch, record):
        return self.epoch_fn(model, epoch, record) if self.epoch_fn else None

    def save(self, model, out_dir, history):
        if self.save_fn is not None:
            self.save_fn(model, out_dir, history)


class Trainer:
    """The one loop, as small named steps: launch -> seed -> task.setup -> configure -> restore ->
    (train_epoch -> end_epoch -> save_state) per epoch -> sync_ranks -> finish.

    Writes ``out_dir/last.ckpt`` (resumable state, atomically) every epoch, ``history.json`` and, through
    ``task.save``, the task's artefact. ``cfg.max_steps`` is a budget in optimizer steps.
    """

    def __init__(
        self,
        cfg: TrainConfig,
        out_dir: str | Path,
        resume: bool = False,
        progress: bool = True,
        fabric=None,
        fingerprint: dict | None = None,
    ):
        """``fingerprint``: what makes this run this run (teacher id, student config, data, loss, ...); it is
        saved with the resume state, and resuming into a folder whose run differs is refused in one line."""
        self.cfg, self.out = cfg, Path(out_dir)
        self.fingerprint = json.loads(json.dumps(fingerprint, default=str)) if fingerprint else None
        self.resume, self.progress = resume, progress
        self.fabric = fabric
        self.history: dict[str, Any] = {}
        self.start_epoch = 0
        self.global_step = 0
        self.ema = None

    # ---- the steps
    def launch(self) -> None:
        self.out.mkdir(parents=True, exist_ok=True)
        self.fabric = self.fabric or make_fabric(self.cfg)
        if self.cfg.threads and self.fabric.device.type == "cpu":
            torch.set_num_threads(self.cfg.threads)
        self.fabric.launch()

    def seed(self) -> None:
        self.fabric.seed_everything(
            self.cfg.seed, verbose=False
        )  # the seed is in the run's config and history

    def configure(self, task: Task) -> None:
        cfg, fabric = self.cfg, self.fabric
        model = task.model
        if cfg.channels_last:  # on CPU too: a training step of MobileNetV3-L / EfficientNet-B0 at 160 px took
            # ~35 % less time here (ShuffleNetV2 ~10 %, ResNet-18 ~3 %); 4-D weights only, checkpoints stay contiguous
            model = model.to(memory_format=torch.channels_last)
        params = (
            task.params if task.params is not None else [p for p in model.parameters() if p.requires_grad]
        )
        opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
        ds = task.dataset
        self.iterable = isinstance(ds, torch.utils.data.IterableDataset)
        n = len(ds)
        if n < 2:
            raise EdgeClipError(
                "no training samples are left (every image unreadable, or none in the cache?)"
                if n == 0
                else "one training sample is not enough to train (batch statistics need at least 2)"
            )
        workers = cfg.workers_for(ds)
        pin = fabric.device.type == "cuda" if cfg.pin_memory == "auto" else bool(cfg.pin_memory)
        loader = torch.utils.data.DataLoader(
            ds,
            batch_size=cfg.batch_size,
            shuffle=cfg.shuffle and not self.iterable,
            drop_last=len(ds) > cfg.batch_size,
            num_workers=workers,
            collate_fn=task.collate_fn,
            persistent_workers=workers > 0,
            pin_memory=pin,
        )
        self.model, self.opt = fabric.setup(model, opt)
        self.ema = self._ema_copy() if cfg.ema else None
        self.loader = fabric.setup_dataloaders(loader)
        n_batches = len(self.loader) if not self.iterable else max(1, len(ds) // cfg.batch_size)
        self.steps_per_epoch = (
            n_batches if not cfg.max_steps_per_epoch else min(n_batches, cfg.max_steps_per_epoch)
        )
        self.epochs = math.ceil(cfg.max_steps / self.steps_per_epoch) if cfg.max_steps else cfg.epochs
        total = cfg.max_steps or self.steps_per_epoch * self.epochs
        warmup = int(cfg.warmup_epochs * self.steps_per_epoch)
        self.sched = torch.optim.lr_scheduler.LambdaLR(
            self.opt, cosine_lambda(total, warmup, cfg.min_lr_ratio)
        )
        self.history = {
            "config": asdict(cfg),
            "epochs": [],
            "world_size": fabric.world_size,
            "device": str(fabric.device),
            "torch_threads": torch.get_num_threads(),
            "data_workers": workers,
        }

    def _ema_copy(self):
        """The EMA of the weights (and buffers: BatchNorm statistics follow the same average)."""
        from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

        return AveragedModel(
            unwrap(self.model), multi_avg_fn=get_ema_multi_avg_fn(self.cfg.ema), use_buffers=True
        )

    @property
    def trained(self) -> nn.Module:
        """The model the epoch hooks evaluate and the task saves: the EMA copy when there is one."""
        return self.ema.module if self.ema is not None else self.model

    def restore(self) -> None:
        ck_path = self.out / "last.ckpt"
        if self.resume and ck_path.exists():
            self.check_fingerprint(ck_path)
            state = {
                "model": self.model,
                "optimizer": self.opt,
                "scheduler": self.sched.state_dict(),
                "epoch": 0,
                "history": {},
                **({"ema": self.ema} if self.ema is not None else {}),
            }
            try:  # plain data only (weights_only): no code runs from a checkpoint
                self.fabric.load(ck_path, state, weights_only=True)
            except pickle.UnpicklingError as e:
                raise unsafe_content_error(ck_path, e) from None
            except (RuntimeError, KeyError, ValueError) as e:
                first = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
                raise CheckpointError(
                    f"the resume state {ck_path} does not fit this run's model ({first}): use another --out"
                ) from None
            self.sched.load_state_dict(state["scheduler"])
            self.start_epoch = int(state["epoch"])
            self.history = state["history"] or self.history
            self.global_step = sum(int(e.get("steps", 0)) for e in self.history.get("epochs", []))
            self.fabric.print(f"resumed from {ck_path} at epoch {self.start_epoch}")
        elif self.resume:
            self.fabric.print(f"--resume: no checkpoint in {self.out}, starting fresh")

    def check_fingerprint(self, ck_path: Path) -> None:
        """Refuse to resume a folder that holds another run (other teacher, student, data or loss)."""
        if self.fingerprint is None:
            return
        from edgeclip.core.checkpoint import safe_torch_load

        theirs = (safe_torch_load(ck_path) or {}).get("fingerprint")
        if theirs is None or theirs == self.fingerprint:
            return
        k = next(
            k for k in sorted(set(theirs) | set(self.fingerprint)) if theirs.get(k) != self.fingerprint.get(k)
        )
        raise EdgeClipError(
            f"--resume: {self.out} holds another run ({k}: {theirs.get(k)!r} there, {self.fingerprint.get(k)!r} "
            "now); use another --out folder, or drop --resume to start over"
        )

    def optimizer_step(self, loss: torch.Tensor) -> None:
        self.opt.zero_grad(set_to_none=True)
        self.fabric.backward(loss)
        if self.cfg.grad_clip:
            self.fabric.clip_gradients(self.model, self.opt, max_norm=self.cfg.grad_clip)
        self.opt.step()
        self.sched.step()
        self.global_step += 1
        if self.ema is not None:
            self.ema.update_parameters(unwrap(self.model))

    def train_epoch(self, task: Task, epoch: int) -> dict[str, Any]:
        cfg = self.cfg
        self.model.train()
        sampler = getattr(self.loader, "sampler", None)
        if hasattr(sampler, "set_epoch"):
            sampler.set_epoch(epoch)
        torch.manual_seed(cfg.seed * 1000 + epoch)
        steps = self.steps_per_epoch
        if cfg.max_steps:
            steps = min(steps, cfg.max_steps - self.global_step)
        sums: dict[str, float] = {}
        n, te = 0, time.time()
        bar = None
        if self.progress and self.fabric.is_global_zero:
            from tqdm.auto import tqdm

            bar = tqdm(total=steps, desc=f"epoch {epoch + 1}/{self.epochs}", leave=False, mininterval=2.0)
        # islice: the loop never fetches a batch past the epoch's steps (a stream would lose it, and the
        # augmentations it drew, to the next epoch)
        for i, batch in enumerate(itertools.islice(self.loader, steps)):
            metrics = task.training_step(self.model, batch)
            self.optimizer_step(metrics["loss"])
            for k, v in metrics.items():
                sums[k] = sums.get(k, 0.0) + float(v.detach())
            n += 1
            if bar is not None:
                bar.update(1)
                if i % max(1, cfg.log_every) == 0:
                    bar.set_postfix(loss=f"{float(metrics['loss'].detach()):.4f}")
        if bar is not None:
            bar.close()
        return {
            "epoch": epoch + 1,
            **{k: v / max(1, n) for k, v in sums.items()},
            "seconds": time.time() - te,
            "lr": self.sched.get_last_lr()[0],
            "steps": n,
        }

    def end_epoch(self, task: Task, rec: dict[str, Any]) -> bool:
        """The task's epoch hook, the record in the history and the log; -> whether to stop."""
        rec.update(task.on_epoch_end(self.trained, rec["epoch"], rec) or {})
        stop = bool(rec.pop("stop_training", False))  # early stopping
        if stop:
            self.history["stopped_early_at"] = rec["epoch"]
        self.history["epochs"].append(rec)
        self.fabric.print(
            json.dumps({k: (round(v, 5) if isinstance(v, float) else v) for k, v in rec.items()})
        )
        return stop

    def save_state(self, epoch: int) -> None:
        tmp = self.out / ".last.ckpt.tmp"
        self.fabric.save(
            tmp,
            {
                "model": self.model,
                "optimizer": self.opt,
                "scheduler": self.sched.state_dict(),
                "epoch": epoch,
                "history": self.history,
                "fingerprint": self.fingerprint,
                **({"ema": self.ema} if self.ema is not None else {}),
            },
        )
        if self.fabric.is_global_zero:
            os.replace(tmp, self.out / "last.ckpt")  # atomic: a kill never leaves a half-written checkpoint
        self.fabric.barrier()

    def sync_ranks(self) -> None:
        """After DDP: one consistent model on every rank (BatchNorm statistics are per rank), and a weights
        digest per rank (identical digests prove the ranks stayed in sync)."""
        fabric = self.fabric
        if fabric.world_size <= 1:
            return
        with torch.no_grad():
            for b in unwrap(self.model).buffers():
                b.copy_(fabric.broadcast(b.detach().clone(), src=0))
        import hashlib

        h = hashlib.sha256()
        for k, v in sorted(unwrap(self.model).state_dict().items()):
            h.update(k.encode())
            h.update(v.detach().cpu().contiguous().numpy().tobytes())
        (self.out / f"rank{fabric.global_rank}.weights.sha256").write_text(h.hexdigest() + "\n")

    def finish(self, task: Task) -> None:
        if self.fabric.is_global_zero:
            task.save(unwrap(self.trained), self.out, self.history)
            write_json(self.out / "history.json", self.history)
        self.fabric.barrier()

    # ---- the loop
    def fit(self, task: Task) -> dict[str, Any]:
        self.launch()
        self.seed()
        task.setup(self)
        if self.fingerprint is None and task.fingerprint:
            self.fingerprint = json.loads(json.dumps(task.fingerprint, default=str))
        self.configure(task)
        self.restore()
        # the training time so far, kept in the checkpoint after every epoch: a run killed and resumed reports all
        # its finished epochs' time, not only the last process's
        base, t0 = self.history.get("train_seconds", 0.0), time.time()
        for epoch in range(self.start_epoch, self.epochs):
            if self.history.get("stopped_early_at"):  # a resumed run that had already stopped early
                break
            if self.cfg.max_steps and self.global_step >= self.cfg.max_steps:
                break
            stop = self.end_epoch(task, self.train_epoch(task, epoch))
            self.history["train_seconds"] = base + time.time() - t0
            self.save_state(epoch + 1)
            if stop:
                break
        self.history["train_seconds"] = base + time.time() - t0
        self.fabric.barrier()
        self.sync_ranks()
        self.finish(task)
        return self.history


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
    fingerprint: dict | None = None,
) -> dict[str, Any]:
    """Train a built ``model`` with ``step_fn(model, batch) -> {'loss': ..., other metrics}``: the
    :class:`Trainer` over a :class:`FunctionTask`. Returns the history dict."""
    task = FunctionTask(model, dataset, step_fn, save_fn, on_epoch_end, collate_fn, params)
    trainer = Trainer(cfg, out_dir, resume=resume, progress=progress, fabric=fabric, fingerprint=fingerprint)
    return trainer.fit(task)


def unwrap(model: nn.Module) -> nn.Module:
    """The user's module inside Fabric's wrapper (``_FabricModule.module`` is the original, never the DDP wrapper)."""
    return getattr(model, "module", model)
