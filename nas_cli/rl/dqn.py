"""DQN, Double DQN and Dueling DQN: the agent (``agent.*``) and its environment loop.

Targets: ``y = r + gamma * (1 - terminated) * Q_target(s', a*)`` with
``a* = argmax_a Q_target(s', a)`` (DQN) or ``argmax_a Q_online(s', a)`` (Double DQN).
A time-limit truncation is not a termination: its target still bootstraps.
"""

from __future__ import annotations

import copy
import logging
import math
import time
from collections import deque
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from nas_cli.engine import checkpoint
from nas_cli.engine.progress import TrainingProgress
from nas_cli.engine.resume import CHECKPOINT
from nas_cli.errors import UserError
from nas_cli.record import RunRecord, run_cost
from nas_cli.rl.envs import greedy_returns, make_envs, reward_threshold
from nas_cli.rl.networks import NumpyGreedy, QNetwork
from nas_cli.rl.replay import Batch, ReplayBuffer

log = logging.getLogger(__name__)
LOSSES = {"mse": F.mse_loss, "huber": F.smooth_l1_loss}
BEST = "best.pt"


def td_loss(q_net: nn.Module, target_net: nn.Module, batch: Batch, gamma: float, double: bool,
            loss: str = "mse") -> tuple[torch.Tensor, torch.Tensor]:
    """The TD loss on ``batch`` and the Q-values of the actions taken."""
    with torch.no_grad():
        next_q = target_net(batch.next_obs)
        if double:  # the online net picks, the target net evaluates: less over-estimation
            best = q_net(batch.next_obs).argmax(1, keepdim=True)
            next_value = next_q.gather(1, best).squeeze(1)
        else:
            next_value = next_q.amax(1)
        target = torch.add(batch.rewards, next_value.masked_fill_(batch.terminated, 0.0), alpha=gamma)
    q = q_net(batch.obs).gather(1, batch.actions.unsqueeze(1)).squeeze(1)
    return LOSSES[loss](q, target), q


class RandomDraws:
    """Exploration's coin flips and random actions, drawn from ``rng`` a block of steps at a time.

    Two numpy calls per environment step cost more than the greedy forward pass of a small
    Q-network; one call per ``block`` steps costs nothing.
    """

    def __init__(self, rng: np.random.Generator, num_envs: int, num_actions: int, block: int = 4096):
        self.rng, self.shape, self.num_actions, self.i = rng, (block, num_envs), num_actions, block

    def next(self) -> tuple[np.ndarray, np.ndarray]:
        if self.i == self.shape[0]:
            self.uniform = self.rng.random(self.shape)
            self.actions = self.rng.integers(0, self.num_actions, self.shape)
            self.i = 0
        self.i += 1
        return self.uniform[self.i - 1], self.actions[self.i - 1]


class DQN:
    """Agent hyperparameters; ``build`` makes the networks once the environment's shapes are known.

    Args:
        double: Double DQN targets.
        dueling: a dueling head, ``aggregation`` mean or max.
        hidden: hidden layer sizes of the MLP (the last one is the dueling streams' width).
        lr: Adam learning rate.  gamma: discount.
        buffer_size: replay capacity (transitions).  batch_size: transitions per gradient step.
        learning_starts: environment steps before the first update.
        train_frequency: environment steps between updates; gradient_steps: updates each time.
        target_update: environment steps between target updates; ``tau`` 1.0 copies, < 1 is Polyak averaging.
        start_epsilon, end_epsilon, exploration_fraction: epsilon falls linearly over that fraction of the run.
        loss: mse or huber.  max_grad_norm: clip the gradient norm (null: off).
    """

    def __init__(self, double: bool = False, dueling: bool = False, aggregation: str = "mean",
                 hidden: list[int] = (256, 256), lr: float = 2.3e-3, gamma: float = 0.99, buffer_size: int = 100_000,
                 batch_size: int = 64, learning_starts: int = 1000, train_frequency: int = 256,
                 gradient_steps: int = 128, target_update: int = 10, tau: float = 1.0, start_epsilon: float = 1.0,
                 end_epsilon: float = 0.04, exploration_fraction: float = 0.16, loss: str = "mse",
                 max_grad_norm: float | None = 10.0):
        self.double, self.dueling, self.aggregation, self.hidden = double, dueling, aggregation, list(hidden)
        self.lr, self.gamma, self.buffer_size, self.batch_size = lr, gamma, int(buffer_size), int(batch_size)
        self.learning_starts, self.train_frequency = int(learning_starts), int(train_frequency)
        self.gradient_steps, self.target_update, self.tau = int(gradient_steps), int(target_update), float(tau)
        self.start_epsilon, self.end_epsilon = start_epsilon, end_epsilon
        self.exploration_fraction, self.loss, self.max_grad_norm = exploration_fraction, loss, max_grad_norm
        if loss not in LOSSES:  # checked here, not minutes later at the first update
            raise UserError(f"agent.loss={loss}: use mse or huber")

    def build(self, obs_shape: tuple[int, ...], num_actions: int, device: torch.device) -> DQN:
        self.device = device
        self.q = QNetwork(obs_shape, num_actions, self.hidden, self.dueling, self.aggregation).to(device)
        self.target = copy.deepcopy(self.q).requires_grad_(False)
        # fused: one kernel for all parameters instead of a dozen small ops each (3x faster here)
        self.optimizer = torch.optim.Adam(self.q.parameters(), lr=self.lr, fused=True)
        self.params, self.target_params = list(self.q.parameters()), list(self.target.parameters())
        self.greedy = NumpyGreedy.of(self.q) or self._torch_greedy
        return self

    def epsilon(self, step: int, total_steps: int) -> float:
        span = max(1.0, self.exploration_fraction * total_steps)
        return max(self.end_epsilon, self.start_epsilon + (self.end_epsilon - self.start_epsilon) * step / span)

    @torch.inference_mode()
    def _torch_greedy(self, obs: np.ndarray) -> np.ndarray:
        return self.q(torch.as_tensor(obs, device=self.device)).argmax(1).cpu().numpy()

    def act(self, obs: np.ndarray, epsilon: float, draws: RandomDraws) -> np.ndarray:
        uniform, actions = draws.next()
        explore = uniform < epsilon
        if explore.all():  # no forward pass while every action is random
            return actions
        greedy = self.greedy(obs)
        return np.where(explore, actions, greedy) if explore.any() else greedy

    def update(self, batch: Batch) -> tuple[float, float]:
        loss, q = td_loss(self.q, self.target, batch, self.gamma, self.double, self.loss)
        for p in self.params:  # Optimizer.zero_grad costs more than this loop on small nets
            p.grad = None
        loss.backward()
        if self.max_grad_norm:
            nn.utils.clip_grad_norm_(self.params, self.max_grad_norm, foreach=True)
        self.optimizer.step()
        return loss.detach(), q.detach().mean()

    @torch.no_grad()
    def update_target(self) -> None:
        if self.tau >= 1.0:
            torch._foreach_copy_(self.target_params, self.params)
        else:
            torch._foreach_lerp_(self.target_params, self.params, self.tau)

    def state_dict(self) -> dict:
        return {"q": self.q.state_dict(), "target": self.target.state_dict(), "optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.q.load_state_dict(state["q"])
        self.target.load_state_dict(state["target"])
        self.optimizer.load_state_dict(state["optimizer"])


def train(agent: DQN, env_cfg, run_dir: Path, *, total_steps: int, seed: int, device: torch.device,
          eval_every: int, eval_episodes: int, log_every: int, resume_from: Path | None = None,
          progress: bool = True) -> dict:
    """The environment loop: act, store, learn, evaluate greedily, record, checkpoint."""
    envs = make_envs(env_cfg.id, env_cfg.num_envs, env_cfg.atari, env_cfg.asynchronous)
    obs_shape, num_actions = envs.single_observation_space.shape, int(envs.single_action_space.n)
    threshold = env_cfg.threshold if env_cfg.threshold is not None else reward_threshold(env_cfg.id)
    agent.build(obs_shape, num_actions, device)
    replay = ReplayBuffer(agent.buffer_size, obs_shape, torch.uint8 if env_cfg.atari else torch.float32, device)
    draws = RandomDraws(np.random.default_rng(seed), env_cfg.num_envs, num_actions)
    sampler = torch.Generator().manual_seed(seed)
    record = RunRecord(run_dir)
    state = {"step": 0, "episodes": [], "best_eval": -math.inf, "best_step": None, "solved_step": None,
             "wall": 0.0}
    if resume_from is not None:
        saved = checkpoint.load(resume_from, map_location=device)
        agent.load_state_dict(saved["agent"])
        replay.load_state_dict(saved["replay"])
        state = saved["state"]
        record.rows = list(saved["history"])
        record.write_metrics()
        log.info(f"resumed at step {state['step']} (episodes restart from a reset)")

    obs, _ = envs.reset(seed=seed + state["step"])
    n = env_cfg.num_envs
    ended = np.zeros(n, dtype=bool)  # the env's next step is an autoreset, not a transition
    ep_return, ep_length = np.zeros(n), np.zeros(n, dtype=int)
    window_losses, window_q, recent = [], [], deque((r for r, _ in state["episodes"][-100:]), maxlen=100)
    start = tick = last_write = time.perf_counter()
    last_logged = state["step"]
    status = "ok"
    bar = TrainingProgress(progress)
    try:
        with bar:
            task = bar.add_task("steps", total=total_steps, completed=state["step"], info="")
            while state["step"] < total_steps:
                step = state["step"]
                epsilon = agent.epsilon(step, total_steps)
                actions = agent.act(obs, epsilon, draws)
                next_obs, rewards, terminated, truncated, _ = envs.step(actions)
                valid = ~ended
                if valid.all():
                    replay.add(obs, actions, rewards, next_obs, terminated, truncated)
                elif valid.any():
                    replay.add(obs[valid], actions[valid], rewards[valid], next_obs[valid], terminated[valid],
                               truncated[valid])
                ep_return += rewards * valid
                ep_length += valid
                ended = terminated | truncated
                for i in np.flatnonzero(ended & valid):
                    state["episodes"].append((float(ep_return[i]), int(ep_length[i])))
                    recent.append(float(ep_return[i]))
                    ep_return[i], ep_length[i] = 0.0, 0
                obs = next_obs
                state["step"] = step = step + n
                if step > agent.learning_starts and step % agent.train_frequency < n:
                    for _ in range(agent.gradient_steps):
                        loss, q = agent.update(replay.sample(agent.batch_size, sampler))
                        window_losses.append(loss)
                        window_q.append(q)
                if step % agent.target_update < n:
                    agent.update_target()
                evaluated = step % eval_every < n
                if evaluated:
                    score = float(greedy_returns(agent.q, env_cfg.id, eval_episodes, seed + 10_000 + step,
                                                 env_cfg.atari, device).mean())
                    if score > state["best_eval"]:
                        state["best_eval"], state["best_step"] = score, step
                        checkpoint.save(run_dir / BEST, {"model": agent.q.state_dict()})
                    if state["solved_step"] is None and threshold is not None and score >= threshold:
                        state["solved_step"] = step
                if step - last_logged >= log_every or evaluated or step >= total_steps:
                    now = time.perf_counter()
                    row = {"step": step, "episodes": len(state["episodes"]),
                           "return": float(np.mean(recent)) if recent else math.nan,
                           "length": float(np.mean([ln for _, ln in state["episodes"][-100:]]))
                           if state["episodes"] else math.nan,
                           "loss": torch.stack(window_losses).mean().item() if window_losses else math.nan,
                           "q_mean": torch.stack(window_q).mean().item() if window_q else math.nan,
                           "epsilon": epsilon, "eval_return": score if evaluated else math.nan,
                           "steps_per_s": (step - last_logged) / max(now - tick, 1e-9)}
                    # the table is rewritten whole (atomically): at evaluations and every 10 s, not every row
                    write = evaluated or now - last_write > 10.0
                    record.log(row, write=write)
                    last_write = now if write else last_write
                    window_losses, window_q, tick, last_logged = [], [], now, step
                    bar.update(task, completed=step, info=f"return {row['return']:.1f}", refresh=True)
                    if evaluated:
                        log.info(f"step {step}: eval return {score:.1f} (best {state['best_eval']:.1f}), "
                                 f"train return {row['return']:.1f}, epsilon {epsilon:.3f}, "
                                 f"{row['steps_per_s']:.0f} steps/s")
                        state["wall"] += now - start
                        start = now
                        checkpoint.save(run_dir / CHECKPOINT, {
                            "agent": agent.state_dict(), "replay": replay.state_dict(), "state": state,
                            "history": record.rows})
    except KeyboardInterrupt:
        status = "interrupted"
        raise
    finally:
        envs.close()
        record.write_metrics()
        wall = state["wall"] + time.perf_counter() - start
        summary = {
            "status": status, "env": env_cfg.id, "steps": state["step"], "episodes": len(state["episodes"]),
            "train_return_last100": float(np.mean(recent)) if recent else None,
            "best_eval_return": state["best_eval"] if state["best_step"] is not None else None,
            "best_eval_step": state["best_step"], "threshold": threshold, "solved_step": state["solved_step"],
            "steps_per_s": state["step"] / max(wall, 1e-9), **run_cost(wall, device, seed),
        }
        record.write_summary(summary)
    return summary
