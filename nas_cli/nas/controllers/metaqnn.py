"""``controller=metaqnn``: Q-learning over layer choices, Baker et al. (2017).

Each architecture is a walk through states (``spaces.MetaQNNSpace``) chosen epsilon-greedily
on Q; epsilon follows a schedule of ``[epsilon, number of models]`` pairs. After each new model
its trajectory joins the replay memory and ``replay`` stored trajectories (drawn uniformly, with
replacement) are replayed, each transition from last to first:
``Q(s, a) <- Q(s, a) + alpha * (r + gamma * max_a' Q(s', a') - Q(s, a))``, where the reward is the
model's accuracy on the terminating transition and 0 elsewhere. Q starts at ``q_init``.
"""

from __future__ import annotations

from nas_cli.errors import UserError
from nas_cli.nas.controllers.base import Controller
from nas_cli.nas.spaces import SM, MetaQNNSpace

# Baker et al.: 1,500 models at epsilon 1.0, then 100 each at 0.9 ... 0.1; scaled down 25x
DEFAULT_SCHEDULE = [[1.0, 60], [0.9, 4], [0.8, 4], [0.7, 4], [0.6, 4], [0.5, 4], [0.4, 4], [0.3, 4], [0.2, 4],
                    [0.1, 4]]


def _tuple(x):
    return tuple(_tuple(v) for v in x) if isinstance(x, list) else x


class MetaQNN(Controller):
    name = "metaqnn"

    def __init__(self, space: MetaQNNSpace, seed: int = 0, schedule=None, alpha: float = 0.01, gamma: float = 1.0,
                 q_init: float = 0.5, replay: int = 100):
        if not isinstance(space, MetaQNNSpace):
            raise UserError("controller=metaqnn searches its own space: use space=metaqnn")
        super().__init__(space, seed)
        self.schedule = [(float(e), int(n)) for e, n in (schedule or DEFAULT_SCHEDULE)]
        if not self.schedule:
            raise UserError("controller.schedule is empty: give [[epsilon, models], ...]")
        self.alpha, self.gamma, self.q_init, self.replay = float(alpha), float(gamma), float(q_init), int(replay)
        self.q: dict[tuple, dict[tuple, float]] = {}
        self._actions: dict[tuple, list[tuple]] = {}
        self.memory: list[list] = []  # [actions (as lists), reward]
        self.models = 0  # models proposed so far (picks epsilon)

    def epsilon(self, model: int | None = None) -> float:
        model = self.models if model is None else model
        for eps, n in self.schedule:
            if model < n:
                return eps
            model -= n
        return self.schedule[-1][0]

    def value(self, state, action) -> float:
        return self.q.get(state, {}).get(action, self.q_init)

    def propose(self) -> list[dict]:
        eps = self.epsilon()
        self.models += 1
        state, actions = self.space.start(), []
        while state[0] != SM:
            options = self.space.actions(state)
            if self.rng.random() < eps:
                a = options[int(self.rng.integers(len(options)))]
            else:
                values = [self.value(state, o) for o in options]
                best = [o for o, v in zip(options, values) if v == max(values)]
                a = best[int(self.rng.integers(len(best)))]
            actions.append(a)
            state = self.space.step(state, a)
        return self.space.to_arch(actions)

    def update(self, actions: list[tuple], reward: float) -> None:
        """One Q-learning pass over a trajectory, last transition first."""
        states = [self.space.start()]
        for a in actions:
            states.append(self.space.step(states[-1], a))
        for i in reversed(range(len(actions))):
            s, a, nxt = states[i], actions[i], states[i + 1]
            if a[0] == SM:
                target = reward
            else:
                if nxt not in self._actions:
                    self._actions[nxt] = self.space.actions(nxt)
                row = self.q.get(nxt, {})
                target = self.gamma * max(row.get(b, self.q_init) for b in self._actions[nxt])
            q = self.value(s, a)
            self.q.setdefault(s, {})[a] = q + self.alpha * (target - q)

    def observe(self, arch: list[dict], reward: float) -> None:
        self.memory.append([self.space.path(arch), float(reward)])
        for i in self.rng.integers(len(self.memory), size=self.replay):
            actions, r = self.memory[int(i)]
            self.update([(a[0], tuple(a[1])) for a in actions], r)

    def extra_state(self) -> dict:
        q = [[s, [[a, v] for a, v in row.items()]] for s, row in self.q.items()]
        return {"q": q, "memory": self.memory, "models": self.models}

    def load_extra_state(self, state: dict) -> None:
        self.models = state["models"]
        self.q = {_tuple(s): {_tuple(a): v for a, v in row} for s, row in state["q"]}
        self.memory = [[[(a[0], tuple(a[1])) for a in actions], r] for actions, r in state["memory"]]
