"""Weight averaging: Polyak-Ruppert running mean of the iterates after each step, and EMA, by hand."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from nas_cli.engine.averaging import EMA
from nas_cli.errors import UserError


def toy_run(steps: int, decay, seed: int = 0):
    """A linear model with BatchNorm trained by SGD for ``steps`` steps, the average updated after
    each step as the trainer does; returns the model, the EMA and the iterates w_0..w_T."""
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 2))
    ema = EMA(model, decay)
    opt = torch.optim.SGD(model.parameters(), lr=0.3, momentum=0.5)
    iterates = [[p.detach().clone() for p in model.parameters()]]
    for _ in range(steps):
        x, y = torch.randn(8, 3), torch.randint(0, 2, (8,))
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
        ema.update(model)
        iterates.append([p.detach().clone() for p in model.parameters()])
    return model, ema, iterates


def test_polyak_after_one_step_is_the_first_iterate():
    model, ema, iterates = toy_run(1, "polyak")
    for avg, w1, w0 in zip(ema.module.parameters(), iterates[1], iterates[0], strict=True):
        assert torch.equal(avg, w1)
        assert not torch.equal(avg, w0)


@pytest.mark.parametrize("steps", [2, 7])
def test_polyak_is_the_mean_of_the_iterates_after_each_step(steps):
    model, ema, iterates = toy_run(steps, "polyak")
    for i, avg in enumerate(ema.module.parameters()):
        by_hand = sum(iterates[t][i] for t in range(1, steps + 1)) / steps  # w_1..w_T, not w_0
        torch.testing.assert_close(avg, by_hand, rtol=1e-6, atol=1e-7)
    # buffers (BatchNorm statistics) are the live model's
    for avg, live in zip(ema.module.buffers(), model.buffers(), strict=True):
        assert torch.equal(avg, live)


def test_polyak_resumes_from_its_state_dict_to_the_same_mean():
    model, ema, iterates = toy_run(3, "polyak")
    resumed = EMA(nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 2)), "polyak")
    resumed.load_state_dict(ema.state_dict())
    with torch.no_grad():  # one more iterate w_4
        for p in model.parameters():
            p.add_(0.1)
    ema.update(model)
    resumed.update(model)
    w4 = list(model.parameters())
    for avg, again, i in zip(ema.module.parameters(), resumed.module.parameters(), range(len(w4)), strict=True):
        by_hand = (iterates[1][i] + iterates[2][i] + iterates[3][i] + w4[i].detach()) / 4
        torch.testing.assert_close(avg, by_hand, rtol=1e-6, atol=1e-7)
        assert torch.equal(avg, again)


def test_ema_with_a_decay_starts_from_the_initial_weights():
    decay = 0.8
    model, ema, iterates = toy_run(4, decay)
    for i, avg in enumerate(ema.module.parameters()):
        by_hand = iterates[0][i]
        for t in range(1, 5):
            by_hand = decay * by_hand + (1 - decay) * iterates[t][i]
        torch.testing.assert_close(avg, by_hand, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("decay", [0.0, 1.0, 1.5, "mean"])
def test_bad_decay_is_a_user_error(decay):
    with pytest.raises(UserError, match="ema.decay must be in"):
        EMA(nn.Linear(2, 2), decay)
