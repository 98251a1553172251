"""The MnasNet reward: accuracy traded against latency relative to a target."""

__all__ = ["mnas_reward", "CONSTRAINTS"]

# (alpha, beta): exponent below / above the target latency
CONSTRAINTS = {"soft": (-0.07, -0.07), "hard": (0.0, -1.0)}


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
