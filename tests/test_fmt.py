"""The commands' help text (:mod:`cnnbench.fmt`): plain text from the docstrings, each real default shown once."""

from __future__ import annotations


def test_help_shows_each_default_once_and_only_real_ones():
    """'(default: fast)' from argparse, never twice, and never '(default: None)' or '(default: False)'."""
    import argparse

    from cnnbench.fmt import command_parser

    parser = command_parser("cnnbench x", "A ``literal`` and :mod:`cnnbench.fmt`.\n\n* one\n* two")
    parser.add_argument("--device", default="fast", help="device option")
    parser.add_argument("--out", default="DIR", help="folder (default: the run's)")
    parser.add_argument("--limit", default=None, help="how many")
    parser.add_argument("--flag", action="store_true", help="a switch")
    text = parser.format_help()
    assert "A literal and cnnbench.fmt." in text and "\n- one\n- two" in text
    assert "device option (default: fast)" in text and text.count("(default: ") == 2
    assert "None" not in text and "False" not in text
    assert isinstance(parser.formatter_class("x"), argparse.ArgumentDefaultsHelpFormatter)
