import argparse
import inspect
import subprocess
import sys

from flows.cli import build_parser
from flows.train import train_model
from pipeline.training.config import (
    ARCHITECTURES,
    OPTIONS,
    SPLIT_OPTIONS,
    TrainConfig,
    option_defaults,
)


def test_every_option_of_every_command_is_documented():
    parser = build_parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    assert set(commands.choices) == {
        "colorize",
        "pack",
        "train",
        "crossval",
        "evaluate",
        "export",
        "stamps",
        "demo",
        "quantize",
    }
    for name, sub in commands.choices.items():
        for action in sub._actions:
            if isinstance(action, argparse._HelpAction):
                continue
            assert action.help, f"`archive-colorize {name}` {action.dest} has no help text"
        assert sub.format_help()  # renders


# a value for every recipe option, each different from its default (so that an option the
# parser drops, or answers with its default, shows)
NOT_DEFAULT = {
    "arch": "small", "steps": 7, "batch_size": 3, "lr": 0.02, "lr_schedule": "constant",
    "crop": 64, "prepared": 72, "scale_min": 0.5, "trainable_stages": 2, "unfreeze_at": 5,
    "encoder_lr_scale": 0.5, "ema_decay": 0.9, "weight_decay": 0.05, "dropout": 0.2,
    "degrade": 0.25, "stamps": "stamps/", "paste": 0.5, "workers": 2, "checkpoint_every": 9,
    "soft_k": 3, "seed": 11, "val_every": 4, "val_max_photos": 8, "patience": 2,
    "loader_threads": 3, "image_column": "jpeg", "id_column": "photo_id",
    "film": 0.5, "hints": 0.4, "hint_points": 5.0, "init": "runs/old/model.safetensors",
    "prepared_data": "shared/prepared",
}  # fmt: skip


def _flags(values: dict) -> list[str]:
    return [arg for name, value in values.items()
            for arg in (f"--{name.replace('_', '-')}", str(value))]  # fmt: skip


def test_every_recipe_option_reaches_train_and_crossval():
    from flows.cli import RECIPE_OPTIONS, _recipe

    assert set(NOT_DEFAULT) == set(RECIPE_OPTIONS)  # a new option gets a value here
    defaults = option_defaults()
    assert all(NOT_DEFAULT[k] != defaults.get(k) for k in NOT_DEFAULT)
    for command in ("train", "crossval"):
        args = build_parser().parse_args([command, "src", "out", *_flags(NOT_DEFAULT)])
        assert _recipe(args) == NOT_DEFAULT
    split = {"val_fraction": 0.25, "fold": 3, "holdout": "museum"}
    args = build_parser().parse_args(["train", "src", "out", *_flags(split)])
    assert {name: getattr(args, name) for name in SPLIT_OPTIONS} == split
    # every one of them is a parameter of the flow they go to
    assert set(RECIPE_OPTIONS) | set(split) <= set(inspect.signature(train_model.fn).parameters)


def test_the_defaults_of_train_crossval_and_their_flow_are_the_recipes():
    """One place for a default: TrainConfig's. The command line and train_model read it."""
    defaults = option_defaults()
    assert set(defaults) == set(OPTIONS)
    for command in ("train", "crossval"):
        args = build_parser().parse_args([command, "src", "out"])
        for name in OPTIONS:
            if command == "train" or name not in SPLIT_OPTIONS:
                assert getattr(args, name) == defaults[name], (command, name)
    parameters = inspect.signature(train_model.fn).parameters
    for name in OPTIONS:
        assert parameters[name].default == defaults[name], name
    # the values the defaults stand for: the shipped recipe's (docs/training.md)
    config = TrainConfig()
    assert (config.arch, config.steps, config.prepared, config.dropout) == (
        "lite2-plain", 3000, 256, 0.3
    )  # fmt: skip
    arch = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    choices = next(a.choices for a in arch.choices["train"]._actions if a.dest == "arch")
    assert tuple(choices) == ARCHITECTURES


def test_the_recipe_module_and_its_names_do_not_import_torch():
    code = (
        "import sys, pipeline.training.config as c; "
        "assert 'torch' not in sys.modules, 'torch imported'; print(len(c.ARCHITECTURES))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert done.returncode == 0 and done.stdout.strip() == "12", done.stderr
