"""A bad command line, as a new user types it: one line naming the key, exit 2, and nothing left on disk.

Every row runs the real command line in this process from an empty folder; the schema refuses most of them
before Hydra composes a run, the rest are refused by the command before its run starts, and either way no
run folder is left behind.
"""

from __future__ import annotations

import pytest
from helpers import in_process as nas_cli

TINY_TRAIN = ["data=synthetic", "data.shape=[1,8,8]", "data.n_train=64", "data.n_val=16"]

# (command line, what the one error line must say)
BAD = [
    # train
    (["train", "trainer.epochs=1.5"], "trainer.epochs=1.5: expected a whole number ≥ 1"),
    (["train", "trainer.epochs=abc"], "trainer.epochs=abc: expected a whole number"),
    (["train", "trainer.epochs=0"], "trainer.epochs=0"),
    (["train", "data.batch_size=0"], "data.batch_size=0"),
    (["train", "optim.lrr=0.1"], "did you mean optim.lr"),
    (["train", "+bogus=3"], "bogus: nas-cli train has no such key"),
    (["train", "device=tpu"], "device=tpu"),
    (["train", "trainer.precision=fp8"], "trainer.precision=fp8"),
    (["train", "optim.lr=-1"], "optim.lr=-1"),
    (["train", "optim.weight_decay=-0.1"], "optim.weight_decay=-0.1"),
    (["train", "model.dropout=1.5"], "model.dropout=1.5"),
    (["train", "data.val_size=2.0"], "data.val_size=2.0"),
    (["train", "model=nope"], "model=nope"),
    (["train", "optim=adamm"], "optim=adamm"),
    (["train", "seed=abc"], "seed=abc"),
    (["train", "threads=0"], "threads=0"),
    (["train", "sched.warmup_epochs=-1"], "sched.warmup_epochs=-1"),
    (["train", "ensemble.size=0"], "ensemble.size=0"),
    (["train", "data=digits", "data.val_size=5000"], "data.val_size=5000"),
    (["train", "~trainer.epochs"], "~trainer.epochs"),
    (["train", "data=cifar10", "data.root=nowhere"], "nowhere"),
    (["train", *TINY_TRAIN, "init_from=nowhere"], "init_from"),
    (["train", "-m", "trainer.epochs=1,abc"], "trainer.epochs=abc"),
    # search-darts
    (["search-darts", "trainer.epochs=1.5"], "trainer.epochs=1.5"),
    (["search-darts", "data.batch_size=0"], "data.batch_size=0"),
    (["search-darts", "arch.order=third"], "arch.order=third"),
    (["search-darts", "arch.fraction=1.5"], "arch.fraction=1.5"),
    # search-rl
    (["search-rl", "child.epochs=abc"], "child.epochs=abc"),
    (["search-rl", "child.epochs=0"], "child.epochs=0"),
    (["search-rl", "search.children=0"], "search.children=0"),
    (["search-rl", "controller=nope"], "controller=nope"),
    # dqn
    (["dqn", "total_steps=abc"], "total_steps=abc"),
    (["dqn", "total_steps=-1"], "total_steps=-1"),
    (["dqn", "agent.batch_size=0"], "agent.batch_size=0"),
    (["dqn", "agent.learning_starts=5000", "total_steps=1000"], "agent.learning_starts=5000"),
    (["dqn", "agent.gamma=1.5"], "agent.gamma=1.5"),
    (["dqn", "optim.lr=0"], "optim.lr=0"),
    # pg
    (["pg", "total_steps=abc"], "total_steps=abc"),
    (["pg", "total_steps=-5"], "total_steps=-5"),
    (["pg", "agent.gamma=2"], "agent.gamma=2"),
    # ga
    (["ga", "generations=abc"], "generations=abc"),
    (["ga", "agent.population=0"], "agent.population=0"),
    # detect
    (["detect", "data.batch_size=0"], "data.batch_size=0"),
    (["detect", "trainer.epochs=0"], "trainer.epochs=0"),
    (["detect", "model=nope"], "model=nope"),
    # fuse-bn
    (["fuse-bn", "batch_sizes=[0]"], "batch_sizes=[0]"),
    (["fuse-bn", "repeats=-1"], "repeats=-1"),
    # prep-imagenet
    (["prep-imagenet", "workers=-1"], "workers=-1"),
    # grad-bench
    (["grad-bench", "num_init=0"], "num_init=0"),
    (["grad-bench", "batch_size=abc"], "batch_size=abc"),
]


@pytest.mark.parametrize(("args", "says"), BAD, ids=[" ".join(a) for a, _ in BAD])
def test_a_bad_command_line_is_one_line_exit_2_and_leaves_nothing(args, says, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert nas_cli(*args, "progress=false") == 2
    lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    assert says in lines[0]
    assert list(tmp_path.rglob("*")) == []  # no run folder, no log, no tracker store


def test_an_unknown_option_lists_only_this_command_s_choices(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert nas_cli("detect", "model=nope") == 2
    line = capsys.readouterr().err
    assert "detector" in line and "resnet18" not in line and "cnn" not in line


def test_report_of_a_missing_folder_is_one_line(tmp_path, capsys):
    assert nas_cli("report", str(tmp_path / "nowhere")) == 2
    lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert len(lines) == 1 and "nowhere" in lines[0]
