"""Platform-aware neural architecture search (MNAS) over the MnasNet search space."""

from .fidelity import kendall_tau, proxy_gate, supernet_fidelity
from .latency import LatencyTable, LatencyWorker, measure_model_latency
from .reward import absolute_reward, mnas_reward
from .search_space import DECISIONS, SearchSpace
from .supernet import SuperNet, recalibrate_bn
from .supernet_proxy import SupernetConfig, SupernetProxy

__all__ = [
    "SearchSpace",
    "DECISIONS",
    "mnas_reward",
    "absolute_reward",
    "LatencyTable",
    "LatencyWorker",
    "measure_model_latency",
    "SuperNet",
    "recalibrate_bn",
    "SupernetConfig",
    "SupernetProxy",
    "kendall_tau",
    "proxy_gate",
    "supernet_fidelity",
]
