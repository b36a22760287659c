"""Helpers shared by the ``python -m training`` sub-commands."""

from __future__ import annotations

import argparse
import shlex
import sys
from typing import Callable


def command_line(
    command: str, add_arguments: Callable[[argparse.ArgumentParser], None], args: argparse.Namespace
) -> str:
    """The ``python -m training COMMAND ...`` line to record in run.json / metadata.json.

    As typed when ``COMMAND`` runs from the command line; otherwise (called from Python) an
    equivalent line rebuilt from ``args``: positionals and every option that differs from its
    default, flags bare, repeatable options repeated.
    """
    if sys.argv[1:2] == [command]:
        return shlex.join(["python", "-m", "training", *sys.argv[1:]])
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    words = ["python", "-m", "training", command]
    for action in parser._actions:
        value = getattr(args, action.dest, None)
        if action.dest == "help" or value is None or value is False or value == action.default:
            continue
        if not action.option_strings:
            words.append(str(value))
            continue
        flag = action.option_strings[0]
        if value is True:
            words.append(flag)
        elif isinstance(value, list):
            words.extend(word for item in value for word in (flag, str(item)))
        else:
            words.extend((flag, str(value)))
    return shlex.join(words)
