"""``reward=shared``: ENAS, Efficient Neural Architecture Search via Parameter Sharing (Pham et al. 2018), in
its macro search space (``space=enas_macro``), as a recipe on the one training engine.

Every child is a path through one shared network (``nas_cli/nas/rl/shared.py``); no child is trained on its
own. Each search epoch alternates the paper's two phases (Section 2.2):

1. the shared weights ``omega``: one pass over the training split, a freshly sampled child per minibatch,
   with the ``optim`` / ``sched`` groups, gradient norms clipped at ``enas.grad_clip`` (``Trainer.fit``: its
   checkpoints, exact resume, stop points and run record). The engine's validation pass samples a child per
   validation minibatch too, so ``val_acc`` is the mean accuracy of sampled children under the shared weights;
2. the controller: ``enas.controller_steps`` REINFORCE steps, each child rewarded with its accuracy, under the
   shared weights, on ONE validation minibatch (``reward_mean`` is their mean).

After the last epoch ``enas.final_samples`` children are sampled, each scored on the whole validation split
(the paper scores each on one minibatch), and the best is ``best_arch.json``, to be retrained from scratch
(``nas-cli train model=rl_child model.arch=RUN``).

The controller is ``controller=reinforce`` (``controllers/reinforce.py``: its loss ``-(R - b) log p -
entropy_weight * H + skip_penalty * KL``, its moving-average baseline) with the ``enas.controller`` settings;
in this space it samples from ENAS's policy (``controllers/policies.py``, ``EnasPolicy``): per layer one LSTM
step emits the operation, a second one the anchor whose attention over the earlier anchors gives each skip's
probability; logits squashed as ``tanh_constant * tanh(logit / temperature)`` (the reference code
``melodyguan/enas``, ``general_controller.py``). The reference code's defaults for it
(``scripts/cifar10_macro_search.sh`` and ``main.py``) are in ``conf/search_rl.yaml``'s ``enas.controller``.

Run folder: ``metrics.csv`` (a row per search epoch: the engine's ``train_loss``, ``train_acc``, ``val_loss``,
``val_acc`` of the shared weights, and ``reward_mean``, ``controller_entropy``, ``baseline``, ``skip_rate``;
``best_reward`` in the last row), ``checkpoints/last.pt`` (the shared weights, their optimizer and schedule,
the controller, the validation minibatch stream and every random state), ``best_arch.json``, ``model.pt`` (the
shared weights at the end), ``summary.json``.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from nas_cli.data.bundle import DataBundle, TensorLoader
from nas_cli.data.resident import place_loaders
from nas_cli.data.resumable import BatchStream
from nas_cli.engine.schedules import Schedule
from nas_cli.engine.trainer import HEADLINE, Trainer
from nas_cli.errors import UserError
from nas_cli.nas.rl.arch import describe, param_count
from nas_cli.nas.rl.controllers.reinforce import Reinforce
from nas_cli.nas.rl.shared import SharedNet
from nas_cli.runs.files import BEST_ARCH
from nas_cli.runs.lifecycle import Run
from nas_cli.runs.record import read_json, write_json

log = logging.getLogger(__name__)
ENAS_HEADLINE = [*HEADLINE, "reward_mean", "best_reward"]


@dataclass
class EnasOptions:
    """The ``enas`` block: search epochs, controller steps per epoch, final samples, clipping, the controller."""

    epochs: int = 10
    controller_steps: int = 50
    final_samples: int = 10
    grad_clip: float | None = 5.0
    controller: dict = field(default_factory=dict)

    def __post_init__(self):
        for name in ("epochs", "controller_steps", "final_samples"):
            if int(getattr(self, name)) < 1:
                raise UserError(f"enas.{name}={getattr(self, name)}: use 1 or more")
        if self.grad_clip is not None and float(self.grad_clip) <= 0:
            raise UserError(f"enas.grad_clip={self.grad_clip}: use a positive norm or null (off)")


def _validation_stream(val: TensorLoader, batch_size: int, seed: int) -> BatchStream:
    """Endless shuffled minibatches of the validation split, of the training batch size (the validation loader's
    own batches are larger, often the whole split): one per controller step, as ENAS scores each child."""
    mean = None if val.mean is None else val.mean.flatten()
    std = None if val.std is None else val.std.flatten()
    loader = TensorLoader(
        val.x,
        val.y,
        batch_size,
        shuffle=True,
        generator=torch.Generator().manual_seed(seed + 104729),
        mean=mean,
        std=std,
        on_device=val.on_device,
    )
    return BatchStream(loader, loader.generator)


def search(
    net: SharedNet,
    controller: Reinforce,
    data: DataBundle,
    optimizer: torch.optim.Optimizer,
    schedule: Schedule | None,
    run: Run,
    opts: EnasOptions,
    *,
    progress: bool,
) -> dict:
    """ENAS in ``run``: train the shared weights and the controller in turn for ``opts.epochs`` epochs, then
    name the best of ``opts.final_samples`` sampled children; returns the run's summary."""
    if not (isinstance(data.val, TensorLoader) and isinstance(data.train, TensorLoader)):
        raise UserError("reward=shared needs in-memory data (data=digits, mnist5k, synthetic or cifar10)")
    if getattr(schedule, "cycles", None) is not None:
        raise UserError("sched=cyclic_cosine keeps snapshots of one network: a shared network has none; use cosine")
    if isinstance(optimizer, torch.optim.LBFGS):
        raise UserError("optim=lbfgs re-evaluates each step's loss, which samples a new child: use sgd, adam, ...")
    space = net.space
    trainer = Trainer(
        epochs=opts.epochs, grad_clip=opts.grad_clip, checkpoint=True, device=run.device, progress=progress
    )
    stream = _validation_stream(data.val, data.train.batch_size, run.seed or 0)
    place_loaders([data.train, data.val, stream.loader], run.device)
    result: dict = {}

    def sampled_child(model, x, y):  # the engine's loss: each minibatch a fresh child, in training and validation
        logits = model(x, controller.sample())
        return F.cross_entropy(logits, y), logits

    def accuracy(choice: list[dict], x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return (net(x, choice).argmax(1) == y).sum()

    def controller_steps() -> dict:
        rewards, entropies, skips = [], [], []
        net.eval()
        for _ in range(opts.controller_steps):
            x, y = (t.to(run.device) for t in next(stream))
            choice = controller.sample()
            entropies.append(controller.last_entropy)
            reward = float(accuracy(choice, x, y)) / len(y)
            controller.learn(choice, reward)
            rewards.append(reward)
            skips.append(sum(len(layer["skips"]) for layer in choice) / max(space.layers * (space.layers - 1) / 2, 1))
        return {
            "reward_mean": sum(rewards) / len(rewards),
            "controller_entropy": sum(entropies) / len(entropies),
            "baseline": float(controller.baseline if controller.baseline is not None else math.nan),
            "skip_rate": sum(skips) / len(skips),
        }

    def final_choice() -> dict:
        """The best of ``final_samples`` sampled children, each scored on the whole validation split."""
        net.eval()
        scored = []
        for _ in range(opts.final_samples):
            choice = controller.sample()
            correct, seen = 0, 0
            for x, y in data.val:
                x, y = x.to(run.device), y.to(run.device)
                correct += int(accuracy(choice, x, y))
                seen += len(y)
            scored.append((correct / max(seen, 1), choice))
        reward, choice = max(scored, key=lambda s: s[0])  # the first of equals: the earliest sampled
        arch = space.to_arch(choice)
        best = {
            "arch": arch,
            "reward": reward,
            "params": param_count(arch, data.in_shape, data.num_classes),
            "string": describe(arch),
            "choice": choice,
            "final_rewards": [s[0] for s in scored],
        }
        write_json(run.dir / BEST_ARCH, best)
        return best

    def on_epoch_end(row: dict) -> dict:
        if not (math.isfinite(row["train_loss"]) and math.isfinite(row["val_loss"])):
            return {}  # diverged: the engine ends the search; its controller would learn from noise
        columns = controller_steps()
        if row["epoch"] == opts.epochs:
            result.update(final_choice())
            columns["best_reward"] = result["reward"]
            log.info(
                f"best of {opts.final_samples} sampled children: validation accuracy {result['reward']:.4f} under "
                f"the shared weights, {result['params']:,} parameters: {result['string']}"
            )
        return columns

    def figures() -> dict:
        best = result or _saved_best(run.dir)
        rows = run.record.rows
        return {
            "controller": controller.name,
            "space": space.kind,
            "reward": "shared",
            "reward_mean": rows[-1].get("reward_mean") if rows else None,
            "best_reward": best.get("reward"),
            "best_arch": best.get("string"),
            "best_params": best.get("params"),
            "final_rewards": best.get("final_rewards"),
        }

    log.info(
        f"ENAS search: {sum(p.numel() for p in net.parameters()):,} shared weights, {space.layers} layers of "
        f"{space.width} channels, ops {', '.join(space.choices['op'])}; {opts.epochs} epochs, "
        f"{opts.controller_steps} controller steps each, best of {opts.final_samples} at the end; "
        f"on {data.name} {data.in_shape}, {run.device}; run folder {run.dir}"
    )
    summary = trainer.fit(
        net,
        optimizer,
        data.train,
        data.val,
        run=run,
        schedule=schedule,
        generator=data.generator,
        loss_fn=sampled_child,
        extra_state={"controller": controller, "val_batches": stream},
        on_epoch_end=on_epoch_end,
        figures=figures,
    )
    if summary.get("status") == "ok" and summary.get("best_arch"):
        log.info(f"retrain: nas-cli train model=rl_child model.arch={run.dir / BEST_ARCH}")
    return summary


def _saved_best(run_dir: Path) -> dict:
    """A finished search's result (the run resumed after its last epoch: nothing was computed in this process)."""
    file = run_dir / BEST_ARCH
    return dict(read_json(file, "best_arch", BEST_ARCH, "a search run folder")) if file.is_file() else {}
