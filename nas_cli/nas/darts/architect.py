"""The bilevel step's architecture half: one Adam step on alpha from a validation batch.

``order="first"``: grad_alpha L_val(w, alpha). ``order="second"``: the unrolled step
w' = w - xi grad_w L_train(w, alpha), then

    grad_alpha L_val(w', alpha) - xi (grad_alpha L_train(w+, alpha) - grad_alpha L_train(w-, alpha)) / (2 eps)

with w+- = w +- eps grad_w' L_val(w', alpha) and eps = 0.01 / ||grad_w' L_val(w', alpha)||
(the finite-difference Hessian-vector product of Liu et al., 2019).

``reuse_train_grad`` (second order only): the weight step that follows reuses grad_w L_train(w, alpha)
from the unrolled step instead of recomputing it after alpha moved, which saves one of the five
forward-backward passes. DARTS recomputes it (at the updated alpha); alpha's step is small
(Adam, lr 3e-4), so the two gradients differ little, but it is an approximation, hence off by default.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from nas_cli.errors import UserError

Penalty = Callable[[torch.Tensor], torch.Tensor]  # (cross-entropy) -> loss with the latency term


class Architect:
    def __init__(self, model: nn.Module, order: str = "first", lr: float = 3e-4, betas=(0.5, 0.999),
                 weight_decay: float = 1e-3, objective: Penalty | None = None, reuse_train_grad: bool = False):
        if order not in ("first", "second"):
            raise UserError(f"arch.order={order}: use first or second")
        if reuse_train_grad and order != "second":
            raise UserError("arch.reuse_train_grad=true needs arch.order=second (first order has no unrolled step)")
        self.model, self.order = model, order
        self.reuse_train_grad = reuse_train_grad
        self.unrolled_train = None  # (loss, logits, weights, their gradients) kept for the weight step
        self.params = list(model.arch.parameters())
        self.optimizer = torch.optim.Adam(self.params, lr=lr, betas=tuple(betas), weight_decay=weight_decay)
        self.objective = objective or (lambda ce: ce)

    def _loss(self, x, y, weights: dict | None = None) -> torch.Tensor:
        logits = self.model(x) if weights is None else functional_call(self.model, weights, (x,))
        return self.objective(F.cross_entropy(logits, y))

    def alpha_grads(self, x_train, y_train, x_val, y_val, xi: float) -> list[torch.Tensor]:
        """The architecture gradient this step applies (first or second order)."""
        if self.order == "first":
            return list(torch.autograd.grad(self._loss(x_val, y_val), self.params))
        names, w = zip(*[(n, p) for n, p in self.model.named_parameters() if p.requires_grad])
        # the unrolled weights w' (no graph through them: the Hessian term is by finite differences)
        logits = self.model(x_train)
        train_loss = F.cross_entropy(logits, y_train)
        g_train = torch.autograd.grad(train_loss, w, allow_unused=True)
        if self.reuse_train_grad:
            self.unrolled_train = (train_loss.detach(), logits.detach(), w, g_train)
        unrolled = {n: (p if g is None else p - xi * g).detach().requires_grad_(True)
                    for n, p, g in zip(names, w, g_train)}
        val = self._loss(x_val, y_val, unrolled)
        grads = torch.autograd.grad(val, [*self.params, *unrolled.values()], allow_unused=True)
        d_alpha = [torch.zeros_like(p) if g is None else g for p, g in zip(self.params, grads[:len(self.params)])]
        d_w = [torch.zeros_like(p) if g is None else g for p, g in zip(w, grads[len(self.params):])]
        hessian = self.hessian_vector(d_w, x_train, y_train, w)
        return [a - xi * h for a, h in zip(d_alpha, hessian)]

    def hessian_vector(self, vector, x, y, w) -> list[torch.Tensor]:
        """(grad_alpha L_train(w + eps v) - grad_alpha L_train(w - eps v)) / (2 eps)."""
        eps = float(0.01 / torch.cat([v.flatten() for v in vector]).norm().clamp_min(1e-12))  # one host sync
        with torch.no_grad():
            for p, v in zip(w, vector):
                p.add_(v, alpha=eps)
        g_pos = torch.autograd.grad(F.cross_entropy(self.model(x), y), self.params, allow_unused=True)
        with torch.no_grad():
            for p, v in zip(w, vector):
                p.sub_(v, alpha=2 * eps)
        g_neg = torch.autograd.grad(F.cross_entropy(self.model(x), y), self.params, allow_unused=True)
        with torch.no_grad():
            for p, v in zip(w, vector):
                p.add_(v, alpha=eps)
        return [torch.zeros_like(p) if a is None else (a - b) / (2 * eps)
                for p, a, b in zip(self.params, g_pos, g_neg)]

    def weight_loss_from_unrolled(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(loss, logits) for the weight step, from the unrolled step's pass (``reuse_train_grad``).

        The loss has the value of L_train(w, alpha) and, through ``sum(w * g) - sum(w * g).detach()``,
        exactly the gradient g = grad_w L_train(w, alpha) already computed, so the engine's own backward,
        clipping and SGD step apply it without another pass through the network.
        """
        loss, logits, w, g = self.unrolled_train
        self.unrolled_train = None
        linear = sum((p * gi).sum() for p, gi in zip(w, g) if gi is not None)
        return loss + (linear - linear.detach()), logits

    def step(self, x_train, y_train, x_val, y_val, xi: float) -> None:
        grads = self.alpha_grads(x_train, y_train, x_val, y_val, xi)
        self.optimizer.zero_grad(set_to_none=True)
        for p, g in zip(self.params, grads):
            p.grad = g.detach()
        self.optimizer.step()


def exact_second_order(model: nn.Module, x_train, y_train, x_val, y_val, xi: float) -> list[torch.Tensor]:
    """The second-order gradient by autograd through the unrolled step (create_graph): for tests."""
    arch = list(model.arch.parameters())
    names, w = zip(*[(n, p) for n, p in model.named_parameters() if p.requires_grad])
    g = torch.autograd.grad(F.cross_entropy(model(x_train), y_train), w, create_graph=True, allow_unused=True)
    unrolled = {n: p if gi is None else p - xi * gi for n, p, gi in zip(names, w, g)}
    val = F.cross_entropy(functional_call(model, unrolled, (x_val,)), y_val)
    grads = torch.autograd.grad(val, arch, allow_unused=True)
    return [torch.zeros_like(p) if gi is None else gi for p, gi in zip(arch, grads)]
