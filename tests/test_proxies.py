"""Zero-cost proxies (nas_cli/nas/rl/proxies.py) against hand computations on a network small enough to do by
hand, and reward=proxy in the search's Evaluator."""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

from nas_cli.data.bundle import TensorLoader
from nas_cli.nas.rl import proxies
from nas_cli.nas.rl.children import ChildOptions, Evaluator, build_child

# 3 examples of 3 features through Linear(3, 3) -> ReLU -> Linear(3, 2), no biases. The pre-activations
# X W1^T are [[-3, 5, 2], [5, 2, -3], [2, -3, 5]]: no unit at exactly 0, and three distinct activation codes.
X = np.array([[1, 2, -1], [2, -1, 1], [-1, 1, 2]], dtype=float)
Y = np.array([0, 1, 1])
W1 = np.array([[1, -1, 2], [2, 1, -1], [-1, 2, 1]], dtype=float)
W2 = np.array([[1, -2, 1], [2, 1, -1]], dtype=float)


def hand_net(inplace: bool = False) -> nn.Sequential:
    net = nn.Sequential(nn.Linear(3, 3, bias=False), nn.ReLU(inplace=inplace), nn.Linear(3, 2, bias=False))
    with torch.no_grad():
        net[0].weight.copy_(torch.tensor(W1))
        net[2].weight.copy_(torch.tensor(W2))
    return net


def batch() -> tuple[torch.Tensor, torch.Tensor]:
    return torch.tensor(X, dtype=torch.float32), torch.tensor(Y)


def forward():
    pre = X @ W1.T
    mask = (pre > 0).astype(float)
    hidden = pre * mask
    return pre, mask, hidden, hidden @ W2.T


def loss_grads() -> tuple[np.ndarray, np.ndarray]:
    """dL/dW1, dL/dW2 of the mean cross-entropy, by the chain rule written out."""
    _, mask, hidden, out = forward()
    p = np.exp(out - out.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    d_out = (p - np.eye(2)[Y]) / len(X)
    d_w2 = d_out.T @ hidden
    d_pre = (d_out @ W2) * mask
    return d_pre.T @ X, d_w2


def test_synflow_by_hand():
    # |W1| 1 = [4, 4, 4]; |W2| [4, 4, 4] = [16, 16]: R = 32. R is linear in each layer's weights, so
    # sum(theta * dR/dtheta) over a layer is R: 2 layers, 64.
    a = np.abs(W1) @ np.ones(3)
    c = np.ones(2) @ np.abs(W2)
    expected = (np.abs(W1) * np.outer(c, np.ones(3))).sum() + (np.abs(W2) * np.outer(np.ones(2), a)).sum()
    assert expected == 64
    assert proxies.synflow(hand_net(), *batch()) == pytest.approx(64, rel=1e-12)


def test_synflow_removes_batchnorm_and_counts_weights_only():
    with_bn = nn.Sequential(nn.Linear(3, 3), nn.BatchNorm1d(3), nn.ReLU(), nn.Linear(3, 2, bias=False))
    with torch.no_grad():
        with_bn[0].weight.copy_(torch.tensor(W1))
        with_bn[0].bias.fill_(-1.0)
        with_bn[1].weight.fill_(5.0)
        with_bn[3].weight.copy_(torch.tensor(W2))
    # |b| = 1 adds 1 to each hidden unit: a = [5, 5, 5]; W1's part stays 32, W2's is 8 * 5; the bias's own
    # sum(|b| * dR/db) = 8 is not scored, and BatchNorm (which would scale by 5) is gone
    assert proxies.synflow(with_bn, *batch()) == pytest.approx(32 + 40, rel=1e-12)


def test_synflow_is_float64_and_leaves_the_net_alone():
    # five 1x1 layers of weight -1e10: R = 1e50, past float32's 3.4e38; each layer contributes R
    net = nn.Sequential(*[nn.Linear(1, 1, bias=False) for _ in range(5)])
    with torch.no_grad():
        for layer in net:
            layer.weight.fill_(-1e10)
    assert proxies.synflow(net, torch.ones(2, 1), torch.zeros(2, dtype=torch.long)) == pytest.approx(5e50, rel=1e-12)
    for layer in net:
        assert layer.weight.dtype == torch.float32 and layer.weight.item() == -1e10 and layer.weight.grad is None


def test_snip_by_hand():
    g1, g2 = loss_grads()
    expected = np.abs(g1 * W1).sum() + np.abs(g2 * W2).sum()
    assert proxies.snip(hand_net(), *batch()) == pytest.approx(expected, rel=1e-5)


def test_grad_norm_by_hand():
    g1, g2 = loss_grads()
    expected = math.sqrt((g1**2).sum()) + math.sqrt((g2**2).sum())
    net = hand_net()
    assert proxies.grad_norm(net, *batch()) == pytest.approx(expected, rel=1e-5)
    assert all(p.grad is None for p in net.parameters())  # gradients of a copy


def test_jacob_cov_by_hand():
    _, mask, _, _ = forward()
    # d(sum of outputs)/dx of example n: 1^T W2 diag(mask_n) W1
    jac = np.stack([np.ones(2) @ W2 @ np.diag(m) @ W1 for m in mask])
    assert jac.tolist() == [[-2, -1, 1], [1, -4, 7], [3, -3, 6]]
    centred = jac - jac.mean(1, keepdims=True)
    unit = centred / np.sqrt((centred**2).sum(1, keepdims=True))
    lam = np.linalg.eigvals(unit @ unit.T).real
    k = 1e-5
    expected = -np.sum(np.log(lam + k) + 1 / (lam + k))
    assert proxies.jacob_cov(hand_net(), *batch()) == pytest.approx(expected, rel=1e-6)


def test_naswot_kernel_of_a_hand_set_pattern():
    codes = torch.tensor([[1, 0, 1], [1, 1, 0], [0, 0, 1]])
    # K[i, j] = 3 units less the Hamming distance: d(0, 1) = 2, d(0, 2) = 1, d(1, 2) = 3
    k = [[3, 1, 2], [1, 3, 0], [2, 0, 3]]
    assert proxies.naswot_kernel([codes]).tolist() == k
    assert proxies.naswot_kernel([codes, codes[:, :1]]).tolist() == [[4, 2, 2], [2, 4, 0], [2, 0, 4]]  # summed
    # an identity layer whose inputs are +1 where the code is 1: the ReLU's codes are the pattern; det K = 12
    net = nn.Sequential(nn.Linear(3, 3, bias=False), nn.ReLU(inplace=True), nn.Linear(3, 2))
    with torch.no_grad():
        net[0].weight.copy_(torch.eye(3))
    x = 2 * codes.float() - 1
    assert proxies.naswot(net, x, torch.zeros(3, dtype=torch.long)) == pytest.approx(math.log(12), rel=1e-12)


@pytest.mark.parametrize("inplace", [False, True])
def test_naswot_by_hand(inplace):
    _, mask, _, _ = forward()
    assert mask.tolist() == [[0, 1, 1], [1, 1, 0], [1, 0, 1]]  # every pair 2 apart: K = 2 I + 1, det 20
    assert proxies.naswot(hand_net(inplace), *batch()) == pytest.approx(math.log(20), rel=1e-12)


def test_params_counts_trainable_parameters():
    net = nn.Sequential(nn.Linear(3, 3), nn.ReLU(), nn.Linear(3, 2, bias=False))  # 9 + 3 + 6
    assert proxies.params(net, *batch()) == 18
    net[0].bias.requires_grad_(False)
    assert proxies.params(net, *batch()) == 15


def test_undefined_scores_and_their_floor():
    const = nn.Sequential(nn.Linear(3, 2, bias=False))  # no ReLU: K = 0; the same Jacobian row for every input
    x, y = batch()
    assert proxies.naswot(const, x, y) == -math.inf
    # four distinct codes of two units: c1 + (1 - c1) = c2 + (1 - c2), so K is singular, though slogdet
    # alone returns a finite round-off
    codes = torch.tensor([[0, 0], [0, 1], [1, 0], [1, 1]])
    assert torch.isfinite(torch.linalg.slogdet(proxies.naswot_kernel([codes]))[1])
    identity = nn.Sequential(nn.Linear(2, 2, bias=False), nn.ReLU(), nn.Linear(2, 2))
    with torch.no_grad():
        identity[0].weight.copy_(torch.eye(2))
    assert proxies.naswot(identity, 2 * codes.float() - 1, torch.zeros(4, dtype=torch.long)) == -math.inf
    flat = nn.Sequential(nn.Linear(3, 1, bias=False))
    with torch.no_grad():
        flat[0].weight.fill_(1.0)  # every Jacobian row [1, 1, 1]: its correlation is 0/0
    assert math.isnan(proxies.jacob_cov(flat, x, y))
    # one eigenvalue n, n - 1 at 0: the lowest score; any correlation matrix scores above it
    n, k = 3, 1e-5
    assert proxies.floor("jacob_cov", n) == pytest.approx(-(2 * (math.log(k) + 1 / k) + math.log(n + k) + 1 / (n + k)))
    assert proxies.jacob_cov(hand_net(), x, y) > proxies.floor("jacob_cov", n)
    assert proxies.floor("naswot", n) == 0.0


ARCH = [
    {"type": "conv", "filters": 3, "kh": 3, "kw": 3, "sh": 1, "sw": 1, "inputs": []},
    {"type": "conv", "filters": 4, "kh": 1, "kw": 1, "sh": 2, "sw": 2},
    {"type": "fc", "units": 5},
]


def tiny_data(n: int = 40) -> SimpleNamespace:
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(n, 1, 6, 6, generator=g), torch.randint(0, 3, (n,), generator=g)
    loader = TensorLoader(x, y, 8, shuffle=True, generator=torch.Generator().manual_seed(5))
    return SimpleNamespace(train=loader, in_shape=(1, 6, 6), num_classes=3, generator=loader.generator)


def test_scores_are_deterministic_for_a_seed():
    data = tiny_data()
    state = data.train.generator.get_state()
    x, y = proxies.minibatch(data.train, 12, seed=3)
    assert x.shape == (12, 1, 6, 6) and torch.equal(data.train.generator.get_state(), state)  # order kept
    again = proxies.minibatch(data.train, 12, seed=3)
    assert torch.equal(again[0], x) and torch.equal(again[1], y)
    assert not torch.equal(proxies.minibatch(data.train, 12, seed=4)[0], x)
    assert len(proxies.minibatch(data.train, 100, seed=3)[0]) == 40  # the whole split, at most
    for name, proxy in proxies.PROXIES.items():
        first = proxy(build_child(ARCH, data, "cpu", 7), x, y)
        assert proxy(build_child(ARCH, data, "cpu", 7), x, y) == first, name
        assert math.isfinite(first), name


def test_evaluator_scores_untrained_children_and_fails_undefined_ones(tmp_path):
    data = tiny_data()

    def evaluator(name: str) -> Evaluator:
        return Evaluator(
            "proxy", {}, tmp_path, torch.device("cpu"), data, {}, 2, ChildOptions(), None, None,
            proxy={"name": name, "batch": 16},
        )  # fmt: skip

    gap = [{"type": "gap"}]  # no ReLU; the classifier reads the mean of the image: constant Jacobian rows
    ev = evaluator("naswot")
    res, repeat, bad = ev.evaluate([(3, ARCH), (4, ARCH), (5, gap)])
    x, y = proxies.minibatch(data.train, 16, seed=2)
    assert res["reward"] == proxies.naswot(build_child(ARCH, data, "cpu", 2 + 3), x, y)
    assert not res["cache_hit"] and repeat["cache_hit"] and repeat["reward"] == res["reward"]
    assert "error" not in res and bad["reward"] == 0.0 and "-inf" in bad["error"]
    assert not (tmp_path / "children").exists()  # nothing trained
    bad = evaluator("jacob_cov").evaluate([(0, gap)])[0]
    assert bad["reward"] == proxies.floor("jacob_cov", 16) and "nan" in bad["error"]
    with pytest.raises(Exception, match="proxy.name=flops"):
        evaluator("flops")
