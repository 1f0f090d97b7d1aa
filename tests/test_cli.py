import argparse

from flows.cli import build_parser


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
    }
    for name, sub in commands.choices.items():
        for action in sub._actions:
            if isinstance(action, argparse._HelpAction):
                continue
            assert action.help, f"`archive-colorize {name}` {action.dest} has no help text"
        assert sub.format_help()  # renders


def test_every_recipe_option_reaches_train_and_crossval():
    from flows.cli import RECIPE_OPTIONS, _recipe

    options = ["--weight-decay", "0.01", "--dropout", "0.3", "--arch", "lite2-slim"]
    for command in ("train", "crossval"):
        recipe = _recipe(build_parser().parse_args([command, "src", "out", *options]))
        assert set(recipe) == set(RECIPE_OPTIONS)
        got = (recipe["weight_decay"], recipe["dropout"], recipe["arch"])
        assert got == (0.01, 0.3, "lite2-slim")
