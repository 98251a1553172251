"""MNAS search: space, reward, latency table, strategies, the resumable search loop and retraining a result."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from mindcv.models import create_model
from mindcv.models.arch import format_arch_string
from mindcv.models.mnasnet import ARCH_DEFS, NUM_PARAMS
from mindcv.nas.latency import LatencyTable, layer_keys
from mindcv.nas.reward import mnas_reward
from mindcv.nas.runner import pareto_front, run_search, spearman
from mindcv.nas.search_space import SearchSpace
from mindcv.nas.strategies import RandomSearch, RegularizedEvolution, ReinforceController, create_strategy
from search import load_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMOKE = os.path.join(REPO, "configs", "nas", "smoke.yaml")


def trainable(model) -> int:
    return int(sum(p.size for p in model.trainable_params()))


@pytest.mark.parametrize("name, key, params", [("B1", "b1", NUM_PARAMS["mnasnet_100"]), ("A1", "a1", 3_887_038)])
def test_b1_and_a1_are_points_of_the_space_and_rebuild_exactly(name, key, params):
    space = SearchSpace()
    decisions = space.encode(ARCH_DEFS[key])
    assert decisions is not None and len(decisions) == 42
    arch = space.arch_string(decisions)
    assert arch == format_arch_string(create_model("mnasnet_arch", arch=key).arch_def)
    model = create_model("mnasnet_arch", arch=arch)
    assert trainable(model) == params


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


def test_smoke_search_writes_outputs_resumes_and_retrains(tmp_path, tiny_data):
    out = str(tmp_path / "search")
    cfg = load_config(SMOKE, {"output_dir": out})
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
    run = subprocess.run([sys.executable, "train.py", *args], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    ckpts = [f for f in os.listdir(ckpt_dir) if f.endswith(".ckpt")]
    assert ckpts
    # validate.py rebuilds the architecture from the checkpoint alone
    val = subprocess.run(
        [sys.executable, "validate.py", "--dataset", "tiny", "--data_dir", tiny_data, "--model", "mnasnet_arch"]
        + ["--ckpt_path", os.path.join(ckpt_dir, sorted(ckpts)[-1]), "--image_resize", "32", "--device_target", "CPU"]
        + ["--num_parallel_workers", "1"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert val.returncode == 0, val.stderr[-3000:]
