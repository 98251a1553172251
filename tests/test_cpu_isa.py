"""Tests of the oneDNN instruction-set choice made at ``import mindcv`` (``mindcv/utils/cpu_isa.py``).

oneDNN fixes its instruction-set level per process at its first primitive, so everything about applying
a cap runs in fresh child processes started with a clean environment (no ``ONEDNN_MAX_CPU_ISA``, no
``MINDCV_CPU_ISA_*`` exported by this pytest process) and a private ``MINDCV_HOME``. Those children read
the level in effect straight from MindSpore's ``libdnnl`` with ctypes, not through mindcv.

The rules of the decision (``_decide``) are also checked in this process against a libdnnl wrapper that
records ``dnnl_set_max_cpu_isa`` instead of calling it, so this process's level is never touched.

This host is an AVX2-only x86 CPU: the automatic candidate list is empty, so ``MINDCV_CPU_ISA_CANDIDATES``
(SSE41, a real and slower level here) or a crafted cache file exercise the measuring and applying paths.
"""

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

def effective():
    import mindspore
    lib = ctypes.CDLL(os.path.join(os.path.dirname(mindspore.__file__), "lib", "libdnnl.so.3"))
    value = lib.dnnl_get_effective_cpu_isa()
    return {1: "SSE41", 3: "AVX", 7: "AVX2"}.get(value, hex(value))

def report(**values):
    print("TEST_RESULT " + json.dumps(values), flush=True)
"""
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
# a grandchild importing MindSpore only: the level it inherits through the environment
GRANDCHILD = CHILD_PRELUDE + "report(effective=effective(), mindcv_loaded='mindcv' in sys.modules)\n"
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


class Child(NamedTuple):
    returncode: int
    stdout: str
    stderr: str
    result: Optional[dict]


def child_env(home, **extra) -> Dict[str, str]:
    """os.environ without the CPU-ISA variables, with a private MINDCV_HOME and a quiet MindSpore."""
    env = {k: v for k, v in os.environ.items() if k not in STRIPPED_ENV}
    env.update(MINDCV_HOME=str(home), GLOG_v="3")
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


# ---------------------------------------------------------------------------------------------- cache files
def cache_file(home) -> Path:
    return Path(home) / cpu_isa.CACHE_NAME


def host_key() -> str:
    """This host's cache key, as a child with the environment of :func:`child_env` computes it.

    Needs the ``clean_env`` fixture (the key holds ``candidate_caps()``, which reads the environment).
    """
    assert not os.environ.get(cpu_isa.CANDIDATES_ENV)
    return cpu_isa._fingerprint_key(cpu_isa.fingerprint())


def entry(choice: Optional[str], speedup: float = 3.0, **changes) -> dict:
    """A cache entry as measure_cpu_isa writes it (with made-up numbers)."""
    made = {
        "candidates": {
            "default": {"ops_ms": {"dense3x3 fwd": 3.0}, "total_ms": 3.0, "effective": "AVX2"},
            **(
                {choice: {"ops_ms": {"dense3x3 fwd": 1.0}, "total_ms": 1.0, "effective": choice}}
                if isinstance(choice, str)
                else {}
            ),
        },
        "choice": choice,
        "host_best_isa": "AVX2",
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
    """This process's environment without the CPU-ISA variables (restored afterwards); returns MINDCV_HOME."""
    for name in STRIPPED_ENV:
        monkeypatch.setenv(name, "set-by-test")  # so that undoing restores the original, set or not
        monkeypatch.delenv(name)
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
    return lib


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


def test_this_host_is_avx2_only(monkeypatch):
    monkeypatch.delenv(cpu_isa.CANDIDATES_ENV, raising=False)
    assert cpu_isa.host_isa_flags() == sorted(AVX2_ONLY)
    assert host_best_isa() == "AVX2"
    assert candidate_caps() == []


def test_candidates_from_the_environment(monkeypatch):
    monkeypatch.setenv(cpu_isa.CANDIDATES_ENV, " avx, SSE41 ,,AVX ")
    assert candidate_caps(CASCADE_LAKE) == ["AVX", "SSE41"]  # replaces the automatic list, upper-cased, deduplicated
    monkeypatch.setenv(cpu_isa.CANDIDATES_ENV, "  ")
    assert candidate_caps(CASCADE_LAKE) == ["AVX512_CORE", "AVX2"]  # blank: the automatic list


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


@pytest.mark.parametrize("cap_ms", [100.0, 95.0, 91.0, 120.0])
def test_choose_cap_keeps_the_default_within_the_margin(cap_ms):
    chosen = choose_cap({"default": run(100.0, "AVX512_CORE"), "AVX2": run(cap_ms, "AVX2")})
    assert chosen["choice"] is None and chosen["speedup"] == 1.0
    assert "default is kept" in chosen["reason"]


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
    runs = {"default": run(100.0, "AVX512_CORE_BF16"), "AVX2": {"error": "timed out after 120 s"}}
    assert choose_cap(runs) == {"choice": None, "speedup": 1.0, "reason": "no cap could be measured"}


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
        assert runs[cap]["total_ms"] == min(timed.values())
        assert runs[cap]["total_ms"] < runs["default"]["total_ms"]
        assert runs[cap]["effective"] != runs["default"]["effective"]
        assert chosen["speedup"] >= cpu_isa.MIN_SPEEDUP
        assert chosen["speedup"] == round(runs["default"]["total_ms"] / runs[cap]["total_ms"], 3)


# ------------------------------------------------------------------------------------ 4. a real measurement
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
    assert runs["default"]["effective"] == "AVX2"
    assert runs["SSE41"]["effective"] == "SSE41"
    decided = choose_cap(runs)
    assert {k: record[k] for k in decided} == decided
    assert record["host_best_isa"] == "AVX2"
    assert record["seconds"] > 0
    assert datetime.datetime.fromisoformat(record["measured_at"]).tzinfo is not None


def test_measure_with_a_tiny_timeout_fails_every_run():
    record = cpu_isa.measure_cpu_isa(["SSE41"], timeout_s=0.01)
    assert set(record["candidates"]) == {"default", "SSE41"}
    for result in record["candidates"].values():
        assert "ops_ms" not in result and "timed out" in result["error"]
    assert record["choice"] is None and record["speedup"] == 1.0
    assert "could not be measured" in record["reason"]


def test_measure_nothing_runs_nothing(monkeypatch):
    monkeypatch.setattr(cpu_isa, "_measure_one", lambda *a, **k: pytest.fail("a child was started"))
    record = cpu_isa.measure_cpu_isa([])
    assert record["candidates"] == {} and record["choice"] is None


# ------------------------------------------------------------------------- 5. a cached cap applied at import
def test_cached_cap_is_applied_and_inherited(clean_env):
    home = clean_env
    write_sse41_cache(home)
    code = IMPORT_MINDCV + f"""
grand = subprocess.run([sys.executable, "-c", {GRANDCHILD!r}], capture_output=True, text=True)
line = [x for x in grand.stdout.splitlines() if x.startswith("TEST_RESULT ")][-1]
report(grandchild=json.loads(line.split(" ", 1)[1]))
"""
    child = run_child(code, child_env(home))
    first, grand = [json.loads(x.split(" ", 1)[1]) for x in child.stdout.splitlines() if x.startswith("TEST_RESULT ")]
    assert first["source"] == "measured" and first["cap"] == "SSE41"
    assert first["effective"] == "SSE41"
    assert first["onednn_env"] == "SSE41" and first["chosen_env"] == "SSE41"
    assert first["entry"]["choice"] == "SSE41"
    assert grand["grandchild"] == {"effective": "SSE41", "mindcv_loaded": False}


# -------------------------------------------------------------------------------- 6. the user's setting wins
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
    assert invalid.result["effective"] == "AVX2"  # oneDNN ignores the value; the cached SSE41 is not applied either
    assert "ONEDNN_MAX_CPU_ISA" in invalid.stderr and "'AVX3'" in invalid.stderr
    assert [cache_file(home).read_bytes() for home in homes] == before


@pytest.mark.parametrize(
    "env, source, cap",
    [
        ({"DNNL_MAX_CPU_ISA": "avx"}, "user", "AVX"),
        ({"ONEDNN_MAX_CPU_ISA": "", "DNNL_MAX_CPU_ISA": "SSE41"}, "user", "SSE41"),
        ({"ONEDNN_MAX_CPU_ISA": "AVX", "DNNL_MAX_CPU_ISA": "SSE41"}, "user", "AVX"),  # oneDNN reads ONEDNN_ first
        ({"ONEDNN_MAX_CPU_ISA": "AVX", "MINDCV_CPU_ISA_CHOSEN": "SSE41"}, "user", "AVX"),
        ({"ONEDNN_MAX_CPU_ISA": "SSE41", "MINDCV_CPU_ISA_CHOSEN": "SSE41"}, "inherited", "SSE41"),
        ({"MINDCV_CPU_ISA_CHOSEN": "DEFAULT"}, "inherited", None),
        ({"MINDCV_CPU_ISA_MEASURING": "1"}, "not-applicable", None),
        ({"ONEDNN_MAX_CPU_ISA": "AVX", "MINDCV_AUTO_CPU_ISA": "0"}, "user", "AVX"),
    ],
)
def test_environment_rules_in_process(in_process, env, source, cap):
    """Whatever the environment says wins over the cached SSE41, and nothing is applied by mindcv."""
    write_sse41_cache(os.environ["MINDCV_HOME"])
    os.environ.update(env)  # restored by the clean_env fixture
    decision = cpu_isa.apply_cpu_isa()
    assert (decision.source, decision.cap) == (source, cap)
    assert in_process.applied == []


# ------------------------------------------------------------------------------- 7. too late to apply a cap
def test_cap_after_a_convolution_is_too_late(clean_env):
    home = clean_env
    write_sse41_cache(home)
    child = run_child(CONV_FIRST + IMPORT_MINDCV, child_env(home))
    assert "already ran a CPU kernel" in child.stderr
    assert child.result["source"] == "too-late" and child.result["cap"] is None
    assert child.result["effective"] == "AVX2"


# ------------------------------------------------------------------------------------ 8. corrupted caches
def test_corrupted_cache_never_breaks_import(clean_env, tmp_path):
    key = host_key()
    valid_text = json.dumps({"version": 1, "hosts": {key: entry("SSE41")}})
    variants = {
        "random-bytes": random.Random(0).randbytes(600),
        "truncated": valid_text[: len(valid_text) // 2].encode(),
        "wrong-version": json.dumps({"version": 2, "hosts": {key: entry("SSE41")}}).encode(),
        "bad-choice": json.dumps({"version": 1, "hosts": {key: entry("../x")}}).encode(),
    }
    jobs = []
    for name, data in variants.items():
        home = tmp_path / name
        home.mkdir()
        cache_file(home).write_bytes(data)
        jobs.append((IMPORT_MINDCV, child_env(home)))
    for (name, _), child in zip(variants.items(), run_children(jobs)):
        assert child.result["source"] == "default", (name, child.result, child.stderr[-2000:])
        assert child.result["effective"] == "AVX2", name
        if name != "bad-choice":
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
    assert cached == a["entry"]
    assert set(cached["candidates"]) == {"default", "SSE41"}
    assert cached["fingerprint"]["candidates"] == ["SSE41"]
    assert a["source"] == ("measured" if cached["choice"] else "default")
    assert a["effective"] == ("SSE41" if cached["choice"] else "AVX2")


# -------------------------------------------------------------------------------------- 10. unusable caches
def test_unusable_cache_folder_still_decides(clean_env, tmp_path):
    regular = tmp_path / "regular-file"
    regular.write_text("not a folder")
    folder_home = tmp_path / "folder-home"
    cache_file(folder_home).mkdir(parents=True)  # cpu_isa.json is a folder: it can be neither read nor replaced
    below_file, cache_is_folder = run_children(
        [(IMPORT_MINDCV, child_env(regular / "mindcv")), (IMPORT_MINDCV, child_env(folder_home))]
    )
    assert below_file.result["source"] == "default" and below_file.result["effective"] == "AVX2"
    assert "cannot use the cache" in below_file.stderr
    assert "ignoring the CPU kernel cache" in cache_is_folder.stderr
    assert cache_is_folder.result["source"] == "default", cache_is_folder.stderr[-2000:]
    assert cache_is_folder.result["effective"] == "AVX2"


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
def test_switched_off(clean_env, tmp_path):
    fresh = tmp_path / "fresh"
    cached = tmp_path / "cached"
    before = write_sse41_cache(cached).read_bytes()
    off_fresh, off_cached = run_children(
        [
            (IMPORT_MINDCV, child_env(fresh, MINDCV_AUTO_CPU_ISA="0")),
            (IMPORT_MINDCV, child_env(cached, MINDCV_AUTO_CPU_ISA="0")),
        ]
    )
    for child in (off_fresh, off_cached):
        assert child.result["source"] == "off" and child.result["cap"] is None
        assert child.result["effective"] == "AVX2"
        assert child.result["onednn_env"] is None and child.result["chosen_env"] is None
    assert not cache_file(fresh).exists() and not (fresh / (cpu_isa.CACHE_NAME + ".lock")).exists()
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
    assert os.environ["ONEDNN_MAX_CPU_ISA"] == os.environ[cpu_isa.CHOSEN_ENV] == "SSE41"
    assert cpu_isa.apply_cpu_isa() is decision and in_process.applied == [ISA_VALUES["SSE41"]]  # once per process


# ------------------------------------------------------------------------------------------- 12. the CLI
def test_console_script(clean_env):
    script = os.path.join(os.path.dirname(sys.executable), "mindcv-cpu-isa")
    assert os.access(script, os.X_OK)
    env = child_env(clean_env)
    procs = [
        subprocess.Popen([script, *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for args in ([], ["--json"])
    ]
    (text_out, text_err), (json_out, json_err) = [proc.communicate(timeout=240) for proc in procs]
    assert procs[0].returncode == 0, text_err[-2000:]
    assert "decision:" in text_out
    assert "oneDNN level in effect in this process: AVX2" in text_out
    assert procs[1].returncode == 0, json_err[-2000:]
    summary = json.loads(json_out)
    assert {"cpu", "isa_flags", "cpu_isa_cap", "cpu_isa_effective", "mindspore_threads"} <= set(summary)
    assert summary["isa_flags"] == sorted(AVX2_ONLY)
    assert summary["cpu_isa_cap"] == "default" and summary["cpu_isa_effective"] == "AVX2"
