"""Random cells in the DARTS space (``random_genotype``): valid, ``none``-free, distinct in-range inputs,
and every allowed (input, op) drawn about equally often."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
import torch
import yaml
from scipy.stats import chisquare

from nas_cli.config_files import config_dir
from nas_cli.models.genotype import Genotype, random_genotype

SPACE = yaml.safe_load((config_dir() / "supernet" / "darts.yaml").read_text())
PRIMITIVES = SPACE["primitives"]
NODES = int(SPACE["nodes"])
OPS = [p for p in PRIMITIVES if p != "none"]


def test_search_space_has_none_to_leave_out():
    assert "none" in PRIMITIVES and NODES == 4  # the shipped space the bench samples from


@pytest.mark.parametrize("generator", [np.random.default_rng(0), torch.Generator().manual_seed(0), 7])
def test_random_cells_are_valid_genotypes(generator):
    for _ in range(50):
        g = random_genotype(NODES, PRIMITIVES, generator)
        again = Genotype.from_dict(g.to_dict())  # the loader's own checks: ops, inputs in range, concat
        assert again == g
        assert g.normal_concat == g.reduce_concat == list(range(2, 2 + NODES))
        for cell in (g.normal, g.reduce):
            assert len(cell) == 2 * NODES
            assert all(op in OPS for op, _ in cell)  # never 'none'
            for i in range(NODES):
                (_, a), (_, b) = cell[2 * i : 2 * i + 2]
                assert a != b and 0 <= a <= i + 1 and 0 <= b <= i + 1


def test_same_seed_same_cell_and_other_nodes_and_primitives():
    assert random_genotype(NODES, PRIMITIVES, 3) == random_genotype(NODES, PRIMITIVES, 3)
    g = random_genotype(2, ["none", "skip_connect", "avg_pool_3x3"], 0)
    assert len(g.normal) == 4 and {op for op, _ in g.normal + g.reduce} <= {"skip_connect", "avg_pool_3x3"}
    assert Genotype.from_dict(g.to_dict()) == g
    with pytest.raises(ValueError):
        random_genotype(NODES, ["none"], 0)


@pytest.mark.parametrize("kind", ["numpy", "torch"])
def test_inputs_and_ops_are_uniform(kind):
    """Per node, each of the C(i+2, 2) input pairs and each op is equally likely: chi-square over many draws
    of each node's (input, op) counts (fixed seed, so the p-value is a fixed number, not a flaky one)."""
    generator = np.random.default_rng(1) if kind == "numpy" else torch.Generator().manual_seed(1)
    draws = 400  # 800 cells: node i's (input, op) cells get 800 * 2 / (i + 2) / 7 draws each, >= 38
    counts: list[Counter] = [Counter() for _ in range(NODES)]
    for _ in range(draws):
        g = random_genotype(NODES, PRIMITIVES, generator)
        for cell in (g.normal, g.reduce):
            for k, pair in enumerate(cell):
                counts[k // 2][pair] += 1
    for i, c in enumerate(counts):
        allowed = [(op, j) for j in range(i + 2) for op in OPS]
        assert set(c) == set(allowed)  # every allowed (input, op) appears, nothing else
        observed = np.array([c[a] for a in allowed])
        assert chisquare(observed).pvalue > 1e-3, (i, observed)
        share = observed / observed.sum()
        assert np.all(np.abs(share * len(allowed) - 1) < 0.5)  # each within 50% of uniform
