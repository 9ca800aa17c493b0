"""nas-cli search-rl: architecture description, controllers (REINFORCE, MetaQNN, random, evolution),
child evaluation with a cache, resume, and one tiny real-training smoke."""

from __future__ import annotations

import functools
import json
import signal
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from helpers import compose_task, summary
from hydra.core.global_hydra import GlobalHydra
from omegaconf import OmegaConf

from nas_cli.errors import UserError
from nas_cli.hydra_bridge import config_dir
from nas_cli.nas.rl import children as evaluate_module
from nas_cli.nas.rl.arch import ArchNet, key, load_arch, pool_size
from nas_cli.nas.rl.children import ChildOptions, Evaluator
from nas_cli.nas.rl.controllers.metaqnn import MetaQNN
from nas_cli.nas.rl.controllers.reinforce import Reinforce
from nas_cli.nas.rl.spaces import CONV, FC, GAP, POOL, SM, MetaQNNSpace, ZophSpace
from nas_cli.runs.signals import Interrupted

SYNTH = ["reward=synthetic", "device=cpu"]


def compose_search(run_dir: Path, overrides: list[str]):
    return compose_task("search_rl", run_dir, overrides)


@pytest.fixture
def search_task():
    """Call the search-rl task in-process: ``search_task(run_dir, *overrides) -> summary``."""
    from nas_cli.commands import search_rl

    def run(run_dir: Path, *overrides: str) -> dict:
        return search_rl.task(compose_search(run_dir, list(overrides)))

    yield run
    GlobalHydra.instance().clear()


def _history(run_dir: Path) -> pd.DataFrame:
    return pd.read_csv(run_dir / "metrics.csv").drop(columns=["seconds"])


# -- the architecture description ----------------------------------------------------------------


def test_three_compilation_rules():
    arch = [
        {"type": "conv", "filters": 4, "kh": 3, "kw": 3, "sh": 2, "sw": 2, "inputs": []},  # 8x8 -> 4x4
        {"type": "conv", "filters": 5, "kh": 1, "kw": 1, "sh": 1, "sw": 1, "inputs": []},  # no input: the image
        {"type": "conv", "filters": 6, "kh": 3, "kw": 1, "sh": 1, "sw": 1, "inputs": [0, 1]},
    ]  # 4x4 padded to 8x8
    net = ArchNet(arch, (1, 8, 8), 10)
    assert net.layers[2][0].in_channels == 4 + 5  # depth concatenation of both inputs
    assert net.dangling == [2]
    arch[2]["inputs"] = [0]
    net = ArchNet(arch, (1, 8, 8), 10)
    assert net.dangling == [1, 2] and net.classifier.in_features == 5 + 6  # unconsumed outputs joined
    assert net(torch.randn(3, 1, 8, 8)).shape == (3, 10)


@pytest.fixture
def fast_tiny_convs():
    """Thousands of differently shaped tiny convs: one thread, no oneDNN set-up per shape."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    with torch.backends.mkldnn.flags(enabled=False):
        yield
    torch.set_num_threads(threads)


@pytest.mark.slow
def test_random_anchor_patterns_build_and_run(fast_tiny_convs):
    space = ZophSpace(
        layers=5,
        filter_heights=[1, 3, 5, 7],
        filter_widths=[1, 3, 5, 7],
        stride_heights=[1, 2, 3],
        stride_widths=[1, 2, 3],
        filters=[2, 3, 4],
    )
    rng = np.random.default_rng(0)
    shapes = [(1, 8, 8), (3, 5, 7), (1, 1, 1), (2, 12, 3)]
    for n in range(1000):
        arch = space.sample(rng)
        shape = shapes[n % len(shapes)]
        out = ArchNet(arch, shape, 7)(torch.randn(2, *shape))
        assert out.shape == (2, 7) and torch.isfinite(out).all()


def test_chains_with_pool_fc_gap_build(fast_tiny_convs):
    space = MetaQNNSpace(image_size=8, max_depth=6, conv_filters=[2, 4], conv_kernels=[1, 3, 5], fc_units=[8])
    rng = np.random.default_rng(1)
    for _ in range(200):
        arch = space.sample(rng)
        assert ArchNet(arch, (1, 8, 8), 10)(torch.randn(2, 1, 8, 8)).shape == (2, 10)


# -- MetaQNN --------------------------------------------------------------------------------------


def assert_metaqnn_rules(space, actions, image_size: int) -> set[str]:
    """Every MetaQNN rule on one path (written from the paper's Section 4.2 and the reference code's
    state_enumerator.py with its default bins); returns the layer types it used."""
    assert actions[-1][0] == SM and all(a[0] != SM for a in actions[:-1])
    layers = actions[:-1]
    assert len(layers) <= space.max_depth  # 0: softmax first, which the reference code allows
    assert not layers or layers[0][0] != POOL  # no pooling first
    size, n_fc, kinds, last_units = image_size, 0, set(), None
    for prev, (kind, params) in zip([None, *layers], layers):
        prev_kind = prev[0] if prev else None
        assert not (kind == POOL and prev_kind == POOL)  # no pooling right after pooling
        if prev_kind == FC:
            assert kind == FC and params[0] <= last_units  # FC -> FC never wider
        assert prev_kind != GAP  # GAP is followed by the softmax only
        bin_edge = 8 if size > 7 else 4 if size > 3 else 1  # the reference code's image_size_bucket
        if kind in (CONV, POOL):
            assert (params[1] if kind == CONV else params[0]) < bin_edge  # kernel below the bin
        if kind == FC:
            assert 1 <= size <= 7, size  # FC only with a representation of side 7 or less
            n_fc, last_units = n_fc + 1, params[0]
        if kind == POOL:
            size = pool_size(size, *params)
        elif kind in (FC, GAP):
            size = 1
        kinds.add(kind)
    assert n_fc <= 2
    return kinds


def test_metaqnn_rules_hold_on_10000_paths():
    space = MetaQNNSpace(image_size=28, max_depth=8)
    rng = np.random.default_rng(0)
    seen = set()
    for _ in range(10_000):
        seen |= assert_metaqnn_rules(space, space.walk(rng), 28)
    assert seen == {CONV, POOL, FC, GAP}


def test_metaqnn_mutations_keep_the_rules_and_change_structure_too():
    space = MetaQNNSpace(image_size=28, max_depth=8)
    rng = np.random.default_rng(1)
    arch, depth_changes, same_shape_changes = space.to_arch(space.walk(rng)[:-1]), 0, 0
    for _ in range(2_000):
        child = space.mutate(arch, rng)
        assert_metaqnn_rules(space, space.path(child), 28)
        if len(child) != len(arch):
            depth_changes += 1
        elif [layer["type"] for layer in child] == [layer["type"] for layer in arch] and child != arch:
            same_shape_changes += 1
        arch = child
    assert depth_changes > 200 and same_shape_changes > 200  # both kinds of mutation happen


def test_one_q_update_equals_hand_computation():
    space = MetaQNNSpace(image_size=8, max_depth=4)
    agent = MetaQNN(space, alpha=0.01, gamma=1.0, q_init=0.5, replay=0)
    c = (CONV, (16, 3))
    actions = [c, (SM, ())]
    s0 = space.start()
    s1 = space.step(s0, c)
    agent.update(actions, 0.9)
    q_sm = 0.5 + 0.01 * (0.9 - 0.5)  # terminal transition: the reward
    assert agent.value(s1, (SM, ())) == pytest.approx(q_sm)
    # earlier transition: r = 0 + gamma * max over the next state's actions (the others still 0.5)
    assert agent.value(s0, c) == pytest.approx(0.5 + 0.01 * (max(q_sm, 0.5) - 0.5))


def test_metaqnn_epsilon_schedule_and_greedy():
    space = MetaQNNSpace(image_size=8, max_depth=3)
    agent = MetaQNN(space, schedule=[[1.0, 2], [0.0, 1]], replay=5)
    assert [agent.epsilon(m) for m in (0, 1, 2, 5)] == [1.0, 1.0, 0.0, 0.0]
    agent.q = {}
    agent.seen = {"a", "b"}  # two unique models so far: greedy; after rewarding one chain a lot, it is proposed
    target = [
        {"type": "conv", "filters": 32, "kh": 3, "kw": 3, "sh": 1, "sw": 1, "inputs": []},
        {"type": "gap", "inputs": [0]},
    ]
    for _ in range(2000):
        agent.update(space.path(target), 1.0)
    assert key(agent.propose()) == key(target)


# -- REINFORCE ------------------------------------------------------------------------------------


def test_reinforce_step_raises_probability_of_rewarded_arch():
    agent = Reinforce(ZophSpace(layers=3), seed=0, lr=0.01)
    arch = agent.propose()
    before = agent.log_prob(arch)
    agent.baseline = 0.2
    agent.observe(arch, 1.0)
    assert agent.log_prob(arch) > before
    other = agent.propose()
    low = agent.log_prob(other)
    agent.baseline = 0.9
    agent.observe(other, 0.0)  # below the baseline: less likely
    assert agent.log_prob(other) < low


def test_reinforce_advantage_against_hand_computation():
    rewards, decay = [0.5, 0.7, 0.4, 0.9], 0.8
    plain = Reinforce(ZophSpace(layers=2), seed=0, baseline_decay=decay, normalize=False)
    normed = Reinforce(ZophSpace(layers=2), seed=0, baseline_decay=decay, normalize=True)
    b, sq, expected_plain, expected_normed = rewards[0], None, [], []
    for r in rewards:
        a = r - b
        b = decay * b + (1 - decay) * r
        expected_plain.append(a)
        if a:
            sq = a * a if sq is None else decay * sq + (1 - decay) * a * a
        expected_normed.append(a / sq**0.5 if a else 0.0)
    assert [plain.advantage(r) for r in rewards] == pytest.approx(expected_plain)
    assert [normed.advantage(r) for r in rewards] == pytest.approx(expected_normed)
    assert expected_normed[1] == pytest.approx(1.0)  # the first non-zero advantage has unit size


def test_squashed_logits_flatten_the_zoph_policy_to_uniform():
    """A tiny tanh constant squashes every logit to ~0: each token is uniform over its choices and each skip a
    fair coin, so log p(arch) is the sum of -log(choices) over tokens plus i log(1/2) for layer i's skips."""
    space = ZophSpace(layers=3)
    agent = Reinforce(space, seed=0, tanh_constant=1e-7, temperature=2.0)
    arch = agent.propose()
    tokens = sum(np.log(len(space.choices[t])) for t in ("kh", "kw", "sh", "sw", "filters"))
    assert agent.log_prob(arch) == pytest.approx(-3 * tokens + (0 + 1 + 2) * np.log(0.5), abs=1e-4)
    with pytest.raises(UserError, match="controller.temperature"):
        Reinforce(space, temperature=0)
    with pytest.raises(UserError, match="space=zoph or space=enas_macro"):
        Reinforce(MetaQNNSpace(image_size=8))


def test_reinforce_skip_penalty_pulls_density_to_target():
    agent = Reinforce(ZophSpace(layers=5), seed=0, lr=0.05, skip_penalty=1.0, skip_target=0.05)
    arch = agent.propose()
    agent.baseline = 0.0
    density = []
    for _ in range(30):
        _, _, _, kl = agent.run(arch)
        density.append(kl.item())
        agent.observe(arch, 0.0)
    assert density[-1] < density[0]


# -- evaluation, cache, searches ------------------------------------------------------------------


def test_cache_hit_does_no_training(tmp_path, monkeypatch):
    calls = []
    real = evaluate_module.train_child
    monkeypatch.setattr(evaluate_module, "train_child", lambda *a, **k: calls.append(1) or real(*a, **k))
    child = ChildOptions(epochs=1, subset=50)
    data_config = OmegaConf.to_container(OmegaConf.load(config_dir() / "data" / "digits.yaml"))
    data = evaluate_module.load_data(data_config, child, 0)
    arch = ZophSpace(layers=2, filters=[4]).sample(np.random.default_rng(0))

    def evaluator(cache=None):
        return Evaluator(
            "accuracy",
            {},
            tmp_path,
            torch.device("cpu"),
            data,
            data_config,
            0,
            child,
            functools.partial(torch.optim.Adam, lr=0.01),
            None,
            cache=cache,
        )

    ev = evaluator()
    first, again = ev.evaluate([(0, arch), (1, arch)])  # a repeat within one batch
    assert len(calls) == 1 and not first["cache_hit"] and again["cache_hit"] and again["reward"] == first["reward"]
    later = evaluator(cache=json.loads(json.dumps(ev.cache))).evaluate([(2, arch)])  # a resumed search's cache
    assert len(calls) == 1 and later[0]["cache_hit"]
    assert not (tmp_path / "children" / "1").exists() and (tmp_path / "children" / "0" / "summary.json").is_file()


@pytest.mark.parametrize(
    "controller",
    [
        "reinforce",
        "metaqnn",
        "random",
        "evolution",
        "random space=metaqnn",
        "evolution space=metaqnn controller.population=4 controller.sample=2",
    ],
)
def test_each_controller_searches_synthetic(tmp_path, search_task, controller):
    name, *extra = controller.split()
    s = search_task(tmp_path, f"controller={name}", *extra, *SYNTH, "search.children=12")
    assert s["status"] == "ok" and s["children"] == 12 and s["trained"] + s["cache_hits"] == 12
    history = pd.read_csv(tmp_path / "metrics.csv")
    assert list(history.columns[:6]) == ["step", "arch", "params", "reward", "seconds", "cache_hit"]
    assert len(history) == 12 and s["best_reward"] == pytest.approx(history["reward"].max())
    best = json.loads((tmp_path / "best_arch.json").read_text())
    assert best["reward"] == pytest.approx(s["best_reward"])
    assert ArchNet(load_arch(tmp_path / "best_arch.json"), (1, 8, 8), 10)(torch.randn(2, 1, 8, 8)).shape == (2, 10)


@pytest.mark.parametrize(
    "proxy,controller",
    [("naswot", "reinforce"), ("snip", "metaqnn"), ("jacob_cov", "evolution"), ("synflow", "random")],
)
def test_proxy_reward_scores_untrained_children(tmp_path, search_task, proxy, controller):
    from nas_cli.nas.rl import proxies

    s = search_task(
        tmp_path, f"controller={controller}", "reward=proxy", f"proxy.name={proxy}", "search.children=4", "device=cpu"
    )
    assert s["status"] == "ok" and s["children"] == 4
    assert (tmp_path / "best_arch.json").is_file() and not (tmp_path / "children").exists()  # nothing trained
    # each row's reward: the proxy of the child as training would build it (seed + step), on the search's minibatch
    data_config = OmegaConf.to_container(OmegaConf.load(config_dir() / "data" / "digits.yaml"))
    data = evaluate_module.load_data(data_config, ChildOptions(), 0)
    x, y = proxies.minibatch(data.train, 64, 0)
    cache = json.loads((tmp_path / "cache.json").read_text())
    for row in pd.read_csv(tmp_path / "metrics.csv").itertuples():
        if row.cache_hit:
            continue
        arch = json.loads(row.json)
        score = proxies.PROXIES[proxy](evaluate_module.build_child(arch, data, "cpu", row.step), x, y)
        if np.isfinite(score):
            assert row.reward == pytest.approx(score, rel=1e-9)
        else:  # undefined for this child: a failed child at the proxy's floor
            assert row.reward == proxies.floor(proxy, 64) and "error" in cache[key(arch)]


@pytest.mark.parametrize("controller", ["reinforce", "metaqnn", "evolution"])
def test_resumed_search_continues_the_same_history(tmp_path, search_task, monkeypatch, controller):
    search_task(tmp_path / "whole", f"controller={controller}", *SYNTH, "search.children=12")
    calls = {"n": 0}
    real = Evaluator._score_synthetic

    def interrupted(self, arch):
        calls["n"] += 1
        if calls["n"] == 8:
            signal.raise_signal(signal.SIGTERM)  # the search stops after this child (the end of its batch)
        return real(self, arch)

    monkeypatch.setattr(Evaluator, "_score_synthetic", interrupted)
    with pytest.raises(Interrupted):
        search_task(tmp_path / "cut", f"controller={controller}", *SYNTH, "search.children=12")
    assert summary(tmp_path / "cut")["status"] == "interrupted"
    assert len(pd.read_csv(tmp_path / "cut" / "metrics.csv")) < 12
    monkeypatch.setattr(Evaluator, "_score_synthetic", real)
    s = search_task(tmp_path / "cut", f"controller={controller}", *SYNTH, "search.children=12", "resume=true")
    assert s["status"] == "ok" and s["children"] == 12
    pd.testing.assert_frame_equal(_history(tmp_path / "cut"), _history(tmp_path / "whole"))


def test_resume_refuses_another_controller(tmp_path, search_task):
    search_task(tmp_path, "controller=random", *SYNTH, "search.children=3")
    with pytest.raises(UserError, match="controller=random"):
        search_task(tmp_path, "controller=evolution", *SYNTH, "search.children=5", "resume=true")


def test_real_training_smoke_and_retrain_best(tmp_path, search_task, train_task):
    s = search_task(
        tmp_path / "search",
        "controller=reinforce",
        "device=cpu",
        "search.children=3",
        "child.epochs=1",
        "child.subset=100",
        "space.layers=2",
        "space.filters=[4,8]",
    )
    assert s["status"] == "ok" and s["children"] == 3 and 0.0 <= s["best_reward"] <= 1.0
    assert s["device_hours"] > 0 and s["trained"] == len(list((tmp_path / "search" / "children").iterdir()))
    for child in (tmp_path / "search" / "children").iterdir():
        assert summary(child)["epochs"] == 1 and not (child / "checkpoints").exists()
    t = train_task(
        tmp_path / "retrain",
        "model=rl_child",
        f"model.arch={tmp_path / 'search' / 'best_arch.json'}",
        "trainer.epochs=1",
    )
    assert t["status"] == "ok"


@pytest.mark.slow
def test_workers_train_children_in_parallel(tmp_path, search_task):
    s = search_task(
        tmp_path,
        "controller=random",
        "device=cpu",
        "search.children=2",
        "search.workers=2",
        "child.epochs=1",
        "child.subset=50",
        "space.layers=1",
        "space.filters=[4]",
    )
    assert s["status"] == "ok" and s["children"] == 2
    assert sorted(p.name for p in (tmp_path / "children").iterdir()) == ["0", "1"]


def test_config_is_commented():
    text = (config_dir() / "search_rl.yaml").read_text().splitlines()
    body = [ln for ln in text[text.index("search:") : text.index("hydra:")] if ln.strip() and ":" in ln]
    assert all("#" in ln for ln in body if not ln.rstrip().endswith(":")), [ln for ln in body if "#" not in ln]
    for name, target in (
        ("reinforce", "Reinforce"),
        ("metaqnn", "MetaQNN"),
        ("random", "RandomSearch"),
        ("evolution", "Evolution"),
    ):
        cfg = OmegaConf.load(config_dir() / "controller" / f"{name}.yaml")
        assert cfg.get("controller", cfg)._target_.endswith(
            f".{name if name != 'random' else 'random_search'}.{target}"
        )


# -- Zoph & Le: the controller, its depth schedule and reward ----------------------------------------


def test_reinforce_default_is_a_two_layer_lstm_of_35_units(tmp_path):
    from hydra.utils import instantiate

    cfg = compose_search(tmp_path, [])
    agent = instantiate(cfg.controller, space=instantiate(cfg.space), seed=0, _convert_="all")
    GlobalHydra.instance().clear()
    assert [(c.input_size, c.hidden_size) for c in agent.policy.cells] == [(35, 35), (35, 35)]
    assert agent.reward_power == 3.0


def test_depth_schedule_grows_the_sampled_children_at_the_configured_counts():
    schedule = {"start": 1, "step": 2, "every": 3}
    agent = Reinforce(ZophSpace(layers=6), seed=0, depth_schedule=schedule)
    depths = [len(agent.propose()) for _ in range(8)]
    assert depths == [1, 1, 1, 3, 3, 3, 5, 5]
    again = Reinforce(ZophSpace(layers=6), seed=1, depth_schedule=schedule)
    again.load_state_dict(agent.state_dict())  # the schedule's position survives a checkpoint
    assert [len(again.propose()) for _ in range(4)] == [5, 6, 6, 6]  # capped at space.layers
    assert [len(Reinforce(ZophSpace(layers=3), seed=0).propose()) for _ in range(2)] == [3, 3]  # null: fixed


def test_zoph_reward_is_the_max_of_the_last_5_epochs_cubed():
    from nas_cli.nas.rl.children import child_score

    accs = [0.9, 0.5, 0.6, 0.7, 0.65, 0.62]  # per-epoch validation accuracies; the 0.9 is 6 epochs back
    assert child_score(accs, "best", 5) == 0.7 and child_score(accs, "best") == 0.9
    assert child_score(accs, "final", 5) == 0.62
    cubed = Reinforce(ZophSpace(layers=2), seed=0, reward_power=3)
    plain = Reinforce(ZophSpace(layers=2), seed=0, reward_power=1)
    for agent in (cubed, plain):
        agent.observe(agent.propose(), child_score(accs, "best", 5))
    assert cubed.baseline == pytest.approx(0.7**3) and plain.baseline == pytest.approx(0.7)  # b starts at R


# -- regularized evolution ---------------------------------------------------------------------------


def test_tournament_samples_with_replacement():
    """Population [0.1, 0.2, 0.3], tournaments of 2: drawn with replacement (Real et al., Algorithm 1) the
    worst wins only when drawn twice, 1/9 of the time; without replacement it could never win."""
    from nas_cli.nas.rl.controllers.evolution import Evolution

    agent = Evolution(ZophSpace(layers=1), seed=0, population=3, sample=2)
    agent.population = [{"arch": [i], "reward": r} for i, r in enumerate([0.1, 0.2, 0.3])]
    wins = [agent.tournament()["reward"] for _ in range(9000)]
    assert [wins.count(r) / len(wins) for r in (0.1, 0.2, 0.3)] == pytest.approx([1 / 9, 3 / 9, 5 / 9], abs=0.02)
    assert Evolution(ZophSpace(layers=1), population=3, sample=5).sample_size == 5  # may exceed the population


# -- presets -------------------------------------------------------------------------------------------


def test_metaqnn_cifar10_preset_carries_the_paper_and_runs_small(tmp_path, search_task):
    from hydra.utils import instantiate

    from nas_cli.nas.rl.controllers.metaqnn import PAPER_SCHEDULE

    cfg = compose_search(tmp_path / "c", ["experiment=metaqnn_cifar10"])
    space = instantiate(cfg.space, in_shape=(3, 32, 32))
    agent = instantiate(cfg.controller, space=space, seed=0, _convert_="all")
    assert cfg.data._target_.endswith(".cifar10") and (space.image_size, space.max_depth) == (32, 18)
    assert sorted({f for f, _ in space.conv}) == [64, 128, 256, 512] and space.fc == [512, 256, 128]
    assert agent.schedule == [(e, n) for e, n in PAPER_SCHEDULE] and agent.replay == 128
    assert (cfg.search.trained, cfg.child.epochs, cfg.child.score, cfg.optim.lr) == (2700, 20, "best", 0.001)
    assert (cfg.sched.step_size, cfg.sched.gamma) == (5, 0.2)
    s = search_task(
        tmp_path / "run",
        "experiment=metaqnn_cifar10",
        "data=digits",
        "device=cpu",
        "progress=false",
        "search.children=2",
        "search.trained=null",
        "child.epochs=1",
        "child.subset=60",
        "space.max_depth=3",
        "space.conv_filters=[4]",
        "space.fc_units=[16]",
    )
    assert s["status"] == "ok" and s["children"] == 2 and 0.0 <= s["best_reward"] <= 1.0


def test_zoph_le_cifar10_preset_carries_the_paper_and_runs_small(tmp_path, search_task):
    from hydra.utils import instantiate

    cfg = compose_search(tmp_path / "c", ["experiment=zoph_le_cifar10"])
    space = instantiate(cfg.space)
    agent = instantiate(cfg.controller, space=space, seed=0, _convert_="all")
    assert space.choices == {
        "kh": [1, 3, 5, 7],
        "kw": [1, 3, 5, 7],
        "sh": [1, 2, 3],
        "sw": [1, 2, 3],
        "filters": [24, 36, 48, 64],
    }
    assert [c.hidden_size for c in agent.policy.cells] == [35, 35] and agent.optimizer.param_groups[0]["lr"] == 6e-4
    assert agent.reward_power == 3 and agent.depth() == 6
    agent.sampled = 1600 * 7
    assert agent.depth() == 20 and cfg.search.children == 12800
    assert (cfg.child.epochs, cfg.child.score, cfg.child.score_epochs) == (50, "best", 5)
    assert (cfg.optim.lr, cfg.optim.momentum, cfg.optim.weight_decay, cfg.optim.nesterov) == (0.1, 0.9, 1e-4, True)
    s = search_task(
        tmp_path / "run",
        "experiment=zoph_le_cifar10",
        "data=digits",
        "device=cpu",
        "progress=false",
        "search.children=2",
        "child.epochs=1",
        "child.subset=60",
        "space.filters=[4]",
        "controller.depth_schedule.start=2",
    )
    assert s["status"] == "ok" and s["children"] == 2
    assert [len(json.loads(j)) for j in pd.read_csv(tmp_path / "run" / "metrics.csv")["json"]] == [2, 2]
