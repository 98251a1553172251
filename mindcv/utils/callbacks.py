"""Upstream mindcv's ``mindspore.Model`` callbacks: :class:`StateMonitor` (log, validate, save) and
:class:`ValCallback` (evaluation progress), with upstream's signatures and file names.

Fixed against upstream (see the class docstrings): checkpoints are written atomically through
:class:`~mindcv.utils.checkpoint_manager.CheckpointManager` and never with NaN/Inf weights; a resumed run appends to
``result.log`` instead of wiping it, keeps the best metric of the run it resumes, stops at the run's total epoch
count and saves that last epoch; the resume epoch is read from the checkpoint (:func:`get_resume_epoch`), not parsed
from any file name; distributed validation averages per-rank metrics weighted by the samples each rank saw.
"""

import logging
import os
import re
from time import time
from typing import Any, Dict, List, Optional, Sequence

import numpy as np

import mindspore as ms
from mindspore import Tensor, nn
from mindspore.train import Callback

from ..io.checkpoint import cell_metadata, read_checkpoint_metadata, save_checkpoint
from .bn_settling import BatchNormSettling
from .checkpoint_manager import CheckpointManager
from .reduce_manager import AllReduceSum
from .train_step import ModelTrainStep, TrainStep

__all__ = ["StateMonitor", "ValCallback", "get_resume_epoch"]

_logger = logging.getLogger(__name__)

_CKPT_NAME = re.compile(r"-(\d+)_(\d+)\.ckpt$")


def get_resume_epoch(
    ckpt_path: str, optimizer: Optional[nn.Optimizer] = None, steps_per_epoch: Optional[int] = None
) -> int:
    """The number of epochs a checkpoint was trained for (StateMonitor's ``last_epoch`` when resuming).

    Upstream's train.py parsed it from the file name ``<model>-<epoch>_<batch>.ckpt`` and crashed on any other name
    (``*_best.ckpt``, a renamed file). Here the sources are, in order: the ``epoch`` recorded in the checkpoint by
    :class:`StateMonitor` (or this package's train.py); the ``-<epoch>_<batch>.ckpt`` name; the restored optimizer's
    ``global_step // steps_per_epoch``.

    Args:
        ckpt_path: the model checkpoint resumed from.
        optimizer: the optimizer with its state restored (for the last fallback).
        steps_per_epoch: batches per epoch (for the last fallback).

    Returns:
        The completed epochs (>= 0).

    Raises:
        FileNotFoundError: ``ckpt_path`` does not exist.
        ValueError: none of the sources gives the epoch (the message names the file and what to pass).
    """
    if not os.path.isfile(ckpt_path):
        raise FileNotFoundError(f"checkpoint to resume from not found: '{ckpt_path}'")
    epoch = read_checkpoint_metadata(ckpt_path).get("epoch")
    if type(epoch) is int and epoch >= 0:
        return epoch
    match = _CKPT_NAME.search(os.path.basename(ckpt_path))
    if match:
        return int(match.group(1))
    if optimizer is not None and steps_per_epoch:
        return int(np.asarray(optimizer.global_step.asnumpy()).reshape(-1)[0]) // int(steps_per_epoch)
    raise ValueError(
        f"cannot tell which epoch '{ckpt_path}' was saved at: it records no epoch and is not named "
        "<model>-<epoch>_<batch>.ckpt; pass the restored optimizer and steps_per_epoch"
    )


def _unwrap_step(train_network: nn.Cell) -> Optional[TrainStep]:
    if isinstance(train_network, ModelTrainStep):
        return train_network.step
    if isinstance(train_network, TrainStep):
        return train_network
    return None


def _loss_value(output: Any) -> Optional[float]:
    """The loss of a train network's output (the first element of a tuple, as upstream)."""
    if isinstance(output, (list, tuple)):
        output = output[0] if output else None
    if output is None:
        return None
    value = output.asnumpy() if isinstance(output, Tensor) else np.asarray(output)
    return float(np.mean(value))


class StateMonitor(Callback):
    """Log the training, validate, and save checkpoints after each epoch (upstream mindcv's callback).

    Every ``log_interval`` batches (and the first and last of an epoch): ``Epoch: [e/E], batch: [b/B], loss, lr,
    time``. After an epoch from ``val_start_epoch`` on, every ``val_interval`` epochs: ``model.eval(dataset_val)``
    (with the EMA weights when ``model_ema``), ``Validation <metric>: x%`` and ``=> New best val acc``. Rank 0 writes
    into ``ckpt_save_dir``: ``{model_name}_best.ckpt`` on a new best (``save_best_ckpt``); every
    ``ckpt_save_interval`` epochs and at the last epoch ``{model_name}-{epoch}_{batch}.ckpt`` (model weights, the
    ``ema.*`` copy, and the epoch / global step / metric in the metadata; rotated by ``ckpt_save_policy`` /
    ``ckpt_keep_max``) and the optimizer state ``optim_{model_name}.ckpt``; and a row per epoch of ``result.log``.

    Resume as upstream's train.py: ``create_model(checkpoint_path=ckpt)``, ``create_optimizer(...,
    checkpoint_path=<ckpt_save_dir>/optim_<model>.ckpt)``, then ``last_epoch=get_resume_epoch(ckpt)``. Unlike
    upstream, ``result.log`` is appended to, the best metric of ``{model_name}_best.ckpt`` is kept, and the run
    stops (and is saved) at the total epoch count passed to ``model.train`` (upstream trained that many epochs more,
    beyond the end of its learning-rate schedule); a resume with nothing left to train is a clear error.

    Args:
        model: the ``mindspore.Model`` (from :func:`~mindcv.utils.trainer_factory.create_trainer`, or any model whose
            train network has ``network`` and ``optimizer``).
        model_name: the file-name prefix.
        model_ema: evaluate (and mark best by) the EMA weights; the train step must keep an EMA.
        last_epoch: epochs done before this run (resume).
        dataset_sink_mode: as passed to ``model.train`` (kept for upstream; the network is found either way).
        dataset_val: the validation loader, or None (no validation, no best checkpoint).
        metric_name: display names of the metrics, in the order of ``model``'s metrics (``list(metrics)``).
        val_interval: validate every this many epochs (>= 1).
        val_start_epoch: the first epoch validated (>= 1).
        save_best_ckpt: write ``{model_name}_best.ckpt`` on a new best.
        ckpt_save_dir: folder of checkpoints and ``result.log``.
        ckpt_save_interval: save every this many epochs (>= 1).
        ckpt_save_policy: ``None`` (keep all), ``"latest_k"`` or ``"top_k"`` (needs ``dataset_val``; a checkpoint
            ranks by the latest validation top-1).
        ckpt_keep_max: files kept by the policy (>= 1).
        summary_dir: folder of MindSpore summary records (scalars ``train_loss_<rank>``, ``val_<metric>_<rank>``).
        log_interval: batches between log lines (>= 1).
        rank_id: this process's rank (None: standalone).
        device_num: the number of ranks (used when ``rank_id`` is given).

    Raises:
        ValueError: a non-positive interval, a negative ``last_epoch``, ``top_k`` without ``dataset_val``, or
            ``model_ema`` with a train step keeping no EMA.
    """

    def __init__(
        self,
        model: ms.Model,
        model_name: str = "",
        model_ema: bool = False,
        last_epoch: int = 0,
        dataset_sink_mode: bool = True,
        dataset_val=None,
        metric_name: Sequence[str] = ("accuracy",),
        val_interval: int = 1,
        val_start_epoch: int = 1,
        save_best_ckpt: bool = True,
        ckpt_save_dir: str = "./",
        ckpt_save_interval: int = 1,
        ckpt_save_policy: Optional[str] = None,
        ckpt_keep_max: int = 10,
        summary_dir: str = "./",
        log_interval: int = 100,
        rank_id: Optional[int] = None,
        device_num: Optional[int] = None,
    ) -> None:
        super().__init__()
        for name, value, low in (
            ("val_interval", val_interval, 1),
            ("val_start_epoch", val_start_epoch, 1),
            ("ckpt_save_interval", ckpt_save_interval, 1),
            ("log_interval", log_interval, 1),
            ("last_epoch", last_epoch, 0),
        ):
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
                raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
        if ckpt_save_policy == "top_k" and dataset_val is None:
            raise ValueError("ckpt_save_policy 'top_k' ranks checkpoints by validation: pass dataset_val")
        if isinstance(metric_name, str):
            metric_name = (metric_name,)
        metric_fns = getattr(model, "_metric_fns", None)  # mindspore.Model's metrics, as create_trainer gives them
        if dataset_val is not None and isinstance(metric_fns, dict) and len(metric_fns) != len(metric_name):
            # upstream validated, then logged only the first value under the wrong name; found out here at once
            raise ValueError(
                f"metric_name has {len(metric_name)} names {list(metric_name)} but the model computes "
                f"{len(metric_fns)} metrics {list(metric_fns)}: pass metric_name=list(metrics)"
            )
        self.model = model
        self.model_name = model_name
        self.model_ema = bool(model_ema)
        self.last_epoch = int(last_epoch)
        self.dataset_sink_mode = dataset_sink_mode
        self.dataset_val = dataset_val
        self.metric_name = tuple(metric_name)
        self.val_interval = int(val_interval)
        self.val_start_epoch = int(val_start_epoch)
        self.save_best_ckpt = save_best_ckpt
        self.ckpt_save_dir = ckpt_save_dir
        self.ckpt_save_interval = int(ckpt_save_interval)
        self.ckpt_save_policy = ckpt_save_policy
        self.ckpt_keep_max = ckpt_keep_max
        self.summary_dir = summary_dir
        self.log_interval = int(log_interval)
        self.rank_id = rank_id if rank_id is not None else 0
        self.device_num = device_num if (rank_id is not None and device_num) else 1

        train_network = model.train_network
        self.step = _unwrap_step(train_network)
        holder = self.step if self.step is not None else train_network
        self.network = getattr(holder, "network", None)
        self.optimizer = getattr(holder, "optimizer", None)
        if self.network is None:
            raise ValueError("StateMonitor: the model's train network has no 'network' (use create_trainer)")
        if self.model_ema and (self.step is None or not self.step.ema):
            raise ValueError("model_ema=True but the train step keeps no EMA (create_trainer(..., ema=True))")

        self.ckpt_manager = CheckpointManager(ckpt_save_policy, ckpt_keep_max, ckpt_save_dir, model_name)
        self.best_res: float = 0.0
        self.best_epoch = -1
        self.ckpt_manager.best_metric = 0.0  # as upstream, a best needs a top-1 above 0
        if self.last_epoch > 0 and os.path.isfile(self.ckpt_manager.best_path):
            # resume: a first epoch worse than the run's best must not replace its best checkpoint
            best = read_checkpoint_metadata(self.ckpt_manager.best_path).get("best_metric")
            if isinstance(best, (int, float)):
                self.ckpt_manager.best_metric = float(best)
                self.best_res = float(best) / 100.0
        if not save_best_ckpt:
            self.ckpt_manager.best_metric = float("inf")  # CheckpointManager.save then never writes *_best.ckpt
        self.last_metric: Optional[float] = None
        self.log_file = os.path.join(ckpt_save_dir, "result.log")
        if self.rank_id == 0:
            os.makedirs(ckpt_save_dir, exist_ok=True)
            resumed = self.last_epoch > 0 and os.path.isfile(self.log_file) and os.path.getsize(self.log_file) > 0
            if not resumed:
                header = ["Epoch", "TrainLoss", *self.metric_name, "TrainTime", "EvalTime", "TotalTime"]
                with open(self.log_file, "w", encoding="utf-8") as fp:
                    fp.write("".join(f"{s:<20}" for s in header) + "\n")
        if self.device_num > 1:
            self.all_reduce = AllReduceSum()
        self.summary_record = None
        self.step_ts = 0.0
        self.epoch_ts = 0.0
        self.step_time_accum = 0.0

    # -- context manager (mindspore.Model enters its callbacks) -----------------------------------------------
    def __enter__(self) -> "StateMonitor":
        try:
            from mindspore.train import SummaryRecord

            self.summary_record = SummaryRecord(self.summary_dir)
        except (RuntimeError, OSError, ValueError) as err:  # summaries are optional: never stop training for them
            _logger.warning("no summary records in '%s': %s", self.summary_dir, err)
            self.summary_record = None
        return self

    def __exit__(self, *exc_args) -> None:
        if self.summary_record is not None:
            self.summary_record.close()
            self.summary_record = None

    # -- evaluation ------------------------------------------------------------------------------------------
    def _eval_weights(self) -> Dict[str, float]:
        if not self.model_ema:
            return self.model.eval(self.dataset_val, dataset_sink_mode=False)
        online = {p.name: p.value().copy() for p in self.network.get_parameters()}
        self.step.ema_updater.copy_to(self.network)
        try:
            return self.model.eval(self.dataset_val, dataset_sink_mode=False)
        finally:
            for p in self.network.get_parameters():
                p.set_data(online[p.name])

    def _ordered(self, res_dict: Dict[str, float]) -> np.ndarray:
        if len(res_dict) != len(self.metric_name):
            raise ValueError(
                f"metric_name has {len(self.metric_name)} names {list(self.metric_name)} but the model computes "
                f"{len(res_dict)} metrics {list(res_dict)}: pass metric_name=list(metrics)"
            )
        if all(n in res_dict for n in self.metric_name):
            return np.array([res_dict[n] for n in self.metric_name], np.float64)
        return np.array(list(res_dict.values()), np.float64)

    def apply_eval(self, run_context) -> np.ndarray:
        """Validate; returns the metrics (fractions) in ``metric_name`` order, averaged over ranks."""
        res = self._ordered(self._eval_weights())
        if self.device_num > 1:
            # weight each rank's mean by its sample count (upstream averaged the means: wrong for uneven shards)
            counts = [getattr(m, "_samples_num", None) for m in getattr(self.model, "_metric_fns", {}).values()]
            count = float(counts[0]) if counts and counts[0] else 1.0
            summed = self.all_reduce(Tensor(np.append(res * count, count), ms.float32)).asnumpy()
            res = summed[:-1] / summed[-1]
        return res

    # -- training hooks --------------------------------------------------------------------------------------
    def on_train_step_begin(self, run_context) -> None:
        self.step_ts = time()

    def on_train_epoch_begin(self, run_context) -> None:
        self.epoch_ts = time()

    def _position(self, cb_params):
        num_batches = cb_params.batch_num
        cur_epoch = cb_params.cur_epoch_num + self.last_epoch
        cur_batch = (cb_params.cur_step_num - 1) % num_batches + 1
        return cur_epoch, cb_params.epoch_num, cur_batch, num_batches

    def on_train_begin(self, run_context) -> None:
        """Refuse a resume that has nothing left to train (upstream crashed later, indexing its LR schedule)."""
        num_epochs = run_context.original_args().epoch_num
        if self.last_epoch >= num_epochs:
            raise ValueError(
                f"resuming after epoch {self.last_epoch} but the run has {num_epochs} epochs: the epoch count "
                "(epoch_size) is the total of the whole run, as the learning-rate schedule built for it; "
                f"pass more than {self.last_epoch}"
            )
        self._bn_settling = BatchNormSettling(self.model.predict_network)
        self._bn_warned = False

    def _lr(self) -> Optional[float]:
        opt = self.optimizer
        if opt is None:
            return None
        step = int(np.asarray(opt.global_step.asnumpy()).reshape(-1)[0])
        if step < 1:
            _logger.warning(
                "the optimizer's global_step is %d: no update applied yet (every step so far overflowed?)", step
            )
        if opt.dynamic_lr:
            index = Tensor([max(step - 1, 0)], ms.int32)
            schedule = opt.learning_rate[0] if isinstance(opt.learning_rate, nn.CellList) else opt.learning_rate
            return float(np.asarray(schedule(index).asnumpy()).reshape(-1)[0])
        lr = opt.learning_rate
        return float(np.asarray(lr.asnumpy() if hasattr(lr, "asnumpy") else lr).reshape(-1)[0])

    def on_train_step_end(self, run_context) -> None:
        cb_params = run_context.original_args()
        cur_epoch, num_epochs, cur_batch, num_batches = self._position(cb_params)
        self.step_time_accum += time() - self.step_ts
        if cur_batch % self.log_interval == 0 or cur_batch == num_batches or cur_batch == 1:
            loss = _loss_value(cb_params.net_outputs)
            lr = self._lr()
            _logger.info(
                "Epoch: [%d/%d], batch: [%d/%d], loss: %s, lr: %s, time: %.6fs",
                cur_epoch,
                num_epochs,
                cur_batch,
                num_batches,
                "n/a" if loss is None else f"{loss:.6f}",
                "n/a" if lr is None else f"{lr:.6f}",
                self.step_time_accum,
            )
            self.step_time_accum = 0.0

    def _model_state(self) -> Dict[str, np.ndarray]:
        state = {p.name: p.asnumpy() for p in self.network.get_parameters()}
        if self.step is not None and self.step.ema:
            state.update(self.step.ema_updater.state_dict())
        return state

    def _metadata(self, epoch: int, batch: int) -> Dict[str, Any]:
        meta: Dict[str, Any] = {}
        for _, cell in self.network.cells_and_names():
            meta = cell_metadata(cell)
            if meta:
                break
        step = int(np.asarray(self.optimizer.global_step.asnumpy()).reshape(-1)[0]) if self.optimizer else None
        return {**meta, "epoch": epoch, "batch": batch, "global_step": step}

    def _save(self, epoch: int, num_epochs: int, batch: int, is_last: bool, metric: Optional[float]) -> None:
        state, meta = None, None
        if self.save_best_ckpt and metric is not None and self.best_epoch == epoch:
            state, meta = self._model_state(), self._metadata(epoch, batch)
            self.ckpt_manager.save_best(state, meta, metric)
        if epoch % self.ckpt_save_interval == 0 or is_last:
            state = state if state is not None else self._model_state()
            meta = meta if meta is not None else self._metadata(epoch, batch)
            if self.optimizer is not None:
                optim_path = os.path.join(self.ckpt_save_dir, f"optim_{self.model_name}.ckpt")
                save_checkpoint({p.name: p.asnumpy() for p in self.optimizer.get_parameters()}, optim_path, meta)
            _logger.info("Saving model to %s", self.ckpt_manager.path_for(epoch, batch))
            self.ckpt_manager.save(state, epoch, batch, meta, metric)

    def on_train_epoch_end(self, run_context) -> None:
        """Validate, save the checkpoints and append the epoch's row to ``result.log``."""
        cb_params = run_context.original_args()
        cur_epoch, num_epochs, cur_batch, _ = self._position(cb_params)
        train_time = time() - self.epoch_ts
        loss = _loss_value(cb_params.net_outputs)
        val_time = 0.0
        res = np.zeros(len(self.metric_name), np.float64)
        if (
            self.dataset_val is not None
            and cur_epoch >= self.val_start_epoch
            and (cur_epoch - self.val_start_epoch) % self.val_interval == 0
        ):
            start = time()
            res = self.apply_eval(run_context)
            val_time = time() - start
            shown = ", ".join(f"{n}: {v:.4%}" for n, v in zip(self.metric_name, res))
            _logger.info("Validation %s, time: %.6fs", shown, val_time)
            self.last_metric = float(res[0]) * 100.0
            self._warn_unsettled_bn(cb_params.cur_step_num)
            if res[0] > self.best_res:
                self.best_res = float(res[0])
                self.best_epoch = cur_epoch
                _logger.info("=> New best val acc: %.4f%%", 100.0 * res[0])
        if self.rank_id == 0:
            self._save(cur_epoch, num_epochs, cur_batch, cur_epoch >= num_epochs, self.last_metric)
        total_time = time() - self.epoch_ts
        _logger.info(
            "Total time since last epoch: %.6f(train: %.6f, val: %.6f)s, ETA: %.6fs",
            total_time,
            train_time,
            val_time,
            (num_epochs - cur_epoch) * total_time,
        )
        _logger.info("-" * 80)
        if self.rank_id == 0:
            row = [
                f"{cur_epoch}",
                "nan" if loss is None else f"{loss:.6f}",
                *[f"{v:.4%}" for v in res],
                f"{train_time:.2f}",
                f"{val_time:.2f}",
                f"{total_time:.2f}",
            ]
            with open(self.log_file, "a", encoding="utf-8") as fp:
                fp.write("".join(f"{s:<20}" for s in row) + "\n")
        if cur_epoch >= num_epochs:
            # mindspore.Model is not told the resumed epoch (upstream passes no initial_epoch): end the run here, at
            # the epoch its learning-rate schedule ends, instead of training epoch_size more epochs
            run_context.request_stop()
        if self.summary_record is not None:
            if loss is not None:
                self.summary_record.add_value("scalar", f"train_loss_{self.rank_id}", Tensor(loss, ms.float32))
            for name, value in zip(self.metric_name, res):
                self.summary_record.add_value("scalar", f"val_{name}_{self.rank_id}", Tensor(value, ms.float32))
            self.summary_record.record(cb_params.cur_step_num + self.last_epoch * cb_params.batch_num)

    def _warn_unsettled_bn(self, batches: int, final: bool = False) -> None:
        """Warn (at the first such validation, and again at the end) when BatchNorm statistics have not settled."""
        settling = getattr(self, "_bn_settling", None)
        if settling is None or (self._bn_warned and not final) or (final and not self._bn_warned):
            return
        message = settling.warning(batches)
        if message and self.rank_id == 0:
            _logger.warning(message)
        self._bn_warned = self._bn_warned or message is not None

    def on_train_end(self, run_context) -> None:
        _logger.info("Finish training!")
        self._warn_unsettled_bn(run_context.original_args().cur_step_num, final=True)
        if self.dataset_val is not None:
            _logger.info(
                "The best validation %s is: %.4f%% at epoch %d.",
                self.metric_name[0],
                100 * self.best_res,
                self.best_epoch,
            )
        _logger.info("=" * 80)


class ValCallback(Callback):
    """Print ``batch: i/N, time: ts`` every ``log_interval`` evaluation batches and at the last one (upstream's).

    Args:
        log_interval: batches between lines (>= 1).
    """

    def __init__(self, log_interval: int = 100) -> None:
        super().__init__()
        if isinstance(log_interval, bool) or not isinstance(log_interval, int) or log_interval < 1:
            raise ValueError(f"log_interval must be an integer >= 1, got {log_interval!r}")
        self.log_interval = log_interval
        self.ts = time()
        self.lines: List[str] = []

    def on_eval_step_end(self, run_context) -> None:
        cb_params = run_context.original_args()
        num_batches, cur_step = cb_params.batch_num, cb_params.cur_step_num
        if cur_step % self.log_interval == 0 or cur_step == num_batches:
            line = f"batch: {cur_step}/{num_batches}, time: {time() - self.ts:.6f}s"
            print(line)
            self.lines.append(line)
            self.ts = time()
