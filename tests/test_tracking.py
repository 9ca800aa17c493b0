"""logger=mlflow / tensorboard through the run lifecycle: what a tracker receives is read back and compared with
the run's own record (metrics.csv, summary.json), never just "it ran"."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest
from helpers import compose_task, metrics, summary
from hydra.core.global_hydra import GlobalHydra

pytest.importorskip("mlflow")
from mlflow.tracking import MlflowClient  # noqa: E402

from nas_cli.errors import UserError  # noqa: E402
from nas_cli.runs import signals, tracking  # noqa: E402
from nas_cli.runs.lifecycle import Run  # noqa: E402


@pytest.fixture(autouse=True)
def _clean(monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # what store_uri sets for a file store; undone after
    yield
    GlobalHydra.instance().clear()


def run_of(client: MlflowClient, run_dir):
    return client.get_run(json.loads((run_dir / tracking.STATE).read_text())["run_id"])


def check_rows_and_summary(client: MlflowClient, run, run_dir, step_key: str) -> None:
    """Every finite metrics.csv value is in the run's history at its row's step; every summary figure is final/."""
    rows, record = metrics(run_dir), summary(run_dir)
    for column in rows.select_dtypes("number"):
        expected = [(int(s), v) for s, v in zip(rows[step_key], rows[column]) if math.isfinite(v)]
        history = sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, column))
        assert [h[0] for h in history] == [e[0] for e in expected], column
        assert [h[1] for h in history] == pytest.approx([e[1] for e in expected]), column
    for key, value in record.items():
        if isinstance(value, (int, float)) and not isinstance(value, bool) and key not in tracking.NOT_FIGURES:
            assert run.data.metrics[f"final/{key}"] == pytest.approx(value), key
    assert run.data.tags["status"] == record["status"]


def test_train_run_and_its_resume_are_one_mlflow_run(tmp_path, monkeypatch, train_task):
    monkeypatch.chdir(tmp_path)
    run_dir, store = tmp_path / "outputs" / "train" / "runs" / "r1", f"logger.tracking_uri={tmp_path / 'store'}"
    first = train_task(run_dir, "logger=mlflow", store, "trainer.epochs=2", "optim.lr=0.003")
    client = MlflowClient((tmp_path / "store").as_uri())
    run = run_of(client, run_dir)
    assert client.get_experiment(run.info.experiment_id).name == "outputs/train/runs"  # the folder of run folders
    params = run.data.params
    assert (params["optim.lr"], params["trainer.epochs"], params["model"], params["seed"]) == ("0.003", "2", "cnn", "0")
    assert "optim.lr=0.003" in run.data.tags["overrides"]
    check_rows_and_summary(client, run, run_dir, "epoch")
    assert run.info.status == "FINISHED" and first["status"] == "ok"
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"summary.json", "metrics.csv"} <= artifacts  # (.hydra/ too under the CLI: Hydra writes it)
    saved = json.loads(open(client.download_artifacts(run.info.run_id, "summary.json", str(tmp_path))).read())
    assert saved == summary(run_dir)

    # resume with one more epoch: the same MLflow run goes on, each epoch once in its history
    train_task(run_dir, "logger=mlflow", store, "trainer.epochs=3", "optim.lr=0.003", "resume=true")
    again = run_of(client, run_dir)
    assert again.info.run_id == run.info.run_id
    assert [m.step for m in client.get_metric_history(run.info.run_id, "val_acc")] == [1, 2, 3]
    check_rows_and_summary(client, again, run_dir, "epoch")


@pytest.mark.slow  # MLflow makes its SQLite tables on first use: ~10 s on 2 cores
def test_default_store_is_sqlite_in_mlruns_with_artifacts_beside_it(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    run = Run(
        tmp_path / "r",
        "fuse-bn",
        seed=0,
        device="cpu",
        tracker=tracking.MLflowTracker(tmp_path / "r", tracking.Context(experiment="exp")),
    )
    with run:
        run.figures = lambda: {"max_abs_diff": 1e-6}
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}")
    tracked = run_of(client, tmp_path / "r")
    assert tracked.data.metrics["final/max_abs_diff"] == pytest.approx(1e-6)
    assert (tmp_path / "mlruns" / "artifacts" / "exp").is_dir()  # not ./mlruns/<id>: beside the database
    assert "summary.json" in {a.path for a in client.list_artifacts(tracked.info.run_id)}


def test_dqn_run_into_a_file_store(tmp_path):
    from nas_cli.commands import dqn

    store, run_dir = tmp_path / "store", tmp_path / "dqn"
    cfg = compose_task(
        "dqn",
        run_dir,
        [
            "logger=mlflow",
            f"logger.tracking_uri={store}",
            "logger.experiment=sweep",
            "total_steps=600",
            "eval.every=300",
            "eval.episodes=2",
            "log_every=100",
            "agent.learning_starts=200",
            "progress=false",
            "device=cpu",
        ],
    )
    result = dqn.task(cfg)
    tracking.upload_late_artifacts()  # returns.png is drawn after the run (the CLI: at exit or the next job)
    client = MlflowClient(store.as_uri())
    run = run_of(client, run_dir)
    assert client.get_experiment(run.info.experiment_id).name == "sweep"
    assert run.data.params["total_steps"] == "600" and run.data.params["env"] == "cartpole"
    rows = metrics(run_dir)
    assert len(client.get_metric_history(run.info.run_id, "eval_return")) == rows["eval_return"].notna().sum() == 2
    check_rows_and_summary(client, run, run_dir, "step")
    assert result["status"] == "ok" and run.info.status == "FINISHED"
    assert {"summary.json", "metrics.csv", "returns.png"} <= {a.path for a in client.list_artifacts(run.info.run_id)}


def test_interrupted_run_and_nested_runs(tmp_path):
    """A stopped run is tagged interrupted (MLflow: KILLED); a run inside a run is its child; the rows a run
    wrote before it started go out once it starts."""
    store = tmp_path / "store"

    def tracked(folder):
        return tracking.MLflowTracker(folder, tracking.Context(params={"a": "1"}, experiment="e"), str(store))

    outer = Run(tmp_path / "outer", "train", seed=0, device="cpu", tracker=tracked(tmp_path / "outer"))
    outer.record.log({"epoch": 1, "x": 0.5})  # before the start: kept for it
    with pytest.raises(signals.Interrupted):
        with outer:
            inner = Run(
                tmp_path / "outer" / "members" / "0",
                "train",
                seed=1,
                device="cpu",
                tracker=tracked(tmp_path / "outer" / "members" / "0"),
            )
            with inner:
                inner.record.log({"epoch": 1, "x": 0.25, "name": "text is not a metric"})
            raise signals.Interrupted(15)
    client = MlflowClient(store.as_uri())
    parent, child = run_of(client, tmp_path / "outer"), run_of(client, tmp_path / "outer" / "members" / "0")
    assert (parent.data.tags["status"], parent.info.status) == ("interrupted", "KILLED")
    assert (child.data.tags["status"], child.info.status) == ("ok", "FINISHED")
    assert child.data.tags["mlflow.parentRunId"] == parent.info.run_id
    assert child.data.params["seed"] == "1" and "name" not in child.data.metrics
    assert [(m.step, m.value) for m in client.get_metric_history(parent.info.run_id, "x")] == [(1, 0.5)]


def test_tensorboard_tracks_any_command_with_rows(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = Run(tmp_path, "grad-bench", seed=0, device="cpu", tracker=tracking.TensorBoardTracker(tmp_path))
    with run:
        for i, loss in enumerate([3.0, 2.0, float("nan"), 1.0]):
            run.record.log({"num_dim": 2, "loss": loss}, write=i % 2 == 1)  # no step column: the row's index
    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    assert [(e.step, e.value) for e in events.Scalars("loss")] == [(0, 3.0), (1, 2.0), (3, 1.0)]


def test_mlflow_missing_is_one_line(monkeypatch):
    monkeypatch.setitem(sys.modules, "mlflow", None)  # import mlflow now raises ImportError
    with pytest.raises(UserError, match="logger=mlflow needs MLflow"):
        tracking.check({"_target_": "nas_cli.runs.tracking.MLflowTracker"})


def test_row_steps_and_metric_keys():
    assert tracking.row_step({"epoch": 4, "step": 7.0}, 0) == 7  # step first, then epoch, generation, iteration
    assert tracking.row_step({"batch_size": 8}, 5) == 5
    assert tracking.metric_key("acc@1 (val)") == "acc_1 _val_"
    assert tracking.numeric([("a", float("inf")), ("b", True), ("c", 2)]) == {"c": 2.0}


def _server_python() -> str | None:
    """The interpreter that serves ``mlflow ui``: NAS_CLI_MLFLOW_PYTHON, else the one of ``.venv-mlflow-ui`` (the
    environment `make install` makes for the full ``mlflow`` package), else this one. None when it lacks the
    server (mlflow-skinny has no Flask)."""
    import os
    import subprocess

    made = Path(__file__).resolve().parent.parent / ".venv-mlflow-ui" / "bin" / "python"
    python = os.environ.get("NAS_CLI_MLFLOW_PYTHON", str(made) if made.exists() else sys.executable)
    probe = "import importlib.util as u; raise SystemExit(not (u.find_spec('flask') and u.find_spec('mlflow')))"
    try:
        found = subprocess.run([python, "-c", probe], capture_output=True, timeout=60).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        found = False
    return python if found else None


def test_mlflow_ui_serves_a_sqlite_store(tmp_path):
    """README's `mlflow ui --backend-store-uri sqlite:///mlruns/mlflow.db` answers on a loopback port."""
    import os
    import signal
    import socket
    import subprocess
    import time
    import urllib.request

    python = _server_python()
    if python is None:
        pytest.skip(
            "the MLflow server is not installed (mlflow-skinny has no Flask): pip install mlflow, or set "
            "NAS_CLI_MLFLOW_PYTHON to the python of an environment that has it"
        )
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "true"}
    log = tmp_path / "ui.log"
    with log.open("wb") as out:
        server = subprocess.Popen(
            [
                python,
                "-m",
                "mlflow",
                "ui",
                "--backend-store-uri",
                f"sqlite:///{tmp_path / 'mlflow.db'}",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--workers",
                "1",
            ],
            cwd=tmp_path,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline, status, page = time.monotonic() + 120, None, b""
        while time.monotonic() < deadline and server.poll() is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5) as response:
                    status, page = response.status, response.read()
                break
            except OSError:
                time.sleep(0.5)
        assert status == 200, f"no page from mlflow ui (exit {server.poll()}):\n{log.read_text()[-3000:]}"
        assert b"<html" in page.lower()
    finally:
        if server.poll() is None:
            os.killpg(server.pid, signal.SIGTERM)  # the server and the workers it started
            try:
                server.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(server.pid, signal.SIGKILL)
                server.wait()
