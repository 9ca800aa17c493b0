"""α heatmaps: softmax(alpha) per edge (or slot) and op, one picture per cell kind."""

from __future__ import annotations

from pathlib import Path

import torch.nn.functional as F

from nas_cli.runs.record import atomic_write


def alpha_heatmaps(arch, ops: list[str], run_dir: Path, kinds=((False, "normal"), (True, "reduce"))) -> None:
    """``alpha_<kind>.png`` for each (reduction, kind) pair."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    for reduction, name in kinds:
        p = F.softmax((arch.reduce if reduction else arch.normal).detach().float().cpu(), dim=-1).numpy()
        fig, ax = plt.subplots(figsize=(1 + 0.8 * len(ops), 1 + 0.35 * p.shape[0]))
        im = ax.imshow(p, cmap="viridis", aspect="auto")
        ax.set_xticks(range(len(ops)), ops, rotation=45, ha="right")
        ax.set_ylabel("slot" if name == "chain" else "edge")
        ax.set_title(f"softmax(alpha), {name} cell")
        fig.colorbar(im, ax=ax)
        fig.tight_layout()
        atomic_write(run_dir / f"alpha_{name}.png", lambda tmp, fig=fig: fig.savefig(tmp, format="png", dpi=80))
        plt.close(fig)
