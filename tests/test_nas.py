"""MNAS search: space, reward, latency table, strategies, the resumable search loop and retraining a result."""

import json
import os
import re
from dataclasses import asdict

import numpy as np
import pytest
from conftest import run_main

from config import ConfigError
from mindcv.models import create_model, load_model
from mindcv.models.arch import format_arch_string
from mindcv.models.mnasnet import ARCH_DEFS, VARIANTS
from mindcv.nas.latency import (
    LatencyTable,
    LatencyTableError,
    apply_calibration,
    fit_calibration,
    host_description,
    layer_keys,
    read_latency_table,
)
from mindcv.nas.proxy import ProxyTask
from mindcv.nas.reward import mnas_reward
from mindcv.nas.runner import (
    REFERENCES,
    LatencyConfig,
    SearchConfig,
    SearchStateError,
    StateMismatchError,
    _check_lut_file,
    _check_same_latency_platform,
    _discard_state,
    at_chance_warning,
    load_state,
    pareto_front,
    run_search,
    spearman,
    write_csv,
)
from mindcv.nas.search_space import SearchSpace
from mindcv.nas.strategies import RandomSearch, RegularizedEvolution, ReinforceController, create_strategy
from mindcv.utils.cpu_isa import ISA_VALUES, effective_cpu_isa
from search import load_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMOKE = os.path.join(REPO, "configs", "nas", "smoke.yaml")


def trainable(model) -> int:
    return int(sum(p.size for p in model.trainable_params()))


@pytest.mark.parametrize(
    "name, key, params",
    [("B1", "b1", VARIANTS["mnasnet_100"].num_params), ("A1", "a1", VARIANTS["semnasnet_100"].num_params)],
)
@pytest.mark.slow
def test_b1_and_a1_are_points_of_the_space_and_rebuild_exactly(name, key, params):
    space = SearchSpace()
    decisions = space.encode(ARCH_DEFS[key])
    assert decisions is not None and len(decisions) == 42
    arch = space.arch_string(decisions)
    assert arch == format_arch_string(create_model("mnasnet_arch", arch=key).arch_def)
    model = create_model("mnasnet_arch", arch=arch)
    assert trainable(model) == params


@pytest.mark.slow
def test_space_decodes_every_choice_and_rejects_bad_vectors():
    space = SearchSpace()
    assert space.num_choices == [4, 2, 2, 2, 3, 3] * 7 and space.size == float((4 * 2 * 2 * 2 * 3 * 3) ** 7)
    ones = [0] * 42  # regular conv, k3, no SE, skip, x0.75, one repeat fewer
    stages = space.decode(ones)
    assert stages[0] == "cn_r1_k3_s1_c16" and stages[3] == "cn_r2_k3_s2_c64" and stages[6] == "cn_r1_k3_s1_c240"
    top = [3, 1, 1, 1, 2, 2] * 7  # MBConv6, k5, SE, noskip, x1.25, one repeat more
    assert space.decode(top)[1] == "ir_r4_k5_s2_e6_c32_se0.25_noskip"
    rng = np.random.default_rng(0)
    for _ in range(3):
        model = create_model("mnasnet_arch", arch=space.arch_string(space.sample(rng)), width_mult=0.25, num_classes=3)
        assert trainable(model) > 0
    with pytest.raises(ValueError, match="decision vector"):
        space.decode([9] * 42)
    assert space.encode(ARCH_DEFS["small"]) is None  # 8-channel stage widths are not in this space
    with pytest.raises(ValueError, match="accepts a non-empty subset"):
        SearchSpace(choices={"kernel": [7]})


def test_reward_soft_and_hard_constraints():
    assert mnas_reward(80.0, 10.0, 10.0) == 80.0
    assert mnas_reward(80.0, 20.0, 10.0) == pytest.approx(80.0 * 2**-0.07)
    assert mnas_reward(80.0, 5.0, 10.0) == pytest.approx(80.0 * 0.5**-0.07)
    # the paper's calibration: twice the latency needs ~5% more accuracy for the same reward
    assert mnas_reward(84.0, 20.0, 10.0) == pytest.approx(mnas_reward(80.0, 10.0, 10.0), rel=0.002)
    assert mnas_reward(80.0, 5.0, 10.0, alpha=0.0, beta=-1.0) == 80.0
    assert mnas_reward(80.0, 20.0, 10.0, alpha=0.0, beta=-1.0) == pytest.approx(40.0)
    with pytest.raises(ValueError):
        mnas_reward(80.0, 0.0, 10.0)


@pytest.mark.slow
def test_reinforce_learns_a_toy_reward_better_than_random():
    space = SearchSpace()

    def toy_reward(d):  # best architecture: every decision 0
        return float(np.mean(np.array(d) == 0)) + np.random.default_rng(sum(d)).normal(0, 0.02)

    results = {}
    for name in ("rl", "random", "evolution"):
        strategy = create_strategy(name, space, seed=3)
        rewards = []
        for _ in range(200):
            d = strategy.ask()
            rewards.append(toy_reward(d))
            strategy.tell(d, rewards[-1])
        results[name] = np.mean(rewards[-50:])
    assert results["rl"] > results["random"] + 0.15
    assert results["evolution"] > results["random"] + 0.1
    with pytest.raises(ValueError, match="unknown search strategy"):
        create_strategy("bayes", space)


@pytest.mark.parametrize("cls", [ReinforceController, RandomSearch, RegularizedEvolution])
def test_restored_strategy_continues_exactly(cls):
    space = SearchSpace()
    a = cls(space, seed=5)
    for i in range(12):
        d = a.ask()
        a.tell(d, float(i % 5))
    b = cls(space, seed=99)
    b.load_state_dict(json.loads(json.dumps(a.state_dict())))
    for i in range(5):
        da, db = a.ask(), b.ask()
        assert da == db
        a.tell(da, float(i))
        b.tell(db, float(i))


@pytest.mark.slow
def test_latency_table_sums_layers_and_caches(tmp_path):
    arch = "ds_r1_k3_s1_c16_noskip|ir_r2_k3_s2_e3_c24"
    keys = layer_keys(arch, 0.5, 32)
    assert [k[0] for k in keys] == ["stem", "ds", "ir", "ir", "head"]
    assert keys[2][-2:] == (2, 16) and keys[3][-2:] == (1, 8)  # stride and input resolution per layer
    path = str(tmp_path / "lut.json")
    table = LatencyTable(path, warmup=1, repeats=3, threads=0)
    predicted = table.predict(arch, 0.5, 32)
    assert predicted > 0 and os.path.exists(path)
    entries = json.load(open(path))["entries"]
    assert len(entries) == 6  # the call overhead + the 5 distinct layers
    overhead = entries['["overhead"]']
    layers = [entries[json.dumps(list(k))] for k in keys]
    assert predicted == pytest.approx(sum(max(v - overhead, 0.0) for v in layers) + overhead)
    again = LatencyTable(path, warmup=1, repeats=3, threads=0)
    assert again.predict(arch, 0.5, 32) == predicted  # read from the file, nothing re-measured


@pytest.mark.parametrize(
    "key, value",
    [
        ("cpu_isa", "SSE41"),  # another oneDNN level
        ("cpu_isa", None),  # a table from before levels were kept
        ("depthwise_kernels", "mindspore"),  # measured with MindSpore's depthwise kernels instead of the direct ones
    ],
)
@pytest.mark.slow
def test_latency_table_from_another_cpu_isa_is_not_reused(tmp_path, key, value):
    arch = "ds_r1_k3_s1_c16_noskip"
    path = str(tmp_path / "lut.json")
    table = LatencyTable(path, warmup=1, repeats=2, threads=0)
    table.predict(arch, 0.5, 32)
    saved = json.load(open(path))
    assert saved["meta"]["cpu_isa"] == effective_cpu_isa() and saved["meta"]["cpu_isa"] in ISA_VALUES
    assert saved["meta"]["depthwise_kernels"] == "direct"
    fake = {k: 1.0e6 for k in saved["entries"]}  # absurd values: reusing them would show in the prediction
    meta = dict(saved["meta"])
    if value is None:
        del meta[key]
    else:
        meta[key] = value
    with open(path, "w") as f:
        json.dump({"meta": meta, "entries": fake}, f)
    again = LatencyTable(path, warmup=1, repeats=2, threads=0)
    assert again.entries == {}
    assert again.predict(arch, 0.5, 32) < 1.0e5
    assert json.load(open(path))["meta"]["cpu_isa"] == effective_cpu_isa()
    assert json.load(open(path))["meta"]["depthwise_kernels"] == "direct"


def test_spearman_and_pareto_front():
    assert spearman(np.array([1, 2, 3, 4]), np.array([10, 20, 30, 40])) == pytest.approx(1.0)
    assert spearman(np.array([1, 2, 3, 4]), np.array([4, 3, 2, 1])) == pytest.approx(-1.0)
    points = [(10, 70), (5, 60), (12, 65), (20, 80), (5, 55)]  # (latency, accuracy)
    assert sorted(pareto_front(points)) == [0, 1, 3]


def test_config_errors_name_the_key(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("budget: 2\nproxy: {epochs: 1, image_sise: 32}\n")
    with pytest.raises(ValueError, match="image_sise"):
        load_config(str(bad), {})
    with pytest.raises(ValueError, match="does not exist"):
        load_config(str(tmp_path / "nope.yaml"), {})


@pytest.mark.slow
def test_smoke_search_writes_outputs_resumes_and_retrains(tmp_path, tiny_data):
    out = str(tmp_path / "search")
    cfg = load_config(SMOKE, {"output_dir": out, "budget": 1})  # one candidate per strategy, then a resume
    summary = run_search(cfg, progress=False)
    for name in ("candidates.csv", "summary.json", "pareto.png", "reward_curve.png", "top1.json", "state.json"):
        assert os.path.getsize(os.path.join(out, name)) > 0, name
    state = json.load(open(os.path.join(out, "state.json")))
    assert [r["strategy"] for r in state["records"]] == ["rl", "random", "evolution"] * cfg.budget
    assert set(state["references"]) == {"MnasNet-B1", "MnasNet-A1"}
    assert summary["target_ms"] == state["references"]["MnasNet-B1"]["latency_ms"]
    rows = open(os.path.join(out, "candidates.csv")).read().strip().splitlines()
    assert len(rows) == 1 + 2 + 3 * cfg.budget
    assert all(0 <= r["accuracy"] <= 100 and r["latency_ms"] > 0 for r in state["records"])
    b1_accuracy = state["references"]["MnasNet-B1"]["accuracy"]  # the smoke proxy trains a few steps only
    proxy = ProxyTask(cfg.proxy)
    assert bool(summary["warnings"]) == (
        at_chance_warning(b1_accuracy, proxy.num_classes, len(proxy.val_y)) is not None
    )
    assert json.load(open(os.path.join(out, "summary.json")))["warnings"] == summary["warnings"]

    # resume with a larger budget: the evaluated candidates are kept, the strategies continue
    more = load_config(SMOKE, {"output_dir": out, "budget": cfg.budget + 1})
    run_search(more, progress=False)
    resumed = json.load(open(os.path.join(out, "state.json")))
    assert resumed["records"][: len(state["records"])] == state["records"]
    assert len(resumed["records"]) == 3 * (cfg.budget + 1)
    # a different search in the same folder is refused
    changed = load_config(SMOKE, {"output_dir": out})
    changed.proxy.epochs = 2
    with pytest.raises(ValueError, match="different settings"):
        run_search(changed, progress=False)

    # the top architecture file loads with create_model and trains with train.py
    top1 = os.path.join(out, "top1.json")
    spec = json.load(open(top1))
    model = create_model("mnasnet_arch", arch=top1, num_classes=3)
    assert model.width_mult == spec["width_mult"] == cfg.proxy.width_mult
    assert format_arch_string(model.arch_def) == spec["arch"]
    ckpt_dir = str(tmp_path / "ckpt")
    args = ["--dataset", "tiny", "--data_dir", tiny_data, "--model", "mnasnet_arch", "--arch", top1]
    args += ["--image_resize", "32", "--batch_size", "8", "--epoch_size", "1", "--opt", "adamw", "--lr", "0.003"]
    args += ["--warmup_epochs", "0", "--ckpt_save_dir", ckpt_dir, "--progress", "False", "--device_target", "CPU"]
    args += ["--num_parallel_workers", "1"]
    run = run_main("train.py", args)
    assert run.returncode == 0, run.stderr[-3000:]
    ckpts = [f for f in os.listdir(ckpt_dir) if f.endswith(".ckpt")]
    # the checkpoint alone rebuilds the architecture (validate/infer/export go through load_model: test_deploy.py)
    loaded = load_model(None, os.path.join(ckpt_dir, sorted(ckpts)[-1]))
    assert loaded.model_name == "mnasnet_arch" and loaded.arch == spec["arch"]
    assert loaded.model.width_mult == spec["width_mult"] and loaded.class_names == ["blocks", "circles", "stripes"]


# -- hardening: the search config, the saved state and the latency table are checked before use ------------------


def _search_config(tmp_path):
    return load_config(SMOKE, {"output_dir": str(tmp_path / "search")})


def _valid_state(cfg, lut_mode=False):
    """A state shaped exactly as run_search writes it, built without training or timing anything."""
    space = SearchSpace(**cfg.space)
    strategies = {
        name: create_strategy(name, space, seed=cfg.seed * 100 + i, **(kwargs or {}))
        for i, (name, kwargs) in enumerate(cfg.strategies.items())
    }
    names = list(strategies)

    def full(i):
        p10, p90 = (float("nan"), float("nan")) if lut_mode else (9.0 + i, 11.0 + i)
        loss = float("nan") if i == 2 else 1.0 + i  # a diverged candidate records NaN
        return dict(accuracy=30.0 + i, loss=loss, params=1000 + i, train_seconds=0.5 * i, latency_ms=10.0 + i,
                    latency_p10_ms=p10, latency_p90_ms=p90)  # fmt: skip

    cache, references = {}, {}
    for j, (label, key) in enumerate(REFERENCES.items()):
        arch = format_arch_string(ARCH_DEFS[key])
        cache[arch] = full(j)
        references[label] = {"arch": arch, **full(j), "cached": False}
    records = []
    for step in range(len(names) * cfg.budget):
        name = names[step % len(names)]
        decisions = strategies[name].ask()
        arch = space.arch_string(decisions)
        cached = arch in cache
        cache.setdefault(arch, full(step))
        res = cache[arch]
        reward = mnas_reward(res["accuracy"], res["latency_ms"], 10.0)
        strategies[name].tell(decisions, reward)
        records.append(
            {
                "step": step,
                "strategy": name,
                "sample": step // len(names),
                "arch": arch,
                "decisions": decisions,
                "reward": reward,
                **res,
                "cached": cached,
            }
        )
    return {
        "fingerprint": cfg.fingerprint(),
        "records": records,
        "cache": cache,
        "references": references,
        "strategies": {n: s.state_dict() for n, s in strategies.items()},
        "host": "test host",
        "config": asdict(cfg),
        "target_ms": 10.0,
    }


def _write_state(cfg, state):
    os.makedirs(cfg.output_dir, exist_ok=True)
    path = os.path.join(cfg.output_dir, "state.json")
    with open(path, "w") as f:
        json.dump(state, f)
    return path


def _use(cfg, state, strategies):
    """What run_search does with a resumed state after loading it (without training or timing)."""
    target = state["references"]["MnasNet-B1"]["latency_ms"] if "MnasNet-B1" in state["references"] else 10.0
    for strategy in strategies.values():
        decisions = strategy.ask()
        strategy.tell(decisions, 1.0)
        strategy.state_dict()
    for entry in list(state["cache"].values()) + state["records"] + list(state["references"].values()):
        mnas_reward(entry["accuracy"], entry["latency_ms"], target)
        f"{entry['accuracy']:.1f} {entry['latency_ms']:.1f}"
    if state["records"]:
        max(r["reward"] for r in state["records"])
        sorted(state["records"], key=lambda r: -r["reward"])
    write_csv(state, os.path.join(cfg.output_dir, "candidates.csv"))
    points = [(r["latency_ms"], r["accuracy"]) for r in state["records"]]
    pareto_front(points + [(v["latency_ms"], v["accuracy"]) for v in state["references"].values()])


@pytest.mark.parametrize("lut_mode", [False, True])
def test_valid_state_loads_and_restores_the_strategies(tmp_path, lut_mode):
    cfg = _search_config(tmp_path)
    state = _valid_state(cfg, lut_mode)
    path = _write_state(cfg, state)
    space = SearchSpace(**cfg.space)
    strategies = {n: create_strategy(n, space, seed=123, **(k or {})) for n, k in cfg.strategies.items()}
    loaded = load_state(path, cfg, space, strategies)
    assert len(loaded["records"]) == len(state["records"])
    for name, strategy in strategies.items():
        assert json.dumps(strategy.state_dict()) == json.dumps(state["strategies"][name])
    _use(cfg, loaded, strategies)


_DELETE = object()


def _damage(path, value):
    """Set (or, with ``_DELETE``, remove) the value at a JSON path; ``value`` may be computed from the state."""

    def apply(state):
        target = state
        for key in path[:-1]:
            target = target[key]
        if value is _DELETE:
            del target[path[-1]]
        else:
            target[path[-1]] = value(state) if callable(value) else value
        return state

    return apply


def _other_arch(state):
    archs = [r["arch"] for r in state["records"] if r["arch"] != state["records"][0]["arch"]]
    return archs[0]


B1, RL, EVO = "MnasNet-B1", ("strategies", "rl"), ("strategies", "evolution")
MALFORMED = [  # (id, damage, the JSON path and problem the message must name)
    ("list instead of object", lambda s: [s], r"at \$: expected an object"),
    ("record is a string", _damage(["records", 0], "ir_r1_k3_s1_c16"), r"at \$\.records\[0\]: expected an object"),
    ("records missing", _damage(["records"], _DELETE), r"at \$\.records: missing"),
    ("records not a list", _damage(["records"], {}), r"at \$\.records: expected a list"),
    ("accuracy as a string", _damage(["records", 0, "accuracy"], "92.1"),
     r"\$\.records\[0\]\.accuracy: expected a number, got '92.1'"),
    ("accuracy above 100", _damage(["records", 1, "accuracy"], 250.0), r"\$\.records\[1\]\.accuracy: expected a num"),
    ("negative latency", _damage(["records", 0, "latency_ms"], -3.0), r"\$\.records\[0\]\.latency_ms: expected a num"),
    ("NaN latency", _damage(["references", B1, "latency_ms"], float("nan")),
     r"\$\.references\[\"MnasNet-B1\"\]\.latency_ms: expected a number, got NaN"),
    ("infinite reward", _damage(["records", 2, "reward"], float("inf")),
     r"\$\.records\[2\]\.reward: expected a finite"),
    ("arch does not parse", _damage(["records", 0, "arch"], "ir_r1_k4_s3"),
     r"\$\.records\[0\]\.arch: not an architecture string"),
    ("arch not of its decisions", _damage(["records", 0, "arch"], _other_arch),
     r"\$\.records\[0\]\.arch: does not match the record's decisions"),
    ("decisions out of range", _damage(["records", 0, "decisions"], [99] * 42),
     r"\$\.records\[0\]\.decisions\[0\]: expected an integer in \[0, 3\]"),
    ("bool as an integer", _damage(["records", 0, "params"], True), r"\$\.records\[0\]\.params: expected an integer"),
    ("step out of order", _damage(["records", 1, "step"], 7), r"\$\.records\[1\]\.step"),
    ("unknown strategy", _damage(["records", 0, "strategy"], "bayes"), r"\$\.records\[0\]\.strategy: expected one of"),
    ("cache key not an arch", _damage(["cache", "hello"], lambda s: s["records"][0]),
     r"\$\.cache\.hello: not an architecture string"),
    ("cache entry missing a key", lambda s: _damage(["cache", s["records"][0]["arch"], "loss"], _DELETE)(s),
     r"\$\.cache\[.*\]\.loss: missing"),
    ("unknown reference", _damage(["references", "ResNet"], lambda s: s["references"][B1]),
     r"\$\.references\.ResNet: expected one of"),
    ("reference of another network", _damage(["references", B1, "arch"], lambda s: s["records"][0]["arch"]),
     r"\$\.references\[\"MnasNet-B1\"\]\.arch: expected the MnasNet-B1"),
    ("fingerprint not a string", _damage(["fingerprint"], 5), r"\$\.fingerprint: expected a string"),
    ("rng state garbage", _damage(["strategies", "random", "rng"], 5),
     r"\$\.strategies\.random\.rng: expected an object"),
    ("rng state negative", _damage([*RL, "rng", "state", "state"], -1), r"\$\.strategies\.rl\.rng\.state\.state"),
    ("logits of the wrong size", _damage([*RL, "logits"], [[0.0]] * 42),
     r"\$\.strategies\.rl\.logits\[0\]: expected a list of 4"),
    ("baseline as a string", _damage([*RL, "baseline"], "high"), r"\$\.strategies\.rl\.baseline: expected a number"),
    ("population member a string", _damage([*EVO, "population", 0], "x"),
     r"\$\.strategies\.evolution\.population\[0\]: expected a list"),
    ("population too large", _damage([*EVO, "population"], lambda s: s["strategies"]["evolution"]["population"] * 5),
     r"population: expected at most 2"),
]  # fmt: skip


@pytest.mark.parametrize("mutate, needle", [m[1:] for m in MALFORMED], ids=[m[0] for m in MALFORMED])
def test_malformed_state_gives_the_clear_message(tmp_path, mutate, needle):
    cfg = _search_config(tmp_path)
    path = _write_state(cfg, mutate(_valid_state(cfg)))
    with pytest.raises(SearchStateError, match=needle) as exc:
        load_state(path, cfg, SearchSpace(**cfg.space))
    message = str(exc.value)
    assert path in message and "pass --restart to start over" in message and "state.json.corrupt-<time>" in message
    assert "\n" not in message


@pytest.mark.parametrize(
    "content", [b"", b"{", b"\xff\xfe{}", b"[" * 100000, b'{"fingerprint": 1' + b"1" * 5000 + b"}"]
)
def test_unparsable_state_gives_the_clear_message(tmp_path, content):
    cfg = _search_config(tmp_path)
    os.makedirs(cfg.output_dir)
    path = os.path.join(cfg.output_dir, "state.json")
    open(path, "wb").write(content)
    with pytest.raises(SearchStateError, match=r"is corrupted \(not valid JSON.*pass --restart to start over"):
        load_state(path, cfg, SearchSpace(**cfg.space))


def test_state_of_other_settings_is_refused_not_called_corrupted(tmp_path):
    cfg = _search_config(tmp_path)
    state = _valid_state(cfg)
    state["fingerprint"] = "0" * 16
    path = _write_state(cfg, state)
    with pytest.raises(StateMismatchError, match="different settings"):
        load_state(path, cfg, SearchSpace(**cfg.space))


def test_restart_keeps_a_corrupted_state_aside(tmp_path):
    cfg = _search_config(tmp_path)
    path = _write_state(cfg, [1, 2, 3])
    _discard_state(path, cfg, SearchSpace(**cfg.space))
    assert not os.path.exists(path)
    kept = [f for f in os.listdir(cfg.output_dir) if f.startswith("state.json.corrupt-")]
    assert len(kept) == 1 and json.load(open(os.path.join(cfg.output_dir, kept[0]))) == [1, 2, 3]
    path = _write_state(cfg, _valid_state(cfg))  # a valid state is simply overwritten later, not moved
    _discard_state(path, cfg, SearchSpace(**cfg.space))
    assert os.path.exists(path)


_ODD_VALUES = [None, True, False, 0, -1, 1, 2**70, -1e300, 0.5, 1e308, float("nan"), float("inf"), float("-inf"), "",
               "x", "ir_r1_k3_s1_c16", "92.1", [], [0], [None], {}, {"a": 1}, [[0.0]]]  # fmt: skip


def _paths(value, prefix=()):
    yield prefix
    if isinstance(value, dict):
        for key, child in value.items():
            yield from _paths(child, prefix + (key,))
    elif isinstance(value, list):
        for i, child in enumerate(value):
            yield from _paths(child, prefix + (i,))


def _mutate(state, rng):
    """One random damage: replace a value, delete a key or element, change a container's shape."""
    paths = [p for p in _paths(state) if p and p[0] not in ("host", "config", "target_ms")]
    path = paths[int(rng.integers(len(paths)))]
    parent = state
    for key in path[:-1]:
        parent = parent[key]
    key, kind = path[-1], int(rng.integers(6))
    old = parent[key]
    if kind == 0 or kind == 1:
        parent[key] = _ODD_VALUES[int(rng.integers(len(_ODD_VALUES)))]
    elif kind == 2:
        del parent[key]
    elif kind == 3:
        parent[key] = [old]
    elif kind == 4 and isinstance(old, (int, float)) and not isinstance(old, bool):
        parent[key] = -old if rng.random() < 0.5 else old * 1000
    elif kind == 5 and isinstance(old, list) and old:
        parent[key] = old[: int(rng.integers(len(old)))] + old
    else:
        parent[key] = str(old)
    return state


@pytest.mark.slow
def test_fuzzed_states_load_correctly_or_give_the_clear_message(tmp_path):
    cfg = _search_config(tmp_path)
    space = SearchSpace(**cfg.space)
    valid = json.dumps(_valid_state(cfg))
    rng = np.random.default_rng(2024)
    outcomes = {"loaded": 0, "corrupted": 0, "mismatch": 0}
    for trial in range(400):
        state = json.loads(valid)
        for _ in range(int(rng.integers(1, 4))):
            state = _mutate(state, rng) if isinstance(state, dict) else state
        path = _write_state(cfg, state)
        strategies = {n: create_strategy(n, space, seed=1, **(k or {})) for n, k in cfg.strategies.items()}
        try:
            loaded = load_state(path, cfg, space, strategies)
        except SearchStateError as err:
            assert path in str(err) and "pass --restart to start over" in str(err), (trial, str(err))
            outcomes["corrupted"] += 1
            continue
        except StateMismatchError:
            outcomes["mismatch"] += 1
            continue
        _use(cfg, loaded, strategies)  # a state that passed the checks must be usable
        outcomes["loaded"] += 1
    assert outcomes["corrupted"] > 200 and outcomes["loaded"] > 0, outcomes


# -- the latency lookup table on disk ---------------------------------------------------------------------------

_LUT_OK = {
    "meta": {"host": "h", "threads": 1, "mindspore": "2.10.0"},
    "entries": {'["overhead"]': 0.05, '["stem", 3, 8, 64]': 0.2},
}


@pytest.mark.parametrize(
    "table, needle",
    [
        ([], r"at \$: expected an object"),
        ({"entries": {}}, r"at \$\.meta: missing"),
        ({**_LUT_OK, "meta": []}, r"at \$\.meta: expected an object"),
        ({**_LUT_OK, "meta": {"host": "h", "threads": "1"}}, r"at \$\.meta\.threads: expected an integer"),
        ({**_LUT_OK, "entries": [1, 2]}, r"at \$\.entries: expected an object"),
        ({**_LUT_OK, "entries": {'["overhead"]': "fast"}}, r"\$\.entries\[.*overhead.*\]: expected a number"),
        ({**_LUT_OK, "entries": {'["overhead"]': -1.0}}, r"expected a number in \[0\.0, inf\]"),
        ({**_LUT_OK, "entries": {'["overhead"]': float("nan")}}, r"expected a number, got NaN"),
        ({**_LUT_OK, "entries": {"overhead": 0.1}}, r"the key is not a layer key"),
        (
            {**_LUT_OK, "calibration": {"intercept_ms": 1.0, "scales": {"ir": 1.0}}},
            r"\$\.calibration\.num_archs: missing",
        ),
        (
            {**_LUT_OK, "calibration": {"intercept_ms": 1.0, "scales": {"conv": 1.0}, "num_archs": 40}},
            r"\$\.calibration\.scales\.conv: unknown layer kind \(valid: overhead, stem, head, cn, ds, ir, total\)",
        ),
        (
            {**_LUT_OK, "calibration": {"intercept_ms": 1.0, "scales": {"ir": -0.5}, "num_archs": 40}},
            r"\$\.calibration\.scales\.ir: expected a number in \[0\.0, inf\]",
        ),
        (
            {**_LUT_OK, "calibration": {"intercept_ms": float("inf"), "scales": {"ir": 1.0}, "num_archs": 40}},
            r"\$\.calibration\.intercept_ms",
        ),
        ({**_LUT_OK, "calibration": {"intercept_ms": 0.0, "scales": {}, "num_archs": 40}}, r"no scale"),
    ],
)
def test_malformed_latency_table_is_rejected_and_set_aside(tmp_path, table, needle, caplog):
    path = str(tmp_path / "latency_lut.json")
    with open(path, "w") as f:
        json.dump(table, f)
    with pytest.raises(LatencyTableError, match=needle) as exc:
        read_latency_table(path)
    assert path in str(exc.value)
    with pytest.raises(LatencyTableError):
        LatencyTable(path, threads=1)  # never silently used
    _check_lut_file(path)  # what run_search / validate_lut do before starting the worker
    assert not os.path.exists(path) and any(f.startswith("latency_lut.json.corrupt-") for f in os.listdir(tmp_path))
    assert "re-measured" in caplog.text


def test_valid_latency_table_is_read(tmp_path):
    path = str(tmp_path / "latency_lut.json")
    open(path, "w").write("{ not json")
    with pytest.raises(LatencyTableError, match="not valid JSON"):
        read_latency_table(path)
    with open(path, "w") as f:
        json.dump(_LUT_OK, f)
    assert read_latency_table(path)["entries"] == _LUT_OK["entries"]
    _check_lut_file(path)
    assert os.path.exists(path)


# -- search.py's config ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, needle",
    [
        ("budget: 2\nbudget: 3\n", r"key 'budget' is given twice \(line 1 and line 2\)"),
        ("proxy:\n  lr: 0.1\n  lr: 0.2\n", r"key 'lr' is given twice \(line 2 and line 3\)"),
        ("budget: abc\n", r"'budget' must be an integer, got 'abc'"),
        ("budget: 0\n", r"'budget' must be >= 1"),
        ("proxy: {lr: .nan}\n", r"'proxy\.lr' must be a finite number, got nan"),
        ("proxy: [1]\n", r"'proxy' must be a mapping, got list"),
        (
            "proxy: {epochs: 2, warmup_epochs: 2}\n",
            r"'proxy\.warmup_epochs' \(2\) must be smaller than 'proxy\.epochs'",
        ),
        ("proxy: {warmup_epochs: 0.5}\n", r"'proxy\.warmup_epochs' must be an integer, got 0\.5"),
        ("latency: {mode: fast}\n", r"'latency\.mode' must be 'measured' or 'lut', got 'fast'"),
        ("latency: {target_ms: -1}\n", r"'latency\.target_ms' must be > 0"),
        ("reward: {constraint: strict}\n", r"'reward\.constraint' must be one of"),
        ("reward: {alpha: .inf}\n", r"'reward\.alpha' must be a finite number"),
        ("space: {chanels: [1]}\n", r"unknown key\(s\) \['chanels'\] in 'space'"),
        ("space: {channels: [a, b, c, d, e, f, g]}\n", r"'space\.channels' must be a list of finite numbers"),
        ("space: {channels: [16, 24]}\n", r"'space' is invalid: channels, repeats and strides"),
        ("strategies: {bayes: {}}\n", r"'strategies' must name some of"),
        ("strategies: {rl: {lrr: 1}}\n", r"'strategies\.rl' is invalid: .*lrr"),
        ("strategies: {rl: {lr: .nan}}\n", r"'strategies\.rl\.lr' must be a finite number"),
        ("strategies: {evolution: {population: 1}}\n", r"'strategies\.evolution' is invalid: need population >= 2"),
        ("strategies: {evolution: {population: x}}\n", r"'strategies\.evolution\.population' must be an integer"),
        ("strategies: {rl: {seed: 1}}\n", r"'strategies\.rl' is invalid: .* no setting\(s\) \['seed'\]; valid: \["),
        ("strategies: {rl: {1: 2}}\n", r"'strategies\.rl' is invalid: .* no setting\(s\) \[1\]"),
        ("space: {choices: {width: 1.0}}\n", r"'space' is invalid: search decision 'width' accepts .*, got 1\.0"),
        ("confirm_seeds: [1, x]\n", r"'confirm_seeds' must be a list of integers"),
        ("- 1\n", r"the top level must be a mapping"),
        ("budget: [\n", r"is not valid YAML: line 2"),
    ],
)
def test_bad_search_configs_are_one_line_errors_with_exit_code_2(tmp_path, capsys, text, needle):
    from search import main

    path = tmp_path / "search.yaml"
    path.write_text(text)
    with pytest.raises(ValueError, match=needle) as exc:
        load_config(str(path), {})
    assert "\n" not in str(exc.value)
    assert main(["-c", str(path), "--no_progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("search.py: ") and "\n" not in err and re.search(needle, err)


def test_non_utf8_search_config_and_cli_overrides(tmp_path, capsys):
    from search import main

    path = tmp_path / "search.yaml"
    path.write_bytes(b"\xff\xfe budget: 1")
    with pytest.raises(ValueError, match=r"search\.yaml' is not UTF-8 text: byte 0xff at byte offset 0"):
        load_config(str(path), {})
    with pytest.raises(ValueError, match=r"'budget' must be >= 1"):
        load_config(SMOKE, {"budget": 0})
    with pytest.raises(SystemExit):
        main(["-c", SMOKE, "--budg", "3"])  # abbreviations are not accepted


@pytest.mark.parametrize(
    "key, value, needle",
    [
        ("cpu_isa", "SSE41", "at another oneDNN instruction-set level (cpu_isa 'SSE41'"),
        ("host", "Some Other CPU (64 logical cores), Linux x86_64", "on another CPU"),
        ("depthwise_kernels", "mindspore", "with other depthwise kernels (depthwise_kernels 'mindspore'"),
    ],
)
def test_resume_refuses_latencies_measured_elsewhere(tmp_path, key, value, needle):
    cfg = _search_config(tmp_path)
    state = _valid_state(cfg)
    state.update(host=host_description(), cpu_isa=effective_cpu_isa(), depthwise_kernels="direct")
    state[key] = value
    path = _write_state(cfg, state)
    before = open(path).read()
    with pytest.raises(StateMismatchError) as err:
        run_search(cfg, progress=False)
    assert needle in str(err.value) and "--restart" in str(err.value)
    assert ("ONEDNN_MAX_CPU_ISA=SSE41" in str(err.value)) == (key == "cpu_isa")
    assert ("MINDCV_DIRECT_DEPTHWISE=0" in str(err.value)) == (key == "depthwise_kernels")
    assert open(path).read() == before  # the saved search is left as it was


def test_state_without_a_level_is_resumed_with_a_warning(tmp_path, caplog):
    cfg = _search_config(tmp_path)
    state = _valid_state(cfg)
    state.pop("cpu_isa", None)
    state["host"] = host_description()
    _check_same_latency_platform(state, cfg.output_dir)  # no error
    assert "does not record the oneDNN level" in caplog.text
    state["cpu_isa"] = 7  # not text: the loader calls the file corrupted
    path = _write_state(cfg, state)
    with pytest.raises(SearchStateError, match=r"corrupted at \$\.cpu_isa"):
        load_state(path, cfg, SearchSpace(**cfg.space))


# -- search.py runs through call_cli: user errors are one line with exit code 2, bugs keep their traceback ---------


def test_search_user_errors_from_deep_inside_are_one_line_with_exit_code_2(tmp_path, capsys):
    from search import main

    assert main(["-c", str(tmp_path / "missing.yaml"), "--no_progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("search.py: ") and "\n" not in err and "missing.yaml' does not exist" in err
    out = tmp_path / "search"
    out.mkdir()
    (out / "state.json").write_text("{not json")  # found by run_search, after the config was read
    assert main(["-c", SMOKE, "--output_dir", str(out), "--no_progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("search.py: ") and "\n" not in err and "state.json' is corrupted (not valid JSON" in err


def test_search_bugs_propagate_with_their_traceback(tmp_path, monkeypatch, capsys):
    """A plain ValueError / KeyError is a bug: it must not be printed as if it were the user's mistake."""
    import search

    argv = ["-c", SMOKE, "--output_dir", str(tmp_path / "search"), "--no_progress"]

    def broken_search(*args, **kwargs):
        raise ValueError("a bug in the search loop")  # search.py used to print any ValueError as a user error

    monkeypatch.setattr(search, "run_search", broken_search)
    with pytest.raises(ValueError, match="a bug in the search loop"):
        search.main(argv)

    def broken_sample(self, rng):  # used while the config is checked, which used to turn it into "'space' is invalid"
        raise ValueError("a bug in the search space")

    monkeypatch.setattr(search.SearchSpace, "sample", broken_sample)
    with pytest.raises(ValueError, match="a bug in the search space"):
        search.main(argv)
    assert "search.py:" not in capsys.readouterr().err


def test_nas_user_errors_are_mindcv_errors(tiny_data):
    """What search.py prints as one line: the nas code raises InvalidArgumentError (still a ValueError)."""
    from mindcv.errors import InvalidArgumentError
    from mindcv.nas.proxy import ProxyConfig, ProxyTask

    with pytest.raises(InvalidArgumentError, match="proxy data too small"):
        ProxyTask(ProxyConfig(dataset="tiny", data_dir=tiny_data, image_size=8, batch_size=4096, holdout=0.25))
    with pytest.raises(InvalidArgumentError, match="unknown search decisions"):
        SearchSpace(choices={"colour": [1]})
    with pytest.raises(InvalidArgumentError, match="no setting"):
        create_strategy("rl", SearchSpace(), lrr=1)
    with pytest.raises(InvalidArgumentError, match="need population >= 2"):
        create_strategy("evolution", SearchSpace(), population=1)


@pytest.mark.slow
def test_a_diverging_candidate_is_scored_zero_and_named_not_silently(tiny_data, caplog):
    import logging

    import mindspore as ms

    from mindcv.nas.proxy import ProxyConfig, ProxyTask

    config = ProxyConfig(dataset="tiny", data_dir=tiny_data, image_size=32, batch_size=12, epochs=1, mode="pynative")
    arch = format_arch_string(ARCH_DEFS["b1"])
    task = ProxyTask(config)
    ms.set_context(mode=ms.GRAPH_MODE)
    try:
        sane = task.evaluate(arch)
        task.config.lr = 1e30  # Adam's first steps move every weight by ~lr: the activations overflow
        with caplog.at_level(logging.WARNING, logger="mindcv.nas.proxy"):
            diverged = task.evaluate(arch)
        assert ms.get_context("mode") == ms.GRAPH_MODE  # the caller's mode, not the proxy's
    finally:
        ms.set_context(mode=ms.PYNATIVE_MODE)
    assert np.isfinite(sane["loss"]) and 0.0 <= sane["accuracy"] <= 100.0
    assert diverged["accuracy"] == 0.0 and np.isnan(diverged["loss"])
    [warning] = [r.getMessage() for r in caplog.records if r.name == "mindcv.nas.proxy"]
    assert warning.startswith(f"candidate diverged, scored 0%: {arch} (") and "non-finite parameter" in warning


@pytest.mark.slow
def test_a_dead_latency_worker_is_a_clear_error_not_a_hang():
    import signal

    from mindcv.errors import InvalidArgumentError, RunFailedError
    from mindcv.nas.latency import LatencyWorker

    with LatencyWorker(threads=1, warmup=0, repeats=1) as worker:
        with pytest.raises(InvalidArgumentError, match="unknown block type 'zz'"):  # raised in the worker, as itself
            worker.measure("zz_r1_k3_s1_c16", width_mult=0.5, resolution=32)
        [pid] = list(worker._pool._processes)  # the one spawned worker (started by the constructor)
        os.kill(pid, signal.SIGKILL)
        with pytest.raises(RunFailedError, match=r"the latency worker process died during _worker_measure"):
            worker.measure(format_arch_string(ARCH_DEFS["b1"]), width_mult=0.5, resolution=32)


# -- calibrating the lookup table against whole networks ---------------------------------------------------------


def _synthetic_parts(n: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    parts = []
    for _ in range(n):
        parts.append(
            {
                "overhead": 0.05,
                "stem": 0.4,
                "head": float(rng.uniform(0.3, 0.6)),
                "cn": float(rng.uniform(0.0, 1.0)) * (rng.random() < 0.5),
                "ds": float(rng.uniform(0.1, 0.5)),
                "ir": float(rng.uniform(2.0, 9.0)),
            }
        )
    return parts


def test_calibration_recovers_per_kind_scales_and_predicts_held_out_networks():
    # isolated layers misjudge networks differently per kind (here: inverted residuals 1.3x, convs 0.7x slower)
    truth = {"cn": 0.7, "ds": 1.0, "ir": 1.3, "head": 1.1}

    def whole(p):
        return 0.9 + sum(truth.get(k, 1.0) * v for k, v in p.items())

    rng = np.random.default_rng(1)
    fit_parts = _synthetic_parts(40)
    measured = [whole(p) * (1 + rng.normal(0, 0.01)) for p in fit_parts]
    cal = fit_calibration(fit_parts, measured)
    assert cal["form"] == "per_kind" and cal["num_archs"] == 40
    assert cal["scales"]["ir"] == pytest.approx(1.3, abs=0.05) and cal["scales"]["cn"] == pytest.approx(0.7, abs=0.1)
    assert "stem" not in cal["scales"]  # the same in every network: absorbed by the intercept, scale 1
    held_out = _synthetic_parts(50, seed=7)
    errors = [abs(apply_calibration(cal, p) - whole(p)) / whole(p) for p in held_out]
    raw = [abs(sum(p.values()) - whole(p)) / whole(p) for p in held_out]
    assert np.mean(errors) < 0.01 < 0.1 < np.mean(raw)


def test_calibration_prefers_one_slope_when_the_kinds_do_not_differ():
    rng = np.random.default_rng(2)
    parts = _synthetic_parts(12)
    measured = [1.5 * sum(p.values()) + 0.2 + rng.normal(0, 0.05) for p in parts]
    cal = fit_calibration(parts, measured)
    assert cal["form"] == "total" and cal["scales"]["total"] == pytest.approx(1.5, abs=0.1)
    assert set(cal["loo_mape_percent"]) == {"per_kind", "total"}
    with pytest.raises(ValueError, match="needs >= 8 architectures with measurements, got 3/3"):
        fit_calibration(parts[:3], measured[:3])


def test_a_calibrated_table_applies_its_calibration_and_keeps_it_only_with_its_entries(tmp_path):
    arch = "ds_r1_k3_s1_c16_noskip|ir_r1_k3_s2_e3_c24"
    keys = layer_keys(arch, 0.5, 32)
    path = str(tmp_path / "latency_lut.json")
    meta = LatencyTable(None, threads=1).meta
    entries = {json.dumps(["overhead"]): 0.1, **{json.dumps(list(k)): 1.0 + i for i, k in enumerate(keys)}}
    calibration = {"intercept_ms": 0.5, "scales": {"ir": 2.0, "ds": 0.5}, "num_archs": 40}
    with open(path, "w") as f:
        json.dump({"meta": meta, "entries": entries, "calibration": calibration}, f)
    table = LatencyTable(path, threads=1)
    parts = table.components(arch, 0.5, 32)  # every entry is in the file: nothing is measured
    assert parts == pytest.approx({"overhead": 0.1, "stem": 0.9, "ds": 1.9, "ir": 2.9, "head": 3.9, "cn": 0.0})
    assert table.predict(arch, 0.5, 32, calibrated=False) == pytest.approx(9.7)
    assert table.predict(arch, 0.5, 32) == pytest.approx(0.5 + 0.1 + 0.9 + 0.5 * 1.9 + 2.0 * 2.9 + 3.9)
    assert apply_calibration({"intercept_ms": 1.0, "scales": {"total": 2.0}, "num_archs": 9}, parts) == pytest.approx(
        20.4
    )
    table.set_calibration(None)
    assert "calibration" not in json.load(open(path)) and table.predict(arch, 0.5, 32) == pytest.approx(9.7)
    # a table measured elsewhere is re-measured, and its calibration (fitted to those entries) goes with it
    with open(path, "w") as f:
        json.dump({"meta": {**meta, "host": "another CPU"}, "entries": entries, "calibration": calibration}, f)
    assert LatencyTable(path, threads=1).calibration is None


def test_lut_calibration_settings_are_checked_and_old_fingerprints_kept(tmp_path, monkeypatch):
    import mindcv.nas.runner as runner

    cfg_path = tmp_path / "s.yaml"
    cfg_path.write_text("latency: {mode: lut, calibration_archs: 3}\n")
    with pytest.raises(ConfigError, match=r"'latency\.calibration_archs' must be 0 \(no calibration\) or >= 8"):
        load_config(str(cfg_path), {})
    # proxy procedure 3 (the classifier's init) trains every candidate differently: old searches must not resume
    assert SearchConfig().fingerprint() != "d46041f64cb95f19"
    assert SearchConfig(latency=LatencyConfig(mode="lut")).fingerprint() != "9e5d2d0de050d0f8"
    # under procedure 2, the fingerprints of these settings are the ones from before calibration existed
    monkeypatch.setattr(runner, "PROXY_PROCEDURE", 2)
    assert SearchConfig().fingerprint() == "d46041f64cb95f19"
    assert SearchConfig(latency=LatencyConfig(mode="lut")).fingerprint() == "9e5d2d0de050d0f8"
    calibrated = SearchConfig(latency=LatencyConfig(mode="lut", calibration_archs=40))
    assert calibrated.fingerprint() != "9e5d2d0de050d0f8"  # calibrated latencies are other numbers


class _DriftingWorker:
    """Stands in for the timing process: a known latency model, on a machine whose speed drifts by ``ramp`` a call."""

    def __init__(self, lut_path: str, ramp: float, b1_jitter: float = 0.0) -> None:
        self.lut_path, self.ramp, self.calls, self.calibration = lut_path, ramp, 0, None
        self.b1_jitter, self.rng = b1_jitter, np.random.default_rng(3)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return None

    @staticmethod
    def parts(arch: str) -> dict:
        size = sum(int(c) for c in re.findall(r"_c(\d+)", arch)) * sum(int(r) for r in re.findall(r"_r(\d+)", arch))
        return {"overhead": 0.05, "stem": 0.4, "head": 0.5, "cn": 0.0, "ds": 0.2, "ir": size / 1000}

    def _speed(self) -> float:
        self.calls += 1
        return 1.0 + self.ramp * self.calls

    def _true_ms(self, arch: str) -> float:
        return 1.3 * sum(self.parts(arch).values()) - 0.4  # isolated layers underestimate the whole network

    def measure(self, arch, **_):
        return {"median_ms": self._true_ms(arch) * self._speed()}

    def retime(self, arch, **_):  # one B1 median is noisy on a real machine (~4% sd between calls)
        return {"median_ms": self.measure(arch)["median_ms"] * (1 + self.b1_jitter * self.rng.standard_normal())}

    def predict(self, arch, **_):
        parts = self.parts(arch)
        on = self.calibration is not None
        value = apply_calibration(self.calibration, parts) if on else sum(parts.values())
        return {"predicted_ms": value, "components": parts, "calibrated": on, "host": "h", "pinned_cpus": [1]}

    def set_calibration(self, calibration):
        self.calibration = calibration
        with open(self.lut_path, "w") as f:
            json.dump({"meta": {"host": "h", "threads": 1}, "entries": {}, "calibration": calibration}, f)
        return {"host": "h", "pinned_cpus": [1]}


def test_lut_calibration_and_validation_see_through_a_drifting_machine(tmp_path, monkeypatch):
    import mindcv.nas.runner as runner

    cfg = SearchConfig(output_dir=str(tmp_path), latency=LatencyConfig(mode="lut"))
    worker = _DriftingWorker(str(tmp_path / "latency_lut.json"), ramp=0.0)
    monkeypatch.setattr(runner, "LatencyWorker", lambda *a, **k: worker)
    calibrated = runner.calibrate_lut(cfg, num_archs=12, progress=False)
    assert calibrated["calibration"]["form"] == "total"
    assert calibrated["calibration"]["scales"]["total"] == pytest.approx(1.3, rel=1e-6)
    assert calibrated["calibration"]["b1_ms"] == pytest.approx(worker._true_ms(format_arch_string(ARCH_DEFS["b1"])))
    worker.calls, worker.ramp = 0, 0.25 / 61  # validation: the machine slows down by 25% over the run
    report = runner.validate_lut(cfg, num_archs=30, progress=False)
    held_out = {r["arch"] for r in report["rows"]}
    assert not held_out & {r["arch"] for r in calibrated["rows"]}  # never the calibration's architectures
    assert report["calibrated"] and report["drift"]["b1_range_percent"] > 20.0  # reported as drift
    assert report["mape_percent"] < 1.5 and report["within_10_percent"] >= 95.0 and report["passed"]
    assert report["uncorrected"]["mape_percent"] > 8.0  # what the drift alone would have cost
    assert os.path.exists(tmp_path / "lut_accuracy.png") and os.path.exists(tmp_path / "lut_report.json")


def test_lut_drift_correction_does_not_add_the_noise_of_single_b1_timings(tmp_path, monkeypatch):
    """A steady machine whose B1 re-timings scatter by 4% (measured): correcting each architecture by the two B1
    timings beside it adds that scatter to every measurement; the windowed median must add much less."""
    import mindcv.nas.runner as runner

    cfg = SearchConfig(output_dir=str(tmp_path), latency=LatencyConfig(mode="lut"))
    worker = _DriftingWorker(str(tmp_path / "latency_lut.json"), ramp=0.0, b1_jitter=0.04)
    monkeypatch.setattr(runner, "LatencyWorker", lambda *a, **k: worker)
    runner.calibrate_lut(cfg, num_archs=40, progress=False)
    report = runner.validate_lut(cfg, num_archs=50, progress=False)
    assert report["uncorrected"]["mape_percent"] < 0.5  # the table itself is exact on this machine
    b1, reference = np.array(report["drift"]["b1_times_ms"]), report["reference_b1_ms"]
    predicted = np.array([r["predicted_ms"] for r in report["rows"]])
    measured = np.array([r["measured_ms"] for r in report["rows"]])
    two_neighbours = measured * reference / ((b1[:-1] + b1[1:]) / 2)
    naive_mape = float(np.mean(np.abs(predicted - two_neighbours) / two_neighbours) * 100)
    assert naive_mape > 2.0  # what the old correction cost
    assert report["mape_percent"] < 0.6 * naive_mape and report["within_10_percent"] == 100.0


@pytest.mark.parametrize("saved_calibrated", [False, True])
def test_resume_refuses_latencies_from_a_table_calibrated_otherwise(tmp_path, saved_calibrated):
    cfg = _search_config(tmp_path)
    cfg.latency = LatencyConfig(**{**asdict(cfg.latency), "mode": "lut"})
    state = _valid_state(cfg, lut_mode=True)
    state.update(host=host_description(), cpu_isa=effective_cpu_isa(), depthwise_kernels="direct")
    old = {"intercept_ms": -2.0, "scales": {"total": 1.1}, "num_archs": 40}
    state["lut_calibration"] = old if saved_calibrated else None
    path = _write_state(cfg, state)
    before = open(path).read()
    # a later --calibrate_lut in the same folder (or a new calibration) changes what the table predicts
    table = LatencyTable(None, threads=cfg.latency.threads)
    with open(os.path.join(cfg.output_dir, "latency_lut.json"), "w") as f:
        calibration = {"intercept_ms": 0.5, "scales": {"total": 0.9}, "num_archs": 40}
        json.dump({"meta": table.meta, "entries": {}, "calibration": calibration}, f)
    with pytest.raises(StateMismatchError, match=r"holds latencies from a lookup table (calibrated as|not cal)") as err:
        run_search(cfg, progress=False)
    assert "latency_lut.json is now calibrated as" in str(err.value) and "--restart" in str(err.value)
    assert open(path).read() == before


def test_a_search_whose_b1_scores_at_chance_says_its_ranking_is_noise():
    # 10 classes, 300 held-out images: 3 binomial sd = 5.2 points above 10%
    warning = at_chance_warning(9.0, 10, 300)  # the trained supernet of the last fidelity run scored B1 at 8-9%
    assert "MnasNet-B1 scores 9.0%" in warning and "5.2 points" in warning and "chance (10.0%)" in warning
    assert "ranking is noise" in warning and "--gate" in warning
    assert at_chance_warning(15.0, 10, 300) is not None  # inside the margin
    assert at_chance_warning(15.5, 10, 300) is None and at_chance_warning(43.0, 10, 300) is None
    assert at_chance_warning(12.0, 10, 1500) is not None and at_chance_warning(12.5, 10, 1500) is None  # 2.3 points
    assert at_chance_warning(0.12, 1000, 50000) is not None and at_chance_warning(0.2, 1000, 50000) is None
