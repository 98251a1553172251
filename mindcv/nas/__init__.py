"""Platform-aware neural architecture search (MNAS) over the MnasNet search space."""

from .latency import LatencyTable, LatencyWorker, measure_model_latency
from .reward import mnas_reward
from .search_space import DECISIONS, SearchSpace

__all__ = ["SearchSpace", "DECISIONS", "mnas_reward", "LatencyTable", "LatencyWorker", "measure_model_latency"]
