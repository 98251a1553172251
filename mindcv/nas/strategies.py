"""Search strategies with one interface: ``ask()`` a decision vector, ``tell()`` its reward.

* :class:`ReinforceController`: the paper's reinforcement learning over the decision sequence, as
  REINFORCE with a moving-average baseline and an entropy bonus on independent per-decision logits
  (TuNAS's controller; the paper's RNN + PPO is replaced by the simpler estimator the issue allows).
* :class:`RandomSearch`: uniform sampling, the honest baseline.
* :class:`RegularizedEvolution`: aging evolution (Real et al. 2019): tournament selection, one-decision
  mutation, the oldest member dies.

Every strategy keeps its random generator and learned state in ``state_dict()`` (JSON-serialisable), so
a search restored from disk proposes exactly what the uninterrupted search would have proposed.
"""

import inspect
import math
from collections import deque
from typing import Any, Dict, List, Mapping

import numpy as np

from ..errors import InvalidArgumentError
from .search_space import Decisions, SearchSpace

__all__ = [
    "Strategy",
    "RandomSearch",
    "RegularizedEvolution",
    "ReinforceController",
    "create_strategy",
    "check_strategy_settings",
    "STRATEGIES",
]


class Strategy:
    """Base class: a seeded generator plus ``ask``/``tell``."""

    name = "strategy"

    def __init__(self, space: SearchSpace, seed: int = 0) -> None:
        self.space = space
        self.rng = np.random.default_rng(seed)

    def ask(self) -> Decisions:
        raise NotImplementedError

    def tell(self, decisions: Decisions, reward: float) -> None:
        """Learn from one evaluated candidate (no-op for strategies that do not learn)."""

    def state_dict(self) -> Dict:
        return {"rng": self.rng.bit_generator.state}

    def load_state_dict(self, state: Dict) -> None:
        self.rng.bit_generator.state = state["rng"]

    def check_state_dict(self, state, checker, where: str) -> None:
        """Check a ``state_dict`` read from disk before :meth:`load_state_dict` uses it.

        Args:
            state: the parsed JSON value.
            checker: a :class:`~mindcv.nas.state.StateChecker` (raises on the first problem).
            where: JSON path of ``state`` in its file.
        """
        checker.obj(state, where, ("rng",))
        checker.rng_state(state["rng"], f"{where}.rng", type(self.rng.bit_generator).__name__)


class RandomSearch(Strategy):
    """Uniformly random architectures."""

    name = "random"

    def ask(self) -> Decisions:
        return self.space.sample(self.rng)


class RegularizedEvolution(Strategy):
    """Aging evolution.

    Args:
        space: the search space.
        seed: generator seed.
        population: population size (the first ``population`` candidates are random).
        tournament: members sampled per selection; the best of them is the parent.
    """

    name = "evolution"

    def __init__(self, space: SearchSpace, seed: int = 0, population: int = 8, tournament: int = 3) -> None:
        super().__init__(space, seed)
        if population < 2 or not 1 <= tournament <= population:
            raise InvalidArgumentError(
                f"need population >= 2 and 1 <= tournament <= population, got {population}, {tournament}"
            )
        self.population_size = population
        self.tournament = tournament
        self.population: deque = deque()

    def ask(self) -> Decisions:
        if len(self.population) < self.population_size:
            return self.space.sample(self.rng)
        members = [self.population[i] for i in self.rng.choice(len(self.population), self.tournament, replace=False)]
        parent = max(members, key=lambda m: m[1])[0]
        return self.space.mutate(parent, self.rng)

    def tell(self, decisions: Decisions, reward: float) -> None:
        self.population.append((list(decisions), float(reward)))
        if len(self.population) > self.population_size:
            self.population.popleft()

    def state_dict(self) -> Dict:
        return {**super().state_dict(), "population": [list(m) for m in self.population]}

    def load_state_dict(self, state: Dict) -> None:
        super().load_state_dict(state)
        self.population = deque((list(d), float(r)) for d, r in state["population"])

    def check_state_dict(self, state, checker, where: str) -> None:
        super().check_state_dict(state, checker, where)
        checker.obj(state, where, ("population",))
        members = checker.array(state["population"], f"{where}.population", max_length=self.population_size)
        for i, member in enumerate(members):
            checker.array(member, f"{where}.population[{i}]", length=2)
            checker.decisions(member[0], f"{where}.population[{i}][0]", self.space.num_choices)
            checker.number(member[1], f"{where}.population[{i}][1]")


class ReinforceController(Strategy):
    """Policy-gradient controller over the decision sequence.

    The policy is one softmax per decision (7 blocks x 6 decisions). After each candidate the policy gradient
    ``g = advantage * grad log p(decisions) + entropy_weight * grad H`` is applied to the logits, with
    ``advantage = (reward - baseline) / scale``; the baseline is an exponential moving average of the
    rewards and ``scale`` a moving average of their absolute deviation, so ``lr`` does not depend on the
    reward's units. ``optimizer="sgd"`` ascends ``lr * g``; ``optimizer="adam"`` applies Adam to ``g`` (TuNAS's
    controller). During the first ``warmup`` candidates the policy stays uniform (only the baseline learns),
    so early, noisy rewards do not steer it (TuNAS freezes its controller while the shared weights are young).

    Args:
        space: the search space.
        seed: generator seed.
        lr: policy learning rate.
        baseline_decay: EMA decay of the reward baseline (0.95 as in ENAS/autogluon).
        entropy_weight: entropy bonus (keeps exploring; TuNAS uses none).
        optimizer: ``sgd`` or ``adam``.
        warmup: candidates evaluated before the policy starts learning.
    """

    name = "rl"
    OPTIMIZERS = ("sgd", "adam")

    def __init__(
        self,
        space: SearchSpace,
        seed: int = 0,
        lr: float = 0.3,
        baseline_decay: float = 0.9,
        entropy_weight: float = 1e-3,
        optimizer: str = "sgd",
        warmup: int = 0,
    ) -> None:
        super().__init__(space, seed)
        if optimizer not in self.OPTIMIZERS:
            raise InvalidArgumentError(f"rl optimizer must be one of {list(self.OPTIMIZERS)}, got {optimizer!r}")
        if warmup < 0 or lr < 0 or not 0 <= baseline_decay < 1:
            raise InvalidArgumentError(
                f"rl needs warmup >= 0, lr >= 0 and baseline_decay in [0, 1), got {warmup}, {lr}, {baseline_decay}"
            )
        self.lr = lr
        self.baseline_decay = baseline_decay
        self.entropy_weight = entropy_weight
        self.optimizer = optimizer
        self.warmup = warmup
        self.logits: List[np.ndarray] = [np.zeros(n) for n in space.num_choices]
        self.baseline = None
        self.scale = None
        self.updates = 0
        self.told = 0
        self.moments: List[List[np.ndarray]] = [[np.zeros(n), np.zeros(n)] for n in space.num_choices]

    def probabilities(self) -> List[np.ndarray]:
        out = []
        for logit in self.logits:
            e = np.exp(logit - logit.max())
            out.append(e / e.sum())
        return out

    def ask(self) -> Decisions:
        return [int(self.rng.choice(len(p), p=p)) for p in self.probabilities()]

    def entropy(self) -> float:
        return float(sum(-(p * np.log(p + 1e-12)).sum() for p in self.probabilities()))

    def tell(self, decisions: Decisions, reward: float) -> None:
        self.told += 1
        if self.baseline is None:
            self.baseline, self.scale = float(reward), 0.0
            return
        deviation = abs(reward - self.baseline)
        self.scale = deviation if self.scale == 0.0 else 0.9 * self.scale + 0.1 * deviation
        if self.told > self.warmup:
            advantage = (reward - self.baseline) / max(self.scale, 1e-8)
            self.updates += 1
            for logit, moment, p, choice in zip(self.logits, self.moments, self.probabilities(), decisions):
                grad_logp = -p
                grad_logp[choice] += 1.0
                log_p = np.log(p + 1e-12)
                grad_entropy = -p * (log_p - (p * log_p).sum())  # d H / d logits
                gradient = advantage * grad_logp + self.entropy_weight * grad_entropy
                logit += self._step(gradient, moment)
        self.baseline = self.baseline_decay * self.baseline + (1 - self.baseline_decay) * float(reward)

    def _step(self, gradient: np.ndarray, moment: List[np.ndarray]) -> np.ndarray:
        """The ascent step for one decision's logits (Adam keeps its moments in ``moment``)."""
        if self.optimizer == "sgd":
            return self.lr * gradient
        beta1, beta2 = 0.9, 0.999
        moment[0] = beta1 * moment[0] + (1 - beta1) * gradient
        moment[1] = beta2 * moment[1] + (1 - beta2) * gradient**2
        m_hat = moment[0] / (1 - beta1**self.updates)
        v_hat = moment[1] / (1 - beta2**self.updates)
        return self.lr * m_hat / (np.sqrt(v_hat) + 1e-8)

    def state_dict(self) -> Dict:
        state = {
            **super().state_dict(),
            "logits": [logit.tolist() for logit in self.logits],
            "baseline": self.baseline,
            "scale": self.scale,
            "updates": self.updates,
        }
        if self.optimizer == "adam" or self.warmup:  # older states (SGD, no warm-up) keep their shape
            state["told"] = self.told
            state["moments"] = [[m.tolist(), v.tolist()] for m, v in self.moments]
        return state

    def load_state_dict(self, state: Dict) -> None:
        super().load_state_dict(state)
        self.logits = [np.array(v, dtype=np.float64) for v in state["logits"]]
        self.baseline, self.scale, self.updates = state["baseline"], state["scale"], state["updates"]
        # a state without them was written by an SGD controller without warm-up: it has told one more
        # candidate than it updated on (the first sets the baseline)
        self.told = state.get("told", self.updates + (self.baseline is not None))
        if "moments" in state:
            self.moments = [[np.array(m, np.float64), np.array(v, np.float64)] for m, v in state["moments"]]

    def check_state_dict(self, state, checker, where: str) -> None:
        super().check_state_dict(state, checker, where)
        checker.obj(state, where, ("logits", "baseline", "scale", "updates"))
        sizes = self.space.num_choices
        logits = checker.array(state["logits"], f"{where}.logits", length=len(sizes))
        for i, (row, n) in enumerate(zip(logits, sizes)):
            checker.array(row, f"{where}.logits[{i}]", length=n)
            for j, value in enumerate(row):
                checker.number(value, f"{where}.logits[{i}][{j}]")
        if (state["baseline"] is None) != (state["scale"] is None):
            checker.fail(f"{where}.scale", "baseline and scale must both be null (no reward yet) or both numbers")
        if state["baseline"] is not None:
            checker.number(state["baseline"], f"{where}.baseline")
            checker.number(state["scale"], f"{where}.scale", 0.0)
        checker.integer(state["updates"], f"{where}.updates", 0)
        if "told" in state or "moments" in state:
            checker.obj(state, where, ("told", "moments"))
            checker.integer(state["told"], f"{where}.told", state["updates"])
            moments = checker.array(state["moments"], f"{where}.moments", length=len(sizes))
            for i, (pair, n) in enumerate(zip(moments, sizes)):
                checker.array(pair, f"{where}.moments[{i}]", length=2)
                for k, row in enumerate(pair):
                    checker.array(row, f"{where}.moments[{i}][{k}]", length=n)
                    for j, value in enumerate(row):
                        checker.number(value, f"{where}.moments[{i}][{k}][{j}]", 0.0 if k == 1 else -math.inf)


STRATEGIES = {"rl": ReinforceController, "random": RandomSearch, "evolution": RegularizedEvolution}


def create_strategy(name: str, space: SearchSpace, seed: int = 0, **kwargs) -> Strategy:
    """Build a strategy by name (``rl``, ``random``, ``evolution``) with its keyword settings.

    Raises:
        InvalidArgumentError: an unknown name or setting (the message lists the valid ones), or a setting out of
            its range.
    """
    check_strategy_settings(name, kwargs)
    return STRATEGIES[name](space, seed=seed, **kwargs)


def check_strategy_settings(name: str, settings: Mapping[Any, Any]) -> None:
    """Check that ``name`` is a strategy and ``settings`` names only its settings (not ``space`` / ``seed``).

    Raises:
        InvalidArgumentError: an unknown name or setting (the message lists the valid ones).
    """
    if name not in STRATEGIES:
        raise InvalidArgumentError(f"unknown search strategy '{name}'; valid: {sorted(STRATEGIES)}")
    valid = [p for p in inspect.signature(STRATEGIES[name].__init__).parameters if p not in ("self", "space", "seed")]
    unknown = sorted(set(settings) - set(valid), key=str)
    if unknown:
        raise InvalidArgumentError(f"search strategy '{name}' has no setting(s) {unknown}; valid: {valid or 'none'}")
