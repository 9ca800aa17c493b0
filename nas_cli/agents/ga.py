"""A genetic algorithm over policy weights: deep neuroevolution (Such et al. 2017, "Deep Neuroevolution:
Genetic Algorithms are a Competitive Alternative for Training Deep Neural Networks for Reinforcement
Learning", arXiv:1712.06567; reference code uber-research/deep-neuroevolution, ``gpu_implementation/ga.py``).

A generation: every member of the population (flat MLP weight vectors, ``population.py``) plays
``episodes`` episodes, its fitness the mean return. The ``truncation`` best are the parents. The elite
is chosen among the ``elite_candidates`` best (and the previous elite), re-evaluated on
``elite_episodes`` fresh episodes each, so that a lucky evaluation does not crown it. The parents are
the elite and the ``truncation - 1`` fittest other members (the paper's Algorithm 1 puts the elite at
the head of the sorted population, ``P <- [Elite, P - {Elite}]``, and takes its first T; the reference code
takes the first T when the elite is among them, else the elite and the first T-1: the same T distinct
parents). The next generation is the elite, unchanged, and ``population - 1`` children
``w + sigma * eps`` (eps ~ N(0, I)) of parents drawn uniformly; no crossover unless ``crossover > 0``
(uniform crossover of two parents before the mutation).

The elite's selection score is the best of ``elite_candidates`` means, biased upward; what a generation
reports (``elite_test_return``, and from it ``best_eval_return`` and ``solved_generation``) is the elite's
mean return over ``test_episodes`` further episodes on seeds of their own, as the reference code's
``num_test_episodes`` (200) evaluation of the chosen elite. Those episodes measure, they do not select:
like the reference code's ``TimestepsSoFar`` they are not counted in ``evaluations`` or ``env_steps``.

Paper and reference code differ on the elite: the paper keeps it unchanged as a member of the next
generation (``elite_in_population=true``, the default: the one the paper describes); the reference GPU
code makes all ``population`` members children and keeps the elite as one of the parents and a
candidate of the next elite selection (``elite_in_population=false``). Either way the elite is a parent,
once, and each of the T parents has a share 1/T of the children.

Every generation ends at a safe point: the checkpoint holds the next population, the elite, the
generator's state and the counters; environment seeds are a function of (seed, generation), so a
resumed run continues to the same metrics as an uninterrupted one. A non-finite return, or a mutation
that leaves weights past float range, ends the run after that generation's row as ``diverged``.
"""

from __future__ import annotations

import logging
import math
import multiprocessing
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import torch

from nas_cli.agents import population as pop
from nas_cli.agents.envs import EnvSpec, greedy_returns
from nas_cli.agents.loop import diverged, load_weights
from nas_cli.agents.plots import fitness_plot
from nas_cli.engine.progress import TrainingProgress
from nas_cli.errors import UserError
from nas_cli.runs import checkpoint, signals
from nas_cli.runs.files import BEST
from nas_cli.runs.lifecycle import Run

log = logging.getLogger(__name__)
HEADLINE = ["best_eval_return", "solved_generation", "solved_steps"]
FITNESS_PLOT = "fitness.png"
POPULATION, ELITE, TEST = 0, 1, 2  # the three kinds of evaluation of a generation (they take distinct seeds)


class GA:
    """Hyperparameters of the genetic algorithm (``agent.*`` in conf/ga.yaml).

    Args:
        population: members per generation (N).
        truncation: the best T members are the parents.
        sigma: standard deviation of the Gaussian mutation added to every weight.
        sigma_decay: sigma is multiplied by this after every generation (1.0: constant, as in the paper),
            down to ``sigma_min``.
        episodes: episodes each member plays; its fitness is their mean return.
        elite_candidates: how many of the best are re-evaluated to pick the elite (0: the best by fitness).
        elite_episodes: episodes of that re-evaluation, each candidate.
        elite_in_population: the elite joins the next generation unchanged (paper) or only its parents
            (reference GPU code).
        test_episodes: episodes of the elite's separate evaluation, the reported return (reference: 200).
        crossover: probability that a child is the uniform crossover of two parents (before mutation).
        hidden: hidden layer sizes of the MLP policy (the ``QNetwork`` of ``nas-cli dqn``).
        backend: auto | numpy | python: how the P x E environments are stepped (``population.Episodes``).
    """

    def __init__(
        self,
        population: int = 256,
        truncation: int = 20,
        sigma: float = 0.1,
        sigma_decay: float = 1.0,
        sigma_min: float = 0.0,
        episodes: int = 5,
        elite_candidates: int = 10,
        elite_episodes: int = 30,
        elite_in_population: bool = True,
        crossover: float = 0.0,
        hidden: Sequence[int] = (64,),
        backend: str = "auto",
        test_episodes: int = 200,
    ):
        self.population, self.truncation, self.episodes = int(population), int(truncation), int(episodes)
        self.sigma, self.sigma_decay, self.sigma_min = float(sigma), float(sigma_decay), float(sigma_min)
        # at most the whole population (a small test population keeps the default 10)
        self.elite_candidates = min(int(elite_candidates), self.population)
        self.elite_episodes, self.test_episodes = int(elite_episodes), int(test_episodes)
        self.elite_in_population, self.crossover = bool(elite_in_population), float(crossover)
        self.hidden, self.backend = list(hidden), backend
        self._check()

    def load_player(self, path: Path, env: EnvSpec, device: torch.device, episodes: int) -> Callable[[int], dict]:
        """``mode=eval``: the individual saved at ``path`` (a run's ``best.pt``), as ``play(seed)``:
        ``episodes`` greedy games."""
        state = checkpoint.load(path, map_location="cpu")
        net = pop.PolicyLayout(*pop.check_env(env), state.get("hidden", self.hidden)).network()
        load_weights(net, state, "model", path)
        net = net.to(device).eval()
        return lambda seed: {"eval_return": greedy_returns(net, env, episodes, seed, device)}

    def _check(self) -> None:
        if self.population < 2:
            raise UserError(f"agent.population={self.population}: use 2 or more")
        if not 1 <= self.truncation <= self.population:
            raise UserError(f"agent.truncation={self.truncation}: use 1 to agent.population ({self.population})")
        if self.sigma <= 0 or not 0 < self.sigma_decay <= 1 or self.sigma_min < 0:
            raise UserError(
                f"agent.sigma={self.sigma}, sigma_decay={self.sigma_decay}, sigma_min={self.sigma_min}:"
                f" use sigma > 0, 0 < sigma_decay <= 1, sigma_min >= 0"
            )
        if self.episodes < 1 or self.elite_candidates < 0:
            raise UserError(
                f"agent.episodes={self.episodes}, elite_candidates={self.elite_candidates}: use "
                f"episodes >= 1 and elite_candidates >= 0"
            )
        if self.elite_candidates and self.elite_episodes < 1:
            raise UserError(f"agent.elite_episodes={self.elite_episodes}: use 1 or more (or elite_candidates=0)")
        if self.test_episodes < 1:
            raise UserError(f"agent.test_episodes={self.test_episodes}: use 1 or more")
        if not 0 <= self.crossover <= 1:
            raise UserError(f"agent.crossover={self.crossover}: a probability, 0 to 1")
        if self.backend not in pop.BACKENDS:
            raise UserError(f"agent.backend={self.backend}: use {', '.join(pop.BACKENDS)}")

    def sigma_at(self, generation: int) -> float:
        """The mutation's standard deviation in generation ``generation`` (0-based)."""
        return max(self.sigma_min, self.sigma * self.sigma_decay**generation)

    # -- selection and variation: pure functions of their inputs and ``generator`` ----------------------
    def parents(self, fitness: torch.Tensor, elite_index: int | None) -> torch.Tensor:
        """Indices of the members that are parents besides the elite: the ``truncation - 1`` fittest
        members other than the elite (``elite_index`` in this population, or None: not a member), best first
        (ties: the lower index). With the elite at their head they are the T parents."""
        order = torch.argsort(fitness, descending=True, stable=True)
        if elite_index is not None:
            order = order[order != elite_index]
        return order[: self.truncation - 1]

    def parent_rows(
        self, members: torch.Tensor, fitness: torch.Tensor, elite: torch.Tensor, elite_index: int | None
    ) -> torch.Tensor:
        """The T parents (T, D): the elite first, then the ``truncation - 1`` fittest other members."""
        return torch.cat([elite[None].to(members.device), members[self.parents(fitness, elite_index)]])

    def children(self, parents: torch.Tensor, count: int, sigma: float, generator: torch.Generator) -> torch.Tensor:
        """``count`` children ``w + sigma * eps`` of parents (rows of ``parents``) drawn uniformly."""
        pick = torch.randint(len(parents), (count,), generator=generator)
        kids = parents[pick].clone()
        if self.crossover > 0:
            cross = torch.rand(count, generator=generator) < self.crossover
            mates = parents[torch.randint(len(parents), (count,), generator=generator)]
            mask = torch.rand(kids.shape, generator=generator) < 0.5
            kids = torch.where(cross[:, None] & mask, mates, kids)
        noise = torch.randn(kids.shape, generator=generator).to(kids.device)
        return kids.add_(noise, alpha=sigma)

    def next_generation(
        self,
        members: torch.Tensor,
        fitness: torch.Tensor,
        elite: torch.Tensor,
        elite_index: int | None,
        sigma: float,
        generator: torch.Generator,
    ) -> torch.Tensor:
        """The elite unchanged first and ``population - 1`` children (paper), or ``population`` children
        (reference code); the parents are ``parent_rows`` either way."""
        parents = self.parent_rows(members, fitness, elite, elite_index)
        if self.elite_in_population:
            return torch.cat([elite[None], self.children(parents, self.population - 1, sigma, generator)])
        return self.children(parents, self.population, sigma, generator)

    def candidates(self, fitness: torch.Tensor, elite_index: int | None) -> torch.Tensor:
        """Members re-evaluated for the elite: the ``elite_candidates`` fittest, with the previous elite
        (``elite_index`` in this population, or None) in place of the last of them if it is not among them."""
        order = torch.argsort(fitness, descending=True, stable=True)[: self.elite_candidates]
        if elite_index is not None and elite_index not in order.tolist():
            order = torch.cat([torch.tensor([elite_index]), order[:-1]])
        return order


def generation_seeds(seed: int, generation: int, kind: int, shape: tuple[int, ...]) -> np.ndarray:
    """Environment seeds of one evaluation: a function of (run seed, generation, kind) alone, so that a
    resumed run and a fresh one see the same episodes."""
    count = math.prod(shape)
    words = np.random.SeedSequence([seed, generation, kind]).generate_state(count, dtype=np.uint32)
    return words.astype(np.int64).reshape(shape)


# -- evaluation, in this process or spread over worker processes ---------------------------------------------
def _work(layout: pop.PolicyLayout, env: EnvSpec, members: np.ndarray, seeds: np.ndarray, backend: str):
    return pop.evaluate(torch.from_numpy(members), layout, env, seeds, backend)


def _worker_init() -> None:
    torch.set_num_threads(1)
    signals.ignore_in_worker()  # the parent stops the run at a generation boundary


class Evaluator:
    """Returns and lengths of a batch of members: ``pop.evaluate`` here, or split over ``workers``
    processes (contiguous slices; each member's episodes depend on its seeds only, so the split changes
    nothing in the result)."""

    def __init__(self, layout: pop.PolicyLayout, env: EnvSpec, backend: str, workers: int = 1):
        if workers < 1:
            raise UserError(f"workers={workers}: use 1 or more")
        self.layout, self.env, self.backend, self.workers = layout, env, backend, workers
        self.pool = (
            ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"), initializer=_worker_init)
            if workers > 1
            else None
        )

    def __call__(self, members: torch.Tensor, seeds: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if self.pool is None or len(members) < 2:
            return pop.evaluate(members, self.layout, self.env, seeds, self.backend)
        chunks = np.array_split(np.arange(len(members)), min(self.workers, len(members)))
        weights = members.detach().cpu().numpy()
        jobs = [self.pool.submit(_work, self.layout, self.env, weights[c], seeds[c], self.backend) for c in chunks]
        parts = [job.result() for job in jobs]
        return np.concatenate([r for r, _ in parts]), np.concatenate([n for _, n in parts])

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(cancel_futures=True)


# -- the run -----------------------------------------------------------------------------------------------
class State:
    """Everything a generation boundary carries to the next; all of it goes into the checkpoint."""

    def __init__(self, members: torch.Tensor):
        self.generation = 0  # generations done
        self.members = members  # the population to evaluate next
        self.elite: torch.Tensor | None = None
        self.elite_index: int | None = None  # where the elite sits in ``members`` (None: not a member)
        self.evaluations = 0  # episodes played, re-evaluations included
        self.env_steps = 0  # environment steps of those episodes
        self.best_fitness = -math.inf  # the best elite_test_return so far, and the generation it came from
        self.best_generation: int | None = None
        self.solved_generation: int | None = None
        self.solved_steps: int | None = None

    def state_dict(self) -> dict:
        return {k: v for k, v in vars(self).items()}

    def load_state_dict(self, state: dict) -> None:
        for key, value in state.items():
            setattr(self, key, value)


class Evolution:
    """The generations of one GA run in ``run``: evaluation, elite selection, variation."""

    def __init__(self, ga: GA, env: EnvSpec, run: Run, evaluate: Evaluator, layout: pop.PolicyLayout):
        self.ga, self.env, self.run, self.evaluate, self.layout = ga, env, run, evaluate, layout
        self.threshold = env.solved_at()

    def generation(self, state: State, generator: torch.Generator) -> dict:
        """Evaluate ``state.members``, pick the elite, record, breed the next population."""
        assert self.run.seed is not None  # RunOptions.run gives every run it opens a seed
        ga, seed, g = self.ga, int(self.run.seed), state.generation
        tick = time.perf_counter()
        members = state.members.to(self.run.device)
        returns, lengths = self.evaluate(members, generation_seeds(seed, g, POPULATION, (len(members), ga.episodes)))
        fitness = torch.from_numpy(returns.mean(1))
        episodes, steps = returns.size, int(lengths.sum())
        if diverged(self.run, f"generation {g + 1}", {"mean_fitness": float(fitness.mean())}):
            # counted, but no elite and no next generation: best.pt stays that of a finite generation
            state.evaluations += episodes
            state.env_steps += steps
            state.generation = g + 1
            return {
                **self._fitness_row(g, fitness),
                "elite_fitness": math.nan,
                "elite_test_return": math.nan,
                "sigma": ga.sigma_at(g),
                "evaluations": state.evaluations,
                "env_steps": state.env_steps,
                "seconds": time.perf_counter() - tick,
            }
        if ga.elite_candidates:
            pool = ga.candidates(fitness, state.elite_index)
            checked = members[pool]
            if state.elite is not None and state.elite_index is None:  # reference mode: the elite is no member
                checked = torch.cat([state.elite[None].to(members.device), members[pool[:-1]]])
            again, again_len = self.evaluate(
                checked, generation_seeds(seed, g, ELITE, (len(checked), ga.elite_episodes))
            )
            scores = again.mean(1)
            pick = int(np.argmax(scores))
            elite, elite_fitness = checked[pick].clone(), float(scores[pick])
            elite_index = self._member_index(pool, pick, state)  # None: the reference mode's previous elite
            episodes, steps = episodes + again.size, steps + int(again_len.sum())
        else:
            elite_index = int(torch.argmax(fitness))
            elite, elite_fitness = members[elite_index].clone(), float(fitness[elite_index])
        # the reported return: the elite on test episodes of its own (the selection score is biased upward)
        tested, _ = self.evaluate(elite[None], generation_seeds(seed, g, TEST, (1, ga.test_episodes)))
        test_return = float(tested.mean())
        state.evaluations += episodes
        state.env_steps += steps
        state.generation = g + 1
        if test_return > state.best_fitness:
            state.best_fitness, state.best_generation = test_return, g + 1
            checkpoint.save(
                self.run.dir / BEST, {"model": self.layout.network(elite).state_dict(), "hidden": list(ga.hidden)}
            )
        if state.solved_generation is None and self.threshold is not None and test_return >= self.threshold:
            state.solved_generation, state.solved_steps = g + 1, state.env_steps
        sigma = ga.sigma_at(g)
        state.elite = elite.cpu()
        state.members = ga.next_generation(members.cpu(), fitness, state.elite, elite_index, sigma, generator)
        state.elite_index = 0 if ga.elite_in_population else None
        # a mutation past float range (a huge sigma) leaves weights that play, but as no network does
        diverged(self.run, f"generation {g + 1}", {}, [state.members])
        return {
            **self._fitness_row(g, fitness),
            "elite_fitness": elite_fitness,
            "elite_test_return": test_return,
            "sigma": sigma,
            "evaluations": state.evaluations,
            "env_steps": state.env_steps,
            "seconds": time.perf_counter() - tick,
        }

    @staticmethod
    def _member_index(pool: torch.Tensor, pick: int, state: State) -> int | None:
        """The index in this population of the ``pick``-th re-evaluated candidate: ``pool[pick]``, or in
        reference mode (the previous elite, no member, heads the candidates) ``pool[pick - 1]`` and None for it."""
        if state.elite is not None and state.elite_index is None:
            return None if pick == 0 else int(pool[pick - 1])
        return int(pool[pick])

    @staticmethod
    def _fitness_row(g: int, fitness: torch.Tensor) -> dict:
        return {
            "generation": g + 1,
            "best_fitness": float(fitness.max()),
            "mean_fitness": float(fitness.mean()),
            "median_fitness": float(fitness.median()),
        }


def train(ga: GA, env: EnvSpec, run: Run, *, generations: int, workers: int = 1, progress: bool = True) -> dict:
    """``generations`` generations of ``ga`` on ``env`` in ``run``, checkpointed after each."""
    done = run.finished()
    if done is not None:
        return done
    layout = pop.PolicyLayout(*pop.check_env(env), ga.hidden)
    assert run.seed is not None  # RunOptions.run gives every run it opens a seed
    generator = torch.Generator().manual_seed(int(run.seed))
    state = State(layout.init(ga.population, generator))
    record = run.record
    saved = run.load_checkpoint()
    if saved is not None:
        shape = tuple(saved["state"]["members"].shape)
        if shape != (ga.population, layout.size):
            raise UserError(
                f"resume: the checkpoint's population {shape} does not fit "
                f"agent.population={ga.population} with agent.hidden={ga.hidden}"
            )
        state.load_state_dict(saved["state"])
        generator.set_state(saved["generator"])
        record.write_metrics()
    evaluator = Evaluator(layout, env, ga.backend, workers)
    this = Evolution(ga, env, run, evaluator, layout)

    def save() -> None:
        record.write_metrics()
        run.save_checkpoint({"state": state.state_dict(), "generator": generator.get_state()})

    run.figures = lambda: _figures(state, env, this.threshold, layout)
    try:
        with run, TrainingProgress(progress) as bar:
            task = bar.add_task("generations", total=generations, completed=state.generation, info="")
            while state.generation < generations:
                row = this.generation(state, generator)
                record.log(row)
                if run.status == "diverged":  # its row is kept; the checkpoint stays the last finite one
                    break
                save()
                bar.update(task, completed=state.generation, info=f"elite {row['elite_fitness']:.1f}", refresh=True)
                log.info(
                    f"generation {row['generation']}: best {row['best_fitness']:.1f}, mean "
                    f"{row['mean_fitness']:.1f}, elite {row['elite_fitness']:.1f} (sigma {row['sigma']:.3g}, "
                    f"{row['env_steps']} steps, {row['seconds']:.1f} s)"
                )
                run.stop_point(save)
    finally:
        evaluator.close()
    fitness_plot(run.dir / "metrics.csv", run.dir / FITNESS_PLOT, this.threshold)
    summary = run.summary
    assert summary is not None  # leaving ``with run`` has written it
    log.info(
        f"best elite {summary.get('best_eval_return')} at generation {summary.get('best_generation')}; "
        f"solved at generation {summary.get('solved_generation')} ({summary.get('solved_steps')} steps)"
    )
    return summary


def _figures(state: State, env: EnvSpec, threshold, layout: pop.PolicyLayout) -> dict:
    return {
        "env": env.id,
        "generations": state.generation,
        "evaluations": state.evaluations,
        "env_steps": state.env_steps,
        "parameters": layout.size,
        "best_eval_return": state.best_fitness if state.best_generation is not None else None,
        "best_generation": state.best_generation,
        "threshold": threshold,
        "solved_generation": state.solved_generation,
        "solved_steps": state.solved_steps,
    }
