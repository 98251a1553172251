"""Is the accuracy estimate worth searching on? The proxy gate and the supernet's rank fidelity.

Both compare architectures by their stand-alone proxy accuracy on several training seeds. Those trainings are
the expensive part, so every result is kept in ``<output_dir>/standalone.json`` as soon as it exists (atomic
writes): a killed measurement resumes where it stopped, and the gate and the fidelity check share what they
both trained.

* :func:`proxy_gate`: does the proxy rank architectures at all? Seed-to-seed noise against the spread across
  architectures, the correlation of accuracy with depth (a proxy that only rewards networks that train fast in
  a few hundred steps), and the known ImageNet order MnasNet-A1 >= MnasNet-B1.
* :func:`supernet_fidelity`: does the supernet rank architectures like stand-alone training? Kendall tau
  between the supernet's estimate and the stand-alone mean on held-out random architectures.
"""

import logging
import os
from dataclasses import asdict
from typing import Any, Dict, List, Sequence

import numpy as np

from ..errors import InvalidArgumentError
from ..io.progress import progress_bar
from ..models.arch import decode_arch_def, format_arch_string, parse_arch_string
from ..models.mnasnet import ARCH_DEFS
from ..utils.plotting import save_figure
from .latency import write_json_atomic
from .proxy import PROXY_PROCEDURE, ProxyTask
from .search_space import SearchSpace
from .state import read_json, set_aside

__all__ = ["kendall_tau", "spearman_rho", "StandaloneResults", "proxy_gate", "supernet_fidelity", "GATE_TARGETS"]

_logger = logging.getLogger(__name__)

# the gate's targets: (seed-to-seed sd at most, spread / sd at least, |Spearman with depth| below)
GATE_TARGETS = {"seed_sd_max": 1.0, "spread_ratio_min": 4.0, "depth_spearman_max": 0.3}


def _ranks(values: Sequence[float]) -> np.ndarray:
    v = np.asarray(values, dtype=np.float64)
    order = np.argsort(v, kind="mergesort")
    ranks = np.empty(len(v))
    ranks[order] = np.arange(len(v))
    for value in np.unique(v):
        tie = v == value
        ranks[tie] = ranks[tie].mean()
    return ranks


def spearman_rho(a: Sequence[float], b: Sequence[float]) -> float:
    """Spearman rank correlation (average ranks for ties; NaN when either side is constant)."""
    ra, rb = _ranks(a), _ranks(b)
    if ra.std() == 0 or rb.std() == 0:
        return float("nan")
    return float(np.corrcoef(ra, rb)[0, 1])


def kendall_tau(a: Sequence[float], b: Sequence[float]) -> float:
    """Kendall's tau-b (ties in either ranking handled; NaN when either side is constant).

    Args:
        a: first scores.
        b: second scores, same length.

    Returns:
        tau in [-1, 1].
    """
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if len(a) != len(b) or len(a) < 2:
        raise InvalidArgumentError(f"kendall_tau needs two sequences of the same length >= 2, got {len(a)}, {len(b)}")
    i, j = np.triu_indices(len(a), k=1)
    da, db = np.sign(a[i] - a[j]), np.sign(b[i] - b[j])
    concordance = float((da * db).sum())
    pairs_a, pairs_b = float(np.count_nonzero(da)), float(np.count_nonzero(db))
    if pairs_a == 0 or pairs_b == 0:
        return float("nan")
    return concordance / np.sqrt(pairs_a * pairs_b)


def depth_of(arch: str) -> int:
    """Layers of an architecture (the sum of its stages' repeats)."""
    return sum(len(stage) for stage in decode_arch_def(parse_arch_string(arch)))


class StandaloneResults:
    """Stand-alone proxy results by (architecture, seed), kept in a JSON file as they are produced.

    A file of another proxy (other settings or procedure) is never mixed in: it is set aside and started over.

    Args:
        proxy: the proxy task that trains.
        path: the JSON file.
    """

    def __init__(self, proxy: ProxyTask, path: str) -> None:
        self.proxy, self.path = proxy, path
        self.key = {"proxy": asdict(proxy.config), "procedure": PROXY_PROCEDURE}
        self.results: Dict[str, Dict[str, float]] = {}
        if os.path.exists(path):
            saved = read_json(path, lambda reason: InvalidArgumentError(f"'{path}': {reason}"))
            if isinstance(saved, dict) and saved.get("key") == self.key and isinstance(saved.get("results"), dict):
                self.results = saved["results"]
            else:
                _logger.warning("'%s' holds results of another proxy; kept as %s", path, set_aside(path))

    def accuracy(self, arch: str, seed: int) -> float:
        """Stand-alone held-out accuracy (trained now unless already recorded)."""
        name = f"{arch}@{seed}"
        if name not in self.results:
            self.results[name] = self.proxy.evaluate(arch, seed=seed)
            write_json_atomic(self.path, {"key": self.key, "results": self.results})
        return float(self.results[name]["accuracy"])

    def table(self, archs: Sequence[str], seeds: Sequence[int], desc: str, progress: bool) -> np.ndarray:
        """``(len(archs), len(seeds))`` accuracies, seed-major inner loop (one architecture at a time)."""
        out = np.zeros((len(archs), len(seeds)))
        jobs = [(i, j) for i in range(len(archs)) for j in range(len(seeds))]
        for i, j in progress_bar(jobs, desc=desc, disable=not progress):
            out[i, j] = self.accuracy(archs[i], seeds[j])
        return out


def _references() -> Dict[str, str]:
    return {"MnasNet-B1": format_arch_string(ARCH_DEFS["b1"]), "MnasNet-A1": format_arch_string(ARCH_DEFS["a1"])}


def random_archs(space: SearchSpace, count: int, seed: int, exclude: Sequence[str] = ()) -> List[str]:
    """``count`` distinct architecture strings drawn from ``space`` with ``seed``, none of them in ``exclude``.

    Raises:
        InvalidArgumentError: the space has fewer distinct architectures than asked for.
    """
    rng, seen, out = np.random.default_rng(seed), set(exclude), []
    for _ in range(count * 50):
        if len(out) == count:
            return out
        arch = space.arch_string(space.sample(rng))
        if arch not in seen:
            seen.add(arch)
            out.append(arch)
    if len(out) == count:
        return out
    raise InvalidArgumentError(f"the search space has fewer than {count} distinct architectures to draw")


def proxy_gate(
    proxy: ProxyTask,
    space: SearchSpace,
    output_dir: str,
    num_archs: int = 20,
    seeds: Sequence[int] = (0, 1),
    sample_seed: int = 4321,
    progress: bool = True,
) -> Dict[str, Any]:
    """Train ``num_archs`` random architectures plus B1 and A1 stand-alone on ``seeds`` and judge the proxy.

    Writes ``gate_report.json`` and ``gate.png`` (accuracy per architecture with every seed; accuracy vs depth).

    Returns:
        The report: ``seed_sd`` (pooled seed-to-seed standard deviation, points), ``spread_sd`` (standard deviation
        of the per-architecture means), their ratio, ``depth_spearman``, ``a1_minus_b1``, each target and whether
        it ``passed``.
    """
    if num_archs < 3 or len(seeds) < 2:
        raise InvalidArgumentError(f"the gate needs >= 3 architectures and >= 2 seeds, got {num_archs}, {list(seeds)}")
    refs = _references()
    archs = list(refs.values()) + random_archs(space, num_archs, sample_seed, exclude=refs.values())
    store = StandaloneResults(proxy, os.path.join(output_dir, "standalone.json"))
    acc = store.table(archs, list(seeds), "proxy gate", progress)
    means = acc.mean(axis=1)
    seed_sd = float(np.sqrt(np.mean(acc.var(axis=1, ddof=1))))
    spread_sd = float(means.std(ddof=1))
    depths = [depth_of(a) for a in archs]
    depth_rho = spearman_rho(means, depths)
    a1_minus_b1 = float(means[1] - means[0])
    checks = {
        "seed_sd": seed_sd <= GATE_TARGETS["seed_sd_max"],
        "spread_ratio": spread_sd >= GATE_TARGETS["spread_ratio_min"] * seed_sd,
        "depth_spearman": bool(abs(depth_rho) < GATE_TARGETS["depth_spearman_max"]),
        "a1_ge_b1": a1_minus_b1 >= 0,
    }
    report = {
        "proxy": proxy.describe(),
        "seeds": list(seeds),
        "num_archs": len(archs),
        "seed_sd": seed_sd,
        "spread_sd": spread_sd,
        "spread_ratio": spread_sd / seed_sd if seed_sd > 0 else float("inf"),
        "depth_spearman": depth_rho,
        "b1": acc[0].tolist(),
        "a1": acc[1].tolist(),
        "a1_minus_b1": a1_minus_b1,
        "chance_level_archs": int(np.sum(means <= 100.0 / proxy.num_classes + 1e-9)),
        "targets": GATE_TARGETS,
        "checks": checks,
        "passed": all(checks.values()),
        "rows": [{"arch": a, "depth": d, "accuracies": row.tolist()} for a, d, row in zip(archs, depths, acc)],
    }
    write_json_atomic(os.path.join(output_dir, "gate_report.json"), report)

    def per_arch(ax) -> None:
        order = np.argsort(means)
        for rank, i in enumerate(order):
            color = "red" if i < 2 else "tab:blue"
            ax.scatter([rank] * acc.shape[1], acc[i], s=14, color=color, alpha=0.7)
        ax.set_xlabel("architecture (sorted by mean; red: B1, A1)")
        ax.set_ylabel("stand-alone proxy accuracy (%)")
        ax.set_title(f"seed sd {seed_sd:.2f}, spread sd {spread_sd:.2f}, Spearman(depth) {depth_rho:.2f}")

    save_figure(os.path.join(output_dir, "gate.png"), per_arch, figsize=(7, 4))
    return report


def supernet_fidelity(
    supernet,
    proxy: ProxyTask,
    space: SearchSpace,
    output_dir: str,
    num_archs: int = 30,
    seeds: Sequence[int] = (0, 1),
    sample_seed: int = 8642,
    progress: bool = True,
) -> Dict[str, Any]:
    """Kendall tau between the supernet's estimate and stand-alone accuracy (mean over ``seeds``).

    The architectures are drawn with their own seed (never the gate's or a search's), plus B1 and A1.
    Writes ``supernet_fidelity.json`` and ``supernet_fidelity.png``.

    Args:
        supernet: a trained :class:`~mindcv.nas.supernet_proxy.SupernetProxy`.
        proxy: the proxy task (stand-alone training).
        space: the search space.
        output_dir: where the results go.
        num_archs: random architectures.
        seeds: stand-alone training seeds.
        sample_seed: seed of the architecture draw.
        progress: show progress bars.

    Returns:
        The report: ``kendall_tau``, ``spearman``, the per-architecture numbers and the scoring time.
    """
    if num_archs < 2:
        raise InvalidArgumentError(f"supernet fidelity needs >= 2 architectures, got {num_archs}")
    refs = _references()
    archs = list(refs.values()) + random_archs(space, num_archs, sample_seed, exclude=refs.values())
    estimates, seconds = [], []
    for arch in progress_bar(archs, desc="supernet scores", disable=not progress):
        decisions = space.encode(arch)
        score = supernet.score(decisions)
        estimates.append(score["accuracy"])
        seconds.append(score["train_seconds"])
    store = StandaloneResults(proxy, os.path.join(output_dir, "standalone.json"))
    standalone = store.table(archs, list(seeds), "stand-alone", progress).mean(axis=1)
    report = {
        "num_archs": len(archs),
        "seeds": list(seeds),
        "kendall_tau": kendall_tau(estimates, standalone),
        "spearman": spearman_rho(estimates, standalone),
        "kendall_tau_random_only": kendall_tau(estimates[2:], standalone[2:]),
        "score_seconds_median": float(np.median(seconds)),
        "rows": [
            {"arch": a, "supernet": float(e), "standalone_mean": float(s)}
            for a, e, s in zip(archs, estimates, standalone)
        ],
    }
    write_json_atomic(os.path.join(output_dir, "supernet_fidelity.json"), report)

    def scatter(ax) -> None:
        ax.scatter(standalone[2:], estimates[2:], s=18, label="random architectures")
        ax.scatter(standalone[:2], estimates[:2], s=80, marker="*", color="red", label="B1, A1")
        ax.set_xlabel(f"stand-alone proxy accuracy, mean of {len(seeds)} seeds (%)")
        ax.set_ylabel("supernet estimate (%)")
        ax.set_title(f"Kendall tau {report['kendall_tau']:.2f} on {len(archs)} architectures")
        ax.legend(fontsize=8)

    save_figure(os.path.join(output_dir, "supernet_fidelity.png"), scatter, figsize=(5, 5))
    return report
