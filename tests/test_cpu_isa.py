"""Tests of the oneDNN instruction-set choice made at ``import mindcv`` (``mindcv/utils/cpu_isa.py``).

oneDNN fixes its instruction-set level per process at its first primitive, so everything about applying
a cap runs in fresh child processes started with a clean environment (no ``ONEDNN_MAX_CPU_ISA``, no
``MINDCV_CPU_ISA_*`` exported by this pytest process) and a private ``MINDCV_HOME``. Those children read
the level in effect straight from MindSpore's ``libdnnl`` with ctypes, not through mindcv.

The rules of the decision (``_decide``) are also checked in this process against a libdnnl wrapper that
records ``dnnl_set_max_cpu_isa`` instead of calling it, so this process's level is never touched.

The tests hold on any x86 host with MindSpore's oneDNN: every child (and this process, in the in-process
tests) pins ``MINDCV_CPU_ISA_CANDIDATES`` (to ``none`` unless a test measures SSE41, a real and slower level
everywhere), so no test starts the automatic measurement an AVX-512 host would run, and the level oneDNN uses
by default on this host (``DEFAULT_LEVEL``) is read once from a child that imports MindSpore only.
"""

import contextlib
import ctypes
import datetime
import json
import math
import os
import random
import subprocess
import sys
from pathlib import Path
from typing import Dict, List, NamedTuple, Optional, Sequence, Tuple

import pytest

import mindspore

from mindcv.utils import cpu_isa
from mindcv.utils.cpu_isa import ISA_VALUES, candidate_caps, choose_cap, host_best_isa

REPO = Path(__file__).resolve().parents[1]
LIBDNNL = os.path.join(os.path.dirname(mindspore.__file__), "lib", "libdnnl.so.3")
STRIPPED_ENV = (
    "ONEDNN_MAX_CPU_ISA",
    "DNNL_MAX_CPU_ISA",
    "MINDCV_CPU_ISA_CHOSEN",
    "MINDCV_CPU_ISA_CANDIDATES",
    "MINDCV_AUTO_CPU_ISA",
    "MINDCV_CPU_ISA_MEASURING",
)
CAP_NAMES = [name for name in ISA_VALUES if name != "DEFAULT"]
PROBE_OPS = {
    f"{name} {way}" for name in ("dense3x3", "depthwise3x3", "depthwise5x5", "pointwise") for way in "fwd bwd".split()
}
MEASURING_LINE = "choosing MindSpore's CPU kernels"

# flag sets of real CPUs (Linux /proc/cpuinfo names)
AVX2_ONLY = ["sse4_1", "avx", "avx2", "fma"]
AVX512 = AVX2_ONLY + ["avx512f", "avx512bw", "avx512vl", "avx512dq"]
CASCADE_LAKE = AVX512 + ["avx512_vnni"]
COOPER_LAKE = CASCADE_LAKE + ["avx512_bf16"]
SAPPHIRE_RAPIDS = COOPER_LAKE + ["avx_vnni", "avx512_fp16", "amx_tile", "amx_int8", "amx_bf16"]
ALDER_LAKE = AVX2_ONLY + ["avx_vnni"]

# ------------------------------------------------------------------------------------------ child processes
# Code every child starts with: the level in effect read from libdnnl without mindcv, and one result line.
CHILD_PRELUDE = """
import ctypes, json, os, subprocess, sys

LEVELS = __LEVELS__

def effective():
    import mindspore
    lib = ctypes.CDLL(os.path.join(os.path.dirname(mindspore.__file__), "lib", "libdnnl.so.3"))
    value = lib.dnnl_get_effective_cpu_isa()
    return LEVELS.get(value, hex(value))

def report(**values):
    print("TEST_RESULT " + json.dumps(values), flush=True)
""".replace("__LEVELS__", repr({value: name for name, value in ISA_VALUES.items()}))
# import mindcv (which decides and applies), then report the decision and the level in effect
IMPORT_MINDCV = CHILD_PRELUDE + """
import mindcv
from mindcv.utils import cpu_isa

decision = cpu_isa.apply_cpu_isa()
report(
    source=decision.source,
    cap=decision.cap,
    entry=decision.entry,
    effective=effective(),
    onednn_env=os.environ.get("ONEDNN_MAX_CPU_ISA"),
    chosen_env=os.environ.get("MINDCV_CPU_ISA_CHOSEN"),
)
"""
# a grandchild: the level it inherits through the environment (MindSpore only), then what mindcv makes of it
GRANDCHILD = CHILD_PRELUDE + """
report(effective=effective(), mindcv_loaded="mindcv" in sys.modules)
import mindcv
from mindcv.utils import cpu_isa

decision = cpu_isa.apply_cpu_isa()
report(
    source=decision.source,
    cap=decision.cap,
    onednn_env=os.environ.get("ONEDNN_MAX_CPU_ISA"),
    chosen_env=os.environ.get("MINDCV_CPU_ISA_CHOSEN"),
)
"""
# a MindSpore convolution on the CPU before mindcv is imported
CONV_FIRST = """
import numpy as np
import mindspore as ms
from mindspore import ops

ms.set_device("CPU")
x = ms.Tensor(np.ones((1, 3, 8, 8), np.float32))
w = ms.Tensor(np.ones((4, 3, 3, 3), np.float32))
assert ops.conv2d(x, w).shape == (1, 4, 6, 6)
"""
# two processes that import MindSpore, wait for each other, then import mindcv at the same moment
RACE = """
import os, time
import mindspore

ready = os.environ["TEST_READY_DIR"]
open(os.path.join(ready, str(os.getpid())), "w").close()
deadline = time.time() + 60
while len(os.listdir(ready)) < 2 and time.time() < deadline:
    time.sleep(0.005)
""" + IMPORT_MINDCV
# import mindcv with the decision held back, swap the probe for TEST_FAKE_PROBE, then let RACE decide
SWAP_PROBE = """
import os
os.environ["MINDCV_AUTO_CPU_ISA"] = "0"
import mindcv
from mindcv.utils import cpu_isa
del os.environ["MINDCV_AUTO_CPU_ISA"]
cpu_isa._decision = None
cpu_isa._PROBE = os.environ["TEST_FAKE_PROBE"]
"""
# a probe that answers at once: 3 ms under the default, 1 ms under any cap, at the level it was given
FAKE_PROBE = """
import json, os
cap = os.environ.get("ONEDNN_MAX_CPU_ISA")
effective = __VALUES__[cap or "__DEFAULT__"]
print("MINDCV_CPU_ISA_RESULT " + json.dumps({"ops_ms": {"dense3x3 fwd": 1.0 if cap else 3.0}, "effective": effective}))
"""


class Child(NamedTuple):
    returncode: int
    stdout: str
    stderr: str
    result: Optional[dict]


def child_env(home, tmpdir=None, **extra) -> Dict[str, str]:
    """os.environ without the CPU-ISA variables, with a private MINDCV_HOME and TMPDIR and a quiet MindSpore.

    ``MINDCV_CPU_ISA_CANDIDATES`` is ``none`` unless ``extra`` sets it (no automatic AVX-512 measurement);
    ``tmpdir`` (default: ``tmp`` next to ``home``) keeps the fallback cache out of the real temporary folder.
    """
    tmpdir = Path(home).parent / "tmp" if tmpdir is None else Path(tmpdir)
    tmpdir.mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if k not in STRIPPED_ENV}
    env.update(MINDCV_HOME=str(home), GLOG_v="3", TMPDIR=str(tmpdir), MINDCV_CPU_ISA_CANDIDATES="none")
    env.update({k: str(v) for k, v in extra.items()})
    return env


def start_child(code: str, env: Dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", code],
        env=env,
        cwd=str(REPO),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def finish_child(proc: subprocess.Popen, check: bool = True, timeout: float = 240) -> Child:
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        pytest.fail(f"child timed out after {timeout} s; stderr:\n{err[-3000:]}")
    lines = [line for line in out.splitlines() if line.startswith("TEST_RESULT ")]
    result = json.loads(lines[-1].split(" ", 1)[1]) if lines else None
    if check:
        assert proc.returncode == 0 and result is not None, f"child failed ({proc.returncode}):\n{err[-3000:]}"
    return Child(proc.returncode, out, err, result)


def run_children(jobs: Sequence[Tuple[str, Dict[str, str]]], check: bool = True) -> List[Child]:
    """Run independent children side by side (the machine has 2 cores)."""
    procs = [start_child(code, env) for code, env in jobs]
    return [finish_child(proc, check) for proc in procs]


def run_child(code: str, env: Dict[str, str], check: bool = True) -> Child:
    return run_children([(code, env)], check)[0]


def _default_level() -> str:
    """The level oneDNN picks on this host without a cap, from a child that imports MindSpore only."""
    env = {k: v for k, v in os.environ.items() if k not in STRIPPED_ENV}
    env["GLOG_v"] = "3"
    child = finish_child(start_child(CHILD_PRELUDE + "report(effective=effective())", env))
    level = child.result["effective"]
    assert level in ISA_VALUES and level != "DEFAULT", level
    return level


DEFAULT_LEVEL = _default_level()  # e.g. AVX2 here, AVX512_CORE_BF16 on a Cooper Lake CI host


# ---------------------------------------------------------------------------------------------- cache files
def cache_file(home) -> Path:
    return Path(home) / cpu_isa.CACHE_NAME


@contextlib.contextmanager
def candidates_env(candidates: str):
    """``MINDCV_CPU_ISA_CANDIDATES`` set to ``candidates`` in this process for a moment."""
    saved = os.environ.get(cpu_isa.CANDIDATES_ENV)
    os.environ[cpu_isa.CANDIDATES_ENV] = candidates
    try:
        yield
    finally:
        if saved is None:
            del os.environ[cpu_isa.CANDIDATES_ENV]
        else:
            os.environ[cpu_isa.CANDIDATES_ENV] = saved


def host_key(candidates: str = "none") -> str:
    """This host's cache key, as a child with ``child_env(..., MINDCV_CPU_ISA_CANDIDATES=candidates)`` computes it."""
    with candidates_env(candidates):
        return cpu_isa._fingerprint_key(cpu_isa.fingerprint())


def host_tag(candidates: str = "none") -> str:
    """This host's tag in ``MINDCV_CPU_ISA_CHOSEN``, as such a child computes it."""
    with candidates_env(candidates):
        return cpu_isa._host_tag()


OTHER_TAG = "0123456789ab"  # a tag of another host


def entry(choice: Optional[str], speedup: float = 3.0, **changes) -> dict:
    """A cache entry as measure_cpu_isa writes it (with made-up numbers)."""
    made = {
        "candidates": {
            "default": {"ops_ms": {"dense3x3 fwd": 3.0}, "total_ms": 3.0, "effective": DEFAULT_LEVEL},
            **(
                {choice: {"ops_ms": {"dense3x3 fwd": 1.0}, "total_ms": 1.0, "effective": choice}}
                if isinstance(choice, str)
                else {}
            ),
        },
        "choice": choice,
        "host_best_isa": host_best_isa(),
        "measured_at": "2024-01-01T00:00:00+00:00",
        "reason": "crafted by the test",
        "seconds": 1.0,
        "speedup": speedup,
        "fingerprint": json.loads(host_key()),
    }
    made.update(changes)
    return made


def write_cache(home, hosts: dict, version: int = 1) -> Path:
    path = cache_file(home)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"version": version, "hosts": hosts}, allow_nan=True))
    return path


def write_sse41_cache(home) -> Path:
    """A cached decision for this host: cap oneDNN at SSE41 (a real, slower level here)."""
    return write_cache(home, {host_key(): entry("SSE41")})


def assert_valid_cache(home, key: str, choice: Optional[str]) -> None:
    saved = json.loads(cache_file(home).read_text())
    assert saved["version"] == cpu_isa.CACHE_VERSION
    assert cpu_isa._read_cache(str(cache_file(home))) == saved["hosts"]  # every entry passes validation
    assert saved["hosts"][key]["choice"] == choice


# --------------------------------------------------------------------------------------------------- fixtures
@pytest.fixture
def clean_env(monkeypatch, tmp_path) -> Path:
    """This process's environment without the CPU-ISA variables (restored afterwards); returns MINDCV_HOME.

    Like a child of :func:`child_env`: no candidates (``none``), and a private fallback cache.
    """
    for name in STRIPPED_ENV:
        monkeypatch.setenv(name, "set-by-test")  # so that undoing restores the original, set or not
        monkeypatch.delenv(name)
    monkeypatch.setenv(cpu_isa.CANDIDATES_ENV, "none")
    monkeypatch.setattr(cpu_isa, "_fallback_cache_path", lambda: str(tmp_path / "fallback" / cpu_isa.CACHE_NAME))
    home = tmp_path / "home"
    monkeypatch.setenv("MINDCV_HOME", str(home))
    return home


class RecordingLib:
    """MindSpore's libdnnl, except that dnnl_set_max_cpu_isa is recorded instead of called."""

    def __init__(self, real) -> None:
        self._real = real
        self.applied: List[int] = []

    def __getattr__(self, name):
        return getattr(self._real, name)

    def dnnl_set_max_cpu_isa(self, value: int) -> int:
        self.applied.append(value)
        return 0


@pytest.fixture
def in_process(monkeypatch, clean_env) -> RecordingLib:
    """Decide in this process without applying anything to its oneDNN."""
    lib = RecordingLib(cpu_isa._load_onednn())
    monkeypatch.setattr(cpu_isa, "_load_onednn", lambda: lib)
    monkeypatch.setattr(cpu_isa, "_decision", None)
    monkeypatch.setattr(cpu_isa, "_measured_in_process", False)
    return lib


def fake_measure_one(calls: List[Optional[str]], default: dict, cap_ms: float = 900.0):
    """A stand-in for cpu_isa._measure_one: ``default`` for the default, ``cap_ms`` at the cap's level for a cap."""

    def measure_one(cap, budget_s, timeout_s):
        calls.append(cap)
        if cap is None:
            return dict(default)
        return {"ops_ms": {"dense3x3 fwd": cap_ms}, "total_ms": cap_ms, "effective": cap, "seconds": 1.0}

    return measure_one


# ------------------------------------------------------------------------------------ 1. the library's names
def test_isa_values_match_libdnnl():
    lib = ctypes.CDLL(LIBDNNL)
    lib.dnnl_cpu_isa2str.restype = ctypes.c_char_p
    for name, value in ISA_VALUES.items():
        assert lib.dnnl_cpu_isa2str(value) == b"cpu_isa_" + name.lower().encode(), name
    # and every level the library names is known to mindcv (the user's setting is checked against the list)
    named = {value: lib.dnnl_cpu_isa2str(value) for value in range(0x4000)}
    known = {value for value, text in named.items() if text.startswith(b"cpu_isa_")}
    assert known == set(ISA_VALUES.values())


# ------------------------------------------------------------------------------ 2. host levels and candidates
@pytest.mark.parametrize(
    "flags, best, caps",
    [
        (AVX2_ONLY, "AVX2", []),
        (ALDER_LAKE, "AVX2_VNNI", ["AVX2"]),
        (AVX512, "AVX512_CORE", ["AVX2"]),
        (CASCADE_LAKE, "AVX512_CORE_VNNI", ["AVX512_CORE", "AVX2"]),
        (COOPER_LAKE, "AVX512_CORE_BF16", ["AVX512_CORE_VNNI", "AVX512_CORE", "AVX2"]),
        (COOPER_LAKE + ["avx_vnni"], "AVX512_CORE_BF16", ["AVX512_CORE_VNNI", "AVX512_CORE", "AVX2_VNNI", "AVX2"]),
        (
            SAPPHIRE_RAPIDS,
            "AVX10_1_512_AMX",
            ["AVX512_CORE_BF16", "AVX512_CORE_VNNI", "AVX512_CORE", "AVX2_VNNI", "AVX2"],
        ),
        (AVX512 + ["avx512_bf16"], "AVX512_CORE", ["AVX2"]),  # BF16 without VNNI: the ladder stops at VNNI
        (["sse4_1", "avx", "avx2"], "AVX", []),  # AVX2 needs FMA too
        (["sse4_1"], "SSE41", []),
        (["sse", "sse2", "ssse3"], None, []),
        ([], None, []),
    ],
    ids=[
        "avx2-only",
        "alder-lake",
        "avx512",
        "cascade-lake",
        "cooper-lake",
        "cooper-lake-avx-vnni",
        "sapphire-rapids",
        "bf16-without-vnni",
        "avx2-without-fma",
        "sse41",
        "sse2",
        "no-flags",
    ],
)
def test_host_best_isa_and_candidate_caps(monkeypatch, flags, best, caps):
    monkeypatch.delenv(cpu_isa.CANDIDATES_ENV, raising=False)
    assert host_best_isa(flags) == best
    assert candidate_caps(flags) == caps


def test_candidate_caps_property_over_random_flag_sets(monkeypatch):
    """Every candidate is a tried cap strictly below the host's best level, and the host has its flags."""
    monkeypatch.delenv(cpu_isa.CANDIDATES_ENV, raising=False)
    rank = {name: i for i, name in enumerate(ISA_VALUES)}
    needed = {level: set(flags) for level, flags in cpu_isa._LEVEL_FLAGS}
    rng = random.Random(7)
    for _ in range(500):
        flags = {f for f in cpu_isa._ISA_FLAG_NAMES if rng.random() < 0.7}
        best = host_best_isa(flags)
        caps = candidate_caps(flags)
        assert len(caps) == len(set(caps))
        assert caps == sorted(caps, key=rank.get, reverse=True)  # best level first
        for cap in caps:
            assert cap in cpu_isa._TRIED_CAPS and rank[cap] < rank[best]
            below = [lvl for lvl in needed if rank[lvl] <= rank[cap] and (lvl != "AVX2_VNNI" or cap == "AVX2_VNNI")]
            assert set().union(*(needed[lvl] for lvl in below)) <= flags, (cap, sorted(flags))


def test_this_host_is_consistent(monkeypatch):
    """The flags, best level and automatic candidates of this host agree with the level oneDNN picks here."""
    monkeypatch.delenv(cpu_isa.CANDIDATES_ENV, raising=False)
    flags = cpu_isa.host_isa_flags()
    assert flags == sorted(set(flags)) and set(flags) <= set(cpu_isa._ISA_FLAG_NAMES)
    assert host_best_isa() == host_best_isa(flags)
    assert candidate_caps() == candidate_caps(flags)
    rank = {name: i for i, name in enumerate(ISA_VALUES)}
    exact = ("SSE41", "AVX", "AVX2", "AVX2_VNNI", "AVX512_CORE", "AVX512_CORE_VNNI", "AVX512_CORE_BF16")
    if flags and DEFAULT_LEVEL in exact:  # levels the flags decide alone (AMX also needs the OS's permission)
        assert host_best_isa() == DEFAULT_LEVEL
    if flags:
        assert all(rank[cap] < rank[DEFAULT_LEVEL] for cap in candidate_caps())
        assert bool(candidate_caps()) == (rank[DEFAULT_LEVEL] > rank["AVX2"])  # e.g. none on an AVX2-only host
    fp = cpu_isa.fingerprint()
    assert fp["isa_flags"] == flags and fp["candidates"] == candidate_caps()


def test_candidates_from_the_environment(monkeypatch):
    monkeypatch.setenv(cpu_isa.CANDIDATES_ENV, " avx, SSE41 ,,AVX ")
    assert candidate_caps(CASCADE_LAKE) == ["AVX", "SSE41"]  # replaces the automatic list, upper-cased, deduplicated
    monkeypatch.setenv(cpu_isa.CANDIDATES_ENV, "  ")
    assert candidate_caps(CASCADE_LAKE) == ["AVX512_CORE", "AVX2"]  # blank: the automatic list
    for none in ("none", "NONE", " None "):
        monkeypatch.setenv(cpu_isa.CANDIDATES_ENV, none)
        assert candidate_caps(CASCADE_LAKE) == [] and candidate_caps(SAPPHIRE_RAPIDS) == []
        assert candidate_caps() == []


@pytest.mark.parametrize("listed, bad", [("AVX,AVX3", "AVX3"), ("default", "DEFAULT"), ("AVX-512", "AVX-512")])
def test_unknown_candidate_is_an_error_naming_it(monkeypatch, listed, bad):
    monkeypatch.setenv(cpu_isa.CANDIDATES_ENV, listed)
    with pytest.raises(ValueError) as info:
        candidate_caps()
    text = str(info.value)
    assert f"'{bad}'" in text and cpu_isa.CANDIDATES_ENV in text
    valid = text.split("valid:", 1)[1]
    assert all(name in valid for name in CAP_NAMES)
    assert "DEFAULT" not in valid


def test_measure_rejects_unknown_caps_before_running_anything(monkeypatch):
    monkeypatch.setattr(cpu_isa, "_measure_one", lambda *a, **k: pytest.fail("a child was started"))
    for caps in (["AVX3"], ["sse41"], ["DEFAULT"]):
        with pytest.raises(ValueError, match="unknown oneDNN instruction-set cap"):
            cpu_isa.measure_cpu_isa(caps)


# --------------------------------------------------------------------------------------------- 3. choose_cap
def run(total_ms: float, effective: str) -> dict:
    return {"ops_ms": {"op": total_ms}, "total_ms": total_ms, "effective": effective}


def test_choose_cap_takes_a_much_faster_cap():
    runs = {"default": run(100.0, "AVX512_CORE_BF16"), "AVX2": run(10.0, "AVX2")}
    chosen = choose_cap(runs)
    assert chosen["choice"] == "AVX2" and chosen["speedup"] == 10.0
    assert "10.00x" in chosen["reason"]


def test_choose_cap_takes_the_fastest_of_several():
    runs = {
        "default": run(100.0, "AVX512_CORE_BF16"),
        "AVX512_CORE_VNNI": run(90.0, "AVX512_CORE_VNNI"),
        "AVX512_CORE": run(40.0, "AVX512_CORE"),
        "AVX2": run(50.0, "AVX2"),
    }
    assert choose_cap(runs)["choice"] == "AVX512_CORE" and choose_cap(runs)["speedup"] == 2.5


def timed_out(seconds: float = 120.0) -> dict:
    return {"error": f"timed out after {seconds:g} s", "timed_out_ms": seconds * 1000.0}


@pytest.mark.parametrize("cap_ms", [100.0, 95.0, 91.0, 120.0, 80.0, 77.0])  # up to 1.299x
def test_choose_cap_keeps_the_default_within_the_margin(cap_ms):
    chosen = choose_cap({"default": run(100.0, "AVX512_CORE"), "AVX2": run(cap_ms, "AVX2")})
    assert chosen["choice"] is None and chosen["speedup"] == 1.0
    assert "default is kept" in chosen["reason"]


def test_choose_cap_margin_is_1_3():
    assert cpu_isa.MIN_SPEEDUP == 1.3
    exactly = choose_cap({"default": run(130.0, "AVX512_CORE"), "AVX2": run(100.0, "AVX2")})
    assert exactly["choice"] == "AVX2" and exactly["speedup"] == 1.3  # the margin itself is enough
    above = choose_cap({"default": run(100.0, "AVX512_CORE"), "AVX2": run(76.9, "AVX2")})
    assert above["choice"] == "AVX2" and above["speedup"] == 1.3
    below = choose_cap({"default": run(129.9, "AVX512_CORE"), "AVX2": run(100.0, "AVX2")})
    assert below["choice"] is None and "default is kept" in below["reason"]  # 1.299x


def test_choose_cap_margin_is_a_parameter():
    runs = {"default": run(100.0, "AVX512_CORE"), "AVX2": run(95.0, "AVX2")}
    assert choose_cap(runs, min_speedup=1.05)["choice"] == "AVX2"
    assert choose_cap(runs, min_speedup=1.06)["choice"] is None


def test_choose_cap_ignores_failed_caps():
    runs = {
        "default": run(100.0, "AVX512_CORE_BF16"),
        "AVX512_CORE": {"error": "exit code -11: Segmentation fault"},
        "AVX2": run(50.0, "AVX2"),
    }
    assert choose_cap(runs)["choice"] == "AVX2"
    runs = {"default": run(100.0, "AVX512_CORE_BF16"), "AVX2": timed_out()}  # a timed-out cap is not a time
    assert choose_cap(runs) == {"choice": None, "speedup": 1.0, "reason": "no cap could be measured"}


def test_choose_cap_takes_a_cap_when_the_default_timed_out():
    runs = {"default": timed_out(120.0), "AVX512_CORE": timed_out(120.0), "AVX2": run(1500.0, "AVX2")}
    chosen = choose_cap(runs)
    assert chosen["choice"] == "AVX2" and chosen["speedup"] == 80.0
    assert chosen["reason"] == "at least 80x faster (the default did not finish within 120 s; AVX2 took 1.50 s)"
    assert not cpu_isa.complete({"candidates": runs, **chosen})  # the timed-out AVX512_CORE is a failure
    runs = {"default": timed_out(120.0), "AVX2": run(1500.0, "AVX2")}
    assert cpu_isa.complete({"candidates": runs, **choose_cap(runs)})  # the slow default this module exists for
    # a cap that finished only just within the time-out is no proof of a slow default
    runs = {"default": timed_out(120.0), "AVX2": run(100_000.0, "AVX2")}
    assert choose_cap(runs)["choice"] is None
    assert not cpu_isa.complete({"candidates": runs, **choose_cap(runs)})
    # nothing finished at all
    runs = {"default": timed_out(120.0), "AVX2": timed_out(120.0)}
    assert choose_cap(runs) == {"choice": None, "speedup": 1.0, "reason": "no cap could be measured"}
    assert not cpu_isa.complete({"candidates": runs, **choose_cap(runs)})


def test_complete_only_when_every_probe_finished():
    ok = {"default": run(100.0, "AVX2"), "SSE41": run(150.0, "SSE41")}
    assert cpu_isa.complete({"candidates": ok, **choose_cap(ok)})
    assert cpu_isa.complete({"candidates": {}, **choose_cap({})})  # nothing to try: nothing failed
    for runs in (
        dict(ok, SSE41={"error": "exit code 1: boom"}),
        dict(ok, SSE41=timed_out()),
        dict(ok, default={"error": "exit code 1: boom"}),
        dict(ok, default=timed_out(), SSE41={"error": "could not start the probe"}),
    ):
        assert not cpu_isa.complete({"candidates": runs, **choose_cap(runs)}), runs


def test_choose_cap_keeps_the_default_when_it_failed():
    runs = {"default": {"error": "exit code 1: boom"}, "AVX2": run(1.0, "AVX2")}
    chosen = choose_cap(runs)
    assert chosen["choice"] is None and chosen["speedup"] == 1.0 and "boom" in chosen["reason"]
    assert choose_cap({"AVX2": run(1.0, "AVX2")})["choice"] is None  # default missing altogether
    assert choose_cap({})["choice"] is None


def test_choose_cap_never_takes_a_cap_at_the_default_level():
    runs = {"default": run(100.0, "AVX2"), "AVX512_CORE": run(10.0, "AVX2")}  # the cap changed nothing here
    chosen = choose_cap(runs)
    assert chosen["choice"] is None and chosen["speedup"] == 1.0
    assert "already uses" in chosen["reason"]


def test_choose_cap_property_never_slower_than_the_default():
    rng = random.Random(2024)
    levels = ["AVX512_CORE_BF16", "AVX512_CORE_VNNI", "AVX512_CORE", "AVX2"]
    for _ in range(2000):
        default_level = rng.choice(levels)
        runs = {"default": run(10 ** rng.uniform(-2, 4), default_level)}
        if rng.random() < 0.15:
            runs["default"] = timed_out(10 ** rng.uniform(-2, 4) / 1000.0)
        elif rng.random() < 0.05:
            runs["default"] = {"error": "exit code 1: boom"}
        for cap in rng.sample(levels, rng.randint(0, 4)):
            if rng.random() < 0.15:
                runs[cap] = {"error": "failed"}
            else:
                effective = default_level if rng.random() < 0.2 else cap
                runs[cap] = run(10 ** rng.uniform(-2, 4), effective)
        chosen = choose_cap(runs)
        assert set(chosen) == {"choice", "speedup", "reason"}
        if chosen["choice"] is None:
            assert chosen["speedup"] == 1.0
            continue
        cap = chosen["choice"]
        timed = {c: r["total_ms"] for c, r in runs.items() if c != "default" and "total_ms" in r}
        default_ms = runs["default"].get("total_ms", runs["default"].get("timed_out_ms"))
        assert default_ms is not None  # a default that failed otherwise than by time-out never loses
        assert runs[cap]["total_ms"] == min(timed.values())
        assert runs[cap]["total_ms"] < default_ms
        assert runs[cap]["effective"] != runs["default"].get("effective")
        assert chosen["speedup"] >= cpu_isa.MIN_SPEEDUP
        assert chosen["speedup"] == round(default_ms / runs[cap]["total_ms"], 3)
        assert chosen["reason"].startswith("at least") == ("total_ms" not in runs["default"])


# ------------------------------------------------------------------------------------ 4. a real measurement
# quick loop: the one test that runs _cpu_isa_probe.py for real (two child processes)
def test_measure_sse41_for_real():
    record = cpu_isa.measure_cpu_isa(["SSE41"], budget_s=0.1)
    runs = record["candidates"]
    assert set(runs) == {"default", "SSE41"}
    for name, result in runs.items():
        assert "error" not in result, (name, result)
        assert set(result["ops_ms"]) == PROBE_OPS
        assert all(math.isfinite(v) and v > 0 for v in result["ops_ms"].values()), result
        assert result["total_ms"] == pytest.approx(sum(result["ops_ms"].values()))
        assert result["seconds"] > 0
    assert runs["default"]["effective"] == DEFAULT_LEVEL
    assert runs["SSE41"]["effective"] == "SSE41"
    decided = choose_cap(runs)
    assert {k: record[k] for k in decided} == decided
    assert cpu_isa.complete(record)
    assert record["host_best_isa"] == host_best_isa()
    assert record["seconds"] > 0
    assert datetime.datetime.fromisoformat(record["measured_at"]).tzinfo is not None


def test_measure_with_a_tiny_timeout_fails_every_run():
    record = cpu_isa.measure_cpu_isa(["SSE41"], timeout_s=0.01)
    assert set(record["candidates"]) == {"default", "SSE41"}
    for result in record["candidates"].values():
        assert "ops_ms" not in result and "timed out" in result["error"]
        assert result["timed_out_ms"] == pytest.approx(10.0)
    assert record["choice"] is None and record["speedup"] == 1.0
    assert record["reason"] == "no cap could be measured"
    assert not cpu_isa.complete(record)


@pytest.mark.parametrize("how", ["broken-probe", "timeout"])
def test_failed_measurement_is_not_cached(in_process, monkeypatch, caplog, tmp_path, how):
    """A probe that fails leaves no cache entry and no DEFAULT marker: the next process measures again."""
    monkeypatch.setenv(cpu_isa.CANDIDATES_ENV, "SSE41")
    if how == "broken-probe":
        probe = tmp_path / "broken_probe.py"
        probe.write_text("import sys\nsys.exit(3)\n")
        monkeypatch.setattr(cpu_isa, "_PROBE", str(probe))
    else:
        real = cpu_isa.measure_cpu_isa
        monkeypatch.setattr(cpu_isa, "measure_cpu_isa", lambda caps=None, **kw: real(caps, timeout_s=0.01))
    home = os.environ["MINDCV_HOME"]
    for attempt in range(2):  # the second call stands for the next process: it finds nothing cached
        caplog.clear()
        monkeypatch.setattr(cpu_isa, "_decision", None)
        decision = cpu_isa.apply_cpu_isa()
        assert (decision.source, decision.cap) == ("default", None), attempt
        assert set(decision.entry["candidates"]) == {"default", "SSE41"}
        assert not cpu_isa.complete(decision.entry)
        assert caplog.text.count(MEASURING_LINE) == 1, attempt
        assert "measuring the CPU kernels failed" in caplog.text
        assert ("exit code 3" if how == "broken-probe" else "timed out") in caplog.text
        assert cpu_isa.CHOSEN_ENV not in os.environ and "ONEDNN_MAX_CPU_ISA" not in os.environ
        assert in_process.applied == []
        assert cpu_isa._read_cache(str(cache_file(home))) == {}
    assert cpu_isa._read_cache(cpu_isa._fallback_cache_path()) == {}


def test_timed_out_default_with_a_finished_cap_is_cached_and_applied(in_process, monkeypatch):
    monkeypatch.setenv(cpu_isa.CANDIDATES_ENV, "SSE41")
    calls: List[Optional[str]] = []
    monkeypatch.setattr(cpu_isa, "_measure_one", fake_measure_one(calls, timed_out(120.0), cap_ms=900.0))
    decision = cpu_isa.apply_cpu_isa()
    assert (decision.source, decision.cap) == ("measured", "SSE41") and calls == [None, "SSE41"]
    assert decision.entry["reason"].startswith("at least 133x faster (the default did not finish within 120 s")
    assert in_process.applied == [ISA_VALUES["SSE41"]]
    tag = host_tag("SSE41")
    assert os.environ["ONEDNN_MAX_CPU_ISA"] == "SSE41" and os.environ[cpu_isa.CHOSEN_ENV] == f"SSE41@{tag}"
    cached = cpu_isa._read_cache(str(cache_file(os.environ["MINDCV_HOME"])))
    assert list(cached) == [host_key("SSE41")] and cached[host_key("SSE41")]["choice"] == "SSE41"
    # the next process (without the inherited variables) applies the cached cap without measuring
    del os.environ["ONEDNN_MAX_CPU_ISA"], os.environ[cpu_isa.CHOSEN_ENV]
    monkeypatch.setattr(cpu_isa, "_decision", None)
    monkeypatch.setattr(cpu_isa, "_measure_one", lambda *a, **k: pytest.fail("measured again"))
    again = cpu_isa.apply_cpu_isa()
    assert (again.source, again.cap) == ("measured", "SSE41")
    assert in_process.applied == [ISA_VALUES["SSE41"]] * 2


def test_measure_nothing_runs_nothing(monkeypatch):
    monkeypatch.setattr(cpu_isa, "_measure_one", lambda *a, **k: pytest.fail("a child was started"))
    record = cpu_isa.measure_cpu_isa([])
    assert record["candidates"] == {} and record["choice"] is None


# ------------------------------------------------------------------------- 5. a cached cap applied at import
@pytest.mark.slow
def test_cached_cap_is_applied_and_inherited(clean_env):
    home = clean_env
    write_sse41_cache(home)
    code = IMPORT_MINDCV + f"""
grand = subprocess.run([sys.executable, "-c", {GRANDCHILD!r}], capture_output=True, text=True)
lines = [json.loads(x.split(" ", 1)[1]) for x in grand.stdout.splitlines() if x.startswith("TEST_RESULT ")]
report(grandchild=lines, stderr=grand.stderr[-2000:])
"""
    child = run_child(code, child_env(home))
    first, grand = [json.loads(x.split(" ", 1)[1]) for x in child.stdout.splitlines() if x.startswith("TEST_RESULT ")]
    assert first["source"] == "measured" and first["cap"] == "SSE41"
    assert first["effective"] == "SSE41"
    assert first["onednn_env"] == "SSE41" and first["chosen_env"] == f"SSE41@{host_tag()}"
    assert first["entry"]["choice"] == "SSE41"
    assert grand["grandchild"][0] == {"effective": "SSE41", "mindcv_loaded": False}, grand["stderr"]
    # the grandchild's mindcv trusts the marker of its parent on the same host: no lookup, no measurement
    expected = {"source": "inherited", "cap": "SSE41", "onednn_env": "SSE41", "chosen_env": f"SSE41@{host_tag()}"}
    assert grand["grandchild"][1:] == [expected], grand["stderr"]


# -------------------------------------------------------------------------------- 6. the user's setting wins
@pytest.mark.slow
def test_user_setting_is_respected(clean_env, tmp_path):
    homes = [tmp_path / "avx", tmp_path / "invalid"]
    for home in homes:
        write_sse41_cache(home)
    before = [cache_file(home).read_bytes() for home in homes]
    valid, invalid = run_children(
        [
            (IMPORT_MINDCV, child_env(homes[0], ONEDNN_MAX_CPU_ISA="AVX")),
            (IMPORT_MINDCV, child_env(homes[1], ONEDNN_MAX_CPU_ISA="AVX3")),
        ]
    )
    assert valid.result["source"] == "user" and valid.result["cap"] == "AVX"
    assert valid.result["effective"] == "AVX"
    assert valid.result["chosen_env"] is None  # nothing marked as mindcv's choice
    assert invalid.result["source"] == "user" and invalid.result["cap"] is None
    assert invalid.result["effective"] == DEFAULT_LEVEL  # oneDNN ignores it; the cached SSE41 is not applied either
    assert "ONEDNN_MAX_CPU_ISA" in invalid.stderr and "'AVX3'" in invalid.stderr
    assert [cache_file(home).read_bytes() for home in homes] == before


ONEDNN, DNNL, CHOSEN, AUTO = "ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA", "MINDCV_CPU_ISA_CHOSEN", "MINDCV_AUTO_CPU_ISA"


# the environment, the decision, and ONEDNN_MAX_CPU_ISA and the marker afterwards ({tag}: this host's tag)
@pytest.mark.parametrize(
    "env, source, cap, onednn_after, chosen_after",
    [
        ({DNNL: "avx"}, "user", "AVX", None, None),
        ({ONEDNN: "", DNNL: "SSE41"}, "user", "SSE41", "", None),
        ({ONEDNN: "AVX", DNNL: "SSE41"}, "user", "AVX", "AVX", None),  # oneDNN reads ONEDNN_ first
        ({ONEDNN: "AVX", CHOSEN: "SSE41@{tag}"}, "user", "AVX", "AVX", None),  # not the cap the parent chose
        ({ONEDNN: "SSE41", CHOSEN: "SSE41@{tag}"}, "inherited", "SSE41", "SSE41", "SSE41@{tag}"),
        ({CHOSEN: "DEFAULT@{tag}"}, "inherited", None, None, "DEFAULT@{tag}"),
        ({"MINDCV_CPU_ISA_MEASURING": "1"}, "not-applicable", None, None, None),
        ({ONEDNN: "AVX", AUTO: "0"}, "user", "AVX", "AVX", None),
        # a marker from another host (or in the old format without a tag): dropped with its cap, decided afresh
        ({ONEDNN: "AVX", CHOSEN: "AVX@{other}"}, "measured", "SSE41", "SSE41", "SSE41@{tag}"),
        ({ONEDNN: "AVX", CHOSEN: "AVX"}, "measured", "SSE41", "SSE41", "SSE41@{tag}"),
        ({CHOSEN: "DEFAULT@{other}"}, "measured", "SSE41", "SSE41", "SSE41@{tag}"),
        # the user's own DNNL_MAX_CPU_ISA in the child overrides the inherited cap, which is dropped
        ({ONEDNN: "SSE41", CHOSEN: "SSE41@{tag}", DNNL: "AVX"}, "user", "AVX", None, None),
        # the off switch in the child drops the inherited cap
        ({ONEDNN: "SSE41", CHOSEN: "SSE41@{tag}", AUTO: "0"}, "off", None, None, None),
        ({ONEDNN: "SSE41", CHOSEN: "SSE41@{tag}", AUTO: "off"}, "off", None, None, None),
        ({CHOSEN: "DEFAULT@{tag}", AUTO: "no"}, "off", None, None, None),
        # a DEFAULT marker and a variable of the user's: the user's value
        ({CHOSEN: "DEFAULT@{tag}", ONEDNN: "SSE41"}, "user", "SSE41", "SSE41", None),
        ({CHOSEN: "DEFAULT@{tag}", DNNL: "AVX"}, "user", "AVX", None, None),
    ],
    ids=lambda value: value if isinstance(value, str) else None,
)
def test_environment_rules_in_process(in_process, env, source, cap, onednn_after, chosen_after):
    """Whatever the environment says wins over the cached SSE41; mindcv applies only what it decides itself."""
    write_sse41_cache(os.environ["MINDCV_HOME"])
    tags = {"tag": host_tag(), "other": OTHER_TAG}
    os.environ.update({k: v.format(**tags) for k, v in env.items()})  # restored by the clean_env fixture
    decision = cpu_isa.apply_cpu_isa()
    assert (decision.source, decision.cap) == (source, cap)
    assert in_process.applied == ([ISA_VALUES[cap]] if source == "measured" else [])
    assert os.environ.get(ONEDNN) == onednn_after
    assert os.environ.get(CHOSEN) == (chosen_after and chosen_after.format(**tags))


def test_remeasure_drops_an_inherited_cap(in_process):
    home = os.environ["MINDCV_HOME"]
    write_sse41_cache(home)
    os.environ.update({ONEDNN: "SSE41", CHOSEN: f"SSE41@{host_tag()}"})
    assert cpu_isa.apply_cpu_isa().source == "inherited"
    decision = cpu_isa.apply_cpu_isa(remeasure=True)  # measures again (nothing to try here): the default
    assert (decision.source, decision.cap) == ("default", None)
    assert ONEDNN not in os.environ and os.environ[CHOSEN] == f"DEFAULT@{host_tag()}"
    assert in_process.applied == []
    assert_valid_cache(home, host_key(), None)


@pytest.mark.parametrize(
    "variable, value, cap",
    [
        (ONEDNN, "AVX512_CORE_AMX", "AVX10_1_512_AMX"),
        (ONEDNN, "avx512_core_fp16", "AVX10_1_512"),
        (ONEDNN, "Avx512_Core_Amx_Fp16", "AVX10_1_512_AMX_FP16"),
        (ONEDNN, "ALL", None),
        (ONEDNN, "all", None),
        (ONEDNN, "avx10_1_512_amx", "AVX10_1_512_AMX"),
        (DNNL, "AVX512_CORE_AMX", "AVX10_1_512_AMX"),
        (DNNL, "All", None),
    ],
)
def test_onednn_aliases_are_user_values(in_process, caplog, variable, value, cap):
    write_sse41_cache(os.environ["MINDCV_HOME"])
    os.environ[variable] = value
    decision = cpu_isa.apply_cpu_isa()
    assert (decision.source, decision.cap) == ("user", cap)
    assert "not an instruction-set level" not in caplog.text and "ignored" not in decision.message
    assert in_process.applied == [] and os.environ[variable] == value  # the user's variable is left as it is


@pytest.mark.parametrize("value", ["AVX3", "AVX-512", "avx512", "DEFAULTS", "AMX"])
def test_unknown_user_values_warn(in_process, caplog, value):
    write_sse41_cache(os.environ["MINDCV_HOME"])
    os.environ[ONEDNN] = value
    decision = cpu_isa.apply_cpu_isa()
    assert (decision.source, decision.cap) == ("user", None)  # oneDNN ignores it: no cap, and no SSE41 either
    assert "not an instruction-set level oneDNN knows" in caplog.text and repr(value) in caplog.text
    valid = caplog.text.split("valid:", 1)[1]
    assert all(name in valid for name in list(ISA_VALUES) + list(cpu_isa.ISA_ALIASES))
    assert in_process.applied == []


@pytest.mark.slow
def test_inherited_marker_rules_in_children(clean_env, tmp_path):
    """What a child does with the cap and marker a parent exported, read from the child's own oneDNN.

    (A trusted marker: test_cached_cap_is_applied_and_inherited; the off switch: test_switched_off.)
    """
    tag = host_tag()
    cases = {  # extra environment -> (source, cap, effective level, ONEDNN_MAX_CPU_ISA and marker afterwards)
        "other-host": (
            {ONEDNN: "SSE41", CHOSEN: f"SSE41@{OTHER_TAG}"},
            ("default", None, DEFAULT_LEVEL, None, f"DEFAULT@{tag}"),
        ),
        "user-dnnl": ({ONEDNN: "SSE41", CHOSEN: f"SSE41@{tag}", DNNL: "AVX"}, ("user", "AVX", "AVX", None, None)),
        "default-marker-user-cap": (
            {CHOSEN: f"DEFAULT@{tag}", ONEDNN: "SSE41"},
            ("user", "SSE41", "SSE41", "SSE41", None),
        ),
    }
    jobs = [(IMPORT_MINDCV, child_env(tmp_path / name, **extra)) for name, (extra, _) in cases.items()]
    for (name, (_, expected)), child in zip(cases.items(), run_children(jobs)):
        found = tuple(child.result[k] for k in ("source", "cap", "effective", "onednn_env", "chosen_env"))
        assert found == expected, (name, child.stderr[-2000:])
    assert_valid_cache(tmp_path / "other-host", host_key(), None)  # decided afresh


# ------------------------------------------------------------------------------- 7. too late to apply a cap
@pytest.mark.slow
def test_cap_after_a_convolution_is_too_late(clean_env):
    home = clean_env
    write_sse41_cache(home)
    child = run_child(CONV_FIRST + IMPORT_MINDCV, child_env(home))
    assert "already ran a CPU kernel" in child.stderr
    assert child.result["source"] == "too-late" and child.result["cap"] is None
    assert child.result["effective"] == DEFAULT_LEVEL


# ------------------------------------------------------------------------------------ 8. corrupted caches
@pytest.mark.slow
def test_corrupted_cache_never_breaks_import(clean_env, tmp_path):
    key = host_key()
    valid_text = json.dumps({"version": 1, "hosts": {key: entry("SSE41")}})
    # (random bytes, a bad choice: in this process in test_bad_cache_file_is_replaced and ..._entry_is_measured_again)
    variants = {
        "truncated": valid_text[: len(valid_text) // 2].encode(),
        "wrong-version": json.dumps({"version": 2, "hosts": {key: entry("SSE41")}}).encode(),
    }
    jobs = []
    for name, data in variants.items():
        home = tmp_path / name
        home.mkdir()
        cache_file(home).write_bytes(data)
        jobs.append((IMPORT_MINDCV, child_env(home)))
    for (name, _), child in zip(variants.items(), run_children(jobs)):
        assert child.result["source"] == "default", (name, child.result, child.stderr[-2000:])
        assert child.result["effective"] == DEFAULT_LEVEL, name
        assert "ignoring the CPU kernel cache" in child.stderr, name
        assert_valid_cache(tmp_path / name, key, None)


BAD_ENTRIES = {
    "choice-DEFAULT": lambda: entry("DEFAULT"),
    "choice-path": lambda: entry("../x"),
    "choice-int": lambda: entry(7),
    "choice-lower-case": lambda: entry("sse41"),
    "choice-list": lambda: entry(["SSE41"]),
    "speedup-nan": lambda: entry("SSE41", float("nan")),
    "speedup-inf": lambda: entry("SSE41", float("inf")),
    "speedup-true": lambda: entry("SSE41", True),
    "speedup-negative": lambda: entry("SSE41", -1),
    "speedup-zero": lambda: entry("SSE41", 0),
    "speedup-string": lambda: entry("SSE41", "3.0"),
    "speedup-missing": lambda: {k: v for k, v in entry("SSE41").items() if k != "speedup"},
    "candidates-list": lambda: entry("SSE41", candidates=[]),
    "candidates-null": lambda: entry("SSE41", candidates=None),
    "entry-list": lambda: [entry("SSE41")],
    "entry-string": lambda: "SSE41",
    "entry-null": lambda: None,
}


@pytest.mark.parametrize("bad", BAD_ENTRIES, ids=str)
def test_bad_cache_entry_is_measured_again(in_process, bad):
    home = os.environ["MINDCV_HOME"]
    key = host_key()
    write_cache(home, {key: BAD_ENTRIES[bad](), "another host": entry("AVX")})
    decision = cpu_isa.apply_cpu_isa()
    assert decision.source == "default" and decision.cap is None
    assert in_process.applied == []
    assert_valid_cache(home, key, None)
    assert json.loads(cache_file(home).read_text())["hosts"]["another host"]["choice"] == "AVX"  # kept


BAD_FILES = {
    "empty": b"",
    "random-bytes": random.Random(1).randbytes(300),
    "invalid-utf8": b'{"version": 1, "hosts": {"\xff\xfe": 1}}',
    "not-json": b"version = 1",
    "top-level-list": b"[1, 2]",
    "hosts-list": b'{"version": 1, "hosts": []}',
    "version-missing": b'{"hosts": {}}',
    "version-string": b'{"version": "1", "hosts": {}}',
    "deep-nesting": b'{"version": 1, "hosts": ' + b"[" * 200000 + b"]" * 200000 + b"}",
    "huge-number": b'{"version": 1' + b"0" * 20000 + b', "hosts": {}}',
}


@pytest.mark.parametrize("bad", BAD_FILES, ids=str)
def test_bad_cache_file_is_replaced(in_process, caplog, bad):
    home = os.environ["MINDCV_HOME"]
    Path(home).mkdir()
    cache_file(home).write_bytes(BAD_FILES[bad])
    decision = cpu_isa.apply_cpu_isa()
    assert decision.source == "default" and in_process.applied == []
    assert "ignoring the CPU kernel cache" in caplog.text
    assert_valid_cache(home, host_key(), None)


def _mutate_structure(rng: random.Random, obj):
    """Replace or delete one random node of a JSON tree."""
    values = [None, True, False, 0, 7, -1, 0.5, 1e300, float("nan"), float("inf"), "", "DEFAULT", "../x", "SSE41"]
    values += ["AVX512_CORE", "sse41", [], {}, ["SSE41"], {"choice": "SSE41"}]
    path, node = [], obj
    while isinstance(node, (dict, list)) and node and rng.random() < 0.75:
        key = rng.choice(list(node)) if isinstance(node, dict) else rng.randrange(len(node))
        path.append((node, key))
        node = node[key]
    if not path:
        return rng.choice(values)
    parent, key = path[-1]
    if isinstance(parent, dict) and rng.random() < 0.3:
        del parent[key]
    else:
        parent[key] = rng.choice(values)
    return obj


def _mutate_bytes(rng: random.Random, data: bytes) -> bytes:
    data = bytearray(data)
    kind = rng.randrange(4)
    at = rng.randrange(len(data))
    if kind == 0:
        data[at] = rng.randrange(256)
    elif kind == 1:
        del data[at : at + rng.randint(1, 40)]
    elif kind == 2:
        data[at:at] = rng.randbytes(rng.randint(1, 8))
    else:
        del data[at:]
    return bytes(data)


def test_read_cache_fuzz(clean_env, tmp_path):
    hosts = {"a": entry("SSE41"), "b": entry(None, 1.0), "c": entry("AVX512_CORE_VNNI", 12.5)}
    valid = {"version": 1, "hosts": hosts}
    path = tmp_path / "cpu_isa.json"
    rng = random.Random(99)
    accepted = 0
    for i in range(400):
        if i % 2:
            data = _mutate_bytes(rng, json.dumps(valid).encode())
        else:
            tree = json.loads(json.dumps(valid))
            for _ in range(rng.randint(1, 4)):
                tree = _mutate_structure(rng, tree)
            data = json.dumps(tree, allow_nan=True).encode()
        path.write_bytes(data)
        found = cpu_isa._read_cache(str(path))
        assert isinstance(found, dict), data
        for value in found.values():
            choice = value.get("choice")
            assert choice is None or (isinstance(choice, str) and choice in CAP_NAMES), data
            speedup = value["speedup"]
            assert not isinstance(speedup, bool) and math.isfinite(speedup) and speedup > 0, data
            assert isinstance(value["candidates"], dict), data
            accepted += 1
    assert accepted > 100  # the mutations left many entries intact: the valid ones were not dropped


# Entries that are not what measure_cpu_isa writes but once passed _read_cache's validation and then broke the
# decision at import or the report of ``mindcv-cpu-isa``: they are refused, measured again, and both work.
ACCEPTED_ODD_ENTRIES = {
    "choice-missing": lambda: {k: v for k, v in entry(None, 1.0).items() if k != "choice"},
    "reason-missing": lambda: {k: v for k, v in entry(None, 1.0).items() if k != "reason"},
    "run-not-a-dict": lambda: entry(None, 1.0, candidates={"default": 7}),
    "fingerprint-not-a-dict": lambda: entry(None, 1.0, fingerprint=[]),
}


@pytest.mark.parametrize("odd", ACCEPTED_ODD_ENTRIES, ids=str)
def test_entries_the_cache_accepts_are_usable(in_process, odd):
    home = os.environ["MINDCV_HOME"]
    key = host_key()
    write_cache(home, {key: ACCEPTED_ODD_ENTRIES[odd]()})
    assert key not in cpu_isa._read_cache(str(cache_file(home)))  # refused by the validation
    decision = cpu_isa.apply_cpu_isa()
    assert decision.source == "default", decision.message
    report = cpu_isa.cpu_isa_report()
    assert "decision: default" in report


# ------------------------------------------------------------------------------- 9. two processes at once
@pytest.mark.slow
def test_concurrent_imports_measure_once(clean_env, tmp_path):
    home = tmp_path / "fresh"  # not created: both processes find no cache
    ready = tmp_path / "ready"
    ready.mkdir()
    env = child_env(home, MINDCV_CPU_ISA_CANDIDATES="SSE41", TEST_READY_DIR=ready)
    children = run_children([(RACE, env), (RACE, env)])
    measuring = [child for child in children if MEASURING_LINE in child.stderr]
    assert len(measuring) == 1, [child.stderr[-1500:] for child in children]
    a, b = (child.result for child in children)
    assert (a["source"], a["cap"], a["effective"]) == (b["source"], b["cap"], b["effective"])
    assert a["entry"] == b["entry"]  # the second process used the first one's measurement
    saved = json.loads(cache_file(home).read_text())
    assert len(saved["hosts"]) == 1
    (cached,) = saved["hosts"].values()
    assert a["entry"].pop("cache_file") == str(cache_file(home))  # where the decision is kept, told to the report
    assert cached == a["entry"]
    assert set(cached["candidates"]) == {"default", "SSE41"}
    assert cached["fingerprint"]["candidates"] == ["SSE41"]
    assert a["source"] == ("measured" if cached["choice"] else "default")
    assert a["effective"] == ("SSE41" if cached["choice"] else DEFAULT_LEVEL)
    assert a["chosen_env"] == f"{cached['choice'] or 'DEFAULT'}@{host_tag('SSE41')}"
    assert cpu_isa.complete(cached)


@pytest.mark.slow
def test_unusable_home_falls_back_to_the_temp_cache_and_measures_once(clean_env, tmp_path):
    """Two processes whose MINDCV_HOME cannot be created share the per-user cache and lock in TMPDIR."""
    blocker = tmp_path / "regular-file"
    blocker.write_text("not a folder")
    tmpdir, ready = tmp_path / "tmp", tmp_path / "ready"
    ready.mkdir()
    probe = tmp_path / "fake_probe.py"
    probe.write_text(FAKE_PROBE.replace("__VALUES__", repr(ISA_VALUES)).replace("__DEFAULT__", DEFAULT_LEVEL))
    env = child_env(
        blocker / "mindcv",
        tmpdir=tmpdir,
        MINDCV_CPU_ISA_CANDIDATES="SSE41",
        TEST_READY_DIR=ready,
        TEST_FAKE_PROBE=probe,
    )
    children = run_children([(SWAP_PROBE + RACE, env), (SWAP_PROBE + RACE, env)])
    fallback = tmpdir / f"mindcv-{os.getuid()}" / cpu_isa.CACHE_NAME
    measuring = [child for child in children if MEASURING_LINE in child.stderr]
    assert len(measuring) == 1, [child.stderr[-1500:] for child in children]
    assert measuring[0].stderr.count(MEASURING_LINE) == 1 and str(fallback) in measuring[0].stderr
    for child in children:
        assert "cannot use" in child.stderr and str(blocker / "mindcv") in child.stderr
        assert (child.result["source"], child.result["cap"], child.result["effective"]) == (
            "measured",
            "SSE41",
            "SSE41",
        )
        assert child.result["chosen_env"] == f"SSE41@{host_tag('SSE41')}"
    assert children[0].result["entry"] == children[1].result["entry"]
    cached = cpu_isa._read_cache(str(fallback))
    assert list(cached) == [host_key("SSE41")] and cached[host_key("SSE41")]["choice"] == "SSE41"
    assert not (blocker / "mindcv").exists() and blocker.read_text() == "not a folder"


def test_no_usable_cache_folder_at_all_still_decides(in_process, monkeypatch, tmp_path, caplog):
    blocker = tmp_path / "regular-file"
    blocker.write_text("not a folder")
    monkeypatch.setenv("MINDCV_HOME", str(blocker / "home"))
    monkeypatch.setattr(cpu_isa, "_fallback_cache_path", lambda: str(blocker / "tmp" / cpu_isa.CACHE_NAME))
    monkeypatch.setenv(cpu_isa.CANDIDATES_ENV, "SSE41")
    calls: List[Optional[str]] = []
    monkeypatch.setattr(cpu_isa, "_measure_one", fake_measure_one(calls, run(3000.0, DEFAULT_LEVEL)))
    decision = cpu_isa.apply_cpu_isa()
    assert (decision.source, decision.cap) == ("measured", "SSE41") and calls == [None, "SSE41"]
    assert in_process.applied == [ISA_VALUES["SSE41"]]
    assert caplog.text.count("cannot use") == 2 and "without a cache" in caplog.text
    assert os.listdir(tmp_path) == ["regular-file"]


# -------------------------------------------------------------------------------------- 10. unusable caches
@pytest.mark.slow
def test_unusable_cache_folder_still_decides(clean_env, tmp_path):
    folder_home = tmp_path / "folder-home"
    cache_file(folder_home).mkdir(parents=True)  # cpu_isa.json is a folder: it can be neither read nor replaced
    cache_is_folder = run_child(IMPORT_MINDCV, child_env(folder_home))
    # (a MINDCV_HOME below a regular file: test_unusable_home_falls_back_to_the_temp_cache_and_measures_once)
    assert "ignoring the CPU kernel cache" in cache_is_folder.stderr
    assert cache_is_folder.result["source"] == "default", cache_is_folder.stderr[-2000:]
    assert cache_is_folder.result["effective"] == DEFAULT_LEVEL


def test_cache_write_failure_keeps_the_measured_choice(clean_env, monkeypatch, caplog):
    """A cache that cannot be written must cost the cache, not the measurement (cpu_isa.cached_or_measured)."""
    home = clean_env
    cache_file(home).mkdir(parents=True)
    measured = entry("AVX", 2.0)
    monkeypatch.setattr(cpu_isa, "measure_cpu_isa", lambda caps=None, **kw: dict(measured))
    found = cpu_isa.cached_or_measured()
    assert found["choice"] == "AVX" and found["speedup"] == 2.0
    assert "could not cache the CPU kernel choice" in caplog.text


# ------------------------------------------------------------------------------------------ 11. switched off
@pytest.mark.slow
def test_switched_off(clean_env, tmp_path):
    fresh = tmp_path / "fresh"
    cached = tmp_path / "cached"
    before = write_sse41_cache(cached).read_bytes()
    inherited = {ONEDNN: "SSE41", CHOSEN: f"SSE41@{host_tag()}"}  # the off switch also drops an inherited cap
    off_fresh, off_cached = run_children(
        [
            (IMPORT_MINDCV, child_env(fresh, MINDCV_AUTO_CPU_ISA="0", **inherited)),
            (IMPORT_MINDCV, child_env(cached, MINDCV_AUTO_CPU_ISA="0")),
        ]
    )
    for child in (off_fresh, off_cached):
        assert child.result["source"] == "off" and child.result["cap"] is None
        assert child.result["effective"] == DEFAULT_LEVEL
        assert child.result["onednn_env"] is None and child.result["chosen_env"] is None
    assert not cache_file(fresh).exists() and not (fresh / (cpu_isa.CACHE_NAME + ".lock")).exists()
    assert os.listdir(tmp_path / "tmp") == []  # nor a fallback cache
    assert cache_file(cached).read_bytes() == before


@pytest.mark.parametrize("value", ["0", "off", "False", " no "])
def test_switch_values_in_process(in_process, value):
    home = os.environ["MINDCV_HOME"]
    write_sse41_cache(home)
    os.environ[cpu_isa.SWITCH_ENV] = value
    assert cpu_isa.apply_cpu_isa().source == "off"
    assert in_process.applied == []


def test_cached_choice_applied_in_process(in_process):
    """The recording twin of test_cached_cap_is_applied_and_inherited: the value handed to oneDNN."""
    write_sse41_cache(os.environ["MINDCV_HOME"])
    decision = cpu_isa.apply_cpu_isa()
    assert (decision.source, decision.cap) == ("measured", "SSE41")
    assert in_process.applied == [ISA_VALUES["SSE41"]]
    assert os.environ["ONEDNN_MAX_CPU_ISA"] == "SSE41"
    assert os.environ[cpu_isa.CHOSEN_ENV] == f"SSE41@{host_tag()}"
    assert cpu_isa.apply_cpu_isa() is decision and in_process.applied == [ISA_VALUES["SSE41"]]  # once per process


# ------------------------------------------------------------------------------------------- 12. the CLI
@pytest.mark.slow
def test_console_script(clean_env, tmp_path):
    """``mindcv-cpu-isa`` and ``--json``; ``--remeasure`` where the import itself measured measures once."""
    script = os.path.join(os.path.dirname(sys.executable), "mindcv-cpu-isa")
    assert os.access(script, os.X_OK)
    env = child_env(clean_env)
    fresh = tmp_path / "fresh"
    jobs = [(["--remeasure"], child_env(fresh, MINDCV_CPU_ISA_CANDIDATES="SSE41")), ([], env), (["--json"], env)]
    procs = [
        subprocess.Popen([script, *args], env=job_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for args, job_env in jobs
    ]
    (re_out, re_err), (text_out, text_err), (json_out, json_err) = [proc.communicate(timeout=240) for proc in procs]
    assert procs[0].returncode == 0, re_err[-2000:]
    assert re_err.count(MEASURING_LINE) == 1, re_err[-3000:]  # the import's first-use measurement, not a second
    saved = json.loads(cache_file(fresh).read_text())["hosts"]
    assert list(saved) == [host_key("SSE41")]
    (cached,) = saved.values()
    assert set(cached["candidates"]) == {"default", "SSE41"} and cpu_isa.complete(cached)
    assert f"measured: choice {cached['choice'] or 'default'} ({cached['reason']})" in re_out
    assert f"choice: {cached['choice'] or 'default'} ({cached['reason']})" in re_out
    assert procs[1].returncode == 0, text_err[-2000:]
    assert "decision:" in text_out
    assert f"oneDNN level in effect in this process: {DEFAULT_LEVEL}" in text_out
    assert procs[2].returncode == 0, json_err[-2000:]
    summary = json.loads(json_out)
    assert {"cpu", "isa_flags", "cpu_isa_cap", "cpu_isa_effective", "mindspore_threads"} <= set(summary)
    assert summary["isa_flags"] == cpu_isa.host_isa_flags()
    assert summary["cpu_isa_cap"] == "default" and summary["cpu_isa_effective"] == DEFAULT_LEVEL


# ------------------------------------------------------------------- a narrow win is confirmed by a second run
def _scripted_probe(monkeypatch, totals):
    """Replace the probe by scripted totals per cap (``None``: the default), consumed in order."""
    calls = []

    def fake(cap, budget_s, timeout_s):
        calls.append(cap)
        total = totals[cap].pop(0)
        return {"ops_ms": {"dense3x3 fwd": total}, "total_ms": total, "effective": cap or "AVX512_CORE_BF16"}

    monkeypatch.setattr(cpu_isa, "_measure_one", fake)
    return calls


def test_narrow_win_that_does_not_repeat_is_not_taken(monkeypatch):
    # first round: the default had an unlucky run (100 ms) and AVX2 looks 1.43x faster; on the second run the
    # default takes 60 ms: AVX2 (70 ms at best) is slower and must not be chosen
    calls = _scripted_probe(monkeypatch, {None: [100.0, 60.0], "AVX2": [70.0, 72.0]})
    record = cpu_isa.measure_cpu_isa(["AVX2"])
    assert calls == [None, "AVX2", None, "AVX2"]
    assert record["confirmed"] is True and record["choice"] is None
    assert record["candidates"]["default"]["total_ms"] == 60.0 and record["candidates"]["AVX2"]["total_ms"] == 70.0


def test_narrow_win_that_repeats_is_taken(monkeypatch):
    calls = _scripted_probe(monkeypatch, {None: [100.0, 98.0], "AVX2": [70.0, 69.0]})
    record = cpu_isa.measure_cpu_isa(["AVX2"])
    assert calls == [None, "AVX2", None, "AVX2"]
    assert record["confirmed"] is True and record["choice"] == "AVX2"
    assert record["speedup"] == pytest.approx(98.0 / 69.0, rel=1e-3)


def test_clear_win_is_not_measured_twice(monkeypatch):
    calls = _scripted_probe(monkeypatch, {None: [1000.0], "AVX2": [100.0], "AVX512_CORE": [900.0]})
    record = cpu_isa.measure_cpu_isa(["AVX512_CORE", "AVX2"])
    assert calls == [None, "AVX512_CORE", "AVX2"]
    assert record["confirmed"] is False and record["choice"] == "AVX2" and record["speedup"] == 10.0


# ------------------------------------------------- second end-to-end adversarial pass: what it broke, now held
@pytest.mark.parametrize("value", ["SSE41 ", " SSE41", "SSE41\n"])
@pytest.mark.slow
def test_user_value_with_spaces_is_reported_not_claimed(clean_env, value):
    """oneDNN forgives case but not surrounding spaces: such a value must not be reported as applied."""
    child = run_child(IMPORT_MINDCV, child_env(clean_env, ONEDNN_MAX_CPU_ISA=value))
    assert child.result["source"] == "user" and child.result["cap"] is None
    assert child.result["effective"] == DEFAULT_LEVEL
    assert "is not an instruction-set level oneDNN knows" in child.stderr and repr(value) in child.stderr


@pytest.mark.slow
def test_cli_rejects_a_mistyped_candidate_list_in_one_line(clean_env):
    script = os.path.join(os.path.dirname(sys.executable), "mindcv-cpu-isa")
    for args in ([], ["--remeasure"], ["--json"]):
        proc = subprocess.run(
            [script, *args], env=child_env(clean_env, MINDCV_CPU_ISA_CANDIDATES="bogus"), capture_output=True, text=True
        )
        assert proc.returncode == 2, (args, proc.stderr[-2000:])
        assert "Traceback" not in proc.stderr
        assert "mindcv-cpu-isa: unknown oneDNN instruction-set cap 'BOGUS'" in proc.stderr and "AVX2" in proc.stderr


@pytest.mark.slow
def test_remeasure_reports_the_new_measurement(clean_env):
    """After --remeasure the report shows the new entry (not the old cache's) and says this process keeps its level."""
    write_cache(clean_env, {host_key("SSE41"): entry("SSE41", fingerprint=json.loads(host_key("SSE41")))})
    script = os.path.join(os.path.dirname(sys.executable), "mindcv-cpu-isa")
    env = child_env(clean_env, MINDCV_CPU_ISA_CANDIDATES="SSE41")
    proc = subprocess.run([script, "--remeasure"], env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-2000:]
    saved = json.loads(cache_file(clean_env).read_text())["hosts"][host_key("SSE41")]
    assert saved["reason"] != "crafted by the test"  # measured again and stored
    assert "this one keeps the level it started with" in proc.stdout
    assert f"choice: {saved['choice'] or 'default'} ({saved['reason']})" in proc.stdout
    assert "crafted by the test" not in proc.stdout.split("measured:", 1)[1]
    assert f"cached in {cache_file(clean_env)}" in proc.stdout


@pytest.mark.slow
def test_cache_file_that_cannot_be_written_falls_back_and_is_found_again(clean_env, tmp_path):
    """cpu_isa.json as a folder: the measurement goes to the temporary cache, and the next process finds it there."""
    cache_file(clean_env).mkdir(parents=True)
    tmpdir = tmp_path / "tmp-fallback"
    env = child_env(clean_env, tmpdir=tmpdir, MINDCV_CPU_ISA_CANDIDATES="SSE41")
    first = run_child(IMPORT_MINDCV, env)
    assert first.stderr.count(MEASURING_LINE) == 1
    fallback = tmpdir / f"mindcv-{os.getuid()}" / "cpu_isa.json"
    assert first.result["entry"]["cache_file"] == str(fallback) and fallback.is_file()
    second = run_child(IMPORT_MINDCV, env)
    assert MEASURING_LINE not in second.stderr  # found in the temporary cache: not measured again
    assert second.result["entry"]["cache_file"] == str(fallback)
    assert second.result["entry"]["measured_at"] == first.result["entry"]["measured_at"]
