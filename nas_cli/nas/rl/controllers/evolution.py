"""``controller=evolution``: regularized (aging) evolution, Real et al. (2019), Algorithm 1.

The first ``population`` children are random; after that each child mutates the best of ``sample``
members drawn uniformly *with replacement* from the population (Algorithm 1: a member may be drawn
twice, so ``sample`` may exceed ``population`` and the worst member can still win a tournament of
duplicates), and the oldest member (not the worst) dies.
"""

from __future__ import annotations

from nas_cli.errors import UserError
from nas_cli.nas.rl.controllers.base import Controller


class Evolution(Controller):
    name = "evolution"

    def __init__(self, space, seed: int = 0, population: int = 20, sample: int = 5):
        super().__init__(space, seed)
        self.population_size, self.sample_size = int(population), int(sample)
        if self.population_size < 2 or self.sample_size < 1:
            raise UserError(
                f"controller.population={population}, controller.sample={sample}: need population >= 2 and sample >= 1"
            )
        self.population: list[dict] = []  # {"arch", "reward"}, oldest first
        self.proposed = 0

    def tournament(self) -> dict:
        """The parent: the best of ``sample`` members drawn uniformly with replacement."""
        picks = self.rng.integers(len(self.population), size=self.sample_size)
        return max((self.population[int(i)] for i in picks), key=lambda m: m["reward"])

    def propose(self) -> list[dict]:
        self.proposed += 1
        if self.proposed <= self.population_size or not self.population:
            return self.space.sample(self.rng)
        return self.space.mutate(self.tournament()["arch"], self.rng)

    def observe(self, arch: list[dict], reward: float) -> None:
        self.population.append({"arch": arch, "reward": float(reward)})
        if len(self.population) > self.population_size:
            self.population.pop(0)  # aging: the oldest goes

    def extra_state(self) -> dict:
        return {"population": self.population, "proposed": self.proposed}

    def load_extra_state(self, state: dict) -> None:
        self.population, self.proposed = state["population"], state["proposed"]
