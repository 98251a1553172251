"""The search with a supernet: TuNAS's absolute reward, the Adam controller with warm-up, and a whole (tiny) search
that trains the supernet once, scores candidates with it and resumes without training it again."""

import json
import os

import numpy as np
import pytest
import yaml

from mindcv.nas.reward import absolute_reward, make_reward, mnas_reward
from mindcv.nas.search_space import SearchSpace
from mindcv.nas.strategies import ReinforceController, create_strategy

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMOKE = os.path.join(REPO, "configs", "nas", "smoke.yaml")


def test_absolute_reward_punishes_both_sides_of_the_target():
    assert absolute_reward(70.0, 10.0, 10.0) == 70.0
    # 10% slower and 10% faster cost the same 0.7 points; the MnasNet soft reward pays a bonus for faster
    assert absolute_reward(70.0, 11.0, 10.0) == pytest.approx(69.3)
    assert absolute_reward(70.0, 9.0, 10.0) == pytest.approx(69.3)
    assert mnas_reward(70.0, 9.0, 10.0) > 70.0
    assert absolute_reward(70.0, 20.0, 10.0, beta=-2.0) == pytest.approx(68.0)
    assert make_reward("absolute")(70.0, 11.0, 10.0) == pytest.approx(69.3)
    assert make_reward("hard")(80.0, 20.0, 10.0) == pytest.approx(40.0)
    with pytest.raises(ValueError, match="beta must be negative"):
        make_reward("absolute", beta=0.5)
    with pytest.raises(ValueError, match="alpha has no meaning"):
        make_reward("absolute", alpha=-0.07)
    with pytest.raises(ValueError, match="must be one of"):
        make_reward("tunas")
    with pytest.raises(ValueError, match="must be positive"):
        absolute_reward(70.0, 0.0, 10.0)


def _toy_reward(decisions):  # best architecture: every decision 0
    return float(np.mean(np.array(decisions) == 0)) + np.random.default_rng(sum(decisions)).normal(0, 0.02)


def test_the_adam_controller_learns_and_its_warmup_keeps_the_policy_uniform():
    space = SearchSpace()
    controller = create_strategy("rl", space, seed=3, optimizer="adam", lr=0.05, warmup=20, entropy_weight=0.0)
    for _ in range(20):
        d = controller.ask()
        controller.tell(d, _toy_reward(d))
    assert all(np.all(logit == 0) for logit in controller.logits), "frozen during the warm-up"
    assert controller.baseline is not None and controller.updates == 0
    rewards, random_rewards = [], []
    rng_strategy = create_strategy("random", space, seed=3)
    for _ in range(300):
        d = controller.ask()
        rewards.append(_toy_reward(d))
        controller.tell(d, rewards[-1])
        r = rng_strategy.ask()
        random_rewards.append(_toy_reward(r))
    assert np.mean(rewards[-50:]) > np.mean(random_rewards[-50:]) + 0.15
    with pytest.raises(ValueError, match="optimizer must be one of"):
        create_strategy("rl", space, optimizer="rmsprop")


def test_an_adam_controller_resumes_exactly_and_an_old_sgd_state_still_loads():
    space = SearchSpace()
    a = ReinforceController(space, seed=5, optimizer="adam", lr=0.05, warmup=3)
    for i in range(9):
        d = a.ask()
        a.tell(d, float(i % 4))
    b = ReinforceController(space, seed=1, optimizer="adam", lr=0.05, warmup=3)
    b.load_state_dict(json.loads(json.dumps(a.state_dict())))
    for i in range(5):
        da, db = a.ask(), b.ask()
        assert da == db
        a.tell(da, float(i))
        b.tell(db, float(i))
    # a state written before Adam and warm-up existed (no 'told' / 'moments') resumes as it was
    old = ReinforceController(space, seed=5)
    for i in range(4):
        d = old.ask()
        old.tell(d, float(i))
    legacy = {k: v for k, v in json.loads(json.dumps(old.state_dict())).items()}
    assert "told" not in legacy and "moments" not in legacy
    again = ReinforceController(space, seed=0)
    again.load_state_dict(legacy)
    assert again.told == 4 and again.updates == 3


def test_a_malformed_adam_state_is_refused_naming_the_entry(tmp_path):
    from mindcv.nas.state import SearchStateError, StateChecker

    space = SearchSpace()
    c = ReinforceController(space, seed=0, optimizer="adam", warmup=2)
    for i in range(4):
        c.tell(c.ask(), float(i))
    state = json.loads(json.dumps(c.state_dict()))
    state["moments"][3][1][0] = -1.0  # a second moment is never negative

    def fail(where, problem):
        return SearchStateError(f"{where}: {problem}")

    with pytest.raises(SearchStateError, match=r"\$.moments\[3\]\[1\]\[0\]"):
        c.check_state_dict(state, StateChecker(fail), "$")


@pytest.mark.slow
def test_a_supernet_search_trains_once_scores_candidates_and_resumes(tmp_path):
    from mindcv.nas.runner import run_search
    from search import load_config

    config = yaml.safe_load(open(SMOKE))
    config["evaluation"] = "supernet"
    config["supernet"] = {"epochs": 1, "recalibration_images": 32}
    config["proxy"]["num_samples"] = 96
    config["reward"] = {"constraint": "absolute"}
    config["strategies"] = {"rl": {"optimizer": "adam", "lr": 0.05, "warmup": 1}}
    path = tmp_path / "supernet_search.yaml"
    path.write_text(yaml.safe_dump(config))
    out = str(tmp_path / "search")
    cfg = load_config(str(path), {"output_dir": out, "budget": 2})  # B1, A1 and 2 candidates scored
    summary = run_search(cfg, progress=False)
    checkpoint = os.path.join(out, "supernet.ckpt")
    assert os.path.getsize(checkpoint) > 0
    state = json.load(open(os.path.join(out, "state.json")))
    assert len(state["records"]) == 2 and summary["evaluated"] == 2
    for record in state["records"]:
        assert 0 <= record["accuracy"] <= 100 and record["latency_ms"] > 0
        expected = absolute_reward(record["accuracy"], record["latency_ms"], state["target_ms"])
        assert record["reward"] == pytest.approx(expected)
    # resuming with a larger budget scores more candidates with the same supernet, never training it again
    written = os.stat(checkpoint).st_mtime_ns
    more = load_config(str(path), {"output_dir": out, "budget": 3})
    run_search(more, progress=False)
    assert os.stat(checkpoint).st_mtime_ns == written
    assert len(json.load(open(os.path.join(out, "state.json")))["records"]) == 3
    # the same folder with stand-alone evaluation is another search: refused, not mixed
    standalone = load_config(SMOKE, {"output_dir": out})
    with pytest.raises(ValueError, match="different settings"):
        run_search(standalone, progress=False)
