"""The record says only what happened: agents that diverge say so, a search whose children all fail fails
with their cause, a diverged DARTS search leaves no genotype to retrain, and a broken genotype or
architecture is refused before any run starts."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from helpers import compose_task, in_process, summary
from hydra.core.global_hydra import GlobalHydra

from nas_cli.errors import UserError
from nas_cli.nas.darts.genotype import PUBLISHED, Genotype
from nas_cli.nas.rl import executors
from nas_cli.nas.rl.arch import load_arch

pytestmark = pytest.mark.usefixtures("one_thread")


def error_lines(capsys) -> list[str]:
    return [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]


def checkpoint_is_finite(run: Path, key: str) -> None:
    """The last checkpoint, if any, holds the weights of before the divergence."""
    path = run / "checkpoints" / "last.pt"
    if path.is_file():
        state = torch.load(path, weights_only=True)["agent"][key]
        assert all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point())


# -- agents --------------------------------------------------------------------------------------------------


def test_dqn_with_an_exploding_lr_is_diverged_and_keeps_its_rows(tmp_path, capsys):
    run = tmp_path / "run"
    code = in_process(
        "dqn",
        "optim=sgd",
        "optim.lr=1e6",
        "total_steps=1000",
        "eval.every=500",
        "eval.episodes=2",
        "agent.learning_starts=100",
        "agent.train_frequency=4",
        "agent.gradient_steps=1",
        "log_every=100",
        "progress=false",
        f"hydra.run.dir={run}",
    )
    assert code == 0, error_lines(capsys)  # as train's diverged run: the record says it, not the exit code
    record, rows = summary(run), pd.read_csv(run / "metrics.csv")
    assert record["status"] == "diverged" and record["steps"] == rows["step"].iloc[-1] < 1000
    assert not math.isfinite(rows["loss"].iloc[-1]) and rows["loss"].iloc[:-1].isna().all()  # no update before
    assert record["solved_step"] is None and record["best_eval_return"] is None
    assert not (run / "best.pt").exists()
    checkpoint_is_finite(run, "q")


def test_pg_with_an_exploding_lr_is_diverged_and_keeps_its_rows(tmp_path, capsys):
    run = tmp_path / "run"
    code = in_process(
        "pg",
        "optim=sgd",
        "optim.lr=1e30",
        "total_steps=1000",
        "eval.every=500",
        "eval.episodes=2",
        "log_every=100",
        "progress=false",
        f"hydra.run.dir={run}",
    )
    assert code == 0, error_lines(capsys)
    record, rows = summary(run), pd.read_csv(run / "metrics.csv")
    assert record["status"] == "diverged" and record["steps"] == rows["step"].iloc[-1] < 1000
    last = rows[["policy_loss", "value_loss", "entropy"]].iloc[-1]
    assert not np.isfinite(last.to_numpy()).all()
    assert record["solved_step"] is None and record["solved_step_sampled"] is None
    checkpoint_is_finite(run, "net")


GA = [
    "agent.population=8",
    "agent.truncation=3",
    "agent.episodes=1",
    "agent.elite_candidates=2",
    "agent.elite_episodes=1",
    "agent.hidden=[8]",
    "generations=4",
    "progress=false",
    "device=cpu",
]


def ga_task(run_dir: Path, *overrides: str) -> dict:
    from nas_cli.commands import ga

    try:
        return ga.task(compose_task("ga", run_dir, [*GA, *overrides]))
    finally:
        GlobalHydra.instance().clear()


def test_ga_whose_returns_turn_non_finite_is_diverged(tmp_path, monkeypatch):
    """CartPole's returns are always finite: the population's evaluation is replaced by one that plays for
    real and turns one return of generation 2 into NaN (an environment's infinite reward would do the same)."""
    from nas_cli.agents import population as pop

    real, calls = pop.evaluate, []

    def evaluate(*args, **kwargs):
        returns, lengths = real(*args, **kwargs)
        calls.append(len(returns))
        if len(calls) == 4:  # generation 2's population (each generation: population, elite candidates, the
            # elite's own test episodes)
            returns = returns.copy()
            returns[1, 0] = math.nan
        return returns, lengths

    monkeypatch.setattr(pop, "evaluate", evaluate)
    record = ga_task(tmp_path / "run")
    rows = pd.read_csv(tmp_path / "run" / "metrics.csv")
    assert record["status"] == "diverged" and rows["generation"].tolist() == [1, 2]
    assert math.isnan(rows["mean_fitness"].iloc[-1]) and math.isnan(rows["elite_fitness"].iloc[-1])
    assert record["best_eval_return"] == rows["elite_test_return"].iloc[0] and record["best_generation"] == 1
    saved = torch.load(tmp_path / "run" / "checkpoints" / "last.pt", weights_only=True)
    assert saved["state"]["generation"] == 1  # the last finite generation's, never the diverged one


def test_ga_whose_mutation_overflows_the_weights_is_diverged(tmp_path):
    """A real run: sigma 1e38 pushes float32 weights past their range within a generation or two."""
    record = ga_task(tmp_path / "run", "agent.sigma=1e38")
    rows = pd.read_csv(tmp_path / "run" / "metrics.csv")
    assert record["status"] == "diverged" and len(rows) < 4 and record["generations"] == len(rows)
    best = torch.load(tmp_path / "run" / "best.pt", weights_only=True)["model"]
    assert all(torch.isfinite(v).all() for v in best.values())


# -- search-rl: children that all fail -----------------------------------------------------------------------

# Nesterov without momentum, which torch's SGD refuses: every child fails as it builds its optimizer, once the
# search has started (the parent only holds the optimizer's recipe)
CHILDREN = [
    "controller=random",
    "device=cpu",
    "threads=1",
    "search.children=2",
    "search.batch=2",
    "child.epochs=1",
    "child.subset=50",
    "space.layers=1",
    "space.filters=[4]",
    "optim=sgd",
    "optim.nesterov=true",
    "optim.momentum=0",
    "search.poll_s=0.05",
    "search.slurm.cpus_per_task=1",
    "progress=false",
]


NESTEROV = "ValueError: Nesterov momentum requires a momentum and zero dampening"


@pytest.mark.slow
@pytest.mark.parametrize("executor", ["local", "debug"])
def test_a_search_whose_children_all_fail_fails_with_their_cause(tmp_path, capsys, executor):
    """``local``: real processes (submitit's LocalExecutor), whose failure submitit reports as a traceback and
    log paths; the child's own one-line error is what the search keeps."""
    run = tmp_path / "run"
    code = in_process("search-rl", *CHILDREN, f"search.executor={executor}", f"hydra.run.dir={run}")
    lines = error_lines(capsys)
    assert code == 1 and len(lines) == 1 and NESTEROV in lines[0], lines
    record = summary(run)
    assert record["status"] == "failed" and NESTEROV in record["error"]
    assert "child 0" in record["error"] and record["failed_children"] == 2 and record["best_reward"] is None
    cache = json.loads((run / "cache.json").read_text())
    assert [r["error"] for r in cache.values()] == [NESTEROV] * 2
    assert not (run / "best_arch.json").exists()


def test_an_inline_search_fails_at_its_first_failing_child(tmp_path, capsys):
    run = tmp_path / "run"
    code = in_process("search-rl", *CHILDREN, "search.executor=inline", f"hydra.run.dir={run}")
    lines = error_lines(capsys)
    assert code == 1 and len(lines) == 1 and NESTEROV.split(": ", 1)[1] in lines[0], lines
    assert summary(run)["status"] == "failed" and summary(run)["error"] == NESTEROV
    assert not (run / "best_arch.json").exists()


def test_a_failed_child_with_a_score_beside_it_is_no_best(tmp_path, monkeypatch):
    """One child of two fails: the search ends ok, and its best is the child that has a score."""
    from nas_cli.commands import search_rl

    real = executors.run_child

    def second_fails(job):
        if job.step == 1:
            raise RuntimeError("CUDA out of memory (simulated)")
        return real(job)

    monkeypatch.setattr(executors, "run_child", second_fails)
    try:
        record = search_rl.task(
            compose_task(
                "search_rl",
                tmp_path,
                [
                    "reward=synthetic",
                    "controller=random",
                    "device=cpu",
                    "space.layers=2",
                    "search.children=2",
                    "search.batch=2",
                    "search.executor=debug",
                    "progress=false",
                ],
            )
        )
    finally:
        GlobalHydra.instance().clear()
    assert record["status"] == "ok" and record["failed_children"] == 1 and record["best_step"] == 0
    assert json.loads((tmp_path / "best_arch.json").read_text())["step"] == 0
    assert (tmp_path / "children" / "1" / "error.txt").read_text().strip() == (
        "RuntimeError: CUDA out of memory (simulated)"
    )


def test_without_the_childs_own_line_the_cause_comes_from_submitits_report(tmp_path):
    """A job killed before it could write its line: the traceback's exception line, not the log paths."""
    from submitit.core.utils import FailedJobError, UncompletedJobError

    job = executors.ChildJob(
        arch=[],
        step=0,
        seed=0,
        folder=str(tmp_path / "children" / "0"),
        kind="accuracy",
        synthetic={},
        data_config={},
        child=None,
        optimizer=None,
        schedule=None,
        device="cpu",
    )
    failed = FailedJobError(
        "Job (task=0) failed during processing with trace:\n----------------------\n"
        'Traceback (most recent call last):\n  File "x.py", line 1, in <module>\n'
        "ValueError: Invalid learning rate: -1\n\n----------------------\n"
        "You can check full logs with 'job.stderr(0)' and 'job.stdout(0)'or at paths:\n"
        "  - /jobs/7449_0_log.err\n  - /jobs/7449_0_log.out"
    )
    assert executors.failure(job, failed) == "ValueError: Invalid learning rate: -1"
    lost = UncompletedJobError(
        "Job 7 (task: 0) with path /jobs/7_0_result.pkl\nhas not produced any output "
        "(state: TIMEOUT)\nError stream produced:\n" + "-" * 40 + "\nslurmstepd: CANCELLED"
    )
    assert executors.failure(job, lost) == (
        "UncompletedJobError: Job 7 (task: 0) with path /jobs/7_0_result.pkl "
        "has not produced any output (state: TIMEOUT); stderr ends: "
        "slurmstepd: CANCELLED"
    )


# -- search-darts: a diverged search leaves no genotype to retrain --------------------------------------------

DARTS_SEARCH = [
    "data=synthetic",
    "data.shape=[1,8,8]",
    "data.n_train=96",
    "data.n_val=32",
    "data.batch_size=16",
    "supernet.layers=3",
    "supernet.init_channels=4",
    "supernet.nodes=2",
    "trainer.epochs=2",
    "progress=false",
    "device=cpu",
    "arch.heatmap=false",
]
RETRAIN = [
    "model=darts",
    "model.layers=3",
    "model.init_channels=4",
    "data=synthetic",
    "data.shape=[1,8,8]",
    "data.n_train=32",
    "data.n_val=16",
    "trainer.epochs=1",
    "progress=false",
    "device=cpu",
]


def test_a_diverged_darts_search_has_no_genotype_and_train_refuses_it(tmp_path, capsys):
    search = tmp_path / "search"
    assert in_process("search-darts", *DARTS_SEARCH, "optim.lr=1e30", f"hydra.run.dir={search}") == 0
    record = summary(search)
    assert record["status"] == "diverged" and record["genotype"] is None  # no finite epoch, no genotype
    assert not (search / "genotype.json").exists() and not list(search.glob("genotypes/*.json"))
    capsys.readouterr()
    for given in (search / "genotype.json", search):
        run = tmp_path / f"train_{given.name}"
        code = in_process("train", *RETRAIN, f"model.genotype={given}", f"hydra.run.dir={run}")
        lines = error_lines(capsys)
        assert code == 2 and len(lines) == 1 and f"the search in {search} diverged" in lines[0], lines
        assert not (run / "summary.json").exists()


def test_a_genotype_beside_a_search_that_did_not_end_ok_is_refused(tmp_path):
    """A genotype.json beside a search record that does not say ok (copied there, or left by a search that
    then failed): the record decides, and names an epoch's genotype to retrain instead."""
    PUBLISHED["DARTS_V2"].save(tmp_path / "genotype.json")
    PUBLISHED["DARTS_V2"].save(tmp_path / "genotypes" / "epoch_001.json")
    (tmp_path / "summary.json").write_text(
        json.dumps({"status": "failed", "command": "search-darts", "error": "RuntimeError: out of memory\nin cell 3"})
    )
    with pytest.raises(UserError, match=r"failed \(RuntimeError: out of memory in cell 3\).*epoch_001.json"):
        Genotype.load(tmp_path / "genotype.json")
    (tmp_path / "summary.json").write_text(json.dumps({"status": "ok", "command": "search-darts"}))
    assert Genotype.load(tmp_path) == PUBLISHED["DARTS_V2"]
    assert Genotype.load(tmp_path / "genotypes" / "epoch_001.json") == PUBLISHED["DARTS_V2"]  # no record there


# -- genotypes and architectures are checked when read ---------------------------------------------------------

CELL = [["sep_conv_3x3", 0], ["skip_connect", 1], ["dil_conv_3x3", 2], ["avg_pool_3x3", 0]]


@pytest.mark.parametrize(
    "change, message",
    [
        (
            {"normal": [*CELL[:2], ["dil_conv_3x3", -1], CELL[3]]},
            "normal[2]: input -1 is not a state node 1 can read: node i reads 0 or 1 (the cell's inputs) or 2..i+1",
        ),
        ({"reduce": [*CELL[:3], ["avg_pool_3x3", 3]]}, "reduce[3]: input 3 is not a state node 1 can read"),
        ({"normal": [["sep_conv_7x7", 0], *CELL[1:]]}, "normal[0]: 'sep_conv_7x7' is not a DARTS op: use one of"),
        ({"normal": [["none", 0], *CELL[1:]]}, "normal[0]: 'none' is not a DARTS op"),
        (
            {"normal_concat": []},
            "normal_concat is []: list the intermediate nodes whose outputs the cell concatenates, "
            "2..3 (leave it out for all)",
        ),
        ({"reduce_concat": [2, 4]}, "reduce_concat holds 4: list the intermediate nodes"),
        ({"reduce": []}, "reduce has 0 pairs: a cell is a list of [op, input] pairs, two per node"),
        ({"normal": CELL[:3]}, "normal has 3 pairs"),
        ({"normal": [["sep_conv_3x3"], *CELL[1:]]}, 'normal[0] is ["sep_conv_3x3"]: each entry is an [op, input] pair'),
    ],
)
def test_a_broken_genotype_is_one_line_naming_the_file_the_key_and_the_rule(tmp_path, change, message):
    path = tmp_path / "genotype.json"
    path.write_text(
        json.dumps({"normal": CELL, "reduce": CELL, "normal_concat": [2, 3], "reduce_concat": [2, 3], **change})
    )
    with pytest.raises(UserError) as caught:
        Genotype.load(path)
    text = str(caught.value)
    assert text.startswith(f"model.genotype={path}: ") and message in text and "\n" not in text, text


def test_a_genotype_without_concat_concatenates_every_node_and_published_cells_load():
    g = Genotype.from_dict({"normal": CELL, "reduce": CELL})
    assert g.normal_concat == g.reduce_concat == [2, 3]
    for name, cell in PUBLISHED.items():
        assert Genotype.load(name.lower()) == cell


@pytest.mark.parametrize(
    "layers, message",
    [
        (
            [{"type": "conv", "filters": 4, "kh": 3, "kw": 3, "sh": 1, "sw": 1, "inputs": [-1]}],
            "arch[0].inputs is [-1]: layer 0 reads the image alone: []",
        ),
        (
            [{"type": "gap"}, {"type": "fc", "units": 8, "inputs": [1]}],
            "arch[1].inputs is [1]: layer 1 reads earlier layers, 0..0 ([]: the image)",
        ),
        ([{"type": "deconv"}], "arch[0].type 'deconv' is not a layer type: use conv, sep, pool, reduce, fc, gap"),
        ([{"type": "pool", "kernel": 2}], "arch[0]: a pool layer needs 'stride' (kernel, stride)"),
        ([{"type": "fc", "units": 0}], "arch[0].units is 0: a size is a whole number, 1 or more"),
        ([], "arch is not a non-empty list of layers"),
    ],
)
def test_a_broken_architecture_is_one_line_naming_the_file_the_key_and_the_rule(tmp_path, layers, message):
    path = tmp_path / "best_arch.json"
    path.write_text(json.dumps({"arch": layers, "reward": 0.5}))
    for given in (path, tmp_path):  # the file, or the search folder that holds it
        with pytest.raises(UserError) as caught:
            load_arch(str(given))
        assert str(caught.value) == f"model.arch={path}: {message}"


@pytest.mark.parametrize(
    "model, content",
    [
        ("darts", {"normal": [["sep_conv_3x3", -1], ["skip_connect", 1]], "reduce": CELL}),
        ("rl_child", {"arch": [{"type": "fc", "units": 8, "inputs": [0]}]}),
    ],
)
def test_train_refuses_a_broken_model_file_before_its_run_or_data_exist(tmp_path, capsys, model, content):
    """The data named here does not exist: the model's file is checked first, and nothing is written."""
    path = tmp_path / "model.json"
    path.write_text(json.dumps(content))
    key = "genotype" if model == "darts" else "arch"
    run = tmp_path / "run"
    code = in_process(
        "train",
        f"model={model}",
        f"model.{key}={path}",
        "data=cifar10",
        f"data.root={tmp_path / 'missing'}",
        "progress=false",
        "device=cpu",
        f"hydra.run.dir={run}",
    )
    lines = error_lines(capsys)
    assert code == 2 and len(lines) == 1 and lines[0].startswith(f"error: model.{key}={path}: "), lines
    assert "[0]" in lines[0] and not (run / "summary.json").exists()
