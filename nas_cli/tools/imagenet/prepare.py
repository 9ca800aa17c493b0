"""ILSVRC2012 archives -> ``dst/train/<wnid>/*.JPEG`` and ``dst/val/<wnid>/*.JPEG``.

``prepare(Options(...))`` plans from the archives' headers (classes, sizes, labels, free
disk), then extracts: each class tar is read in place from the train archive by a pool
of worker processes, and the validation images are written straight into their class
folders. Progress lives in ``dst/.prep_state.json``, rewritten atomically after every
finished class, so an interrupted run resumes where it stopped and a finished one does
nothing. Nothing in ``src`` is ever written.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import random
import shutil
import time
from collections import Counter
from collections.abc import Callable, Iterable
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from rich.console import Console
from rich.progress import BarColumn, Progress, ProgressColumn, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from nas_cli.errors import UserError
from nas_cli.runs import signals
from nas_cli.runs.record import atomic_write
from nas_cli.tools.imagenet import labels as labels_mod
from nas_cli.tools.imagenet.archives import ArchiveError, Member, open_raw, scan
from nas_cli.tools.imagenet.extract import (
    check_folder,
    extract_class,
    extract_val_chunk,
    partial_dir,
)

TRAIN_TAR = "ILSVRC2012_img_train.tar"
VAL_TAR = "ILSVRC2012_img_val.tar"
DEVKIT = "ILSVRC2012_devkit_t12.tar.gz"
STATE = ".prep_state.json"
VAL_PARTIAL = ".val.partial"
SPLITS = ("train", "val")
OFFICIAL = {"classes": 1000, "train": 1_281_167, "val": 50_000, "val_per_class": 50}
SUBSET_BYTES_PER_IMAGE = 1 << 20  # disk estimate for per_class subsets: 1 MB an image (ILSVRC averages 110 KB)
R = TypeVar("R")  # what a job of _run_jobs returns


@dataclass
class Options:
    src: str | Path
    dst: str | Path
    splits: tuple[str, ...] = SPLITS
    workers: int = 0  # 0: one per core, at most 8
    labels: str = "auto"  # auto | devkit | shipped
    fix_images: bool = False
    classes: int | None = None
    per_class: int | None = None
    seed: int = 0  # picks the classes=N subset
    verify: bool = False
    dry_run: bool = False
    progress: bool = True


@dataclass
class ClassJob:
    wnid: str
    offset: int
    size: int


@dataclass
class Plan:
    src: Path
    dst: Path
    splits: tuple[str, ...]
    train_wnids: list[str] = field(default_factory=list)  # every class in the train archive
    chosen: list[str] | None = None  # the subset's classes (None: all)
    train_todo: list[ClassJob] = field(default_factory=list)
    train_done: list[str] = field(default_factory=list)
    val_members: list[tuple[Member, str]] = field(default_factory=list)  # the images to write, with labels
    val_archive_files: int = 0
    val_done: bool = False
    label_source: str = ""
    bytes_needed: int = 0
    bytes_free: int = 0


# ---------------------------------------------------------------- state


def _load_state(dst: Path) -> dict:
    path = dst / STATE
    if not path.is_file():
        return {"version": 1, "train": {}, "val": None, "fixed": []}
    try:
        state = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as ex:
        raise UserError(f"{path} is unreadable ({ex}): delete it to start {dst} afresh") from None
    state.setdefault("train", {})
    state.setdefault("val", None)
    state.setdefault("fixed", [])
    return state


_last_save = [0.0]
SAVE_EVERY_S = 1.0  # ext4 flushes a file renamed over another: at most one state rewrite a second


def _save_state(dst: Path, state: dict, lazy: bool = False) -> None:
    """Rewrite the state atomically; ``lazy``: skip it if it was written less than a second ago.

    A class finished but not yet recorded is redone by the next run (its folder is not vouched for).
    """
    if lazy and time.monotonic() - _last_save[0] < SAVE_EVERY_S:
        return
    _last_save[0] = time.monotonic()
    text = json.dumps(state, indent=1)
    path = dst / STATE
    if path.is_file() and path.read_text() == text:
        return  # a re-run of a finished job writes nothing
    atomic_write(dst / STATE, lambda tmp: Path(tmp).write_text(text))


# ---------------------------------------------------------------- planning


def _check_options(opts: Options) -> tuple[Path, Path, tuple[str, ...]]:
    splits = tuple(dict.fromkeys(str(s) for s in opts.splits))
    if not splits or any(s not in SPLITS for s in splits):
        raise UserError(f"splits={list(opts.splits)}: expected a non-empty list of train and val")
    for key in ("classes", "per_class"):
        value = getattr(opts, key)
        if value is not None and (not isinstance(value, int) or value < 1):
            raise UserError(f"{key}={value}: expected a positive whole number or null")
    src, dst = Path(opts.src).expanduser().resolve(), Path(opts.dst).expanduser().resolve()
    if not src.is_dir():
        raise UserError(f"src={opts.src}: no such folder (it should hold {TRAIN_TAR} and {VAL_TAR})")
    needed = [name for split, name in (("train", TRAIN_TAR), ("val", VAL_TAR)) if split in splits]
    missing = [name for name in needed if not (src / name).is_file()]
    if missing:
        raise UserError(f"src={opts.src}: missing {', '.join(missing)} (or pick splits=[...])")
    if dst == src or src in dst.parents:
        raise UserError(f"dst={opts.dst} is inside src: the source folder is never written to")
    if dst.exists() and not dst.is_dir():
        raise UserError(f"dst={opts.dst} exists and is not a folder")
    return src, dst, splits


def _train_classes(train_tar: Path) -> list[ClassJob]:
    with open_raw(train_tar) as f:
        members = scan(f, train_tar.name)
    jobs = []
    for m in members:
        wnid, ext = os.path.splitext(m.name)
        if ext != ".tar" or not labels_mod.is_wnid(wnid):  # the name becomes a folder: a WNID and nothing else
            raise ArchiveError(f"{train_tar.name}: member {m.name!r} is not a class archive (<wnid>.tar)")
        jobs.append(ClassJob(wnid, m.offset, m.size))
    if len({j.wnid for j in jobs}) != len(jobs):
        raise ArchiveError(f"{train_tar.name}: a class archive appears twice")
    return sorted(jobs, key=lambda j: j.wnid)


def _subset_key(opts: Options) -> dict:
    return {
        "classes": opts.classes,
        "per_class": opts.per_class,
        "subset_seed": opts.seed if opts.classes is not None else None,
    }


def plan(opts: Options) -> tuple[Plan, dict]:
    """What is there, what is done, what is to do: every check that can run before any writing."""
    src, dst, splits = _check_options(opts)
    state = _load_state(dst)
    key = _subset_key(opts)
    if "subset" in state and state["subset"] != key:
        raise UserError(
            f"dst={opts.dst} was prepared with {_describe(state['subset'])}, not "
            f"{_describe(key)}: use another dst for another subset"
        )
    p = Plan(src=src, dst=dst, splits=splits)
    jobs: list[ClassJob] = []
    if "train" in splits:
        jobs = _train_classes(src / TRAIN_TAR)
        p.train_wnids = [j.wnid for j in jobs]
    label_map: dict[str, str] = {}
    val_members: list[Member] = []
    if "val" in splits:
        label_map, p.label_source = labels_mod.load(opts.labels, src / DEVKIT)
        with open_raw(src / VAL_TAR) as f:
            val_members = scan(f, VAL_TAR)
        p.val_archive_files = len(val_members)
        unlabeled = [m.name for m in val_members if os.path.basename(m.name) not in label_map]
        if unlabeled:
            raise UserError(
                f"{VAL_TAR}: no label for {unlabeled[0]!r}"
                f"{f' and {len(unlabeled) - 1} more' if len(unlabeled) > 1 else ''} "
                f"(labels from {p.label_source})"
            )
    # the subset's classes: chosen once, kept in the state so that every later run agrees
    if opts.classes is not None:
        if state.get("chosen"):
            p.chosen = list(state["chosen"])
            if not all(isinstance(w, str) and labels_mod.is_wnid(w) for w in p.chosen):
                raise UserError(f"{dst / STATE}: its chosen classes are not all WNIDs: delete it to start {dst} afresh")
        else:
            universe = p.train_wnids or sorted({label_map[os.path.basename(m.name)] for m in val_members})
            if opts.classes > len(universe):
                raise UserError(f"classes={opts.classes}: the archive has only {len(universe)} classes")
            p.chosen = sorted(random.Random(opts.seed).sample(universe, opts.classes))
    wanted = set(p.chosen) if p.chosen is not None else None
    for job in jobs:
        if wanted is not None and job.wnid not in wanted:
            continue
        if job.wnid in state["train"] and (dst / "train" / job.wnid).is_dir():
            p.train_done.append(job.wnid)
        else:
            p.train_todo.append(job)
    if wanted is not None and "train" in splits:
        absent = sorted(wanted - set(p.train_wnids))
        if absent:
            raise UserError(f"{TRAIN_TAR}: no class archive for {absent[0]} (of the subset in {dst / STATE})")
    if "val" in splits:
        per_wnid: Counter = Counter()
        for m in sorted(val_members, key=lambda m: m.name):
            wnid = label_map[os.path.basename(m.name)]
            if wanted is not None and wnid not in wanted:
                continue
            if opts.per_class is not None and per_wnid[wnid] >= opts.per_class:
                continue
            per_wnid[wnid] += 1
            p.val_members.append((m, wnid))
        p.val_done = bool(state.get("val")) and (dst / "val").is_dir()
    # disk: what the remaining work writes, against what is free where it goes
    need = 0
    for job in p.train_todo:
        need += job.size if opts.per_class is None else min(job.size, opts.per_class * SUBSET_BYTES_PER_IMAGE)
    if "val" in splits and not p.val_done:
        need += sum(m.size for m, _ in p.val_members)
    p.bytes_needed = need
    probe = dst if dst.exists() else next(d for d in dst.parents if d.exists())
    p.bytes_free = shutil.disk_usage(probe).free
    _check_outputs(p)
    state["subset"] = key
    if p.chosen is not None:
        state["chosen"] = p.chosen
    return p, state


def _check_outputs(p: Plan) -> None:
    """Every class folder the plan writes (its partial twin, a finished one fix_images may rewrite) lies inside
    ``dst`` once resolved.

    The WNIDs are checked where they are read (archive, devkit); this also refuses a link inside ``dst``
    that points elsewhere. File names inside a class folder are archive members, already refused when
    absolute or holding ``..``.
    """
    train = p.dst / "train"
    folders = [f for j in p.train_todo for f in (train / j.wnid, partial_dir(train, j.wnid))]
    folders += [train / w for w in p.train_done]
    if "val" in p.splits and not p.val_done:
        folders += [
            f for w in sorted({w for _, w in p.val_members}) for f in (p.dst / "val" / w, p.dst / VAL_PARTIAL / w)
        ]
    for folder in folders:
        resolved = folder.resolve()
        if resolved == p.dst or not resolved.is_relative_to(p.dst):
            raise UserError(
                f"dst={p.dst}: {folder.relative_to(p.dst)} would be written at {resolved}, outside "
                f"dst (a link inside it?): refused, nothing was written"
            )


def _describe(key: dict) -> str:
    if not key.get("classes") and not key.get("per_class"):
        return "all classes and images"
    return ", ".join(f"{k}={v}" for k, v in key.items() if v is not None)


# ---------------------------------------------------------------- running


class _Rate(ProgressColumn):
    """files/s and MB/s of what has been written (the bar itself counts archive bytes)."""

    def render(self, task) -> Text:
        elapsed = task.elapsed or 0.0
        files, written = task.fields.get("files", 0), task.fields.get("written", 0)
        if elapsed <= 0:
            return Text(f"{files:,} files", style="progress.data.speed")
        return Text(
            f"{files:,} files  {files / elapsed:,.0f} files/s  {written / elapsed / 1e6:,.1f} MB/s",
            style="progress.data.speed",
        )


def _progress(console: Console, enabled: bool) -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.percentage:>3.0f}%"),
        _Rate(),
        TimeElapsedColumn(),
        console=console,
        disable=not enabled,
        transient=False,
    )


def _workers(n: int) -> int:
    return n if n and n > 0 else max(1, min(os.cpu_count() or 1, 8))


def _run_jobs(fn: Callable[..., R], jobs: list[tuple], workers: int, on_done: Callable[[tuple, R], None]) -> None:
    """``fn(*job)`` for every job, ``on_done(job, result)`` in the parent as each finishes.

    The first failure stops new jobs; those already running finish and are recorded, then
    the failure is raised. SIGINT/SIGTERM do the same once the job in hand is done (workers
    ignore the signals; the parent stops them).
    """
    if workers <= 1 or len(jobs) <= 1:
        for job in jobs:
            on_done(job, fn(*job))
            signals.check()
        return
    context = mp.get_context("forkserver" if "forkserver" in mp.get_all_start_methods() else "spawn")
    pool = ProcessPoolExecutor(
        max_workers=min(workers, len(jobs)), mp_context=context, initializer=signals.ignore_in_worker
    )
    futures = {pool.submit(fn, *job): job for job in jobs}
    error: BaseException | None = None
    recorded: set = set()

    def settle(fut) -> None:
        nonlocal error
        if fut in recorded or fut.cancelled():
            return
        recorded.add(fut)
        try:
            result = fut.result()
        except Exception as ex:
            if error is None:
                error = ex
                for other in futures:
                    other.cancel()
            return
        on_done(futures[fut], result)

    try:
        for fut in as_completed(futures):
            settle(fut)
            signals.check()
    except KeyboardInterrupt:
        for fut in futures:
            fut.cancel()
        for fut in futures:  # the running ones finish: record them so the next run skips them
            if not fut.cancelled():
                try:
                    fut.exception()
                except KeyboardInterrupt:
                    break
                settle(fut)
        raise
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    if error is not None:
        raise error


def _clean_leftovers(p: Plan, state: dict) -> list[str]:
    """Partial folders of an interrupted run, and class folders no record vouches for."""
    removed = []
    train = p.dst / "train"
    if "train" in p.splits and train.is_dir():
        for entry in train.iterdir():
            if entry.name.startswith(".") and entry.name.endswith(".partial"):
                shutil.rmtree(entry)
                removed.append(str(entry))
        for job in p.train_todo:
            if (train / job.wnid).exists():
                shutil.rmtree(train / job.wnid)
                removed.append(str(train / job.wnid))
    if "val" in p.splits and not p.val_done:
        for folder in (p.dst / VAL_PARTIAL, p.dst / "val"):
            if folder.exists():
                shutil.rmtree(folder)
                removed.append(str(folder))
    return removed


def _chunks(items: list, n: int) -> Iterable[list]:
    size = max(1, -(-len(items) // n))
    for i in range(0, len(items), size):
        yield items[i : i + size]


def prepare(opts: Options, console: Console | None = None) -> dict:
    """Plan, extract what is missing, optionally fix images and verify; returns the summary."""
    console = console or Console(stderr=True)
    start = time.perf_counter()
    p, state = plan(opts)
    summary: dict[str, Any] = {
        "status": "ok",
        "src": str(p.src),
        "dst": str(p.dst),
        "splits": list(p.splits),
        "labels": p.label_source or None,
        "classes": len(p.chosen) if p.chosen is not None else None,
        "per_class": opts.per_class,
    }
    if opts.dry_run:
        print_plan(p, console)
        return {
            **summary,
            "status": "dry_run",
            "train_classes_todo": len(p.train_todo),
            "train_classes_done": len(p.train_done),
            "val_todo": 0 if p.val_done else len(p.val_members),
            "bytes_needed": p.bytes_needed,
            "bytes_free": p.bytes_free,
        }
    if p.bytes_needed > p.bytes_free:
        raise UserError(
            f"dst={opts.dst}: needs about {p.bytes_needed / 1e9:,.1f} GB, only {p.bytes_free / 1e9:,.1f} GB free there"
        )
    p.dst.mkdir(parents=True, exist_ok=True)
    _clean_leftovers(p, state)
    _save_state(p.dst, state)
    workers = _workers(opts.workers)
    written = {"files": 0, "bytes": 0}
    fixed: list[dict] = []
    with _progress(console, opts.progress) as bar:
        if p.train_todo:
            (p.dst / "train").mkdir(exist_ok=True)
            task = bar.add_task("train", total=sum(j.size for j in p.train_todo), files=0, written=0)
            by_wnid = {j.wnid: j for j in p.train_todo}

            def train_done(job: tuple, result: dict) -> None:
                state["train"][result["wnid"]] = {
                    "files": result["files"],
                    "bytes": result["bytes"],
                    "fix_checked": bool(opts.fix_images),
                }
                state["fixed"] += result["fixed"]
                _save_state(p.dst, state, lazy=True)
                written["files"] += result["files"]
                written["bytes"] += result["bytes"]
                fixed.extend(result["fixed"])
                for item in result["fixed"]:
                    bar.console.log(f"fixed train/{result['wnid']}/{item['file']} (was {item['was']})")
                bar.update(task, advance=by_wnid[result["wnid"]].size, files=written["files"], written=written["bytes"])

            jobs = [
                (
                    str(p.src / TRAIN_TAR),
                    j.offset,
                    j.size,
                    j.wnid,
                    str(p.dst / "train"),
                    opts.per_class,
                    bool(opts.fix_images),
                )
                for j in p.train_todo
            ]
            try:
                _run_jobs(extract_class, jobs, workers, train_done)
            finally:  # whatever happened, the classes finished so far are recorded
                _save_state(p.dst, state)
        if "val" in p.splits and not p.val_done:
            _extract_val(p, state, opts, workers, bar, written, fixed)
        if opts.fix_images:
            _fix_finished(p, state, workers, bar, fixed)
    wall = time.perf_counter() - start
    train_files = sum(state["train"].get(w, {}).get("files", 0) for w in _train_set(p))
    summary.update(
        {
            "train_classes": len(_train_set(p)) if "train" in p.splits else None,
            "train_images": train_files if "train" in p.splits else None,
            "val_images": (state["val"] or {}).get("files") if "val" in p.splits else None,
            "classes_extracted": len(p.train_todo),
            "classes_already_done": len(p.train_done),
            "val_extracted": "val" in p.splits and not p.val_done,
            "files_written": written["files"],
            "bytes_written": written["bytes"],
            "images_fixed": len(fixed),
            "fixed": fixed,
            "wall_time_s": wall,
            "files_per_s": written["files"] / wall if wall else None,
            "mb_per_s": written["bytes"] / 1e6 / wall if wall else None,
            "workers": workers,
        }
    )
    if opts.verify:
        rows, mismatches = verify(p, state)
        print_verify(rows, mismatches, console)
        summary["verify"] = {"rows": rows, "mismatches": mismatches}
        if mismatches:
            summary["status"] = "mismatch"
    return summary


def _train_set(p: Plan) -> list[str]:
    return p.chosen if p.chosen is not None else p.train_wnids


def _extract_val(
    p: Plan, state: dict, opts: Options, workers: int, bar: Progress, written: dict, fixed: list[dict]
) -> None:
    partial = p.dst / VAL_PARTIAL
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    ordered = sorted(p.val_members, key=lambda mw: mw[0].offset)  # read the archive front to back
    items = [(m.name, m.offset, m.size, wnid) for m, wnid in ordered]
    chunks = list(_chunks(items, workers * 4))
    task = bar.add_task("val", total=sum(m.size for m, _ in ordered) or 1, files=0, written=0)
    val_written = {"files": 0, "bytes": 0}

    def chunk_done(job: tuple, result: dict) -> None:
        val_written["files"] += result["files"]
        val_written["bytes"] += result["bytes"]
        fixed.extend(result["fixed"])
        for item in result["fixed"]:
            bar.console.log(f"fixed val/{item['file']} (was {item['was']})")
        bar.update(
            task,
            advance=sum(size for _, _, size, _ in job[1]),
            files=val_written["files"],
            written=val_written["bytes"],
        )

    try:
        _run_jobs(
            extract_val_chunk,
            [(str(p.src / VAL_TAR), c, str(partial), bool(opts.fix_images)) for c in chunks],
            workers,
            chunk_done,
        )
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    for wnid in {w for _, w in p.val_members}:  # a class of the subset with no val image still gets a folder
        (partial / wnid).mkdir(exist_ok=True)
    os.rename(partial, p.dst / "val")
    val_fixed = [x for x in fixed if x["split"] == "val"]
    state["val"] = {
        "files": val_written["files"],
        "bytes": val_written["bytes"],
        "per_class": dict(sorted(Counter(w for _, w in p.val_members).items())),
        "fix_checked": bool(opts.fix_images),
    }
    state["fixed"] += val_fixed
    _save_state(p.dst, state)
    written["files"] += val_written["files"]
    written["bytes"] += val_written["bytes"]


def _fix_finished(p: Plan, state: dict, workers: int, bar: Progress, fixed: list[dict]) -> None:
    """fix_images=true on folders extracted earlier without it: inspect them in place."""
    jobs = []
    if "train" in p.splits:
        jobs += [(str(p.dst / "train" / w), "train") for w in p.train_done if not state["train"][w].get("fix_checked")]
    val_unchecked = "val" in p.splits and state.get("val") and not state["val"].get("fix_checked")
    if val_unchecked:
        jobs += [(str(d), "val") for d in sorted((p.dst / "val").iterdir()) if d.is_dir()]
    if not jobs:
        return
    task = bar.add_task("fix_images", total=len(jobs), files=0, written=0)

    def done(job: tuple, result: list[dict]) -> None:
        folder, split = job
        if split == "train":
            state["train"][Path(folder).name]["fix_checked"] = True
        for item in result:
            bar.console.log(f"fixed {split}/{Path(folder).name}/{item['file']} (was {item['was']})")
        fixed.extend(result)
        state["fixed"] += result
        _save_state(p.dst, state, lazy=True)
        bar.update(task, advance=1)

    try:
        _run_jobs(check_folder, jobs, workers, done)
    finally:
        _save_state(p.dst, state)
    if val_unchecked:
        state["val"]["fix_checked"] = True
        _save_state(p.dst, state)


# ---------------------------------------------------------------- reports


def _count(folder: Path) -> int:
    try:
        return sum(1 for e in os.scandir(folder) if e.is_file() and not e.name.startswith("."))
    except FileNotFoundError:
        return -1


def verify(p: Plan, state: dict) -> tuple[list[dict], list[str]]:
    """Image counts per split and class against the archives (and ILSVRC2012's own numbers)."""
    rows: list[dict] = []
    mismatches: list[str] = []
    whole = p.chosen is None and state.get("subset", {}).get("per_class") is None
    full = {
        "train": whole and len(p.train_wnids) == OFFICIAL["classes"],  # the real archives: their numbers too
        "val": whole and p.val_archive_files == OFFICIAL["val"],
    }
    for split in p.splits:
        root = p.dst / split
        if split == "train":
            expected = {w: state["train"].get(w, {}).get("files") for w in _train_set(p)}
        else:
            expected = dict(Counter(w for _, w in p.val_members))
        found = (
            {d.name: _count(d) for d in root.iterdir() if d.is_dir() and not d.name.startswith(".")}
            if root.is_dir()
            else {}
        )
        for wnid, want in sorted(expected.items()):
            got = found.get(wnid, -1)
            if got < 0:
                mismatches.append(f"{split}/{wnid}: missing")
            elif want is None:
                mismatches.append(f"{split}/{wnid}: {got} images, not recorded as finished")
            elif got != want:
                mismatches.append(f"{split}/{wnid}: {got} images, the archive has {want}")
        for extra in sorted(set(found) - set(expected)):
            mismatches.append(f"{split}/{extra}: a class folder that is not in the archive")
        total = sum(max(v, 0) for v in found.values())
        want_total = sum(v or 0 for v in expected.values())
        rows.append(
            {
                "split": split,
                "classes": len(found),
                "expected_classes": len(expected),
                "images": total,
                "expected_images": want_total,
            }
        )
        if full[split]:
            official = OFFICIAL[split]
            if len(found) != OFFICIAL["classes"]:
                mismatches.append(f"{split}: {len(found)} classes, ILSVRC2012 has {OFFICIAL['classes']}")
            if total != official:
                mismatches.append(f"{split}: {total:,} images, ILSVRC2012 has {official:,}")
            if split == "val":
                odd = [w for w, n in found.items() if n != OFFICIAL["val_per_class"]]
                if odd:
                    mismatches.append(
                        f"val: {len(odd)} classes without {OFFICIAL['val_per_class']} images "
                        f"(e.g. {odd[0]}: {found[odd[0]]})"
                    )
    if "train" in p.splits and "val" in p.splits and (p.dst / "train").is_dir() and (p.dst / "val").is_dir():
        train_set = {d.name for d in (p.dst / "train").iterdir() if d.is_dir() and not d.name.startswith(".")}
        val_set = {d.name for d in (p.dst / "val").iterdir() if d.is_dir()}
        for wnid in sorted(val_set - train_set):
            mismatches.append(f"val/{wnid}: a class with no train folder")
    return rows, mismatches


def print_plan(p: Plan, console: Console) -> None:
    table = Table(title=f"prep-imagenet plan: {p.src} -> {p.dst}")
    table.add_column("step")
    table.add_column("what", overflow="fold")
    if "train" in p.splits:
        subset = f" (subset: {len(p.chosen)} of {len(p.train_wnids)})" if p.chosen is not None else ""
        table.add_row(
            "train",
            f"{len(p.train_todo)} classes to extract, {len(p.train_done)} already done{subset}: "
            f"{sum(j.size for j in p.train_todo) / 1e9:,.2f} GB of class archives",
        )
    if "val" in p.splits:
        table.add_row(
            "val",
            "already done"
            if p.val_done
            else f"{len(p.val_members):,} of {p.val_archive_files:,} images into class folders",
        )
        table.add_row("labels", p.label_source)
    table.add_row("disk", f"needs about {p.bytes_needed / 1e9:,.2f} GB, {p.bytes_free / 1e9:,.1f} GB free")
    console.print(table)


def print_verify(rows: list[dict], mismatches: list[str], console: Console) -> None:
    table = Table(title="verify")
    for col in ("split", "classes", "expected classes", "images", "expected images"):
        table.add_column(col, justify="right" if col != "split" else "left")
    for r in rows:
        table.add_row(
            r["split"],
            f"{r['classes']:,}",
            f"{r['expected_classes']:,}",
            f"{r['images']:,}",
            f"{r['expected_images']:,}",
        )
    console.print(table)
    for line in mismatches[:50]:
        console.print(Text.assemble(("mismatch", "bold red"), f": {line}"))
    if len(mismatches) > 50:
        console.print(f"... and {len(mismatches) - 50} more (all in summary.json)")
    if not mismatches:
        console.print(Text("verify: every count matches", style="green"))
