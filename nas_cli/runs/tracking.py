"""Experiment trackers (``logger=``): where a run's record goes besides its folder, for every command.

The run lifecycle (``nas_cli.runs.lifecycle.Run``) drives a tracker; no command talks to one:

- ``start``: when the run starts (resumed runs continue where they were: ``tracking.json``);
- ``rows``: each time ``metrics.csv`` is written, with every row so far (only new rows go out);
- ``finish``: when the run ends, with its summary (final figures, status) and folder (artifacts).

``logger=csv`` (``Tracker``) adds nothing: the run record alone, which ``report`` reads.
``logger=tensorboard`` writes event files into the run folder; ``logger=mlflow`` makes each run an MLflow
run (MLflow is an optional extra, imported only then). Only the writing process of a multi-process run
tracks (``RunOptions.run`` gives the others no tracker).

A tracking server that does not answer is refused before the run starts (``check``: one line, in seconds);
one that goes away mid-run costs seconds (half a minute at most), not MLflow's minutes of retries, then one
warning, and the run goes on with its folder's record alone.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import logging
import math
import numbers
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import SupportsInt, cast

from nas_cli.config_values import as_dict
from nas_cli.errors import UserError
from nas_cli.runs.files import METRICS, SUMMARY

log = logging.getLogger(__name__)
STATE = "tracking.json"  # in the run folder: the tracker's run id and how many rows it has sent (resume goes on)
STEP_KEYS = ("step", "epoch", "generation", "iteration")  # a row's step: the first of these it has, else its index
NOT_FIGURES = {"pid", "seed", "resumes"}  # numbers in summary.json that are not results
ARTIFACTS = (SUMMARY, METRICS, ".hydra/config.yaml", ".hydra/overrides.yaml")  # besides every *.png
# MLflow's HTTP client retries a failed call 7 times with doubling waits (about four minutes) and waits 120 s for
# an answer: a server gone down would stall the run that long. The tracker's calls ask for seconds instead
# (where the environment sets none of these), and stop tracking on the first failure.
MLFLOW_HTTP = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "10",
}
PROBE_TIMEOUT_S = 3  # seconds for the one try, before a run, that its server answers (or $MLFLOW_HTTP_REQUEST_TIMEOUT)


@dataclass(frozen=True)
class Context:
    """What a tracker records about a run besides its rows: made once per task from Hydra's config.

    params: the composed config, flattened (``optim.lr``), plus each config group's choice (``model``).
    overrides: the command line's overrides (``{"optim.lr": "0.1"}``): what a sweep varies.
    experiment: the name runs are grouped under: the folder that holds the run folder, so that a
        multirun's jobs are one experiment and single runs of a command another.
    name: the run's name: its folder's name, with its overrides in a multirun.
    """

    params: dict[str, str] = field(default_factory=dict)
    overrides: dict[str, str] = field(default_factory=dict)
    experiment: str = "nas-cli"
    name: str = "run"


def context_from_config(cfg, run_dir: Path) -> Context:
    """The ``Context`` of the running Hydra task with config ``cfg`` (call inside the task)."""
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import OmegaConf

    hydra = HydraConfig.get()
    try:
        plain = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=False)
    except Exception:  # an interpolation that only resolves later: record it as written
        plain = OmegaConf.to_container(cfg, resolve=False, throw_on_missing=False)
    params = dict(_flatten(plain))
    params.update(
        {
            group: str(choice)
            for group, choice in hydra.runtime.choices.items()
            if choice is not None and not group.startswith("hydra/")
        }
    )
    pairs = (o.split("=", 1) for o in hydra.overrides.task if "=" in o)
    overrides = {k.lstrip("+~"): v for k, v in pairs}
    parent = run_dir.parent.resolve()
    try:
        experiment = str(parent.relative_to(Path.cwd().resolve()))
    except ValueError:
        experiment = str(parent)
    if experiment == ".":  # run folders right in the working directory: name them by its path
        experiment = str(parent)
    name = run_dir.name
    if str(hydra.mode) == "RunMode.MULTIRUN" and hydra.job.override_dirname:
        name = f"{name} {hydra.job.override_dirname}"
    return Context(params, overrides, experiment, name)


def _flatten(node, prefix: str = ""):
    if isinstance(node, dict):
        for key, value in node.items():
            yield from _flatten(value, f"{prefix}.{key}" if prefix else str(key))
    else:
        yield prefix, str(node)


def check(logger_cfg) -> None:
    """Fail now, with one line, when the chosen tracker cannot run (its package is not installed, its server
    does not answer)."""
    if logger_cfg is None or not logger_cfg.get("_target_"):
        return
    from hydra.utils import get_class
    from omegaconf import OmegaConf

    options = as_dict(logger_cfg) if OmegaConf.is_config(logger_cfg) else dict(logger_cfg)
    cls = get_class(options.pop("_target_"))
    getattr(cls, "check", lambda **_: None)(**{k: v for k, v in options.items() if not k.startswith("_")})


def row_step(row: dict, index: int) -> int:
    """A row's step: its ``step`` / ``epoch`` / ``generation`` / ``iteration`` column, else its index."""
    for key in STEP_KEYS:
        value = row.get(key)
        if isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value):
            return int(cast(SupportsInt, value))  # typeshed's numbers.Real declares no __int__; real numbers have one
    return index


def numeric(items) -> dict[str, float]:
    """The finite numbers among ``items`` (NaN and inf are gaps in a curve, not points)."""
    return {
        str(k): float(v)
        for k, v in items
        if isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v)
    }


class Tracker:
    """``logger=csv``: the run record alone (``metrics.csv``, ``summary.json``); nothing more is written.

    Subclasses send rows as they come (``_send``) and the end (``_end``); this class keeps count of the rows
    sent, in ``tracking.json``, so that a resumed run sends only rows it has not sent before.
    """

    _active: list[Tracker] = []  # the trackers of the runs now running in this process, outermost first

    def __init__(self, run_dir: str | Path | None = None, context: Context | None = None):
        self.dir = Path(run_dir) if run_dir is not None else None
        self.context = context or Context()
        self.started = False
        self.sent = 0
        self._failed = False
        self.parent: Tracker | None = None

    @staticmethod
    def check(**options) -> None:
        """Refuse (``UserError``) a tracker with these ``logger.*`` options that cannot run; called before the run."""

    @property
    def folder(self) -> Path:
        """The run folder: a tracker that writes anything is always made for one (``make``)."""
        assert self.dir is not None
        return self.dir

    @property
    def failed(self) -> bool:
        """Tracking has stopped, for this run and every run it is nested in (they share one store)."""
        return self._failed or (self.parent is not None and self.parent.failed)

    # -- driven by the lifecycle ---------------------------------------------------------------
    def start(self, *, resume: bool, seed: int | None, command: str) -> None:
        state = self._load_state() if resume else {}
        self.sent = int(state.get("sent", 0))
        self.parent = next((t for t in reversed(Tracker._active) if type(t) is type(self)), None)
        if self.failed:  # nested in a run whose tracking has stopped: untracked too, without another warning
            return
        try:
            with self._calls():
                self._open(state, seed, command)
        except UserError:
            raise
        except Exception as ex:
            if self.parent is not None:  # a nested run (ensemble member) starts mid-run: the outer run goes on
                self._stop(ex)
                return
            # a store that cannot be reached or written: before anything is written
            raise UserError(
                f"{type(self).__name__} could not start ({type(ex).__name__}: {reason(ex)}); check the logger.* options"
            ) from ex
        self.started = True
        Tracker._active.append(self)
        self._save_state()

    def rows(self, rows: list[dict]) -> None:
        """``metrics.csv`` was written with ``rows``: send those not sent yet (rows before start wait)."""
        if not self.started or self.failed or len(rows) <= self.sent:
            return
        self._guard(
            self._send,
            [(row_step(row, i), numeric(row.items())) for i, row in enumerate(rows[self.sent :], start=self.sent)],
        )
        if not self.failed:  # rows that did not go out stay unsent: a resume sends them
            self.sent = len(rows)
            self._save_state()

    def finish(self, summary: dict, rows: list[dict], status: str) -> None:
        if not self.started:
            return
        self.rows(rows)
        if self in Tracker._active:
            Tracker._active.remove(self)
        if not self.failed:
            self._guard(self._end, summary, status)

    # -- what a tracker does (nothing, here) -----------------------------------------------------
    def _open(self, state: dict, seed: int | None, command: str) -> None:
        pass

    def _send(self, points: list[tuple[int, dict[str, float]]]) -> None:
        pass

    def _end(self, summary: dict, status: str) -> None:
        pass

    def _state(self) -> dict:
        return {}

    def _calls(self) -> contextlib.AbstractContextManager:
        """The settings the tracker's calls to its store run under."""
        return contextlib.nullcontext()

    # -- helpers ---------------------------------------------------------------------------------
    def _guard(self, fn, *args) -> None:
        """A tracker that fails mid-run (a server gone) must not lose the run: warn once and stop tracking."""
        try:
            with self._calls():
                fn(*args)
        except Exception as ex:
            self._stop(ex)

    def _stop(self, ex: Exception) -> None:
        """Stop tracking this run and the runs it is nested in (one store: one warning, not one a run)."""
        if self.failed:
            return
        self._failed = True
        outer = self.parent
        while outer is not None:
            outer._failed = True
            outer = outer.parent
        log.warning(
            f"{type(self).__name__}: tracking stopped ({type(ex).__name__}: {reason(ex)}); "
            f"the run goes on, and its record in {self.dir} is complete"
        )

    def _load_state(self) -> dict:
        path = self.dir / STATE if self.dir is not None else None
        try:
            return json.loads(path.read_text()) if path is not None and path.is_file() else {}
        except (OSError, json.JSONDecodeError):
            return {}

    def _save_state(self) -> None:
        state = self._state()
        if self.dir is None or not state:
            return
        from nas_cli.runs.record import write_json

        write_json(self.dir / STATE, {**state, "sent": self.sent})


class TensorBoardTracker(Tracker):
    """``logger=tensorboard``: every numeric column of ``metrics.csv`` as a scalar at its row's step, and
    the overrides as hyper-parameters beside the final figures (the HPARAMS tab compares a sweep's jobs).

    Args:
        log_dir: the event files' folder, inside the run folder.
    """

    def __init__(self, run_dir: str | Path | None = None, context: Context | None = None, log_dir: str = "tensorboard"):
        super().__init__(run_dir, context)
        self.log_dir = log_dir

    def _open(self, state: dict, seed: int | None, command: str) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(self.folder / self.log_dir))

    def _send(self, points) -> None:
        for step, values in points:
            for key, value in values.items():
                self.writer.add_scalar(key, value, step)
        self.writer.flush()

    def _end(self, summary: dict, status: str) -> None:
        figures = {f"final/{k}": v for k, v in numeric(summary.items()).items() if k not in NOT_FIGURES}
        hparams = dict(self.context.overrides) or {"run": self.folder.name}
        self.writer.add_hparams(hparams, figures, run_name=".")
        self.writer.close()

    def _state(self) -> dict:
        return {"tracker": "tensorboard"}


# MLflow's run status for each of the record's
MLFLOW_STATUS = {"ok": "FINISHED", "diverged": "FINISHED", "failed": "FAILED", "interrupted": "KILLED"}


class MLflowTracker(Tracker):
    """``logger=mlflow``: each run an MLflow run: the config as params, every ``metrics.csv`` row as metrics at
    its step, ``summary.json``'s figures as ``final/<name>`` metrics, the status as the ``status`` tag, and
    ``summary.json``, ``metrics.csv``, Hydra's config and the folder's plots as artifacts. A multirun's jobs
    are one experiment; runs nested in a run (ensemble members) are its child runs.

    Args:
        tracking_uri: where runs go. null: ``$MLFLOW_TRACKING_URI`` if set, else a local store in
            ``./mlruns`` (``mlruns/mlflow.db``, SQLite, MLflow 3's default backend; artifacts beside it).
            ``sqlite:///PATH``, ``http(s)://SERVER``, or a folder / ``file:`` URI for MLflow's older file store.
        experiment: the experiment's name; null: the folder holding the run folder (a multirun's sweep folder).
    """

    def __init__(
        self,
        run_dir: str | Path | None = None,
        context: Context | None = None,
        tracking_uri: str | None = None,
        experiment: str | None = None,
    ):
        super().__init__(run_dir, context)
        self.uri = store_uri(tracking_uri)
        self.experiment = experiment
        self.run_id: str | None = None
        self.experiment_id: str  # set with the run, by _open
        self.uploaded: dict[str, float] = {}

    @property
    def active_run_id(self) -> str:
        """The MLflow run's id, which ``_open`` sets before anything is sent."""
        assert self.run_id is not None
        return self.run_id

    @staticmethod
    def check(tracking_uri: str | None = None, **_) -> None:
        """MLflow is installed and, for a server, something answers there (in seconds: see ``probe``)."""
        try:
            import mlflow  # noqa: F401
        except ImportError as ex:
            raise UserError("logger=mlflow needs MLflow: pip install 'nas-cli[mlflow]' (or mlflow-skinny)") from ex
        uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
        if uri and uri.lower().startswith(("http://", "https://")):
            probe(uri, f"logger.tracking_uri={uri}" if tracking_uri else f"MLFLOW_TRACKING_URI={uri}")

    def _calls(self) -> contextlib.AbstractContextManager:
        return bounded_http()

    def _open(self, state: dict, seed: int | None, command: str) -> None:
        from mlflow.tracking import MlflowClient

        self.client = MlflowClient(tracking_uri=self.uri)
        if state.get("run_id") and state.get("tracking_uri") == self.uri and self._continue(state["run_id"]):
            return
        parent = cast("MLflowTracker | None", self.parent)  # start() nests a tracker only in one of its own type
        experiment = parent.experiment_id if parent else self._experiment_id()
        tags = {
            "status": "running",
            "command": command,
            "run_dir": str(self.folder.resolve()),
            "overrides": " ".join(f"{k}={v}" for k, v in self.context.overrides.items()),
        }
        if parent:
            tags["mlflow.parentRunId"] = parent.active_run_id
        name = self.folder.name if parent else self.context.name
        self.experiment_id = experiment
        self.run_id = self.client.create_run(experiment, run_name=name, tags=tags).info.run_id
        self._params({**self.context.params, "seed": str(seed)})

    def _continue(self, run_id: str) -> bool:
        """Resume: the same MLflow run goes on (params it has stay; any new ones are added)."""
        try:
            run = self.client.get_run(run_id)
        except Exception:
            log.info(f"MLflow run {run_id} is not in {self.uri}: starting a new one")
            return False
        self.run_id, self.experiment_id = run_id, run.info.experiment_id
        self.client.update_run(run_id, status="RUNNING")
        self.client.set_tag(run_id, "status", "running")
        have = run.data.params
        self._params({k: v for k, v in self.context.params.items() if k not in have})
        return True

    def _experiment_id(self) -> str:
        name = self.experiment or self.context.experiment
        found = self.client.get_experiment_by_name(name)
        if found is not None:
            return found.experiment_id
        try:
            return self.client.create_experiment(name, artifact_location=artifact_root(self.uri, name))
        except Exception:  # another job of the sweep made it first
            found = self.client.get_experiment_by_name(name)
            if found is None:
                raise
            return found.experiment_id

    def _params(self, params: dict[str, str]) -> None:
        from mlflow.entities import Param

        items = [Param(k[:250], v[:6000]) for k, v in params.items()]  # MLflow's length limits
        for i in range(0, len(items), 100):  # MLflow takes at most 100 params a call
            self.client.log_batch(self.active_run_id, params=items[i : i + 100], synchronous=True)

    def _send(self, points) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [Metric(metric_key(k), v, now, step) for step, values in points for k, v in values.items()]
        for i in range(0, len(metrics), 1000):  # MLflow takes at most 1000 metrics a call
            self.client.log_batch(self.active_run_id, metrics=metrics[i : i + 1000], synchronous=True)

    def _end(self, summary: dict, status: str) -> None:
        figures = {f"final/{k}": v for k, v in numeric(summary.items()).items() if k not in NOT_FIGURES}
        self._send([(0, figures)])
        self.client.set_tag(self.active_run_id, "status", status)
        self.upload()
        self.client.set_terminated(self.active_run_id, MLFLOW_STATUS.get(status, "FINISHED"))
        _after_exit.append(self)  # some commands draw their plots after the run: upload those later

    def upload(self) -> None:
        """Upload the run folder's record files and plots that are new or changed since the last upload."""
        folder = self.folder
        for path in [*(folder / a for a in ARTIFACTS), *sorted(folder.glob("*.png"))]:
            key = str(path.relative_to(folder))
            if path.is_file() and self.uploaded.get(key) != path.stat().st_mtime:
                parent = str(Path(key).parent)
                self.client.log_artifact(self.run_id, str(path), None if parent == "." else parent)
                self.uploaded[key] = path.stat().st_mtime

    def _state(self) -> dict:
        return {"tracker": "mlflow", "tracking_uri": self.uri, "run_id": self.run_id} if self.run_id else {}


def store_uri(tracking_uri: str | None) -> str:
    """The MLflow store to use (see ``MLflowTracker``); a folder or ``file:`` URI is MLflow's file store,
    which MLflow 3 refuses unless asked for: asking for it by name is asking."""
    uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
    if not uri:
        store = Path("mlruns").resolve()
        store.mkdir(parents=True, exist_ok=True)
        return f"sqlite:///{store / 'mlflow.db'}"
    if "://" not in uri or uri.startswith("file:"):
        os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        return Path(uri.removeprefix("file://").removeprefix("file:")).resolve().as_uri()
    return uri


def probe(uri: str, option: str) -> None:
    """Refuse, with one line, a tracking server that does not answer within ``PROBE_TIMEOUT_S`` (one try; the
    user's ``MLFLOW_HTTP_REQUEST_TIMEOUT`` instead, where set, for a server known to be slow).

    Any HTTP answer will do: what the server then says (a login needed, say) is for the run's first call, with
    the tracker's retries, to report.
    """
    from mlflow.utils.credentials import get_default_host_creds
    from mlflow.utils.rest_utils import http_request

    timeout = int(os.environ.get("MLFLOW_HTTP_REQUEST_TIMEOUT") or PROBE_TIMEOUT_S)
    try:
        http_request(
            get_default_host_creds(uri), "/health", "GET", max_retries=0, timeout=timeout, raise_on_status=False
        )
    except Exception as ex:
        raise UserError(
            f"{option}: no tracking server answers there ({reason(ex)}); start it, name another, "
            f"or track into a local store (drop logger.tracking_uri) or not at all (logger=csv)"
        ) from ex


@contextlib.contextmanager
def bounded_http():
    """MLflow's HTTP calls inside take seconds to fail, not minutes (``MLFLOW_HTTP``, where the environment sets
    none), and their retries are not each a warning line: the tracker's one warning says what happened."""
    unset = [key for key in MLFLOW_HTTP if key not in os.environ]
    os.environ.update({key: MLFLOW_HTTP[key] for key in unset})
    pool = logging.getLogger("urllib3.connectionpool")
    level = pool.level
    pool.setLevel(logging.ERROR)
    try:
        yield
    finally:
        pool.setLevel(level)
        for key in unset:
            os.environ.pop(key, None)


def reason(ex: BaseException) -> str:
    """What failed, in a few words: MLflow's HTTP errors carry the whole URL and connection pool."""
    text = str(ex)
    found = re.search(r"\[Errno -?\d+\] ([^'\")\]]+)", text)
    if found:
        return found.group(1).strip()
    if "timed out" in text or "timeout exception" in text:  # requests' and MLflow's words for it
        return "no answer in time"
    line = text.strip().splitlines()[0] if text.strip() else type(ex).__name__
    return line if len(line) <= 200 else line[:197] + "..."


def artifact_root(uri: str, experiment: str) -> str | None:
    """A SQLite store keeps artifacts beside its database (MLflow's own default is ./mlruns of the cwd)."""
    if not uri.startswith("sqlite:///"):
        return None
    return (Path(uri.removeprefix("sqlite:///")).parent / "artifacts" / slug(experiment)).as_uri()


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_") or "default"


def metric_key(key: str) -> str:
    """A column name as an MLflow metric key (letters, digits, ``_ - . / `` and space)."""
    return re.sub(r"[^A-Za-z0-9_\-./ ]", "_", key)


_after_exit: list[MLflowTracker] = []


def upload_late_artifacts() -> None:
    """Upload plots that commands drew after their run ended (dqn's ``returns.png``): called when the
    next task of this process starts and when the process exits."""
    while _after_exit:
        tracker = _after_exit.pop()
        try:
            with tracker._calls():
                tracker.upload()
        except Exception as ex:
            log.warning(f"MLflow: could not upload {tracker.dir}'s late artifacts ({type(ex).__name__}: {ex})")


atexit.register(upload_late_artifacts)


def make(logger_cfg, run_dir: Path, context: Context | None) -> Tracker | None:
    """The tracker ``logger_cfg`` (a ``logger`` group node) names, for the run in ``run_dir``."""
    if not logger_cfg or not logger_cfg.get("_target_"):
        return None
    from hydra.utils import get_class
    from omegaconf import OmegaConf

    # called directly, not through hydra's instantiate, which would turn the Context into a config node
    options = as_dict(logger_cfg) if OmegaConf.is_config(logger_cfg) else dict(logger_cfg)
    cls = get_class(options.pop("_target_"))
    return cls(run_dir=run_dir, context=context, **{k: v for k, v in options.items() if not k.startswith("_")})
