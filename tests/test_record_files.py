"""Record files in a shared folder and trackers whose server is not there: what a run leaves on disk, its exit
and its time, read back from a real run (the real MLflow client against a loopback server for a server that dies)."""

from __future__ import annotations

import json
import logging
import os
import socket
import stat
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from helpers import SMALL_CLI, in_process, metrics, summary

from nas_cli.errors import UserError
from nas_cli.runs import tracking
from nas_cli.runs.record import atomic_write

RECORD = ["summary.json", "metrics.csv", "checkpoints/last.pt", "model.pt"]


@pytest.fixture
def umask():
    """Set the process's umask for the test: ``umask(0o077)``; the old one is back afterwards."""
    before = os.umask(0o022)
    yield os.umask
    os.umask(before)


@pytest.mark.parametrize("mask, mode", [(0o022, 0o644), (0o077, 0o600)], ids=["umask022", "umask077"])
def test_record_files_follow_the_umask(tmp_path, umask, train_task, one_thread, mask, mode):
    umask(mask)
    run_dir = tmp_path / "run"
    assert train_task(run_dir, "trainer.epochs=1")["status"] == "ok"
    for name in RECORD:
        assert stat.S_IMODE((run_dir / name).stat().st_mode) == mode, name
    assert not list(run_dir.rglob("*.tmp"))  # no temporary file left behind
    atomic_write(tmp_path / "plain.txt", lambda tmp: open(tmp, "w").write("x"))  # noqa: SIM115
    with open(tmp_path / "opened.txt", "w") as out:  # what every atomic write must match
        out.write("x")
    assert (
        stat.S_IMODE((tmp_path / "plain.txt").stat().st_mode)
        == stat.S_IMODE((tmp_path / "opened.txt").stat().st_mode)
        == mode
    )


def test_an_unreachable_tracking_server_is_refused_in_seconds(tmp_path, monkeypatch, capsys):
    pytest.importorskip("mlflow")
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    run_dir = tmp_path / "outputs" / "run"
    began = time.perf_counter()
    code = in_process(
        "train", *SMALL_CLI, "logger=mlflow", "logger.tracking_uri=http://127.0.0.1:9", f"hydra.run.dir={run_dir}"
    )
    took = time.perf_counter() - began
    assert code == 2
    assert took < 10, f"{took:.1f} s"  # MLflow's own retries would take about four minutes
    lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("error")]
    assert lines == [
        "error: logger.tracking_uri=http://127.0.0.1:9: no tracking server answers there "
        "(Connection refused); start it, name another, or track into a local store "
        "(drop logger.tracking_uri) or not at all (logger=csv)"
    ]
    left = {p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*") if p.is_file()}
    assert not [
        p
        for p in left
        if p.rsplit("/", 1)[-1] in {"summary.json", "metrics.csv", tracking.STATE}
        or "checkpoints" in p
        or p.startswith("mlruns")
    ], left


@pytest.mark.slow
def test_a_tracking_server_that_accepts_but_never_answers_is_refused_in_seconds(monkeypatch):
    pytest.importorskip("mlflow")
    monkeypatch.delenv("MLFLOW_HTTP_REQUEST_TIMEOUT", raising=False)
    with socket.create_server(("127.0.0.1", 0)) as mute:  # listens (the kernel accepts), never reads or answers
        uri = f"http://127.0.0.1:{mute.getsockname()[1]}"
        began = time.perf_counter()
        with pytest.raises(UserError, match=r"no tracking server answers there \(no answer in time\)"):
            tracking.check({"_target_": "nas_cli.runs.tracking.MLflowTracker", "tracking_uri": uri})
        assert time.perf_counter() - began < tracking.PROBE_TIMEOUT_S + 3


class DyingMLflowServer(ThreadingHTTPServer):
    """Enough of MLflow's REST API for a run to start on; it goes away at the run's first metrics: that call
    finds its connection dropped, and every call after it finds nothing listening."""

    daemon_threads = True

    def __init__(self):
        super().__init__(("127.0.0.1", 0), _Handler)
        self.paths: list[str] = []
        self.gone = False
        self.thread = threading.Thread(target=self.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    @property
    def uri(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def go_away(self) -> None:
        self.gone = True
        threading.Thread(target=lambda: (self.shutdown(), self.server_close()), daemon=True).start()


class _Handler(BaseHTTPRequestHandler):
    EXPERIMENT = {"experiment_id": "1", "name": "runs", "lifecycle_stage": "active"}
    RUN = {
        "info": {
            "run_id": "r1",
            "run_uuid": "r1",
            "experiment_id": "1",
            "status": "RUNNING",
            "lifecycle_stage": "active",
        },
        "data": {},
    }

    def do_GET(self):
        self._answer()

    def do_POST(self):
        self._answer()

    def _answer(self):
        server: DyingMLflowServer = self.server
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        server.paths.append(self.path.split("?")[0])
        if server.gone or (self.path.endswith("/runs/log-batch") and b'"metrics"' in body):
            server.go_away()
            self.close_connection = True  # no answer at all: the server died mid-call
            return
        reply = {"experiment": self.EXPERIMENT} if "/experiments/" in self.path else {}
        if self.path.endswith("/runs/create"):
            reply = {"run": self.RUN}
        data = b"OK" if self.path == "/health" else json.dumps(reply).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


@pytest.mark.slow
def test_a_tracking_server_that_dies_mid_run_costs_seconds_and_one_warning(
    tmp_path, monkeypatch, caplog, train_task, one_thread
):
    pytest.importorskip("mlflow")
    for key in tracking.MLFLOW_HTTP:
        monkeypatch.delenv(key, raising=False)
    server = DyingMLflowServer()
    run_dir = tmp_path / "run"
    tracking.check({"_target_": "nas_cli.runs.tracking.MLflowTracker", "tracking_uri": server.uri})  # it answers
    began = time.perf_counter()
    with caplog.at_level(logging.WARNING):
        result = train_task(run_dir, "logger=mlflow", f"logger.tracking_uri={server.uri}", "trainer.epochs=3")
    took = time.perf_counter() - began
    server.thread.join(5)
    assert "/api/2.0/mlflow/runs/create" in server.paths  # the real client tracked the run until the server died
    assert server.gone
    assert result["status"] == summary(run_dir)["status"] == "ok"
    assert len(metrics(run_dir)) == 3
    assert json.loads((run_dir / tracking.STATE).read_text())["sent"] == 0  # a resume sends the rows again
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and "tracking stopped" in warnings[0], warnings
    assert took < 20, f"{took:.1f} s"  # MLflow's own retries would take about four minutes
    assert all(key not in os.environ for key in tracking.MLFLOW_HTTP)  # the tracker's settings are its own
