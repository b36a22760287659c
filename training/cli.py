"""Helpers shared by the ``python -m training`` sub-commands."""

from __future__ import annotations

import argparse
import shlex
import sys
from collections.abc import Callable, Sequence


def command_line(command: str, argv: Sequence[str]) -> str:
    """The ``python -m training COMMAND ...`` line to record in run.json / metadata.json.

    As typed when ``COMMAND`` runs from the command line; otherwise (called from Python) the
    equivalent ``argv`` the caller rebuilt (``Recipe.to_argv``, ``options_argv``, ``args_argv``).
    """
    if sys.argv[1:2] == [command]:
        return shlex.join(["python", "-m", "training", *sys.argv[1:]])
    return shlex.join(["python", "-m", "training", command, *map(str, argv)])


def options_argv(values: dict, defaults: dict) -> list[str]:
    """``--flag value`` for every entry of ``values`` that differs from ``defaults`` (None / False:
    left out; True: a bare flag; a list or tuple: the flag repeated), in the order of ``values``."""
    words: list[str] = []
    for dest, value in values.items():
        if value is None or value is False or value == defaults.get(dest):
            continue
        flag = "--" + dest.replace("_", "-")
        if value is True:
            words.append(flag)
        elif isinstance(value, (list, tuple)):
            words.extend(word for item in value for word in (flag, str(item)))
        else:
            words.extend((flag, str(value)))
    return words


def args_argv(
    add_arguments: Callable[[argparse.ArgumentParser], None],
    args: argparse.Namespace,
    positionals: Sequence[str] = (),
) -> list[str]:
    """The arguments of a parsed ``args``: ``positionals`` first, then every option that differs from
    the parser's default, in the parser's order (flags are ``--dest``). For a parser without required
    options (its defaults are what it parses from no arguments); other keys of ``args`` (the
    sub-command's name...) are not its own and are left out."""
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    defaults = vars(parser.parse_args([]))
    values = {dest: getattr(args, dest) for dest in defaults if dest not in positionals}
    words = [str(getattr(args, p)) for p in positionals if getattr(args, p, None) is not None]
    return words + options_argv(values, defaults)
