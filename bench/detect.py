"""Detection post-processing, side by side: `python bench/detect.py [--only nms] [--quick]`.

- nms: ``nas_cli.detection.nms.nms_torch`` (pure torch, blocked) vs ``torchvision.ops.nms`` (compiled kernel) at
  1k, 10k and 100k boxes, with the ratio nms_torch / torchvision and a check that both keep the same boxes; and
  ``soft_nms`` (linear and Gaussian) at 1k and 10k boxes. On the CPU, and on CUDA too when there is one.

The boxes imitate a detector's raw output before NMS: objects (one per 50 boxes) at uniform places in a
1024 x 1024 image, 16-256 px a side; each box is an object's box with its centre jittered by 10% of the size and
its width and height scaled by exp(N(0, 0.15)); 10% are background boxes at uniform places; scores are uniform in
[0, 1). IoU threshold 0.5 (NMS), Soft-NMS at the paper's defaults (N_t 0.3, sigma 0.5, score threshold 0.001).
- map: the default CPU run (`nas-cli detect`: 4,000 generated 64x64 images, 12 epochs; `--quick`: 600 images,
  3 epochs), its validation mAP@0.5 and mAP@[.5:.95] after NMS and after soft-NMS side by side (goal: mAP@0.5 >=
  0.8), and each method's post-processing time per validation image with the trained model.

Soft-NMS stops at 10k boxes: its selection loop is sequential (one step per kept box, each step touching all
remaining boxes), so 100k boxes would take minutes on a CPU. Times are medians after a warm-up call; no absolute
figure is asserted anywhere. The whole NMS section takes well under a minute on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable

import torch
from rich.console import Console
from rich.table import Table

from nas_cli.detection.nms import nms_torch, soft_nms

SIZES = (1_000, 10_000, 100_000)
SOFT_NMS_SIZES = (1_000, 10_000)  # 100k: minutes (see above)


def detector_boxes(
    n: int, seed: int = 0, device: str = "cpu", image: float = 1024.0, per_object: int = 50, background: float = 0.1
) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` raw detections (boxes [n, 4] xyxy, scores [n]) clustered around ``n / per_object`` objects."""
    g = torch.Generator().manual_seed(seed)
    objects = max(1, n // per_object)
    size = torch.empty(objects, 2).uniform_(16, 256, generator=g)
    centre = torch.rand(objects, 2, generator=g) * image
    which = torch.randint(0, objects, (n,), generator=g)
    xy = centre[which] + torch.randn(n, 2, generator=g) * 0.1 * size[which]
    wh = size[which] * torch.exp(torch.randn(n, 2, generator=g) * 0.15)
    stray = torch.rand(n, generator=g) < background
    xy[stray] = torch.rand(int(stray.sum()), 2, generator=g) * image
    boxes = torch.cat([xy - wh / 2, xy + wh / 2], dim=1)
    return boxes.to(device), torch.rand(n, generator=g).to(device)


def timed(fn: Callable[[], object], device: str, repeats: int) -> float:
    """Median seconds of ``fn()`` over ``repeats`` calls after one warm-up call (synchronized on CUDA)."""
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    fn()
    sync()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def nms_rows(device: str, quick: bool) -> list[tuple[str, ...]]:
    """torchvision.ops.nms vs nms_torch at each size, then soft_nms, on ``device``."""
    import torchvision

    rows = []
    for n in SIZES:
        boxes, scores = detector_boxes(n, device=device)
        keep = torchvision.ops.nms(boxes, scores, 0.5)
        same = torch.equal(nms_torch(boxes, scores, 0.5), keep)
        repeats = 1 if (quick or (n >= 100_000 and device == "cpu")) else 5
        ours = timed(lambda b=boxes, s=scores: nms_torch(b, s, 0.5), device, repeats)
        theirs = timed(lambda b=boxes, s=scores: torchvision.ops.nms(b, s, 0.5), device, repeats)
        rows.append(
            (
                f"nms {device} {n:,} boxes ({len(keep):,} kept)",
                f"{1e3 * ours:,.1f} ms",
                f"{1e3 * theirs:,.1f} ms",
                f"{ours / theirs:.2f}",
                "yes" if same else "NO",
            )
        )
    for n in SOFT_NMS_SIZES:
        boxes, scores = detector_boxes(n, device=device)
        for method in ("linear", "gaussian"):

            def run(method=method, b=boxes, s=scores):
                return soft_nms(b, s, method=method)

            kept = len(run()[0])
            seconds = timed(run, device, 1 if quick or n >= 10_000 else 3)
            rows.append(
                (f"soft_nms {method} {device} {n:,} boxes ({kept:,} kept)", f"{1e3 * seconds:,.1f} ms", "", "", "")
            )
    return rows


def nms_section(quick: bool) -> Table:
    """The NMS table: CPU, and CUDA when available."""
    table = Table(title="NMS: nas_cli nms_torch vs torchvision.ops.nms (IoU 0.5, clustered detector-like boxes)")
    for col in ("workload", "nms_torch / soft_nms", "torchvision", "ratio (ours / tv)", "same boxes"):
        table.add_column(col, justify="left" if col == "workload" else "right")
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    for device in devices:
        for row in nms_rows(device, quick):
            table.add_row(*row)
    return table


def map_section(quick: bool) -> Table:
    """Train the default detector (a run of the real command), then NMS vs soft-NMS on its validation set."""
    import json
    import subprocess
    import tempfile
    from pathlib import Path

    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    from nas_cli.detection.evaluate import METHODS, Postprocess, detect
    from nas_cli.runs import checkpoint

    with tempfile.TemporaryDirectory() as tmp:
        run = Path(tmp) / "run"
        small = ["data.n_train=600", "trainer.epochs=3"] if quick else []
        subprocess.run(
            [sys.executable, "-m", "nas_cli", "detect", *small, "progress=false", f"hydra.run.dir={run}"],
            check=True,
            capture_output=True,
        )
        summary = json.loads((run / "summary.json").read_text())
        cfg = OmegaConf.load(run / ".hydra" / "config.yaml")
        data = instantiate(cfg.data, seed=cfg.seed)
        model = instantiate(cfg.model, in_shape=data.in_shape, num_classes=data.num_classes)
        model.load_state_dict(checkpoint.load(run / "model.pt")["model"])
        model.eval()
        post = Postprocess(**OmegaConf.to_container(cfg.postprocess))
        with torch.inference_mode():
            outs = [model(x) for x, _ in data.val]
            seconds = {m: timed(lambda m=m: [detect(o, post, m) for o in outs], "cpu", 3) for m in METHODS}
    n_val = sum(len(o.obj) for o in outs)
    table = Table(
        title=f"detect, default CPU run{' (--quick: 600 images, 3 epochs)' if quick else ''}: "
        f"{summary['epochs']} epochs in {summary['wall_time_s']:.0f} s, validation mAP (goal: mAP@0.5 "
        ">= 0.8)"
    )
    for col in ("post-processing", "mAP@0.5", "mAP@[.5:.95]", "ms per image", "vs NMS"):
        table.add_column(col, justify="left" if col == "post-processing" else "right")
    for m, name in zip(
        METHODS, ("NMS (per class, IoU 0.5)", f"soft-NMS ({post.soft_method}, sigma {post.soft_sigma})")
    ):
        table.add_row(
            name,
            f"{summary[f'val_map50_{m}']:.4f}",
            f"{summary[f'val_map_{m}']:.4f}",
            f"{1e3 * seconds[m] / n_val:.3f}",
            f"{seconds[m] / seconds['nms']:.2f}x",
        )
    return table


SECTIONS: dict[str, Callable[[bool], Table]] = {"nms": nms_section, "map": map_section}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="one timed call each (a check that everything runs)")
    parser.add_argument("--only", default=",".join(SECTIONS), help=f"comma-separated subset of {','.join(SECTIONS)}")
    args = parser.parse_args()
    console = Console(width=140)
    console.print(
        f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads"
        + (f", {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ", no CUDA")
    )
    for name in args.only.split(","):
        if name not in SECTIONS:
            sys.exit(f"bench/detect.py: unknown section {name}; choose from {', '.join(SECTIONS)}")
        start = time.perf_counter()
        table = SECTIONS[name](args.quick)
        console.print(table)
        print(f"{name}: {time.perf_counter() - start:.0f} s", flush=True)


if __name__ == "__main__":
    main()
