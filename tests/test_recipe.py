"""training.recipe.Recipe: fit's flags generated from it, one to one with the Namespace, the command
line and JSON, and its config() the run configuration run.json records (old runs still resume)."""

from __future__ import annotations

import argparse
import json

from training import fit
from training.recipe import Recipe

CASES = [
    ("--arch", "lenet5", "--data", "x"),
    (
        "--arch",
        "lenet5",
        "--data",
        "x",
        "--image-size",
        "32",
        "--augment",
        "strong",
        "--cutmix",
        "0",
        "--arch-option",
        "dropout=0.2",
        "--arch-option",
        "variant=a",
        "--width",
        "0.5",
        "--scale-lr",
        "--optimizer",
        "sgd",
        "--time-limit",
        "3",
        "--mixed-precision",
        "--run-name",
        "r",
    ),
]

# The run configuration fit recorded before the Recipe (run.json's "config" of an existing run).
RECORDED = {
    "run_name": "lenet5_x_32px",
    "export_name": "lenet5",
    "arch": "lenet5",
    "arch_options": {},
    "data": "x",
    "labels_map": None,
    "image_size": [32, 32],
    "epochs": 30,
    "batch_size": 64,
    "optimizer": "adamw",
    "base_lr": 0.001,
    "scale_lr": False,
    "learning_rate": 0.001,
    "weight_decay": 0.05,
    "warmup_epochs": 0.0,
    "label_smoothing": 0.0,
    "augment": "light",
    "augmentation_overrides": {},
    "mixed_precision": False,
    "jit_compile": "auto",
    "patience": 10,
    "validation_fraction": 0.15,
    "test_fraction": 0.15,
    "limit": None,
    "seed": 0,
}


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    fit.add_arguments(parser)
    return parser.parse_args(list(argv))


def test_namespace_argv_and_json_map_one_to_one():
    for argv in CASES:
        recipe = Recipe.from_args(parse(*argv))
        assert Recipe.from_args(parse(*recipe.to_argv())) == recipe
        assert Recipe.from_json(recipe.to_json()) == recipe
        config = recipe.config()
        assert Recipe.from_config(json.loads(json.dumps(config))).config() == config
    assert Recipe.from_args(parse(*CASES[0])).to_argv() == ["--arch", "lenet5", "--data", "x"]


def test_config_is_the_recorded_run_configuration():
    config = Recipe(arch="lenet5", data="x", image_size=32).config()
    assert {k: v for k, v in config.items() if k != "augmentation"} == RECORDED
    assert list(config) == [*list(RECORDED)[:18], "augmentation", *list(RECORDED)[18:]]


def test_the_hub_command_line_is_rebuilt_from_its_own_options():
    from training import hub
    from training.cli import args_argv

    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="command")
    hub.add_arguments(sub.add_parser("hub"))
    args = parser.parse_args(
        ["hub", "fe", "--data", "d", "--epochs", "1", "--fine-tune", "--image-size", "32"]
    )
    assert args_argv(hub.add_arguments, args, positionals=("handle",)) == [
        "fe",
        "--image-size",
        "32",
        "--data",
        "d",
        "--epochs",
        "1",
        "--fine-tune",
    ]
