"""The training kit both trainers share: ``fit`` (tf.data, TensorFlow) and ``fit-packed`` (a pack,
any Keras backend) compile the same model the same way and train it with the same callbacks.

- ``compile_model``: the optimizer (``make_optimizer``: Adam, AdamW, SGD or RMSprop; with
  ``--weights`` the two-rate subclass of ``training.finetune``), the learning-rate schedule (linear
  warm-up, cosine decay to 0), the loss with label smoothing, top-1 and top-5 (``loss_and_metrics``);
- ``Session``: one training session's callbacks (``EpochStats`` first, fine-tuning's schedule, then
  ``make_callbacks``: best checkpoint, CSV log, TensorBoard, early stopping, the backup last, then
  ``--time-limit``'s ``TimeLimit``), ``Session.fit`` times ``model.fit``, and ``Session.record``
  is the ``training`` section of ``run.json``.

The run folder itself (``run.json``, ``log.csv``, the resume check) belongs to ``training.runs``.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import keras

from training import finetune
from training.backup import CrashSafeBackup, CrashSafeCheckpoint
from training.runs import MONITOR, best_logged, logged_seconds


def learning_rate_schedule(config: dict, steps_per_epoch: int) -> keras.optimizers.schedules.CosineDecay:
    """Linear warm-up from 0 to the peak rate, then cosine decay to 0 at the last step."""
    total = max(1, config["epochs"] * steps_per_epoch)
    warmup = min(total - 1, round(config["warmup_epochs"] * steps_per_epoch))
    if warmup > 0:
        return keras.optimizers.schedules.CosineDecay(
            0.0, decay_steps=total - warmup, warmup_target=config["learning_rate"], warmup_steps=warmup
        )
    return keras.optimizers.schedules.CosineDecay(config["learning_rate"], decay_steps=total)


def make_optimizer(config: dict, steps_per_epoch: int) -> keras.optimizers.Optimizer:
    """Adam, AdamW, SGD (momentum 0.9, Nesterov) or RMSprop (rho 0.9, momentum 0.9, eps 1e-3)."""
    lr = learning_rate_schedule(config, steps_per_epoch)
    decay = config["weight_decay"] or None
    # The Keras class, or with --weights its two-rate subclass (training.finetune).
    cls, extra = finetune.optimizer_class(config, config["optimizer"])
    optimizer = {
        "adam": lambda: cls(lr, weight_decay=decay, **extra),
        "adamw": lambda: cls(lr, weight_decay=decay or 0.0, **extra),
        "sgd": lambda: cls(lr, momentum=0.9, nesterov=True, weight_decay=decay, **extra),
        "rmsprop": lambda: cls(lr, rho=0.9, momentum=0.9, epsilon=1e-3, weight_decay=decay, **extra),
    }[config["optimizer"]]()
    if decay:
        # No decay on biases and normalization scales/offsets (the usual practice since Goyal et al.).
        optimizer.exclude_from_weight_decay(var_names=["bias", "gamma", "beta"])
    return optimizer


def compile_model(model: keras.Model, config: dict, steps_per_epoch: int) -> None:
    model.compile(
        optimizer=make_optimizer(config, steps_per_epoch),
        **loss_and_metrics(config),
        jit_compile={"auto": "auto", "on": True, "off": False}[config["jit_compile"]],
    )
    finetune.prepare(model, config)  # with --weights: the head, the optimizer, epoch 0's phase


def loss_and_metrics(config: dict) -> dict:
    """``compile`` arguments: the training loss (label smoothing included), top-1 and top-5."""
    return {
        "loss": keras.losses.CategoricalCrossentropy(label_smoothing=config.get("label_smoothing", 0.0)),
        "metrics": [
            keras.metrics.CategoricalAccuracy(name="top1"),
            keras.metrics.TopKCategoricalAccuracy(k=5, name="top5"),
        ],
    }


def make_callbacks(
    run_dir: Path, resuming: bool, patience: int, *, validated: bool = True, tensorboard: bool = True
) -> list[keras.callbacks.Callback]:
    """Checkpoint, CSV log, TensorBoard, early stopping, and the backup (last: it saves the epoch
    only after the others have written theirs). Without a validation pass (``validated=False``)
    there is no best checkpoint and no early stopping; ``tensorboard=False`` where TensorFlow,
    which writes the event files, is absent."""
    callbacks: list[keras.callbacks.Callback] = []
    if validated:
        callbacks.append(
            CrashSafeCheckpoint(  # keras' ModelCheckpoint, written aside and renamed (training.backup)
                run_dir / "best.keras",
                monitor=MONITOR,
                mode="max",
                save_best_only=True,
                initial_value_threshold=best_logged(run_dir / "log.csv") if resuming else None,
            )
        )
    callbacks.append(keras.callbacks.CSVLogger(run_dir / "log.csv", append=resuming))
    if tensorboard:
        callbacks.append(keras.callbacks.TensorBoard(run_dir / "tensorboard"))
    if validated and patience > 0:
        callbacks.append(keras.callbacks.EarlyStopping(monitor=MONITOR, mode="max", patience=patience))
    callbacks.append(CrashSafeBackup(run_dir / "backup"))  # survives a kill at any instant (training.backup)
    return callbacks


def time_limit_callback(run_dir: Path, resuming: bool, minutes: float | None) -> TimeLimit | None:
    """``--time-limit``'s callback (counting the training time of earlier sessions), or None."""
    if minutes is None:
        return None
    return TimeLimit(minutes * 60, spent=logged_seconds(run_dir / "log.csv") if resuming else 0.0)


class EpochStats(keras.callbacks.Callback):
    """Times each epoch (training + validation) and adds its duration and the learning rate reached
    at its end to the epoch's logs, so that log.csv and TensorBoard show them. Must run before them."""

    def __init__(self):
        super().__init__()
        self.seconds: list[float] = []

    def on_epoch_begin(self, epoch, logs=None):
        self._start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        self.seconds.append(time.perf_counter() - self._start)
        if logs is not None:
            logs["epoch_seconds"] = round(self.seconds[-1], 3)
            logs["learning_rate"] = float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))

    def steady_speed(self, images_per_epoch: int) -> float | None:
        """Training images per second of the median epoch after the first (which compiles)."""
        later = sorted(self.seconds[1:])
        return round(images_per_epoch / later[len(later) // 2], 1) if later else None


class TimeLimit(keras.callbacks.Callback):
    """Stops training at the end of an epoch when one more epoch, as long as the last, would end
    past ``seconds``; ``spent`` is the training time of earlier sessions. ``stopped`` tells whether
    it cut the training short."""

    def __init__(self, seconds: float, spent: float = 0.0):
        super().__init__()
        self.seconds, self.spent, self.stopped = seconds, spent, False

    def on_epoch_begin(self, epoch, logs=None):
        self._start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        last = time.perf_counter() - self._start
        self.spent += last
        if epoch + 1 < self.params["epochs"] and self.spent + last > self.seconds:
            self.model.stop_training = True
            self.stopped = True


class Session:
    """One training session: its callbacks, the timing of ``model.fit`` and the run record.

    ``work_dir`` is where the callbacks write (the run folder, or a worker's own folder);
    ``resuming`` continues its log, best checkpoint and time accounting. ``validated=False``
    (no validation pass: no best checkpoint, no early stopping) and ``tensorboard=False`` are
    ``make_callbacks``'.
    """

    def __init__(
        self,
        config: dict,
        work_dir: Path,
        resuming: bool,
        *,
        patience: int,
        time_limit: float | None,
        validated: bool = True,
        tensorboard: bool = True,
    ):
        self.stats = EpochStats()
        self.time_limit_minutes = time_limit
        self.time_limit = time_limit_callback(work_dir, resuming, time_limit)
        self.history = keras.callbacks.History()
        self.callbacks: list[keras.callbacks.Callback] = [
            self.stats,
            *finetune.callbacks(config),  # with --weights: the frozen warm-up, then everything
            *make_callbacks(work_dir, resuming, patience, validated=validated, tensorboard=tensorboard),
            *([self.time_limit] if self.time_limit else []),
            self.history,
        ]
        self.seconds = 0.0
        self.interrupted = False

    def fit(self, model: keras.Model, x, *, interruptible: bool = False, **kwargs) -> keras.callbacks.History:
        """``model.fit(x, callbacks=..., **kwargs)``, timed. ``interruptible``: a Ctrl-C (or a
        SIGTERM raised as one) ends the session instead of the process (``interrupted`` says so)."""
        start = time.perf_counter()
        try:
            model.fit(x, callbacks=self.callbacks, **kwargs)
        except KeyboardInterrupt:
            if not interruptible:
                raise
            self.interrupted = True
            print("\ninterrupted: saving the weights reached so far", file=sys.stderr)
        self.seconds = time.perf_counter() - start
        return self.history

    @property
    def epochs_run(self) -> int:
        """Epochs trained in this session (after a resume: since the resume)."""
        return len(self.history.epoch)

    @property
    def stopped_by_time_limit(self) -> bool:
        return bool(self.time_limit and self.time_limit.stopped)

    def record(self, images_per_epoch: int, **more) -> dict:
        """``run.json``'s ``training`` section: epochs, time and speed of this session, then
        ``more`` (the trainer's own entries), then the time limit."""
        epochs, seconds = self.epochs_run, self.seconds
        return {
            "epochs_run": epochs,
            "first_epoch": self.history.epoch[0] + 1 if epochs else None,
            "seconds": round(seconds, 1),
            "images_per_second": round(epochs * images_per_epoch / seconds, 1) if epochs else None,
            "images_per_second_steady": self.stats.steady_speed(images_per_epoch),
            **more,
            "time_limit_minutes": self.time_limit_minutes,
            "stopped_by_time_limit": self.stopped_by_time_limit,
        }
