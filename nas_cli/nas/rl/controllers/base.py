"""What every controller does: propose an architecture, observe its reward, save and restore itself."""

from __future__ import annotations

import json

import numpy as np


class Controller:
    """Propose architectures (``propose``), learn from their rewards (``observe``).

    ``state_dict`` holds everything needed to continue exactly (random state included): plain
    Python values and tensors, so it fits a ``weights_only`` checkpoint.
    """

    name = "controller"

    def __init__(self, space, seed: int = 0):
        self.space = space
        self.rng = np.random.default_rng(seed)

    def propose(self) -> list[dict]:
        raise NotImplementedError

    def observe(self, arch: list[dict], reward: float) -> None:
        pass

    def extra_state(self) -> dict:
        return {}

    def load_extra_state(self, state: dict) -> None:
        pass

    def state_dict(self) -> dict:
        return {
            "rng": json.dumps(self.rng.bit_generator.state),
            "json": json.dumps(self.extra_state()),
            **self.tensor_state(),
        }

    def tensor_state(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        self.rng.bit_generator.state = json.loads(state["rng"])
        self.load_extra_state(json.loads(state["json"]))
        self.load_tensor_state(state)

    def load_tensor_state(self, state: dict) -> None:
        pass
