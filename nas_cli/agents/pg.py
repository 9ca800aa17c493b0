"""Policy gradients: REINFORCE with a learned baseline, and A2C (``agent.algo``); the agent and its loop.

The gradient is that of ``-mean_t log pi(a_t|s_t) * A_t`` with
- REINFORCE (Williams 1992): ``A_t = G_t - V(s_t)``, ``G_t`` the discounted return-to-go of the episode;
  a batch of whole episodes per update (``agent.episodes``), or of ``agent.n_steps`` steps per environment;
- A2C (Mnih et al. 2016, as SB3's A2C runs it): ``A_t`` = GAE(lambda) over a rollout of ``agent.n_steps``
  steps per environment, bootstrapped with V at its end (lambda = 1: n-step returns, SB3's default).
V is fitted to ``A_t + V(s_t)`` (the return-to-go, or the lambda-return) with ``agent.vf_coef``; an entropy
bonus ``agent.ent_coef`` keeps the policy from collapsing early. A terminated episode's tail is worth 0;
a truncated one (a time limit) is worth V(final observation): returns bootstrap on truncation only, as in dqn.

The network follows SB3's policies: vector observations, separate policy and value MLPs (``MlpPolicy``);
image stacks, one shared trunk, the Nature convolutions and ``hidden`` fully connected ReLU layers (SB3's
``NatureCNN``: 512), under a linear policy head and a linear value head (``CnnPolicy``), every layer
orthogonally initialised (gain sqrt 2; heads 0.01 and 1). RMSprop gets SB3's A2C epsilon
(``rms_prop_eps`` 1e-5, not torch's 1e-8) unless the optim config names its own.

Every update is a safe point: SIGINT/SIGTERM there write a checkpoint with the agent, its optimizer, the
action sampler's RNG, the environments' own state and the loop's, so a resumed run ends as an uninterrupted one.
A non-finite loss or return (or weights, before an evaluation) ends the run there as ``diverged``, its rows kept.
"""

from __future__ import annotations

import inspect
import logging
import math
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import numpy as np
import torch
from torch import nn

from nas_cli.agents.envs import EnvSpec, episode_figures, game_over, policy_returns, start_episodes
from nas_cli.agents.loop import Rows, after_evaluation, diverged, finished, load_weights
from nas_cli.agents.networks import ACTIVATIONS, ActorCritic, mlp
from nas_cli.engine.progress import TrainingProgress
from nas_cli.errors import UserError
from nas_cli.runs import checkpoint
from nas_cli.runs.lifecycle import Run

log = logging.getLogger(__name__)
ALGOS = ("reinforce", "a2c")
LR_SCHEDULES = ("constant", "linear")
HEADLINE = ["best_eval_return", "train_return_last100", "solved_step"]


# -- advantages ------------------------------------------------------------------------------------------------


def returns_to_go(
    rewards: torch.Tensor, next_values: torch.Tensor, terminated: torch.Tensor, ended: torch.Tensor, gamma: float
) -> torch.Tensor:
    """``G_t = r_t + gamma * G_{t+1}`` within an episode, over a (T, N) rollout (time first).

    Where an episode ends at t (``ended``), G_t = r_t if it terminated, r_t + gamma * V(s_{t+1}) if it was
    truncated; at the rollout's last step an unfinished episode is cut, and bootstraps the same way.
    ``next_values[t]`` is V of the observation after step t.
    """
    out = torch.empty_like(rewards)
    g = next_values[-1]
    for t in reversed(range(len(rewards))):
        cut = ended[t] | (t == len(rewards) - 1)
        g = torch.where(cut, next_values[t] * ~terminated[t], g)
        g = out[t] = rewards[t] + gamma * g
    return out


def gae(
    rewards: torch.Tensor,
    values: torch.Tensor,
    next_values: torch.Tensor,
    terminated: torch.Tensor,
    ended: torch.Tensor,
    gamma: float,
    lam: float,
) -> torch.Tensor:
    """Generalised advantage estimates (Schulman et al. 2016) over a (T, N) rollout:
    ``delta_t = r_t + gamma * (1 - terminated_t) * V(s_{t+1}) - V(s_t)``,
    ``A_t = delta_t + gamma * lam * (1 - ended_t) * A_{t+1}``, with A = 0 past the rollout's end.
    lam = 1 gives ``returns_to_go - V`` (n-step returns within the rollout); lam = 0 the one-step TD error."""
    deltas = rewards + gamma * next_values * ~terminated - values
    out = torch.empty_like(rewards)
    a = torch.zeros_like(rewards[0])
    for t in reversed(range(len(rewards))):
        a = out[t] = deltas[t] + gamma * lam * a * ~ended[t]
    return out


class SharedTrunkActorCritic(ActorCritic):
    """SB3's ``CnnPolicy`` for image stacks (C, H, W): the Nature convolutions and ``hidden`` fully connected
    ReLU layers (``NatureCNN``: [512]) shared by a linear policy head and a linear value head; orthogonal
    weights, gain sqrt(2) in the trunk, 0.01 at the policy's output, 1 at the value's, zero biases."""

    def __init__(
        self,
        obs_shape: tuple[int, ...],
        hidden: Sequence[int] = (512,),
        num_actions: int | None = None,
        action_dim: int | None = None,
        log_std_init: float = 0.0,
    ):
        if len(obs_shape) != 3:
            raise ValueError(f"image stacks (C, H, W) only, not {obs_shape}")
        super().__init__(
            obs_shape, [], "relu", num_actions=num_actions, action_dim=action_dim, log_std_init=log_std_init
        )
        head = cast(nn.Linear, self.policy[0])  # mlp(features, [], ...) is a single Linear
        convolutions = cast(nn.Sequential, self.trunk)  # image stacks: nature_trunk, flattened at its end
        layers, features = list(convolutions), head.in_features
        for width in hidden:
            layers += [nn.Linear(features, width), nn.ReLU()]
            features = width
        for m in layers:
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                assert m.bias is not None  # nature_trunk's convolutions and these Linears all have one
                nn.init.orthogonal_(m.weight, math.sqrt(2))
                nn.init.zeros_(m.bias)
        self.trunk = nn.Sequential(*layers)
        outputs = head.out_features
        self.policy = mlp(features, [], outputs, out_gain=0.01)
        self.value = mlp(features, [], 1, out_gain=1.0)


@dataclass
class Rollout:
    """A batch of transitions, time first: ``obs`` (T+1, N, ...) (the last row is where the rollout stops),
    ``actions`` (T, N[, d]), ``rewards``, ``terminated``, ``ended`` (terminated or truncated) and ``valid``
    (T, N). An invalid step is not a transition (an environment's reset step, or one past its share of
    whole episodes): it counts neither in the loss nor in any return."""

    obs: torch.Tensor
    actions: torch.Tensor
    rewards: torch.Tensor
    terminated: torch.Tensor
    ended: torch.Tensor
    valid: torch.Tensor


@dataclass
class Losses:
    policy: torch.Tensor
    value: torch.Tensor
    entropy: torch.Tensor
    total: torch.Tensor


class PolicyGradient:
    """Agent hyperparameters; ``build`` makes the actor-critic once the environment's spaces are known.

    Args:
        algo: reinforce (Monte-Carlo returns-to-go minus V) or a2c (GAE(lambda) advantages over n-step rollouts).
        hidden, activation: vector observations: the policy's and the value's MLP (separate networks; tanh,
            64-64: SB3's A2C); image stacks: the shared ReLU layers after the convolutions ([512]: SB3's CnnPolicy).
        gamma: discount.
        n_steps: steps per environment in each update's rollout; null: a2c 5 (SB3's), reinforce whole episodes.
        episodes: reinforce with n_steps=null: whole episodes per update, shared out over the environments.
        gae_lambda: a2c's lambda (1.0: n-step returns, SB3's default; 0.95 is the usual GAE choice).
        baseline: subtract the learned V(s) from the returns (false: plain REINFORCE; V is still fitted, only to
            bootstrap the returns of time-limit truncations).
        normalize_advantage: standardise the advantages over each batch.
        ent_coef, vf_coef: weights of the entropy bonus and the value loss.
        max_grad_norm: clip the gradient's norm (null: off).
        log_std_init: continuous actions: the Gaussian's initial log standard deviation.
        rms_prop_eps: RMSprop's epsilon where the optimizer is RMSprop and its config names none (SB3: 1e-5).
        lr_schedule: constant, or linear: the learning rate falls linearly to 0 over the run (SB3's ``lin_``).
    """

    def __init__(
        self,
        algo: str = "a2c",
        hidden: Sequence[int] = (64, 64),
        activation: str = "tanh",
        gamma: float = 0.99,
        n_steps: int | None = None,
        episodes: int = 8,
        gae_lambda: float = 1.0,
        baseline: bool = True,
        normalize_advantage: bool = False,
        ent_coef: float = 0.0,
        vf_coef: float = 0.5,
        max_grad_norm: float | None = 0.5,
        log_std_init: float = 0.0,
        rms_prop_eps: float = 1e-5,
        lr_schedule: str = "constant",
    ):
        if algo not in ALGOS:
            raise UserError(f"agent.algo={algo}: use reinforce or a2c")
        if n_steps is None and algo == "a2c":
            n_steps = 5  # SB3's A2C
        if n_steps is not None and n_steps < 1 or episodes < 1:
            raise UserError(f"agent.n_steps={n_steps}, agent.episodes={episodes}: use 1 or more")
        if algo == "reinforce" and gae_lambda != 1.0:
            raise UserError(f"agent.gae_lambda={gae_lambda}: REINFORCE uses whole returns (1.0); use agent.algo=a2c")
        if activation not in ACTIVATIONS:  # checked here, not at build time
            raise UserError(f"agent.activation={activation}: use {' or '.join(ACTIVATIONS)}")
        if lr_schedule not in LR_SCHEDULES:
            raise UserError(f"agent.lr_schedule={lr_schedule}: use {' or '.join(LR_SCHEDULES)}")
        if not rms_prop_eps > 0:
            raise UserError(f"agent.rms_prop_eps={rms_prop_eps}: use a number above 0")
        if not baseline and algo == "a2c":
            raise UserError("agent.baseline=false: A2C's advantages need V; use agent.algo=reinforce")
        self.algo, self.hidden, self.activation, self.gamma = algo, list(hidden), activation, float(gamma)
        self.n_steps, self.episodes, self.gae_lambda = n_steps and int(n_steps), int(episodes), float(gae_lambda)
        self.baseline, self.normalize_advantage = bool(baseline), bool(normalize_advantage)
        self.ent_coef, self.vf_coef, self.max_grad_norm = float(ent_coef), float(vf_coef), max_grad_norm
        self.log_std_init = float(log_std_init)
        self.rms_prop_eps, self.lr_schedule = float(rms_prop_eps), lr_schedule

    def load_player(self, path: Path, env: EnvSpec, device: torch.device, episodes: int) -> Callable[[int], dict]:
        """``mode=eval``: the actor-critic saved at ``path`` (``best.pt`` or a checkpoint), as ``play(seed)``:
        ``episodes`` games with the most likely action, then the same starts with sampled actions."""
        envs = env.make(num_envs=1, asynchronous=False)
        self.build(envs.single_observation_space, envs.single_action_space, device)
        envs.close()
        load_weights(self.net, checkpoint.load(path, map_location=device), "net", path)

        def play(seed: int) -> dict:
            greedy, sampled = evaluate(self, env, episodes, seed)
            return {"eval_return": greedy, "eval_return_sampled": sampled}

        return play

    def build(
        self,
        observation_space,
        action_space,
        device: torch.device,
        optimizer: Callable[..., torch.optim.Optimizer] = torch.optim.Adam,
    ) -> PolicyGradient:
        """The actor-critic for these spaces, and ``optimizer(params)`` (a partial of the ``optim`` group)."""
        import gymnasium as gym

        self.device = torch.device(device)
        if isinstance(action_space, gym.spaces.Discrete):
            actions = {"num_actions": int(action_space.n)}
            self.low = self.high = None
        elif isinstance(action_space, gym.spaces.Box) and len(action_space.shape) == 1:
            actions = {"action_dim": int(action_space.shape[0])}
            self.low, self.high = action_space.low, action_space.high
        else:
            raise UserError(f"pg takes discrete or 1-D continuous (Box) actions, not {action_space}")
        net: ActorCritic
        if len(observation_space.shape) == 3:  # image stacks: SB3's CnnPolicy, one shared trunk
            net = SharedTrunkActorCritic(
                observation_space.shape, self.hidden, log_std_init=self.log_std_init, **actions
            )
        else:
            net = ActorCritic(
                observation_space.shape, self.hidden, self.activation, log_std_init=self.log_std_init, **actions
            )
        self.net = net.to(self.device)
        kind = getattr(optimizer, "func", optimizer)
        if isinstance(kind, type) and issubclass(kind, torch.optim.LBFGS):
            raise UserError("optim=lbfgs needs a fixed data set to re-evaluate: pg takes adam, rmsprop, sgd, ...")
        # one fused kernel, or one foreach op, for all parameters: a dozen small ops each costs more here
        accepts = inspect.signature(kind).parameters
        fast: dict[str, object] = (
            {"fused": True} if "fused" in accepts else {"foreach": True} if "foreach" in accepts else {}
        )
        named = getattr(optimizer, "keywords", {})
        if isinstance(kind, type) and issubclass(kind, torch.optim.RMSprop) and "eps" not in named:
            fast["eps"] = self.rms_prop_eps  # SB3's A2C: RMSprop(alpha=0.99, eps=1e-5)
        self.params = list(self.net.parameters())
        self.optimizer = optimizer(self.params, **fast)
        self.base_lrs = [group["lr"] for group in self.optimizer.param_groups]
        self.sampler = torch.Generator(self.device)
        return self

    # -- acting ---------------------------------------------------------------------------------------------------
    @torch.inference_mode()
    def act(self, obs: np.ndarray) -> np.ndarray:
        """Actions sampled from pi(.|s) with the agent's own generator (saved in checkpoints)."""
        out = self.net.policy(self.net.features(torch.as_tensor(obs, device=self.device)))
        if self.net.continuous:
            assert self.net.log_std is not None  # a continuous head has one
            noise = torch.randn(out.shape, generator=self.sampler, device=self.device)
            return (out + noise * self.net.log_std.exp()).cpu().numpy()
        return torch.multinomial(out.softmax(-1), 1, generator=self.sampler).squeeze(1).cpu().numpy()

    def env_actions(self, actions: np.ndarray) -> np.ndarray:
        """What the environment receives: Gaussian samples clipped into the action box (the loss keeps the
        unclipped sample, whose log-probability is the one the policy assigned)."""
        return actions if self.low is None else np.clip(actions, self.low, self.high)

    def evaluator(self, sampled: bool, generator: torch.Generator | None = None) -> Callable[[np.ndarray], np.ndarray]:
        """An ``act(obs)`` for evaluation: the most likely action (greedy), or a sample from ``generator``."""

        @torch.inference_mode()
        def act(obs: np.ndarray) -> np.ndarray:
            obs_t = torch.as_tensor(obs, device=self.device)
            if not sampled:
                return self.env_actions(self.net.most_likely(obs_t).cpu().numpy())
            out = self.net.policy(self.net.features(obs_t))
            if self.net.continuous:
                assert self.net.log_std is not None  # a continuous head has one
                noise = torch.randn(out.shape, generator=generator, device=self.device)
                return self.env_actions((out + noise * self.net.log_std.exp()).cpu().numpy())
            return torch.multinomial(out.softmax(-1), 1, generator=generator).squeeze(1).cpu().numpy()

        return act

    # -- learning -------------------------------------------------------------------------------------------------
    def advantages(self, batch: Rollout, values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(advantages, value targets) of every step, from V of the T+1 observations (no gradient)."""
        v, next_v = values[:-1], values[1:]
        if self.algo == "reinforce":
            target = returns_to_go(batch.rewards, next_v, batch.terminated, batch.ended, self.gamma)
            adv = target - v if self.baseline else target
        else:
            adv = gae(batch.rewards, v, next_v, batch.terminated, batch.ended, self.gamma, self.gae_lambda)
            target = adv + v
        return adv, target

    def losses(self, batch: Rollout) -> Losses:
        """The policy-gradient, value and entropy terms over the valid steps of ``batch``."""
        steps, envs = batch.rewards.shape
        h = self.net.features(batch.obs.flatten(0, 1))  # one pass: V of all T+1 observations
        values = self.net.value(h).squeeze(-1).view(steps + 1, envs)
        adv, target = self.advantages(batch, values.detach())
        mask = batch.valid
        adv, target, v = adv[mask], target[mask], values[:-1][mask]
        if self.normalize_advantage and adv.numel() > 1:
            adv = (adv - adv.mean()) / (adv.std() + 1e-8)
        dist = self.net.distribution(h.view(steps + 1, envs, -1)[:-1][mask])  # pi at the steps taken
        policy = -(dist.log_prob(batch.actions[mask]) * adv).mean()
        value = (target - v).pow(2).mean()
        entropy = dist.entropy().mean()
        return Losses(policy, value, entropy, policy + self.vf_coef * value - self.ent_coef * entropy)

    def set_progress(self, remaining: float) -> None:
        """lr_schedule=linear: each group's learning rate is its configured one times ``remaining``, the share
        of the run still to go (SB3's ``lin_`` schedules: 1 at the start, 0 at the end); stateless, so a resumed
        run is where it would have been."""
        if self.lr_schedule == "linear":
            for group, lr in zip(self.optimizer.param_groups, self.base_lrs):
                group["lr"] = lr * max(remaining, 0.0)

    def update(self, batch: Rollout) -> Losses:
        out = self.losses(batch)
        for p in self.params:  # cheaper than Optimizer.zero_grad for small nets
            p.grad = None
        out.total.backward()
        if self.max_grad_norm:
            nn.utils.clip_grad_norm_(self.params, self.max_grad_norm, foreach=True)
        self.optimizer.step()
        return Losses(*(t.detach() for t in (out.policy, out.value, out.entropy, out.total)))

    def state_dict(self) -> dict:
        return {
            "net": self.net.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "sampler": self.sampler.get_state(),
        }

    def load_state_dict(self, state: dict) -> None:
        self.net.load_state_dict(state["net"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.sampler.set_state(state["sampler"])


# -- the environment loop --------------------------------------------------------------------------------------


class Loop:
    """What the loop carries from one update to the next; all of it goes into a checkpoint."""

    def __init__(self, num_envs: int, eval_every: int):
        self.step = 0
        self.episodes: list[tuple[float, int]] = []  # (return, length) of every finished episode
        self.best_eval, self.best_step = -math.inf, None
        self.solved_step, self.solved_step_sampled = None, None
        self.next_eval = eval_every
        self.eval_seconds = 0.0  # time spent evaluating: not training throughput
        self.obs: np.ndarray | None = None
        self.ended = np.zeros(num_envs, dtype=bool)  # the env's next step is an autoreset, not a transition
        self.ep_return, self.ep_length = np.zeros(num_envs), np.zeros(num_envs, dtype=int)
        self.window: dict[str, list[float]] = {"policy_loss": [], "value_loss": [], "entropy": []}
        self.last_logged = 0

    def start_episodes(self, obs: np.ndarray) -> None:
        self.obs = obs
        self.ended = np.zeros_like(self.ended)  # a new array: the last rollout row still holds the old one
        self.ep_return[:], self.ep_length[:] = 0.0, 0

    def state_dict(self) -> dict:
        plain = {
            k: getattr(self, k)
            for k in (
                "step",
                "episodes",
                "best_eval",
                "best_step",
                "solved_step",
                "solved_step_sampled",
                "next_eval",
                "eval_seconds",
                "window",
                "last_logged",
            )
        }
        arrays = {k: torch.from_numpy(getattr(self, k).copy()) for k in ("obs", "ended", "ep_return", "ep_length")}
        return {**plain, **arrays}

    def load_state_dict(self, state: dict) -> None:
        for key, value in state.items():
            setattr(self, key, value.numpy() if isinstance(value, torch.Tensor) else value)
        self.episodes = [(r, n) for r, n in self.episodes]  # a checkpoint may hold them as lists


def collect(agent: PolicyGradient, envs, loop: Loop, recent: deque, clip_rewards: bool = False) -> Rollout:
    """One update's transitions: ``agent.n_steps`` steps of every environment, or (n_steps=null) whole
    episodes, ``agent.episodes / num_envs`` from each environment; an environment that has played its
    share keeps stepping (vector envs step together) but those steps are not used, and all restart
    from a reset afterwards. ``clip_rewards``: the rollout learns from sign(r) (env.clip_rewards, Atari), the
    logged returns stay the game's own."""
    n = len(loop.ended)
    n_steps = agent.n_steps
    share = None if n_steps is not None else agent.episodes // n
    finished = np.zeros(n, dtype=int)
    rewards: list[np.ndarray]  # and the other rows: one of each per step
    obs, actions, rewards, terminated, ended, valid = [], [], [], [], [], []
    assert loop.obs is not None  # start_episodes has set it before the first rollout
    while (len(rewards) < n_steps) if n_steps is not None else (finished < share).any():
        a = agent.act(loop.obs)
        next_obs, r, term, trunc, info = envs.step(agent.env_actions(a))
        real = ~loop.ended  # the step after an episode's end is its reset, not a transition
        end = term | trunc
        used = real if share is None else real & (finished < share)
        obs.append(loop.obs)
        actions.append(a)
        rewards.append(np.sign(r) if clip_rewards else r)
        terminated.append(term)
        ended.append(end)
        valid.append(used)
        finished += end & used
        loop.ep_return += r * real
        loop.ep_length += real
        for i in np.flatnonzero(game_over(term, trunc, info) & real):  # a whole game, not a life
            loop.episodes.append((float(loop.ep_return[i]), int(loop.ep_length[i])))
            recent.append(float(loop.ep_return[i]))
            loop.ep_return[i], loop.ep_length[i] = 0.0, 0
        loop.obs, loop.ended = next_obs, end
        loop.step += n
    obs.append(loop.obs)
    if share is not None:  # the next batch starts with fresh episodes (unfinished ones are dropped)
        loop.start_episodes(envs.reset()[0])
    device = agent.device

    def stack(rows, dtype=None):
        return torch.as_tensor(np.stack(rows), dtype=dtype, device=device)

    return Rollout(
        stack(obs), stack(actions), stack(rewards, torch.float32), stack(terminated), stack(ended), stack(valid)
    )


def train(
    agent: PolicyGradient,
    env: EnvSpec,
    run: Run,
    *,
    total_steps: int,
    eval_every: int,
    eval_episodes: int,
    log_every: int,
    optimizer: Callable[..., torch.optim.Optimizer] = torch.optim.Adam,
    progress: bool = True,
) -> dict:
    """The loop in ``run``: collect a batch, update, evaluate (greedy and sampled), record, checkpoint."""
    done = run.finished()
    if done is not None:
        return done
    if agent.n_steps is None and agent.episodes % env.num_envs:
        raise UserError(
            f"agent.episodes={agent.episodes} does not share out over env.num_envs={env.num_envs}: use a multiple of it"
        )
    envs = env.make()
    assert run.seed is not None  # RunOptions.run gives every run it opens a seed
    seed = int(run.seed)
    agent.build(envs.single_observation_space, envs.single_action_space, run.device, optimizer)
    agent.sampler.manual_seed(seed)
    loop = Loop(env.num_envs, eval_every)
    record = run.record
    try:
        saved = run.load_checkpoint()
        if saved is not None:
            agent.load_state_dict(saved["agent"])
            loop.load_state_dict(saved["loop"])
            record.write_metrics()
        start_episodes(envs, loop, seed, saved)
        threshold = env.solved_at()
        run.figures = lambda: _figures(loop, env, threshold, run)
        with run, TrainingProgress(progress) as bar:
            _updates(
                agent,
                envs,
                env,
                run,
                loop,
                bar,
                threshold,
                total_steps=total_steps,
                eval_episodes=eval_episodes,
                eval_every=eval_every,
                log_every=log_every,
            )
    finally:
        envs.close()
    return finished(run)


def evaluate(agent: PolicyGradient, env: EnvSpec, episodes: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Returns of ``episodes`` games with the most likely action, then with sampled actions (same starts)."""
    greedy = policy_returns(agent.evaluator(sampled=False), env, episodes, seed)
    generator = torch.Generator(agent.device).manual_seed(seed)
    return greedy, policy_returns(agent.evaluator(sampled=True, generator=generator), env, episodes, seed)


def _updates(
    agent: PolicyGradient,
    envs,
    env: EnvSpec,
    run: Run,
    loop: Loop,
    bar,
    threshold,
    *,
    total_steps: int,
    eval_every: int,
    eval_episodes: int,
    log_every: int,
) -> None:
    assert run.seed is not None  # RunOptions.run gives every run it opens a seed
    record, seed = run.record, int(run.seed)
    recent = deque((r for r, _ in loop.episodes[-100:]), maxlen=100)

    def save() -> None:
        record.write_metrics()
        run.save_checkpoint(
            {
                "agent": agent.state_dict(),
                "loop": loop.state_dict(),
                "envs": getattr(envs, "state_dict", lambda: None)(),
            }
        )

    task = bar.add_task("steps", total=total_steps, completed=loop.step, info="")
    rows = Rows(run, loop)
    while loop.step < total_steps:
        batch = collect(agent, envs, loop, recent, env.clip_rewards)
        agent.set_progress(1.0 - loop.step / total_steps)  # as SB3: the progress after the rollout
        losses = agent.update(batch)
        for key, value in zip(loop.window, (losses.policy, losses.value, losses.entropy)):
            loop.window[key].append(value.item())
        step = loop.step
        evaluating = step >= loop.next_eval or step >= total_steps
        measured = {k: v[-1] for k, v in loop.window.items()}
        stop = diverged(
            run,
            f"step {step}",
            {**measured, "return": float(np.mean(recent)) if recent else None},
            agent.params if evaluating else None,
        )
        evaluated = evaluating and not stop
        if evaluated:
            started = time.perf_counter()
            greedy, sampled = evaluate(agent, env, eval_episodes, seed + 10_000 + step)
            score, score_sampled = float(greedy.mean()), float(sampled.mean())
            loop.eval_seconds += time.perf_counter() - started
            loop.next_eval = (step // eval_every + 1) * eval_every
            scores = {"eval_return": score, "eval_return_sampled": score_sampled}
            stop = after_evaluation(run, loop, step, scores, agent.net, threshold)
        if step - loop.last_logged >= log_every or evaluated or stop:
            row = {
                "step": step,
                "episodes": len(loop.episodes),
                "return": float(np.mean(recent)) if recent else math.nan,
                "length": float(np.mean([ln for _, ln in loop.episodes[-100:]])) if loop.episodes else math.nan,
                **{k: float(np.mean(v)) if v else math.nan for k, v in loop.window.items()},
                "eval_return": score if evaluated else math.nan,
                "eval_return_sampled": score_sampled if evaluated else math.nan,
            }
            rows.log(row, evaluated)
            loop.window = {k: [] for k in loop.window}
            bar.update(task, completed=min(step, total_steps), info=f"return {row['return']:.1f}", refresh=True)
            if evaluated and not stop:
                log.info(
                    f"step {step}: eval return {score:.1f} greedy, {score_sampled:.1f} sampled "
                    f"(best {loop.best_eval:.1f}), train return {row['return']:.1f}, "
                    f"{row['steps_per_s']:.0f} steps/s"
                )
                save()
        if stop:  # the rows so far stay; the checkpoint stays the last finite one
            break
        run.stop_point(save)
    record.write_metrics()


def _figures(loop: Loop, env: EnvSpec, threshold, run: Run) -> dict:
    wall = run.wall_time
    return {
        **episode_figures(loop, env, threshold, wall),
        "solved_step_sampled": loop.solved_step_sampled,
        "train_steps_per_s": loop.step / max(wall - loop.eval_seconds, 1e-9),
    }
