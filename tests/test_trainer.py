"""The one training loop: a Task's hooks in order, a max_steps budget, resume, and seeding before setup."""

from __future__ import annotations

import json

import torch

from edgeclip.train.engine import Task, TrainConfig, Trainer


class Linear(Task):
    def __init__(self):
        self.calls = []

    def setup(self, trainer):
        self.calls.append("setup")
        self.model = torch.nn.Linear(3, 1)  # built after the Trainer seeded: the seed fixes the init
        self.init = self.model.weight.detach().clone()
        g = torch.Generator().manual_seed(0)
        self.dataset = torch.utils.data.TensorDataset(torch.randn(40, 3, generator=g))

    def training_step(self, model, batch):
        return {"loss": model(batch[0]).pow(2).mean()}

    def on_epoch_end(self, model, epoch, record):
        self.calls.append(f"epoch{epoch}")
        return {"seen": record["steps"]}

    def save(self, model, out_dir, history):
        self.calls.append("save")


def test_hooks_budget_and_seeded_setup(tmp_path):
    cfg = TrainConfig(epochs=99, batch_size=8, max_steps=12, seed=5)  # 5 steps per epoch: 3 epochs, 5+5+2
    a = Linear()
    hist = Trainer(cfg, tmp_path / "a", progress=False).fit(a)
    assert a.calls == ["setup", "epoch1", "epoch2", "epoch3", "save"]
    assert [e["steps"] for e in hist["epochs"]] == [5, 5, 2] and hist["epochs"][0]["seen"] == 5
    assert json.loads((tmp_path / "a" / "history.json").read_text())["epochs"][-1]["epoch"] == 3
    b = Linear()
    Trainer(cfg, tmp_path / "b", progress=False).fit(b)
    assert torch.equal(a.init, b.init)  # same seed, same initial weights
    # resume: the budget is already spent, so nothing more runs and the history is kept
    c = Linear()
    hist2 = Trainer(cfg, tmp_path / "a", resume=True, progress=False).fit(c)
    assert [e["steps"] for e in hist2["epochs"]] == [5, 5, 2] and c.calls == ["setup", "save"]


class Recording(Linear):
    """Linear, recording the weights each step sees and the model it saves."""

    def setup(self, trainer):
        super().setup(trainer)
        self.seen: list[torch.Tensor] = []

    def training_step(self, model, batch):
        self.seen.append(model.weight.detach().clone())
        return super().training_step(model, batch)

    def save(self, model, out_dir, history):
        self.saved = model.weight.detach().clone()


def test_ema_of_the_weights_is_evaluated_saved_and_resumed(tmp_path):
    """train.ema: the saved model is the exponential moving average of the weights after every step (the same
    recursion torch's AveragedModel documents: the first step's weights, then decay * ema + (1 - decay) * w); a run
    killed after epoch 1 and resumed saves the same average as one never killed."""
    import pytest

    from edgeclip.core.errors import EdgeClipError

    plain = Recording()
    Trainer(TrainConfig(epochs=2, batch_size=8, seed=3), tmp_path / "p", progress=False).fit(plain)
    ws = plain.seen[1:] + [plain.saved]  # the weights after each optimizer step
    want = ws[0]
    for w in ws[1:]:
        want = 0.9 * want + 0.1 * w
    ema = Recording()
    Trainer(TrainConfig(epochs=2, batch_size=8, seed=3, ema=0.9), tmp_path / "e", progress=False).fit(ema)
    assert torch.allclose(ema.saved, want, atol=1e-6) and not torch.allclose(ema.saved, plain.saved)
    # killed in epoch 2 (after epoch 1's checkpoint), then resumed: the average goes on from the checkpoint

    class Dying(Recording):
        def on_epoch_end(self, model, epoch, record):
            if epoch == 2:
                raise KeyboardInterrupt
            return super().on_epoch_end(model, epoch, record)

    with pytest.raises(KeyboardInterrupt):
        Trainer(TrainConfig(epochs=2, batch_size=8, seed=3, ema=0.9), tmp_path / "r", progress=False).fit(
            Dying()
        )
    again = Recording()
    Trainer(
        TrainConfig(epochs=2, batch_size=8, seed=3, ema=0.9), tmp_path / "r", resume=True, progress=False
    ).fit(again)
    assert torch.allclose(again.saved, ema.saved, atol=1e-6)
    with pytest.raises(EdgeClipError, match="train.ema"):
        TrainConfig(ema=1.0)


def test_a_resumed_run_reports_the_time_of_every_finished_epoch(tmp_path):
    """train_seconds is kept in the checkpoint after each epoch: a run killed in its third epoch and resumed
    reports the first two epochs' time too, not only the last process's (the lab records stage minutes)."""
    import time

    import pytest

    class Slow(Linear):
        def training_step(self, model, batch):
            time.sleep(0.02)
            return super().training_step(model, batch)

    class Dying(Slow):
        def on_epoch_end(self, model, epoch, record):
            if epoch == 3:
                raise KeyboardInterrupt
            return super().on_epoch_end(model, epoch, record)

    cfg = TrainConfig(epochs=3, batch_size=8, seed=0)
    with pytest.raises(KeyboardInterrupt):
        Trainer(cfg, tmp_path / "r", progress=False).fit(Dying())
    h = Trainer(cfg, tmp_path / "r", resume=True, progress=False).fit(Slow())
    epochs = sum(e["seconds"] for e in h["epochs"])
    assert len(h["epochs"]) == 3 and h["train_seconds"] >= 0.9 * epochs and h["train_seconds"] > 0.25
