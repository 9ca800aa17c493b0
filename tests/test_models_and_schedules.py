"""Models (shapes, parameter counts) and lr schedules (against closed forms and torch's own)."""

from __future__ import annotations

import math

import pytest
import torch

from nas_cli.engine.schedules import Cosine, MultiStep, Schedule, Step, WarmRestarts
from nas_cli.models.cnn import SmallCNN
from nas_cli.models.mlp import MLP
from nas_cli.models.resnet import resnet18


def n_params(model) -> int:
    return sum(p.numel() for p in model.parameters())


def test_cifar_resnet18_has_the_standard_parameter_count():
    # The CIFAR ResNet-18 (3x3 stem, 10 classes) has 11,173,962 parameters.
    assert n_params(resnet18((3, 32, 32), 10, width=64)) == 11_173_962


@pytest.mark.parametrize("shape", [(1, 8, 8), (3, 32, 32), (1, 28, 28)])
def test_resnet18_any_channels_and_size_from_8(shape):
    model = resnet18(shape, 7, width=4)
    assert model(torch.randn(2, *shape)).shape == (2, 7)


def test_resnet18_rejects_tiny_inputs():
    with pytest.raises(ValueError, match="at least 8x8"):
        resnet18((1, 4, 4), 10)


def test_cnn_and_mlp_shapes():
    assert SmallCNN((1, 28, 28), 10)(torch.randn(3, 1, 28, 28)).shape == (3, 10)
    assert SmallCNN((3, 8, 8), 5, batchnorm=False)(torch.randn(3, 3, 8, 8)).shape == (3, 5)
    mlp = MLP((1, 8, 8), 10, width=16, depth=3)
    assert mlp(torch.randn(2, 1, 8, 8)).shape == (2, 10)
    assert n_params(mlp) == (64 * 16 + 16) + 2 * (16 * 16 + 16) + (16 * 10 + 10)


def lrs(schedule: Schedule, epochs: int, steps: int, base: float = 1.0) -> list[float]:
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=base)
    sched = schedule.build(opt, steps, epochs)
    out = []
    for _ in range(epochs * steps):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return out


def test_cosine_matches_torch_per_epoch():
    epochs = 6
    ours = lrs(Cosine(), epochs, steps=1, base=0.1)
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)
    ref = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs)
    theirs = []
    for _ in range(epochs):
        theirs.append(opt.param_groups[0]["lr"])
        opt.step()
        ref.step()
    assert ours == pytest.approx(theirs)


@pytest.mark.parametrize("every, steps", [("epoch", 3), ("step", 3)])
def test_warm_restarts_match_torchs_sgdr(every, steps):
    """ENAS's 10 + 20 + 40 epochs, against torch's CosineAnnealingWarmRestarts given each step's epoch."""
    epochs, base, low = 70, 0.05, 0.01
    ours = lrs(WarmRestarts(first_cycle=10, cycle_mult=2, min_factor=low, every=every), epochs, steps=steps, base=base)
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=base)
    ref = torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(opt, T_0=10, T_mult=2, eta_min=low * base)
    theirs = []
    for i in range(epochs * steps):
        ref.step(i // steps if every == "epoch" else i / steps)
        theirs.append(opt.param_groups[0]["lr"])
    assert ours == pytest.approx(theirs)
    restarts = [i // steps for i in range(1, epochs * steps) if ours[i] > ours[i - 1]]
    assert restarts == [10, 30]  # the lr jumps back up where each cycle ends


def test_step_multistep_and_warmup_follow_their_formulas():
    assert lrs(Step(step_size=2, gamma=0.5), 5, 1) == pytest.approx([1, 1, 0.5, 0.5, 0.25])
    assert lrs(MultiStep(milestones=[1, 3], gamma=0.1), 4, 1) == pytest.approx([1, 0.1, 0.1, 0.01])
    warm = lrs(Schedule(warmup_epochs=1), 2, steps=4)
    assert warm == pytest.approx([0.25, 0.5, 0.75, 1, 1, 1, 1, 1])
    cos = lrs(Cosine(warmup_epochs=1, min_factor=0.1), 3, steps=2)
    assert cos[:2] == pytest.approx([0.5, 1.0])
    assert cos[3] == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.25)))  # epoch 1.5 of 1 + 2
