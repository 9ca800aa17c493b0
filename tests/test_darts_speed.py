"""A DARTS step that is not launch-bound: no host sync inside a step, the compiled step equal to the eager
one, no graph break in the supernet, the ``none`` op dropped from the sum without changing a float."""

from __future__ import annotations

import inspect

import pytest
import torch
import torch.nn.functional as F

from nas_cli.data.resumable import BatchStream
from nas_cli.nas.darts import latency as lat
from nas_cli.nas.darts.architect import Architect
from nas_cli.nas.darts.search import BilevelStep, StepOptions, compile_supernet, split_train
from nas_cli.nas.darts.supernet import MixedOp, SearchNetwork, num_edges

pytestmark = pytest.mark.usefixtures("one_thread")

# a small space with every kind of op (pool, skip, separable and dilated conv, none)
SMALL = ["none", "max_pool_3x3", "skip_connect", "sep_conv_3x3"]


def supernet(seed=0, partial=1, edge_norm=False, primitives=SMALL, nodes=1, layers=3):
    torch.manual_seed(seed)
    return SearchNetwork(
        (1, 8, 8),
        4,
        init_channels=4,
        layers=layers,
        nodes=nodes,
        stem_multiplier=1,
        primitives=primitives,
        partial_channels=partial,
        edge_norm=edge_norm,
    )


def make_batches(n, seed, size=8):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(size, 1, 8, 8, generator=g), torch.randint(0, 4, (size,), generator=g)) for _ in range(n)]


def latency_objective(net, weight=0.5, form="linear"):
    """A latency term from a made-up table (ms grows with the op's index): no timing needed."""
    table = {
        lat.key(op, shape): 0.1 * (k + 1)
        for _, _, shape in lat.edge_shapes(net, (1, 8, 8))
        for k, op in enumerate(net.primitives)
    }
    per_edge = lat.edge_latency(lat.edge_shapes(net, (1, 8, 8)), net.primitives, table, num_edges(net.nodes))
    return lat.LatencyTerm(net.arch, per_edge, weight, form)


def bilevel(net, order="first", reuse=False, latency=False, steps=3, device="cpu", compiled=None):
    """What the engine runs: the search's loss function, then backward, clipping at 5 and the SGD step.
    ``compiled``: StepOptions to compile the supernet with, once the latency table is measured (as search does)."""
    device = torch.device(device)
    opt = torch.optim.SGD(net.parameters(), lr=0.025, momentum=0.9, weight_decay=3e-4)
    arch = Architect(
        net, order, reuse_train_grad=reuse, weight_optimizer=opt, objective=latency_objective(net) if latency else None
    )
    arch_batches = [(x.to(device), y.to(device)) for x, y in make_batches(steps + 1, seed=2)]
    stream = BatchStream(arch_batches, None)  # a list of batches: no loader in the way
    step = BilevelStep(net, arch, stream, opt, device)
    if compiled is not None:
        compile_supernet(net, compiled, device)

    def one(x, y):
        loss, logits = step(net, x, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 5.0)
        opt.step()
        return loss.detach(), logits.detach()

    return one


# -- host synchronisation ---------------------------------------------------------------------------
SYNCS = ("item", "tolist", "__float__", "__int__", "__bool__", "__index__", "numpy")


@pytest.fixture
def no_host_reads(monkeypatch):
    """Make every read of a tensor's value on the host raise, except inside torch.optim (Adam's step
    counter is a host tensor when not capturable: reading it waits for nothing on a GPU)."""

    def guard(name, real):
        def read(self, *args, **kwargs):
            if state["on"] and not any("torch/optim/" in f.filename for f in inspect.stack()[1:4]):
                raise AssertionError(f"host sync: Tensor.{name} inside the step")
            return real(self, *args, **kwargs)

        return read

    state = {"on": False}
    for name in SYNCS:
        monkeypatch.setattr(torch.Tensor, name, guard(name, getattr(torch.Tensor, name)))
    return state


@pytest.mark.parametrize(
    "order,reuse,partial,latency",
    [
        ("first", False, 1, False),
        ("second", False, 1, False),
        ("second", True, 1, True),
        ("first", False, 2, True),
        ("second", False, 2, False),
    ],
)
def test_a_step_reads_nothing_on_the_host(no_host_reads, order, reuse, partial, latency):
    net = supernet(partial=partial, edge_norm=partial > 1)
    one = bilevel(net, order, reuse, latency)
    (x, y), (x2, y2) = make_batches(2, seed=1)
    one(x, y)  # the first step creates the optimizers' state
    no_host_reads["on"] = True
    one(x2, y2)  # raises at any .item() / float() / bool() / tolist() on a tensor
    no_host_reads["on"] = False
    with pytest.raises(AssertionError, match="host sync"):  # the guard itself works
        no_host_reads["on"] = True
        float(torch.ones(()))


@pytest.mark.gpu
def test_a_cuda_step_does_not_synchronise():
    net = supernet(partial=2, edge_norm=True).cuda()
    one = bilevel(net, "second", latency=True, device="cuda")
    (x, y), (x2, y2) = [(a.cuda(), b.cuda()) for a, b in make_batches(2, seed=1)]
    one(x, y)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        one(x2, y2)
    finally:
        torch.cuda.set_sync_debug_mode(0)


# -- the none op -------------------------------------------------------------------------------------
@pytest.mark.parametrize("partial,stride", [(1, 1), (1, 2), (2, 2)])
def test_mixed_op_without_none_gives_the_same_floats_as_the_full_sum(partial, stride):
    torch.manual_seed(0)
    op = MixedOp(4, stride, SMALL, partial).train()
    x = torch.randn(3, 4, 7, 7)
    alpha = torch.randn(len(SMALL), requires_grad=True)

    def old(x, w):  # the sum over every primitive, none's w * (x * 0) included, started from 0
        xa = x[:, : x.shape[1] // partial]
        out = sum(wk * m(xa) for wk, m in zip(w, op.ops))
        if partial == 1:
            return out
        xb = op.pool(x[:, x.shape[1] // partial :]) if op.pool is not None else x[:, x.shape[1] // partial :]
        b, c, h, w_ = (out := torch.cat([out, xb], 1)).shape
        return out.view(b, partial, c // partial, h, w_).transpose(1, 2).reshape(b, c, h, w_)

    outs, grads = [], []
    for f in (old, op):
        torch.manual_seed(1)
        y = f(x, F.softmax(alpha, -1))
        grads.append(torch.autograd.grad((y * torch.linspace(-1, 1, y.numel()).view_as(y)).sum(), alpha)[0])
        outs.append(y.detach())
    assert torch.equal(outs[0], outs[1])
    assert torch.equal(grads[0], grads[1])


# -- compiled = eager --------------------------------------------------------------------------------
def run_steps(net, order, reuse=False, latency=False, steps=3, compiled=None):
    one = bilevel(net, order, reuse, latency, steps, compiled=compiled)
    losses = [one(x, y)[0] for x, y in make_batches(steps, seed=1)]
    return (
        torch.stack(losses),
        [p.detach().clone() for p in net.arch.parameters()],
        [p.detach().clone() for p in net.parameters()],
    )


def assert_same_run(a, b, tol=1e-5):
    (la, aa, wa), (lb, ab, wb) = a, b
    torch.testing.assert_close(la, lb, rtol=0, atol=tol)
    for u, v in zip(aa + wa, ab + wb):
        torch.testing.assert_close(u, v, rtol=0, atol=tol)


@pytest.mark.slow
@pytest.mark.parametrize("order,partial,latency", [("second", 2, True)])
def test_compiled_step_matches_the_eager_step(order, partial, latency):
    """Second order (the unrolled pass through functional_call, the finite-difference passes), PC-DARTS's
    partial channels and edge normalisation, the latency term: 3 steps, compiled (aot_eager: the same
    graph capture as inductor, without generating kernels) against eager, fp32."""
    torch._dynamo.reset()
    eager = run_steps(supernet(partial=partial, edge_norm=True), order, latency=latency)
    compiled = run_steps(
        supernet(partial=partial, edge_norm=True),
        order,
        latency=latency,
        compiled=StepOptions(compile=True, backend="aot_eager"),
    )
    assert_same_run(eager, compiled)
    assert not torch.equal(eager[1][0], supernet(partial=partial, edge_norm=True).arch.normal)  # alpha moved


@pytest.mark.slow
def test_inductor_step_matches_the_eager_step():
    """The default backend (C++ kernels generated by inductor), first order, 2 steps, on the smallest supernet
    that still has a convolution (gcc compiles every generated kernel: minutes on 2 cores for a larger one)."""
    torch._dynamo.reset()

    def tiny():
        return supernet(primitives=["none", "skip_connect", "sep_conv_3x3"], layers=1)

    eager = run_steps(tiny(), "first", steps=2)
    assert_same_run(eager, run_steps(tiny(), "first", steps=2, compiled=StepOptions(compile=True)))


@pytest.mark.slow
def test_supernet_forward_has_no_graph_break():
    """Every primitive, partial channels, edge normalisation, both cell kinds: one graph."""
    from nas_cli.models.darts_ops import PRIMITIVES

    torch._dynamo.reset()
    net = supernet(partial=2, edge_norm=True, primitives=PRIMITIVES)
    explained = torch._dynamo.explain(net)(torch.randn(2, 1, 8, 8))
    assert explained.graph_break_count == 0, explained.break_reasons
    assert explained.graph_count == 1


# -- static shapes -----------------------------------------------------------------------------------
def test_drop_last_gives_full_batches_only():
    from nas_cli.data.bundle import TensorLoader

    loader = TensorLoader(torch.randn(70, 1, 8, 8), torch.randint(0, 4, (70,)), 16)  # 35 images a part
    weights, arch = split_train(loader, 0.5, seed=0, drop_last=True)
    assert [len(y) for _, y in weights] == [16, 16] and [len(y) for _, y in arch] == [16, 16]
    weights, _ = split_train(loader, 0.5, seed=0)  # the eager default keeps the partial batch
    assert [len(y) for _, y in weights] == [16, 16, 3]
    assert StepOptions(compile=True).drops_last() and not StepOptions().drops_last()
