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
