"""Run folders: ``runs/<run>/`` as ``fit``, ``fit-packed``, ``evaluate``, ``compare`` and ``export``
read and write them.

A run folder holds ``run.json`` (the run record: configuration, labels, command and, once
evaluated, the held-out ``metrics``), ``log.csv`` (one row per epoch, Keras' ``CSVLogger``),
``best.keras``, ``backup/`` (``training.backup.CrashSafeBackup``, while unfinished) and ``tensorboard/``.

Everything about the folder lives here: creating the record (``new_run``, ``write_json``), the
resume check (``check_run_dir``), reading it back (``read_run``, ``read_log``), the time accounting
(``logged_seconds``), and what the export needs from it (``run_extras``, ``float32_model``).
This module imports no trainer and no exporter: both import it.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import keras

from service import repository
from training import finetune
from training.end_to_end import Augmentation, build_end_to_end
from training.portable import portable_path

MONITOR = "val_top1"
RUN_FILE, LOG_FILE, CHECKPOINT, BACKUP = "run.json", "log.csv", "best.keras", "backup"


class RunStateError(RuntimeError):
    """The run folder holds a finished run, or an unfinished one with another configuration."""


# --------------------------------------------------------------------------- run.json


def new_run(config, labels, class_ids, dataset, splits, device, precision, command, **more) -> dict:
    """The run record written to ``run.json`` before training (``metrics`` None until evaluated)."""
    return {
        "arch": config["arch"],
        "name": config["export_name"],
        "labels": list(labels),
        "class_ids": list(class_ids),
        "image_size": list(config["image_size"]),
        "dataset": dataset,
        "splits": dict(splits),
        "device": device,
        "precision": precision,
        **more,
        "command": command,
        "config": config,
        "metrics": None,
    }


def write_json(path: Path, data: dict) -> None:
    """Write atomically (``service.repository.write_json``), creating the folder if needed."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    repository.write_json(path, data)


def read_json(path: Path) -> dict | None:
    """A JSON file's contents, None when it does not exist."""
    path = Path(path)
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def read_run(run_dir: Path) -> tuple[dict, Path]:
    """A run folder's ``run.json`` contents and the path of its ``best.keras``, both required."""
    run_dir = Path(run_dir)
    run_file, checkpoint = run_dir / RUN_FILE, run_dir / CHECKPOINT
    for needed in (run_file, checkpoint):
        if not needed.is_file():
            raise FileNotFoundError(f"{needed} not found: is {run_dir} a `python -m training fit` run?")
    return json.loads(run_file.read_text(encoding="utf-8")), checkpoint


def resumable(work_dir: Path) -> bool:
    """Whether ``work_dir``'s backup holds a finished epoch to resume from."""
    return (Path(work_dir) / BACKUP / "training_metadata.json").exists()


def check_run_dir(run_dir: Path, config: dict) -> bool:
    """True when ``run_dir`` holds an unfinished run of this configuration to resume."""
    previous = read_json(Path(run_dir) / RUN_FILE)
    if previous is None:
        return False
    if previous.get("metrics"):
        raise RunStateError(
            f"{run_dir} holds a finished run; choose another --run-name or delete it "
            f"(to export it again: python -m training export {run_dir})"
        )
    resuming = resumable(run_dir)
    changed = config_changes(previous["config"], config)
    if resuming and changed:
        raise RunStateError(
            f"{run_dir} holds an unfinished run with another configuration (differs in: "
            f"{', '.join(changed)}); re-run its command ({previous['command']}) or pick another --run-name"
        )
    if resuming:
        print(f"resuming the unfinished run in {run_dir}")
    return resuming


def config_changes(recorded: dict, config: dict) -> list[str]:
    """The keys (sorted) in which a recorded run configuration and ``config`` differ; ``[]``: the
    same run (the one comparison of a resume, ``check_run_dir``, and of ``compare``'s folders)."""
    return sorted(key for key in recorded.keys() | config.keys() if recorded.get(key) != config.get(key))


def check_worker_dir(work_dir: Path) -> bool:
    """A non-chief worker's ``check_run_dir``: True when its own backup holds an epoch to resume."""
    resuming = resumable(work_dir)
    if resuming:
        print(f"resuming this worker's backup in {work_dir}")
    return resuming


# --------------------------------------------------------------------------- log.csv


def read_log(log_csv: Path) -> list[dict]:
    """``log.csv`` as one dict per epoch, in epoch order; ``[]`` without a log.

    Crash-safe: a crash between the CSV row of an epoch and its backup makes the resumed run train
    that epoch again and write its row a second time; the last row of an epoch wins (the epoch the
    run kept). A row cut short by a kill (no epoch number, missing fields) is skipped. Values are
    floats (None where empty or not a number), ``epoch`` an int counted from 0.
    """
    log_csv = Path(log_csv)
    if not log_csv.exists():
        return []
    by_epoch: dict[int, dict] = {}
    with open(log_csv, newline="") as f:
        for row in csv.DictReader(f):
            if None in row or None in row.values():  # a truncated or overlong line
                continue
            try:
                epoch = int(row["epoch"])
            except (KeyError, ValueError):
                continue
            by_epoch[epoch] = {key: _number(value) for key, value in row.items() if key != "epoch"}
            by_epoch[epoch]["epoch"] = epoch
    return [by_epoch[epoch] for epoch in sorted(by_epoch)]


def _number(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


def best_logged(log_csv: Path) -> float | None:
    """The best validation top-1 recorded in the CSV log so far (None without one)."""
    values = [row[MONITOR] for row in read_log(log_csv) if row.get(MONITOR) is not None]
    return max(values) if values else None


def logged_seconds(log_csv: Path) -> float:
    """Training time of the epochs the run kept (``epoch_seconds``; an epoch trained again after a
    crash counts once), 0 without a log: the time ``--time-limit`` and ``compare`` account for."""
    return sum(row.get("epoch_seconds") or 0.0 for row in read_log(log_csv))


# --------------------------------------------------------------------------- hand-over to export


def build_model(config: dict, num_classes: int) -> keras.Model:
    """The end-to-end model a run's ``config`` describes (under the current dtype policy)."""
    return build_end_to_end(
        config["arch"],
        num_classes=num_classes,
        image_size=config["image_size"],
        augmentation=Augmentation(**config["augmentation"]),
        arch_options=config["arch_options"],
        seed=config["seed"],
        weights=config.get("weights"),
    )


def load_checkpoint(path: str | Path, *, compile: bool = True) -> keras.Model:
    """A run's ``.keras`` checkpoint, loaded: the zoo's custom layers are registered by
    ``training.architectures`` (imported with ``training.end_to_end``); a fine-tuned checkpoint's
    optimizer is one of ``training.finetune``'s."""
    return keras.models.load_model(path, compile=compile, custom_objects=finetune.custom_objects())


def float32_model(model: keras.Model, config: dict, num_classes: int) -> keras.Model:
    """``model`` itself when it computes in float32, else a float32 rebuild with its weights.

    A mixed-precision model keeps float32 weights but computes in float16, which CPU servers run
    slowly; the exported model should not depend on the GPU it was trained on.
    """
    if model.dtype_policy.name == "float32":
        return model
    policy = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy("float32")
    try:
        twin = build_model(config, num_classes)
    finally:
        keras.mixed_precision.set_global_policy(policy)
    twin.set_weights(model.get_weights())
    return twin


def run_extras(run: dict, run_dir: str | Path) -> dict:
    """Metadata about how the model was trained, from a run's ``run.json``: time, epochs, device;
    its paths as shipped metadata records them (``training.portable``)."""
    training = run.get("training") or {}
    summary = {
        key: training[key]
        for key in ("seconds", "epochs_run", "images_per_second", "images_per_second_steady")
        if training.get(key) is not None
    }
    for key in ("device", "precision", "backend", "trained_on", "splits", "validation_metrics"):
        if run.get(key) is not None:
            summary[key] = run[key]
    pack = (run.get("config") or {}).get("pack")
    if pack:
        summary["pack"] = {**pack, "source": portable_path(pack["source"])} if pack.get("source") else pack
    return {"run": portable_path(run_dir), "training": summary}
