"""Latency of every candidate op at its shapes on this device, and the expected latency of alpha.

Keys are ``op|channels|height|width|stride`` (milliseconds, median of ``repeats`` timed runs at
``batch`` images). The table is saved as ``latency.json`` and can be reused (``latency.table=PATH``).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn.functional as F

from nas_cli.engine.latency import median_latencies
from nas_cli.errors import UserError
from nas_cli.models.darts_ops import make_op
from nas_cli.runs.record import atomic_write, read_json


def edge_shapes(model, in_shape) -> list[tuple[bool, int, tuple[int, int, int, int]]]:
    """(reduction, edge index, (channels, height, width, stride)) of every MixedOp, from one forward pass."""
    from nas_cli.nas.darts.supernet import MixedOp

    shapes, hooks = [], []
    for cell in model.cells:
        for e, edge in enumerate(cell.edges):
            assert isinstance(edge, MixedOp)

            def hook(mod, args, _cell=cell, _e=e):
                x = args[0]
                c = x.shape[1] // mod.partial
                shapes.append((_cell.reduction, _e, (c, x.shape[2], x.shape[3], mod.stride)))

            hooks.append(edge.register_forward_pre_hook(hook))
    was = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(torch.zeros(1, *in_shape, device=next(model.parameters()).device))
    finally:
        for h in hooks:
            h.remove()
        model.train(was)
    return shapes


def key(op: str, shape) -> str:
    return "|".join([op, *map(str, shape)])


def measure(shapes, primitives, device, batch: int, repeats: int, table: dict | None = None) -> dict:
    table = dict(table or {})
    for _, _, shape in shapes:
        c, h, w, stride = shape
        for op in primitives:
            k = key(op, shape)
            if k in table:
                continue
            module = make_op(op, c, stride, affine=False, pool_bn=True).to(device).eval()
            with torch.no_grad():
                seconds = median_latencies({k: module}, torch.randn(batch, c, h, w, device=device), repeats, 1)
            table[k] = 1e3 * seconds[k]  # ms
    return table


def load_table(path: str | Path) -> dict:
    data = read_json(path, "latency.table", what="a latency.json from an earlier search")
    if not isinstance(data, dict):
        raise UserError(f"latency.table={path}: not a latency table (an object of op timings)")
    return data.get("entries", data)


def save_table(path: Path, table: dict, device) -> None:
    text = json.dumps({"device": str(device), "unit": "ms", "entries": table}, indent=2)
    atomic_write(path, lambda tmp: Path(tmp).write_text(text + "\n"))


def edge_latency(shapes, primitives, table: dict, edges: int) -> dict[bool, torch.Tensor]:
    """Per cell type an (edges x ops) tensor: the op's latency summed over the cells of that type."""
    out = {False: torch.zeros(edges, len(primitives)), True: torch.zeros(edges, len(primitives))}
    for reduction, e, shape in shapes:
        for k, op in enumerate(primitives):
            if key(op, shape) not in table:
                raise UserError(f"latency table has no entry {key(op, shape)}: measure again (latency.table=null)")
            out[reduction][e, k] += float(table[key(op, shape)])
    return out


class LatencyTerm:
    """E[lat] = sum over edges of softmax(alpha) . latency (ms), and the loss alpha's step minimises.

    ``linear``: CE + weight E[lat] / ref, ref the expected latency of uniform alpha (so ``weight`` is
    unit-free). ``multiplicative`` (FBNet, Wu et al. 2019): CE * weight * log(LAT)^beta, ``weight``
    being FBNet's alpha and LAT = E[lat] in microseconds, so that log LAT > 0 for any supernet slower
    than 1 us (FBNet's milliseconds would make it negative below 1 ms, where the power is undefined).
    In this form ``weight`` scales the whole loss; beta sets the accuracy/latency trade-off.
    """

    def __init__(self, arch, lat: dict[bool, torch.Tensor], weight: float, form: str = "linear", beta: float = 0.6):
        if form not in ("linear", "multiplicative"):
            raise UserError(f"latency.form={form}: use linear or multiplicative")
        self.arch, self.weight, self.form, self.beta = arch, float(weight), form, float(beta)
        device = arch.normal.device
        self.lat = {k: v.to(device) for k, v in lat.items()}
        with torch.no_grad():
            self.ref = float(self.expected(uniform=True))

    def expected(self, uniform: bool = False) -> torch.Tensor:
        total: torch.Tensor | float = 0.0
        for reduction, lat in self.lat.items():
            alpha = self.arch.alpha(reduction)
            p = torch.full_like(alpha, 1 / alpha.shape[1]) if uniform else F.softmax(alpha, dim=-1)
            edge = self.arch.edge_weights(reduction)
            per_edge = (p * lat).sum(-1)
            total = (
                total
                + (
                    per_edge * edge * (edge.numel() / edge.sum()) if edge is not None and not uniform else per_edge
                ).sum()
            )
        assert isinstance(total, torch.Tensor)  # self.lat is never empty: edge_latency gives both cell kinds
        return total

    def derived(self, genotype, nodes: int, primitives: list[str]) -> float:
        """Table latency of a derived genotype: its kept ops summed over the cells."""
        from nas_cli.nas.darts.genotype import chosen_edges

        total = 0.0
        for reduction, cell in ((False, genotype.normal), (True, genotype.reduce)):
            for e, op in chosen_edges(cell, nodes):
                total += float(self.lat[reduction][e, primitives.index(op)])
        return total

    def __call__(self, ce: torch.Tensor) -> torch.Tensor:
        if self.weight == 0:
            return ce
        e = self.expected()
        if self.form == "linear":
            return ce + self.weight * e / self.ref
        log_us = torch.log(e * 1e3).clamp_min(1e-6)  # a supernet under 1 us (never seen) stays defined
        return ce * self.weight * log_us**self.beta
