"""The MNAS search loop: propose, train on the proxy, measure latency, reward, learn; resumable.

The state (every strategy's generator and learned parameters, every evaluated candidate, the cache of
results by canonical architecture string) is written atomically to ``<output_dir>/state.json`` after
each evaluated candidate, so a killed search restarts where it stopped and loses at most the candidate
in progress. The strategies take turns (round robin), so machine noise and time of day hit them alike.
"""

import csv
import hashlib
import json
import logging
import math
import os
from dataclasses import asdict, dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from ..errors import InvalidArgumentError
from ..io.atomic import atomic_write
from ..io.progress import progress_bar
from ..kernels import depthwise_kernel_status
from ..models.arch import format_arch_string
from ..models.mnasnet import ARCH_DEFS
from ..utils.cpu_isa import effective_cpu_isa
from ..utils.plotting import save_figure
from .fidelity import kendall_tau, random_archs, spearman_rho
from .latency import (
    LatencyTable,
    LatencyTableError,
    LatencyWorker,
    apply_calibration,
    fit_calibration,
    host_description,
    read_latency_table,
    write_json_atomic,
)
from .proxy import PROXY_PROCEDURE, ProxyConfig, ProxyTask
from .reward import make_reward
from .search_space import SearchSpace
from .state import RESTART_HINT, SearchStateError, StateChecker, check_search_state, read_json, set_aside
from .strategies import STRATEGIES, create_strategy
from .supernet_proxy import SupernetConfig, SupernetProxy

__all__ = [
    "SearchConfig",
    "LatencyConfig",
    "RewardConfig",
    "run_search",
    "load_state",
    "validate_lut",
    "spearman",
    "pareto_front",
    "SearchStateError",
    "StateMismatchError",
]

_logger = logging.getLogger(__name__)
REFERENCES = {"MnasNet-B1": "b1", "MnasNet-A1": "a1"}
EVALUATIONS = ("standalone", "supernet")


@dataclass
class LatencyConfig:
    """How candidates are timed.

    Args:
        mode: ``measured`` (whole network, the faithful way) or ``lut`` (per-layer lookup table).
        resolution: input size of the latency measurement (deployment resolution, independent of the proxy's).
        threads: MindSpore CPU threads in the timing process (1 imitates one big mobile core).
        warmup: untimed calls after compilation.
        repeats: timed calls (median reported).
        target_ms: target latency T; default: the latency of MnasNet-B1 at the same width and settings.
        calibration_archs: with ``mode: lut``, calibrate the table on this many whole-network measurements
            before the search when it has no calibration yet (0: the raw table; see :func:`calibrate_lut`).
    """

    mode: str = "measured"
    resolution: int = 224
    threads: int = 1
    warmup: int = 5
    repeats: int = 30
    target_ms: Optional[float] = None
    calibration_archs: int = 0


@dataclass
class RewardConfig:
    """``constraint``: ``soft`` (alpha = beta = -0.07) or ``hard`` (alpha = 0, beta = -1), MnasNet's
    ``ACC x (LAT/T)^w``; or ``absolute``, TuNAS's ``ACC + beta |LAT/T - 1|`` (beta default -7 points per 100%).
    ``alpha``/``beta`` override the constraint's values."""

    constraint: str = "soft"
    alpha: Optional[float] = None
    beta: Optional[float] = None

    def function(self):
        """``(accuracy, latency, target) -> reward``.

        Raises:
            InvalidArgumentError: an unknown constraint or settings that do not apply to it.
        """
        try:
            return make_reward(self.constraint, self.alpha, self.beta)
        except ValueError as err:
            raise InvalidArgumentError(str(err)) from None


@dataclass
class SearchConfig:
    """A whole search; ``search.py`` reads it from YAML (sections ``space``, ``proxy``, ``latency``, ``reward``).

    Args:
        output_dir: where the state, CSV, plots and top-k architecture files go.
        budget: evaluated candidates per strategy.
        strategies: strategy name -> its settings (``rl``, ``random``, ``evolution``).
        top_k: architecture files written for the best candidates by reward.
        seed: seed of the strategies.
        confirm_seeds: extra proxy seeds on which the best candidate that beats B1 and B1 itself are retrained
            at the end, to check that the win is not seed noise.
        evaluation: how a candidate's accuracy is estimated: ``standalone`` (trained from scratch on the proxy,
            the paper's way) or ``supernet`` (scored with the weights of one supernet trained once on the proxy,
            see :mod:`mindcv.nas.supernet`).
    """

    output_dir: str = "./outputs/nas"
    budget: int = 30
    strategies: Dict[str, Dict[str, Any]] = field(default_factory=lambda: {"rl": {}, "random": {}, "evolution": {}})
    top_k: int = 5
    seed: int = 0
    confirm_seeds: List[int] = field(default_factory=list)
    space: Dict[str, Any] = field(default_factory=dict)
    proxy: ProxyConfig = field(default_factory=ProxyConfig)
    latency: LatencyConfig = field(default_factory=LatencyConfig)
    reward: RewardConfig = field(default_factory=RewardConfig)
    evaluation: str = "standalone"
    supernet: SupernetConfig = field(default_factory=SupernetConfig)

    def fingerprint(self) -> str:
        """Hash of everything that changes results (not the output folder or the budget, which may grow)."""
        relevant = asdict(self)
        for key in ("output_dir", "budget", "top_k", "confirm_seeds"):
            relevant.pop(key)
        if not self.latency.calibration_archs:  # searches saved before LUT calibration keep their fingerprint
            relevant["latency"].pop("calibration_archs")
        if self.evaluation == "standalone":  # searches saved before the supernet existed keep their fingerprint
            relevant.pop("evaluation")
            relevant.pop("supernet")
        relevant["proxy_procedure"] = PROXY_PROCEDURE
        return hashlib.sha256(json.dumps(relevant, sort_keys=True).encode()).hexdigest()[:16]


class _Evaluator:
    """Proxy accuracy plus latency of an architecture, cached by its canonical string."""

    def __init__(self, cfg: SearchConfig, cache: Dict[str, Dict], worker: LatencyWorker, progress: bool = True) -> None:
        if cfg.evaluation not in EVALUATIONS:
            raise InvalidArgumentError(f"evaluation must be one of {list(EVALUATIONS)}, got '{cfg.evaluation}'")
        self.cfg = cfg
        self.cache = cache
        self.worker = worker
        self.progress = progress
        self.space = SearchSpace(**cfg.space)
        self._proxy: Optional[ProxyTask] = None
        self._supernet: Optional[SupernetProxy] = None

    @property
    def proxy(self) -> ProxyTask:
        if self._proxy is None:  # decoding the data is skipped entirely when everything is cached
            self._proxy = ProxyTask(self.cfg.proxy)
            _logger.info(self._proxy.describe())
        return self._proxy

    @property
    def supernet(self) -> SupernetProxy:
        """The trained supernet (trained, or resumed, on first use)."""
        if self._supernet is None:
            supernet = SupernetProxy(self.proxy, self.space, self.cfg.supernet, self.cfg.output_dir)
            report = supernet.train(progress=self.progress)
            _logger.info("supernet ready: %d epochs (%.0f s in this run)", report["epochs"], report["seconds"])
            self._supernet = supernet
        return self._supernet

    def accuracy(self, arch: str, decisions: Optional[List[int]] = None) -> Dict[str, Any]:
        if self.cfg.evaluation == "standalone":
            return self.proxy.evaluate(arch)
        if decisions is None:
            decisions = self.space.encode(arch)
            if decisions is None:
                raise InvalidArgumentError(
                    f"'{arch}' is not a point of the search space, so the supernet cannot score it; "
                    "use evaluation: standalone, or a space that contains it"
                )
        return self.supernet.score(decisions)

    def latency(self, arch: str) -> Dict[str, float]:
        lat = self.cfg.latency
        args = dict(width_mult=self.cfg.proxy.width_mult, resolution=lat.resolution)
        if lat.mode == "measured":
            m = self.worker.measure(arch, **args)
            return {"latency_ms": m["median_ms"], "latency_p10_ms": m["p10_ms"], "latency_p90_ms": m["p90_ms"]}
        if lat.mode == "lut":
            p = self.worker.predict(arch, **args)
            return {"latency_ms": p["predicted_ms"], "latency_p10_ms": math.nan, "latency_p90_ms": math.nan}
        raise InvalidArgumentError(f"latency mode must be 'measured' or 'lut', got '{lat.mode}'")

    def __call__(self, arch: str, decisions: Optional[List[int]] = None) -> Dict[str, Any]:
        if arch in self.cache:
            return {**self.cache[arch], "cached": True}
        result = {**self.accuracy(arch, decisions), **self.latency(arch)}
        self.cache[arch] = result
        return {**result, "cached": False}


def pareto_front(points: List[tuple]) -> List[int]:
    """Indices of the points (latency, accuracy) that no other point beats in both (lower latency, higher acc)."""
    order = sorted(range(len(points)), key=lambda i: (points[i][0], -points[i][1]))
    front, best = [], -math.inf
    for i in order:
        if points[i][1] > best:
            front.append(i)
            best = points[i][1]
    return front


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman rank correlation (average ranks for ties); see :func:`~mindcv.nas.fidelity.spearman_rho`."""
    return spearman_rho(a, b)


class StateMismatchError(InvalidArgumentError):
    """``output_dir`` holds a (well-formed) state of a search with other settings."""


def load_state(
    path: str, cfg: SearchConfig, space: SearchSpace, strategies: Optional[Dict[str, Any]] = None
) -> Dict[str, Any]:
    """Read a saved search state, check its whole schema, and load the strategies' state into ``strategies``.

    Args:
        path: the ``state.json``.
        cfg: the configuration of the search that resumes it.
        space: its search space.
        strategies: name -> strategy (default: fresh ones built from ``cfg``); restored in place.

    Returns:
        The state.

    Raises:
        SearchStateError: the file is not JSON or has the wrong shape anywhere (the message names the file,
            the JSON path of the bad value and how to start over).
        StateMismatchError: the state belongs to a search with different settings.
    """
    hint = RESTART_HINT.format(name=os.path.basename(path))

    def corrupted(where: str, problem: str) -> SearchStateError:
        return SearchStateError(f"'{path}' is corrupted at {where}: {problem}; {hint}")

    saved = read_json(path, lambda reason: SearchStateError(f"'{path}' is corrupted ({reason}); {hint}"))
    checker = StateChecker(corrupted)
    checker.obj(saved, "$", ("fingerprint",))
    checker.text(saved["fingerprint"], "$.fingerprint")
    if saved["fingerprint"] != cfg.fingerprint():
        raise StateMismatchError(
            f"'{cfg.output_dir}' holds a search with different settings; use another output_dir or --restart"
        )
    if strategies is None:
        strategies = {
            name: create_strategy(name, space, seed=cfg.seed * 100 + i, **(kwargs or {}))
            for i, (name, kwargs) in enumerate(cfg.strategies.items())
        }
    references = {label: format_arch_string(ARCH_DEFS[key]) for label, key in REFERENCES.items()}
    check_search_state(saved, checker, strategies, space, references)
    for key in ("host", "cpu_isa", "depthwise_kernels"):
        if key in saved:
            checker.text(saved[key], f"$.{key}")
    # check_search_state checked every strategy state: an exception here is a bug and keeps its traceback
    for name, strategy_state in saved.get("strategies", {}).items():
        strategies[name].load_state_dict(strategy_state)
    return saved


def _discard_state(path: str, cfg: SearchConfig, space: SearchSpace) -> None:
    """``--restart``: the old state is overwritten, but a corrupted one is first kept for inspection."""
    try:
        load_state(path, cfg, space)
    except SearchStateError:
        _logger.warning("discarding the corrupted '%s' (kept as %s)", path, set_aside(path))
    except StateMismatchError:
        pass


def _check_same_latency_platform(state: Dict[str, Any], output_dir: str) -> None:
    """Latencies already in a state are comparable with new ones only on the same CPU at the same oneDNN level.

    Raises:
        StateMismatchError: the state was measured on another host or at another instruction-set level.
    """
    here = {
        "host": host_description(),
        "cpu_isa": effective_cpu_isa() or "none",
        "depthwise_kernels": depthwise_kernel_status().name,
    }
    if "cpu_isa" not in state:  # a state from before the level was recorded
        _logger.warning(
            "'%s' does not record the oneDNN level its latencies were measured at; it is assumed to be this "
            "process's (%s)",
            output_dir,
            here["cpu_isa"],
        )
    mismatches = (
        ("host", "on another CPU", "on that host"),
        ("cpu_isa", "at another oneDNN instruction-set level", f"with ONEDNN_MAX_CPU_ISA={state.get('cpu_isa')}"),
        (
            "depthwise_kernels",
            "with other depthwise kernels",
            "with MINDCV_DIRECT_DEPTHWISE=" + ("1" if state.get("depthwise_kernels") == "direct" else "0"),
        ),
    )
    for key, what, where in mismatches:
        if key in state and state[key] != here[key]:
            raise StateMismatchError(
                f"'{output_dir}' holds latencies measured {what} ({key} {state[key]!r}, here {here[key]!r}); "
                f"new ones would not be comparable with them. Resume {where}, or use another output_dir or --restart"
            )


def _check_lut_file(path: str) -> None:
    """A malformed lookup table is never used: it is set aside (kept for inspection) and re-measured."""
    if not os.path.exists(path):
        return
    try:
        read_latency_table(path)
    except LatencyTableError as err:
        _logger.warning("%s; kept as %s, the lookup table is re-measured", err, set_aside(path))


def run_search(cfg: SearchConfig, restart: bool = False, progress: bool = True) -> Dict[str, Any]:
    """Run (or resume) a search and write its outputs.

    Args:
        cfg: the search configuration.
        restart: discard a previous state in ``cfg.output_dir`` instead of resuming it.
        progress: show a progress bar.

    Returns:
        The summary that is also written to ``summary.json``.
    """
    for name in cfg.strategies:
        if name not in STRATEGIES:
            raise InvalidArgumentError(f"unknown search strategy '{name}'; valid: {sorted(STRATEGIES)}")
    if cfg.budget < 1:
        raise InvalidArgumentError(f"budget must be >= 1 candidate per strategy, got {cfg.budget}")
    reward_of = cfg.reward.function()
    os.makedirs(cfg.output_dir, exist_ok=True)
    state_path = os.path.join(cfg.output_dir, "state.json")
    space = SearchSpace(**cfg.space)
    strategies = {
        name: create_strategy(name, space, seed=cfg.seed * 100 + i, **(kwargs or {}))
        for i, (name, kwargs) in enumerate(cfg.strategies.items())
    }
    state: Dict[str, Any] = {"fingerprint": cfg.fingerprint(), "records": [], "cache": {}, "references": {}}
    if os.path.exists(state_path):
        if restart:
            _discard_state(state_path, cfg, space)
        else:
            state = load_state(state_path, cfg, space, strategies)
            _check_same_latency_platform(state, cfg.output_dir)
            _logger.info("resuming: %d candidates already evaluated", len(state["records"]))
    state["host"] = host_description()
    state["cpu_isa"] = effective_cpu_isa() or "none"  # the latency worker inherits this process's level
    state["depthwise_kernels"] = depthwise_kernel_status().name  # and its kernel cache and switch
    state["config"] = asdict(cfg)

    lat = cfg.latency
    lut_path = os.path.join(cfg.output_dir, "latency_lut.json")
    if lat.mode == "lut":
        _check_lut_file(lut_path)
        if lat.calibration_archs and LatencyTable(lut_path, threads=lat.threads).calibration is None:
            report = calibrate_lut(cfg, lat.calibration_archs, progress=progress)
            _logger.info(
                "lookup table calibrated on %d architectures (%s form): %.1f%% MAPE on them, B1 drift %.1f%%",
                lat.calibration_archs,
                report["calibration"]["form"],
                report["fit_mape_percent"],
                report["drift"]["b1_range_percent"],
            )
        # the table the worker will use, as it will read it: latencies of one search all come from one calibration
        in_use = LatencyTable(lut_path, threads=lat.threads).calibration
        if (state["records"] or state["references"]) and state.get("lut_calibration") != in_use:

            def told(calibration: Optional[Dict]) -> str:
                return f"calibrated as {json.dumps(calibration)}" if calibration else "not calibrated"

            raise StateMismatchError(
                f"'{cfg.output_dir}' holds latencies from a lookup table {told(state.get('lut_calibration'))}, but "
                f"latency_lut.json is now {told(in_use)}: new latencies would not be comparable. Restore that "
                "table, or use another output_dir or --restart"
            )
        state["lut_calibration"] = in_use
    with LatencyWorker(lat.threads, lut_path, lat.warmup, lat.repeats) as worker:
        evaluate = _Evaluator(cfg, state["cache"], worker, progress)
        for label, key in REFERENCES.items():
            if label not in state["references"]:
                arch = format_arch_string(ARCH_DEFS[key])
                state["references"][label] = {"arch": arch, **evaluate(arch)}
                write_json_atomic(state_path, state)
        target = lat.target_ms or state["references"]["MnasNet-B1"]["latency_ms"]
        state["target_ms"] = target

        names = list(strategies)
        total = cfg.budget * len(names)
        done = len(state["records"])
        bar = progress_bar(
            total=total, initial=min(done, total), desc="search", disable=not progress, dynamic_ncols=True
        )
        while done < total:
            name = names[done % len(names)]
            strategy = strategies[name]
            decisions = strategy.ask()
            arch = space.arch_string(decisions)
            result = evaluate(arch, decisions)
            reward = reward_of(result["accuracy"], result["latency_ms"], target)
            strategy.tell(decisions, reward)
            state["records"].append(
                {
                    "step": done,
                    "strategy": name,
                    "sample": done // len(names),
                    "arch": arch,
                    "decisions": decisions,
                    "reward": reward,
                    **result,
                }
            )
            state["strategies"] = {n: s.state_dict() for n, s in strategies.items()}
            write_json_atomic(state_path, state)
            done += 1
            best = max(r["reward"] for r in state["records"])
            bar.set_postfix(
                strategy=name, acc=f"{result['accuracy']:.1f}", lat=f"{result['latency_ms']:.1f}ms", best=f"{best:.2f}"
            )
            bar.update(1)
            write_csv(state, os.path.join(cfg.output_dir, "candidates.csv"))
        bar.close()
        summary = summarize(cfg, state, evaluate)
    write_json_atomic(state_path, state)
    return summary


CSV_FIELDS = [
    "step", "strategy", "sample", "reward", "accuracy", "latency_ms", "latency_p10_ms", "latency_p90_ms",
    "params", "loss", "train_seconds", "cached", "arch",
]  # fmt: skip


def write_csv(state: Dict[str, Any], path: str) -> None:
    """Every evaluated candidate (and the references, strategy ``reference``) as one CSV row."""
    with atomic_write(path) as f:
        writer = csv.DictWriter(f, fieldnames=CSV_FIELDS, extrasaction="ignore")
        writer.writeheader()
        for label, ref in state["references"].items():
            writer.writerow({**ref, "strategy": f"reference:{label}", "step": -1, "sample": -1})
        for record in state["records"]:
            writer.writerow(record)


def at_chance_warning(b1_accuracy: float, num_classes: int, held_out: int) -> Optional[str]:
    """A warning when MnasNet-B1's proxy accuracy is within 3 binomial standard deviations of chance.

    A proxy (or a supernet) that scores a good network at chance ranks candidates by noise; the search still runs
    to the end, so its summary must say so rather than present a winner.

    Args:
        b1_accuracy: B1's proxy accuracy (%).
        num_classes: classes of the proxy task.
        held_out: held-out images scored.

    Returns:
        The warning, or ``None`` when B1 is clearly above chance.
    """
    chance = 1.0 / num_classes
    margin = 300.0 * math.sqrt(chance * (1.0 - chance) / max(held_out, 1))
    if b1_accuracy > 100.0 * chance + margin:
        return None
    return (
        f"MnasNet-B1 scores {b1_accuracy:.1f}% on the proxy, within {margin:.1f} points (3 binomial sd over "
        f"{held_out} held-out images) of chance ({100.0 * chance:.1f}%): the accuracy estimates carry no "
        "information and this search's ranking is noise. Check the proxy with --gate (and the supernet with "
        "--validate_supernet) before trusting a result"
    )


def summarize(cfg: SearchConfig, state: Dict[str, Any], evaluate: _Evaluator) -> Dict[str, Any]:
    """Top-k architecture files, the comparison with B1, per-strategy reward statistics and the plots."""
    records = state["records"]
    b1 = state["references"]["MnasNet-B1"]
    unique: Dict[str, Dict] = {}
    for r in sorted(records, key=lambda r: -r["reward"]):
        unique.setdefault(r["arch"], r)
    top = list(unique.values())[: cfg.top_k]
    top_files = []
    for rank, r in enumerate(top, 1):
        path = os.path.join(cfg.output_dir, f"top{rank}.json")
        write_json_atomic(
            path,
            {
                "arch": r["arch"],
                "width_mult": cfg.proxy.width_mult,
                "reward": r["reward"],
                "proxy_accuracy": r["accuracy"],
                "latency_ms": r["latency_ms"],
                "found_by": r["strategy"],
                "usage": f"create_model('mnasnet_arch', arch='{path}')",
            },
        )
        top_files.append(path)

    per_strategy = {}
    for name in cfg.strategies:
        rewards = [r["reward"] for r in records if r["strategy"] == name]
        quarter = rewards[-max(1, len(rewards) // 4) :] if rewards else []
        per_strategy[name] = {
            "evaluated": len(rewards),
            "mean_reward": float(np.mean(rewards)) if rewards else math.nan,
            "mean_reward_last_quarter": float(np.mean(quarter)) if quarter else math.nan,
            "best_reward": float(max(rewards)) if rewards else math.nan,
        }
    # architectures at most as slow as B1 and more accurate on the proxy
    beating = sorted(
        (r for r in unique.values() if r["latency_ms"] <= b1["latency_ms"] and r["accuracy"] > b1["accuracy"]),
        key=lambda r: -r["accuracy"],
    )
    summary: Dict[str, Any] = {
        "host": state["host"],
        "cpu_isa": state["cpu_isa"],
        "depthwise_kernels": state.get("depthwise_kernels", "unknown"),
        "target_ms": state["target_ms"],
        "references": {
            k: {f: v[f] for f in ("accuracy", "latency_ms", "params", "arch")} for k, v in state["references"].items()
        },
        "strategies": per_strategy,
        "evaluated": len(records),
        "distinct_architectures": len(unique),
        "cache_hits": sum(1 for r in records if r.get("cached")),
        "top": [{k: r[k] for k in ("arch", "reward", "accuracy", "latency_ms", "strategy")} for r in top],
        "top_files": top_files,
        "beats_b1": [{k: r[k] for k in ("arch", "accuracy", "latency_ms", "strategy")} for r in beating[:5]],
    }
    proxy = evaluate.proxy
    warning = at_chance_warning(b1["accuracy"], proxy.num_classes, len(proxy.val_y))
    summary["warnings"] = [warning] if warning else []
    if warning:
        _logger.warning(warning)
    if beating and cfg.confirm_seeds:
        summary["confirmation"] = _confirm(beating[0]["arch"], b1["arch"], cfg.confirm_seeds, evaluate)
    summary["plots"] = plot_search(state, cfg.output_dir)
    write_json_atomic(os.path.join(cfg.output_dir, "summary.json"), summary)
    return summary


def _confirm(arch: str, b1_arch: str, seeds: List[int], evaluate: _Evaluator) -> Dict[str, Any]:
    """Retrain the winner and B1 on more seeds and re-time both, interleaved, on the same proxy.

    With stand-alone evaluation the search's own score is the first seed; a supernet's estimate is not a
    stand-alone accuracy, so then only the retrained seeds count.
    """
    out = {"seeds": list(seeds), "candidate": {"arch": arch}, "MnasNet-B1": {"arch": b1_arch}}
    for key, a in (("candidate", arch), ("MnasNet-B1", b1_arch)):
        accs = [evaluate.proxy.evaluate(a, seed=s)["accuracy"] for s in seeds]
        if evaluate.cfg.evaluation == "standalone":
            accs.insert(0, evaluate.cache[a]["accuracy"])
        out[key]["accuracies"] = accs
        out[key]["mean_accuracy"] = float(np.mean(accs))
    latencies = {"candidate": [], "MnasNet-B1": []}
    for _ in range(3):
        for key, a in (("candidate", arch), ("MnasNet-B1", b1_arch)):
            latencies[key].append(evaluate.latency(a)["latency_ms"])
    for key in latencies:
        out[key]["latency_ms_repeats"] = latencies[key]
        out[key]["median_latency_ms"] = float(np.median(latencies[key]))
    return out


def plot_search(state: Dict[str, Any], output_dir: str) -> List[str]:
    """``pareto.png`` (accuracy vs latency, front, B1 and A1 marked) and ``reward_curve.png`` per strategy.

    Returns:
        The written files (none without matplotlib).
    """
    records = state["records"]
    names = sorted({r["strategy"] for r in records})
    colors = dict(zip(names, ["tab:blue", "tab:orange", "tab:green", "tab:purple", "tab:brown"]))

    def pareto(ax) -> None:
        for name in names:
            pts = [(r["latency_ms"], r["accuracy"]) for r in records if r["strategy"] == name]
            ax.scatter(*zip(*pts), s=18, alpha=0.6, color=colors[name], label=name)
        everything = [(r["latency_ms"], r["accuracy"]) for r in records]
        everything += [(v["latency_ms"], v["accuracy"]) for v in state["references"].values()]
        front = sorted(everything[i] for i in pareto_front(everything))
        ax.step(*zip(*front), where="post", color="black", linewidth=1, label="Pareto front")
        for (label, ref), marker in zip(state["references"].items(), ["*", "P"]):
            ax.scatter(
                [ref["latency_ms"]],
                [ref["accuracy"]],
                marker=marker,
                s=220,
                color="red",
                edgecolor="black",
                zorder=5,
                label=f"{label} (same width)",
            )
        ax.axvline(state["target_ms"], color="gray", linestyle=":", label=f"target T = {state['target_ms']:.1f} ms")
        _label(ax, "measured latency (ms, batch 1)", "proxy accuracy (%)", "MNAS search: accuracy vs latency")

    def reward_curves(ax) -> None:
        for name in names:
            rewards = np.array([r["reward"] for r in records if r["strategy"] == name])
            window = max(1, min(8, len(rewards) // 4))
            running = np.convolve(rewards, np.ones(window) / window, mode="valid")
            ax.plot(np.arange(len(rewards)), rewards, ".", color=colors[name], alpha=0.3)
            ax.plot(
                np.arange(window - 1, len(rewards)), running, color=colors[name], label=f"{name} (mean of {window})"
            )
        _label(ax, "candidate of the strategy", "reward ACC x (LAT/T)^w", "reward per strategy")

    written = [
        save_figure(os.path.join(output_dir, "pareto.png"), pareto),
        save_figure(os.path.join(output_dir, "reward_curve.png"), reward_curves, figsize=(7, 4)),
    ]
    return [path for path in written if path is not None]


def _label(ax, xlabel: str, ylabel: str, title: str) -> None:
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(fontsize=8)


LUT_TARGETS = {"mape_percent_max": 5.0, "within_10_percent_min": 95.0, "kendall_tau_min": 0.9}
LUT_CALIBRATION_SEED = 2468  # the held-out architectures of --validate_lut are drawn with another seed
LUT_VALIDATION_SEED = 1234
DRIFT_WARNING_PERCENT = 5.0
B1_DRIFT_WINDOW = 3  # B1 timings on each side of an architecture that set its local machine speed


def _timed_against_b1(
    cfg: SearchConfig, worker: LatencyWorker, archs: List[str], desc: str, progress: bool
) -> Tuple[List[Dict[str, Any]], Dict[str, float]]:
    """Measure each architecture whole and through the table, re-timing MnasNet-B1 between them (drift check)."""
    args = dict(width_mult=cfg.proxy.width_mult, resolution=cfg.latency.resolution)
    b1 = format_arch_string(ARCH_DEFS["b1"])
    rows, b1_times = [], [worker.retime(b1, **args)["median_ms"]]
    for arch in progress_bar(archs, desc=desc, disable=not progress):
        measured = worker.measure(arch, **args)["median_ms"]
        lookup = worker.predict(arch, **args)
        rows.append(
            {
                "arch": arch,
                "measured_ms": measured,
                "predicted_ms": lookup["predicted_ms"],
                "calibrated": lookup["calibrated"],
                "components": lookup["components"],
            }
        )
        b1_times.append(worker.retime(b1, **args)["median_ms"])
    times = np.array(b1_times)
    drift = {
        "b1_median_ms": float(np.median(times)),
        "b1_min_ms": float(times.min()),
        "b1_max_ms": float(times.max()),
        "b1_range_percent": float((times.max() - times.min()) / np.median(times) * 100),
        "b1_times_ms": [float(t) for t in times],
    }
    # the machine's speed around each architecture: the median of the B1 timings nearest to it. One 30-call B1
    # median varies by ~4% between calls, as much as the drift it is meant to remove; the median of
    # B1_DRIFT_WINDOW timings on each side follows drift over minutes without adding that noise
    for i, row in enumerate(rows):
        lo, hi = max(0, i + 1 - B1_DRIFT_WINDOW), min(len(times), i + 1 + B1_DRIFT_WINDOW)
        row["b1_local_ms"] = float(np.median(times[lo:hi]))
    if drift["b1_range_percent"] > DRIFT_WARNING_PERCENT:
        _logger.warning(
            "MnasNet-B1 re-timed between the architectures ranged %.1f%% (%.2f-%.2f ms): the machine's speed drifted "
            "during the measurement (another job?); the numbers are less trustworthy than they look",
            drift["b1_range_percent"],
            drift["b1_min_ms"],
            drift["b1_max_ms"],
        )
    return rows, drift


def calibrate_lut(
    cfg: SearchConfig, num_archs: int = 40, seed: int = LUT_CALIBRATION_SEED, progress: bool = True
) -> Dict[str, Any]:
    """Fit the lookup table to whole-network measurements of ``num_archs`` random architectures.

    Each architecture is timed whole (the timing process pinned to its threads' cores) and predicted from the
    table; MnasNet-B1 is re-timed between every two as a drift check, and each measurement is scaled by the
    run's median B1 time over the median of the B1 timings around it (a shared machine's speed moves by 10% and
    more over minutes). The fit (:func:`fit_calibration`) is
    stored in ``latency_lut.json`` and used by every later prediction from that table, searches included.
    Writes ``lut_calibration.json``.

    Returns:
        The report: the calibration, the B1 drift and the per-architecture rows.
    """
    if num_archs < 8:
        raise InvalidArgumentError(f"LUT calibration needs >= 8 architectures, got {num_archs}")
    os.makedirs(cfg.output_dir, exist_ok=True)
    lat = cfg.latency
    lut_path = os.path.join(cfg.output_dir, "latency_lut.json")
    _check_lut_file(lut_path)
    archs = random_archs(SearchSpace(**cfg.space), num_archs, seed)
    with LatencyWorker(lat.threads, lut_path, lat.warmup, lat.repeats) as worker:
        rows, drift = _timed_against_b1(cfg, worker, archs, "LUT calibration", progress)
        reference = drift["b1_median_ms"]
        for r in rows:  # each measurement brought to the run's median speed (the nearest B1 timings say how fast)
            r["corrected_ms"] = r["measured_ms"] * reference / r["b1_local_ms"]
        calibration = fit_calibration([r["components"] for r in rows], [r["corrected_ms"] for r in rows])
        calibration.update(seed=seed, resolution=lat.resolution, width_mult=cfg.proxy.width_mult, b1_ms=reference)
        answer = worker.set_calibration(calibration)
    for r in rows:
        r["raw_ms"] = float(sum(r["components"].values()))
        r["predicted_ms"] = float(apply_calibration(calibration, r["components"]))
        r["calibrated"] = True
    report = {
        "host": answer["host"],
        "threads": lat.threads,
        "pinned_cpus": answer.get("pinned_cpus"),
        "calibration": calibration,
        "drift": drift,
        "fit_mape_percent": _mape([r["predicted_ms"] for r in rows], [r["corrected_ms"] for r in rows]),
        "raw_mape_percent": _mape([r["raw_ms"] for r in rows], [r["corrected_ms"] for r in rows]),
        "rows": rows,
    }
    write_json_atomic(os.path.join(cfg.output_dir, "lut_calibration.json"), report)
    return report


def _mape(predicted: Sequence[float], measured: Sequence[float]) -> float:
    p, m = np.asarray(predicted, np.float64), np.asarray(measured, np.float64)
    return float(np.mean(np.abs(p - m) / m) * 100)


def validate_lut(
    cfg: SearchConfig, num_archs: int = 50, seed: int = LUT_VALIDATION_SEED, progress: bool = True
) -> Dict[str, Any]:
    """Accuracy of the lookup-table predictor against measured latency on held-out random architectures.

    The table's calibration (:func:`calibrate_lut`) is applied when it has one; the architectures are drawn with
    another seed than the calibration's and any calibration architecture is excluded. B1 is re-timed between
    every two architectures as a drift check. Writes ``lut_report.json`` and ``lut_accuracy.png``.

    Returns:
        MAPE, the share within +-10%, Kendall tau and Spearman (calibrated, and of the raw sums) against the
        measurements brought to the calibration's machine speed by the B1 timings nearest to each (``uncorrected``:
        the same against the measurements as they came), the B1 drift, the targets and whether they are met.
    """
    os.makedirs(cfg.output_dir, exist_ok=True)
    lat = cfg.latency
    lut_path = os.path.join(cfg.output_dir, "latency_lut.json")
    _check_lut_file(lut_path)
    calibration_archs = _read_calibration_archs(cfg.output_dir)
    archs = random_archs(SearchSpace(**cfg.space), num_archs, seed, exclude=calibration_archs)
    with LatencyWorker(lat.threads, lut_path, lat.warmup, lat.repeats) as worker:
        rows, drift = _timed_against_b1(cfg, worker, archs, "LUT vs measured", progress)
        answer = worker.predict(archs[0], width_mult=cfg.proxy.width_mult, resolution=lat.resolution)
    calibrated = all(r["calibrated"] for r in rows)
    calibration = read_latency_table(lut_path).get("calibration") if calibrated else None
    if not calibrated:
        _logger.warning("the lookup table has no calibration: run search.py --calibrate_lut 40 first")
    # the table speaks in the machine's speed during calibration (B1 at its median then): each measurement is
    # brought to that speed by the B1 timings beside it, so the comparison judges the model, not the drift
    reference = (calibration or {}).get("b1_ms") or drift["b1_median_ms"]
    for r in rows:
        r["raw_ms"] = float(sum(r["components"].values()))
        r["corrected_ms"] = r["measured_ms"] * reference / r["b1_local_ms"]
    measured = np.array([r["corrected_ms"] for r in rows])
    as_measured = np.array([r["measured_ms"] for r in rows])
    predicted = np.array([r["predicted_ms"] for r in rows])
    raw = np.array([r["raw_ms"] for r in rows])
    within = np.abs(predicted - measured) / measured <= 0.10
    report = {
        "host": answer["host"],
        "threads": lat.threads,
        "pinned_cpus": answer.get("pinned_cpus"),
        "resolution": lat.resolution,
        "width_mult": cfg.proxy.width_mult,
        "num_archs": len(rows),
        "calibrated": calibrated,
        "mape_percent": _mape(predicted, measured),
        "within_10_percent": float(within.mean() * 100),
        "kendall_tau": kendall_tau(predicted, measured),
        "spearman": spearman(predicted, measured),
        "raw_mape_percent": _mape(raw, measured),
        "raw_kendall_tau": kendall_tau(raw, measured),
        "reference_b1_ms": float(reference),
        "uncorrected": {
            "mape_percent": _mape(predicted, as_measured),
            "within_10_percent": float((np.abs(predicted - as_measured) / as_measured <= 0.10).mean() * 100),
            "kendall_tau": kendall_tau(predicted, as_measured),
        },
        "drift": drift,
        "targets": LUT_TARGETS,
        "rows": rows,
    }
    report["passed"] = bool(
        report["mape_percent"] <= LUT_TARGETS["mape_percent_max"]
        and report["within_10_percent"] >= LUT_TARGETS["within_10_percent_min"]
        and report["kendall_tau"] >= LUT_TARGETS["kendall_tau_min"]
    )
    write_json_atomic(os.path.join(cfg.output_dir, "lut_report.json"), report)

    def lut_vs_measured(ax) -> None:
        ax.scatter(measured, raw, s=12, color="0.6", label="raw table sum")
        ax.scatter(measured, predicted, s=20, label="calibrated" if calibrated else "table (not calibrated)")
        lim = [0, max(measured.max(), predicted.max(), raw.max()) * 1.1]
        ax.plot(lim, lim, "k:", linewidth=1)
        ax.fill_between(lim, [v * 0.9 for v in lim], [v * 1.1 for v in lim], color="0.9", label="+-10%")
        ax.set_xlabel(f"measured latency (ms; at B1 = {reference:.2f} ms, by the B1 timings nearest to it)")
        ax.set_ylabel("lookup-table prediction (ms)")
        ax.set_title(
            f"MAPE {report['mape_percent']:.1f}%, {report['within_10_percent']:.0f}% within 10%, "
            f"tau {report['kendall_tau']:.3f}"
        )
        ax.legend(fontsize=8)

    save_figure(os.path.join(cfg.output_dir, "lut_accuracy.png"), lut_vs_measured, figsize=(5, 5))
    return report


def _read_calibration_archs(output_dir: str) -> List[str]:
    path = os.path.join(output_dir, "lut_calibration.json")
    if not os.path.exists(path):
        return []
    report = read_json(path, lambda reason: SearchStateError(f"'{path}' is unreadable ({reason}); delete it"))
    rows = report.get("rows") if isinstance(report, dict) else None
    if not isinstance(rows, list) or not all(isinstance(r, dict) and isinstance(r.get("arch"), str) for r in rows):
        raise SearchStateError(f"'{path}' has no list of calibration architectures under 'rows'; delete it")
    return [r["arch"] for r in rows]
