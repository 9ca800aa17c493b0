"""Child evaluation: train briefly with the one engine (``Trainer.fit``) and score; cache by architecture.

Each trained child is a run of its own in ``children/<step>/`` (no checkpoints, no progress bar),
trained with the ``optim`` / ``sched`` groups like any network. ``workers=N`` trains up to N
children at once in separate processes (spawned, one torch thread each), each loading the data
once; they ignore SIGINT/SIGTERM and stop at their next batch when the search is asked to stop.
With a ``runner`` (``search.executor=local|debug|slurm``, ``nas_cli/nas/rl/executors.py``) each new child is a
submitit job instead, synthetic ones included, trained by the same ``train_child``.

``reward=proxy`` trains no child: a zero-cost proxy (``nas_cli/nas/rl/proxies.py``) scores it at the
initialisation training would start from (``build_child``), on one training minibatch drawn once per search
with the search's seed; in this process whatever the executor (one forward and backward pass costs less
than a job's start).
"""

from __future__ import annotations

import contextlib
import copy
import logging
import math
import time
from concurrent.futures import FIRST_EXCEPTION, ProcessPoolExecutor, wait
from dataclasses import dataclass
from multiprocessing import get_context
from multiprocessing.synchronize import Event
from pathlib import Path

import torch
from hydra.utils import instantiate

from nas_cli.engine.device import seed_everything
from nas_cli.engine.schedules import Schedule
from nas_cli.engine.trainer import HEADLINE, Trainer
from nas_cli.errors import UserError
from nas_cli.nas.rl import proxies
from nas_cli.nas.rl.arch import ArchNet, key, param_count
from nas_cli.nas.rl.synthetic import synthetic_reward
from nas_cli.runs import signals
from nas_cli.runs.files import CHILDREN
from nas_cli.runs.lifecycle import Run

REWARDS = ("accuracy", "synthetic", "proxy")
SCORES = ("best", "final")


@dataclass
class ChildOptions:
    """How each child trains (its optimizer and schedule are the ``optim`` / ``sched`` groups) and is scored.

    ``score``: ``best`` (the highest validation accuracy over its epochs: MetaQNN's paper and code, and
    Zoph & Le's "maximum of the last 5 epochs" with ``score_epochs=5``) or ``final`` (the last epoch's).
    ``score_epochs``: look only at the last N epochs (None: all of them).
    """

    epochs: int = 2
    subset: int | None = 300  # at most this many training (and validation) examples
    batch_size: int | None = None  # None: the data config's
    score: str = "best"
    score_epochs: int | None = None

    def __post_init__(self):
        if self.score not in SCORES:
            raise UserError(f"child.score={self.score}: use best or final")
        if self.score_epochs is not None and int(self.score_epochs) < 1:
            raise UserError(f"child.score_epochs={self.score_epochs}: use 1 or more (or null: every epoch)")


def child_score(val_accs: list[float], score: str = "best", last: int | None = None) -> float:
    """A child's score from its per-epoch validation accuracies: the best (of the last ``last``) or the final."""
    if not val_accs:
        return 0.0
    window = val_accs[-int(last) :] if last else val_accs
    return float(max(window) if score == "best" else window[-1])


@contextlib.contextmanager
def _quiet_engine():
    """The children's per-epoch lines stay in their own folders' records, not the search log."""
    engine = logging.getLogger("nas_cli.engine.trainer")
    level = engine.level
    engine.setLevel(logging.WARNING)
    try:
        with contextlib.redirect_stdout(None):
            yield
    finally:
        engine.setLevel(level)


def load_data(data_config: dict, child: ChildOptions, seed: int):
    """The children's data: the ``data`` group's config (a plain dict), capped by ``child.subset``."""
    overrides = {k: v for k, v in (("subset", child.subset), ("batch_size", child.batch_size)) if v is not None}
    return instantiate(data_config, seed=seed, **overrides)


def build_child(arch: list[dict], data, device, seed: int) -> ArchNet:
    """The child network of ``arch`` at its initialisation for ``seed``: what training starts from and what a
    proxy scores."""
    seed_everything(seed)
    return ArchNet(arch, data.in_shape, data.num_classes).to(device)


def train_child(
    arch: list[dict], data, child: ChildOptions, optimizer, schedule: Schedule | None, device, folder: Path, seed: int
) -> float:
    """The score of ``arch`` (``child_score`` of its per-epoch validation accuracies) after ``child.epochs``
    epochs of training (a run in ``folder``)."""
    model = build_child(arch, data, device, seed)  # before its optimizer's state
    if data.generator is not None:
        data.generator.manual_seed(seed)
    trainer = Trainer(epochs=child.epochs, checkpoint=False, device=device, progress=False)
    run = Run(folder, "train", seed=seed, device=device, headline=HEADLINE)
    with _quiet_engine():
        summary = trainer.fit(
            model,
            optimizer(params=model.parameters()),
            data.train,
            data.val,
            run=run,
            schedule=copy.deepcopy(schedule),
            generator=data.generator,
        )
    if summary["status"] != "ok":
        return 0.0  # a diverged child scores nothing
    return child_score([float(r["val_acc"]) for r in run.record.rows], child.score, child.score_epochs)


_WORKER: dict = {}


def _init_worker(
    data_config: dict, child: ChildOptions, optimizer, schedule, seed: int, device: str, counter, stop
) -> None:
    signals.follow(stop)
    torch.set_num_threads(1)
    with counter.get_lock():  # the worker's index: on several GPUs, one GPU per worker
        index = counter.value
        counter.value += 1
    dev = torch.device(device)
    if dev.type == "cuda" and torch.cuda.device_count() > 1:
        dev = torch.device("cuda", index % torch.cuda.device_count())
    _WORKER.update(
        data=load_data(data_config, child, seed), child=child, optimizer=optimizer, schedule=schedule, device=dev
    )


def _worker_train(arch: list[dict], folder: str, seed: int) -> tuple[float, float]:
    t0 = time.perf_counter()
    w = _WORKER
    reward = train_child(arch, w["data"], w["child"], w["optimizer"], w["schedule"], w["device"], Path(folder), seed)
    return reward, time.perf_counter() - t0


class Evaluator:
    """Rewards for architectures, cached by ``arch.key``; trained (``accuracy``), ``synthetic`` or ``proxy``.

    Args:
        reward: accuracy | synthetic | proxy.  synthetic: the synthetic reward's settings.
        run_dir: the search's run folder (children go to ``children/<step>``).
        data: the children's data; ``data_config``: the config it was built from (workers rebuild it).
        optimizer: a callable ``optimizer(params=...)`` (the ``optim`` group); ``schedule``: the ``sched`` group.
        cache: rewards already known (a resumed search's).
        runner: a ``JobRunner``: new children are submitit jobs (None: this process and its workers).
        job_device: the ``device`` setting the jobs resolve themselves (a SLURM node's GPU); None: ``device``.
        proxy: reward=proxy's ``name`` (a ``proxies.PROXIES`` key) and ``batch`` (the minibatch's size).
    """

    def __init__(
        self,
        reward: str,
        synthetic: dict,
        run_dir: Path,
        device,
        data,
        data_config: dict,
        seed: int,
        child: ChildOptions,
        optimizer,
        schedule: Schedule | None,
        workers: int = 1,
        cache: dict | None = None,
        runner=None,
        job_device: str | None = None,
        proxy: dict | None = None,
    ):
        if reward not in REWARDS:
            raise UserError(f"reward={reward}: use {' | '.join(REWARDS)}")
        if int(workers) < 1:
            raise UserError(f"search.workers={workers}: use 1 or more")
        self.kind, self.synthetic, self.run_dir, self.device = reward, dict(synthetic), Path(run_dir), device
        self.data, self.data_config, self.seed, self.child = data, data_config, int(seed), child
        self.optimizer, self.schedule, self.workers = optimizer, schedule, int(workers)
        self.cache: dict[str, dict] = dict(cache or {})
        self._pool: ProcessPoolExecutor | None = None
        self._stop: Event | None = None  # made with the pool: tells its workers to stop
        self.runner, self.job_device = runner, job_device
        self.proxy = {"name": "synflow", "batch": 64, **(proxy or {})}
        if reward == "proxy":
            proxies.check_proxy(str(self.proxy["name"]))
            if int(self.proxy["batch"]) < 1:
                raise UserError(f"proxy.batch={self.proxy['batch']}: use 1 or more")
        self._batch: tuple[torch.Tensor, torch.Tensor] | None = None  # reward=proxy's minibatch, drawn once

    def params(self, arch: list[dict]) -> int:
        return param_count(arch, self.data.in_shape, self.data.num_classes)

    def _score_synthetic(self, arch: list[dict]) -> float:
        return synthetic_reward(arch, **self.synthetic, seed=self.seed)

    def proxy_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        """reward=proxy's minibatch: the same for every child of the search (its seed), on the children's device."""
        if self._batch is None:
            x, y = proxies.minibatch(self.data.train, int(self.proxy["batch"]), self.seed)
            self._batch = x.to(self.device), y.to(self.device)
        return self._batch

    def _score_proxy(self, arch: list[dict], step: int) -> float:
        """The proxy's score of the child of ``step`` at the initialisation its training would start from."""
        x, y = self.proxy_batch()
        net = build_child(arch, self.data, self.device, self.seed + step)
        return proxies.PROXIES[str(self.proxy["name"])](net, x, y)

    def _proxy_result(self, arch: list[dict], step: int) -> dict:
        """A child's result under reward=proxy. A score that is no finite number (naswot's -inf, jacob_cov's nan)
        fails the child: it gets the proxy's ``floor`` (at or below every finite score; -inf or nan would derail
        the controllers' arithmetic), is no candidate for the best, and the cache keeps why."""
        t0 = time.perf_counter()
        score = self._score_proxy(arch, step)
        result: dict = {"reward": score, "params": self.params(arch), "seconds": time.perf_counter() - t0}
        if not math.isfinite(score):
            name = str(self.proxy["name"])
            result["reward"] = proxies.floor(name, len(self.proxy_batch()[0]))
            result["error"] = f"proxy {name} is {score} for this child: scored {result['reward']:.6g}, its lowest value"
        return result

    def evaluate(self, batch: list[tuple[int, list[dict]]]) -> list[dict]:
        """``batch``: (step, arch) pairs. Returns per pair: reward, params, seconds, cache_hit."""
        todo: dict[str, tuple[int, list[dict]]] = {}
        for step, arch in batch:
            k = key(arch)
            if k not in self.cache and k not in todo:
                todo[k] = (step, arch)
        fresh: dict[str, dict] = {}
        if self.kind == "proxy":  # in this process, whatever the executor: no training to hand out
            fresh = {k: self._proxy_result(arch, step) for k, (step, arch) in todo.items()}
        elif self.runner is not None:
            fresh = self._submit_all(todo)
        elif self.kind == "synthetic":
            for k, (_, arch) in todo.items():
                t0 = time.perf_counter()
                fresh[k] = {
                    "reward": self._score_synthetic(arch),
                    "params": self.params(arch),
                    "seconds": time.perf_counter() - t0,
                }
        else:
            fresh = self._train_all(todo)
        results: dict[int, dict] = {}
        for step, arch in batch:
            k = key(arch)
            if k in fresh and k not in self.cache:
                self.cache[k] = fresh[k]
                results[step] = {**fresh[k], "cache_hit": False}
            else:
                results[step] = {**self.cache[k], "seconds": 0.0, "cache_hit": True}
        return [results[step] for step, _ in batch]

    def _train_all(self, todo: dict[str, tuple[int, list[dict]]]) -> dict[str, dict]:
        out: dict[str, dict] = {}
        folder = self.run_dir / CHILDREN
        if self.workers == 1 or len(todo) == 1:
            for k, (step, arch) in todo.items():
                t0 = time.perf_counter()
                reward = train_child(
                    arch,
                    self.data,
                    self.child,
                    self.optimizer,
                    self.schedule,
                    self.device,
                    folder / str(step),
                    self.seed + step,
                )
                out[k] = {"reward": reward, "params": self.params(arch), "seconds": time.perf_counter() - t0}
            return out
        futures = {
            k: self._workers().submit(_worker_train, arch, str(folder / str(step)), self.seed + step)
            for k, (step, arch) in todo.items()
        }
        pending = set(futures.values())
        assert self._stop is not None  # _workers() has made it with the pool
        while pending:  # wait in short slices: a stop request is passed on to the workers at once
            _, pending = wait(pending, timeout=0.2, return_when=FIRST_EXCEPTION)
            if signals.requested() is not None:
                self._stop.set()  # the workers stop at their next batch; their children are trained again on resume
        for k, fut in futures.items():
            reward, seconds = fut.result()  # re-raises a worker's failure (or its Interrupted)
            out[k] = {"reward": reward, "params": self.params(todo[k][1]), "seconds": seconds}
        return out

    def _submit_all(self, todo: dict[str, tuple[int, list[dict]]]) -> dict[str, dict]:
        """New children as submitit jobs (the runner builds them from this evaluator); results carry ``error``
        where a job failed for good."""
        results = self.runner.evaluate(self, todo)
        return {k: {**res, "params": self.params(todo[k][1])} for k, res in results.items()}

    def _workers(self) -> ProcessPoolExecutor:
        if self._pool is None:
            context = get_context("spawn")
            self._stop = context.Event()
            self._pool = ProcessPoolExecutor(
                self.workers,
                mp_context=context,
                initializer=_init_worker,
                initargs=(
                    self.data_config,
                    self.child,
                    self.optimizer,
                    self.schedule,
                    self.seed,
                    str(self.device),
                    context.Value("i", 0),
                    self._stop,
                ),
            )
        return self._pool

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(cancel_futures=True)
            self._pool = None
