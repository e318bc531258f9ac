"""``cnnbench`` command line: one command, several subcommands.

``train`` and ``summary`` take Hydra overrides (``model=resnet18 dataset.resize=96``); ``train -m`` runs
a Hydra multirun sweep. ``eval``, ``predict``, ``inspect`` and ``export`` read a finished run folder; ``track`` uploads
finished run or sweep folders to MLflow.
"""

from __future__ import annotations

import argparse
import gc
import logging
import os
import sys
from collections.abc import Callable, Sequence

from hydra.errors import HydraException

from .errors import CnnbenchError, ConfigError, one_line
from .fmt import command_parser
from .speed import collector, load
from .speed.threads import choose_omp_wait, follows_the_load

COMMANDS: dict[str, str] = {
    "train": "train a network (Hydra overrides; -m for a sweep)",
    "models": "list every registered network with parameters and FLOPs",
    "summary": "per-block output shapes, parameters, FLOPs and activation memory of one network",
    "report": "compare the runs of a sweep folder: table, report.md, report.csv, report.png",
    "bench": "time cnnbench's trainer against the book's pipeline, side by side",
    "eval": "evaluate a finished run: per-class figures, confusion matrix, mistakes (eval/ in the run folder)",
    "predict": "classify your own pictures with a trained run",
    "inspect": "look inside a trained run: activations per stage, first-layer filters, Grad-CAM (HTML + PNGs)",
    "export": "write a trained run's network as ONNX or TorchScript, checked against PyTorch",
    "track": "upload finished runs or sweeps to MLflow from their folders (pip install 'cnnbench[mlflow]')",
}


def _sentence(text: str) -> str:
    """A COMMANDS line as the start of a sentence: its first letter upper-case, the rest as written (FLOPs)."""
    return text[:1].upper() + text[1:]


def _cmd_models(args: Sequence[str]) -> int:
    parser = command_parser("cnnbench models", _sentence(COMMANDS["models"]) + " (at each one's book resolution).")
    parser.add_argument("pattern", nargs="?", default=None, help="shell-style filter, e.g. 'vgg*' (none: all)")
    parser.add_argument("--channels", type=int, default=1, choices=(1, 3),
                        help="input channels: 1 (grey) or 3 (colour: image folders, CIFAR)")
    parser.add_argument("--classes", type=int, default=10, help="output classes")
    parser.add_argument("--size", type=int, default=None,
                        help="input side in pixels (e.g. 32 for CIFAR): FLOPs there, and whether each network builds")
    parser.add_argument("--from", dest="library", choices=("torchvision", "timm"), default=None,
                        help="list the names model=torchvision / model=timm take as model.arch (pattern filters)")
    ns = parser.parse_args(args)
    if ns.classes < 2 or (ns.size is not None and ns.size < 1):
        parser.error("--classes must be at least 2 and --size at least 1")
    from .models import list_models
    from .models.stats import models_table

    if ns.library:
        from .models.external import library_names

        print("\n".join(library_names(ns.library, ns.pattern)))
        return 0

    if ns.pattern and not list_models(ns.pattern):
        raise ConfigError(f"no model matches {ns.pattern!r}; the models: {', '.join(list_models())}")
    print(models_table(ns.pattern, ns.channels, ns.classes, ns.size))
    return 0


def summary_overrides(items: Sequence[str]) -> list[str]:
    """``cnnbench summary``'s arguments as Hydra overrides: a bare NAME is ``model=NAME`` (at most one)."""
    names = [item for item in items if "=" not in item and not item.startswith(("~", "+"))]
    if len(names) > 1:
        raise ConfigError(f"one model at a time, got {', '.join(names)} (other settings are KEY=VALUE)")
    return [f"model={item}" if item in names else item for item in items]


def _cmd_summary(args: Sequence[str]) -> int:
    parser = command_parser(
        "cnnbench summary", _sentence(COMMANDS["summary"]) + ", as the book prints them. The network and its input "
        "come from the same config as cnnbench train: NAME (or model=NAME) and any other Hydra overrides, "
        "e.g. 'cnnbench summary resnet18 dataset.resize=96'.")
    parser.add_argument("items", nargs="*", metavar="NAME|KEY=VALUE",
                        help="a network (cnnbench models lists them) and Hydra overrides (default: model=lenet)")
    parser.add_argument("--config-dir", "-cd", default=None, metavar="DIR",
                        help="your configs, as for cnnbench train (and model.target's module beside them)")
    ns = parser.parse_args(args)
    from .config import PACKAGED, ConfigSource, compose_config
    from .models.configured import image_size, model_from_config, network_label
    from .models.external import use_config_dir
    from .models.stats import summary_text

    source = PACKAGED
    if ns.config_dir is not None:
        if not os.path.isdir(ns.config_dir):
            raise ConfigError(f"--config-dir {ns.config_dir}: no such folder")
        source = ConfigSource(extra_dir=os.path.abspath(ns.config_dir))
        use_config_dir(source.extra_dir)
    cfg = compose_config(summary_overrides(ns.items), source=source)
    if cfg.dataset.in_channels is None:  # an image folder: its channels and classes come from its images
        from .data.sources import settle_dataset

        settle_dataset(cfg)
    model, size = model_from_config(cfg), image_size(cfg)
    print(f"{network_label(cfg)} at {size}x{size}")
    print(summary_text(model, cfg.dataset.in_channels, size))
    return 0


def _cmd_train(args: Sequence[str]) -> int:
    from .commands.launch import hydra_main

    return hydra_main(args)


def _cmd_report(args: Sequence[str]) -> int:
    from .report import cmd_report

    return cmd_report(args)


def _cmd_bench(args: Sequence[str]) -> int:
    from .commands.bench import cmd_bench

    return cmd_bench(args)


def _cmd_eval(args: Sequence[str]) -> int:
    from .evaluation.evaluate import cmd_eval

    return cmd_eval(args)


def _cmd_predict(args: Sequence[str]) -> int:
    from .evaluation.predict import cmd_predict

    return cmd_predict(args)


def _cmd_inspect(args: Sequence[str]) -> int:
    from .inspection.command import cmd_inspect

    return cmd_inspect(args)


def _cmd_export(args: Sequence[str]) -> int:
    from .evaluation.export import cmd_export

    return cmd_export(args)


def _cmd_track(args: Sequence[str]) -> int:
    from .tracking.upload import cmd_track

    return cmd_track(args)


HANDLERS: dict[str, Callable[[Sequence[str]], int]] = {
    "train": _cmd_train,
    "models": _cmd_models,
    "summary": _cmd_summary,
    "report": _cmd_report,
    "bench": _cmd_bench,
    "eval": _cmd_eval,
    "predict": _cmd_predict,
    "inspect": _cmd_inspect,
    "export": _cmd_export,
    "track": _cmd_track,
}


def _complete(args: Sequence[str]) -> int:
    """Tab completion for the line in ``$COMP_LINE``: command names after ``cnnbench``; after
    ``cnnbench train``, Hydra's own completion of groups, options and keys. ``cnnbench train -sc
    install=bash|zsh|fish`` prints the shell code that calls this."""
    import os
    import re

    line = os.environ.get("COMP_LINE", "")
    words = line.split()
    if len(words) < 2 or (len(words) == 2 and not line.endswith(" ")):  # still typing the command's name
        typed = words[1] if len(words) == 2 else ""
        print("\n".join(name for name in HANDLERS if name.startswith(typed)))
        return 0
    if words[1] != "train" or not args or not args[0].startswith("query="):
        return 0  # other commands take paths: the shell's own completion
    from .commands.launch import hydra_main

    os.environ["COMP_LINE"] = re.sub(r"^(\s*\S+)\s+train\b", r"\1", line)  # Hydra strips one program name
    return hydra_main(["-sc", args[0]])


def _top_parser() -> argparse.ArgumentParser:
    lines = "\n".join(f"  {name:<9} {help_}" for name, help_ in COMMANDS.items())
    parser = argparse.ArgumentParser(
        prog="cnnbench",
        description="Train and compare the classic CNNs of Dive into Deep Learning on Fashion-MNIST.",
        epilog=f"commands:\n{lines}\n\n'cnnbench COMMAND --help' for a command's options.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="store_true",
                        help="cnnbench's version, the commit it runs from (or was built from) and torch's version")
    parser.add_argument("command", choices=list(HANDLERS), metavar="COMMAND")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``cnnbench`` console script and of ``python -m cnnbench``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    choose_omp_wait(follows_the_load(argv))  # before torch is imported: libgomp reads it once, at load time
    if argv[:1] in (["-sc"], ["--shell-completion"]):  # the shell asks (installed by `train -sc install=`)
        return _complete(argv[1:])
    parser = _top_parser()
    if argv[:1] == ["--version"]:
        from .machine import version_line  # imports torch: only when asked

        print(version_line())
        return 0
    if not argv or argv[0] in ("-h", "--help"):
        parser.parse_args(argv or ["--help"])
        return 0
    command, rest = argv[0], argv[1:]
    if command not in HANDLERS:
        parser.error(f"unknown command {command!r}; choose from {', '.join(HANDLERS)}")
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s][%(name)s][%(levelname)s] - %(message)s")
    try:
        return HANDLERS[command](rest)
    except CnnbenchError as exc:
        # A problem the user can fix: one sentence, no traceback.
        print(f"cnnbench {command}: error: {exc}", file=sys.stderr)
        return 2
    except HydraException as exc:
        print(f"cnnbench {command}: error: {one_line(str(exc))}", file=sys.stderr)
        return 2


def run() -> None:
    """The ``cnnbench`` console script and ``python -m cnnbench``: :func:`main`, then exit with its code.

    For ``train``, the garbage collector is paused while the command starts (:mod:`cnnbench.speed.collector`);
    the first epoch resumes it. The other commands keep it as it is. ``train`` also reads the machine's load
    first thing (:func:`cnnbench.speed.load.note_command_start`): its thread count's first window.

    Before the interpreter shuts down, every object alive is moved out of the garbage collector's reach
    (``gc.freeze``): the shutdown's last full collection would otherwise walk the hundreds of thousands of
    objects that torch's imports create (more where torch.compile brings torch._dynamo). Measured on a
    1-epoch LeNet-BN command, 3 runs each: 5.1-5.4 s exiting after ``main`` alone, 4.3-4.5 s with this.
    Nothing is skipped: files are closed and atexit handlers run as usual; only the final sweep of objects
    that are about to be dropped with the process anyway.
    """
    if sys.argv[1:2] == ["train"]:
        collector.pause()
        load.note_command_start()  # the thread count's first window: the whole start-up
    code = main()
    gc.freeze()
    sys.exit(code)


if __name__ == "__main__":
    run()
