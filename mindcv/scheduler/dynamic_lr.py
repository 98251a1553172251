"""Per-step learning-rate lists with PyTorch scheduler semantics (upstream mindcv names and numerics).

Each function returns ``steps_per_epoch * epochs`` values. Plain versions change the rate once per
epoch (the epoch index is an integer); ``*_refined_*`` versions change it every step (the epoch index
is fractional, ``step / steps_per_epoch``). Positional arguments follow the PyTorch scheduler of the
same name; ``lr`` / ``eta_max``, ``steps_per_epoch`` and ``epochs`` are keyword-only.
"""

import math
from typing import Callable, List, Optional, Sequence

from ..errors import InvalidArgumentError

__all__ = [
    "constant_lr",
    "linear_lr",
    "linear_refined_lr",
    "polynomial_lr",
    "polynomial_refined_lr",
    "exponential_lr",
    "exponential_refined_lr",
    "step_lr",
    "multi_step_lr",
    "cosine_decay_lr",
    "cosine_decay_refined_lr",
    "cosine_annealing_lr",
    "cosine_annealing_warm_restarts_lr",
    "one_cycle_lr",
    "cyclic_lr",
]


def _per_epoch(fn: Callable[[int], float], steps_per_epoch: int, epochs: int) -> List[float]:
    return [fn(step // steps_per_epoch) for step in range(steps_per_epoch * epochs)]


def _per_step(fn: Callable[[float], float], steps_per_epoch: int, epochs: int) -> List[float]:
    return [fn(step / steps_per_epoch) for step in range(steps_per_epoch * epochs)]


def constant_lr(factor: float, total_iters: int, *, lr: float, steps_per_epoch: int, epochs: int) -> List[float]:
    """``lr * factor`` for the first ``total_iters`` epochs, then ``lr``."""
    return _per_epoch(lambda e: lr * factor if e < total_iters else lr, steps_per_epoch, epochs)


def _linear(start_factor: float, end_factor: float, total_iters: int, lr: float) -> Callable[[float], float]:
    return lambda e: lr * (start_factor + (end_factor - start_factor) * min(e, total_iters) / total_iters)


def linear_lr(
    start_factor: float, end_factor: float, total_iters: int, *, lr: float, steps_per_epoch: int, epochs: int
) -> List[float]:
    """Linear factor from ``start_factor`` to ``end_factor`` over ``total_iters`` epochs (per epoch)."""
    return _per_epoch(_linear(start_factor, end_factor, total_iters, lr), steps_per_epoch, epochs)


def linear_refined_lr(
    start_factor: float, end_factor: float, total_iters: int, *, lr: float, steps_per_epoch: int, epochs: int
) -> List[float]:
    """Like :func:`linear_lr`, updated every step."""
    return _per_step(_linear(start_factor, end_factor, total_iters, lr), steps_per_epoch, epochs)


def _polynomial(total_iters: int, power: float, lr: float) -> Callable[[float], float]:
    return lambda e: lr * (1.0 - min(e, total_iters) / total_iters) ** power


def polynomial_lr(total_iters: int, power: float, *, lr: float, steps_per_epoch: int, epochs: int) -> List[float]:
    """``lr * (1 - e / total_iters) ** power``, reaching 0 at ``total_iters`` epochs (per epoch)."""
    return _per_epoch(_polynomial(total_iters, power, lr), steps_per_epoch, epochs)


def polynomial_refined_lr(
    total_iters: int, power: float, *, lr: float, steps_per_epoch: int, epochs: int
) -> List[float]:
    """Like :func:`polynomial_lr`, updated every step."""
    return _per_step(_polynomial(total_iters, power, lr), steps_per_epoch, epochs)


def exponential_lr(gamma: float, *, lr: float, steps_per_epoch: int, epochs: int) -> List[float]:
    """``lr * gamma ** e`` (per epoch)."""
    return _per_epoch(lambda e: lr * gamma**e, steps_per_epoch, epochs)


def exponential_refined_lr(gamma: float, *, lr: float, steps_per_epoch: int, epochs: int) -> List[float]:
    """``lr * gamma ** (step / steps_per_epoch)``."""
    return _per_step(lambda e: lr * gamma**e, steps_per_epoch, epochs)


def step_lr(step_size: float, gamma: float, *, lr: float, steps_per_epoch: int, epochs: int) -> List[float]:
    """``lr * gamma ** floor(e / step_size)``; a fractional ``step_size`` (the MnasNet paper's 2.4 epochs)
    is honoured at step resolution."""
    if float(step_size).is_integer():
        return _per_epoch(lambda e: lr * gamma ** (e // int(step_size)), steps_per_epoch, epochs)
    return _per_step(lambda e: lr * gamma ** math.floor(e / step_size + 1e-9), steps_per_epoch, epochs)


def multi_step_lr(
    milestones: Sequence[int], gamma: float, *, lr: float, steps_per_epoch: int, epochs: int
) -> List[float]:
    """``lr * gamma ** (number of milestones <= e)`` (per epoch)."""
    marks = sorted(milestones)
    return _per_epoch(lambda e: lr * gamma ** sum(1 for m in marks if e >= m), steps_per_epoch, epochs)


def _cosine_decay(
    decay_epochs: int, eta_min: float, eta_max: float, num_cycles: int, cycle_decay: float
) -> Callable[[float], float]:
    def fn(e: float) -> float:
        cycle = int(e // decay_epochs)
        if cycle >= num_cycles:
            return eta_min
        peak = eta_max * cycle_decay**cycle
        t = (e - cycle * decay_epochs) / decay_epochs
        return eta_min + 0.5 * (peak - eta_min) * (1.0 + math.cos(math.pi * t))

    return fn


def cosine_decay_lr(
    decay_epochs: int,
    eta_min: float,
    *,
    eta_max: float,
    steps_per_epoch: int,
    epochs: int,
    num_cycles: int = 1,
    cycle_decay: float = 1.0,
) -> List[float]:
    """Cosine from ``eta_max`` to ``eta_min`` over ``decay_epochs``, repeated ``num_cycles`` times with the
    peak multiplied by ``cycle_decay`` each cycle, then ``eta_min`` (per epoch)."""
    return _per_epoch(_cosine_decay(decay_epochs, eta_min, eta_max, num_cycles, cycle_decay), steps_per_epoch, epochs)


def cosine_decay_refined_lr(
    decay_epochs: int,
    eta_min: float,
    *,
    eta_max: float,
    steps_per_epoch: int,
    epochs: int,
    num_cycles: int = 1,
    cycle_decay: float = 1.0,
) -> List[float]:
    """Like :func:`cosine_decay_lr`, updated every step."""
    return _per_step(_cosine_decay(decay_epochs, eta_min, eta_max, num_cycles, cycle_decay), steps_per_epoch, epochs)


def cosine_annealing_lr(
    t_max: int, eta_min: float, *, eta_max: float, steps_per_epoch: int, epochs: int
) -> List[float]:
    """PyTorch's closed form ``eta_min + (eta_max - eta_min) (1 + cos(pi e / t_max)) / 2`` (per epoch)."""
    return _per_epoch(
        lambda e: eta_min + (eta_max - eta_min) * (1.0 + math.cos(math.pi * e / t_max)) / 2.0, steps_per_epoch, epochs
    )


def cosine_annealing_warm_restarts_lr(
    te: int, tm: int, eta_min: float, *, eta_max: float, steps_per_epoch: int, epochs: int
) -> List[float]:
    """SGDR: cosine cycles of ``te``, ``te*tm``, ``te*tm^2`` ... epochs, updated every step."""

    def fn(e: float) -> float:
        start, length = 0.0, float(te)
        while e >= start + length:
            start += length
            length *= tm
        return eta_min + (eta_max - eta_min) * (1.0 + math.cos(math.pi * (e - start) / length)) / 2.0

    return _per_step(fn, steps_per_epoch, epochs)


def one_cycle_lr(
    max_lr: float,
    pct_start: float = 0.3,
    anneal_strategy: str = "cos",
    div_factor: float = 25.0,
    final_div_factor: float = 1e4,
    three_phase: bool = False,
    *,
    steps_per_epoch: int,
    epochs: int,
) -> List[float]:
    """PyTorch's ``OneCycleLR`` (per step)."""
    if anneal_strategy not in ("cos", "linear"):
        raise InvalidArgumentError(f"anneal_strategy must be 'cos' or 'linear', got {anneal_strategy!r}")
    total = steps_per_epoch * epochs
    initial = max_lr / div_factor
    final = initial / final_div_factor
    if three_phase:
        phases = [
            (float(pct_start * total) - 1, initial, max_lr),
            (float(2 * pct_start * total) - 2, max_lr, initial),
            (total - 1.0, initial, final),
        ]
    else:
        phases = [(float(pct_start * total) - 1, initial, max_lr), (total - 1.0, max_lr, final)]

    def anneal(start: float, end: float, pct: float) -> float:
        if anneal_strategy == "cos":
            return end + (start - end) / 2.0 * (math.cos(math.pi * pct) + 1)
        return (end - start) * pct + start

    lrs = []
    for step in range(total):
        start_step = 0.0
        for i, (end_step, start_lr, end_lr) in enumerate(phases):
            if step <= end_step or i == len(phases) - 1:
                lrs.append(anneal(start_lr, end_lr, (step - start_step) / (end_step - start_step)))
                break
            start_step = end_step
    return lrs


def cyclic_lr(
    base_lr: float,
    max_lr: float,
    step_size_up: int = 2000,
    step_size_down: Optional[int] = None,
    mode: str = "triangular",
    gamma: float = 1.0,
    scale_fn: Optional[Callable[[float], float]] = None,
    scale_mode: str = "cycle",
    *,
    steps_per_epoch: int,
    epochs: int,
) -> List[float]:
    """PyTorch's ``CyclicLR`` (per step; step sizes are in steps)."""
    down = step_size_down if step_size_down is not None else step_size_up
    total_size = float(step_size_up + down)
    ratio = step_size_up / total_size
    if scale_fn is None:
        if mode == "triangular":
            scale_fn, scale_mode = (lambda x: 1.0), "cycle"
        elif mode == "triangular2":
            scale_fn, scale_mode = (lambda x: 1 / (2.0 ** (x - 1))), "cycle"
        elif mode == "exp_range":
            scale_fn, scale_mode = (lambda x: gamma**x), "iterations"
        else:
            raise InvalidArgumentError(f"mode must be triangular, triangular2 or exp_range, got {mode!r}")
    lrs = []
    for step in range(steps_per_epoch * epochs):
        cycle = math.floor(1 + step / total_size)
        x = 1.0 + step / total_size - cycle
        scale = x / ratio if x <= ratio else (x - 1) / (ratio - 1)
        height = (max_lr - base_lr) * scale
        lrs.append(base_lr + height * (scale_fn(cycle) if scale_mode == "cycle" else scale_fn(step)))
    return lrs
