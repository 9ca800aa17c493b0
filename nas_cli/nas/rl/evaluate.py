"""Child evaluation: train briefly with the one engine (``Trainer.fit``) and score; cache by architecture.

Each trained child leaves its own run record in ``children/<step>/`` (no checkpoints, no progress bar).
``search.workers=N`` trains up to N children at once in separate processes (spawned, one torch
thread each), each loading the data once.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from nas_cli.engine.device import seed_everything
from nas_cli.engine.trainer import Trainer
from nas_cli.errors import UserError
from nas_cli.nas.rl.arch import ArchNet, key, param_count
from nas_cli.nas.rl.synthetic import synthetic_reward
from nas_cli.record import atomic_write

CACHE = "cache.json"


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


def load_data(data_cfg, child_cfg, seed: int):
    overrides = {}
    if child_cfg.get("subset") is not None:
        overrides["subset"] = int(child_cfg.subset)
    if child_cfg.get("batch_size") is not None:
        overrides["batch_size"] = int(child_cfg.batch_size)
    return instantiate(data_cfg, seed=seed, **overrides)


def train_child(arch: list[dict], data, child_cfg, device, folder: Path, seed: int) -> float:
    """Validation accuracy of ``arch`` after ``child.epochs`` epochs of Adam at ``child.lr``."""
    seed_everything(seed)
    if data.generator is not None:
        data.generator.manual_seed(seed)
    model = ArchNet(arch, data.in_shape, data.num_classes)
    optimizer = torch.optim.Adam(model.parameters(), lr=float(child_cfg.lr),
                                 weight_decay=float(child_cfg.get("weight_decay", 0.0)))
    trainer = Trainer(epochs=int(child_cfg.epochs), last_n=1, checkpoint=False, device=device, run_dir=folder,
                      progress=False)
    with _quiet_engine():
        summary = trainer.fit(model, optimizer, data.train, data.val, generator=data.generator, seed=seed)
    if summary["status"] != "ok":
        return 0.0  # a diverged child scores nothing
    return float(summary["final_val_acc"])


_WORKER: dict = {}


def _init_worker(data_cfg: dict, child_cfg: dict, seed: int, device: str, counter) -> None:
    torch.set_num_threads(1)
    with counter.get_lock():  # the worker's index: on several GPUs, one GPU per worker
        index = counter.value
        counter.value += 1
    dev = torch.device(device)
    if dev.type == "cuda" and torch.cuda.device_count() > 1:
        dev = torch.device("cuda", index % torch.cuda.device_count())
    child = OmegaConf.create(child_cfg)
    _WORKER.update(data=load_data(OmegaConf.create(data_cfg), child, seed), child=child, device=dev)


def _worker_train(arch: list[dict], folder: str, seed: int) -> tuple[float, float]:
    t0 = time.perf_counter()
    reward = train_child(arch, _WORKER["data"], _WORKER["child"], _WORKER["device"], Path(folder), seed)
    return reward, time.perf_counter() - t0


class Evaluator:
    """Rewards for architectures: cached by ``arch.key`` in ``cache.json``; trained or synthetic."""

    def __init__(self, cfg, run_dir: Path, device, data, seed: int):
        self.cfg, self.run_dir, self.device, self.data, self.seed = cfg, Path(run_dir), device, data, int(seed)
        self.kind = str(cfg.reward)
        if self.kind not in ("accuracy", "synthetic"):
            raise UserError(f"reward={self.kind}: use accuracy or synthetic")
        self.synthetic = OmegaConf.to_container(cfg.synthetic, resolve=True)
        path = self.run_dir / CACHE
        self.cache: dict[str, dict] = json.loads(path.read_text()) if path.is_file() else {}
        self.workers = max(1, int(cfg.search.workers))
        self._pool: ProcessPoolExecutor | None = None

    def save(self) -> None:
        text = json.dumps(self.cache)
        atomic_write(self.run_dir / CACHE, lambda tmp: Path(tmp).write_text(text))

    def params(self, arch: list[dict]) -> int:
        return param_count(arch, self.data.in_shape, self.data.num_classes)

    def _score_synthetic(self, arch: list[dict]) -> float:
        return synthetic_reward(arch, **self.synthetic, seed=self.seed)

    def evaluate(self, batch: list[tuple[int, list[dict]]]) -> list[dict]:
        """``batch``: (step, arch) pairs. Returns per pair: reward, params, seconds, cache_hit."""
        results: dict[int, dict] = {}
        todo: dict[str, tuple[int, list[dict]]] = {}
        for step, arch in batch:
            k = key(arch)
            if k in self.cache or k in todo:
                continue
            todo[k] = (step, arch)
        fresh: dict[str, dict] = {}
        if self.kind == "synthetic":
            for k, (_, arch) in todo.items():
                t0 = time.perf_counter()
                fresh[k] = {"reward": self._score_synthetic(arch), "params": self.params(arch),
                            "seconds": time.perf_counter() - t0}
        else:
            fresh = self._train_all(todo)
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
        folder = self.run_dir / "children"
        if self.workers == 1 or len(todo) == 1:
            for k, (step, arch) in todo.items():
                t0 = time.perf_counter()
                reward = train_child(arch, self.data, self.cfg.child, self.device, folder / str(step),
                                     self.seed + step)
                out[k] = {"reward": reward, "params": self.params(arch), "seconds": time.perf_counter() - t0}
            return out
        if self._pool is None:
            context = get_context("spawn")
            self._pool = ProcessPoolExecutor(
                self.workers, mp_context=context, initializer=_init_worker,
                initargs=(OmegaConf.to_container(self.cfg.data, resolve=True),
                          OmegaConf.to_container(self.cfg.child, resolve=True), self.seed, str(self.device),
                          context.Value("i", 0)))
        futures = {k: self._pool.submit(_worker_train, arch, str(folder / str(step)), self.seed + step)
                   for k, (step, arch) in todo.items()}
        for k, fut in futures.items():
            reward, seconds = fut.result()
            out[k] = {"reward": reward, "params": self.params(todo[k][1]), "seconds": seconds}
        return out

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(cancel_futures=True)
            self._pool = None
