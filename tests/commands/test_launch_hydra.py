"""``cnnbench train`` as any Hydra app: its flags (``-cd``, ``-cn``, ``-sc``, ``--cfg``, ``-p``, ``--info``),
checks before launch that compose what Hydra will run, a run folder that is enough to continue a run,
the header a run starts with and the lines a sweep ends with."""

from __future__ import annotations

import json
import os
import shlex
import signal
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from cnnbench.cli import main
from cnnbench.config import ConfigSource, compose_config
from tests.helpers import cli, fast_overrides


def user_configs(root: Path, epochs: int = 1) -> Path:
    """A user's own config folder: an experiment that picks a model of the folder and sets the trainer."""
    (root / "experiment").mkdir(parents=True)
    (root / "model").mkdir()
    (root / "model" / "my_lenet.yaml").write_text("name: lenet_bn\n")
    (root / "experiment" / "mine.yaml").write_text(
        "# @package _global_\ndefaults:\n  - override /model: my_lenet\n"
        f"trainer:\n  epochs: {epochs}\n  limit_train_batches: 3\n  batch_size: 32\n")
    return root


def summary_of(run_dir: Path) -> dict:
    return json.loads((run_dir / "summary.json").read_text())


@pytest.mark.parametrize("flag", ["--config-dir", "-cd"])
def test_a_users_experiment_runs_from_their_own_config_dir(fake_data, tmp_path, flag):
    conf = user_configs(tmp_path / "myconf")
    run = tmp_path / "run"
    assert main(["train", flag, str(conf), "experiment=mine", *fast_overrides(fake_data), f"hydra.run.dir={run}"]) == 0
    summary = summary_of(run)
    assert summary["status"] == "completed" and summary["model"] == "lenet_bn"
    assert summary["steps"] == 3  # the experiment's limit_train_batches, one epoch


def test_the_checks_before_launch_read_the_users_config_dir(fake_data, tmp_path, capsys):
    """A bad value in the user's own file is refused before any folder exists: the pre-launch checks
    composed the same search path as Hydra, not the packaged tree alone ("Could not find 'experiment/mine'")."""
    conf = user_configs(tmp_path / "myconf", epochs=0)
    run = tmp_path / "run"
    code = main(["train", "-cd", str(conf), "experiment=mine", *fast_overrides(fake_data), f"hydra.run.dir={run}"])
    assert code == 2 and not run.exists()
    assert capsys.readouterr().err.strip() == "cnnbench train: error: trainer.epochs must be a positive integer, got 0"


def test_a_missing_config_dir_is_one_line(tmp_path, capsys):
    assert main(["train", "-cd", str(tmp_path / "nope"), "experiment=mine"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("cnnbench train: error: --config-dir") and "no such folder" in err


def test_config_name_composes_a_users_primary_config(tmp_path):
    conf = tmp_path / "myconf"
    conf.mkdir()
    (conf / "mytrain.yaml").write_text("defaults:\n  - train\n  - _self_\ntrainer:\n  epochs: 7\n")
    cfg = compose_config([], source=ConfigSource(config_name="mytrain", extra_dir=str(conf)))
    assert cfg.trainer.epochs == 7 and cfg.model.name == "lenet"


def test_cfg_with_package_prints_the_composed_value(tmp_path, capsys):
    conf = user_configs(tmp_path / "myconf")
    args = ["-cd", str(conf), "experiment=mine", "--cfg", "job", "-p", "trainer.limit_train_batches"]
    assert main(["train", *args]) == 0
    assert capsys.readouterr().out.strip() == "3"
    assert main(["train", "--cfg", "job", "--resolve", "-p", "model"]) == 0
    assert "name: lenet" in capsys.readouterr().out.strip().splitlines()


def test_info_lists_the_users_config_dir_once(tmp_path):
    conf = user_configs(tmp_path / "myconf")
    out = subprocess.run([sys.executable, "-m", "cnnbench", "train", "--info", "searchpath", "-cd", str(conf)],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0
    lines = (out.stdout + out.stderr).splitlines()
    assert sum(f"file://{conf}" in line for line in lines) == 1  # no second copy through the command's logger


# ------------------------------------------------------------------------------------------ completion


def test_completion_query_completes_groups_after_train_and_commands_before(monkeypatch, capsys):
    monkeypatch.setenv("COMP_LINE", "cnnbench train model=vgg1")
    assert main(["-sc", "query=bash"]) == 0
    assert set(capsys.readouterr().out.split()) == {"model=vgg11", "model=vgg11_full", "model=vgg13",
                                                    "model=vgg16", "model=vgg19"}
    monkeypatch.setenv("COMP_LINE", "cnnbench ex")
    assert main(["-sc", "query=bash"]) == 0
    assert capsys.readouterr().out.split() == ["export"]


def test_bash_completion_installs_for_cnnbench_and_completes_train_groups(tmp_path):
    """The README's ``eval "$(cnnbench train -sc install=bash)"`` in a real bash, then <TAB> after
    ``cnnbench train mod``: the shell function calls ``cnnbench -sc query=bash``."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    wrapper = bin_dir / "cnnbench"  # this interpreter's cnnbench, whatever the PATH holds
    wrapper.write_text(f"#!/bin/sh\nexec {shlex.quote(sys.executable)} -m cnnbench \"$@\"\n")
    wrapper.chmod(wrapper.stat().st_mode | stat.S_IEXEC)
    script = ('eval "$(cnnbench train -sc install=bash)"; COMP_LINE="cnnbench train mod"; COMP_POINT=17; '
              'COMP_CWORD=2; hydra_bash_completion; echo "${COMPREPLY[*]}"; complete -p cnnbench')
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}
    out = subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=180, env=env)
    assert out.returncode == 0, out.stderr
    replies, registration = out.stdout.strip().splitlines()[-2:]
    assert set(replies.split()) == {"model=", "model."}
    assert registration.endswith(" cnnbench")


def test_hydra_help_advertises_the_completion_it_installs():
    out = subprocess.run([sys.executable, "-m", "cnnbench", "train", "--hydra-help"], capture_output=True,
                         text=True, timeout=120)
    assert 'eval "$(cnnbench train -sc install=bash)"' in out.stdout


# --------------------------------------------------------------------------------- continuing a folder


def interrupt_in_step(step: int):
    """A forward pre-hook that sends SIGTERM to this process inside training step ``step``."""
    calls = []

    def hook(module, args):
        if isinstance(module, torch.nn.Conv2d) and module.in_channels == 1 and module.training:
            calls.append(1)
            if len(calls) == step:
                os.kill(os.getpid(), signal.SIGTERM)

    return torch.nn.modules.module.register_module_forward_pre_hook(hook)


def test_an_interrupted_run_continues_from_its_folder_alone(fake_data, tmp_path):
    """The command an interrupted run prints (and keeps in summary.json) works verbatim: the folder's own
    settings (model, batch, data) are used, not the defaults."""
    run = tmp_path / "run"
    first = [*fast_overrides(fake_data), "model=lenet_bn", "trainer.batch_size=32", "trainer.epochs=2"]
    handle = interrupt_in_step(3)
    try:
        assert main(["train", *first, f"hydra.run.dir={run}"]) == 130
    finally:
        handle.remove()
    summary = summary_of(run)
    assert summary["status"] == "interrupted"
    command = summary["resume_command"]
    assert command == f"cnnbench train trainer.resume=auto hydra.run.dir={run.absolute()}"
    assert main(shlex.split(command)[1:]) == 0
    summary = summary_of(run)
    assert summary["status"] == "completed" and summary["model"] == "lenet_bn"
    assert summary["steps"] == 2 * 256 // 32  # both epochs of batches of 32 over the 256 images
    assert summary.get("resume_command") is None


def test_a_setting_given_with_the_folder_is_compared_with_the_folders_own(fake_data, tmp_path, capsys):
    run = tmp_path / "run"
    handle = interrupt_in_step(2)
    try:
        main(["train", *fast_overrides(fake_data), "model=lenet_bn", "trainer.batch_size=32", "trainer.epochs=2",
              f"hydra.run.dir={run}"])
    finally:
        handle.remove()
    capsys.readouterr()
    assert main(["train", "trainer.resume=auto", f"hydra.run.dir={run}", "model=lenet", "trainer.batch_size=64"]) == 2
    err = capsys.readouterr().err  # the group given now replaces the folder's (not "multiple values for model")
    assert "cannot resume" in err and "model.name: lenet_bn -> lenet" in err and "trainer.batch_size: 32 -> 64" in err


# -------------------------------------------------------------------------------------- what a run says


def logged(text: str, level: str = "INFO") -> list[str]:
    """The messages of the log lines Hydra's console handler printed: ``[time][logger][LEVEL] - message``."""
    return [line.split("] - ", 1)[1] for line in text.splitlines() if f"][{level}] - " in line]


def test_a_run_starts_with_its_header_and_ends_with_one_result_line(fake_data, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", *fast_overrides(fake_data), "model=lenet_bn", "trainer.epochs=1",
                 "trainer.batch_size=64", "dataset.val_size=64", f"hydra.run.dir={run}"]) == 0
    messages = logged(capsys.readouterr().out)
    start = next(i for i, m in enumerate(messages) if m.startswith("lenet_bn: "))
    header = messages[start:start + 6]
    from cnnbench.machine import version_line

    assert messages[start - 1] == version_line()  # the header opens with cnnbench's version and commit
    assert header[0].startswith("lenet_bn: 44.9k parameters, ") and "28x28 input, 1 channel, 10 classes" in header[0]
    assert header[1] == "data: fashion_mnist, 192 train, 64 validation, 128 test images"
    assert header[2].startswith("device: ") and "fp32" in header[2]
    assert header[3] == "training: 1 epoch of 3 batches of 64, sgd lr 0.9, schedule none, seed 0"
    assert header[4] == f"run folder: {run}" and header[5] == f"curves: tensorboard --logdir {run}"
    assert not any("autotune picked" in m or "weight gradients from" in m for m in messages)
    results = [m for m in messages if m.startswith("loss ") and "test acc" in m]
    assert len(results) == 1 and "examples/sec on cpu" in results[0]


def test_a_sweep_ends_with_its_folder_and_the_report_command(fake_data, tmp_path, capsys):
    sweep = tmp_path / "sweep"
    assert main(["train", "-m", *fast_overrides(fake_data), "trainer.epochs=1", "trainer.limit_train_batches=2",
                 "optimizer.lr=0.1,0.2", f"hydra.sweep.dir={sweep}"]) == 0
    captured = capsys.readouterr()
    ending = (captured.out + captured.err).split(f"sweep: 2 of 2 jobs completed in {sweep}\n", 1)[1]
    assert ending.splitlines()[:2] == [f"  compare them: cnnbench report {sweep}",
                                       f"  curves:       tensorboard --logdir {sweep}"]


def test_a_folder_started_with_config_dir_continues_with_it(fake_data, tmp_path):
    """The folder's record names the user's --config-dir: continuing needs neither the flag nor the
    experiment again (the experiment lives only there)."""
    conf = user_configs(tmp_path / "myconf")
    run = tmp_path / "run"
    assert main(["train", "-cd", str(conf), "experiment=mine", *fast_overrides(fake_data), "trainer.epochs=1",
                 f"hydra.run.dir={run}"]) == 0
    assert main(["train", "trainer.resume=auto", f"hydra.run.dir={run}", "trainer.epochs=2"]) == 0
    summary = summary_of(run)
    assert summary["status"] == "completed" and summary["steps"] == 2 * 3 and summary["model"] == "lenet_bn"
    # The record of this start: the folder's settings with the one given now in place of its own, once
    (record,) = (run / ".hydra" / "resumes").glob("*/overrides.yaml")
    epochs = [o for o in OmegaConf.load(record) if o.startswith("trainer.epochs=")]
    assert epochs == ["trainer.epochs=2"]


def test_resume_auto_without_a_checkpoint_says_so_once(fake_data, tmp_path):
    """The check before launch and the run both look for last.pt: only the run says it starts from scratch."""
    run = tmp_path / "run"
    done = subprocess.run(cli("train", *fast_overrides(fake_data), "trainer.epochs=1", "trainer.limit_train_batches=1",
                              "trainer.resume=auto", f"hydra.run.dir={run}"), capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert (done.stdout + done.stderr).count("starting from scratch") == 1


def _hydra_compositions(monkeypatch) -> list:
    """The run mode of every composition Hydra's config loader makes from now on (Hydra's ``get_mode``
    composes in MULTIRUN mode only to read ``hydra.mode``; a run and ``compose`` compose in RUN mode)."""
    from hydra._internal.config_loader_impl import ConfigLoaderImpl

    modes = []
    original = ConfigLoaderImpl.load_configuration

    def recording(self, config_name, overrides, run_mode, *args, **kwargs):
        modes.append(run_mode)
        return original(self, config_name, overrides, run_mode, *args, **kwargs)

    monkeypatch.setattr(ConfigLoaderImpl, "load_configuration", recording)
    return modes


def test_a_single_run_is_composed_once_by_the_check_and_once_by_hydra(fake_data, tmp_path, monkeypatch):
    """Hydra's composition only to read ``hydra.mode`` is answered from the pre-launch check's; a sweep's
    is not (its jobs' overrides are not the command line's), and Hydra's own method is back after each."""
    from hydra._internal.hydra import Hydra
    from hydra.types import RunMode

    get_mode = Hydra.get_mode
    modes = _hydra_compositions(monkeypatch)
    overrides = [*fast_overrides(fake_data), "model=lenet_bn", "trainer.epochs=1", "trainer.limit_train_batches=2"]
    assert main(["train", *overrides, f"hydra.run.dir={tmp_path / 'run'}"]) == 0
    # the check's composition, Hydra's run's (then the book comparison's of the lenet_bn recipe), none to read the mode
    assert RunMode.MULTIRUN not in modes and modes[:2] == [RunMode.RUN, RunMode.RUN]
    assert Hydra.get_mode is get_mode
    modes.clear()
    assert main(["train", "-m", *overrides, "trainer.batch_size=32,64", f"hydra.sweep.dir={tmp_path / 'sweep'}"]) == 0
    assert RunMode.MULTIRUN in modes and Hydra.get_mode is get_mode


@pytest.mark.parametrize("given, mode",
                         [([], None), (["hydra.mode=RUN"], "RUN"), (["hydra.mode=MULTIRUN"], "MULTIRUN")])
def test_the_checks_mode_is_the_one_hydra_reads(fake_data, given, mode):
    """What the pre-launch check passes on as ``hydra.mode`` is what Hydra's ``get_mode`` composes to."""
    from hydra._internal.hydra import Hydra
    from hydra.core.global_hydra import GlobalHydra
    from hydra.types import RunMode

    from cnnbench.commands.launch import CommandLine, preflight
    from cnnbench.config import PACKAGED, PRIMARY_CONFIG

    overrides = [*fast_overrides(fake_data), *given]
    checked = preflight(CommandLine(overrides=overrides, multirun=False, source=PACKAGED, shows_only=False))
    Hydra.create_main_hydra2(task_name=PRIMARY_CONFIG, config_search_path=PACKAGED.search_path())
    try:
        hydras = GlobalHydra.instance().hydra.get_mode(config_name=PRIMARY_CONFIG, overrides=overrides)
    finally:
        GlobalHydra.instance().clear()
    assert checked.hydra_modes == (hydras,)
    assert hydras == (mode and RunMode[mode])  # unset, the config leaves the mode to the command line
