"""The bilevel step's architecture half: one Adam step on alpha from a validation batch.

``order="first"``: grad_alpha L_val(w, alpha). ``order="second"``: the unrolled weights w', then

    grad_alpha L_val(w', alpha) - xi (grad_alpha L_train(w+, alpha) - grad_alpha L_train(w-, alpha)) / (2 eps)

with w+- = w +- eps grad_w' L_val(w', alpha) and eps = 0.01 / ||grad_w' L_val(w', alpha)||
(the finite-difference Hessian-vector product of Liu et al., 2019).

The unrolled weights (``unrolled``), where the paper and its reference code differ:

- ``paper``: w' = w - xi grad_w L_train(w, alpha) (Liu et al., 2019, eq. 6).
- ``code`` (default): w' = w - xi (momentum buf + grad_w L_train(w, alpha) + wd w), with the weight
  SGD's momentum, its momentum buffer (zero before the first step) and weight decay: the step the
  weights really take next (clipping aside), as quark0/darts computes it, which produced Table 1.

The Hessian term is the same for both, since buf and w do not depend on alpha.

``reuse_train_grad`` (second order only): the weight step that follows reuses grad_w L_train(w, alpha)
from the unrolled step instead of recomputing it after alpha moved, which saves one of the five
forward-backward passes. DARTS recomputes it (at the updated alpha); alpha's step is small
(Adam, lr 3e-4), so the two gradients differ little, but it is an approximation, hence off by default.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import cast

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from nas_cli.errors import UserError

Penalty = Callable[[torch.Tensor], torch.Tensor]  # (cross-entropy) -> loss with the latency term


class Architect:
    """Adam on alpha (``model.arch``); ``weight_optimizer`` is the weights' SGD, read by ``unrolled="code"``."""

    def __init__(
        self,
        model: nn.Module,
        order: str,
        lr: float = 3e-4,
        betas=(0.5, 0.999),
        weight_decay: float = 1e-3,
        objective: Penalty | None = None,
        reuse_train_grad: bool = False,
        unrolled: str = "code",
        weight_optimizer: torch.optim.Optimizer | None = None,
    ):
        if order not in ("first", "second"):
            raise UserError(f"arch.order={order}: use first or second")
        if reuse_train_grad and order != "second":
            raise UserError("arch.reuse_train_grad=true needs arch.order=second (first order has no unrolled step)")
        if unrolled not in ("code", "paper"):
            raise UserError(f"arch.unrolled={unrolled}: use code (DARTS's reference code) or paper")
        if order == "second" and unrolled == "code" and not isinstance(weight_optimizer, torch.optim.SGD):
            raise UserError(
                "arch.unrolled=code unrolls the weights' SGD step (momentum, weight decay): "
                "use optim=sgd, or arch.unrolled=paper"
            )
        self.model, self.order, self.unrolled, self.weight_optimizer = model, order, unrolled, weight_optimizer
        self.reuse_train_grad = reuse_train_grad
        # (loss, logits, weights, their gradients) kept for the weight step
        self.unrolled_train: tuple[torch.Tensor, torch.Tensor, tuple, tuple] | None = None
        self._unrolled: list[torch.Tensor] | None = None  # w' of the second-order step, reused step after step
        self.params = list(cast(nn.Module, model.arch).parameters())
        self.optimizer = torch.optim.Adam(self.params, lr=lr, betas=tuple(betas), weight_decay=weight_decay)
        self.objective = objective or (lambda ce: ce)

    def loss(self, x, y, weights: dict | None = None) -> torch.Tensor:
        """alpha's objective on a batch: cross-entropy, with the latency term when there is one."""
        logits = self.model(x) if weights is None else functional_call(self.model, weights, (x,))
        return self.objective(F.cross_entropy(logits, y))

    def alpha_grads(self, x_train, y_train, x_val, y_val, xi: float | torch.Tensor) -> list[torch.Tensor]:
        """The architecture gradient this step applies (first or second order)."""
        if self.order == "first":  # alpha of a cell kind the supernet lacks (fewer than 3 cells) gets no gradient
            grads = torch.autograd.grad(self.loss(x_val, y_val), self.params, allow_unused=True)
            return [torch.zeros_like(p) if g is None else g for p, g in zip(self.params, grads)]
        names, w = zip(*[(n, p) for n, p in self.model.named_parameters() if p.requires_grad])
        # the unrolled weights w' (no graph through them: the Hessian term is by finite differences)
        logits = self.model(x_train)
        train_loss = F.cross_entropy(logits, y_train)
        g_train = torch.autograd.grad(train_loss, w, allow_unused=True)
        if self.reuse_train_grad:
            # copies: a compiled supernet under CUDA graphs reuses its outputs' memory at its next replay
            self.unrolled_train = (train_loss.detach().clone(), logits.detach().clone(), w, g_train)
        unrolled = dict(zip(names, self._unrolled_leaves(self.unrolled_weights(w, g_train, xi))))
        val = self.loss(x_val, y_val, unrolled)
        grads = torch.autograd.grad(val, [*self.params, *unrolled.values()], allow_unused=True)
        d_alpha = [torch.zeros_like(p) if g is None else g for p, g in zip(self.params, grads[: len(self.params)])]
        d_w = [torch.zeros_like(p) if g is None else g for p, g in zip(w, grads[len(self.params) :])]
        hessian = self.hessian_vector(d_w, x_train, y_train, w)
        return [a - xi * h for a, h in zip(d_alpha, hessian)]

    def _unrolled_leaves(self, steps: list[torch.Tensor]) -> list[torch.Tensor]:
        """w' as leaf tensors (gradients stop there), the same tensors at every step: their values are copied
        in, so a compiled supernet under CUDA graphs sees its inputs at fixed addresses (no re-recording),
        and as ``nn.Parameter`` s, so its guards accept them in place of the weights (no second graph)."""
        with torch.no_grad():
            if self._unrolled is None or any(
                a.shape != b.shape or a.dtype != b.dtype or a.device != b.device for a, b in zip(self._unrolled, steps)
            ):
                # Parameters, as the weights they stand in for: a compiled supernet then reuses its graph
                self._unrolled = [nn.Parameter(torch.empty_like(u)) for u in steps]
            torch._foreach_copy_(self._unrolled, [u.detach() for u in steps])
        return self._unrolled

    def unrolled_weights(self, w, g, xi: float | torch.Tensor) -> list[torch.Tensor]:
        """w' from the weights ``w`` and their training gradient ``g`` (see the module docstring).

        A weight without a gradient stays where it is, as SGD leaves it.
        """
        if self.unrolled == "paper":
            return [p if gi is None else p - xi * gi for p, gi in zip(w, g)]
        assert self.weight_optimizer is not None  # checked in __init__: unrolled=code has the weights' SGD
        group_of = {p: group for group in self.weight_optimizer.param_groups for p in group["params"]}
        out = []
        for p, gi in zip(w, g):
            if gi is None:
                out.append(p)
                continue
            group = group_of[p]
            step = gi + group["weight_decay"] * p if group["weight_decay"] else gi
            buf = self.weight_optimizer.state.get(p, {}).get("momentum_buffer")
            if group["momentum"] and buf is not None:
                step = step + group["momentum"] * buf
            out.append(p - xi * step)
        return out

    def hessian_vector(self, vector, x, y, w) -> list[torch.Tensor]:
        """(grad_alpha L_train(w + eps v) - grad_alpha L_train(w - eps v)) / (2 eps).

        eps = 0.01 / ||v|| stays a 0-d tensor on the weights' device: reading it on the host would stall
        every step until the GPU catches up (and break CUDA-graph capture). The weights move by foreach
        ops, a few kernels for all of them rather than three per weight.
        """
        eps = 0.01 / torch.cat([v.flatten() for v in vector]).norm().clamp_min(1e-12)
        step = torch._foreach_mul(list(vector), eps)
        with torch.no_grad():
            torch._foreach_add_(list(w), step)
        g_pos = torch.autograd.grad(F.cross_entropy(self.model(x), y), self.params, allow_unused=True)
        with torch.no_grad():
            torch._foreach_sub_(list(w), step, alpha=2)
        g_neg = torch.autograd.grad(F.cross_entropy(self.model(x), y), self.params, allow_unused=True)
        with torch.no_grad():
            torch._foreach_add_(list(w), step)
        return [torch.zeros_like(p) if a is None else (a - b) / (2 * eps) for p, a, b in zip(self.params, g_pos, g_neg)]

    def weight_loss_from_unrolled(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(loss, logits) for the weight step, from the unrolled step's pass (``reuse_train_grad``).

        The loss has the value of L_train(w, alpha) and, through ``sum(w * g) - sum(w * g).detach()``,
        exactly the gradient g = grad_w L_train(w, alpha) already computed, so the engine's own backward,
        clipping and SGD step apply it without another pass through the network.
        """
        assert self.unrolled_train is not None  # the bilevel step asks only after an unrolled step kept it
        loss, logits, w, g = self.unrolled_train
        self.unrolled_train = None
        linear = torch.stack([(p * gi).sum() for p, gi in zip(w, g) if gi is not None]).sum()
        return loss + (linear - linear.detach()), logits

    def step(self, x_train, y_train, x_val, y_val, xi: float | torch.Tensor) -> None:
        """One Adam step on alpha. Nothing here reads a device value on the host (``xi`` may be a float or a
        0-d tensor), so on a GPU the step queues its kernels without waiting for them."""
        grads = self.alpha_grads(x_train, y_train, x_val, y_val, xi)
        self.optimizer.zero_grad(set_to_none=True)
        for p, g in zip(self.params, grads):
            p.grad = g.detach()
        self.optimizer.step()


def exact_second_order(
    model: nn.Module, x_train, y_train, x_val, y_val, xi: float, unroll: Callable | None = None
) -> list[torch.Tensor]:
    """The second-order gradient by autograd through the unrolled step (create_graph): for tests.

    ``unroll(w, g, xi)`` gives w' (``Architect.unrolled_weights``); default the paper's w - xi g.
    """
    arch = list(cast(nn.Module, model.arch).parameters())
    names, w = zip(*[(n, p) for n, p in model.named_parameters() if p.requires_grad])
    g = torch.autograd.grad(F.cross_entropy(model(x_train), y_train), w, create_graph=True, allow_unused=True)
    steps = unroll(w, g, xi) if unroll else [p if gi is None else p - xi * gi for p, gi in zip(w, g)]
    unrolled = dict(zip(names, steps))
    val = F.cross_entropy(functional_call(model, unrolled, (x_val,)), y_val)
    grads = torch.autograd.grad(val, arch, allow_unused=True)
    return [torch.zeros_like(p) if gi is None else gi for p, gi in zip(arch, grads)]
