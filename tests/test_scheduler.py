# ruff: noqa: E501  (reference value tables)
"""Learning-rate schedules: exact values (upstream mindcv's pinned numbers and the MnasNet paper's rule)."""

import numpy as np
import pytest

from mindcv.scheduler import SCHEDULERS, create_scheduler, dynamic_lr

# fmt: off
# Reference values pinned by upstream mindcv's tests/modules/test_scheduler.py (PyTorch scheduler semantics).
CASES = [
    (dynamic_lr.constant_lr, (0.5, 4), dict(lr=0.05), 10, [0.025] * 8 + [0.05] * 12),
    (dynamic_lr.linear_lr, (0.5, 1.0, 4), dict(lr=0.05), 10, [0.025, 0.025, 0.03125, 0.03125, 0.0375, 0.0375, 0.04375, 0.04375] + [0.05] * 12),
    (dynamic_lr.linear_refined_lr, (0.5, 1.0, 4), dict(lr=0.05), 10, [0.025, 0.028125, 0.03125, 0.034375, 0.0375, 0.040625, 0.04375, 0.046875] + [0.05] * 12),
    (dynamic_lr.polynomial_lr, (4, 1.0), dict(lr=0.05), 10, [0.05, 0.05, 0.0375, 0.0375, 0.025, 0.025, 0.0125, 0.0125] + [0.0] * 12),
    (dynamic_lr.polynomial_refined_lr, (4, 1.0), dict(lr=0.05), 10, [0.05, 0.04375, 0.0375, 0.03125, 0.025, 0.01875, 0.0125, 0.00625] + [0.0] * 12),
    (dynamic_lr.exponential_lr, (0.9,), dict(lr=0.05), 10, [0.05 * 0.9 ** (i // 2) for i in range(20)]),
    (dynamic_lr.exponential_refined_lr, (0.9,), dict(lr=0.05), 10,
     [0.05, 0.047434164902525694, 0.045, 0.042690748412273126, 0.0405, 0.03842167357104581, 0.03645, 0.03457950621394123,
      0.032805, 0.031121555592547107, 0.0295245, 0.0280094000332924, 0.02657205, 0.02520846002996316, 0.023914845,
      0.022687614026966844, 0.0215233605, 0.02041885262427016, 0.01937102445, 0.018376967361843143]),
    (dynamic_lr.step_lr, (3, 0.5), dict(lr=0.05), 10, [0.05] * 6 + [0.025] * 6 + [0.0125] * 6 + [0.00625] * 2),
    (dynamic_lr.multi_step_lr, ([3, 6], 0.5), dict(lr=0.05), 10, [0.05] * 6 + [0.025] * 6 + [0.0125] * 8),
    (dynamic_lr.cosine_annealing_lr, (5, 0.0), dict(eta_max=1.0), 15,
     [1.0, 1.0, 0.9045084971874737, 0.9045084971874737, 0.6545084971874737, 0.6545084971874737, 0.34549150281252633,
      0.34549150281252633, 0.09549150281252633, 0.09549150281252633, 0.0, 0.0, 0.09549150281252622, 0.09549150281252622,
      0.3454915028125262, 0.3454915028125262, 0.6545084971874736, 0.6545084971874736, 0.9045084971874737,
      0.9045084971874737, 1.0, 1.0, 0.9045084971874741, 0.9045084971874741, 0.6545084971874738, 0.6545084971874738,
      0.34549150281252644, 0.34549150281252644, 0.09549150281252639, 0.09549150281252639]),
    (dynamic_lr.cosine_annealing_warm_restarts_lr, (5, 2, 0.0), dict(eta_max=1.0), 15,
     [1.0, 0.9755282581475768, 0.9045084971874737, 0.7938926261462366, 0.6545084971874737, 0.5, 0.34549150281252633,
      0.2061073738537635, 0.09549150281252633, 0.024471741852423234, 1.0, 0.9938441702975689, 0.9755282581475768,
      0.9455032620941839, 0.9045084971874737, 0.8535533905932737, 0.7938926261462366, 0.7269952498697734,
      0.6545084971874737, 0.5782172325201155, 0.5, 0.4217827674798846, 0.34549150281252633, 0.2730047501302266,
      0.2061073738537635, 0.14644660940672627, 0.09549150281252633, 0.054496737905816106, 0.024471741852423234,
      0.00615582970243117]),
    (dynamic_lr.one_cycle_lr, (2.5, 0.3, "cos", 25.0, 10000.0, False), {}, 15,
     [0.10000000000000009, 0.1913445609864559, 0.45147186257614313, 0.8407798811618923, 1.3, 1.7592201188381078,
      2.148528137423857, 2.408655439013544, 2.5, 2.4860385886272796, 2.444466229368647, 2.3762115800336843,
      2.282799336701122, 2.166316174527924, 2.029364134874408, 1.8750025, 1.7066794537528722, 1.5281550548407232,
      1.3434172433325626, 1.1565927566674377, 0.9718549451592768, 0.793330546247128, 0.6250075000000002,
      0.4706458651255924, 0.33369382547207666, 0.21721066329887823, 0.12379841996631571, 0.05554377063135295,
      0.01397141137272047, 1e-05]),
    (dynamic_lr.cyclic_lr, (0.1, 2.5, 5, 5, "triangular", 1.0, None, "cycle"), {}, 15,
     [0.1, 0.58, 1.06, 1.54, 2.02, 2.5, 2.02, 1.54, 1.06, 0.58] * 3),
]
# fmt: on


@pytest.mark.parametrize("fn, args, kwargs, epochs, expected", CASES, ids=[c[0].__name__ for c in CASES])
def test_dynamic_lr_exact_values(fn, args, kwargs, epochs, expected):
    assert np.allclose(fn(*args, steps_per_epoch=2, epochs=epochs, **kwargs), expected)


def test_cosine_decay_cycles():
    lrs = dynamic_lr.cosine_decay_lr(2, 0.0, eta_max=1.0, steps_per_epoch=1, epochs=6, num_cycles=2, cycle_decay=0.5)
    assert np.allclose(lrs, [1.0, 0.5, 0.5, 0.25, 0.0, 0.0])
    refined = dynamic_lr.cosine_decay_refined_lr(2, 0.0, eta_max=1.0, steps_per_epoch=2, epochs=2)
    assert np.allclose(refined, 0.5 * (1 + np.cos(np.pi * np.array([0.0, 0.25, 0.5, 0.75]))))


def test_paper_step_decay_097_every_24_epochs_with_warmup():
    lrs = create_scheduler(
        10, "step_decay", lr=0.256, warmup_epochs=5, warmup_factor=0.0, decay_epochs=2.4, decay_rate=0.97, num_epochs=12
    )
    assert len(lrs) == 120
    assert np.allclose(lrs[:50], 0.256 * np.arange(50) / 50)  # linear warmup from 0, per step
    main = np.array(lrs[50:])
    expected = 0.256 * 0.97 ** np.floor(np.arange(70) / 24.0 + 1e-9)  # 2.4 epochs = 24 steps
    assert np.allclose(main, expected)


def test_warmup_cosine_matches_closed_form():
    lrs = np.array(
        create_scheduler(4, "cosine_decay", lr=0.1, min_lr=0.001, warmup_epochs=1, decay_epochs=3, num_epochs=4)
    )
    assert np.allclose(lrs[:4], [0.0, 0.025, 0.05, 0.075])
    t = np.arange(12) / 4 / 3
    assert np.allclose(lrs[4:], 0.001 + 0.5 * 0.099 * (1 + np.cos(np.pi * t)))


@pytest.mark.parametrize("name", SCHEDULERS)
def test_every_scheduler_produces_one_value_per_step(name):
    kwargs = dict(milestones=[2, 4]) if name == "multi_step_decay" else {}
    warmup = 0 if name in ("one_cycle", "cyclic") else 1
    lrs = create_scheduler(3, name, lr=0.1, min_lr=1e-4, warmup_epochs=warmup, decay_epochs=2, num_epochs=6, **kwargs)
    assert len(lrs) == 18 and all(np.isfinite(lrs)) and max(lrs) <= 0.1 + 1e-12 and min(lrs) >= 0


def test_stair_mode_changes_once_per_epoch():
    lrs = create_scheduler(
        5, "exponential_decay", lr=1.0, warmup_epochs=0, decay_rate=0.5, num_epochs=3, lr_epoch_stair=True
    )
    assert lrs == [1.0] * 5 + [0.5] * 5 + [0.25] * 5


def test_bad_scheduler_arguments():
    with pytest.raises(ValueError, match="unknown scheduler 'cosine'; valid: constant, cosine_decay"):
        create_scheduler(10, "cosine")
    with pytest.raises(ValueError, match="warmup_epochs must be a whole number of epochs >= 0, got -1"):
        create_scheduler(10, "constant", warmup_epochs=-1, num_epochs=5)
    with pytest.raises(ValueError, match="needs milestones"):
        create_scheduler(10, "multi_step_decay", warmup_epochs=0, num_epochs=5)
    with pytest.raises(ValueError, match="own ramp-up"):
        create_scheduler(10, "one_cycle", warmup_epochs=1, num_epochs=5)
