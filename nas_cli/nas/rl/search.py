"""The search loop: propose, evaluate (cached), observe; record every child; save state to resume.

Run folder:
    history.csv             one row per child: step, arch, params, reward, seconds, cache_hit
    cache.json              reward and params per architecture (a repeat is not retrained)
    checkpoints/last.pt     controller state (random state included) after each batch of children
    best_arch.json          the best architecture so far (``nas-cli train model=rl_child model.arch=PATH``)
    children/<step>/        each trained child's own run record (reward=accuracy)
    summary.json
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import pandas as pd
from omegaconf import OmegaConf

from nas_cli.engine import checkpoint
from nas_cli.engine.resume import CHECKPOINT, checkpoint_to_resume
from nas_cli.errors import UserError
from nas_cli.nas.rl.arch import canonical, describe
from nas_cli.nas.rl.evaluate import Evaluator, load_data
from nas_cli.nas.rl.evolution import Evolution
from nas_cli.nas.rl.metaqnn import MetaQNN
from nas_cli.nas.rl.random_search import RandomSearch
from nas_cli.nas.rl.reinforce import Reinforce
from nas_cli.nas.rl.spaces import build_space
from nas_cli.record import RunRecord, atomic_write, run_cost

log = logging.getLogger(__name__)
HISTORY = "history.csv"
BEST = "best_arch.json"
CONTROLLERS = {"reinforce": Reinforce, "metaqnn": MetaQNN, "random": RandomSearch, "evolution": Evolution}
COLUMNS = ["step", "arch", "params", "reward", "seconds", "cache_hit"]


def build_controller(controller_cfg, space_cfg, in_shape, seed: int):
    options = OmegaConf.to_container(controller_cfg, resolve=True) if not isinstance(controller_cfg, dict) \
        else dict(controller_cfg)
    name = options.pop("name")
    kind = options.pop("space")
    if name not in CONTROLLERS:
        raise UserError(f"controller={name}: use one of {', '.join(CONTROLLERS)}")
    space = build_space(kind, space_cfg, in_shape)
    return CONTROLLERS[name](space, seed=seed, **options)


def search(cfg, run_dir: Path, device) -> dict:
    run_dir = Path(run_dir)
    children = int(cfg.search.children)
    if children < 1:
        raise UserError(f"search.children={children}: use 1 or more")
    seed = int(cfg.seed)
    data = load_data(cfg.data, cfg.child, seed)
    controller = build_controller(cfg.controller, cfg.space, data.in_shape, seed)
    evaluator = Evaluator(cfg, run_dir, device, data, seed)
    rows: list[dict] = []
    step, wall_before = 0, 0.0
    resume_from = checkpoint_to_resume(cfg.resume, run_dir)
    if resume_from:
        state = checkpoint.load(resume_from)
        if state.get("controller_name") != controller.name:
            raise UserError(f"resume: {run_dir} was a controller={state.get('controller_name')} search, "
                            f"not controller={controller.name}")
        controller.load_state_dict(state["controller"])
        step, wall_before = int(state["step"]), float(state["wall_time_s"])
        if (run_dir / HISTORY).is_file():
            rows = pd.read_csv(run_dir / HISTORY).to_dict("records")[:step]
        log.info(f"resumed after child {step} of {children}")
    log.info(f"search-rl: controller={controller.name} ({controller.space.kind} space), reward={cfg.reward}, "
             f"{children} children, {evaluator.workers} worker(s), {device}; run folder {run_dir}")
    t0 = time.perf_counter()
    workers = evaluator.workers
    status = "ok"
    try:
        while step < children:
            batch = [(step + i, controller.propose()) for i in range(min(workers, children - step))]
            results = evaluator.evaluate(batch)
            for (s, arch), res in zip(batch, results):
                controller.observe(arch, res["reward"])
                rows.append({"step": s, "arch": describe(arch), "params": res["params"], "reward": res["reward"],
                             "seconds": res["seconds"], "cache_hit": res["cache_hit"],
                             "json": json.dumps(canonical(arch))})
                best = max(r["reward"] for r in rows)
                log.info(f"child {s + 1}/{children}: reward {res['reward']:.4f} (best {best:.4f})"
                         f"{' [cache]' if res['cache_hit'] else ''}  {describe(arch)}")
            step += len(batch)
            evaluator.save()
            _write_history(run_dir, rows)
            _write_best(run_dir, rows)
            checkpoint.save(run_dir / CHECKPOINT, {"step": step, "controller_name": controller.name,
                                              "controller": controller.state_dict(),
                                              "wall_time_s": wall_before + time.perf_counter() - t0})
    except KeyboardInterrupt:
        status = "interrupted"
        raise
    except Exception:
        status = "failed"
        raise
    finally:
        evaluator.close()
        summary = _summary(cfg, controller, rows, status, wall_before + time.perf_counter() - t0, device)
        RunRecord(run_dir).write_summary(summary)
    if rows:
        log.info(f"best reward {summary['best_reward']:.4f} after {len(rows)} children "
                 f"({summary['cache_hits']} cache hits): {summary['best_arch']}; "
                 f"retrain: nas-cli train model=rl_child model.arch={run_dir / BEST}")
    return summary


def _write_history(run_dir: Path, rows: list[dict]) -> None:
    frame = pd.DataFrame(rows, columns=[*COLUMNS, "json"])
    atomic_write(run_dir / HISTORY, lambda tmp: frame.to_csv(tmp, index=False))


def _write_best(run_dir: Path, rows: list[dict]) -> None:
    best = max(rows, key=lambda r: r["reward"])
    text = json.dumps({"arch": json.loads(best["json"]), "reward": best["reward"], "params": int(best["params"]),
                       "step": int(best["step"]), "string": best["arch"]}, indent=2)
    atomic_write(run_dir / BEST, lambda tmp: Path(tmp).write_text(text + "\n"))


def _summary(cfg, controller, rows: list[dict], status: str, wall: float, device) -> dict:
    best = max(rows, key=lambda r: r["reward"]) if rows else None
    return {
        "status": status, "controller": controller.name, "space": controller.space.kind, "reward": str(cfg.reward),
        "children": len(rows), "trained": sum(not bool(r["cache_hit"]) for r in rows),
        "cache_hits": sum(bool(r["cache_hit"]) for r in rows),
        "best_reward": float(best["reward"]) if best else None, "best_arch": best["arch"] if best else None,
        "best_step": int(best["step"]) if best else None, "best_params": int(best["params"]) if best else None,
        **run_cost(wall, device, int(cfg.seed)),
    }


def run_in_memory(controller, reward_fn, children: int) -> list[float]:
    """Rewards of ``children`` proposals scored by ``reward_fn`` with a cache (no files): for benchmarks.

    Returns the reward of each distinct architecture in the order first seen (repeats cost nothing).
    """
    from nas_cli.nas.rl.arch import key

    cache: dict[str, float] = {}
    out: list[float] = []
    proposals = 0
    while len(out) < children and proposals < 3 * children:
        arch = controller.propose()
        proposals += 1
        k = key(arch)
        if k not in cache:
            cache[k] = reward_fn(arch)
            out.append(cache[k])
        controller.observe(arch, cache[k])
    return out
