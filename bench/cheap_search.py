"""Cheap architecture search on the shipped digits: do zero-cost proxies and ENAS's shared weights stand in for
training every child of ``nas-cli search-rl``?

    .venv/bin/python bench/cheap_search.py                  # the defaults (about 4-5 min on 2 cores, threads=1)
    .venv/bin/python bench/cheap_search.py --quick          # a smoke check of every part (under a minute)
    .venv/bin/python bench/cheap_search.py --data mnist5k   # 4,500 training images of 28x28 instead of 1,437 of
                                                            # 8x8: children, ENAS and retrains cost many times
                                                            # more (--quick: 6x; the defaults: hours on 2 cores)
    .venv/bin/python bench/cheap_search.py --data mnist5k --parts 23 --proxy snip --retrain-epochs 2 --threads 2
                                                            # parts 2 and 3 alone, shorter retrains

Measured in this process, one part after another, every run with ``threads=1`` (``--threads``); the commands run
through their own ``task`` functions on their configs composed as ``nas-cli`` composes them:

1. Proxy quality. N children (``--children``, default 60) drawn by ``controller=random`` (seed 0: the space's
   own uniform sampling) from ``space=zoph``, and N from ``space=enas_macro``. Each is
   trained by search-rl's ``Evaluator`` with ``reward=accuracy`` (the default config: child.epochs, child.subset,
   optim, sched; its reward is child.score=best, the best validation accuracy over its epochs), child ``i`` from
   its seeded initialisation ``build_child(arch, data, device, seed + i)``, as a search trains its step ``i``;
   every proxy of ``PROXIES`` (``params`` included: the baseline) scores that same untrained child on the same
   minibatch (``minibatch(train, proxy.batch, seed)``), as ``reward=proxy`` would score step ``i``. Spearman's
   rho (p: its two-sided p-value) and Kendall's tau (scipy.stats) of each proxy against the trained accuracy,
   and the mean seconds per child of each proxy (building the child included) and of its training. A non-finite
   proxy score is a failure: counted, and left out of that proxy's correlation only.
2. A proxy-driven search against random search with trained children, at equal search wall time: regularized
   evolution (``controller=evolution``, ``reward=proxy``) with the proxy of the highest Spearman rho on the zoph
   space in part 1 (``params`` if none beats it), ``--proxy-children`` children (default 200), the real
   ``search-rl`` task; then random search (``controller=random``, ``reward=accuracy``, the same Evaluator, one
   child after another) until its wall time, data loading included, reaches the proxy search's (at least one
   child; it may overrun by one child's training). Each search's best architecture is retrained from scratch by
   the default recipe (``nas-cli train model=rl_child model.arch=BEST data=digits``, ``--data``'s) with seeds 0, 1, 2.
3. ENAS against training every child: the default ENAS run (``search-rl reward=shared space=enas_macro``), and
   search-rl's ``reward=accuracy`` loop (``search`` of ``nas_cli/nas/rl/search.py`` with the same Evaluator)
   driven by the same controller (``controller=reinforce`` with the config's ``enas.controller.*``, as
   ``reward=shared`` builds it) in the same space, its children trained as in part 1.
   The accuracy search gets as many children as make its training image-passes (children x child.epochs x
   child training images) equal ENAS's (enas.epochs x training images). Both best architectures are retrained
   as in part 2. Image-passes count the images sent forward through any network (a training pass also goes
   backward): ENAS's are epochs x (training images + the engine's validation pass) + epochs x controller
   steps x the validation minibatch + final samples x validation images; the accuracy search's are trained
   children x child.epochs x (child training + child validation images). A last line projects (computes, does
   not run) the cost of a trained child behind each reward ENAS's controller took (enas.epochs x
   enas.controller_steps children), the comparison of the ENAS paper's "1000x less than NAS".

Accuracy of a retrain is its ``final_val_acc`` (the held-out 20% of digits after the last epoch); sd is the sample
standard deviation. Each search runs once (seed 0): differences between searches carry that seed's luck. On
digits the default recipe retrains most architectures of these spaces to 98-100%, which leaves parts 2 and 3
little room to separate the methods. The tables and everything behind them go to ``OUT/cheap_search.json``,
the run folders beside it, what the commands print to ``OUT/commands.log``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import statistics
import sys
import time
from datetime import datetime
from pathlib import Path

import numpy as np
import scipy.stats
import torch
from hydra.core.global_hydra import GlobalHydra
from hydra.utils import instantiate

from nas_cli.commands import search_rl, train
from nas_cli.config_values import as_dict
from nas_cli.nas.rl import proxies
from nas_cli.nas.rl.arch import describe, key
from nas_cli.nas.rl.children import ChildOptions, Evaluator, build_child, load_data
from nas_cli.nas.rl.controllers.random_search import RandomSearch
from nas_cli.nas.rl.controllers.reinforce import Reinforce
from nas_cli.nas.rl.search import search as rl_search
from nas_cli.runs.options import RunOptions, resolve_device

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from helpers import compose_task  # noqa: E402  (the tests' composer: Hydra's runtime pointed at the run folder)

SEED = 0  # every search, and the children's seeds (seed + step)
RETRAIN_SEEDS = (0, 1, 2)
QUICK_CHILD = ["child.subset=100", "child.epochs=1"]
QUICK_RETRAIN = ["trainer.epochs=1", "data.subset=200"]
QUICK_ENAS = ["enas.epochs=1", "enas.controller_steps=5", "enas.final_samples=2", "data.subset=200"]


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def mean_sd(values) -> tuple[float, float]:
    values = list(values)
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def examples(loader) -> int:
    """Images in one pass of a loader (in-memory ``TensorLoader``s: no pass is made)."""
    n = len(loader.y)
    return (n // loader.batch_size) * loader.batch_size if getattr(loader, "drop_last", False) else n


class Bench:
    """The overrides every run shares, the output folder, and running commands in this process."""

    def __init__(self, out: Path, data: str, threads: int, quick: bool, retrain_epochs: int | None = None):
        self.out, self.data, self.threads, self.quick = out, data, threads, quick
        self.common = ["progress=false", f"threads={threads}", f"data={data}"]
        self.child = QUICK_CHILD if quick else []
        self.retrain_overrides = QUICK_RETRAIN if quick else []
        if retrain_epochs is not None:
            self.retrain_overrides = [*self.retrain_overrides, f"trainer.epochs={retrain_epochs}"]
        self.seeds = RETRAIN_SEEDS[:1] if quick else RETRAIN_SEEDS

    def retrained(self) -> str:
        """How the tables' best architectures were retrained."""
        extra = [o for o in self.retrain_overrides if o.startswith("trainer.epochs=")]
        recipe = "the default recipe" + (f" ({extra[-1]})" if extra else "")
        return f"best retrained by {recipe}, {len(self.seeds)} seed(s)"

    def compose(self, name: str, run_dir: Path, overrides: list[str]):
        """``name``'s config as its task receives it (Hydra's runtime pointed at ``run_dir``)."""
        try:
            return compose_task(name, run_dir, [*self.common, *overrides])
        finally:
            GlobalHydra.instance().clear()

    @contextlib.contextmanager
    def quiet(self):
        """What the commands print goes to ``OUT/commands.log``."""
        with open(self.out / "commands.log", "a") as log_file, contextlib.redirect_stdout(log_file):
            yield

    def task(self, command: str, run_dir: Path, overrides: list[str]) -> tuple[dict, float]:
        """A command's task on its composed config: its summary and wall seconds (composing included)."""
        module, name = {"search-rl": (search_rl, "search_rl"), "train": (train, "train")}[command]
        start = time.perf_counter()
        cfg = self.compose(name, run_dir, overrides)
        with self.quiet():
            summary = module.task(cfg)
        seconds = time.perf_counter() - start
        assert isinstance(summary, dict), summary
        if summary.get("status") != "ok":
            sys.exit(f"bench/cheap_search.py: {command} in {run_dir} ended {summary.get('status')}")
        return summary, seconds

    def retrain(self, arch_file: Path, folder: Path) -> dict:
        """The default train recipe on the architecture of ``arch_file``, once per retrain seed."""
        accs, seconds = {}, {}
        for seed in self.seeds:
            log(f"retrain {arch_file}, seed {seed}")
            summary, s = self.task(
                "train",
                folder / f"seed{seed}",
                ["model=rl_child", f"model.arch={arch_file}", f"seed={seed}", *self.retrain_overrides],
            )
            accs[seed], seconds[seed] = float(summary["final_val_acc"]), s
            log(f"  val_acc {accs[seed]:.4f} in {s:.1f} s")
        mean, sd = mean_sd(accs.values())
        return {"arch_file": str(arch_file), "val_acc": accs, "seconds": seconds, "mean": mean, "sd": sd}

    def children_setup(self, space: str, folder: Path, overrides: list[str] = ()):
        """search-rl's children as its reward=accuracy Evaluator trains them: (cfg, data, space, evaluator)."""
        cfg = self.compose("search_rl", folder, [f"space={space}", "controller=random", *self.child, *overrides])
        torch.set_num_threads(self.threads)
        child = ChildOptions(**as_dict(cfg.child))
        data_config = as_dict(cfg.data)
        data = load_data(data_config, child, SEED)
        the_space = instantiate(cfg.space, in_shape=data.in_shape, _convert_="all")
        evaluator = Evaluator(
            "accuracy",
            as_dict(cfg.synthetic),
            folder,
            resolve_device(str(cfg.device)),
            data,
            data_config,
            SEED,
            child,
            optimizer=instantiate(cfg.optim),
            schedule=instantiate(cfg.sched),
        )
        return cfg, data, the_space, evaluator


# -- 1. proxy quality ------------------------------------------------------------------------------------------


def proxy_quality(bench: Bench, space_name: str, n: int) -> dict:
    folder = bench.out / "proxy_quality" / space_name
    cfg, data, space, evaluator = bench.children_setup(space_name, folder)
    device = evaluator.device
    x, y = proxies.minibatch(data.train, int(cfg.proxy.batch), SEED)
    x, y = x.to(device), y.to(device)
    controller = RandomSearch(space, seed=SEED)
    archs, seen = [], set()
    for _ in range(50 * n):  # distinct children (a repeat would be a cache hit, not a new sample)
        arch = controller.propose()
        if key(arch) not in seen:
            seen.add(key(arch))
            archs.append(arch)
        if len(archs) == n:
            break
    rows = []
    for step, arch in enumerate(archs):
        scores, seconds = {}, {}
        for name, proxy in proxies.PROXIES.items():
            start = time.perf_counter()
            scores[name] = float(proxy(build_child(arch, data, device, SEED + step), x, y))
            seconds[name] = time.perf_counter() - start
        with bench.quiet():
            result = evaluator.evaluate([(step, arch)])[0]
        rows.append(
            {
                "step": step,
                "arch": describe(arch),
                "json": arch,
                "val_acc": float(result["reward"]),
                "train_s": float(result["seconds"]),
                "params": int(result["params"]),
                "proxy": scores,
                "proxy_s": seconds,
            }
        )
        if (step + 1) % 10 == 0 or step + 1 == len(archs):
            log(f"proxy quality, {space_name}: {step + 1}/{len(archs)} children")
    evaluator.close()
    accs = np.array([r["val_acc"] for r in rows])
    table = []
    for name in proxies.PROXIES:
        scores = np.array([r["proxy"][name] for r in rows])
        ok = np.isfinite(scores)
        if ok.sum() >= 3 and np.ptp(scores[ok]) > 0 and np.ptp(accs[ok]) > 0:
            spearman = scipy.stats.spearmanr(scores[ok], accs[ok])
            rho, p_value = float(spearman.statistic), float(spearman.pvalue)
            tau = float(scipy.stats.kendalltau(scores[ok], accs[ok]).statistic)
        else:
            rho = tau = p_value = math.nan
        table.append(
            {
                "proxy": name,
                "spearman": rho,
                "spearman_p": p_value,
                "kendall": tau,
                "failed": int((~ok).sum()),
                "seconds_per_child": statistics.fmean(r["proxy_s"][name] for r in rows),
            }
        )
    table.sort(key=lambda t: -t["spearman"] if math.isfinite(t["spearman"]) else math.inf)
    return {
        "space": space_name,
        "children": len(rows),
        "child": as_dict(cfg.child),
        "optim": as_dict(cfg.optim),
        "proxy_batch": len(x),
        "train_images": examples(data.train),
        "val_images": examples(data.val),
        "train_seconds_per_child": statistics.fmean(r["train_s"] for r in rows),
        "val_acc": {"mean": float(accs.mean()), "min": float(accs.min()), "max": float(accs.max())},
        "table": table,
        "rows": rows,
    }


def print_quality(q: dict) -> None:
    child = q["child"]
    print(
        f"\n1. proxy quality, {q['space']} space: {q['children']} random children (seed {SEED}), each trained "
        f"{child['epochs']} epoch(s) on {q['train_images']} images (child.score={child['score']}, "
        f"val on {q['val_images']}); their val acc mean {q['val_acc']['mean']:.3f}, "
        f"range {q['val_acc']['min']:.3f}-{q['val_acc']['max']:.3f}; proxies on one minibatch of {q['proxy_batch']}"
    )
    print(f"   {'proxy':<18} {'spearman':>8} {'p':>6} {'kendall':>8} {'failed':>6} {'s/child':>8}")
    for t in q["table"]:
        name = t["proxy"] + (" (baseline)" if t["proxy"] == "params" else "")
        print(
            f"   {name:<18} {t['spearman']:>8.3f} {t['spearman_p']:>6.3f} {t['kendall']:>8.3f} {t['failed']:>6} "
            f"{t['seconds_per_child']:>8.4f}"
        )
    print(f"   {'training':<18} {'':>8} {'':>6} {'':>8} {'':>6} {q['train_seconds_per_child']:>8.4f}")


def best_proxy(q: dict) -> str:
    """The proxy of the highest Spearman rho; ``params`` unless one beats it."""
    by_name = {t["proxy"]: t["spearman"] for t in q["table"]}
    base = by_name["params"] if math.isfinite(by_name["params"]) else -math.inf
    best = max(
        (t for t in q["table"] if t["proxy"] != "params" and math.isfinite(t["spearman"])),
        key=lambda t: t["spearman"],
        default=None,
    )
    return best["proxy"] if best is not None and best["spearman"] > base else "params"


# -- 2. proxy search vs random search ----------------------------------------------------------------------------


def timed_random_search(bench: Bench, budget_s: float, folder: Path) -> dict:
    """controller=random, reward=accuracy: children trained one after another until ``budget_s`` has passed
    (data loading included); the best is written as ``folder/best_arch.json``."""
    start = time.perf_counter()
    _, _, space, evaluator = bench.children_setup("zoph", folder, ["reward=accuracy"])
    controller = RandomSearch(space, seed=SEED)
    rows: list[dict] = []
    while not rows or time.perf_counter() - start < budget_s:
        step = len(rows)
        arch = controller.propose()
        with bench.quiet():
            result = evaluator.evaluate([(step, arch)])[0]
        rows.append({"step": step, "arch": arch, **result})
    evaluator.close()
    spent = time.perf_counter() - start
    best = max(rows, key=lambda r: r["reward"])
    (folder / "best_arch.json").write_text(
        json.dumps({"arch": best["arch"], "reward": best["reward"], "params": best["params"], "step": best["step"]})
    )
    log(f"random search: {len(rows)} children in {spent:.1f} s (budget {budget_s:.1f} s)")
    return {
        "seconds": spent,
        "budget_s": budget_s,
        "children": len(rows),
        "trained": sum(not r["cache_hit"] for r in rows),
        "best_reward": best["reward"],
        "best_arch": describe(best["arch"]),
        "arch_file": str(folder / "best_arch.json"),
    }


def proxy_vs_random(bench: Bench, proxy: str, children: int) -> dict:
    folder = bench.out / "proxy_search"
    log(f"proxy search: evolution, reward=proxy, proxy.name={proxy}, {children} children")
    summary, seconds = bench.task(
        "search-rl",
        folder,
        ["controller=evolution", "reward=proxy", f"proxy.name={proxy}", f"search.children={children}", *bench.child],
    )
    proxy_run = {
        "proxy": proxy,
        "seconds": seconds,
        "children": summary["children"],
        "failed_children": summary.get("failed_children"),
        "best_reward": summary["best_reward"],
        "best_arch": summary["best_arch"],
        "arch_file": str(folder / "best_arch.json"),
    }
    log(f"proxy search: {seconds:.1f} s; random search with the same wall time")
    random_run = timed_random_search(bench, seconds, bench.out / "random_search")
    proxy_run["retrain"] = bench.retrain(folder / "best_arch.json", folder / "retrain")
    random_run["retrain"] = bench.retrain(Path(random_run["arch_file"]), bench.out / "random_search" / "retrain")
    return {"proxy_search": proxy_run, "random_search": random_run}


def print_proxy_vs_random(r: dict, bench: Bench) -> None:
    p, q = r["proxy_search"], r["random_search"]
    print(
        f"\n2. proxy search (evolution, reward=proxy, {p['proxy']}) vs random search (trained children) at equal "
        f"search wall time on zoph; {bench.retrained()}"
    )
    print(f"   {'method':<30} {'children':>8} {'search s':>8} {'retrain s':>9} {'val acc mean ± sd':>18}")
    for name, run in ((f"evolution + {p['proxy']}", p), ("random + trained children", q)):
        rt = run["retrain"]
        print(
            f"   {name:<30} {run['children']:>8} {run['seconds']:>8.1f} {sum(rt['seconds'].values()):>9.1f} "
            f"{rt['mean']:>9.4f} ± {rt['sd']:.4f}"
        )
    print(f"   proxy search's best: {p['best_arch']} ({p['proxy']} {p['best_reward']:.4g})")
    print(f"   random search's best: {q['best_arch']} (search val acc {q['best_reward']:.4f})")


# -- 3. ENAS vs training every child -------------------------------------------------------------------------


def enas_vs_trained(bench: Bench) -> dict:
    extra = QUICK_ENAS if bench.quick else []
    folder = bench.out / "enas"
    cfg = bench.compose("search_rl", folder, ["reward=shared", "space=enas_macro", *extra])
    data = instantiate(cfg.data, seed=SEED)  # ENAS's data: the whole splits
    n_train, n_val = examples(data.train), examples(data.val)
    opts = as_dict(cfg.enas)
    size = data.train.batch_size  # a controller step's validation minibatch has the training batch size
    per_pass = [min(size, n_val - i) for i in range(0, n_val, size)]
    steps = opts["epochs"] * opts["controller_steps"]
    controller_images = sum(per_pass[i % len(per_pass)] for i in range(steps))  # the stream's batches, in turn
    log(f"ENAS: reward=shared, {opts['epochs']} epochs on {n_train} images")
    summary, seconds = bench.task("search-rl", folder, ["reward=shared", "space=enas_macro", *extra])
    shared = {
        "seconds": seconds,
        "epochs": opts["epochs"],
        "controller_steps": opts["controller_steps"],
        "final_samples": opts["final_samples"],
        "best_reward": summary.get("best_reward"),
        "best_arch": summary.get("best_arch"),
        "arch_file": str(folder / "best_arch.json"),
        "passes": {
            "train": opts["epochs"] * n_train,
            "validation": opts["epochs"] * n_val,
            "controller": controller_images,
            "final": opts["final_samples"] * n_val,
        },
    }
    shared["passes"]["total"] = sum(shared["passes"].values())

    folder = bench.out / "accuracy_search"
    start = time.perf_counter()
    cfg, data, space, evaluator = bench.children_setup("enas_macro", folder, ["reward=accuracy"])
    child = evaluator.child
    child_train, child_val = examples(data.train), examples(data.val)
    children = max(1, math.ceil(shared["passes"]["train"] / (child.epochs * child_train)))
    log(f"accuracy search: ENAS's controller, {children} trained children (ENAS's training image-passes)")

    controller = Reinforce(space, seed=SEED, **as_dict(cfg.enas.controller))  # ENAS's, as reward=shared builds it
    run_options = RunOptions.from_config(cfg)
    run = run_options.run("search-rl", budget={"search.children": children}, headline=["best_reward"])
    with bench.quiet():
        summary = rl_search(controller, evaluator, run, children, progress=False, trained=None, batch=None)
    seconds = time.perf_counter() - start
    if summary.get("status") != "ok":
        sys.exit(f"bench/cheap_search.py: the accuracy search in {folder} ended {summary.get('status')}")
    trained = int(summary["trained"])
    accuracy = {
        "seconds": seconds,
        "children": int(summary["children"]),
        "trained": trained,
        "child": as_dict(cfg.child),
        "best_reward": summary["best_reward"],
        "best_arch": summary["best_arch"],
        "arch_file": str(folder / "best_arch.json"),
        "passes": {"train": trained * child.epochs * child_train, "validation": trained * child.epochs * child_val},
    }
    accuracy["passes"]["total"] = sum(accuracy["passes"].values())
    # what the controller would cost with a trained child behind each of ENAS's rewards (computed, not run)
    rewards = opts["epochs"] * opts["controller_steps"]
    accuracy["per_reward_projection"] = {
        "children": rewards,
        "passes": rewards * child.epochs * (child_train + child_val),
        "seconds": rewards * seconds / max(trained, 1),
    }
    shared["retrain"] = bench.retrain(Path(shared["arch_file"]), bench.out / "enas" / "retrain")
    accuracy["retrain"] = bench.retrain(Path(accuracy["arch_file"]), folder / "retrain")
    return {"enas": shared, "accuracy": accuracy, "train_images": n_train, "val_images": n_val}


def print_enas(r: dict, bench: Bench) -> None:
    e, a = r["enas"], r["accuracy"]
    print(
        f"\n3. ENAS (reward=shared) vs training every child (reward=accuracy, ENAS's controller), enas_macro space; "
        f"{bench.retrained()}"
    )
    print(
        f"   {'method':<30} {'children':>8} {'search s':>8} {'retrain s':>9} {'image-passes':>12} {'(training)':>10} "
        f"{'val acc mean ± sd':>18}"
    )
    rows = (
        (f"ENAS, {e['epochs']} epochs", e, "shared"),
        (f"trained, {a['child']['epochs']} ep x {a['child']['subset']} imgs", a, str(a["trained"])),
    )
    for name, run, children in rows:
        print(
            f"   {name:<30} {children:>8} {run['seconds']:>8.1f} {sum(run['retrain']['seconds'].values()):>9.1f} "
            f"{run['passes']['total']:>12,} {run['passes']['train']:>10,} "
            f"{run['retrain']['mean']:>9.4f} ± {run['retrain']['sd']:.4f}"
        )
    gap = e["retrain"]["mean"] - a["retrain"]["mean"]
    ratio = a["passes"]["total"] / e["passes"]["total"]
    print(
        f"   accuracy gap (ENAS - trained children): {gap:+.4f}; image-passes, trained children / ENAS: {ratio:.2f}; "
        f"search time, trained children / ENAS: {a['seconds'] / e['seconds']:.2f}"
    )
    proj = a["per_reward_projection"]
    print(
        f"   projected, not run: one trained child per reward ENAS's controller took ({proj['children']:,} children) "
        f"would cost {proj['passes']:,} image-passes ({proj['passes'] / e['passes']['total']:.1f}x ENAS's) and about "
        f"{proj['seconds']:.0f} s at this search's rate"
    )
    p = e["passes"]
    print(
        f"   ENAS's image-passes: train {p['train']:,} + engine validation {p['validation']:,} + controller "
        f"{p['controller']:,} + final samples {p['final']:,}"
    )
    print(f"   ENAS's best: {e['best_arch']}")
    print(f"   trained children's best: {a['best_arch']}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--quick",
        action="store_true",
        help="8 children, child.subset=100, 1 epoch, 20 proxy-search children, 1 retrain seed of 1 epoch on 200 "
        "images, ENAS 1 epoch on 200 images: a smoke check",
    )
    parser.add_argument("--children", type=int, default=None, help="children per space in part 1 (default 60)")
    parser.add_argument("--proxy-children", type=int, default=None, help="the proxy search's children (default 200)")
    parser.add_argument("--data", default="digits", choices=["digits", "mnist5k"], help="mnist5k: larger, slower")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads of every run (1: fastest here)")
    parser.add_argument("--out", type=Path, help="output folder (default: outputs/bench/cheap_search/<time>)")
    parser.add_argument("--parts", default="123", help="which parts to run, e.g. 23 (default: all three)")
    parser.add_argument("--proxy", default=None, help="part 2's proxy when part 1 does not run (default: params)")
    parser.add_argument(
        "--retrain-epochs", type=int, default=None, help="epochs of every retrain (default: the train recipe's)"
    )
    args = parser.parse_args()
    n = args.children if args.children is not None else (8 if args.quick else 60)
    proxy_children = args.proxy_children if args.proxy_children is not None else (20 if args.quick else 200)
    out = args.out or Path("outputs/bench/cheap_search") / datetime.now().strftime("%Y-%m-%d_%H-%M-%S")
    out.mkdir(parents=True, exist_ok=True)
    bench = Bench(out, args.data, args.threads, args.quick, args.retrain_epochs)
    began = time.perf_counter()
    print(
        f"torch {torch.__version__}, threads {args.threads}, data={args.data}, out {out}"
        + (" (--quick)" if args.quick else "")
    )
    record: dict = {
        "quick": args.quick,
        "data": args.data,
        "threads": args.threads,
        "seed": SEED,
        "parts": args.parts,
        "retrain_epochs": args.retrain_epochs,
    }
    timings: dict[str, float] = {}

    chosen = args.proxy or "params"
    if "1" in args.parts:
        t = time.perf_counter()
        quality = {space: proxy_quality(bench, space, n) for space in ("zoph", "enas_macro")}
        for q in quality.values():
            print_quality(q)
        record["proxy_quality"] = quality
        chosen = args.proxy or best_proxy(quality["zoph"])
        timings["1. proxy quality"] = time.perf_counter() - t

    if "2" in args.parts:
        t = time.perf_counter()
        record["proxy_vs_random"] = proxy_vs_random(bench, chosen, proxy_children)
        print_proxy_vs_random(record["proxy_vs_random"], bench)
        timings["2. proxy vs random"] = time.perf_counter() - t

    if "3" in args.parts:
        t = time.perf_counter()
        record["enas_vs_trained"] = enas_vs_trained(bench)
        print_enas(record["enas_vs_trained"], bench)
        timings["3. ENAS vs trained"] = time.perf_counter() - t

    timings["total"] = time.perf_counter() - began
    record["timings_s"] = timings
    print("\nwall time: " + ", ".join(f"{k} {v:.0f} s" for k, v in timings.items()))
    (out / "cheap_search.json").write_text(json.dumps(record, indent=2, default=str) + "\n")
    print(f"written: {out / 'cheap_search.json'}")


if __name__ == "__main__":
    main()
