"""``create_scheduler``: a per-step learning-rate list (warmup + main schedule) for MindSpore optimizers."""

import logging
from typing import List, Optional, Sequence

from ..errors import InvalidArgumentError
from . import dynamic_lr

__all__ = ["create_scheduler", "SCHEDULERS"]

_logger = logging.getLogger(__name__)
SCHEDULERS = (
    "constant",
    "cosine_decay",
    "warmup_cosine_decay",
    "warmup_cosine_decay_restarts",
    "step_decay",
    "exponential_decay",
    "polynomial_decay",
    "multi_step_decay",
    "one_cycle",
    "cyclic",
)


def create_scheduler(
    steps_per_epoch: int,
    scheduler: str = "constant",
    lr: float = 0.01,
    min_lr: float = 1e-6,
    warmup_epochs: int = 3,
    warmup_factor: float = 0.0,
    decay_epochs: float = 10,
    decay_rate: float = 0.9,
    milestones: Optional[Sequence[int]] = None,
    num_epochs: int = 200,
    num_cycles: int = 1,
    cycle_decay: float = 1.0,
    lr_epoch_stair: bool = False,
) -> List[float]:
    """Learning rate of every training step.

    Args:
        steps_per_epoch: optimizer steps per epoch.
        scheduler: one of :data:`SCHEDULERS` (case-insensitive).
        lr: peak learning rate.
        min_lr: final / floor learning rate (cosine, one-cycle, cyclic).
        warmup_epochs: linear warmup from ``lr * warmup_factor`` to ``lr`` (not for one_cycle/cyclic). A warmup of
            ``num_epochs`` or more is truncated at ``num_epochs`` with a warning, as upstream: the rate keeps the
            slope of the full warmup, so it never reaches ``lr``, and there is no main phase.
        warmup_factor: starting fraction of the warmup.
        decay_epochs: cosine period (cosine_*) or decay interval (step_decay: the MnasNet paper uses
            x0.97 every 2.4 epochs; fractional values are honoured).
        decay_rate: multiplier of step/exponential decay; power of polynomial decay (which, as upstream, decays
            to 0 over the epochs after the warmup).
        milestones: epochs of multi_step_decay (counted from the end of warmup).
        num_epochs: total epochs including warmup.
        num_cycles: cosine restarts (cosine_decay / warmup_cosine_decay_restarts).
        cycle_decay: peak multiplier per cosine cycle.
        lr_epoch_stair: change the rate once per epoch instead of every step.

    Returns:
        ``steps_per_epoch * num_epochs`` learning rates.

    Raises:
        ValueError: unknown scheduler (the message lists the valid ones), fewer than one step or epoch, a warmup
            with one_cycle/cyclic, or multi_step_decay without milestones.
    """
    name = scheduler.lower()
    if name not in SCHEDULERS:
        raise InvalidArgumentError(f"unknown scheduler '{scheduler}'; valid: {', '.join(SCHEDULERS)}")
    if steps_per_epoch < 1 or num_epochs < 1:
        raise InvalidArgumentError(f"steps_per_epoch and num_epochs must be >= 1, got {steps_per_epoch}, {num_epochs}")
    if name in ("one_cycle", "cyclic"):
        if warmup_epochs:
            raise InvalidArgumentError(f"scheduler '{name}' has its own ramp-up; set warmup_epochs to 0")
        if name == "one_cycle":
            return dynamic_lr.one_cycle_lr(
                lr,
                div_factor=25.0,
                final_div_factor=lr / 25.0 / min_lr,
                steps_per_epoch=steps_per_epoch,
                epochs=num_epochs,
            )
        half = max(1, steps_per_epoch * num_epochs // (2 * num_cycles))
        return dynamic_lr.cyclic_lr(min_lr, lr, half, half, steps_per_epoch=steps_per_epoch, epochs=num_epochs)
    if isinstance(warmup_epochs, bool) or not float(warmup_epochs).is_integer() or warmup_epochs < 0:
        raise InvalidArgumentError(f"warmup_epochs must be a whole number of epochs >= 0, got {warmup_epochs!r}")
    warmup_epochs = int(warmup_epochs)
    if name == "multi_step_decay" and not milestones:
        raise InvalidArgumentError("multi_step_decay needs milestones (a list of epochs)")
    if name.startswith("cosine") or name.startswith("warmup_cosine"):
        if warmup_epochs < num_epochs < warmup_epochs + decay_epochs * num_cycles:
            _logger.warning("warmup_epochs + decay_epochs * num_cycles > num_epochs: the cosine is cut short")
    warmup: List[float] = []
    if warmup_epochs > 0:
        fn = dynamic_lr.linear_lr if lr_epoch_stair else dynamic_lr.linear_refined_lr
        warmup = fn(warmup_factor, 1.0, warmup_epochs, lr=lr, steps_per_epoch=steps_per_epoch, epochs=warmup_epochs)
        if warmup_epochs >= num_epochs:  # upstream's behaviour: the run ends inside the warmup
            warmup = warmup[: steps_per_epoch * num_epochs]
            _logger.warning(
                "warmup_epochs (%s) >= num_epochs (%s): the warmup is truncated at epoch %s, so the learning rate "
                "only rises to %.6g (%.3g x lr) and the '%s' phase never starts; set warmup_epochs below num_epochs",
                warmup_epochs,
                num_epochs,
                num_epochs,
                warmup[-1],
                warmup[-1] / lr if lr else 0.0,
                name,
            )
            return warmup
    main_epochs = num_epochs - warmup_epochs
    common = dict(steps_per_epoch=steps_per_epoch, epochs=main_epochs)
    if name == "constant":
        main = [lr] * (steps_per_epoch * main_epochs)
    elif name in ("cosine_decay", "warmup_cosine_decay", "warmup_cosine_decay_restarts"):
        fn = dynamic_lr.cosine_decay_lr if lr_epoch_stair else dynamic_lr.cosine_decay_refined_lr
        main = fn(decay_epochs, min_lr, eta_max=lr, num_cycles=num_cycles, cycle_decay=cycle_decay, **common)
    elif name == "step_decay":
        main = dynamic_lr.step_lr(decay_epochs, decay_rate, lr=lr, **common)
    elif name == "exponential_decay":
        fn = dynamic_lr.exponential_lr if lr_epoch_stair else dynamic_lr.exponential_refined_lr
        main = fn(decay_rate, lr=lr, **common)
    elif name == "polynomial_decay":
        fn = dynamic_lr.polynomial_lr if lr_epoch_stair else dynamic_lr.polynomial_refined_lr
        main = fn(main_epochs, decay_rate, lr=lr, **common)
    else:  # multi_step_decay
        main = dynamic_lr.multi_step_lr(list(milestones), decay_rate, lr=lr, **common)
    return warmup + main
