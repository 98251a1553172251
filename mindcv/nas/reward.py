"""Rewards trading accuracy against latency relative to a target: MnasNet's two forms and TuNAS's absolute one."""

from typing import Callable, Optional

__all__ = ["mnas_reward", "absolute_reward", "make_reward", "CONSTRAINTS", "REWARD_KINDS"]

# (alpha, beta): exponent below / above the target latency
CONSTRAINTS = {"soft": (-0.07, -0.07), "hard": (0.0, -1.0)}
# every value of ``reward.constraint``: the MnasNet forms and TuNAS's absolute reward
REWARD_KINDS = (*CONSTRAINTS, "absolute")
# absolute reward: accuracy points per 100% latency deviation from T. -7 on a 0-100 scale is TuNAS's -0.07 on a
# 0-1 scale: a network 10% off the target (either way) pays 0.7 points
ABSOLUTE_BETA = -7.0


def mnas_reward(accuracy: float, latency: float, target: float, alpha: float = -0.07, beta: float = -0.07) -> float:
    """``ACC(m) x (LAT(m) / T) ** w`` with ``w = alpha`` if ``LAT(m) <= T`` else ``beta``.

    Soft constraint (the paper's default): alpha = beta = -0.07, so twice the latency must buy about 5%
    relative accuracy. Hard constraint: alpha = 0, beta = -1 (no bonus below T, a steep penalty above).

    Args:
        accuracy: proxy accuracy (any scale; the reward has the same scale).
        latency: measured or predicted latency.
        target: target latency T (same unit).
        alpha: exponent when ``latency <= target``.
        beta: exponent when ``latency > target``.

    Returns:
        The reward.
    """
    if latency <= 0 or target <= 0:
        raise ValueError(f"latency and target must be positive, got {latency} and {target}")
    exponent = alpha if latency <= target else beta
    return float(accuracy * (latency / target) ** exponent)


def absolute_reward(accuracy: float, latency: float, target: float, beta: float = ABSOLUTE_BETA) -> float:
    """TuNAS's absolute reward ``ACC(m) + beta * |LAT(m) / T - 1|`` (``beta < 0``).

    Unlike the MnasNet forms it punishes a network that is faster than the target as much as a slower one, so
    the search settles at the target instead of trading latency for accuracy along the whole front (TuNAS hit
    its latency target in one search where the MnasNet reward needed several).

    Args:
        accuracy: proxy accuracy in percent.
        latency: measured or predicted latency.
        target: target latency T (same unit).
        beta: accuracy points per 100% deviation from T (negative).

    Returns:
        The reward, in accuracy points.
    """
    if latency <= 0 or target <= 0:
        raise ValueError(f"latency and target must be positive, got {latency} and {target}")
    return float(accuracy + beta * abs(latency / target - 1.0))


def make_reward(
    constraint: str, alpha: Optional[float] = None, beta: Optional[float] = None
) -> Callable[[float, float, float], float]:
    """The reward function ``(accuracy, latency, target) -> reward`` of a ``reward`` section.

    Args:
        constraint: ``soft``, ``hard`` (MnasNet) or ``absolute`` (TuNAS).
        alpha: MnasNet exponent below the target (overrides the constraint's; not used by ``absolute``).
        beta: MnasNet exponent above the target, or the absolute reward's weight.

    Returns:
        The function.

    Raises:
        ValueError: an unknown constraint, or ``alpha`` given for the absolute reward, or its ``beta`` >= 0.
    """
    if constraint == "absolute":
        if alpha is not None:
            raise ValueError("reward.alpha has no meaning for the absolute reward; set reward.beta only")
        weight = ABSOLUTE_BETA if beta is None else beta
        if weight >= 0:
            raise ValueError(f"the absolute reward's beta must be negative (a penalty), got {weight}")
        return lambda accuracy, latency, target: absolute_reward(accuracy, latency, target, weight)
    if constraint not in CONSTRAINTS:
        raise ValueError(f"reward constraint must be one of {list(REWARD_KINDS)}, got '{constraint}'")
    default_alpha, default_beta = CONSTRAINTS[constraint]
    a = default_alpha if alpha is None else alpha
    b = default_beta if beta is None else beta
    return lambda accuracy, latency, target: mnas_reward(accuracy, latency, target, a, b)
