"""``controller=random``: architectures drawn uniformly from the search space (the baseline)."""

from __future__ import annotations

from nas_cli.nas.rl.controllers.base import Controller


class RandomSearch(Controller):
    """Zoph space: every token uniform, every skip with probability ``skip_p``; MetaQNN space: a uniformly
    random allowed layer at each step (MetaQNN at epsilon = 1)."""

    name = "random"

    def propose(self) -> list[dict]:
        return self.space.sample(self.rng)
