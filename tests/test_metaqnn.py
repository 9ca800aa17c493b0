"""MetaQNN (Baker et al. 2017) against its paper and reference code (bowenbaker/metaqnn): the allowed
layers at each representation size, the bucketed Q-table, the epsilon schedule in unique models."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from helpers import compose_task, summary
from hydra.core.global_hydra import GlobalHydra

from nas_cli.nas.rl.arch import key
from nas_cli.nas.rl.controllers.metaqnn import PAPER_SCHEDULE, MetaQNN, scale_schedule
from nas_cli.nas.rl.spaces import CONV, FC, GAP, POOL, SM, MetaQNNSpace, size_bucket

# The paper's CIFAR-10 choices (Table 1), one filter count to keep the table short
PAPER_SPACE = dict(
    max_depth=18,
    conv_filters=[64],
    conv_kernels=[1, 3, 5],
    pools=[[5, 3], [3, 2], [2, 2]],
    fc_units=[512, 256, 128],
    max_fc=2,
)

# Written out from the reference code's state_enumerator.py and models/cifar10/state_space_parameters.py:
# image_size_bucket(n) = 8 if n > 7 else 4 if n > 3 else 1; a conv or pool kernel must be < the bucket;
# FC only when the bucket is <= 4. Layers allowed after a conv layer at each side:
AFTER_CONV = {  # side: (conv kernels, pool [kernel, stride]s, FC allowed)
    32: ({1, 3, 5}, {(5, 3), (3, 2), (2, 2)}, False),
    8: ({1, 3, 5}, {(5, 3), (3, 2), (2, 2)}, False),
    7: ({1, 3}, {(3, 2), (2, 2)}, True),
    4: ({1, 3}, {(3, 2), (2, 2)}, True),
    1: (set(), set(), True),
}


def _split(actions):
    convs = {p[1] for k, p in actions if k == CONV}
    pools = {tuple(p) for k, p in actions if k == POOL}
    fcs = {p[0] for k, p in actions if k == FC}
    return convs, pools, fcs, {k for k, _ in actions if k in (GAP, SM)}


@pytest.mark.parametrize("side", sorted(AFTER_CONV, reverse=True))
def test_allowed_layers_at_each_side_follow_the_reference_table(side):
    space = MetaQNNSpace(image_size=32, **PAPER_SPACE)
    convs, pools, fc_ok = AFTER_CONV[side]
    got = _split(space.actions((CONV, 3, side, 0, (64, 3))))
    assert got == (convs, pools, {512, 256, 128} if fc_ok else set(), {GAP, SM})
    # after a pool layer: the same but no second pool; as the first layer: no pool, and SM (the reference code)
    assert _split(space.actions((POOL, 3, side, 0, (2, 2)))) == (convs, set(), got[2], {GAP, SM})
    assert _split(space.actions(("start", 0, side, 0, ()))) == (convs, set(), got[2], {GAP, SM})


def reference_terminates(layer_type: str, terminate: int) -> bool:
    """The reference code's rule (state_enumerator.py, StateEnumerator.enumerate_state): ``if state.terminate
    == 0: actions += [State(..., terminate=1)]`` before any test of layer_type or layer_depth; so every
    unterminated state, 'start' included, may go to softmax, and a terminated one has no actions."""
    return terminate == 0


@pytest.mark.parametrize("kind", ["start", CONV, POOL, FC, GAP])
def test_softmax_is_allowed_wherever_the_reference_code_allows_it(kind):
    space = MetaQNNSpace(image_size=32, **PAPER_SPACE)
    state = {
        "start": space.start(),
        CONV: (CONV, 1, 32, 0, (64, 3)),
        POOL: (POOL, 2, 16, 0, (2, 2)),
        FC: (FC, 2, 1, 1, (128,)),
        GAP: (GAP, 2, 1, 0, ()),
    }[kind]
    assert ((SM, ()) in space.actions(state)) == reference_terminates(kind, 0)
    assert space.actions(space.step(state, (SM, ()))) == [] and not reference_terminates(kind, 1)
    # softmax first: the empty architecture, a valid path of the space
    assert space.valid([(SM, ())]) and space.to_arch([(SM, ())]) == [] and space.path([]) == [(SM, ())]


def test_size_bins_put_8_in_the_first_and_4_in_the_second():
    assert [size_bucket(n) for n in (32, 9, 8, 7, 5, 4, 3, 1)] == [8, 8, 8, 4, 4, 4, 1, 1]
    # on the 8x8 digits, FC is no longer allowed as the very first layer (side 8 is in (inf, 8])
    assert not any(k == FC for k, _ in MetaQNNSpace(image_size=8).actions(MetaQNNSpace(image_size=8).start()))


def test_fc_after_fc_is_never_wider_and_at_most_max_fc():
    space = MetaQNNSpace(image_size=32, **PAPER_SPACE)
    assert space.actions((FC, 5, 1, 1, (256,))) == [(FC, (256,)), (FC, (128,)), (SM, ())]
    assert space.actions((FC, 5, 1, 1, (128,))) == [(FC, (128,)), (SM, ())]
    assert space.actions((FC, 6, 1, 2, (512,))) == [(SM, ())]  # two FC layers already


def test_kernel_limit_side_uses_the_exact_side():
    space = MetaQNNSpace(image_size=32, kernel_limit="side", **PAPER_SPACE)
    convs, pools, *_ = _split(space.actions((CONV, 3, 5, 0, (64, 3))))
    assert convs == {1, 3, 5} and pools == {(5, 3), (3, 2), (2, 2)}  # the paper's "at most the side"
    convs, pools, *_ = _split(space.actions((CONV, 3, 1, 0, (64, 3))))
    assert convs == {1} and pools == set()


def test_q_updates_land_on_bucketed_keys():
    space = MetaQNNSpace(image_size=32, **PAPER_SPACE)
    agent = MetaQNN(space, alpha=0.1, gamma=1.0, q_init=0.5, replay=0)
    c3 = (CONV, (64, 3))
    agent.update([c3, (SM, ())], 0.9)
    # hand computation: terminal Q = 0.5 + 0.1 (0.9 - 0.5); the first transition's target is the best
    # next-state Q, that same 0.54
    q_sm = 0.5 + 0.1 * (0.9 - 0.5)
    assert agent.q == {
        ("start", 0, 8, 0, ()): {c3: pytest.approx(0.5 + 0.1 * (q_sm - 0.5))},
        (CONV, 1, 8, 0, (64, 3)): {(SM, ()): pytest.approx(q_sm)},
    }
    # every side in the (inf, 8] bin reads the same entry; side 7 is another bin, still at q_init
    assert agent.value((CONV, 1, 12, 0, (64, 3)), (SM, ())) == pytest.approx(q_sm)
    assert agent.value((CONV, 1, 7, 0, (64, 3)), (SM, ())) == 0.5
    # a second pass from an image of side 10 updates the same entries again
    other = MetaQNN(MetaQNNSpace(image_size=10, **PAPER_SPACE), alpha=0.1, q_init=0.5, replay=0)
    other.q = {s: dict(row) for s, row in agent.q.items()}
    other.update([c3, (SM, ())], 0.9)
    assert other.q[(CONV, 1, 8, 0, (64, 3))][(SM, ())] == pytest.approx(q_sm + 0.1 * (0.9 - q_sm))


def test_schedule_is_the_papers_table_and_scales_keeping_its_shape():
    assert [n for _, n in PAPER_SCHEDULE] == [1500, 100, 100, 100, 150, 150, 150, 150, 150, 150]
    assert scale_schedule(PAPER_SCHEDULE, None) == [(e, n) for e, n in PAPER_SCHEDULE]
    assert [n for _, n in scale_schedule(PAPER_SCHEDULE, 108)] == [60, 4, 4, 4, 6, 6, 6, 6, 6, 6]  # 1/25
    assert [e for e, _ in scale_schedule(PAPER_SCHEDULE, 20)] == [1.0, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1]
    assert min(n for _, n in scale_schedule(PAPER_SCHEDULE, 20)) == 1


def test_epsilon_advances_on_unique_models_only():
    space = MetaQNNSpace(image_size=8, max_depth=3)
    agent = MetaQNN(space, schedule=[[1.0, 2], [0.5, 2], [0.1, 1]], replay=1)
    archs = [space.sample(agent.rng) for _ in range(50)]
    distinct = list({key(a): a for a in archs}.values())[:5]
    assert len(distinct) == 5
    seen_eps = []
    for arch in [
        distinct[0],
        distinct[0],
        distinct[1],
        distinct[1],
        distinct[0],
        distinct[2],
        distinct[3],
        distinct[2],
        distinct[4],
    ]:
        seen_eps.append(agent.epsilon())
        agent.observe(arch, 0.5)
    # epsilon before each: repeats (2nd, 4th, 5th, 8th) leave it where it was (counting every proposal would
    # give 1.0, 1.0, 0.5, 0.5, 0.1, ...)
    assert seen_eps == [1.0, 1.0, 1.0, 0.5, 0.5, 0.5, 0.5, 0.1, 0.1]
    assert agent.models == 5 and len(agent.memory) == 9  # repeats still join the replay memory


def test_search_counts_unique_models_and_stops_at_search_trained(tmp_path: Path):
    """A tiny space (few distinct chains) makes repeats common: the schedule's clock is the trained count."""
    from nas_cli.commands import search_rl
    from nas_cli.runs import checkpoint

    tiny = [
        "controller=metaqnn",
        "reward=synthetic",
        "device=cpu",
        "space.max_depth=2",
        "space.conv_filters=[16]",
        "space.conv_kernels=[3]",
        "space.fc_units=[32]",
        "controller.schedule_models=null",
        "controller.schedule=[[1.0,3],[0.5,3],[0.0,100]]",
        "controller.replay=4",
    ]
    try:
        s = search_rl.task(compose_task("search_rl", tmp_path / "a", [*tiny, "search.children=40"]))
        assert s["cache_hits"] > 0 and s["trained"] + s["cache_hits"] == 40
        agent = MetaQNN(
            MetaQNNSpace(image_size=8, max_depth=2, conv_filters=[16], conv_kernels=[3], fc_units=[32]),
            schedule=[[1.0, 3], [0.5, 3], [0.0, 100]],
        )
        agent.load_state_dict(checkpoint.load(tmp_path / "a" / "checkpoints" / "last.pt")["controller"])
        assert agent.models == s["trained"] and agent.epsilon() == 0.0
        s = search_rl.task(compose_task("search_rl", tmp_path / "b", [*tiny, "search.children=40", "search.trained=4"]))
        assert s["trained"] == 4 and s["children"] < 40 and summary(tmp_path / "b")["status"] == "ok"
    finally:
        GlobalHydra.instance().clear()


def test_best_and_final_scores_from_a_real_child(tmp_path: Path):
    """MetaQNN's reward is the child's best validation accuracy (``child.score=best``), or the last one."""
    import functools

    import pandas as pd
    from omegaconf import OmegaConf

    from nas_cli.hydra_bridge import config_dir
    from nas_cli.nas.rl.children import ChildOptions, load_data, train_child

    data_config = OmegaConf.to_container(OmegaConf.load(config_dir() / "data" / "digits.yaml"))
    arch = [{"type": "fc", "units": 32, "inputs": []}]
    got = {}
    for score in ("best", "final"):
        child = ChildOptions(epochs=4, subset=120, score=score)
        data = load_data(data_config, child, 0)
        got[score] = train_child(
            arch,
            data,
            child,
            functools.partial(torch.optim.Adam, lr=0.05),
            None,
            torch.device("cpu"),
            tmp_path / score,
            seed=0,
        )
    accs = pd.read_csv(tmp_path / "best" / "metrics.csv")["val_acc"].tolist()
    assert accs == pd.read_csv(tmp_path / "final" / "metrics.csv")["val_acc"].tolist()  # the same training
    assert max(accs) > accs[-1]  # this seed's last epoch is not its best, so the two scores differ
    assert got["best"] == pytest.approx(max(accs)) and got["final"] == pytest.approx(accs[-1])
