"""search-rl reward=shared: ENAS's macro space, its weight-shared network, its controller's REINFORCE step, the
search's exact resume, and the CIFAR-10 preset."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from helpers import compose_task, summary
from hydra.core.global_hydra import GlobalHydra

from nas_cli.errors import UserError
from nas_cli.models.arch import ArchNet, FactorizedReduce, check_layers, load_arch
from nas_cli.nas.rl.controllers.reinforce import Reinforce
from nas_cli.nas.rl.shared import SharedNet
from nas_cli.nas.rl.spaces import ENAS_OPS, EnasMacroSpace
from nas_cli.runs import checkpoint
from nas_cli.runs.signals import Interrupted

# a search of seconds: 3 layers of 8 channels on 200 digits, 2 epochs of 5 controller steps
TINY = [
    "reward=shared",
    "space=enas_macro",
    "space.layers=3",
    "space.width=8",
    "data.subset=200",
    "enas.epochs=2",
    "enas.controller_steps=5",
    "enas.final_samples=3",
    "device=cpu",
    "progress=false",
]
TIMING = ["epoch_time_s", "samples_per_s"]


# -- the space ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("reductions", [[], [1]])
def test_samples_are_valid_architectures_that_build_and_read_back(reductions):
    space = EnasMacroSpace(layers=4, width=4, reductions=reductions)
    rng = np.random.default_rng(0)
    for n in range(30):
        choice = space.sample_choice(rng)
        arch = space.to_arch(choice)
        check_layers(arch)  # what model.arch=... accepts
        assert load_arch(arch) == arch and space.from_arch(arch) == choice
        shape = [(1, 8, 8), (3, 5, 7), (2, 1, 1)][n % 3]
        assert ArchNet(arch, shape, 7)(torch.randn(2, *shape)).shape == (2, 7)
        mutated = space.from_arch(space.mutate(arch, rng))  # still a choice of this space
        assert sum(a != b for a, b in zip(mutated, choice)) == 1
    ops = [layer["op"] for _ in range(200) for layer in space.sample_choice(rng)]
    assert set(ops) == set(ENAS_OPS)


def test_a_choice_as_layers():
    space = EnasMacroSpace(layers=3, width=6)
    choice = [{"op": "sep5x5", "skips": []}, {"op": "avgpool3x3", "skips": [0]}, {"op": "conv3x3", "skips": [0, 1]}]
    conv = {"type": "conv", "filters": 6, "sh": 1, "sw": 1}
    assert space.to_arch(choice) == [
        {**conv, "kh": 3, "kw": 3, "inputs": []},  # the stem
        {"type": "sep", "filters": 6, "kh": 5, "kw": 5, "inputs": [0]},
        {"type": "pool", "kernel": 3, "stride": 1, "mode": "avg", "padding": "same", "inputs": [1]},
        {**conv, "kh": 1, "kw": 1, "inputs": [1, 2]},  # layer 1's merge: skip from layer 0, then its operation
        {**conv, "kh": 3, "kw": 3, "inputs": [3]},
        {**conv, "kh": 1, "kw": 1, "inputs": [1, 3, 4]},
    ]
    with pytest.raises(UserError, match="earlier layers"):
        space.to_arch([{"op": "sep5x5", "skips": [0]}, *choice[1:]])

    reducing = EnasMacroSpace(layers=3, width=6, reductions=[0])  # halve after layer 0: its output, read on
    arch = reducing.to_arch(choice)
    assert arch == [
        {**conv, "kh": 3, "kw": 3, "inputs": []},
        {"type": "sep", "filters": 6, "kh": 5, "kw": 5, "inputs": [0]},
        {"type": "reduce", "filters": 6, "inputs": [1]},  # layer 0, halved: what layers 1 and 2 read
        {"type": "pool", "kernel": 3, "stride": 1, "mode": "avg", "padding": "same", "inputs": [2]},
        {**conv, "kh": 1, "kw": 1, "inputs": [2, 3]},
        {**conv, "kh": 3, "kw": 3, "inputs": [4]},
        {**conv, "kh": 1, "kw": 1, "inputs": [2, 4, 5]},
    ]
    assert reducing.from_arch(arch) == choice
    with pytest.raises(UserError, match="not one of this enas_macro space"):
        space.from_arch(arch)
    with pytest.raises(UserError, match="not one of this enas_macro space"):
        reducing.from_arch(space.to_arch(choice))
    with pytest.raises(UserError, match="space.reductions"):
        EnasMacroSpace(layers=3, reductions=[2])


def test_factorized_reduction_takes_the_even_and_the_odd_pixels():
    """With unit 1x1 weights and BatchNorm at its initial running statistics, the two halves are the input's
    even-indexed pixels and its odd-indexed ones, the far edge of an odd side padded with zeros."""
    layer = FactorizedReduce(1, 2).eval()
    layer.even.weight.data.fill_(1.0)
    assert layer.odd is not None
    layer.odd.weight.data.fill_(1.0)
    x = torch.arange(25.0).reshape(1, 1, 5, 5)
    out = layer(x) * (1 + layer.bn.eps) ** 0.5
    torch.testing.assert_close(out[0, 0], x[0, 0, ::2, ::2])
    odd = torch.tensor([[6.0, 8.0, 0.0], [16.0, 18.0, 0.0], [0.0, 0.0, 0.0]])
    torch.testing.assert_close(out[0, 1], odd)


@pytest.mark.parametrize("reductions", [[], [0, 2]])
def test_shared_network_computes_the_childs_own_network(reductions):
    """With the shared weights copied into it, the child that arch.py builds gives the very same outputs."""
    torch.manual_seed(0)
    space = EnasMacroSpace(layers=4, width=4, reductions=reductions)
    net = SharedNet(space, (1, 8, 8), 10).train()
    rng = np.random.default_rng(3)
    x = torch.randn(5, 1, 8, 8)
    for _ in range(6):
        choice = space.sample_choice(rng)
        child = ArchNet(space.to_arch(choice), (1, 8, 8), 10).train()  # batch statistics, as the shared net's
        modules = iter(child.layers)
        next(modules).load_state_dict(net.stem.state_dict(), strict=False)
        for i, layer in enumerate(choice):
            next(modules).load_state_dict(net.ops[i][layer["op"]].state_dict(), strict=False)
            if layer["skips"]:
                conv, bn, _ = next(modules)
                w = space.width
                blocks = [*sorted(layer["skips"]), i]
                conv.weight.data = torch.cat([net.merge[i].weight[:, b * w : (b + 1) * w] for b in blocks], 1)
                bn.load_state_dict(net.merge_bn[i].state_dict(), strict=False)
            for j in space.reduced_after(choice, i):
                next(modules).load_state_dict(net.reduce[f"{i}_{j}"].state_dict(), strict=False)
        assert next(modules, None) is None
        child.classifier.load_state_dict(net.classifier.state_dict())
        torch.testing.assert_close(child(x), net(x, choice), rtol=0, atol=1e-6)


# -- the controller ------------------------------------------------------------------------------------

ENAS = {"baseline_decay": 0.99, "skip_penalty": 0.8, "normalize": False, "reward_power": 1, "init_range": 0.1}


def explicit_log_prob(agent: Reinforce, choice: list[dict]):
    """log p(choice), its entropy and mean skip KL, written out from the policy's weights (ENAS's sampler)."""
    p, ops = agent.policy, agent.space.choices["op"]
    c, temp = agent.tanh_constant, agent.temperature

    def squash(z):
        return c * torch.tanh(z / temp)

    state = [(torch.zeros(1, p.start.shape[1]), torch.zeros(1, p.start.shape[1]))] * len(p.cells)

    def lstm(x):
        nonlocal state
        out = []
        for cell, hc in zip(p.cells, state):
            x, cc = cell(x, hc)
            out.append((x, cc))
        state = out
        return x

    x, anchors, hiddens = p.start, [], []
    logp, entropy, kl, links, rho = 0.0, 0.0, 0.0, 0, agent.skip_target
    for i, layer in enumerate(choice):
        probs = torch.softmax(squash(lstm(x) @ p.head.weight.T), dim=1)[0]
        k = ops.index(layer["op"])
        logp = logp + torch.log(probs[k])
        entropy = entropy - (probs * torch.log(probs)).sum()
        h = lstm(p.op_embed.weight[k : k + 1])
        if i:
            score = torch.tanh(torch.cat(anchors) + h @ p.w_curr.weight.T) @ p.v.weight.T  # (i, 1)
            q = torch.softmax(torch.cat([squash(-score), squash(score)], 1), dim=1)[:, 1]  # P(skip j)
            t = torch.tensor([float(j in layer["skips"]) for j in range(i)])
            logp = logp + (t * torch.log(q) + (1 - t) * torch.log(1 - q)).sum()
            entropy = entropy - (q * torch.log(q) + (1 - q) * torch.log(1 - q)).sum()
            kl = kl + (q * torch.log(q / rho) + (1 - q) * torch.log((1 - q) / (1 - rho))).sum()
            links += i
            x = (t @ torch.cat(hiddens))[None] / (1 + t.sum())
        else:
            x = p.start
        anchors.append(h @ p.w_prev.weight.T)
        hiddens.append(h)
    return logp, entropy, kl / links


def test_controller_step_is_the_reinforce_gradient():
    space = EnasMacroSpace(layers=4, width=4)
    agent = Reinforce(space, seed=3, hidden=8, tanh_constant=2.5, temperature=5.0, entropy_weight=0.1, **ENAS)
    choice = agent.sample()
    logp, entropy, kl = explicit_log_prob(agent, choice)
    assert float(logp.detach()) == pytest.approx(agent.log_prob(space.to_arch(choice)), abs=1e-5)
    reward, baseline = 0.7, 0.4
    agent.baseline = baseline
    params = list(agent.policy.parameters())
    expected = torch.autograd.grad(-(reward - baseline) * logp - 0.1 * entropy + 0.8 * kl, params)
    agent.learn(choice, reward)  # one Adam step; the gradient it took is left in .grad
    for p, g in zip(params, expected):
        torch.testing.assert_close(p.grad, g, rtol=1e-4, atol=1e-6)
    assert agent.baseline == pytest.approx(0.99 * baseline + 0.01 * reward)


def test_controller_learns_to_prefer_a_rewarded_operation():
    space = EnasMacroSpace(layers=2, width=4, ops=["conv3x3", "maxpool3x3"])
    agent = Reinforce(space, seed=0, hidden=16, lr=0.05, baseline_decay=0.9, normalize=False, reward_power=1)
    for _ in range(150):
        choice = agent.sample()
        agent.learn(choice, sum(layer["op"] == "conv3x3" for layer in choice) / 2)
    picks = [layer["op"] for _ in range(100) for layer in agent.sample()]
    assert picks.count("conv3x3") > 150


# -- the search ------------------------------------------------------------------------------------------


def _rows(run_dir: Path) -> pd.DataFrame:
    return pd.read_csv(run_dir / "metrics.csv").drop(columns=TIMING)


def _best(run_dir: Path) -> dict:
    return json.loads((run_dir / "best_arch.json").read_text())


@pytest.mark.parametrize("phase", ["shared", "controller"])
def test_a_stopped_search_resumes_to_the_same_result(tmp_path, search_rl_task, monkeypatch, phase):
    """SIGTERM while the shared weights train (the engine stops after that minibatch, mid-epoch) or during the
    controller's steps (it stops once the epoch's checkpoint is written): the resumed search ends as the whole."""
    whole = search_rl_task(tmp_path / "whole", *TINY)
    assert whole["status"] == "ok" and whole["epochs"] == 2
    rows = _rows(tmp_path / "whole")
    assert list(rows["epoch"]) == [1, 2] and np.isnan(rows["best_reward"][0])
    for column in ("train_loss", "train_acc", "val_acc", "reward_mean", "controller_entropy", "baseline"):
        assert np.isfinite(rows[column]).all(), column
    best = _best(tmp_path / "whole")
    assert best["reward"] == whole["best_reward"] == rows["best_reward"][1] == max(best["final_rewards"])
    assert len(best["choice"]) == 3 and load_arch(tmp_path / "whole") == best["arch"]

    calls = {"n": 0}
    if phase == "shared":
        real = SharedNet.forward

        def forward(self, x, choice):
            calls["n"] += self.training
            if calls["n"] == 6 and self.training:  # epoch 2's second training minibatch (of 4)
                signal.raise_signal(signal.SIGTERM)
            return real(self, x, choice)

        monkeypatch.setattr(SharedNet, "forward", forward)
    else:
        real_learn = Reinforce.learn

        def learn(self, choice, reward):
            calls["n"] += 1
            if calls["n"] == 2:  # epoch 1's second controller step
                signal.raise_signal(signal.SIGTERM)
            return real_learn(self, choice, reward)

        monkeypatch.setattr(Reinforce, "learn", learn)
    with pytest.raises(Interrupted):
        search_rl_task(tmp_path / "cut", *TINY)
    assert summary(tmp_path / "cut")["status"] == "interrupted" and len(_rows(tmp_path / "cut")) == 1
    saved = checkpoint.load(tmp_path / "cut" / "checkpoints" / "last.pt")
    assert (saved["tally"]["loader"]["taken"] if phase == "shared" else saved["tally"]) == (
        2 if phase == "shared" else None
    )
    monkeypatch.undo()
    resumed = search_rl_task(tmp_path / "cut", *TINY, "resume=true")
    assert resumed["status"] == "ok" and resumed["resumes"] == 1
    pd.testing.assert_frame_equal(_rows(tmp_path / "cut"), rows)
    assert _best(tmp_path / "cut") == best


def test_best_architecture_retrains_as_rl_child(tmp_path, search_rl_task, train_task):
    search_rl_task(tmp_path / "search", *[o for o in TINY if not o.startswith("enas.epochs")], "enas.epochs=1")
    t = train_task(tmp_path / "retrain", "model=rl_child", f"model.arch={tmp_path / 'search'}", "trainer.epochs=1")
    assert t["status"] == "ok"


def test_shared_refuses_another_space_or_controller(tmp_path, search_rl_task):
    with pytest.raises(UserError, match="space=enas_macro"):
        search_rl_task(tmp_path / "a", "reward=shared", "device=cpu", "progress=false")
    with pytest.raises(UserError, match="controller"):
        search_rl_task(tmp_path / "b", *TINY, "controller=random")


# -- the preset ------------------------------------------------------------------------------------------


def test_enas_macro_cifar10_preset_carries_the_paper_and_runs_small(tmp_path, search_rl_task, train_task):
    from hydra.utils import instantiate

    cfg = compose_task("search_rl", tmp_path / "c", ["experiment=enas_macro_cifar10"])
    space = instantiate(cfg.space, _convert_="all")
    agent = Reinforce(space, seed=0, **cfg.enas.controller)
    GlobalHydra.instance().clear()
    assert cfg.reward == "shared" and cfg.data._target_.endswith(".cifar10") and cfg.data.batch_size == 128
    assert (space.layers, space.width, space.choices["op"], space.reductions) == (12, 36, list(ENAS_OPS), [3, 7])
    assert (cfg.enas.epochs, cfg.enas.controller_steps, cfg.enas.grad_clip) == (310, 2000, 5.0)
    assert agent.policy.cells[0].hidden_size == 100 and agent.optimizer.param_groups[0]["lr"] == 3.5e-4
    assert (agent.tanh_constant, agent.temperature, agent.baseline_decay) == (2.5, 5.0, 0.99)
    assert (agent.skip_penalty, agent.skip_target, agent.entropy_weight) == (0.8, 0.4, 1e-4)
    adam = agent.optimizer.param_groups[0]
    assert (adam["betas"], adam["eps"]) == ((0.0, 0.999), 1e-3)
    schedule = instantiate(cfg.sched)
    assert (schedule.first_cycle, schedule.cycle_mult, schedule.every) == (10, 2, "epoch")
    assert (cfg.optim.lr, cfg.optim.momentum, cfg.optim.weight_decay, cfg.optim.nesterov) == (0.05, 0.9, 5e-4, True)
    assert cfg.optim.lr * schedule.min_factor == pytest.approx(5e-4)  # child_lr_min
    s = search_rl_task(
        tmp_path / "run",
        "experiment=enas_macro_cifar10",
        "data=digits",
        "data.subset=100",
        "data.val_size=0.2",  # the preset's 5,000 and 4-pixel crops are for CIFAR-10's images
        "data.augment.crop_padding=1",
        "device=cpu",
        "progress=false",
        "space.layers=2",
        "space.reductions=[0]",
        "space.width=4",
        "enas.epochs=1",
        "enas.controller_steps=2",
        "enas.final_samples=2",
    )
    assert s["status"] == "ok" and 0.0 <= s["best_reward"] <= 1.0
    assert [layer["type"] for layer in load_arch(tmp_path / "run")].count("reduce") >= 1  # halved after layer 0
    t = train_task(tmp_path / "retrain", "model=rl_child", f"model.arch={tmp_path / 'run'}", "trainer.epochs=1")
    assert t["status"] == "ok"


def test_reinforce_searches_the_enas_space_with_trained_children(tmp_path, search_rl_task):
    """controller=reinforce in space=enas_macro with reward=accuracy: ENAS's policy proposes architectures
    that search-rl trains one by one, its depth schedule growing them, and the best retrains by its layers."""
    agent = Reinforce(EnasMacroSpace(layers=6, width=4), seed=0, depth_schedule={"start": 2, "step": 2, "every": 3})
    archs = [agent.propose() for _ in range(9)]
    assert [len(agent.space.from_arch(a)) for a in archs] == [2, 2, 2, 4, 4, 4, 6, 6, 6]
    for arch in archs:
        check_layers(arch)
        assert agent.log_prob(arch) < 0
    out = search_rl_task(
        tmp_path,
        "space=enas_macro",
        "space.layers=3",
        "space.width=4",
        "controller.depth_schedule=null",
        "search.children=3",
        "child.subset=60",
        "child.epochs=1",
        "device=cpu",
        "progress=false",
    )
    assert out["status"] == "ok" and out["children"] == 3
    best = load_arch(tmp_path)
    assert len(EnasMacroSpace(layers=3, width=4).from_arch(best)) == 3
