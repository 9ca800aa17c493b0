"""Run folders are exclusive and the record is true on every exit.

- every launch gets its own folder, even launches in the same second;
- a folder held by a live process, or holding another run, is refused before anything is written;
- a refused command (a resume whose overrides contradict the run, a damaged checkpoint) leaves the
  folder byte for byte as it was, and a refused new run leaves no folder;
- a burst of SIGTERMs still ends in ``interrupted`` (exit 143), and a sweep whose parent is stopped
  stops its jobs and prints the command that resumes all of them.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import pandas as pd
import pytest
import yaml
from helpers import SMALL_CLI, summary
from helpers import in_process as nas_cli

from nas_cli.errors import UserError
from nas_cli.runs import folders
from nas_cli.runs.files import CHECKPOINT

TIMING = ["epoch_time_s", "samples_per_s"]
# a few seconds a run on one thread, with batches of a few milliseconds so that signals land mid-epoch
BUSY = [
    "data=synthetic",
    "data.shape=[1,12,12]",
    "data.n_train=2048",
    "data.n_val=64",
    "data.batch_size=32",
    "model.width=8",
    "model.hidden=32",
    "progress=false",
    "threads=1",
]


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file below ``folder`` (the lock file aside) and its bytes."""
    return {
        str(p.relative_to(folder)): p.read_bytes()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name != folders.LOCK
    }


def without_timing(run: Path) -> pd.DataFrame:
    return pd.read_csv(run / "metrics.csv").drop(columns=TIMING, errors="ignore")


def nas_cli_process(*args: str, cwd: Path | None = None, **kwargs) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "nas_cli", *args], cwd=cwd, text=True, **kwargs)


def wait_until_running(proc: subprocess.Popen, run: Path, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not ((run / "summary.json").is_file() and "running" in (run / "summary.json").read_text()):
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "the run did not start"
        time.sleep(0.05)


# -- names and locks -----------------------------------------------------------------------------------------


def test_launches_in_the_same_second_get_folders_of_their_own(tmp_path):
    when = datetime(2026, 1, 2, 3, 4, 5)
    made = [folders.new_folder(tmp_path, when) for _ in range(3)]
    assert [p.name for p in made] == ["2026-01-02_03-04-05", "2026-01-02_03-04-05_1", "2026-01-02_03-04-05_2"]


@pytest.mark.slow
def test_three_processes_started_at_once_write_three_whole_records(tmp_path):
    procs = [
        nas_cli_process(
            "train",
            *SMALL_CLI,
            f"seed={seed}",
            f"model.width={width}",
            "trainer.epochs=1",
            cwd=tmp_path,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        for seed, width in ((1, 4), (2, 6), (3, 8))
    ]
    assert [p.wait(180) for p in procs] == [0, 0, 0], [p.stderr.read() for p in procs]
    runs = sorted((tmp_path / "outputs" / "train" / "runs").iterdir())
    assert len(runs) == 3
    import torch

    seen = set()
    for run in runs:
        config = yaml.safe_load((run / ".hydra" / "config.yaml").read_text())
        weights = torch.load(run / "model.pt", weights_only=True)["model"]
        seen.add(
            (config["seed"], config["model"]["width"], summary(run)["seed"], weights["features.0.0.weight"].shape[0])
        )
        assert summary(run)["status"] == "ok"
    # each folder's config, summary and weights belong to one and the same run
    assert seen == {(1, 4, 1, 4), (2, 6, 2, 6), (3, 8, 3, 8)}


def test_a_lock_is_refused_to_a_second_process_and_freed_by_sigkill(tmp_path):
    run = tmp_path / "run"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time\nfrom nas_cli.runs import folders\n"
            f"folders.claim({str(run)!r}, resume=False)\nprint('held', flush=True)\ntime.sleep(60)",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        assert folders.holder(run) == f"process {holder.pid} on {os.uname().nodename}"
        with pytest.raises(UserError, match="in use by process"):
            folders.claim(run, resume=True)
    finally:
        holder.kill()
        holder.wait()
    assert folders.holder(run) is None  # the kernel dropped the lock with the process
    folders.claim(run, resume=True)
    folders.release(run)


def test_a_finished_run_is_never_written_again_without_resume(tmp_path, capsys):
    run = tmp_path / "run"
    assert nas_cli("train", *SMALL_CLI, f"hydra.run.dir={run}") == 0
    before = snapshot(run)
    assert nas_cli("train", *SMALL_CLI, "model.width=4", f"hydra.run.dir={run}") == 2
    err = capsys.readouterr().err
    assert "already holds a run" in err and f"resume={run}" in err and len(err.strip().splitlines()) == 1
    assert snapshot(run) == before


def test_a_refused_resume_changes_nothing_in_the_run_folder(tmp_path, capsys):
    run = tmp_path / "run"
    assert nas_cli("train", *SMALL_CLI, "trainer.epochs=3", f"hydra.run.dir={run}") == 0
    summary_ = json.loads((run / "summary.json").read_text())
    summary_["status"] = "interrupted"  # as if stopped before its last epoch
    (run / "summary.json").write_text(json.dumps(summary_))
    before = snapshot(run)
    # an override that contradicts the run's config: refused before Hydra writes anything
    assert nas_cli("train", f"resume={run}", "model.width=4") == 2
    assert "model.width" in capsys.readouterr().err
    assert snapshot(run) == before
    # a damaged checkpoint: refused by the command after Hydra wrote .hydra/ and the log; both are put back
    (run / CHECKPOINT).write_bytes(b"not a checkpoint")
    before = snapshot(run)
    assert nas_cli("train", f"resume={run}", "trainer.epochs=4") == 2
    assert "checkpoint" in capsys.readouterr().err
    assert snapshot(run) == before
    assert nas_cli("train", f"resume={run}") == 2  # and a plain resume still reads the same config
    assert snapshot(run) == before


def test_a_refused_new_run_leaves_no_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert nas_cli("train", *SMALL_CLI, "device=tpu") == 2
    assert not (tmp_path / "outputs" / "train" / "runs").exists() or not any(
        (tmp_path / "outputs" / "train" / "runs").iterdir()
    )


@pytest.mark.parametrize(
    "override",
    [
        "+model.init._target_=os.system",
        "hydra.run.dir=/tmp",
        "model.init={_target_: pathlib.Path.write_text, self: x, data: y}",
        "model.width=${oc.env:HOME}",
    ],
)
def test_a_replayed_override_never_picks_code(override, tmp_path, capsys):
    run = tmp_path / "run"
    (run / ".hydra").mkdir(parents=True)
    (run / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump([override]))
    (run / "summary.json").write_text(json.dumps({"status": "interrupted", "command": "train"}))
    before = snapshot(run)
    assert nas_cli("train", f"resume={run}") == 2
    assert "picks code" in capsys.readouterr().err
    assert snapshot(run) == before


def test_stale_temporary_files_go_when_the_folder_is_taken_again(tmp_path):
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    stale = [run / ".summary.json.abc123.tmp", run / "checkpoints" / ".last.pt.xyz.tmp"]
    for p in stale:
        p.write_bytes(b"half")
    (run / "summary.json").write_text("{}")
    folders.claim(run, resume=True)
    folders.release(run)
    assert not any(p.exists() for p in stale) and (run / "summary.json").is_file()


def test_started_is_the_start_time(tmp_path):
    run = tmp_path / "run"
    assert nas_cli("train", *SMALL_CLI, "trainer.epochs=3", f"hydra.run.dir={run}") == 0
    record = summary(run)
    started = datetime.fromisoformat(record["started"]).timestamp()
    ended = (run / "summary.json").stat().st_mtime
    assert started <= (run / ".hydra" / "config.yaml").stat().st_mtime + 1  # not the time of the last write
    assert ended - started >= record["wall_time_s"] - 1


# -- signals from outside ------------------------------------------------------------------------------------


@pytest.mark.slow
def test_a_burst_of_sigterms_still_records_interrupted_and_resumes_to_the_same_result(tmp_path):
    whole = tmp_path / "whole"
    assert nas_cli("train", *BUSY, "data.n_train=4096", "trainer.epochs=3", f"hydra.run.dir={whole}") == 0
    run = tmp_path / "run"
    for attempt in range(3):  # the record has been lost to such a burst before: try more than once
        if run.exists():
            shutil.rmtree(run)
        proc = nas_cli_process(
            "train",
            *BUSY,
            "data.n_train=4096",
            "trainer.epochs=3",
            f"hydra.run.dir={run}",
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        wait_until_running(proc, run)
        for _ in range(150):  # 150 signals within about 0.1 s
            os.kill(proc.pid, signal.SIGTERM)
            time.sleep(0.1 / 150)
        assert proc.wait(60) == 143, proc.stderr.read()
        assert summary(run)["status"] == "interrupted", attempt
    assert nas_cli("train", f"resume={run}") == 0
    assert summary(run)["status"] == "ok"
    pd.testing.assert_frame_equal(without_timing(whole), without_timing(run), check_exact=True)


@pytest.mark.slow
def test_a_stopped_sweep_stops_its_jobs_and_its_hint_resumes_them(tmp_path):
    sweep = ["-m", *BUSY, "trainer.epochs=3", "seed=0,1,2"]
    assert nas_cli("train", *sweep, f"hydra.sweep.dir={tmp_path / 'whole'}") == 0
    parent = nas_cli_process(
        "train",
        *sweep,
        "hydra/launcher=joblib",
        "hydra.launcher.n_jobs=2",
        f"hydra.sweep.dir={tmp_path / 'sweep'}",
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    wait_until_running(parent, tmp_path / "sweep" / "0")
    time.sleep(0.5)
    parent.send_signal(signal.SIGTERM)
    assert parent.wait(120) == 143
    hint = parent.stderr.read().strip().splitlines()[-1]
    statuses = {summary(job)["status"] for job in (tmp_path / "sweep").glob("[0-9]*")}
    assert statuses <= {"interrupted", "ok"} and "interrupted" in statuses
    assert "running" not in statuses
    # the printed command continues every job of the sweep
    command = shlex.split(hint.split("continue with `", 1)[1].rstrip("`"))
    assert command[:3] == ["nas-cli", "train", "-m"] and "resume=true" in command
    assert nas_cli(*command[1:]) == 0
    for job in ("0", "1", "2"):
        assert summary(tmp_path / "sweep" / job)["status"] == "ok"
        pd.testing.assert_frame_equal(
            without_timing(tmp_path / "whole" / job), without_timing(tmp_path / "sweep" / job), check_exact=True
        )
