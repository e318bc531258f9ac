"""The command line: one command, its subcommands, clear one-line errors."""

from __future__ import annotations

import subprocess

import pytest

from cnnbench.cli import main
from cnnbench.models import list_models
from tests.helpers import REPO, cli


def test_help_lists_the_subcommands():
    out = subprocess.run(cli("--help"), capture_output=True, text=True, timeout=120)
    assert out.returncode == 0
    for command in ("train", "models", "summary", "eval", "predict", "inspect", "export", "track"):
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
    assert len(err.splitlines()) == 1 and "Could not find 'model/alexnt'" in err and "alexnet, custom, densenet" in err


def test_python_dash_m_is_the_same_command():
    out = subprocess.run(cli("summary", "model=lenet"), capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "Linear output shape:\ttorch.Size([1, 10])" in out.stdout


def _table_names(out: str) -> list[str]:
    """First column of the rows under the header and its dashed rule of ``cnnbench models``."""
    lines = out.strip("\n").splitlines()
    assert lines[0].split()[:2] == ["name", "family"] and set(lines[1]) == {"-"}
    return [line.split()[0] for line in lines[2:]]


def test_models_pattern_filters_shell_style(capsys):
    # fnmatch: '?' is exactly one character, so vgg11_full is out; registry (chapter) order is kept
    assert main(["models", "vgg1?"]) == 0
    assert _table_names(capsys.readouterr().out) == ["vgg11", "vgg13", "vgg16", "vgg19"]
    assert main(["models", "lenet*"]) == 0
    out = capsys.readouterr().out
    assert _table_names(out) == ["lenet", "lenet_bn"]
    assert "61,706" in out and "833k" in out  # LeNet's parameters and forward FLOPs per image


def test_models_pattern_matching_nothing_is_an_error_naming_the_models(capsys):
    assert main(["models", "no_such_net*"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    (line,) = captured.err.splitlines()
    assert line.startswith("cnnbench models: error: no model matches 'no_such_net*'; the models: lenet, lenet_bn, ")
    assert line.endswith(", ".join(list_models()))


def test_summary_takes_a_bare_model_name(capsys):
    """'cnnbench summary resnet18' is 'cnnbench summary model=resnet18' (Hydra alone says 'missing EQUAL')."""
    assert main(["summary", "lenet_bn", "dataset.resize=32"]) == 0
    assert capsys.readouterr().out.startswith("lenet_bn at 32x32\n")
    assert main(["summary", "lenet", "nin"]) == 2
    assert capsys.readouterr().err.strip() == ("cnnbench summary: error: one model at a time, got lenet, nin "
                                               "(other settings are KEY=VALUE)")


@pytest.mark.parametrize("command", ["models", "summary", "report", "bench", "eval", "predict", "inspect", "export"])
def test_every_subcommands_help_has_a_description_and_defaults_in_plain_text(command, capsys):
    with pytest.raises(SystemExit) as exit_:
        main([command, "--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    description = out.split("\n\n")[1]
    assert len(description) > 40 and not description.startswith(("positional", "options"))
    for markup in ("``", ":mod:", ":func:", "\x1b[", "\n* "):
        assert markup not in out, markup
    if command not in ("models", "summary", "report"):  # options with a default value
        assert "(default: " in out
    if command in ("bench", "eval", "export"):  # one name for the data folder
        assert "--data-root DIR" in out


def test_train_help_names_the_command():
    out = subprocess.run(cli("train", "--help"), capture_output=True, text=True, timeout=120)
    assert out.returncode == 0
    first = out.stdout.splitlines()[0]
    assert first.startswith("cnnbench train: train one of the book's networks") and "powered by Hydra" not in first
    groups = {line.split(": ", 1)[0]: line.split(": ", 1)[1].split(", ")
              for line in out.stdout.splitlines() if ": " in line and not line.startswith(" ")}
    assert "d2l_alexnet" in groups["experiment"]  # Hydra's list of config groups follows


def test_the_console_script_exits_with_mains_code_and_the_shutdown_skips_the_final_collection(monkeypatch) -> None:
    """``cnnbench`` (and ``python -m cnnbench``) run cli.run: main's exit code, and every live object frozen
    out of the garbage collector first (the interpreter's last collection costs a LeNet command 0.5 s)."""
    import gc

    import tomllib

    import cnnbench.cli as cli_module

    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["cnnbench"] == "cnnbench.cli:run"
    monkeypatch.setattr(cli_module, "main", lambda: 3)
    gc.unfreeze()
    try:
        with pytest.raises(SystemExit) as stop:
            cli_module.run()
        assert stop.value.code == 3
        assert gc.get_freeze_count() > 1000
    finally:
        gc.unfreeze()


def test_models_for_colour_32_pixel_inputs(capsys):
    """--channels 3 --size 32: parameters of colour networks, FLOPs at 32 px, which are too small there."""
    assert main(["models", "--channels", "3", "--size", "32"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "inputs: 3 channel(s), 10 classes"
    rows = {line.split()[0]: line for line in lines[3:]}
    assert "too small: dataset.resize=65 or more" in rows["alexnet"] and rows["resnet18"].endswith("builds")
    assert rows["lenet"].split()[2] == "83,126"  # the first convolution sees 3 channels (61,706 for grey)


def test_version_names_the_commit_it_runs_from(capsys):
    from cnnbench import __version__
    from cnnbench.machine import source_info

    assert main(["--version"]) == 0
    out = capsys.readouterr().out.strip()
    commit = source_info()["commit"]
    assert out.startswith(f"cnnbench {__version__} (") and "torch 2." in out
    # a checkout names its commit; an unpacked sdist the one it was built from; a bare copy says there is none
    assert (commit[:12] in out) if commit else ("no source commit recorded" in out)
