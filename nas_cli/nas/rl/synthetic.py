"""``reward=synthetic``: a fixed, known score of an architecture, so search strategies compare in seconds.

Each term is ``exp(-d^2)`` of a scaled distance to a target, and the reward is their weighted mean:

- ``conv``: per conv layer and token, log2 distance of the filters to ``filters``, kernel height and
  width to ``kernel`` (/2), strides to ``stride``; averaged over the conv layers (0 without any);
- ``depth``: number of layers to ``depth`` (/2);
- ``skip``: the density of skip connections (inputs other than the previous layer, over the pairs that
  could have one) to ``skip_density`` (/0.25);
- ``pool``, ``fc``: the numbers of pooling and FC layers to ``pools`` and ``fcs``.

``noise``: the standard deviation of a Gaussian added per architecture (fixed by the architecture and
the seed, so a repeat scores the same).
"""

from __future__ import annotations

import hashlib
import math

import numpy as np

from nas_cli.nas.rl.arch import canonical, key


def _g(d: float) -> float:
    return math.exp(-d * d)


def synthetic_reward(
    arch: list[dict],
    *,
    filters: float,
    kernel: float,
    stride: float,
    depth: float,
    skip_density: float,
    pools: float,
    fcs: float,
    weights: dict[str, float],
    noise: float,
    seed: int,
) -> float:
    """The reward of ``arch`` under the ``synthetic`` block's targets and weights (one weight per term)."""
    arch = canonical(arch)
    convs = [layer for layer in arch if layer["type"] == "conv"]
    terms = {}
    if convs:
        scores = []
        for layer in convs:
            scores += [
                _g(math.log2(layer["filters"] / filters)),
                _g((layer["kh"] - kernel) / 2),
                _g((layer["kw"] - kernel) / 2),
                _g(layer["sh"] - stride),
                _g(layer["sw"] - stride),
            ]
        terms["conv"] = sum(scores) / len(scores)
    else:
        terms["conv"] = 0.0
    terms["depth"] = _g((len(arch) - depth) / 2)
    possible = sum(max(0, i - 1) for i in range(len(arch)))
    skips = sum(1 for i, layer in enumerate(arch) for j in layer["inputs"] if j != i - 1)
    terms["skip"] = _g(((skips / possible if possible else 0.0) - skip_density) / 0.25)
    terms["pool"] = _g(sum(layer["type"] == "pool" for layer in arch) - pools)
    terms["fc"] = _g(sum(layer["type"] == "fc" for layer in arch) - fcs)
    reward = sum(weights[k] * terms[k] for k in terms) / sum(weights[k] for k in terms)
    if noise:
        digest = hashlib.sha256(f"{seed}:{key(arch)}".encode()).digest()
        reward += float(np.random.default_rng(int.from_bytes(digest[:8], "little")).normal(0.0, noise))
    return float(reward)
