"""Choosing oneDNN's instruction set for MindSpore's CPU kernels by measurement.

MindSpore 2.10 runs its CPU convolutions through oneDNN 3.10. On CPUs with AVX-512 (with VNNI and
bfloat16), oneDNN picks a reference fallback for MindSpore's plain NCHW tensors and a 3x3 convolution runs
about 100x slower than when oneDNN is capped at AVX2; training and inference run about 10x slower. On an
AVX2-only CPU the default is already the best choice.

So at ``import mindcv`` (and therefore in every CLI, launcher rank and worker process), on an x86 CPU with
MindSpore's oneDNN and unless the user set ``ONEDNN_MAX_CPU_ISA`` / ``DNNL_MAX_CPU_ISA``, the package:

1. looks up the cached decision for this CPU model, its instruction-set flags, and the MindSpore and
   oneDNN versions in ``<cache>/cpu_isa.json`` (``<cache>`` is ``$MINDCV_HOME`` or ``~/.cache/mindcv``);
2. if there is none, times a few representative convolutions (dense 3x3, depthwise 3x3 and 5x5, pointwise;
   forward and backward) once under the default and once under each lower instruction-set level the CPU
   supports (AVX-512 variants down to AVX2), each in a child process because oneDNN fixes the level at its
   first primitive; a cap is chosen only when it is at least ``MIN_SPEEDUP`` (1.3x) faster than the default
   and changes oneDNN's level (a win below ``CONFIRM_BELOW`` is timed a second time); one process measures
   while others wait on a file lock, and a measurement with a failed probe is not cached;
3. applies the cap through oneDNN's ``dnnl_set_max_cpu_isa`` in this process and exports
   ``ONEDNN_MAX_CPU_ISA`` for child processes, with ``MINDCV_CPU_ISA_CHOSEN=<cap>@<host digest>`` marking it
   as ours (a child on another CPU, or one given its own setting or the off switch, decides afresh).

``MINDCV_AUTO_CPU_ISA=0`` turns the selection off. :func:`cpu_isa_report` (or ``mindcv-cpu-isa``) shows
what was measured and what is in effect.
"""

import contextlib
import ctypes
import datetime
import functools
import hashlib
import importlib.util
import json
import logging
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
from typing import Dict, List, Optional, Sequence

# neither imports MindSpore: this module imports it only inside functions
from ..io.atomic import AtomicWriteError, atomic_write
from ..io.download import LockTimeoutError, _file_lock, get_cache_dir

__all__ = [
    "CpuIsaDecision",
    "apply_cpu_isa",
    "cpu_isa_report",
    "cpu_isa_summary",
    "cpu_environment_line",
    "effective_cpu_isa",
    "host_isa_flags",
    "measure_cpu_isa",
]

_logger = logging.getLogger(__name__)

# oneDNN's dnnl_cpu_isa_t values (dnnl_types.h, oneDNN 3.x), checked against dnnl_cpu_isa2str of MindSpore's
# libdnnl; each level includes the ones below it.
ISA_VALUES: Dict[str, int] = {
    "DEFAULT": 0x0,
    "SSE41": 0x1,
    "AVX": 0x3,
    "AVX2": 0x7,
    "AVX2_VNNI": 0xF,
    "AVX2_VNNI_2": 0x1F,
    "AVX512_CORE": 0x27,
    "AVX512_CORE_VNNI": 0x67,
    "AVX512_CORE_BF16": 0xE7,
    "AVX10_1_512": 0x1EF,
    "AVX10_1_512_AMX": 0xFEF,
    "AVX10_1_512_AMX_FP16": 0x1FEF,
}
_ISA_NAMES = {value: name for name, value in ISA_VALUES.items()}
# Linux /proc/cpuinfo flags each level needs (on top of the level below it in this list).
_LEVEL_FLAGS = [
    ("SSE41", {"sse4_1"}),
    ("AVX", {"avx"}),
    ("AVX2", {"avx2", "fma"}),
    ("AVX2_VNNI", {"avx_vnni"}),
    ("AVX512_CORE", {"avx512f", "avx512bw", "avx512vl", "avx512dq"}),
    ("AVX512_CORE_VNNI", {"avx512_vnni"}),
    ("AVX512_CORE_BF16", {"avx512_bf16"}),
    ("AVX10_1_512", {"avx512_fp16"}),
    ("AVX10_1_512_AMX", {"amx_tile", "amx_int8", "amx_bf16"}),
    ("AVX10_1_512_AMX_FP16", {"amx_fp16"}),
]
# Caps worth trying below a CPU's best level: lower ones only remove vector width from fp32 kernels.
_TRIED_CAPS = ("AVX512_CORE_BF16", "AVX512_CORE_VNNI", "AVX512_CORE", "AVX2_VNNI", "AVX2")
_ISA_FLAG_NAMES = sorted({flag for _, flags in _LEVEL_FLAGS for flag in flags})

USER_ENV = ("ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA")
CHOSEN_ENV = "MINDCV_CPU_ISA_CHOSEN"  # marks an ONEDNN_MAX_CPU_ISA we exported (so a child does not call it the user's)
SWITCH_ENV = "MINDCV_AUTO_CPU_ISA"
MEASURING_ENV = "MINDCV_CPU_ISA_MEASURING"
CANDIDATES_ENV = "MINDCV_CPU_ISA_CANDIDATES"  # comma-separated caps to try instead of the automatic list
CACHE_NAME = "cpu_isa.json"
CACHE_VERSION = 1
# Identical settings measured in separate processes differ by up to ~20% on a shared machine; the case this
# exists for (AVX-512 reference kernels) is ~10x. A margin well above the noise keeps noise from choosing.
MIN_SPEEDUP = 1.3
CONFIRM_BELOW = 3.0  # a winner by less than this is timed a second time, with the default, before it is taken
CHILD_TIMEOUT_S = 120.0
LOCK_TIMEOUT_S = 900.0  # default wait for another process measuring ($MINDCV_LOCK_TIMEOUT overrides)
# names oneDNN also accepts for a level (its CPU dispatcher controls), and "ALL" for no cap
ISA_ALIASES = {
    "ALL": "DEFAULT",
    "AVX512_CORE_FP16": "AVX10_1_512",
    "AVX512_CORE_AMX": "AVX10_1_512_AMX",
    "AVX512_CORE_AMX_FP16": "AVX10_1_512_AMX_FP16",
}


class CpuIsaDecision:
    """What this process runs MindSpore's CPU kernels with.

    Attributes:
        source: ``"measured"`` (a cap chosen by measurement was applied), ``"default"`` (measurement found
            the default best, or there was nothing to try), ``"user"`` (the user set the variable),
            ``"inherited"`` (a parent process applied the measured cap), ``"off"`` (``MINDCV_AUTO_CPU_ISA=0``),
            ``"not-applicable"`` (not an x86 CPU device, or MindSpore has no oneDNN), ``"too-late"`` (MindSpore
            ran a CPU kernel before mindcv was imported, so the cap could not be applied), ``"failed"``.
        cap: the instruction-set cap in effect (``None``: oneDNN's default).
        entry: the cached measurement behind the decision, if any.
        message: one line for logs.
    """

    def __init__(self, source: str, cap: Optional[str], entry: Optional[dict], message: str) -> None:
        self.source, self.cap, self.entry, self.message = source, cap, entry, message

    def __repr__(self) -> str:
        return f"CpuIsaDecision(source={self.source!r}, cap={self.cap!r})"


_decision: Optional[CpuIsaDecision] = None


# ---------------------------------------------------------------------------------------------------- host facts
@functools.lru_cache(maxsize=1)  # read once per process: every import asks for the model and flags several times
def _cpuinfo() -> Dict[str, str]:
    fields: Dict[str, str] = {}
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if not line.strip():
                    break  # the first processor is enough
                key, _, value = line.partition(":")
                fields.setdefault(key.strip(), value.strip())
    except OSError:
        pass
    return fields


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``), or ``platform.processor()``."""
    return _cpuinfo().get("model name") or platform.processor() or "unknown CPU"


def host_isa_flags() -> List[str]:
    """The instruction-set flags of this CPU that decide oneDNN's kernels (sorted)."""
    flags = set(_cpuinfo().get("flags", "").split())
    return [f for f in _ISA_FLAG_NAMES if f in flags]


def host_best_isa(flags: Optional[Sequence[str]] = None) -> Optional[str]:
    """The highest oneDNN instruction-set level these CPU flags allow (``None`` below SSE4.1)."""
    have = set(host_isa_flags() if flags is None else flags)
    best = None
    for level, needed in _LEVEL_FLAGS:
        if level == "AVX2_VNNI":
            if needed <= have:
                best = level
            continue  # optional on the way to AVX-512
        if not needed <= have:
            break
        best = level
    return best


def candidate_caps(flags: Optional[Sequence[str]] = None) -> List[str]:
    """The caps worth measuring against the default on a CPU with these flags (best level first).

    ``$MINDCV_CPU_ISA_CANDIDATES`` (comma-separated cap names, or ``none``) replaces the automatic list.

    Raises:
        ValueError: the variable names an unknown cap.
    """
    listed = os.environ.get(CANDIDATES_ENV, "").strip()
    if listed.lower() == "none":
        return []
    if listed:
        caps = [c.strip().upper() for c in listed.split(",") if c.strip()]
        for cap in caps:
            _check_cap(cap, f"${CANDIDATES_ENV}")
        return list(dict.fromkeys(caps))
    have = set(host_isa_flags() if flags is None else flags)
    best = host_best_isa(have)
    if best is None:
        return []
    rank = {name: i for i, name in enumerate(ISA_VALUES)}
    caps = []
    for cap in _TRIED_CAPS:
        if rank[cap] >= rank[best]:
            continue
        if _supported(cap, have):
            caps.append(cap)
    return caps


def _supported(cap: str, have: set) -> bool:
    needed: set = set()
    for level, flags in _LEVEL_FLAGS:
        if level != "AVX2_VNNI" or cap == "AVX2_VNNI":
            needed |= flags
        if level == cap:
            return needed <= have
    return False


def _check_cap(cap: str, where: str) -> None:
    if cap not in ISA_VALUES or cap == "DEFAULT":
        valid = ", ".join(list(ISA_VALUES)[1:])
        raise ValueError(f"unknown oneDNN instruction-set cap '{cap}' in {where}; valid: {valid}")


def _mindspore_lib_dir() -> Optional[str]:
    spec = importlib.util.find_spec("mindspore")
    if spec is None or not spec.submodule_search_locations:
        return None
    return os.path.join(list(spec.submodule_search_locations)[0], "lib")


def _mindspore_version() -> str:
    try:
        from importlib.metadata import version

        return version("mindspore")
    except Exception:  # noqa: BLE001 - a source build without metadata
        return "unknown"


_onednn = None


def _load_onednn():
    """MindSpore's own libdnnl (the one its kernels use), or ``None``."""
    global _onednn
    if _onednn is None:
        folder = _mindspore_lib_dir()
        path = os.path.join(folder, "libdnnl.so.3") if folder else ""
        if not path or not os.path.exists(path):
            _onednn = False
        else:
            try:
                lib = ctypes.CDLL(path)
                lib.dnnl_set_max_cpu_isa.argtypes = [ctypes.c_int]
                lib.dnnl_set_max_cpu_isa.restype = ctypes.c_int
                lib.dnnl_get_effective_cpu_isa.restype = ctypes.c_int
                lib.dnnl_cpu_isa2str.restype = ctypes.c_char_p
                _onednn = lib
            except (OSError, AttributeError):
                _onednn = False
    return _onednn or None


def _onednn_version(lib) -> str:
    class Version(ctypes.Structure):
        _fields_ = [("major", ctypes.c_int), ("minor", ctypes.c_int), ("patch", ctypes.c_int)]

    lib.dnnl_version.restype = ctypes.POINTER(Version)
    v = lib.dnnl_version().contents
    return f"{v.major}.{v.minor}.{v.patch}"


def effective_cpu_isa() -> Optional[str]:
    """The instruction-set level oneDNN uses in this process (e.g. ``"AVX2"``), ``None`` without oneDNN.

    Asking fixes the level for the process (as a first convolution would), so call it after
    :func:`apply_cpu_isa` (``import mindcv`` does that).
    """
    lib = _load_onednn()
    if lib is None:
        return None
    value = lib.dnnl_get_effective_cpu_isa()
    return _ISA_NAMES.get(value, hex(value))


def fingerprint(lib=None) -> Dict[str, object]:
    """What a measured decision depends on: CPU model and flags, MindSpore and oneDNN versions."""
    lib = lib or _load_onednn()
    return {
        "cpu": cpu_model(),
        "isa_flags": host_isa_flags(),
        "candidates": candidate_caps(),
        "machine": platform.machine(),
        "mindspore": _mindspore_version(),
        "onednn": _onednn_version(lib) if lib else "none",
    }


def _fingerprint_key(fp: Dict[str, object]) -> str:
    return json.dumps(fp, sort_keys=True)


# ------------------------------------------------------------------------------------------------- measurement
_PROBE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_cpu_isa_probe.py")
# Run the probe file without putting its folder (mindcv/utils, which has a random.py) first on sys.path, as
# ``python file.py`` would; ``python -P`` does that only from Python 3.11. GRAPH mode needs a real source file.
_RUN_PROBE = "import runpy, sys; sys.argv = sys.argv[1:]; runpy.run_path(sys.argv[0], run_name='__main__')"


def _measure_one(cap: Optional[str], budget_s: float, timeout_s: float) -> dict:
    """Time the representative convolutions in a child process under ``cap`` (``None``: the default)."""
    env = {k: v for k, v in os.environ.items() if k not in USER_ENV and k != CHOSEN_ENV}
    env.update({MEASURING_ENV: "1", "GLOG_v": "3"})
    if cap is not None:
        env["ONEDNN_MAX_CPU_ISA"] = cap
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(
            [sys.executable, "-c", _RUN_PROBE, _PROBE, str(budget_s)],
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout_s,
        )
    except subprocess.TimeoutExpired:
        # a lower bound of its time: a default this slow while a cap finishes is the case this module exists for
        return {"error": f"timed out after {timeout_s:g} s", "timed_out_ms": timeout_s * 1000.0}
    except OSError as err:
        return {"error": f"could not start the probe: {err}"}
    for line in proc.stdout.splitlines():
        if line.startswith("MINDCV_CPU_ISA_RESULT "):
            try:
                found = json.loads(line.split(" ", 1)[1])
                ops_ms = {str(k): float(v) for k, v in found["ops_ms"].items()}
                effective = _ISA_NAMES.get(found["effective"], str(found["effective"]))
            except (ValueError, KeyError, TypeError, AttributeError):
                break
            if not all(math.isfinite(v) and v >= 0 for v in ops_ms.values()):
                break
            total = sum(ops_ms.values())
            return {"ops_ms": ops_ms, "total_ms": total, "effective": effective, "seconds": time.perf_counter() - t0}
    tail = " | ".join((proc.stderr or "").strip().splitlines()[-3:])
    return {"error": f"exit code {proc.returncode}: {tail or 'no output'}"}


def measure_cpu_isa(
    caps: Optional[Sequence[str]] = None, budget_s: float = 0.6, timeout_s: float = CHILD_TIMEOUT_S
) -> dict:
    """Measure the default and each cap in ``caps`` and decide which to use.

    Args:
        caps: instruction-set caps to try against the default (``None``: :func:`candidate_caps` of this CPU).
        budget_s: timing budget per convolution in each child (at least one timed call is made).
        timeout_s: a child taking longer is recorded as failed.

    Returns:
        A record with the measurements per candidate (``"default"`` and each cap), the chosen cap (``None``
        to keep the default), the speed-up over the default, and the cost of measuring.
    """
    caps = list(candidate_caps() if caps is None else caps)
    for cap in caps:
        _check_cap(cap, "caps")
    t0 = time.perf_counter()
    runs = {"default": _measure_one(None, budget_s, timeout_s)} if caps else {}
    for cap in caps:
        runs[cap] = _measure_one(cap, budget_s, timeout_s)
    decision = choose_cap(runs)
    confirmed = False
    if decision["choice"] and decision["speedup"] < CONFIRM_BELOW and "total_ms" in runs["default"]:
        # not clear-cut: time the default and the winner once more, after the others, and keep each one's
        # faster run, so one unlucky default run cannot choose a cap that is no faster
        for cap in ("default", decision["choice"]):
            again = _measure_one(None if cap == "default" else cap, budget_s, timeout_s)
            if again.get("total_ms", math.inf) < runs[cap]["total_ms"]:
                runs[cap] = again
        decision, confirmed = choose_cap(runs), True
    record = {
        "host_best_isa": host_best_isa(),
        "candidates": runs,
        "confirmed": confirmed,
        "measured_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "seconds": round(time.perf_counter() - t0, 2),
    }
    record.update(decision)
    return record


def choose_cap(runs: Dict[str, dict], min_speedup: float = MIN_SPEEDUP) -> dict:
    """The fastest candidate if it beats the default by at least ``min_speedup`` (else the default).

    Args:
        runs: ``{"default": {"total_ms": ..., "effective": level}, cap: {...} or {"error": ...}, ...}``.
        min_speedup: a cap must be this many times faster than the default to be chosen.

    Returns:
        ``{"choice": cap or None, "speedup": default / chosen total, "reason": str}``.
    """
    if not runs:
        return {"choice": None, "speedup": 1.0, "reason": "no lower instruction-set level is worth trying on this CPU"}
    default_run = runs.get("default", {})
    default = default_run.get("total_ms", default_run.get("timed_out_ms"))
    if default is None:
        why = default_run.get("error", "not measured")
        return {"choice": None, "speedup": 1.0, "reason": f"the default could not be measured ({why})"}
    timed = {cap: r["total_ms"] for cap, r in runs.items() if cap != "default" and "total_ms" in r}
    if not timed:
        return {"choice": None, "speedup": 1.0, "reason": "no cap could be measured"}
    best = min(timed, key=timed.get)
    speedup = default / timed[best] if timed[best] > 0 else 1.0
    same = runs[best].get("effective") is not None and runs[best].get("effective") == default_run.get("effective")
    if same:  # the cap did not change oneDNN's level on this CPU: any difference is noise
        return {"choice": None, "speedup": 1.0, "reason": f"{best} is the level oneDNN already uses here"}
    if speedup >= min_speedup:
        if "total_ms" not in default_run:
            why = f"the default did not finish within {default / 1000:g} s; {best} took {timed[best] / 1000:.2f} s"
            return {"choice": best, "speedup": round(speedup, 3), "reason": f"at least {speedup:.0f}x faster ({why})"}
        return {"choice": best, "speedup": round(speedup, 3), "reason": f"{speedup:.2f}x faster than the default"}
    return {
        "choice": None,
        "speedup": 1.0,
        "reason": f"the best cap ({best}) is only {math.floor(speedup * 100) / 100:.2f}x the default's speed; "
        "the default is kept",
    }


# ----------------------------------------------------------------------------------------------------- the cache
def cache_path() -> str:
    """``<cache>/cpu_isa.json`` (``<cache>`` is ``$MINDCV_HOME`` or ``~/.cache/mindcv``)."""
    return os.path.join(get_cache_dir(), CACHE_NAME)


def _read_cache(path: str) -> Dict[str, dict]:
    """The cached decisions by fingerprint; a missing, unreadable or malformed file is an empty cache."""
    try:
        with open(path, "rb") as f:
            saved = json.loads(f.read())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError, RecursionError) as err:
        _logger.warning("ignoring the CPU kernel cache %s (%s); it will be measured again", path, err)
        return {}
    if not (isinstance(saved, dict) and saved.get("version") == CACHE_VERSION and isinstance(saved.get("hosts"), dict)):
        _logger.warning("ignoring the CPU kernel cache %s (not a version-%d cache file)", path, CACHE_VERSION)
        return {}
    return {k: v for k, v in saved["hosts"].items() if _valid_entry(v)}


def _number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _valid_run(run: object) -> bool:
    if not isinstance(run, dict):
        return False
    if "ops_ms" in run:
        ops_ms = run["ops_ms"]
        return (
            isinstance(ops_ms, dict)
            and all(isinstance(k, str) and _number(v) and v >= 0 for k, v in ops_ms.items())
            and _number(run.get("total_ms"))
        )
    return isinstance(run.get("error"), str)


def _valid_entry(entry: object) -> bool:
    """Whether a cache entry has every field, of the right type, that deciding and reporting read."""
    if not isinstance(entry, dict) or "choice" not in entry:
        return False
    choice, speedup, runs = entry["choice"], entry.get("speedup"), entry.get("candidates")
    return (
        (choice is None or (isinstance(choice, str) and choice in ISA_VALUES and choice != "DEFAULT"))
        and _number(speedup)
        and 0 < speedup < 1e6
        and isinstance(entry.get("reason"), str)
        and isinstance(runs, dict)
        and all(isinstance(cap, str) and _valid_run(run) for cap, run in runs.items())
        and isinstance(entry.get("fingerprint", {}), dict)
    )


def _write_cache(path: str, hosts: Dict[str, dict]) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with atomic_write(path) as f:
        json.dump({"version": CACHE_VERSION, "hosts": hosts}, f, indent=1, sort_keys=True)


def _fallback_cache_path() -> str:
    """A per-user cache in the temporary folder, for when the cache folder cannot be used."""
    return os.path.join(tempfile.gettempdir(), f"mindcv-{os.getuid() if hasattr(os, 'getuid') else 'user'}", CACHE_NAME)


def _lock_timeout() -> float:
    try:
        value = float(os.environ.get("MINDCV_LOCK_TIMEOUT", LOCK_TIMEOUT_S))
    except ValueError:
        return LOCK_TIMEOUT_S
    return value if math.isfinite(value) and value > 0 else LOCK_TIMEOUT_S


def complete(entry: dict) -> bool:
    """Whether every candidate of a measurement finished (only complete measurements are cached)."""
    runs = entry.get("candidates", {})
    return all("ops_ms" in run for cap, run in runs.items() if not (cap == "default" and entry.get("choice")))


def cached_or_measured(remeasure: bool = False) -> dict:
    """This host's decision: from the cache, or measured now (one process measures; others wait for it).

    A measurement in which a probe failed is not cached (the next process measures again), except a default
    that timed out while a cap finished: that is the slow default this module exists for. If the cache folder
    cannot be used (or its file written), a per-user folder in the temporary directory serves instead; both are
    read, the cache folder first.

    Args:
        remeasure: measure again even if a decision is cached.

    Returns:
        The cache entry (see :func:`measure_cpu_isa`) with the host fingerprint under ``"fingerprint"`` and the
        file it is kept in under ``"cache_file"`` (``None``: not cached).
    """
    fp = fingerprint()
    key = _fingerprint_key(fp)
    paths = (cache_path(), _fallback_cache_path())
    if not remeasure:
        for path in paths:
            entry = _read_cache(path).get(key)
            if entry is not None:
                return dict(entry, cache_file=path)
    for path in paths:
        try:
            entry = _measure_in(path, fp, key, remeasure, spare=paths[-1])
        except _CacheUnusable as err:
            _logger.warning("mindcv: cannot use %s for the CPU kernel choice (%s)", os.path.dirname(path), err)
            continue
        if remeasure and entry.get("cache_file") != paths[0] and key in _read_cache(paths[0]):
            _logger.warning(
                "mindcv: the new measurement could not replace the decision in %s, which processes read first: "
                "make that file writable or delete it",
                paths[0],
            )
        return entry
    _logger.warning("mindcv: measuring the CPU kernel choice without a cache")
    return dict(_measure_and_log(fp, "nowhere (no usable cache folder)"), fingerprint=fp, cache_file=None)


class _CacheUnusable(Exception):
    pass


def _measure_in(path: str, fp: Dict[str, object], key: str, remeasure: bool, spare: str) -> dict:
    """Measure under the lock next to ``path`` (unless another process just did) and cache the result."""
    with contextlib.ExitStack() as stack:
        try:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            lock = _file_lock(path + ".lock", timeout=_lock_timeout(), what="measuring CPU kernels")
            stack.enter_context(lock)
        except (OSError, LockTimeoutError) as err:
            raise _CacheUnusable(str(err)) from None
        hosts = _read_cache(path)
        if key in hosts and not remeasure:  # another process measured while we waited
            return dict(hosts[key], cache_file=path)
        entry = dict(_measure_and_log(fp, path), fingerprint=fp)
        if not complete(entry):
            failed = {cap: run["error"] for cap, run in entry["candidates"].items() if "error" in run}
            _logger.warning(
                "mindcv: measuring the CPU kernels failed for %s; MindSpore's default is kept for this process and "
                "the next one measures again (mindcv-cpu-isa --remeasure to retry now)",
                "; ".join(f"{cap}: {why}" for cap, why in failed.items()),
            )
            return dict(entry, cache_file=None)
        for target in dict.fromkeys((path, spare)):  # the spare only if the cache file itself cannot be written
            if _store(target, key, entry, hosts if target == path else None):
                return dict(entry, cache_file=target)
        return dict(entry, cache_file=None)


def _store(path: str, key: str, entry: dict, hosts: Optional[Dict[str, dict]]) -> bool:
    """Add ``entry`` to the cache file ``path``; False (with a warning) if it cannot be written."""
    try:
        hosts = dict(_read_cache(path) if hosts is None else hosts)
        hosts[key] = entry
        os.makedirs(os.path.dirname(path), exist_ok=True)
        _write_cache(path, hosts)
        return True
    except (OSError, AtomicWriteError) as err:  # a full or read-only disk must not cost the measured choice
        _logger.warning("mindcv: could not cache the CPU kernel choice in %s (%s)", path, err)
        return False


_measured_in_process = False


def _measure_and_log(fp: Dict[str, object], path: str) -> dict:
    global _measured_in_process
    _measured_in_process = True
    caps = candidate_caps()
    if caps:
        _logger.warning(
            "mindcv: choosing MindSpore's CPU kernels for this CPU (%s): timing the default and %s once "
            "(about %d s); the result is cached in %s",
            fp["cpu"],
            ", ".join(caps),
            5 * (len(caps) + 1),
            path,
        )
    entry = measure_cpu_isa(caps)
    if entry["choice"]:
        _logger.warning(
            "mindcv: oneDNN capped at %s on this CPU: %.1fx faster than MindSpore's default (%s). "
            "Set ONEDNN_MAX_CPU_ISA yourself to override, MINDCV_AUTO_CPU_ISA=0 to turn this off.",
            entry["choice"],
            entry["speedup"],
            entry.get("host_best_isa"),
        )
    return entry


# ------------------------------------------------------------------------------------------------------ applying
def _x86_with_onednn() -> bool:
    # Not tied to the device target: scripts pick it after import, and on GPU/Ascend builds the cap only
    # affects the CPU kernels those runs use (the measurement runs once per host either way).
    return platform.machine().lower() in ("x86_64", "amd64") and _load_onednn() is not None


def _host_tag() -> str:
    """A short digest of this host's fingerprint: a marker exported by a parent on another CPU is not trusted."""
    return hashlib.sha1(_fingerprint_key(fingerprint()).encode()).hexdigest()[:12]


def _level_name(value: str) -> Optional[str]:
    name = value.upper()  # oneDNN ignores case, not surrounding spaces
    name = ISA_ALIASES.get(name, name)
    return name if name in ISA_VALUES else None


def apply_cpu_isa(remeasure: bool = False) -> CpuIsaDecision:
    """Cap oneDNN at the instruction-set level measured fastest on this CPU (once per process).

    Called by ``import mindcv``; it must run before MindSpore's first CPU convolution. A value of
    ``ONEDNN_MAX_CPU_ISA``/``DNNL_MAX_CPU_ISA`` set by the user is respected; ``MINDCV_AUTO_CPU_ISA=0`` turns
    the selection off.

    Args:
        remeasure: measure again instead of using the cached (or inherited) decision.

    Returns:
        The decision in effect for this process.
    """
    global _decision
    if _decision is not None and not remeasure:
        return _decision
    _decision = _decide(remeasure)
    return _decision


def _drop_inherited_cap() -> None:
    """Forget a cap a mindcv parent exported (the user's own setting or the off switch overrides it)."""
    if os.environ.get("ONEDNN_MAX_CPU_ISA") == os.environ.get(CHOSEN_ENV, "").split("@")[0]:
        os.environ.pop("ONEDNN_MAX_CPU_ISA", None)
    os.environ.pop(CHOSEN_ENV, None)


def _decide(remeasure: bool) -> CpuIsaDecision:
    if os.environ.get(MEASURING_ENV):
        return CpuIsaDecision("not-applicable", None, None, "measuring child process")
    off = os.environ.get(SWITCH_ENV, "").strip().lower() in ("0", "off", "false", "no")
    marker = os.environ.get(CHOSEN_ENV, "")
    if marker:
        cap, _, tag = marker.partition("@")
        if cap == "DEFAULT":
            untouched = not any(os.environ.get(k) for k in USER_ENV)
        else:  # the user's own DNNL_MAX_CPU_ISA or a different ONEDNN_MAX_CPU_ISA in the child wins
            untouched = os.environ.get("ONEDNN_MAX_CPU_ISA") == cap and not os.environ.get("DNNL_MAX_CPU_ISA")
        trusted = untouched and not remeasure and not off
        if trusted and _x86_with_onednn():
            try:
                trusted = tag == _host_tag()
            except Exception:  # noqa: BLE001 - an unreadable fingerprint: decide afresh
                trusted = False
        if trusted:
            if cap == "DEFAULT":
                return CpuIsaDecision("inherited", None, None, "MindSpore's default CPU kernels (decided by a parent)")
            return CpuIsaDecision("inherited", cap, None, f"oneDNN capped at {cap} (chosen by measurement)")
        _drop_inherited_cap()  # from another CPU, overridden by the user, or to be measured again
    user_var = next((k for k in USER_ENV if os.environ.get(k)), None)
    if user_var:
        value = os.environ[user_var]
        level = _level_name(value)
        if level is None:
            _logger.warning(
                "mindcv: %s=%r is not an instruction-set level oneDNN knows, so oneDNN ignores it and uses its "
                "default; valid: %s",
                user_var,
                value,
                ", ".join(list(ISA_VALUES) + list(ISA_ALIASES)),
            )
            return CpuIsaDecision("user", None, None, f"{user_var}={value!r} is ignored by oneDNN (not a known level)")
        cap = None if level == "DEFAULT" else level
        return CpuIsaDecision("user", cap, None, f"oneDNN capped at {value} by the user's environment")
    if off:
        return CpuIsaDecision("off", None, None, f"automatic CPU kernel selection turned off by {SWITCH_ENV}")
    if not _x86_with_onednn():
        return CpuIsaDecision("not-applicable", None, None, "not an x86 CPU with MindSpore's oneDNN")
    try:
        entry = cached_or_measured(remeasure)
        tag = _host_tag()
    except Exception as err:  # noqa: BLE001 - choosing kernels must never stop a user's program
        _logger.warning("mindcv: could not choose the CPU kernels (%s); keeping MindSpore's default", err)
        return CpuIsaDecision("failed", None, None, f"selection failed: {err}")
    choice = entry["choice"]
    if choice is None:
        if complete(entry):  # child processes need not look the decision up again
            os.environ[CHOSEN_ENV] = f"DEFAULT@{tag}"
        return CpuIsaDecision("default", None, entry, f"MindSpore's default CPU kernels ({entry['reason']})")
    status = _load_onednn().dnnl_set_max_cpu_isa(ISA_VALUES[choice])
    os.environ["ONEDNN_MAX_CPU_ISA"] = choice  # child processes (launcher ranks, workers) inherit the choice
    os.environ[CHOSEN_ENV] = f"{choice}@{tag}"
    if status != 0:
        _logger.warning(
            "mindcv: MindSpore already ran a CPU kernel before mindcv was imported, so oneDNN's instruction set "
            "is fixed for this process; capping it at %s would be %.1fx faster here. Import mindcv before "
            "running any MindSpore operation, or set ONEDNN_MAX_CPU_ISA=%s before starting Python.",
            choice,
            entry["speedup"],
            choice,
        )
        return CpuIsaDecision("too-late", None, entry, f"cap {choice} not applied: a CPU kernel had already run")
    return CpuIsaDecision(
        "measured", choice, entry, f"oneDNN capped at {choice} ({entry['speedup']:.1f}x the default's speed)"
    )


# ------------------------------------------------------------------------------------------------------ reporting
def cpu_isa_summary() -> Dict[str, object]:
    """One record for benchmark results and logs: CPU, its ISA flags, the cap and the effective level, threads."""
    decision = apply_cpu_isa()
    try:
        import mindspore as ms

        threads = ms.get_context("runtime_num_threads")
    except Exception:  # noqa: BLE001
        threads = None
    return {
        "cpu": cpu_model(),
        "logical_cores": os.cpu_count(),
        "isa_flags": host_isa_flags(),
        "cpu_isa_cap": decision.cap or "default",
        "cpu_isa_source": decision.source,
        "cpu_isa_effective": effective_cpu_isa(),
        "mindspore_threads": threads,
    }


def cpu_environment_line() -> str:
    """CPU, its ISA flags, oneDNN's level and cap, MindSpore version and op threads, as one line.

    Returns:
        The line; :func:`mindcv.runtime.environment_line` adds which depthwise kernels run.
    """
    info = cpu_isa_summary()
    lib = _load_onednn()
    onednn = f"oneDNN {_onednn_version(lib)}" if lib else "no oneDNN"
    return (
        f"{info['cpu']} ({info['logical_cores']} logical cores, {platform.machine()}); ISA flags "
        f"{' '.join(info['isa_flags']) or 'none'}; {onednn} at {info['cpu_isa_effective']} "
        f"(cap {info['cpu_isa_cap']}, decided by: {info['cpu_isa_source']}); MindSpore {_mindspore_version()}, "
        f"{info['mindspore_threads']} op threads"
    )


def cpu_isa_report(entry: Optional[dict] = None) -> str:
    """A readable account of the CPU kernel choice: host, candidates with their timings, the decision.

    Args:
        entry: the measurement to show (default: the one behind this process's decision, or the cached one).

    Returns:
        The report (also what ``mindcv-cpu-isa`` prints).
    """
    decision = apply_cpu_isa()
    lines = [
        f"CPU: {cpu_model()} ({os.cpu_count()} logical cores, {platform.machine()})",
        f"ISA flags: {' '.join(host_isa_flags()) or 'none'}",
        f"best oneDNN level of this CPU: {host_best_isa() or 'none'}",
        f"decision: {decision.source}: {decision.message}",
    ]
    effective = effective_cpu_isa()
    if effective:
        lines.append(f"oneDNN level in effect in this process: {effective}")
    entry = entry or decision.entry
    if entry is None and decision.source in ("user", "inherited", "off"):
        for path in (cache_path(), _fallback_cache_path()):
            found = _read_cache(path).get(_fingerprint_key(fingerprint()))
            if found is not None:
                entry = dict(found, cache_file=path)
                break
    if entry:
        fp = entry.get("fingerprint", {})
        lines.append(
            f"measured {entry.get('measured_at', '?')} in {entry.get('seconds', '?')} s "
            f"(MindSpore {fp.get('mindspore', '?')}, oneDNN {fp.get('onednn', '?')}), "
            + (f"cached in {entry['cache_file']}" if entry.get("cache_file") else "not cached")
        )
        runs = entry.get("candidates", {})
        order = sorted(runs, key=lambda cap: (cap != "default", -ISA_VALUES.get(cap, 0)))  # default, then best first
        timed = {cap: runs[cap] for cap in order if "ops_ms" in runs[cap]}
        if timed:
            ops_names = list(dict.fromkeys(op for run in timed.values() for op in run["ops_ms"]))
            lines.append("median ms".ljust(18) + "".join(cap.rjust(18) for cap in timed))
            for op in ops_names:
                lines.append(
                    op.ljust(18) + "".join(f"{run['ops_ms'].get(op, float('nan')):18.2f}" for run in timed.values())
                )
            lines.append("total".ljust(18) + "".join(f"{run['total_ms']:18.2f}" for run in timed.values()))
        for cap, run in runs.items():
            if "ops_ms" not in run:
                lines.append(f"{cap}: measurement failed: {run.get('error')}")
        lines.append(f"choice: {entry.get('choice') or 'default'} ({entry.get('reason')})")
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """``mindcv-cpu-isa``: print the CPU kernel choice; ``--remeasure`` measures again."""
    import argparse

    parser = argparse.ArgumentParser(
        prog="mindcv-cpu-isa",
        description="Show (or measure again) which oneDNN instruction set MindSpore's CPU kernels use.",
        allow_abbrev=False,
    )
    parser.add_argument("--remeasure", action="store_true", help="measure again and update the cache")
    parser.add_argument("--json", action="store_true", help="print the summary record as JSON")
    args = parser.parse_args(argv)
    try:
        candidate_caps()
    except ValueError as err:  # a mistyped $MINDCV_CPU_ISA_CANDIDATES
        print(f"mindcv-cpu-isa: {err}", file=sys.stderr)
        return 2
    entry = None
    if args.remeasure:
        if any(os.environ.get(k) for k in USER_ENV) and not os.environ.get(CHOSEN_ENV):
            print("note: ONEDNN_MAX_CPU_ISA is set in your environment, so the measurement is not applied here")
        # importing mindcv may just have measured (a first use): once is enough
        entry = apply_cpu_isa().entry if _measured_in_process else None
        entry = entry or cached_or_measured(remeasure=True)
        print(
            f"measured: choice {entry['choice'] or 'default'} ({entry['reason']}); processes started from now on "
            f"use it, this one keeps the level it started with"
        )
    if args.json:
        print(json.dumps(cpu_isa_summary(), indent=1))
    else:
        print(cpu_isa_report(entry))
    return 0


if __name__ == "__main__":
    sys.exit(main())
