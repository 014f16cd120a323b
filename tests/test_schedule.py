"""The learning-rate schedule: warm-up then decay, applied to every optimiser, the same after a resume."""

import math

import pytest
import torch

from mmdlrm.config import TrainConfig
from mmdlrm.train import Schedule, lr_factor


def test_warmup_then_cosine_or_linear_decay_to_the_floor():
    cfg = TrainConfig(warmup_steps=4, lr_decay="cosine", min_lr_ratio=0.1, max_epochs=2)
    total = 24
    assert [lr_factor(cfg, s, total) for s in range(4)] == pytest.approx([0.25, 0.5, 0.75, 1.0])
    assert lr_factor(cfg, 4, total) == pytest.approx(1.0)
    middle = 4 + (total - 4) // 2
    assert lr_factor(cfg, middle, total) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert lr_factor(cfg, total, total) == pytest.approx(0.1) and lr_factor(cfg, total + 5, total) == pytest.approx(0.1)
    linear = TrainConfig(lr_decay="linear", max_epochs=2)
    assert [lr_factor(linear, s, 10) for s in (0, 5, 10)] == pytest.approx([1.0, 0.5, 0.0])
    assert lr_factor(TrainConfig(), 123, 10) == 1.0


def test_schedule_sets_every_group_from_the_configured_rates_never_from_the_current_ones():
    params = [torch.nn.Parameter(torch.zeros(1)), torch.nn.Parameter(torch.zeros(1))]
    optimizer = torch.optim.SGD([{"params": [params[0]], "lr": 0.1}, {"params": [params[1]], "lr": 0.02}])
    schedule = Schedule(optimizer, TrainConfig(lr_decay="linear", min_epochs=1, max_epochs=1), steps_per_epoch=10)
    schedule(5)
    assert [g["lr"] for g in optimizer.param_groups] == pytest.approx([0.05, 0.01])
    for group in optimizer.param_groups:  # as a resumed optimiser state leaves them
        group["lr"] = 123.0
    schedule(5)
    assert [g["lr"] for g in optimizer.param_groups] == pytest.approx([0.05, 0.01])
