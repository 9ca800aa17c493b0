"""``controller=metaqnn``: Q-learning over layer choices, Baker et al. (2017).

Each architecture is a walk through states (``spaces.MetaQNNSpace``) chosen epsilon-greedily on Q.
The Q-table is keyed by the bucketed state (``space.key``: the side replaced by its R-size bin), as
in the reference code (bowenbaker/metaqnn), so what is learnt at one side holds for its whole bin.

Epsilon follows the paper's Table 2, ``[epsilon, number of models]`` pairs, counted in *unique*
models: an architecture proposed again hits the search's cache, is not trained again and does not
advance the schedule (it still joins the replay memory and triggers a replay, as in the reference
code). ``schedule_models`` rescales the table's counts to that total, keeping its shape.

After each model its trajectory joins the replay memory and ``replay`` stored trajectories (drawn
uniformly, with replacement) are replayed, each transition from last to first:
``Q(s, a) <- Q(s, a) + alpha * (r + gamma * max_a' Q(s', a') - Q(s, a))``, where the reward is the
model's score (``child.score``: its best validation accuracy by default, as in paper and code) on
the terminating transition and 0 elsewhere. Q starts at ``q_init``.
"""

from __future__ import annotations

from nas_cli.errors import UserError
from nas_cli.nas.rl.arch import key
from nas_cli.nas.rl.controllers.base import Controller
from nas_cli.nas.rl.spaces import SM, MetaQNNSpace

# Baker et al. (2017), Table 2: unique models trained at each epsilon (2,700 in all)
PAPER_SCHEDULE = [
    [1.0, 1500],
    [0.9, 100],
    [0.8, 100],
    [0.7, 100],
    [0.6, 150],
    [0.5, 150],
    [0.4, 150],
    [0.3, 150],
    [0.2, 150],
    [0.1, 150],
]


def _tuple(x):
    return tuple(_tuple(v) for v in x) if isinstance(x, list) else x


def scale_schedule(schedule, models: int | None) -> list[tuple[float, int]]:
    """``schedule`` with its counts rescaled to sum to about ``models`` (None: as written).

    Each count is rounded, at least 1, so every epsilon of the table is still visited in order and
    the shares of the table (Table 2: 58% at 1.0, then 100s and 150s) are kept as far as rounding allows.
    """
    table = [(float(e), int(n)) for e, n in schedule]
    if not table or any(n < 1 for _, n in table) or any(not 0.0 <= e <= 1.0 for e, _ in table):
        raise UserError("controller.schedule: give [[epsilon in 0..1, models >= 1], ...]")
    if models is None:
        return table
    if int(models) < 1:
        raise UserError(f"controller.schedule_models={models}: use 1 or more (or null: the table as written)")
    total = sum(n for _, n in table)
    return [(e, max(1, round(n * int(models) / total))) for e, n in table]


class MetaQNN(Controller):
    name = "metaqnn"

    def __init__(
        self,
        space: MetaQNNSpace,
        seed: int = 0,
        schedule=None,
        schedule_models: int | None = None,
        alpha: float = 0.01,
        gamma: float = 1.0,
        q_init: float = 0.5,
        replay: int = 128,
    ):
        if not isinstance(space, MetaQNNSpace):
            raise UserError("controller=metaqnn searches its own space: use space=metaqnn")
        super().__init__(space, seed)
        self.schedule = scale_schedule(PAPER_SCHEDULE if schedule is None else schedule, schedule_models)
        self.alpha, self.gamma, self.q_init, self.replay = float(alpha), float(gamma), float(q_init), int(replay)
        self.q: dict[tuple, dict[tuple, float]] = {}  # bucketed state -> action -> value
        self._actions: dict[tuple, list[tuple]] = {}
        self.memory: list[list] = []  # [actions (as lists), reward], repeats included
        self.seen: set[str] = set()  # architectures observed (their cache keys)

    @property
    def models(self) -> int:
        """Unique models observed so far: the position in the epsilon schedule."""
        return len(self.seen)

    def epsilon(self, model: int | None = None) -> float:
        model = self.models if model is None else model
        for eps, n in self.schedule:
            if model < n:
                return eps
            model -= n
        return self.schedule[-1][0]

    def value(self, state, action) -> float:
        """Q of ``action`` at ``state`` (an exact state: looked up by its bucketed key)."""
        return self.q.get(self.space.key(state), {}).get(action, self.q_init)

    def propose(self) -> list[dict]:
        eps = self.epsilon()
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
                target = self.gamma * max(self.value(nxt, b) for b in self._actions[nxt])
            q = self.value(s, a)
            self.q.setdefault(self.space.key(s), {})[a] = q + self.alpha * (target - q)

    def observe(self, arch: list[dict], reward: float) -> None:
        self.seen.add(key(arch))
        self.memory.append([self.space.path(arch), float(reward)])
        for i in self.rng.integers(len(self.memory), size=self.replay):
            actions, r = self.memory[int(i)]
            self.update([(a[0], tuple(a[1])) for a in actions], r)

    def extra_state(self) -> dict:
        q = [[s, [[a, v] for a, v in row.items()]] for s, row in self.q.items()]
        return {"q": q, "memory": self.memory, "seen": sorted(self.seen)}

    def load_extra_state(self, state: dict) -> None:
        self.q = {_tuple(s): {_tuple(a): v for a, v in row} for s, row in state["q"]}
        self.memory = [[[(a[0], tuple(a[1])) for a in actions], r] for actions, r in state["memory"]]
        self.seen = set(state["seen"])
