"""search-rl's loop: propose, evaluate (cached), observe; record every child; checkpoint to resume.

It ends after ``search.children`` proposals, or sooner once ``search.trained`` distinct children were
trained (cache hits cost no training; MetaQNN's budget is counted that way). A child whose job failed
for good scores 0.0 and is no candidate for the best; a search in which every child failed found
nothing, and fails with the first child's error.

Run folder:
    metrics.csv             one row per child: step, arch, params, reward, seconds, cache_hit, json
    cache.json              reward and params per architecture (a repeat is not retrained); ``error``: its job failed
    jobs/                   search.executor=local|debug|slurm: submitit's files, results.json (this round's arrivals)
    checkpoints/last.pt     controller state (random state included), rows and cache after each batch of children
    best_arch.json          the best architecture so far among the children that did not fail
                            (``nas-cli train model=rl_child model.arch=PATH``)
    children/<step>/        each trained child's own run (reward=accuracy)
    summary.json

``search.batch`` children are proposed per round (null: ``search.workers``), all before any is
observed, so the controller's path depends on the batch, not on where the children train:
``search.executor=inline`` (this process, or ``search.workers`` processes) and ``local|debug|slurm``
(submitit jobs, ``nas_cli/nas/rl/executors.py``) give the same history for the same seed and batch.

The end of each batch of children is the safe point: SIGINT/SIGTERM during a batch stop its
children at their next training batch, and a resumed search trains them again from the same
proposals, to the same result.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from nas_cli.engine.progress import TrainingProgress
from nas_cli.errors import UserError
from nas_cli.nas.rl.arch import canonical, describe, key
from nas_cli.nas.rl.children import Evaluator
from nas_cli.nas.rl.controllers.base import Controller
from nas_cli.runs.files import BEST_ARCH, CACHE
from nas_cli.runs.lifecycle import Run
from nas_cli.runs.record import atomic_write, write_json

log = logging.getLogger(__name__)
COLUMNS = ["step", "arch", "params", "reward", "seconds", "cache_hit", "json"]
HEADLINE = ["best_reward", "children", "trained"]


class ChildrenFailed(RuntimeError):
    """Every child of a search failed: there is no result to report (the cause is the children's)."""


def search(
    controller: Controller,
    evaluator: Evaluator,
    run: Run,
    children: int,
    *,
    progress: bool,
    trained: int | None,
    batch: int | None,
) -> dict:
    """Propose and score ``children`` architectures in ``run`` (or stop sooner, once ``trained`` distinct ones
    were trained: MetaQNN counts its budget in unique models), ``batch`` per round (None: the evaluator's
    workers); returns the run's summary."""
    batch = evaluator.workers if batch is None else int(batch)
    if batch < 1:
        raise UserError(f"search.batch={batch}: use 1 or more (or null: search.workers)")
    if children < 1:
        raise UserError(f"search.children={children}: use 1 or more")
    if trained is not None and trained < 1:
        raise UserError(f"search.trained={trained}: use 1 or more (or null: no such limit)")
    done = run.finished()
    if done is not None:
        return done
    record = run.record
    saved = run.load_checkpoint()
    if saved is not None:
        if saved.get("controller_name") != controller.name:
            raise UserError(
                f"resume: {run.dir} was a controller={saved.get('controller_name')} search, "
                f"not controller={controller.name}"
            )
        controller.load_state_dict(saved["controller"])
        evaluator.cache = json.loads(saved["cache"])
        record.write_metrics()
        log.info(f"resumed after child {len(record.rows)} of {children}")
    log.info(
        f"search-rl: controller={controller.name} ({controller.space.kind} space), reward={evaluator.kind}, "
        f"{children} children, {batch} a round, {_where(evaluator)}, {run.device}; run folder {run.dir}"
    )
    run.figures = lambda: _figures(controller, evaluator, record.rows)
    try:
        with run, TrainingProgress(progress) as bar:
            task = bar.add_task("children", total=children, completed=len(record.rows), info="")
            while len(record.rows) < children and _fresh(record.rows) < (trained or children):
                step = len(record.rows)
                size = min(batch, children - step, (trained or children) - _fresh(record.rows))
                proposals = [(step + i, controller.propose()) for i in range(size)]
                for (s, arch), res in zip(proposals, evaluator.evaluate(proposals)):
                    controller.observe(arch, res["reward"])
                    record.log(
                        {
                            "step": s,
                            "arch": describe(arch),
                            "params": res["params"],
                            "reward": res["reward"],
                            "seconds": res["seconds"],
                            "cache_hit": res["cache_hit"],
                            "json": json.dumps(canonical(arch)),
                        },
                        write=False,
                    )
                    best = max(r["reward"] for r in record.rows)
                    outcome = f"failed ({res['error']})" if "error" in res else f"reward {res['reward']:.4f}"
                    log.info(
                        f"child {s + 1}/{children}: {outcome} (best {best:.4f})"
                        f"{' [cache]' if res['cache_hit'] else ''}  {describe(arch)}"
                    )
                    bar.update(task, advance=1, info=f"best {best:.4f}", refresh=True)
                record.write_metrics()
                _write_best(run.dir, _succeeded(record.rows, evaluator.cache))
                cache = json.dumps(evaluator.cache)
                atomic_write(run.dir / CACHE, lambda tmp, text=cache: Path(tmp).write_text(text))
                run.save_checkpoint(
                    {
                        "controller_name": controller.name,
                        "controller": controller.state_dict(),
                        "cache": cache,
                    }
                )
                if evaluator.runner is not None:
                    evaluator.runner.forget()  # this round is in the checkpoint now
                run.stop_point()
            _fail_if_none_succeeded(record.rows, evaluator.cache)
    finally:
        evaluator.close()
    summary = run.summary
    assert summary is not None  # leaving ``with run`` has written it
    log.info(
        f"best reward {summary['best_reward']:.4f} after {summary['children']} children "
        f"({summary['cache_hits']} cache hits): {summary['best_arch']}; "
        f"retrain: nas-cli train model=rl_child model.arch={run.dir / BEST_ARCH}"
    )
    return summary


def _where(evaluator: Evaluator) -> str:
    if evaluator.runner is not None:
        return f"children as {evaluator.runner.kind} submitit jobs"
    return f"{evaluator.workers} worker(s)"


def _fresh(rows: list[dict]) -> int:
    """Children trained so far (cache hits not counted)."""
    return sum(not bool(r["cache_hit"]) for r in rows)


def _error(row: dict, cache: dict[str, dict]) -> str | None:
    """Why a child's job failed for good (None: it did not fail)."""
    return cache.get(key(json.loads(row["json"])), {}).get("error")


def _succeeded(rows: list[dict], cache: dict[str, dict]) -> list[dict]:
    """The children whose reward is a score, not a failed job's 0.0."""
    return [r for r in rows if _error(r, cache) is None]


def _fail_if_none_succeeded(rows: list[dict], cache: dict[str, dict]) -> None:
    if not rows or _succeeded(rows, cache):
        return
    first = min(rows, key=lambda r: r["step"])
    step, error = int(first["step"]), _error(first, cache)
    raise ChildrenFailed(
        f"the search's only child (child {step}) failed: {error}"
        if len(rows) == 1
        else f"all {len(rows)} children failed; the first (child {step}): {error}"
    )


def _write_best(run_dir: Path, rows: list[dict]) -> None:
    if not rows:  # no child has a score yet: no best to name
        return
    best = max(rows, key=lambda r: r["reward"])
    write_json(
        run_dir / BEST_ARCH,
        {
            "arch": json.loads(best["json"]),
            "reward": best["reward"],
            "params": int(best["params"]),
            "step": int(best["step"]),
            "string": best["arch"],
        },
    )


def _figures(controller: Controller, evaluator: Evaluator, rows: list[dict]) -> dict:
    scored = _succeeded(rows, evaluator.cache)
    best = max(scored, key=lambda r: r["reward"]) if scored else None
    return {
        "controller": controller.name,
        "space": controller.space.kind,
        "reward": evaluator.kind,
        "children": len(rows),
        "trained": _fresh(rows),
        "cache_hits": sum(bool(r["cache_hit"]) for r in rows),
        "failed_children": sum(
            "error" in res for res in evaluator.cache.values()
        ),  # jobs that failed for good (reward 0)
        "best_reward": float(best["reward"]) if best else None,
        "best_arch": best["arch"] if best else None,
        "best_step": int(best["step"]) if best else None,
        "best_params": int(best["params"]) if best else None,
    }


def run_in_memory(controller: Controller, reward_fn, children: int) -> list[float]:
    """Rewards of ``children`` proposals scored by ``reward_fn`` with a cache (no files): for benchmarks.

    Returns the reward of each distinct architecture in the order first seen (repeats cost nothing).
    """
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
