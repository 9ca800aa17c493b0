"""The search spaces: Zoph & Le's conv layers with anchor-point skips, MetaQNN's layer chains, and ENAS's
macro space.

All produce the shared architecture description (``arch.py``). Random search and regularized
evolution work on any (``space=zoph|metaqnn|enas_macro``); REINFORCE proposes in the Zoph space,
MetaQNN in its own, and ENAS's weight-shared search (``reward=shared``, ``nas_cli/nas/rl/enas.py``)
in the macro space.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from nas_cli.errors import UserError
from nas_cli.nas.rl.arch import canonical, pool_size

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


# ENAS's macro operations, in the reference code's branch order (melodyguan/enas general_child.py: 0 conv 3x3,
# 1 separable 3x3, 2 conv 5x5, 3 separable 5x5, 4 average pool, 5 max pool), so op indices read the same
ENAS_OPS = ("conv3x3", "sep3x3", "conv5x5", "sep5x5", "avgpool3x3", "maxpool3x3")


def enas_op_layer(op: str, width: int) -> dict:
    """The ``arch.py`` layer (without inputs) of one macro operation: stride 1, same padding, ``width`` out."""
    if op not in ENAS_OPS:
        raise UserError(f"space=enas_macro: operation '{op}' is not one of {', '.join(ENAS_OPS)}")
    k = int(op[-1])
    if op.startswith("conv"):
        return {"type": "conv", "filters": width, "kh": k, "kw": k, "sh": 1, "sw": 1}
    if op.startswith("sep"):
        return {"type": "sep", "filters": width, "kh": k, "kw": k}
    mode = {"mode": "avg"} if op.startswith("avg") else {}  # max is the pool's default
    return {"type": "pool", "kernel": k, "stride": 1, **mode, "padding": "same"}


def _op_key(layer: dict) -> tuple:
    """A layer as an operation: everything but its inputs."""
    return tuple((k, v) for k, v in layer.items() if k != "inputs")


class EnasMacroSpace:
    """ENAS's macro search space (Pham et al. 2018, Section 2.3): a stem, then ``layers`` layers of ``width``
    channels, each one operation of ``ops`` (3x3 and 5x5 convolutions, 3x3 and 5x5 depthwise-separable
    convolutions, 3x3 max and average pooling; stride 1, same padding) applied to the layer before it, and
    skip connections from any subset of the earlier layers.

    A choice (what the controller samples, ``reward=shared`` searches) is a list of ``{"op": NAME,
    "skips": [j, ...]}``, one per layer; ``to_arch`` writes it as an ``arch.py`` architecture:

    - the stem: a 3x3 conv of ``width`` filters on the image (conv, BatchNorm, ReLU; the reference code's);
    - layer i: its operation reading layer i-1's output (the stem's for layer 0);
    - with skips: a 1x1 conv of ``width`` filters (conv, BatchNorm, ReLU) reading the concatenation of the
      skipped layers' outputs and the operation's: ``arch.py`` concatenates a layer's inputs, and the
      reference code's child of a fixed architecture (``_fixed_layer``) concatenates the skipped layers with
      the operation's output and applies a 1x1 conv the same way. (Its weight-shared search sums them
      instead; ``shared.py`` computes the concatenation, so the network scored during the search is the
      one that ``model=rl_child`` retrains.) A layer without skips is its operation alone;
    - after each layer of ``reductions`` (0-based; the paper halves the resolution after its 4th and 8th of
      12 layers: ``[3, 7]``) but the last: a factorized reduction (``arch.py``'s ``reduce``, ``width``
      filters) of every output that a later layer still reads, that layer's and each later skip's source,
      as the reference code reduces every earlier layer there (``pool_at_``; the reductions of outputs no
      later layer reads change nothing);
    - the classifier: global average pooling of the last layer and one linear layer.

    ``controller.depth_schedule`` samples fewer layers early in a search; ``layers`` is then the most.
    """

    kind = "enas_macro"

    def __init__(
        self,
        layers: int = 6,
        width: int = 16,
        ops=ENAS_OPS,
        skip_p: float = 0.4,
        reductions=(),
        in_shape: tuple[int, ...] | None = None,
    ):
        # in_shape: taken by every space (search-rl passes the data's); a macro architecture fits any image
        if int(layers) < 1:
            raise UserError(f"space.layers={layers}: use 1 or more")
        if int(width) < 1:
            raise UserError(f"space.width={width}: use 1 or more")
        ops = list(ops)
        if not ops or len(set(ops)) != len(ops):
            raise UserError(f"space.ops={ops}: give one or more distinct operations of {', '.join(ENAS_OPS)}")
        for op in ops:
            enas_op_layer(op, 1)  # a UserError naming an unknown one
        reductions = sorted({int(r) for r in reductions})
        if any(not 0 <= r < int(layers) - 1 for r in reductions):
            raise UserError(
                f"space.reductions={reductions}: layers after which to halve the resolution, 0 to "
                f"{int(layers) - 2} (the layer before the classifier has nothing after it to reduce for)"
            )
        self.layers, self.width, self.skip_p = int(layers), int(width), float(skip_p)
        self.reductions = reductions
        self.choices = {"op": ops}

    # -- choices and their architecture -------------------------------------------------------------
    def sample_choice(self, rng: np.random.Generator) -> list[dict]:
        """A uniformly random operation per layer; each skip present with probability ``skip_p``."""
        ops = self.choices["op"]
        return [
            {"op": ops[int(rng.integers(len(ops)))], "skips": [j for j in range(i) if rng.random() < self.skip_p]}
            for i in range(self.layers)
        ]

    def to_arch(self, choice: list[dict]) -> list[dict]:
        """The ``arch.py`` architecture of a choice (see the class docstring)."""
        self.check(choice)
        w = self.width
        arch: list[dict] = [{"type": "conv", "filters": w, "kh": 3, "kw": 3, "sh": 1, "sw": 1, "inputs": []}]
        outs: list[int] = []  # where each layer's output is in ``arch``
        for i, layer in enumerate(choice):
            arch.append({**enas_op_layer(layer["op"], w), "inputs": [outs[-1] if i else 0]})
            if layer["skips"]:
                merged = sorted([outs[j] for j in layer["skips"]] + [len(arch) - 1])
                arch.append({"type": "conv", "filters": w, "kh": 1, "kw": 1, "sh": 1, "sw": 1, "inputs": merged})
            outs.append(len(arch) - 1)
            for j in self.reduced_after(choice, i):
                arch.append({"type": "reduce", "filters": w, "inputs": [outs[j]]})
                outs[j] = len(arch) - 1
        return canonical(arch)

    def reduced_after(self, choice: list[dict], i: int) -> list[int]:
        """The layers whose outputs are halved after layer ``i`` (none unless ``i`` is a reduction and not the
        last layer): ``i`` itself, which the next layer reads, and every earlier layer a later one skips from."""
        if i not in self.reductions or i + 1 >= len(choice):
            return []
        later = {j for layer in choice[i + 1 :] for j in layer["skips"]}
        return [j for j in range(i + 1) if j == i or j in later]

    def from_arch(self, arch: list[dict]) -> list[dict]:
        """The choice an architecture of this space came from (the inverse of ``to_arch``)."""
        arch = canonical(arch)
        ops = {_op_key(enas_op_layer(op, self.width)): op for op in self.choices["op"]}
        choice: list[dict] = []
        outs: list[int] = []
        i = 1
        while i < len(arch):
            layer = arch[i]
            op = ops.get(_op_key(layer))
            if op is None or layer["inputs"] != [outs[-1] if outs else 0]:
                raise UserError(f"layer {i} ({layer}) is not a {self.kind} operation reading the layer before it")
            skips: list[int] = []
            nxt = arch[i + 1] if i + 1 < len(arch) else None
            if nxt is not None and nxt["type"] == "conv" and (nxt["kh"], nxt["kw"]) == (1, 1):  # no op is 1x1
                skips = [outs.index(j) for j in nxt["inputs"] if j != i]
                i += 1
            choice.append({"op": op, "skips": skips})
            outs.append(i)
            i += 1
            while i < len(arch) and arch[i]["type"] == "reduce" and arch[i]["inputs"][0] in outs:
                outs[outs.index(arch[i]["inputs"][0])] = i  # that layer's output, halved
                i += 1
        self.check(choice)
        if self.to_arch(choice) != arch:  # reductions where this space has none, or missing where it has
            raise UserError(
                f"the architecture is not one of this {self.kind} space (space.reductions={self.reductions})"
            )
        return choice

    def check(self, choice: list[dict]) -> None:
        if not 1 <= len(choice) <= self.layers:  # fewer: a child of controller.depth_schedule, still growing
            raise UserError(f"space=enas_macro: {len(choice)} layers, not 1 to space.layers={self.layers}")
        for i, layer in enumerate(choice):
            if layer["op"] not in self.choices["op"]:
                raise UserError(f"layer {i}: operation '{layer['op']}' is not among space.ops {self.choices['op']}")
            if any(not 0 <= j < i for j in layer["skips"]) or len(set(layer["skips"])) != len(layer["skips"]):
                raise UserError(f"layer {i}: skips {layer['skips']} must be distinct earlier layers (0..{i - 1})")

    # -- the interface every space has (random search, evolution) ----------------------------------------
    def sample(self, rng: np.random.Generator) -> list[dict]:
        return self.to_arch(self.sample_choice(rng))

    def mutate(self, arch: list[dict], rng: np.random.Generator) -> list[dict]:
        """Change one layer's operation, or flip one skip connection."""
        choice = self.from_arch(arch)
        i = int(rng.integers(len(choice)))
        ops = self.choices["op"]
        if i > 0 and (len(ops) == 1 or rng.random() < 0.3):
            j = int(rng.integers(i))
            choice[i]["skips"] = sorted(set(choice[i]["skips"]) ^ {j})
        elif len(ops) > 1:
            choice[i]["op"] = str(rng.choice([op for op in ops if op != choice[i]["op"]]))
        return self.to_arch(choice)
