"""DQN, Double DQN and Dueling DQN: the agent (``agent.*``) and its environment loop.

Targets: ``y = r + gamma * (1 - terminated) * Q_target(s', a*)`` with
``a* = argmax_a Q_target(s', a)`` (DQN) or ``argmax_a Q_online(s', a)`` (Double DQN).
A time-limit truncation is not a termination: its target still bootstraps. With ``env.clip_rewards``
the replay holds sign(r) (Mnih et al. 2015), while the logged returns stay the game's own; with
``env.episodic_life`` a lost life is a termination for the target, but a logged episode is a whole game.

Every environment step is a safe point: SIGINT/SIGTERM there write a checkpoint with the
agent, the replay buffer, the environments' own state and the loop's, and a resumed run
continues to the same result (environments whose state lives outside Python, such as Atari's
emulator, restart their episodes from a reset instead).

A non-finite loss, Q-value or return (or weights, before an evaluation) ends the run as ``diverged`` at
its next row, as the training engine does: the rows stay, the checkpoint and ``best.pt`` stay finite.
"""

from __future__ import annotations

import copy
import inspect
import json
import logging
import math
from collections import deque
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from nas_cli.agents.envs import EnvSpec, episode_figures, game_over, greedy_returns, start_episodes
from nas_cli.agents.loop import Rows, after_evaluation, diverged, finished, load_weights
from nas_cli.agents.networks import NumpyGreedy, QNetwork
from nas_cli.agents.replay import Batch, ReplayBuffer
from nas_cli.engine.progress import TrainingProgress
from nas_cli.engine.schedules import Schedule
from nas_cli.errors import UserError
from nas_cli.runs import checkpoint
from nas_cli.runs.lifecycle import Run

log = logging.getLogger(__name__)
LOSSES = {"mse": F.mse_loss, "huber": F.smooth_l1_loss}
HEADLINE = ["best_eval_return", "train_return_last100", "solved_step"]


def td_loss(
    q_net: nn.Module, target_net: nn.Module, batch: Batch, gamma: float, double: bool, loss: str = "mse"
) -> tuple[torch.Tensor, torch.Tensor]:
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

    def state_dict(self) -> dict:
        block = (
            {}
            if self.i == self.shape[0]
            else {"uniform": torch.from_numpy(self.uniform), "actions": torch.from_numpy(self.actions)}
        )
        return {"rng": json.dumps(self.rng.bit_generator.state), "i": self.i, **block}

    def load_state_dict(self, state: dict) -> None:
        self.rng.bit_generator.state = json.loads(state["rng"])
        self.i = int(state["i"])
        if "uniform" in state:
            self.uniform, self.actions = state["uniform"].numpy(), state["actions"].numpy()


class DQN:
    """Agent hyperparameters; ``build`` makes the networks once the environment's shapes are known.

    The weights' optimizer comes from the ``optim`` group (``build(..., optimizer=...)``), as in
    every command that trains weights.

    Args:
        double: Double DQN targets.
        dueling: a dueling head, ``aggregation`` mean or max; ``dueling_rescale`` scales the gradient the
            two streams send into the shared trunk by 1/sqrt(2) (Wang et al. 2016).
        hidden: hidden layer sizes after the observation (after the convolutions for images; the last one
            is the dueling streams' width). Nature DQN: [512].
        gamma: discount.
        buffer_size: replay capacity (transitions).  batch_size: transitions per gradient step.
        learning_starts: environment steps before the first update.
        train_frequency: environment steps between updates; gradient_steps: updates each time.
        target_update: environment steps between target updates; ``tau`` 1.0 copies, < 1 is Polyak averaging.
        start_epsilon, end_epsilon, exploration_fraction: epsilon falls linearly over that fraction of the run.
        loss: mse or huber (Huber with delta 1 is the Nature DQN's clipping of the TD error to [-1, 1]).
        grad_clip: clip the gradient norm (null: off).
    """

    def __init__(
        self,
        double: bool = False,
        dueling: bool = False,
        aggregation: str = "mean",
        hidden: Sequence[int] = (256, 256),
        gamma: float = 0.99,
        buffer_size: int = 100_000,
        batch_size: int = 64,
        learning_starts: int = 1000,
        train_frequency: int = 256,
        gradient_steps: int = 128,
        target_update: int = 10,
        tau: float = 1.0,
        start_epsilon: float = 1.0,
        end_epsilon: float = 0.04,
        exploration_fraction: float = 0.16,
        loss: str = "mse",
        grad_clip: float | None = 10.0,
        dueling_rescale: bool = False,
    ):
        self.double, self.dueling, self.aggregation, self.hidden = double, dueling, aggregation, list(hidden)
        self.dueling_rescale = dueling_rescale
        self.gamma, self.buffer_size, self.batch_size = gamma, int(buffer_size), int(batch_size)
        self.learning_starts, self.train_frequency = int(learning_starts), int(train_frequency)
        self.gradient_steps, self.target_update, self.tau = int(gradient_steps), int(target_update), float(tau)
        self.start_epsilon, self.end_epsilon = start_epsilon, end_epsilon
        self.exploration_fraction, self.loss, self.grad_clip = exploration_fraction, loss, grad_clip
        if loss not in LOSSES:  # checked here, not minutes later at the first update
            raise UserError(f"agent.loss={loss}: use mse or huber")

    def build(
        self,
        obs_shape: tuple[int, ...],
        num_actions: int,
        device: torch.device,
        optimizer: Callable[..., torch.optim.Optimizer] = torch.optim.Adam,
    ) -> DQN:
        """The networks and ``optimizer(params)`` (a partial of the ``optim`` group, say)."""
        self.device = device
        self.q = QNetwork(obs_shape, num_actions, self.hidden, self.dueling, self.aggregation, self.dueling_rescale).to(
            device
        )
        self.target = copy.deepcopy(self.q).requires_grad_(False)
        # fused where the optimizer has it: one kernel for all parameters instead of a dozen small ops each
        # (3x faster for Adam here)
        kind = getattr(optimizer, "func", optimizer)
        if isinstance(kind, type) and issubclass(kind, torch.optim.LBFGS):
            raise UserError("optim=lbfgs needs a fixed data set to re-evaluate: dqn takes adam, sgd, rmsprop, ...")
        fused = "fused" in inspect.signature(kind).parameters
        self.optimizer = optimizer(self.q.parameters(), **({"fused": True} if fused else {}))
        self.scheduler: torch.optim.lr_scheduler.LRScheduler | None = None
        self.params: list[torch.Tensor] = list(self.q.parameters())
        self.target_params: list[torch.Tensor] = list(self.target.parameters())
        self.greedy = NumpyGreedy.of(self.q) or self._torch_greedy
        return self

    def load_player(
        self, path: Path, env: EnvSpec, device: torch.device, episodes: int, epsilon: float = 0.0
    ) -> Callable[[int], dict]:
        """``mode=eval``: the Q-network saved at ``path`` (``best.pt`` or a checkpoint), as ``play(seed)``:
        ``episodes`` greedy (``epsilon``-greedy) games."""
        envs = env.make(num_envs=1, asynchronous=False)
        self.build(envs.single_observation_space.shape, int(envs.single_action_space.n), device)
        envs.close()
        load_weights(self.q, checkpoint.load(path, map_location=device), "q", path)
        return lambda seed: {"eval_return": greedy_returns(self.q.eval(), env, episodes, seed, device, epsilon)}

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

    def update(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        loss, q = td_loss(self.q, self.target, batch, self.gamma, self.double, self.loss)
        for p in self.params:  # Optimizer.zero_grad costs more than this loop on small nets
            p.grad = None
        loss.backward()
        if self.grad_clip:
            nn.utils.clip_grad_norm_(self.params, self.grad_clip, foreach=True)
        self.optimizer.step()
        if self.scheduler is not None:
            self.scheduler.step()
        return loss.detach(), q.detach().mean()

    @torch.no_grad()
    def update_target(self) -> None:
        if self.tau >= 1.0:
            torch._foreach_copy_(self.target_params, self.params)
        else:
            torch._foreach_lerp_(self.target_params, self.params, self.tau)

    def state_dict(self) -> dict:
        return {
            "q": self.q.state_dict(),
            "target": self.target.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict() if self.scheduler is not None else None,
        }

    def load_state_dict(self, state: dict) -> None:
        self.q.load_state_dict(state["q"])
        self.target.load_state_dict(state["target"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.scheduler is not None and state.get("scheduler"):
            self.scheduler.load_state_dict(state["scheduler"])

    def schedule(self, schedule: Schedule | None, total_steps: int) -> None:
        """An lr schedule over the run's gradient updates (``sched=none``: constant, no scheduler)."""
        if schedule is None or (type(schedule) is Schedule and not schedule.warmup_epochs):
            return
        updates = max(1, (total_steps - self.learning_starts) // self.train_frequency * self.gradient_steps)
        self.scheduler = schedule.build(self.optimizer, updates, 1)  # the whole run is one "epoch"


class Loop:
    """What the environment loop carries from one step to the next; all of it goes into a checkpoint."""

    def __init__(self, num_envs: int):
        self.step = 0
        self.episodes: list[tuple[float, int]] = []  # (return, length) of every finished episode
        self.best_eval, self.best_step, self.solved_step = -math.inf, None, None
        self.obs: np.ndarray | None = None
        self.ended = np.zeros(num_envs, dtype=bool)  # the env's next step is an autoreset, not a transition
        self.ep_return, self.ep_length = np.zeros(num_envs), np.zeros(num_envs, dtype=int)
        self.losses: list[torch.Tensor] = []  # the current log window's updates
        self.q: list[torch.Tensor] = []
        self.last_logged = 0

    def start_episodes(self, obs: np.ndarray) -> None:
        self.obs = obs
        self.ended[:], self.ep_return[:], self.ep_length[:] = False, 0.0, 0

    def state_dict(self) -> dict:
        assert self.obs is not None  # start_episodes has set it before any checkpoint
        return {
            "step": self.step,
            "episodes": self.episodes,
            "best_eval": self.best_eval,
            "best_step": self.best_step,
            "solved_step": self.solved_step,
            "obs": torch.from_numpy(self.obs.copy()),
            "ended": torch.from_numpy(self.ended.copy()),
            "ep_return": torch.from_numpy(self.ep_return.copy()),
            "ep_length": torch.from_numpy(self.ep_length.copy()),
            "losses": [float(v) for v in self.losses],
            "q": [float(v) for v in self.q],
            "last_logged": self.last_logged,
        }

    def load_state_dict(self, state: dict, device: torch.device) -> None:
        self.step, self.episodes = int(state["step"]), [tuple(e) for e in state["episodes"]]
        self.best_eval, self.best_step, self.solved_step = state["best_eval"], state["best_step"], state["solved_step"]
        self.obs, self.ended = state["obs"].numpy(), state["ended"].numpy()
        self.ep_return, self.ep_length = state["ep_return"].numpy(), state["ep_length"].numpy()
        self.losses = [torch.tensor(v, device=device) for v in state["losses"]]  # where the updates put theirs
        self.q = [torch.tensor(v, device=device) for v in state["q"]]
        self.last_logged = int(state["last_logged"])


def train(
    agent: DQN,
    env: EnvSpec,
    run: Run,
    *,
    total_steps: int,
    eval_every: int,
    eval_episodes: int,
    log_every: int,
    optimizer: Callable[..., torch.optim.Optimizer] = torch.optim.Adam,
    schedule: Schedule | None = None,
    progress: bool = True,
    eval_epsilon: float = 0.0,
) -> dict:
    """The environment loop in ``run``: act, store, learn, evaluate greedily, record, checkpoint."""
    done = run.finished()
    if done is not None:
        return done
    envs = env.make()
    obs_shape, num_actions = envs.single_observation_space.shape, int(envs.single_action_space.n)
    assert run.seed is not None  # RunOptions.run gives every run it opens a seed
    threshold, device, seed, n = env.solved_at(), run.device, int(run.seed), env.num_envs
    agent.build(obs_shape, num_actions, device, optimizer)
    agent.schedule(schedule, total_steps)
    frames = envs.single_observation_space.dtype == np.uint8  # images stay uint8 in the replay: 4x less memory
    replay = ReplayBuffer(
        agent.buffer_size, obs_shape, torch.uint8 if frames else torch.float32, device, frame_stack=env.frame_stack > 1
    )
    draws = RandomDraws(np.random.default_rng(seed), n, num_actions)
    sampler = torch.Generator().manual_seed(seed)
    record, loop = run.record, Loop(n)
    try:
        saved = run.load_checkpoint()  # on the CPU: the loop's arrays go back to numpy, the nets copy what they need
        if saved is not None:
            agent.load_state_dict(saved["agent"])
            replay.load_state_dict(saved["replay"])
            loop.load_state_dict(saved["loop"], device)
            draws.load_state_dict(saved["draws"])
            sampler.set_state(saved["sampler"])
            record.write_metrics()
        start_episodes(envs, loop, seed, saved)
        run.figures = lambda: _figures(loop, env, threshold, run)
        with run, TrainingProgress(progress) as bar:
            _steps(
                agent,
                envs,
                env,
                run,
                loop,
                replay,
                draws,
                sampler,
                bar,
                threshold,
                total_steps=total_steps,
                eval_every=eval_every,
                eval_episodes=eval_episodes,
                log_every=log_every,
                eval_epsilon=eval_epsilon,
            )
    finally:
        envs.close()
    return finished(run)


def _steps(
    agent: DQN,
    envs,
    env: EnvSpec,
    run: Run,
    loop: Loop,
    replay: ReplayBuffer,
    draws: RandomDraws,
    sampler: torch.Generator,
    bar,
    threshold,
    *,
    total_steps: int,
    eval_every: int,
    eval_episodes: int,
    log_every: int,
    eval_epsilon: float = 0.0,
) -> None:
    assert run.seed is not None  # RunOptions.run gives every run it opens a seed
    record, device, seed, n = run.record, run.device, int(run.seed), env.num_envs
    recent = deque((r for r, _ in loop.episodes[-100:]), maxlen=100)

    def save() -> None:
        record.write_metrics()
        run.save_checkpoint(
            {
                "agent": agent.state_dict(),
                "replay": replay.state_dict(),
                "loop": loop.state_dict(),
                "envs": getattr(envs, "state_dict", lambda: None)(),
                "draws": draws.state_dict(),
                "sampler": sampler.get_state(),
            }
        )

    task = bar.add_task("steps", total=total_steps, completed=loop.step, info="")
    rows = Rows(run, loop)
    assert loop.obs is not None  # start_episodes has set it
    while loop.step < total_steps:
        epsilon = agent.epsilon(loop.step, total_steps)
        actions = agent.act(loop.obs, epsilon, draws)
        next_obs, rewards, terminated, truncated, info = envs.step(actions)
        valid = ~loop.ended
        stored = np.sign(rewards) if env.clip_rewards else rewards  # the replay learns from sign(r)...
        if valid.all():
            replay.add(loop.obs, actions, stored, next_obs, terminated, truncated)
        elif valid.any():
            replay.add(
                loop.obs[valid], actions[valid], stored[valid], next_obs[valid], terminated[valid], truncated[valid]
            )
        loop.ep_return += rewards * valid  # ...the record keeps the game's score
        loop.ep_length += valid
        loop.ended = terminated | truncated
        if loop.ended.any():
            for i in np.flatnonzero(game_over(terminated, truncated, info) & valid):  # a whole game, not a life
                loop.episodes.append((float(loop.ep_return[i]), int(loop.ep_length[i])))
                recent.append(float(loop.ep_return[i]))
                loop.ep_return[i], loop.ep_length[i] = 0.0, 0
        loop.obs = next_obs
        loop.step = step = loop.step + n
        if step > agent.learning_starts and step % agent.train_frequency < n:
            for _ in range(agent.gradient_steps):
                loss, q = agent.update(replay.sample(agent.batch_size, sampler))
                loop.losses.append(loss)
                loop.q.append(q)
        if step % agent.target_update < n:
            agent.update_target()
        evaluated = step % eval_every < n
        if step - loop.last_logged >= log_every or evaluated or step >= total_steps:
            loss_mean = torch.stack(loop.losses).mean().item() if loop.losses else None
            q_mean = torch.stack(loop.q).mean().item() if loop.q else None
            train_return = float(np.mean(recent)) if recent else None
            stop = diverged(
                run,
                f"step {step}",
                {"loss": loss_mean, "q_mean": q_mean, "return": train_return},
                agent.params if evaluated else None,
            )
            evaluated = evaluated and not stop
            if evaluated:
                score = float(
                    greedy_returns(agent.q, env, eval_episodes, seed + 10_000 + step, device, eval_epsilon).mean()
                )
                stop = after_evaluation(run, loop, step, {"eval_return": score}, agent.q, threshold)
            row = {
                "step": step,
                "episodes": len(loop.episodes),
                "return": math.nan if train_return is None else train_return,
                "length": float(np.mean([ln for _, ln in loop.episodes[-100:]])) if loop.episodes else math.nan,
                "loss": math.nan if loss_mean is None else loss_mean,
                "q_mean": math.nan if q_mean is None else q_mean,
                "epsilon": epsilon,
                "eval_return": score if evaluated else math.nan,
            }
            rows.log(row, evaluated)
            loop.losses, loop.q = [], []
            bar.update(task, completed=step, info=f"return {row['return']:.1f}", refresh=True)
            if stop:  # the rows so far stay; the checkpoint stays the last finite one
                break
            if evaluated:
                log.info(
                    f"step {step}: eval return {score:.1f} (best {loop.best_eval:.1f}), "
                    f"train return {row['return']:.1f}, epsilon {epsilon:.3f}, "
                    f"{row['steps_per_s']:.0f} steps/s"
                )
                save()
        run.stop_point(save)
    record.write_metrics()


def _figures(loop: Loop, env: EnvSpec, threshold, run: Run) -> dict:
    return episode_figures(loop, env, threshold, run.wall_time)
