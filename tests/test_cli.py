"""The command line: one command, its subcommands, clear one-line errors."""

from __future__ import annotations

import subprocess

from cnnbench.cli import main
from cnnbench.models import list_models

from .conftest import cli


def test_help_lists_the_subcommands():
    out = subprocess.run(cli("--help"), capture_output=True, text=True, timeout=120)
    assert out.returncode == 0
    for command in ("train", "models", "summary"):
        assert command in out.stdout


def test_models_table_lists_every_network(capsys):
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    for name in list_models():
        assert f"\n{name} " in out
    assert "61,706" in out and "46,764,746" in out  # LeNet and AlexNet parameters


def test_summary_prints_the_books_block_shapes(capsys):
    assert main(["summary", "model=resnet18", "dataset.resize=96"]) == 0
    out = capsys.readouterr().out
    assert "Sequential output shape:\ttorch.Size([1, 64, 24, 24])" in out
    assert "Sequential output shape:\ttorch.Size([1, 512, 3, 3])" in out
    assert "Linear output shape:\ttorch.Size([1, 10])" in out
    assert "parameters: 11,178,378" in out and "forward FLOPs per image" in out and "activation memory" in out


def test_summary_errors_are_one_line(capsys):
    assert main(["summary", "model=alexnet", "dataset.resize=28"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == ("cnnbench summary: error: alexnet cannot take 28x28 inputs: its layers shrink the image to "
                   "nothing; the smallest size that works is 65 (try dataset.resize=65 or larger)")
    assert main(["summary", "model=alexnt"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Could not find 'model/alexnt'" in err and "alexnet, densenet" in err


def test_python_dash_m_is_the_same_command():
    out = subprocess.run(cli("summary", "model=lenet"), capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "Linear output shape:\ttorch.Size([1, 10])" in out.stdout
