"""The two search spaces: Zoph & Le's conv layers with anchor-point skips, and MetaQNN's layer chains.

Both produce the shared architecture description (``arch.py``). Random search and regularized
evolution work on either (``space=zoph|metaqnn``); REINFORCE proposes in the Zoph space and
MetaQNN in its own.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from nas_cli.errors import UserError
from nas_cli.nas.rl.arch import pool_size

TOKENS = ("kh", "kw", "sh", "sw", "filters")  # Zoph & Le's per-layer predictions, in order


class ZophSpace:
    """``layers`` conv layers; each picks filter height/width, stride height/width, number of filters
    from the choice lists, and any subset of the earlier layers as inputs. REINFORCE's depth schedule
    samples fewer layers early in a search; ``layers`` is then the most."""

    kind = "zoph"

    def __init__(
        self,
        layers: int = 4,
        filter_heights=(1, 3, 5, 7),
        filter_widths=(1, 3, 5, 7),
        stride_heights=(1,),
        stride_widths=(1,),
        filters=(24, 36, 48, 64),
        skip_p: float = 0.5,
        in_shape: tuple[int, ...] | None = None,
    ):
        # in_shape: taken by every space (search-rl passes the data's); a Zoph architecture fits any input
        if int(layers) < 1:
            raise UserError(f"space.layers={layers}: use 1 or more")
        self.layers = int(layers)
        self.choices = {
            "kh": list(filter_heights),
            "kw": list(filter_widths),
            "sh": list(stride_heights),
            "sw": list(stride_widths),
            "filters": list(filters),
        }
        for name, values in self.choices.items():
            if not values:
                raise UserError(f"space=zoph: the choice list for {name} is empty")
        self.skip_p = float(skip_p)

    def sample(self, rng: np.random.Generator) -> list[dict]:
        arch = []
        for i in range(self.layers):
            layer = {"type": "conv", **{t: int(rng.choice(self.choices[t])) for t in TOKENS}}
            layer["inputs"] = [j for j in range(i) if rng.random() < self.skip_p]
            arch.append(layer)
        return arch

    def mutate(self, arch: list[dict], rng: np.random.Generator) -> list[dict]:
        """Change one token of one layer, or flip one skip connection."""
        child = [dict(layer, inputs=list(layer["inputs"])) for layer in arch]
        i = int(rng.integers(self.layers))
        options = [t for t in TOKENS if len(self.choices[t]) > 1]
        if i > 0 and (not options or rng.random() < 0.3):
            j = int(rng.integers(i))
            inputs = set(child[i]["inputs"]) ^ {j}
            child[i]["inputs"] = sorted(inputs)
        elif options:
            t = options[int(rng.integers(len(options)))]
            child[i][t] = int(rng.choice([c for c in self.choices[t] if c != child[i][t]]))
        return child


# MetaQNN states: (type, depth, representation side, fc layers so far, layer parameters)
START, CONV, POOL, FC, GAP, SM = "start", "C", "P", "FC", "GAP", "SM"
SIZE_BINS = (8, 4)  # Baker et al.'s R-size bins (inf, 8], (8, 4], (4, 1]: their lower edges
KERNEL_LIMITS = ("bin", "side")


def size_bucket(n: int, bins=SIZE_BINS) -> int:
    """The R-size bin of a side ``n``, named as in the reference code by its lower edge (8, 4), the last one 1.

    With the default bins a side of 8 or more is bin 8 ((inf, 8]), 4..7 is bin 4 ((8, 4]), 1..3 is bin 1.
    """
    return next((int(edge) for edge in bins if n >= edge), 1)


class MetaQNNSpace:
    """Chains of C (conv: filters, kernel), P (pool: kernel, stride), FC (units), GAP, then SM (Baker et al. 2017).

    Rules (paper, Section 4.2 and Table 1; reference code ``state_enumerator.py``): no pooling first and none
    right after pooling; FC only outside the first R-size bin (a side of 7 or less with the default bins);
    at most ``max_fc`` FC layers, only FC or SM after one, and an FC layer no wider than the FC before it;
    conv and pool kernels below the side's bin (``kernel_limit=bin``, the reference code) or at most the
    side itself (``kernel_limit=side``, the paper's words); SM after GAP; at most ``max_depth`` layers
    before SM. SM is allowed from every state before it, the start included: the reference code's
    ``enumerate_state`` adds the terminate action whenever ``terminate == 0`` (an empty architecture, the
    classifier on the input alone). A state is ``(type, depth, side, n_fc, params)`` with
    the exact side, so pooling is exact; ``key`` buckets it for the Q-table, as the reference code does.
    """

    kind = "metaqnn"

    def __init__(
        self,
        image_size: int | None = None,
        max_depth: int = 6,
        conv_filters=(16, 32, 64),
        conv_kernels=(1, 3, 5),
        pools=((5, 3), (3, 2), (2, 2)),
        fc_units=(32, 64, 128),
        max_fc: int = 2,
        size_bins=SIZE_BINS,
        kernel_limit: str = "bin",
        in_shape: tuple[int, ...] | None = None,
    ):
        if image_size is None:  # the side of the input images (1 for vectors)
            if in_shape is None:
                raise UserError("MetaQNNSpace needs image_size or in_shape")
            image_size = int(min(in_shape[1:])) if len(in_shape) == 3 else 1
        self.image_size = int(image_size)
        self.max_depth = int(max_depth)
        if self.max_depth < 1:
            raise UserError(f"space.max_depth={max_depth}: use 1 or more")
        self.conv = [(int(f), int(k)) for f in conv_filters for k in conv_kernels]
        self.pools = [(int(k), int(s)) for k, s in pools]
        self.fc = [int(u) for u in fc_units]
        self.max_fc = int(max_fc)
        self.size_bins = tuple(int(b) for b in size_bins)
        if (
            not self.size_bins
            or list(self.size_bins) != sorted(set(self.size_bins), reverse=True)
            or self.size_bins[-1] < 2
        ):
            raise UserError(f"space.size_bins={list(size_bins)}: give the bins' lower edges, descending, above 1")
        if kernel_limit not in KERNEL_LIMITS:
            raise UserError(f"space.kernel_limit={kernel_limit}: use bin or side")
        self.kernel_limit = kernel_limit

    def start(self) -> tuple:
        return (START, 0, self.image_size, 0, ())

    def key(self, state: tuple) -> tuple:
        """The state as the Q-table sees it: its side replaced by the side's R-size bin."""
        kind, depth, size, n_fc, params = state
        return (kind, depth, size_bucket(size, self.size_bins), n_fc, params)

    def _fits(self, kernel: int, size: int) -> bool:
        if self.kernel_limit == "bin":
            return kernel < size_bucket(size, self.size_bins)
        return kernel <= size

    def actions(self, state: tuple) -> list[tuple]:
        """The layers allowed after ``state`` (each ``(type, params)``), SM (terminate) included."""
        kind, depth, size, n_fc, params = state
        if kind == SM:
            return []
        if kind == GAP or depth >= self.max_depth:
            return [(SM, ())]
        if kind == FC:  # FC -> FC: no wider than this one, and at most max_fc in all
            narrower = [(FC, (u,)) for u in self.fc if u <= params[0]] if n_fc < self.max_fc else []
            return [*narrower, (SM, ())]
        out: list[tuple] = [(CONV, c) for c in self.conv if self._fits(c[1], size)]
        if kind == CONV:
            out += [(POOL, p) for p in self.pools if self._fits(p[0], size)]
        if size_bucket(size, self.size_bins) < self.size_bins[0] and self.max_fc > 0:
            out += [(FC, (u,)) for u in self.fc]
        out.append((GAP, ()))
        out.append((SM, ()))  # from the start too: the reference code terminates from any unterminated state
        return out

    def step(self, state: tuple, action: tuple) -> tuple:
        kind, params = action
        _, depth, size, n_fc, _ = state
        if kind == POOL:
            size = pool_size(size, *params)
        elif kind in (FC, GAP):
            size = 1
        return (kind, depth + (kind != SM), size, n_fc + (kind == FC), tuple(params))

    def to_arch(self, actions: list[tuple]) -> list[dict]:
        arch: list[dict] = []
        for kind, params in actions:
            i = len(arch)
            inputs = [i - 1] if i else []
            if kind == CONV:
                arch.append(
                    {
                        "type": "conv",
                        "filters": params[0],
                        "kh": params[1],
                        "kw": params[1],
                        "sh": 1,
                        "sw": 1,
                        "inputs": inputs,
                    }
                )
            elif kind == POOL:
                arch.append({"type": "pool", "kernel": params[0], "stride": params[1], "inputs": inputs})
            elif kind == FC:
                arch.append({"type": "fc", "units": params[0], "inputs": inputs})
            elif kind == GAP:
                arch.append({"type": "gap", "inputs": inputs})
        return arch

    def path(self, arch: list[dict]) -> list[tuple]:
        """The actions of a chain architecture (the inverse of ``to_arch``), SM included."""
        out = []
        for layer in arch:
            t = layer["type"]
            out.append(
                (CONV, (layer["filters"], layer["kh"]))
                if t == "conv"
                else (POOL, (layer["kernel"], layer["stride"]))
                if t == "pool"
                else (FC, (layer["units"],))
                if t == "fc"
                else (GAP, ())
            )
        return [*out, (SM, ())]

    def valid(self, actions: list[tuple]) -> bool:
        state = self.start()
        for a in actions:
            if a not in self.actions(state):
                return False
            state = self.step(state, a)
        return state[0] == SM

    def walk(self, rng: np.random.Generator, prefix: Sequence[tuple] = ()) -> list[tuple]:
        """Uniformly random allowed actions until SM (after ``prefix``)."""
        state, actions = self.start(), []
        for a in prefix:
            actions.append(a)
            state = self.step(state, a)
        while state[0] != SM:
            options = self.actions(state)
            a = options[int(rng.integers(len(options)))]
            actions.append(a)
            state = self.step(state, a)
        return actions

    def sample(self, rng: np.random.Generator) -> list[dict]:
        return self.to_arch(self.walk(rng))

    def mutate(self, arch: list[dict], rng: np.random.Generator) -> list[dict]:
        """Half the time change one layer's parameters (same type, if that stays valid); otherwise, or when
        no such change is valid, keep the layers before a random point and regrow the rest by the rules
        (the only way a mutation changes depth or layer types)."""
        actions = self.path(arch)
        for _ in range(10 if rng.random() < 0.5 else 0):
            i = int(rng.integers(len(actions)))
            kind, params = actions[i]
            choices: dict[str, list[tuple]] = {CONV: self.conv, POOL: self.pools, FC: [(u,) for u in self.fc]}
            pool = choices.get(kind, [])
            others = [p for p in pool if p != params]
            if not others:
                continue
            trial = [*actions[:i], (kind, others[int(rng.integers(len(others)))]), *actions[i + 1 :]]
            if self.valid(trial):
                return self.to_arch(trial[:-1])
        i = int(rng.integers(len(actions)))
        return self.to_arch(self.walk(rng, actions[:i])[:-1])
