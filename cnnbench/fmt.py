"""Text shared by the commands: numbers in tables (``models``, ``summary``, ``report``) and the command
line itself (every subcommand's argparse parser, its ``--help`` and the ``--data-root`` flag).

Never imports torch, so ``cnnbench report`` can use it without loading it.
"""

from __future__ import annotations

import argparse
import re
import textwrap

# reST markup in docstrings (``code``, :mod:`x`, `x`, "* " bullets) -> plain text for --help.
_ROLE = re.compile(r":[a-z]+:`~?([^`]+)`")
_LITERAL = re.compile(r"``([^`]+)``|`([^`]+)`")


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Every subcommand's ``--help``: the description filled paragraph by paragraph (its blank lines and
    "- " items kept), and each option's default shown as "(default: X)" unless it is None or False (an
    option whose help says what its absence means) or the help already says it."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        paragraphs = []
        for block in re.split(r"\n\s*\n", text.strip()):
            items = re.split(r"\n(?=\s*- )", block)  # a "- " line starts an item of a list
            paragraphs.append("\n".join(
                textwrap.fill(" ".join(item.split()), width, initial_indent=indent,
                              subsequent_indent=indent + ("  " if item.lstrip().startswith("- ") else ""))
                for item in items))
        return "\n\n".join(paragraphs)

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        if action.default in (None, False, argparse.SUPPRESS) or "(default" in text or action.default == []:
            return text
        return super()._get_help_string(action)


def plain_text(text: str) -> str:
    """A docstring's reST as plain text: ``--steps`` -> --steps, :mod:`x.y` -> x.y, "* item" -> "- item"."""
    text = _ROLE.sub(r"\1", text)
    text = _LITERAL.sub(lambda m: m.group(1) or m.group(2), text)
    return re.sub(r"(?m)^(\s*)\* ", r"\1- ", text).strip()


def command_parser(prog: str, description: str, **kwargs) -> argparse.ArgumentParser:
    """The argparse parser of a subcommand (``prog``: "cnnbench eval"): a plain-text description and
    defaults shown in its ``--help``."""
    return argparse.ArgumentParser(prog=prog, description=plain_text(description), formatter_class=HelpFormatter,
                                   **kwargs)


def add_data_root(parser: argparse.ArgumentParser, *aliases: str, help: str | None = None) -> None:  # noqa: A002
    """``--data-root DIR``, the one name of the data folder in every command that reads a dataset (train
    spells it ``dataset.root=``); ``aliases`` are older spellings kept working."""
    parser.add_argument("--data-root", *aliases, dest="data_root", default=None, metavar="DIR",
                        help=help or "folder holding the dataset when it moved since the run (dataset.root; "
                        "an image folder's ROOT)")


def human(n: float, unit: str = "") -> str:
    """1234567 -> '1.23M' (k, M, G, T); below 1000 a whole number: 512 -> '512'."""
    for prefix in ("", "k", "M", "G", "T"):
        if abs(n) < 1000 or prefix == "T":
            return f"{n:.3g}{prefix}{unit}" if prefix else f"{n:.0f}{unit}"
        n /= 1000
    return f"{n}{unit}"
