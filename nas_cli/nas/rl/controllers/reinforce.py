"""``controller=reinforce``: an LSTM controller trained with REINFORCE, Zoph & Le (2017).

The policy (``policies.py``) depends on the space: in ``space=zoph`` Zoph & Le's stacked LSTM (the paper's:
two layers of 35 units; ``lstm_layers``, ``hidden``) emits each layer's filter height and width, stride height
and width and number of filters, after an anchor step that decides the layer's skips; in ``space=enas_macro``
ENAS's (Pham et al. 2018) emits each layer's operation and then its skips. ``tanh_constant`` and ``temperature``
squash the logits as ENAS does, ``c * tanh(logit / T)``; ``init_range`` starts the weights uniform in
``[-r, r]`` (Zoph & Le: 0.08; ENAS: 0.1); Adam's ``betas`` and ``eps`` train them (ENAS's code: 0.0, 0.999 and
1e-3).

Depth schedule (``depth_schedule``): the children start with ``start`` layers and get ``step`` more
after every ``every`` sampled architectures (the paper, on CIFAR-10: 6 layers, +2 every 1,600), at
most ``space.layers``; null: always ``space.layers``.

Reward: the controller learns from ``R = score ** reward_power``, the score being the child's
(``child.score``, over ``child.score_epochs``). The paper's is the maximum validation accuracy of the
last 5 epochs, cubed (``reward_power: 3``); 1 gives plain accuracy. The search's records keep the
score itself.

Training: ``loss = -A * log p(arch) - entropy_weight * H + skip_penalty * KL(q || skip_target)``
with the advantage ``A = R - b``, ``b`` an exponential moving average of past rewards (it starts at
the first reward), and the KL between each sampled connection probability and the target density,
averaged. With ``normalize`` the advantage is divided by the root of a moving average of past
squared advantages, so the step size does not depend on the scale of the rewards (accuracies of
similar children differ by hundredths; synthetic rewards by tenths). ENAS adds the entropy to the
reward and the KL to the loss; here both are terms of the loss.
"""

from __future__ import annotations

import math

import torch

from nas_cli.errors import UserError
from nas_cli.nas.rl.controllers.base import Controller
from nas_cli.nas.rl.controllers.policies import policy_for


def depth_at(schedule: dict | None, sampled: int, most: int) -> int:
    """Child layers for the architecture sampled after ``sampled`` others: start + step per ``every``, capped."""
    if schedule is None:
        return most
    return min(most, int(schedule["start"]) + int(schedule["step"]) * (sampled // int(schedule["every"])))


class Reinforce(Controller):
    """``propose`` / ``observe`` take architectures, as every controller's do; ``sample`` / ``learn`` take what the
    policy samples (the ENAS space's choices, which ``reward=shared`` runs on its shared network)."""

    name = "reinforce"

    def __init__(
        self,
        space,
        seed: int = 0,
        hidden: int = 35,
        lstm_layers: int = 2,
        lr: float = 0.01,
        baseline_decay: float = 0.8,
        entropy_weight: float = 1e-4,
        skip_penalty: float = 0.0,
        skip_target: float = 0.4,
        normalize: bool = True,
        reward_power: float = 3.0,
        depth_schedule: dict | None = None,
        tanh_constant: float | None = None,
        temperature: float | None = None,
        init_range: float = 0.08,
        betas: tuple[float, float] | list[float] = (0.9, 0.999),
        eps: float = 1e-8,
    ):
        if int(hidden) < 1 or int(lstm_layers) < 1:
            raise UserError(f"controller.hidden={hidden}, controller.lstm_layers={lstm_layers}: use 1 or more")
        if float(reward_power) <= 0:
            raise UserError(f"controller.reward_power={reward_power}: use a positive power (1: the score itself)")
        for key, value in (("tanh_constant", tanh_constant), ("temperature", temperature)):
            if value is not None and float(value) <= 0:
                raise UserError(f"controller.{key}={value}: use a positive number or null (off)")
        if float(init_range) <= 0:
            raise UserError(f"controller.init_range={init_range}: use a positive range")
        super().__init__(space, seed)
        self.depth_schedule = _check_depth_schedule(depth_schedule)
        self.reward_power = float(reward_power)
        self.sampled = 0  # architectures sampled so far (the depth schedule's clock)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.policy = policy_for(space, int(hidden), int(lstm_layers), float(init_range))
        self.generator = torch.Generator().manual_seed(seed)
        self.optimizer = torch.optim.Adam(
            self.policy.parameters(), lr=float(lr), betas=(float(betas[0]), float(betas[1])), eps=float(eps)
        )
        self.baseline_decay, self.entropy_weight = float(baseline_decay), float(entropy_weight)
        self.skip_penalty, self.skip_target = float(skip_penalty), float(skip_target)
        self.normalize = bool(normalize)
        self.tanh_constant = None if tanh_constant is None else float(tanh_constant)
        self.temperature = None if temperature is None else float(temperature)
        self.baseline: float | None = None
        self.advantage_sq: float | None = None  # moving average of squared advantages (normalize)
        self.last_entropy = 0.0  # the entropy of the last sample drawn or scored (for the record)

    def depth(self) -> int:
        """Layers of the next sampled architecture (the depth schedule)."""
        return depth_at(self.depth_schedule, self.sampled, self.space.layers)

    def squash(self, logits: torch.Tensor) -> torch.Tensor:
        if self.temperature is not None:
            logits = logits / self.temperature
        if self.tanh_constant is not None:
            logits = self.tanh_constant * torch.tanh(logits)
        return logits

    def run(self, sample: list[dict] | None = None, layers: int | None = None):
        """Draw a sample of ``layers`` layers (``sample=None``; default ``space.layers``) or score a given one;
        returns (sample, log p, entropy, mean skip KL)."""
        layers = len(sample) if sample is not None else (self.space.layers if layers is None else int(layers))
        out, logp, entropy, kl, links = self.policy.walk(sample, layers, self.generator, self.squash, self.skip_target)
        self.last_entropy = float(entropy.detach())
        return out, logp, entropy, kl / max(links, 1)

    def sample(self) -> list[dict]:
        """The policy's next sample (an architecture in space=zoph, a choice in space=enas_macro)."""
        layers = self.depth()
        self.sampled += 1
        with torch.no_grad():
            return self.run(layers=layers)[0]

    def propose(self) -> list[dict]:
        return self.policy.to_arch(self.sample())

    def log_prob(self, arch: list[dict]) -> float:
        with torch.no_grad():
            return float(self.run(self.policy.from_arch(arch))[1])

    def advantage(self, reward: float) -> float:
        """``R - b`` (normalized if asked), then the moving averages take ``R`` in."""
        reward = float(reward)
        if self.baseline is None:
            self.baseline = reward
        advantage = reward - self.baseline
        self.baseline = self.baseline_decay * self.baseline + (1 - self.baseline_decay) * reward
        if self.normalize and advantage != 0.0:
            sq = advantage * advantage
            self.advantage_sq = (
                sq
                if self.advantage_sq is None
                else (self.baseline_decay * self.advantage_sq + (1 - self.baseline_decay) * sq)
            )
            advantage /= self.advantage_sq**0.5
        return advantage

    def observe(self, arch: list[dict], reward: float) -> None:
        self.learn(self.policy.from_arch(arch), reward)

    def learn(self, sample: list[dict], reward: float) -> None:
        """One REINFORCE step on the policy's own sample."""
        advantage = self.advantage(math.copysign(abs(float(reward)) ** self.reward_power, reward))  # sign kept
        _, logp, entropy, kl = self.run(sample)
        loss = -advantage * logp - self.entropy_weight * entropy + self.skip_penalty * kl
        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer.step()

    def extra_state(self) -> dict:
        return {"baseline": self.baseline, "advantage_sq": self.advantage_sq, "sampled": self.sampled}

    def load_extra_state(self, state: dict) -> None:
        self.baseline, self.advantage_sq, self.sampled = state["baseline"], state["advantage_sq"], state["sampled"]

    def tensor_state(self) -> dict:
        return {
            "policy": self.policy.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "generator": self.generator.get_state(),
        }

    def load_tensor_state(self, state: dict) -> None:
        self.policy.load_state_dict(state["policy"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.generator.set_state(state["generator"])


def _check_depth_schedule(schedule: dict | None) -> dict | None:
    if schedule is None:
        return None
    try:
        out = {k: int(schedule[k]) for k in ("start", "step", "every")}
    except (KeyError, TypeError, ValueError) as ex:
        raise UserError(
            "controller.depth_schedule: give {start: LAYERS, step: LAYERS, every: ARCHITECTURES} or null"
        ) from ex
    if out["start"] < 1 or out["step"] < 0 or out["every"] < 1:
        raise UserError(f"controller.depth_schedule={schedule}: need start >= 1, step >= 0, every >= 1")
    return out
