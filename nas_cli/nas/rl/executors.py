"""search-rl children as submitit jobs: on this machine (``local``), in this process (``debug``) or on SLURM.

A round's children are submitted at once, each a job that trains one child with the same code as the
in-process path (``children.train_child``) and returns its reward; rewards are collected as the jobs
finish. Each arriving result is written at once to ``jobs/results.json`` (by step and architecture), so
a search stopped mid-round (SIGINT/SIGTERM, a lost login node) and resumed with ``resume=true``
re-submits only the children whose result never arrived, and still records the others as trained
(not as cache hits), to the same history as an uninterrupted search.

A job that fails (an exception in the child, a node failure, a time limit) is submitted again up to
``retries`` times; after that the child scores 0.0, like a diverged child, and its error text is kept
in ``cache.json`` (``error``) and in the search's log. submitit's own logs are in ``jobs/<job id>_*``.
That text is the child's own exception (``ValueError: Invalid learning rate: -1``): the job writes it,
one line, to ``children/<step>/error.txt`` before it fails. submitit hands back only a formatted
traceback with log paths after it (local, slurm) or the exception itself (debug), and nothing at all
from a job killed from outside; only then is the cause read from submitit's report instead.

Zoph & Le (2017) trained 800 children at once; ``search.batch`` is how many children a round proposes
(and submits), ``search.slurm.*`` what each job asks SLURM for.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nas_cli.errors import UserError
from nas_cli.runs import signals
from nas_cli.runs.files import CHILDREN
from nas_cli.runs.record import atomic_write, write_json

log = logging.getLogger(__name__)

EXECUTORS = ("inline", "local", "debug", "slurm")
JOBS = "jobs"  # submitit's pickles and logs, one set per job
ARRIVED = Path(JOBS) / "results.json"  # results as they arrive: what a resumed round need not redo
CHILD_ERROR = "error.txt"  # in a child's folder: why its last attempt failed, one line


@dataclass
class SlurmOptions:
    """What each child job asks SLURM for (``search.slurm``); ``local`` uses ``gpus_per_node``,
    ``cpus_per_task`` (torch threads of the child too) and ``timeout_min``."""

    partition: str | None = None
    gpus_per_node: int = 1
    cpus_per_task: int = 4
    timeout_min: int = 60
    mem_gb: float | None = 16
    additional_parameters: dict = field(default_factory=dict)

    def parameters(self, kind: str) -> dict[str, Any]:
        """submitit's ``update_parameters`` keywords for this executor kind."""
        params: dict[str, Any] = {
            "timeout_min": int(self.timeout_min),
            "cpus_per_task": int(self.cpus_per_task),
            "name": "nas-cli-child",
        }
        if kind in ("local", "slurm"):
            params["gpus_per_node"] = int(self.gpus_per_node)
        if kind == "slurm":
            params["slurm_additional_parameters"] = dict(self.additional_parameters)
            if self.mem_gb is not None:
                params["mem_gb"] = self.mem_gb
            if self.partition:
                params["slurm_partition"] = str(self.partition)
        return params


@dataclass
class ChildJob:
    """Everything one child job needs, picklable: what the in-process path holds in the Evaluator."""

    arch: list[dict]
    step: int  # the child's step: it trains with seed + step, in folder
    seed: int  # the search's seed
    folder: str
    kind: str  # accuracy | synthetic
    synthetic: dict
    data_config: dict
    child: Any  # ChildOptions
    optimizer: Any  # the optim group: optimizer(params=...)
    schedule: Any
    device: str  # resolved in the job: device=auto on a SLURM node means its GPU
    threads: int | None = None


def run_child(job: ChildJob) -> float:
    """A submitit job: the reward of one child (module-level, so submitit can pickle it)."""
    import torch

    from nas_cli.nas.rl.children import load_data, train_child
    from nas_cli.nas.rl.synthetic import synthetic_reward
    from nas_cli.runs.options import resolve_device

    if job.kind == "synthetic":
        return float(synthetic_reward(job.arch, **job.synthetic, seed=job.seed))
    if job.threads:
        torch.set_num_threads(int(job.threads))
    data = load_data(job.data_config, job.child, job.seed)  # the same data as the search's own
    return float(
        train_child(
            job.arch,
            data,
            job.child,
            job.optimizer,
            job.schedule,
            resolve_device(job.device),
            Path(job.folder),
            job.seed + job.step,
        )
    )


def run_job(job: ChildJob) -> float:
    """What a job runs: ``run_child``, keeping the one-line cause of a failure in the child's folder
    (``CHILD_ERROR``), where the search reads it back whatever the executor does with the exception."""
    error = Path(job.folder) / CHILD_ERROR
    error.unlink(missing_ok=True)  # an earlier attempt's: this attempt may succeed
    try:
        return run_child(job)  # the module's, looked up now (tests replace it to make jobs fail)
    except Exception as ex:
        text = exception_line(ex)
        atomic_write(error, lambda tmp: Path(tmp).write_text(text + "\n"))
        raise


def _job_function():
    """The function each job runs, looked up at submit time."""
    return run_job


class JobRunner:
    """Submit a round of children as submitit jobs and collect their rewards as they finish.

    Args:
        kind: local | debug | slurm (``inline`` does not use a runner).
        run_dir: the search's run folder (jobs go to ``jobs/``, arrived results to ``jobs/results.json``).
        slurm: the jobs' resources (``search.slurm``).  retries: extra submissions of a failed job.
        poll_s: seconds between looks at the running jobs (a stop request is seen within one).
    """

    def __init__(
        self, kind: str, run_dir: Path, slurm: SlurmOptions | None = None, retries: int = 0, poll_s: float = 1.0
    ):
        if kind not in EXECUTORS or kind == "inline":
            raise UserError(f"search.executor={kind}: use inline, local, debug or slurm")
        if int(retries) < 0:
            raise UserError(f"search.retries={retries}: use 0 or more")
        if float(poll_s) <= 0:
            raise UserError(f"search.poll_s={poll_s}: use a positive number of seconds")
        self.kind, self.run_dir, self.retries, self.poll_s = kind, Path(run_dir), int(retries), float(poll_s)
        self.slurm = slurm or SlurmOptions()
        self._executor = None
        self.submitted = 0  # jobs submitted by this runner (retries included)

    def executor(self):
        if self._executor is None:
            import submitit

            cluster = {"local": "local", "debug": "debug", "slurm": "slurm"}[self.kind]
            self._executor = submitit.AutoExecutor(folder=self.run_dir / JOBS / "%j", cluster=cluster)
            self._executor.update_parameters(**self.slurm.parameters(self.kind))
        return self._executor

    def arrived(self) -> dict[str, dict]:
        """Results of an earlier, interrupted round: ``{str(step): {key, reward, ...}}``."""
        path = self.run_dir / ARRIVED
        return json.loads(path.read_text()) if path.is_file() else {}

    def _keep(self, step: int, k: str, result: dict) -> None:
        arrived = self.arrived()
        arrived[str(step)] = {"key": k, **result}
        write_json(self.run_dir / ARRIVED, arrived)

    def evaluate(self, evaluator, todo: dict[str, tuple[int, list[dict]]]) -> dict[str, dict]:
        """The new children of a ``children.Evaluator`` (``todo``: key -> (step, arch)) as one job each,
        trained in ``children/<step>/`` of its run folder: ``{key: {reward, seconds[, error]}}`` (``run``)."""
        e = evaluator
        threads = self.slurm.cpus_per_task if self.kind != "debug" else None
        jobs = {
            k: ChildJob(
                arch=arch,
                step=step,
                seed=e.seed,
                folder=str(e.run_dir / CHILDREN / str(step)),
                kind=e.kind,
                synthetic=e.synthetic,
                data_config=e.data_config,
                child=e.child,
                optimizer=e.optimizer,
                schedule=e.schedule,
                device=str(e.job_device or e.device),
                threads=threads,
            )
            for k, (step, arch) in todo.items()
        }
        return self.run(jobs)

    def run(self, jobs: dict[str, ChildJob]) -> dict[str, dict]:
        """Rewards of ``jobs`` (by architecture key): ``{key: {reward, seconds[, error]}}``.

        Results kept from an interrupted round are reused; the rest are submitted and awaited. A stop
        request cancels the jobs still running and raises ``Interrupted`` (their children run again on resume).
        """
        out: dict[str, dict] = {}
        kept = self.arrived()
        todo = {}
        for k, job in jobs.items():
            old = kept.get(str(job.step))
            if old is not None and old.get("key") == k:
                out[k] = {name: v for name, v in old.items() if name != "key"}
            else:
                todo[k] = job
        running = {k: (self._submit(job), 1, time.time()) for k, job in todo.items()}
        try:
            while running:
                for k, (handle, attempt, t0) in list(running.items()):
                    signals.check()  # a stop request: the jobs still running are cancelled (below)
                    if not self._done(handle):
                        continue
                    del running[k]
                    job = todo[k]
                    error = handle.exception()  # not result(): submitit's debug jobs would open pdb on failure
                    if error is None:
                        out[k] = {"reward": float(handle.result()), "seconds": time.time() - t0}
                    else:  # any failure of a job (the child's exception, a lost node, a time limit) is the child's
                        text = failure(job, error)
                        if attempt <= self.retries:
                            log.warning(
                                f"child {job.step}: job {handle.job_id} failed ({text}); "
                                f"submitting it again ({attempt}/{self.retries})"
                            )
                            running[k] = (self._submit(job), attempt + 1, t0)
                            continue
                        log.error(
                            f"child {job.step}: job {handle.job_id} failed after {attempt} attempt(s), "
                            f"reward 0.0: {text}"
                        )
                        out[k] = {"reward": 0.0, "seconds": time.time() - t0, "error": text}
                    self._keep(job.step, k, out[k])
                if running:
                    time.sleep(self.poll_s)
        finally:
            for handle, _, _ in running.values():
                _cancel(handle)
        return out

    def _submit(self, job: ChildJob):
        self.submitted += 1
        return self.executor().submit(_job_function(), job)

    def _done(self, handle) -> bool:
        # a debug job runs in this process when its result is asked for: it is always "ready"
        return self.kind == "debug" or handle.done()

    def forget(self) -> None:
        """The round is in the checkpoint: its kept results are no longer needed."""
        path = self.run_dir / ARRIVED
        if path.is_file():
            atomic_write(path, lambda tmp: Path(tmp).write_text("{}"))


def _cancel(handle) -> None:
    try:
        handle.cancel(check=False)
    except Exception as error:  # noqa: BLE001 - a job that already ended cannot be cancelled
        log.debug(f"cancel {handle.job_id}: {error}")


def exception_line(ex: BaseException) -> str:
    """``Type: message`` in one line, as a run's summary records an exception."""
    message = " ".join(ln.strip() for ln in str(ex).splitlines() if ln.strip())
    return f"{type(ex).__name__}: {message}"[:MAX_ERROR] if message else type(ex).__name__


MAX_ERROR = 300  # characters of a child's error kept in cache.json and the search's summary


def failure(job: ChildJob, error: BaseException) -> str:
    """Why a job failed, one line: what the child wrote (``run_job``), else what submitit reports."""
    try:
        text = (Path(job.folder) / CHILD_ERROR).read_text().strip()
    except OSError:
        text = ""
    return text[:MAX_ERROR] if text else _submitit_cause(error)


_RULE = "-" * 10  # submitit sets a job's traceback and its stderr apart with lines of dashes


def _submitit_cause(error: BaseException) -> str:
    """The cause in submitit's report of a failed job. A ``FailedJobError`` holds the child's traceback
    between rules of dashes, followed by log paths: its last traceback line is the exception. An
    ``UncompletedJobError`` (no result: killed, timed out) says so in its first lines, with the tail of
    the job's stderr between rules. Anything else (a debug job's own exception) is itself the cause."""
    lines = [ln.strip() for ln in str(error).splitlines() if ln.strip()]
    rules = [i for i, ln in enumerate(lines) if ln.startswith(_RULE)]
    name = type(error).__name__
    if name == "FailedJobError" and len(rules) >= 2 and rules[1] > rules[0] + 1:
        return lines[rules[1] - 1][:MAX_ERROR]  # "ValueError: Invalid learning rate: -1"
    if name == "UncompletedJobError" and rules:
        head = " ".join(lines[: rules[0] - 1]) if rules[0] > 1 else lines[0]
        stream = lines[rules[0] + 1 :]
        return (f"{name}: {head}" + (f"; stderr ends: {stream[-1]}" if stream else ""))[:MAX_ERROR]
    return exception_line(error)
