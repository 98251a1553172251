"""The proxy gate and the supernet's rank fidelity: the statistics against hand-computed values, and the
measurement itself on a tiny proxy, resumable without training anything twice."""

import json
import os

import numpy as np
import pytest

from mindcv.errors import InvalidArgumentError
from mindcv.nas.fidelity import depth_of, kendall_tau, proxy_gate, spearman_rho
from mindcv.nas.search_space import SearchSpace


def test_kendall_tau_and_spearman_against_hand_computed_values():
    assert kendall_tau([1, 2, 3, 4], [1, 2, 3, 4]) == pytest.approx(1.0)
    assert kendall_tau([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    # one swapped pair of six: (5 - 1) / 6
    assert kendall_tau([1, 2, 3, 4], [1, 3, 2, 4]) == pytest.approx(4 / 6)
    # tau-b with ties: a has one tied pair, b one; concordant 4, discordant 0 -> 4 / sqrt(5 * 5)
    assert kendall_tau([1, 2, 2, 3], [1, 2, 3, 3]) == pytest.approx(4 / 5)
    assert np.isnan(kendall_tau([1, 1, 1], [1, 2, 3]))
    with pytest.raises(InvalidArgumentError, match="same length"):
        kendall_tau([1, 2], [1, 2, 3])
    assert spearman_rho([1, 2, 3, 4], [10, 20, 40, 30]) == pytest.approx(0.8)
    assert depth_of("ds_r1_k3_s1_c16|ir_r3_k3_s2_e6_c24|ir_r2_k5_s2_e3_c40") == 6


def _tiny_proxy(tiny_data):
    from mindcv.nas.proxy import ProxyConfig, ProxyTask

    config = ProxyConfig(
        dataset="tiny", data_dir=tiny_data, image_size=32, batch_size=12, epochs=1, width_mult=0.25, mode="pynative"
    )
    return ProxyTask(config)


def _fake_training(arch, seed):
    """A stand-in for stand-alone training (which test_nas.py runs for real): deterministic per (arch, seed)."""
    rng = np.random.default_rng([len(arch), sum(map(ord, arch)) % 1000, seed])
    return {"accuracy": float(rng.uniform(20, 80)), "loss": 1.0, "params": 1, "train_seconds": 0.0}


def test_the_gate_reports_its_statistics_and_resumes_without_training_again(tiny_data, tmp_path, monkeypatch):
    proxy, space, out = _tiny_proxy(tiny_data), SearchSpace(), str(tmp_path)
    trained = []
    monkeypatch.setattr(
        proxy, "evaluate", lambda arch, seed: trained.append((arch, seed)) or _fake_training(arch, seed)
    )
    report = proxy_gate(proxy, space, out, num_archs=4, seeds=(0, 1), progress=False)
    rows = report["rows"]
    assert report["num_archs"] == 6 and len(rows) == 6 and len(trained) == 12  # B1, A1 and 4 random, 2 seeds
    assert rows[0]["accuracies"] == [_fake_training(rows[0]["arch"], s)["accuracy"] for s in (0, 1)]
    accuracies = np.array([r["accuracies"] for r in rows])
    # the reported statistics are those of the table it wrote
    assert report["seed_sd"] == pytest.approx(np.sqrt(np.mean(accuracies.var(axis=1, ddof=1))))
    assert report["spread_sd"] == pytest.approx(accuracies.mean(axis=1).std(ddof=1))
    assert report["a1_minus_b1"] == pytest.approx(accuracies[1].mean() - accuracies[0].mean())
    assert report["depth_spearman"] == pytest.approx(
        spearman_rho(accuracies.mean(axis=1), [depth_of(r["arch"]) for r in rows])
    )
    assert report["checks"]["seed_sd"] == (report["seed_sd"] <= 1.0)
    assert report["passed"] == all(report["checks"].values())
    assert os.path.getsize(os.path.join(out, "gate.png")) > 0
    saved = json.load(open(os.path.join(out, "gate_report.json")))
    assert saved["seed_sd"] == pytest.approx(report["seed_sd"])

    # a second run (after a kill, or to add the supernet check) trains nothing already trained
    def never(*args, **kwargs):
        raise AssertionError("retrained an architecture that was already measured")

    monkeypatch.setattr(proxy, "evaluate", never)
    again = proxy_gate(proxy, space, out, num_archs=4, seeds=(0, 1), progress=False)
    assert again["rows"] == rows

    # results of another proxy are never mixed in: set aside, measured again
    other = _tiny_proxy(tiny_data)
    other.config.lr = 0.01
    calls = []
    monkeypatch.setattr(other, "evaluate", lambda arch, seed: calls.append(arch) or _fake_training(arch, seed))
    proxy_gate(other, space, out, num_archs=4, seeds=(0, 1), progress=False)
    assert len(calls) == 12
    assert any(name.startswith("standalone.json.") for name in os.listdir(out)), "the old file is kept aside"


def test_the_gate_through_the_command_line(tiny_data, tmp_path, capsys, monkeypatch):
    """``search.py --gate`` reads the config, measures and prints its verdict (training faked: test_nas.py trains
    candidates for real, and ten tiny PyNative trainings cost a minute)."""
    import yaml

    from mindcv.nas.proxy import ProxyTask
    from search import main

    monkeypatch.setattr(ProxyTask, "evaluate", lambda self, arch, seed: _fake_training(arch, seed))
    config = {
        "output_dir": str(tmp_path / "gate"),
        "proxy": {"dataset": "tiny", "data_dir": tiny_data, "image_size": 16, "batch_size": 12, "epochs": 1,
                  "width_mult": 0.25, "mode": "pynative"},
    }  # fmt: skip
    path = tmp_path / "gate.yaml"
    path.write_text(yaml.safe_dump(config))
    assert main(["-c", str(path), "--gate", "3", "--no_progress"]) == 0
    line = capsys.readouterr().out
    assert "proxy gate on 5 architectures" in line and ("PASSED" in line or "FAILED" in line)
    report = json.load(open(tmp_path / "gate" / "gate_report.json"))
    assert all(0 <= a <= 100 for row in report["rows"] for a in row["accuracies"])


def test_the_gate_refuses_too_few_architectures_or_seeds(tiny_data, tmp_path):
    with pytest.raises(InvalidArgumentError, match="at least|>= 3 architectures and >= 2 seeds"):
        proxy_gate(_tiny_proxy(tiny_data), SearchSpace(), str(tmp_path), num_archs=3, seeds=(0,))
