"""Latency on the target platform: measured whole-model latency and a per-layer lookup-table predictor.

Both run MindSpore in graph mode at batch 1 with BatchNorm folded (the deployed form); compile time and
warm-up calls are excluded, and the median of the timed calls is reported with p10/p90. Thread count
is a process-wide MindSpore setting, so measurements run in a separate worker process
(:class:`LatencyWorker`) with its own thread count, away from the training in the search process.

The lookup table (FBNet / ProxylessNAS / ChamNet style) stores the latency of every distinct layer
(block type, kernel, expansion, SE, residual, input/output channels, stride, input resolution) measured
in isolation, plus the stem and head. A network's raw prediction is the sum of its layers' entries minus
the per-call overhead that each isolated measurement includes once. Isolated layers run faster or slower
than inside a network (caches, fused graphs, the launch cost per kernel), so the table is calibrated against
whole-network measurements (:func:`fit_calibration`): an intercept and a scale per layer kind, or one
intercept and slope, whichever predicts better out of sample on the calibration architectures.
"""

import json
import multiprocessing
import os
import platform
import statistics
import time
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

import mindspore as ms
from mindspore import nn

from ..errors import RunFailedError
from ..io.atomic import atomic_write
from ..kernels import depthwise_kernel_status, set_kernel_threads
from ..models.arch import decode_arch_def, parse_arch_string, round_channels
from ..models.fuse import fuse_bn
from ..models.layers import BLOCK_CLASSES, ConvBnAct, make_norm_layer
from ..models.mnasnet import MnasNet
from ..utils.context import execution_mode
from ..utils.cpu_isa import effective_cpu_isa
from .state import SearchStateError, StateChecker, read_json

__all__ = [
    "host_description",
    "time_calls",
    "measure_model_latency",
    "LatencyTable",
    "LatencyTableError",
    "LatencyWorker",
    "layer_keys",
    "read_latency_table",
    "fit_calibration",
    "apply_calibration",
    "pin_to_cpus",
]


def host_description() -> str:
    """CPU model and core count (latency numbers do not transfer across machines)."""
    cpu = platform.processor() or "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{cpu} ({os.cpu_count()} logical cores), {platform.system()} {platform.machine()}"


def time_calls(fn: Callable[[], object], warmup: int, repeats: int) -> Dict[str, float]:
    """Wall time of ``fn`` in milliseconds: median, p10, p90 of ``repeats`` calls after ``warmup`` calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1000.0)
    ordered = np.sort(times)
    return {
        "median_ms": float(statistics.median(times)),
        "p10_ms": float(np.percentile(ordered, 10)),
        "p90_ms": float(np.percentile(ordered, 90)),
    }


def _deployed(cell: nn.Cell, shape: Sequence[int]) -> Tuple[nn.Cell, ms.Tensor]:
    """The cell as deployed (evaluation mode, BatchNorm folded) and a fixed input of ``shape``."""
    cell.set_train(False)
    fuse_bn(cell)
    return cell, ms.Tensor(np.random.default_rng(0).standard_normal(shape).astype(np.float32))


def _timed_cell(cell: nn.Cell, shape: Sequence[int], warmup: int, repeats: int) -> Dict[str, float]:
    cell, x = _deployed(cell, shape)
    with execution_mode(ms.GRAPH_MODE):
        t0 = time.perf_counter()
        cell(x).asnumpy()  # compiles
        compile_s = time.perf_counter() - t0
        result = time_calls(lambda: cell(x).asnumpy(), warmup, repeats)
    result["compile_s"] = compile_s
    return result


def measure_model_latency(
    arch: str,
    width_mult: float = 1.0,
    resolution: int = 224,
    num_classes: int = 1000,
    warmup: int = 5,
    repeats: int = 30,
    stem_size: int = 32,
) -> Dict[str, float]:
    """Measured batch-1 inference latency of a whole network in this process.

    Args:
        arch: ``|``-joined architecture string.
        width_mult: width multiplier.
        resolution: input height and width.
        num_classes: classifier outputs.
        warmup: untimed calls after compilation.
        repeats: timed calls.
        stem_size: stem channels before width scaling.

    Returns:
        ``{"median_ms", "p10_ms", "p90_ms", "compile_s"}``.
    """
    model = MnasNet(arch, num_classes=num_classes, width_mult=width_mult, stem_size=stem_size)
    return _timed_cell(model, (1, 3, resolution, resolution), warmup, repeats)


class _Head(nn.Cell):
    """conv1x1 -> BN -> ReLU -> global pool -> dense, as at the end of every MnasNet."""

    def __init__(self, in_chs: int, num_features: int, num_classes: int) -> None:
        super().__init__()
        self.conv = ConvBnAct(in_chs, num_features, 1, noskip=True, norm_layer=make_norm_layer())
        self.classifier = nn.Dense(num_features, num_classes)

    def construct(self, x):
        return self.classifier(self.conv(x).mean(axis=(2, 3)))


class _Overhead(nn.Cell):
    """The cheapest graph: the per-call cost every isolated measurement contains once."""

    def construct(self, x):
        return x + 1.0


def layer_keys(
    arch: str,
    width_mult: float,
    resolution: int,
    stem_size: int = 32,
    num_features: int = 1280,
    num_classes: int = 1000,
) -> List[Tuple]:
    """The lookup-table keys of a network: stem, every layer (with its input resolution), head."""
    stages = decode_arch_def(parse_arch_string(arch))
    size = (resolution + 1) // 2
    in_chs = round_channels(stem_size, width_mult)
    keys: List[Tuple] = [("stem", 3, in_chs, resolution)]
    for blocks in stages:
        for b in blocks:
            out_chs = round_channels(b.out_chs, width_mult)
            keys.append(
                (b.block_type, b.kernel_size, float(b.exp_ratio), float(b.se_ratio), bool(b.noskip))
                + (in_chs, out_chs, b.stride, size)
            )
            size = (size + b.stride - 1) // b.stride
            in_chs = out_chs
    keys.append(("head", in_chs, num_features, num_classes, size))
    return keys


def _key_cell(key: Tuple) -> Tuple[nn.Cell, Tuple[int, ...]]:
    norm = make_norm_layer()
    if key[0] == "stem":
        _, cin, cout, size = key
        return ConvBnAct(cin, cout, 3, stride=2, noskip=True, norm_layer=norm), (1, cin, size, size)
    if key[0] == "head":
        _, cin, features, classes, size = key
        return _Head(cin, features, classes), (1, cin, size, size)
    block_type, k, e, se, noskip, cin, cout, stride, size = key
    cell = BLOCK_CLASSES[block_type](
        cin, cout, k, stride=stride, exp_ratio=e, se_ratio=se, noskip=noskip, norm_layer=norm
    )
    return cell, (1, cin, size, size)


def write_json_atomic(path: str, data) -> None:
    """Write JSON so that a crash never leaves a half-written file at ``path``."""
    with atomic_write(path) as f:
        json.dump(data, f, indent=1)


def _key_str(key: Tuple) -> str:
    return json.dumps(list(key))


class LatencyTableError(SearchStateError):
    """A lookup-table file that is not JSON or not of the table's shape."""


def read_latency_table(path: str) -> Dict:
    """Read and check a lookup-table file: ``{"meta": {"host": str, "threads": int, "cpu_isa": str, ...},
    "entries": {key: ms}}``
    where every key is a JSON list starting with the layer kind and every latency a finite number >= 0.

    Raises:
        LatencyTableError: naming the file and the JSON path of the first bad value.
    """
    hint = "delete it to re-measure the table"

    def corrupted(where: str, problem: str) -> LatencyTableError:
        return LatencyTableError(f"latency table '{path}' is corrupted at {where}: {problem}; {hint}")

    saved = read_json(path, lambda reason: LatencyTableError(f"latency table '{path}' is corrupted ({reason}); {hint}"))
    c = StateChecker(corrupted)
    c.obj(saved, "$", ("meta", "entries"))
    meta = c.obj(saved["meta"], "$.meta", ("host", "threads"))
    c.text(meta["host"], "$.meta.host")
    c.integer(meta["threads"], "$.meta.threads", 0)
    for optional in ("mindspore", "cpu_isa", "depthwise_kernels"):
        if optional in meta:
            c.text(meta[optional], f"$.meta.{optional}")
    if "calibration" in saved:
        cal = c.obj(saved["calibration"], "$.calibration", ("intercept_ms", "scales", "num_archs"))
        c.number(cal["intercept_ms"], "$.calibration.intercept_ms")
        c.integer(cal["num_archs"], "$.calibration.num_archs", 1)
        scales = c.obj(cal["scales"], "$.calibration.scales")
        if not scales:
            c.fail("$.calibration.scales", "no scale")
        for kind, value in scales.items():
            if kind not in (*CALIBRATION_KINDS, "total"):
                valid = ", ".join((*CALIBRATION_KINDS, "total"))
                c.fail(f"$.calibration.scales.{kind}", f"unknown layer kind (valid: {valid})")
            c.number(value, f"$.calibration.scales.{kind}", 0.0)
    entries = c.obj(saved["entries"], "$.entries")
    for key, value in entries.items():
        where = f"$.entries[{json.dumps(key)}]"
        try:
            parsed = json.loads(key)
        except ValueError:
            parsed = None
        if not (isinstance(parsed, list) and parsed and isinstance(parsed[0], str)):
            c.fail(where, "the key is not a layer key (a JSON list starting with the layer kind)")
        c.number(value, where, 0.0)
    return saved


class LatencyTable:
    """Per-layer latency lookup table, filled on demand and persisted as JSON.

    Args:
        path: JSON file to load from and save to (``None``: in memory only).
        warmup: untimed calls per entry.
        repeats: timed calls per entry.
        threads: recorded with the table (measurements with another thread count are not comparable).

    The table also records the host, the MindSpore version, the oneDNN instruction-set level its kernels ran
    with (:func:`mindcv.utils.cpu_isa.effective_cpu_isa`) and which depthwise kernels ran
    (:func:`mindcv.kernels.depthwise_kernel_status`); a saved table is reused only when all of them match,
    since a layer's latency under another level (or on another CPU) says nothing about this one.
    """

    def __init__(self, path: Optional[str] = None, warmup: int = 5, repeats: int = 30, threads: int = 0) -> None:
        self.path = path
        self.warmup, self.repeats = warmup, repeats
        self.entries: Dict[str, float] = {}
        self.calibration: Optional[Dict] = None
        self.meta = {
            "host": host_description(),
            "threads": threads,
            "mindspore": ms.__version__,
            "cpu_isa": effective_cpu_isa() or "none",
            "depthwise_kernels": depthwise_kernel_status().name,
        }
        if path and os.path.exists(path):
            saved = read_latency_table(path)
            if all(saved["meta"].get(k) == v for k, v in self.meta.items()):
                self.entries = dict(saved["entries"])
                self.calibration = saved.get("calibration")  # fitted to these entries: kept or dropped with them
        self._new = 0

    def _measure(self, key: Tuple) -> float:
        ks = _key_str(key)
        if ks not in self.entries:
            if key[0] == "overhead":
                cell, shape = _Overhead(), (1, 3, 8, 8)
            else:
                cell, shape = _key_cell(key)
            self.entries[ks] = _timed_cell(cell, shape, self.warmup, self.repeats)["median_ms"]
            self._new += 1
        return self.entries[ks]

    def components(self, arch: str, width_mult: float, resolution: int, **kwargs) -> Dict[str, float]:
        """The raw prediction split by layer kind (ms): ``overhead`` once, then the sums of the ``stem``, ``head``
        and each block type's entries with the overhead taken out. Missing entries are measured first."""
        overhead = self._measure(("overhead",))
        parts = {kind: 0.0 for kind in CALIBRATION_KINDS}
        parts["overhead"] = overhead
        for key in layer_keys(arch, width_mult, resolution, **kwargs):
            parts[key[0]] += max(self._measure(key) - overhead, 0.0)
        if self._new:
            self.save()
        return parts

    def predict(self, arch: str, width_mult: float, resolution: int, calibrated: bool = True, **kwargs) -> float:
        """Predicted whole-network latency (ms), measuring any missing entries first.

        Args:
            arch: ``|``-joined architecture string.
            width_mult: width multiplier.
            resolution: input size.
            calibrated: apply the table's calibration, if it has one (``False``: the raw sum of the entries).
        """
        parts = self.components(arch, width_mult, resolution, **kwargs)
        if calibrated and self.calibration is not None:
            return apply_calibration(self.calibration, parts)
        return sum(parts.values())

    def set_calibration(self, calibration: Optional[Dict]) -> None:
        """Store (or, with ``None``, drop) a calibration from :func:`fit_calibration` with the table."""
        self.calibration = calibration
        self.save()

    def save(self) -> None:
        if not self.path:
            return
        table = {"meta": self.meta, "entries": self.entries}
        if self.calibration is not None:
            table["calibration"] = self.calibration
        write_json_atomic(self.path, table)
        self._new = 0


CALIBRATION_KINDS = ("overhead", "stem", "head", *BLOCK_CLASSES)


def apply_calibration(calibration: Dict, parts: Dict[str, float]) -> float:
    """``intercept + sum(scale[kind] * part[kind])``; a kind the calibration has no scale for keeps scale 1,
    and ``scales == {"total": s}`` is the one-slope form."""
    scales = calibration["scales"]
    if "total" in scales:
        return calibration["intercept_ms"] + scales["total"] * sum(parts.values())
    return calibration["intercept_ms"] + sum(scales.get(kind, 1.0) * value for kind, value in parts.items())


def fit_calibration(parts: Sequence[Dict[str, float]], measured: Sequence[float]) -> Dict:
    """Fit the lookup table to whole-network measurements: per-kind scales, or one slope, with an intercept.

    Both forms are fitted by least squares on relative error (every architecture counts the same, small or
    large) and the one with the lower leave-one-out mean absolute percentage error is kept: the per-kind form
    has 5-6 parameters and can overfit few architectures. A kind that no architecture contains (or that never
    varies) keeps scale 1.

    Args:
        parts: :meth:`LatencyTable.components` of each calibration architecture.
        measured: their measured whole-network latencies (ms).

    Returns:
        ``{"intercept_ms", "scales", "num_archs", "form", "loo_mape_percent": {form: value}}``.
    """
    measured = np.asarray(measured, dtype=np.float64)
    if len(parts) != len(measured) or len(measured) < 8:
        raise ValueError(f"calibration needs >= 8 architectures with measurements, got {len(parts)}/{len(measured)}")
    kinds = [k for k in CALIBRATION_KINDS if k != "overhead" and np.ptp([p[k] for p in parts]) > 0]
    forms = {
        "per_kind": np.array([[p[k] for k in kinds] for p in parts]),
        "total": np.array([[sum(p.values())] for p in parts]),
    }
    fixed = {
        "per_kind": np.array([sum(v for k, v in p.items() if k not in kinds) for p in parts]),
        "total": np.zeros(len(parts)),
    }

    def solve(x: np.ndarray, base: np.ndarray, y: np.ndarray) -> np.ndarray:
        design = np.column_stack([np.ones(len(y)), x]) / y[:, None]  # relative residuals
        coef, *_ = np.linalg.lstsq(design, (y - base) / y, rcond=None)
        return coef

    loo = {}
    for form, x in forms.items():
        errors = []
        for i in range(len(measured)):
            keep = np.arange(len(measured)) != i
            coef = solve(x[keep], fixed[form][keep], measured[keep])
            guess = coef[0] + x[i] @ coef[1:] + fixed[form][i]
            errors.append(abs(guess - measured[i]) / measured[i])
        loo[form] = float(np.mean(errors) * 100)
    form = min(loo, key=loo.get)
    coef = solve(forms[form], fixed[form], measured)
    scales = {"total": float(coef[1])} if form == "total" else {k: float(c) for k, c in zip(kinds, coef[1:])}
    if any(v < 0 for v in scales.values()):  # a negative scale extrapolates badly: fall back to the slope form
        form = "total"
        coef = solve(forms[form], fixed[form], measured)
        scales = {"total": float(coef[1])}
    return {
        "intercept_ms": float(coef[0]),
        "scales": {k: max(v, 0.0) for k, v in scales.items()},
        "num_archs": int(len(measured)),
        "form": form,
        "loo_mape_percent": loo,
    }


class LatencyWorker:
    """A child process measuring latency with its own MindSpore thread count.

    A separate process because MindSpore fixes its kernel thread count per process: the search trains
    candidates with every core while the latency of a phone's big core is imitated with one thread. It is
    a one-worker ``ProcessPoolExecutor`` with the spawn start method (a fresh interpreter: MindSpore's
    runtime does not survive a fork); errors raised in the worker reach the caller as themselves. As with any
    spawn pool, a script that starts one (``run_search``, ``validate_lut``) needs an
    ``if __name__ == "__main__":`` guard: the worker imports the script's module.

    Args:
        threads: CPU threads for MindSpore's kernels in the worker (1 imitates one big mobile core).
        lut_path: JSON file of the per-layer lookup table.
        warmup: untimed calls.
        repeats: timed calls.
    """

    def __init__(self, threads: int = 1, lut_path: Optional[str] = None, warmup: int = 5, repeats: int = 30) -> None:
        self.threads = threads
        self._pool = ProcessPoolExecutor(
            max_workers=1,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=_start_worker,
            initargs=(threads, lut_path, warmup, repeats),
        )
        # start it now, with MindSpore's log at errors only (read once, when the worker imports MindSpore)
        quiet = "GLOG_v" not in os.environ
        if quiet:
            os.environ["GLOG_v"] = "3"
        try:
            self._call(_worker_ready)
        finally:
            if quiet:
                del os.environ["GLOG_v"]

    def _call(self, fn: Callable[..., dict], **query) -> dict:
        try:
            return self._pool.submit(fn, **query).result()
        except BrokenProcessPool:
            raise RunFailedError(f"the latency worker process died during {fn.__name__}({query})") from None

    def measure(self, arch: str, width_mult: float, resolution: int, **kwargs) -> dict:
        """Measured batch-1 latency of a network (see :func:`measure_model_latency`), with the worker's host."""
        return self._call(_worker_measure, arch=arch, width_mult=width_mult, resolution=resolution, **kwargs)

    def retime(self, arch: str, width_mult: float, resolution: int, **kwargs) -> dict:
        """Like :meth:`measure`, but the worker keeps the compiled network (a few), so timing it again is cheap."""
        return self._call(_worker_retime, arch=arch, width_mult=width_mult, resolution=resolution, **kwargs)

    def predict(self, arch: str, width_mult: float, resolution: int, **kwargs) -> dict:
        """Lookup-table latency of a network (``predicted_ms``, calibrated if the table is; ``components``: the
        raw sums per layer kind; the table grows by what it has not seen). ``calibrated=False``: the raw sum."""
        return self._call(_worker_predict, arch=arch, width_mult=width_mult, resolution=resolution, **kwargs)

    def set_calibration(self, calibration: Optional[Dict]) -> dict:
        """Store a calibration (:func:`fit_calibration`) with the worker's lookup table (``None`` drops it)."""
        return self._call(_worker_set_calibration, calibration=calibration)

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)

    def __enter__(self) -> "LatencyWorker":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# The worker process's state, set once by its initializer.
_worker: Dict[str, object] = {}


def pin_to_cpus(threads: int) -> Optional[List[int]]:
    """Pin this process to its last ``threads`` allowed CPUs (Linux), so timings do not move between cores.

    Returns:
        The CPUs pinned to, or ``None`` where affinity cannot be set (or ``threads`` is 0: all cores).
    """
    if threads <= 0 or not hasattr(os, "sched_setaffinity"):
        return None
    allowed = sorted(os.sched_getaffinity(0))
    chosen = allowed[-threads:]
    os.sched_setaffinity(0, chosen)
    return chosen


def _start_worker(threads: int, lut_path: Optional[str], warmup: int, repeats: int) -> None:
    pinned = pin_to_cpus(threads)  # before MindSpore starts its thread pools, which inherit the affinity
    ms.set_device("CPU")
    if threads > 0:
        ms.device_context.cpu.op_tuning.threads_num(threads)
        set_kernel_threads(threads)
    _worker.update(threads=threads, lut_path=lut_path, warmup=warmup, repeats=repeats, table=None)
    answer = {"host": host_description(), "threads": threads, "cpu_isa": effective_cpu_isa() or "none"}
    _worker.update(answer={**answer, "pinned_cpus": pinned})


def _worker_ready() -> dict:
    return dict(_worker["answer"])


def _worker_measure(**query) -> dict:
    answer = measure_model_latency(warmup=_worker["warmup"], repeats=_worker["repeats"], **query)
    return {**answer, **_worker["answer"]}


def _worker_retime(**query) -> dict:
    """Time a network again without rebuilding it (the drift check re-times MnasNet-B1 many times)."""
    key = json.dumps(query, sort_keys=True)
    compiled = _worker.setdefault("compiled", {})
    if key not in compiled:
        if len(compiled) >= 4:
            compiled.clear()
        resolution = query.get("resolution", 224)
        model = MnasNet(
            query["arch"],
            num_classes=query.get("num_classes", 1000),
            width_mult=query.get("width_mult", 1.0),
            stem_size=query.get("stem_size", 32),
        )
        compiled[key] = _deployed(model, (1, 3, resolution, resolution))
    model, x = compiled[key]
    with execution_mode(ms.GRAPH_MODE):
        answer = time_calls(lambda: model(x).asnumpy(), _worker["warmup"], _worker["repeats"])
    return {**answer, **_worker["answer"]}


def _worker_table() -> LatencyTable:
    if _worker["table"] is None:  # read on the first lookup-table query (a bad file is then reported to the caller)
        _worker["table"] = LatencyTable(_worker["lut_path"], _worker["warmup"], _worker["repeats"], _worker["threads"])
    return _worker["table"]


def _worker_predict(calibrated: bool = True, **query) -> dict:
    table = _worker_table()
    t0 = time.perf_counter()
    parts = table.components(**query)
    use_calibration = calibrated and table.calibration is not None
    predicted = apply_calibration(table.calibration, parts) if use_calibration else sum(parts.values())
    seconds = time.perf_counter() - t0
    answer = {"predicted_ms": predicted, "components": parts, "calibrated": use_calibration, "seconds": seconds}
    return {**answer, **_worker["answer"]}


def _worker_set_calibration(calibration: Optional[Dict]) -> dict:
    _worker_table().set_calibration(calibration)
    return dict(_worker["answer"])
