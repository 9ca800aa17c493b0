"""One run lifecycle for every command: a crash is `failed`, SIGINT and SIGTERM are `interrupted` (exit 130 and
143) at a safe point, and a resumed run ends with the metrics of an uninterrupted one.

Each command runs through the real CLI entry point, in this process, with one of its inner functions wrapped
to fail or to signal this very process on its N-th call: the signal arrives while the run is busy, as
SLURM's or a terminal's would.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
from helpers import SMALL_CLI, summary
from helpers import in_process as nas_cli  # the real command line in this process

from nas_cli.runs.lifecycle import Run
from nas_cli.runs.signals import Interrupted

TIMING = {"epoch_time_s", "samples_per_s", "steps_per_s", "seconds", "grad_time_s"}
SEARCH_DARTS = [
    "data=synthetic",
    "data.shape=[1,8,8]",
    "data.n_train=96",
    "data.n_val=32",
    "data.batch_size=16",
    "supernet.layers=3",
    "supernet.init_channels=4",
    "supernet.nodes=2",
    "trainer.epochs=2",
    "arch.heatmap=false",
    "threads=1",
]
DQN = [
    "total_steps=2000",
    "eval.every=1000",
    "eval.episodes=2",
    "log_every=250",
    "agent.learning_starts=200",
    "agent.train_frequency=4",
    "agent.gradient_steps=1",
    "agent.hidden=[16]",
    "agent.buffer_size=1000",
]
PG = ["total_steps=2000", "eval.every=1000", "eval.episodes=2", "log_every=200", "env.num_envs=2", "agent.hidden=[16]"]
GA = [
    "generations=4",
    "agent.population=16",
    "agent.truncation=4",
    "agent.episodes=2",
    "agent.elite_candidates=3",
    "agent.elite_episodes=2",
    "agent.hidden=[8]",
]
GRAD_BENCH = [
    "num_dims=[2]",
    "num_init=1",
    "num_batch=3",
    "batch_size=200",
    "nes.population=[20]",
    "lr.grid=[0.1,1]",
    "plots=false",
]
DETECT = ["data.n_train=48", "data.n_val=16", "data.batch_size=16", "model.width=4", "trainer.epochs=2", "threads=1"]
FUSE_BN = ["source=torchvision:resnet18", "input_shape=[3,32,32]", "num_classes=10", "batch_sizes=[1,2,4]", "repeats=2"]

# command -> (overrides, the function wrapped, the call on which it fails or signals)
COMMANDS = {
    "train": ([*SMALL_CLI, "trainer.epochs=3"], "nas_cli.engine.trainer.Trainer._backward_step", 11),
    "search-darts": (SEARCH_DARTS, "nas_cli.nas.darts.architect.Architect.step", 4),
    "dqn": (DQN, "nas_cli.agents.dqn.DQN.update", 300),
    "pg": (PG, "nas_cli.agents.pg.PolicyGradient.update", 40),
    "ga": (GA, "nas_cli.agents.ga.Evolution.generation", 2),
    "detect": (DETECT, "nas_cli.engine.trainer.Trainer._backward_step", 5),
    "search-rl": (["reward=synthetic", "search.children=6"], "nas_cli.nas.rl.children.Evaluator._score_synthetic", 3),
    "fuse-bn": (FUSE_BN, "nas_cli.tools.fuse_bn.recipe.median_latencies", 2),
    "grad-bench": (GRAD_BENCH, "nas_cli.gradients.protocol.gradients", 2),
    "prep-imagenet": (["workers=1"], "nas_cli.tools.imagenet.prepare.extract_class", 2),
}
CHECKPOINTED = ["train", "search-darts", "dqn", "search-rl", "pg", "ga", "detect"]
RESUMABLE = [*CHECKPOINTED, "grad-bench"]  # resumed to the same metrics, compared below (grad-bench: by its rows)


@pytest.fixture(autouse=True)
def sigterm_fails_the_test_instead_of_killing_pytest():
    """Outside a run SIGTERM would end the test session: turn it into an error here."""

    def refuse(signum, frame):
        raise AssertionError("SIGTERM arrived outside a run's lifecycle")

    before = signal.signal(signal.SIGTERM, refuse)
    yield
    signal.signal(signal.SIGTERM, before)


@pytest.fixture(autouse=True)
def torch_threads():
    """threads=N sets torch's threads for the process: give the next test the count it had."""
    import torch

    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def archives(tmp_path_factory) -> Path:
    from test_prep_imagenet import build_src

    return build_src(tmp_path_factory.mktemp("ilsvrc"))


def overrides(command: str, tmp_path: Path, archives: Path) -> list[str]:
    base = ["progress=false", "device=cpu", *COMMANDS[command][0]]
    if command == "prep-imagenet":
        base += [f"src={archives}", f"dst={tmp_path / 'imagenet'}"]
    return base


def wrap(monkeypatch, target: str, call: int, action) -> None:
    """Replace ``target`` by a function that calls it and, on call number ``call``, does ``action()``."""
    module_path, _, attr = target.rpartition(".")
    owner_path, _, cls = module_path.rpartition(".")
    import importlib

    try:
        owner = getattr(importlib.import_module(owner_path), cls)  # a method: module.Class.method
    except (ImportError, AttributeError):
        owner = importlib.import_module(module_path)  # a function: module.function
    real = getattr(owner, attr)
    count = {"n": 0}

    def wrapped(*args, **kwargs):
        count["n"] += 1
        if count["n"] == call and action is fail:
            fail()
        out = real(*args, **kwargs)
        if count["n"] == call and action is not fail:
            action()
        return out

    monkeypatch.setattr(owner, attr, wrapped)


def fail():
    raise RuntimeError("injected failure")


def metrics_without_timing(run_dir: Path) -> pd.DataFrame:
    frame = pd.read_csv(run_dir / "metrics.csv")
    return frame.drop(columns=[c for c in frame.columns if c in TIMING])


@pytest.mark.parametrize("command", list(COMMANDS))
def test_a_crash_is_recorded_as_failed_with_one_error_line(command, tmp_path, archives, monkeypatch, capsys):
    _, target, call = COMMANDS[command]
    wrap(monkeypatch, target, call, fail)
    capsys.readouterr()
    code = nas_cli(command, *overrides(command, tmp_path, archives), f"hydra.run.dir={tmp_path / 'run'}")
    errors = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert code == 1
    assert len(errors) == 1 and errors[0] == "error: injected failure", errors
    record = summary(tmp_path / "run")
    assert record["status"] == "failed" and record["error"] == "RuntimeError: injected failure"
    assert record["command"] == command and record["wall_time_s"] > 0 and record["versions"]["torch"]


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
@pytest.mark.parametrize("command", list(COMMANDS))
def test_a_signal_stops_the_run_at_a_safe_point(command, signum, tmp_path, archives, monkeypatch, capsys):
    _, target, call = COMMANDS[command]
    wrap(monkeypatch, target, call, lambda: signal.raise_signal(signum))
    capsys.readouterr()
    run = tmp_path / "run"
    code = nas_cli(command, *overrides(command, tmp_path, archives), f"hydra.run.dir={run}")
    err = capsys.readouterr().err
    assert code == 128 + signum  # 130, 143: what a shell, SLURM and submitit read
    record = summary(run)
    assert record["status"] == "interrupted" and signal.Signals(signum).name in record["error"]
    assert f"resume={run}" in " ".join(err.split())  # the hint names the run to continue
    if command in CHECKPOINTED:
        assert (run / "checkpoints" / "last.pt").is_file()


@pytest.mark.slow
@pytest.mark.parametrize("command", RESUMABLE)
def test_resume_after_sigterm_ends_as_an_uninterrupted_run(command, tmp_path, archives, monkeypatch):
    args = overrides(command, tmp_path, archives)
    assert nas_cli(command, *args, f"hydra.run.dir={tmp_path / 'whole'}") == 0
    _, target, call = COMMANDS[command]
    with monkeypatch.context() as patch:
        wrap(patch, target, call, lambda: signal.raise_signal(signal.SIGTERM))
        assert nas_cli(command, *args, f"hydra.run.dir={tmp_path / 'cut'}") == 143
    cut_rows = len(pd.read_csv(tmp_path / "cut" / "metrics.csv")) if (tmp_path / "cut" / "metrics.csv").is_file() else 0
    assert cut_rows < len(pd.read_csv(tmp_path / "whole" / "metrics.csv"))
    assert nas_cli(command, f"resume={tmp_path / 'cut'}") == 0  # its own overrides are replayed
    pd.testing.assert_frame_equal(
        metrics_without_timing(tmp_path / "whole"), metrics_without_timing(tmp_path / "cut"), check_exact=True
    )
    whole, cut = summary(tmp_path / "whole"), summary(tmp_path / "cut")
    assert cut["status"] == "ok" and cut["resumes"] == 1 and whole["resumes"] == 0
    for key in ("val_acc", "best_eval_return", "best_reward", "genotype", "winners"):
        assert cut.get(key) == whole.get(key), key


@pytest.mark.slow
def test_every_command_takes_the_shared_keys(tmp_path, archives):
    """seed, device, threads (null: torch's default), progress and resume mean the same in every command."""
    import torch

    threads = torch.get_num_threads()
    for command in COMMANDS:
        run = tmp_path / command
        code = nas_cli(
            command,
            *overrides(command, tmp_path, archives),
            "seed=1",
            "device=cpu",
            "threads=null",
            "progress=false",
            "resume=false",
            f"hydra.run.dir={run}",
        )
        assert code == 0, command
        record = summary(run)
        assert record["status"] == "ok" and record["seed"] == 1 and record["device"] == "cpu", command
        assert torch.get_num_threads() == threads, command  # null left torch's default alone


def test_a_finished_run_is_not_run_again_unless_asked_for_more(tmp_path, capsys):
    run = tmp_path / "run"
    assert nas_cli("train", *SMALL_CLI, f"hydra.run.dir={run}") == 0
    first = summary(run)
    stamp = (run / "metrics.csv").stat().st_mtime_ns
    assert nas_cli("train", f"resume={run}") == 0  # the same budget: nothing to do
    assert (run / "metrics.csv").stat().st_mtime_ns == stamp and summary(run) == first
    assert nas_cli("train", f"resume={run}", "trainer.epochs=3") == 0  # more epochs: it continues
    assert list(pd.read_csv(run / "metrics.csv")["epoch"]) == [1, 2, 3] and summary(run)["resumes"] == 1


@pytest.mark.slow
def test_resume_true_picks_the_latest_unfinished_run_with_these_overrides(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    folders = {}
    for width in (4, 8):  # two interrupted runs, the width-8 one newer
        with monkeypatch.context() as patch:
            wrap(patch, COMMANDS["train"][1], 3, lambda: signal.raise_signal(signal.SIGTERM))
            assert nas_cli("train", *SMALL_CLI, f"model.width={width}") == 143
        (folders[width],) = set((tmp_path / "outputs" / "train" / "runs").iterdir()) - set(folders.values())
        time.sleep(1.1)  # run folders are named by the second
    assert nas_cli("train", "resume=true", "model.width=4") == 0  # the older one: its width
    assert summary(folders[4])["status"] == "ok" and summary(folders[8])["status"] == "interrupted"
    assert nas_cli("train", "resume=true", "model.width=16") == 2  # none has that width: an error
    assert nas_cli("train", "resume=true") == 0  # the newest unfinished one
    assert summary(folders[8])["status"] == "ok"


def test_wall_time_adds_up_over_resumes(tmp_path):
    run = Run(tmp_path, "train", seed=0, device="cpu")
    with run:
        time.sleep(0.2)
    again = Run(tmp_path, "train", seed=0, device="cpu", resume=True)
    with again:
        time.sleep(0.1)
    record = summary(tmp_path)
    assert record["wall_time_s"] == pytest.approx(0.3, abs=0.08) and record["resumes"] == 1
    assert record["device_hours"] == pytest.approx(record["wall_time_s"] / 3600) and record["gpu_hours"] == 0


def test_the_summary_says_running_while_the_run_runs(tmp_path):
    seen = {}
    run = Run(tmp_path, "train", seed=3, device="cpu")
    with run:
        seen.update(summary(tmp_path))
        with pytest.raises(Interrupted):
            signal.raise_signal(signal.SIGINT)
            run.stop_point()
    assert seen["status"] == "running" and seen["pid"] == os.getpid() and seen["seed"] == 3
    assert summary(tmp_path)["status"] == "ok"  # the stop was caught inside: the run itself ended well


# -- from outside, as a cluster does it -----------------------------------------------------------------------

SLOW_TRAIN = [
    "data=synthetic",
    "data.shape=[1,16,16]",
    "data.n_train=3072",
    "data.n_val=256",
    "data.batch_size=32",
    "model.width=16",
    "trainer.epochs=4",
    "progress=false",
    "threads=1",
]


def start(run: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "nas_cli", "train", *SLOW_TRAIN, f"hydra.run.dir={run}"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_for_first_epoch(proc: subprocess.Popen, run: Path) -> None:
    deadline = time.monotonic() + 120
    while not (run / "metrics.csv").is_file():
        assert proc.poll() is None, proc.stderr.read()
        assert time.monotonic() < deadline, "no epoch finished in 2 minutes"
        time.sleep(0.05)


@pytest.mark.slow
def test_kill_signals_from_outside_then_resume_to_the_same_result(tmp_path):
    whole = tmp_path / "whole"
    assert (
        subprocess.run(
            [sys.executable, "-m", "nas_cli", "train", *SLOW_TRAIN, f"hydra.run.dir={whole}"], capture_output=True
        ).returncode
        == 0
    )
    # SIGTERM (SLURM's preemption, a time limit): a checkpoint at the next batch, `interrupted`, exit 143
    term = tmp_path / "term"
    proc = start(term)
    wait_for_first_epoch(proc, term)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(60) == 143
    assert summary(term)["status"] == "interrupted" and summary(term)["epochs"] >= 1
    # SIGKILL: no chance to write anything; the summary still says running, the checkpoint is there, the lock is gone
    killed = tmp_path / "killed"
    proc = start(killed)
    wait_for_first_epoch(proc, killed)
    # a second process on a live run's folder is refused before it writes a byte there
    hydra_files = {p: p.read_bytes() for p in (killed / ".hydra").iterdir()}
    for second in ([f"resume={killed}"], [*SLOW_TRAIN, f"hydra.run.dir={killed}"]):
        assert nas_cli("train", *second) == 2
        assert {p: p.read_bytes() for p in (killed / ".hydra").iterdir()} == hydra_files
    proc.kill()
    proc.wait(60)
    assert summary(killed)["status"] == "running"
    for run in (term, killed):
        out = subprocess.run(
            [sys.executable, "-m", "nas_cli", "train", f"resume={run}"], capture_output=True, text=True
        )
        assert out.returncode == 0, out.stderr
        assert summary(run)["status"] == "ok" and summary(run)["resumes"] == 1
        pd.testing.assert_frame_equal(metrics_without_timing(whole), metrics_without_timing(run), check_exact=True)
        assert json.loads((run / "summary.json").read_text())["val_acc"] == summary(whole)["val_acc"]


CUDA = {  # on the GPU: cuDNN deterministic, the CUDA RNG (dropout, augmentation) saved and restored
    "train": (
        [
            "data=synthetic",
            "data.shape=[3,16,16]",
            "data.n_train=512",
            "data.n_val=128",
            "data.batch_size=64",
            "data.augment.hflip=true",
            "data.augment.crop_padding=2",
            "model=resnet18",
            "model.width=8",
            "model.dropout=0.2",
            "optim=sgd",
            "trainer.epochs=3",
            "trainer.deterministic=true",
        ],
        "nas_cli.engine.trainer.Trainer._backward_step",
        11,
    ),
    "search-darts": ([*SEARCH_DARTS, "trainer.deterministic=true"], "nas_cli.nas.darts.architect.Architect.step", 4),
    "dqn": (DQN, "nas_cli.agents.dqn.DQN.update", 300),
}


@pytest.mark.gpu
@pytest.mark.parametrize("command", list(CUDA))
def test_a_cuda_run_stopped_by_sigterm_resumes_to_the_same_result(command, tmp_path, monkeypatch):
    args, target, call = CUDA[command]
    args = [*args, "device=cuda", "progress=false"]
    assert nas_cli(command, *args, f"hydra.run.dir={tmp_path / 'whole'}") == 0
    with monkeypatch.context() as patch:
        wrap(patch, target, call, lambda: signal.raise_signal(signal.SIGTERM))
        assert nas_cli(command, *args, f"hydra.run.dir={tmp_path / 'cut'}") == 143
    assert nas_cli(command, f"resume={tmp_path / 'cut'}") == 0
    assert summary(tmp_path / "cut")["device"].startswith("cuda") and summary(tmp_path / "cut")["gpu_hours"] > 0
    pd.testing.assert_frame_equal(
        metrics_without_timing(tmp_path / "whole"), metrics_without_timing(tmp_path / "cut"), check_exact=True
    )


def test_under_submitit_the_run_is_saved_before_the_requeue(tmp_path):
    """SLURM's warning signal (USR2 under submitit): checkpoint and `interrupted` first, then submitit's own
    handler (which requeues the job and exits)."""
    events = []

    def submitit_requeue(signum, frame):
        events.append(("requeue", signal.Signals(signum).name, summary(tmp_path)["status"]))
        raise SystemExit(-1)

    before = signal.signal(signal.SIGUSR2, submitit_requeue)
    try:
        with pytest.raises(SystemExit), Run(tmp_path, "train", seed=0, device="cpu") as run:
            signal.raise_signal(signal.SIGUSR2)
            run.stop_point(lambda: events.append(("checkpoint",)))
    finally:
        signal.signal(signal.SIGUSR2, before)
    assert events == [("checkpoint",), ("requeue", "SIGUSR2", "interrupted")]
    assert signal.getsignal(signal.SIGUSR2) is before


def test_a_requeued_slurm_job_continues_its_run(tmp_path, monkeypatch):
    run = tmp_path / "job"
    with monkeypatch.context() as patch:
        wrap(patch, COMMANDS["train"][1], 11, lambda: signal.raise_signal(signal.SIGTERM))
        assert nas_cli("train", *SMALL_CLI, "trainer.epochs=3", f"hydra.run.dir={run}") == 143
    monkeypatch.setenv("SLURM_RESTART_COUNT", "1")  # what SLURM sets in a requeued job: same command, same folder
    assert nas_cli("train", *SMALL_CLI, "trainer.epochs=3", f"hydra.run.dir={run}") == 0
    record = summary(run)
    assert record["status"] == "ok" and record["resumes"] == 1 and record["epochs"] == 3
