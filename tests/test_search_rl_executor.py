"""search-rl children as submitit jobs (``search.executor``): the same history as in-process training,
real processes (LocalExecutor), failed jobs (retried, then reward 0), and resume after a cut round."""

from __future__ import annotations

import functools
import json
import signal
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from helpers import summary
from omegaconf import OmegaConf

from nas_cli.errors import UserError
from nas_cli.hydra_bridge import config_dir
from nas_cli.nas.rl import children as children_module
from nas_cli.nas.rl import executors
from nas_cli.nas.rl.children import ChildOptions, Evaluator
from nas_cli.nas.rl.executors import JobRunner
from nas_cli.nas.rl.search import ChildrenFailed
from nas_cli.nas.rl.spaces import ZophSpace
from nas_cli.runs.signals import Interrupted

# tiny REINFORCE searches with the synthetic reward; one torch thread (a shared 2-core CPU)
SYNTH = [
    "reward=synthetic",
    "device=cpu",
    "controller=reinforce",
    "space.layers=2",
    "threads=1",
    "search.poll_s=0.05",
    "progress=false",
]


@pytest.fixture(autouse=True)
def _keep_threads():
    """``threads=1`` (fast tiny searches on a shared CPU) must not leak into later tests."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def _history(run_dir: Path) -> pd.DataFrame:
    return pd.read_csv(run_dir / "metrics.csv").drop(columns=["seconds"])


def _controller(run_dir: Path) -> dict:
    return torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)["controller"]


def _same_state(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for name in a:
        if isinstance(a[name], torch.Tensor):
            assert torch.equal(a[name], b[name]), name
        elif isinstance(a[name], dict):
            _same_state(a[name], b[name])
        else:
            assert a[name] == b[name], name


@pytest.mark.slow
def test_local_jobs_give_the_inline_history_and_controller_state(tmp_path, search_rl_task):
    """Real processes (submitit.LocalExecutor): the same rewards, so the same REINFORCE update."""
    both = [*SYNTH, "search.children=2", "search.batch=2"]
    inline = search_rl_task(tmp_path / "inline", *both)
    local = search_rl_task(tmp_path / "local", *both, "search.executor=local", "search.slurm.cpus_per_task=1")
    assert inline["status"] == local["status"] == "ok" and local["trained"] == 2
    pd.testing.assert_frame_equal(_history(tmp_path / "local"), _history(tmp_path / "inline"))
    _same_state(_controller(tmp_path / "local"), _controller(tmp_path / "inline"))
    # each child was its own job (a process of its own) with submitit's files in jobs/<id>/
    assert len(list((tmp_path / "local" / "jobs").glob("*/*_result.pkl"))) == 2


def test_batch_is_the_round_size_whatever_the_executor(tmp_path, search_rl_task):
    """batch=3 over 5 children: rounds of 3 and 2; submitit's debug jobs give the inline history and controller."""
    both = [*SYNTH, "search.children=5", "search.batch=3"]
    search_rl_task(tmp_path / "inline", *both)
    search_rl_task(tmp_path / "debug", *both, "search.executor=debug")
    pd.testing.assert_frame_equal(_history(tmp_path / "debug"), _history(tmp_path / "inline"))
    _same_state(_controller(tmp_path / "debug"), _controller(tmp_path / "inline"))
    steps = torch.load(tmp_path / "debug" / "checkpoints" / "last.pt", weights_only=True)["history"]
    assert [r["step"] for r in steps] == [0, 1, 2, 3, 4]


def test_debug_job_trains_the_child_like_the_inline_path(tmp_path):
    """A real 1-epoch child on 100 digits: the job's reward is the in-process reward, to the bit."""
    child = ChildOptions(epochs=1, subset=100)
    data_config = OmegaConf.to_container(OmegaConf.load(config_dir() / "data" / "digits.yaml"))
    data = children_module.load_data(data_config, child, 0)
    arch = ZophSpace(layers=2, filters=[4]).sample(np.random.default_rng(0))

    def evaluator(folder: Path, runner=None) -> Evaluator:
        return Evaluator(
            "accuracy",
            {},
            folder,
            torch.device("cpu"),
            data,
            data_config,
            0,
            child,
            functools.partial(torch.optim.Adam, lr=0.01),
            None,
            runner=runner,
        )

    inline = evaluator(tmp_path / "inline").evaluate([(3, arch)])[0]
    job = evaluator(tmp_path / "job", JobRunner("debug", tmp_path / "job")).evaluate([(3, arch)])[0]
    assert 0.0 < job["reward"] <= 1.0 and job["reward"] == inline["reward"] and job["params"] == inline["params"]
    assert summary(tmp_path / "job" / "children" / "3")["epochs"] == 1  # the child's own run folder


def test_failed_job_is_retried_then_scores_zero_with_its_error(tmp_path, search_rl_task, monkeypatch):
    calls: list[int] = []
    real = executors.run_child

    def flaky(job):  # the first attempt of every child fails
        calls.append(job.step)
        if calls.count(job.step) == 1:
            raise RuntimeError("CUDA out of memory (simulated)")
        return real(job)

    monkeypatch.setattr(executors, "run_child", flaky)
    retried = search_rl_task(
        tmp_path / "retried", *SYNTH, "search.children=2", "search.batch=2", "search.executor=debug", "search.retries=1"
    )
    assert sorted(calls) == [0, 0, 1, 1] and retried["failed_children"] == 0
    search_rl_task(tmp_path / "inline", *SYNTH, "search.children=2", "search.batch=2")
    pd.testing.assert_frame_equal(_history(tmp_path / "retried"), _history(tmp_path / "inline"))

    def broken(job):
        raise RuntimeError("node lost (simulated)")

    monkeypatch.setattr(executors, "run_child", broken)
    with pytest.raises(ChildrenFailed, match=r"all 2 children failed; the first \(child 0\): RuntimeError: node lost"):
        search_rl_task(
            tmp_path / "failed",
            *SYNTH,
            "search.children=2",
            "search.batch=2",
            "search.executor=debug",
            "search.retries=1",
        )
    failed = summary(tmp_path / "failed")
    assert failed["status"] == "failed" and failed["failed_children"] == 2 and failed["best_reward"] is None
    cache = json.loads((tmp_path / "failed" / "cache.json").read_text())
    assert all(r["reward"] == 0.0 and "node lost (simulated)" in r["error"] for r in cache.values())
    assert (pd.read_csv(tmp_path / "failed" / "metrics.csv")["reward"] == 0.0).all()
    assert not (tmp_path / "failed" / "best_arch.json").exists()


def test_resume_after_a_cut_round_resubmits_only_the_missing_children(tmp_path, search_rl_task, monkeypatch):
    both = [*SYNTH, "search.children=4", "search.batch=2", "search.executor=debug"]
    search_rl_task(tmp_path / "whole", *both)
    submitted: list[int] = []
    real_submit, real_keep = JobRunner._submit, JobRunner._keep

    def counting(self, job):
        submitted.append(job.step)
        return real_submit(self, job)

    def cut(self, step, k, result):  # SIGTERM as the first child of the second round arrives
        real_keep(self, step, k, result)
        if step == 2:
            signal.raise_signal(signal.SIGTERM)

    monkeypatch.setattr(JobRunner, "_submit", counting)
    monkeypatch.setattr(JobRunner, "_keep", cut)
    with pytest.raises(Interrupted):
        search_rl_task(tmp_path / "cut", *both)
    assert (
        summary(tmp_path / "cut")["status"] == "interrupted" and len(pd.read_csv(tmp_path / "cut" / "metrics.csv")) == 2
    )
    assert submitted == [0, 1, 2, 3]
    monkeypatch.setattr(JobRunner, "_keep", real_keep)
    submitted.clear()
    s = search_rl_task(tmp_path / "cut", *both, "resume=true")
    assert submitted == [3]  # child 2's result had arrived: kept, not trained again
    assert s["status"] == "ok" and s["trained"] == 4 and s["cache_hits"] == 0
    pd.testing.assert_frame_equal(_history(tmp_path / "cut"), _history(tmp_path / "whole"))
    _same_state(_controller(tmp_path / "cut"), _controller(tmp_path / "whole"))


def test_slurm_parameters_and_bad_settings(tmp_path, search_rl_task):
    params = executors.SlurmOptions(
        partition="gpu", gpus_per_node=2, mem_gb=32, additional_parameters={"account": "abc"}
    ).parameters("slurm")
    assert params["slurm_partition"] == "gpu" and params["gpus_per_node"] == 2 and params["mem_gb"] == 32
    assert params["slurm_additional_parameters"] == {"account": "abc"} and params["timeout_min"] == 60
    assert "slurm_partition" not in executors.SlurmOptions(partition="gpu").parameters("local")
    with pytest.raises(UserError, match="search.executor=cluster"):
        search_rl_task(tmp_path / "a", *SYNTH, "search.executor=cluster")
    with pytest.raises(UserError, match="search.retries=-1"):
        search_rl_task(tmp_path / "b", *SYNTH, "search.executor=debug", "search.retries=-1")
    with pytest.raises(UserError, match="search.batch=0"):
        search_rl_task(tmp_path / "c", *SYNTH, "search.batch=0")
