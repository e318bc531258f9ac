"""The book's eight recipes trained to the end, their records kept, and the README's results table made from them.

    python scripts/reproduce_book.py run [RECIPE ...] --data ROOT   # one at a time, cheapest first; resumes
        [--set device.num_threads=1]                                 # more overrides for every run
    python scripts/reproduce_book.py collect                        # records -> results/MACHINE-DATE/RECIPE/
    python scripts/reproduce_book.py table [--check]                 # README's table from results/
    python scripts/reproduce_book.py picture [--folder results/X]    # docs/images/book_results.png

``run`` trains each ``d2l_*`` recipe with ``device=fast`` (what the README tells CPU users) into
``outputs/book/RECIPE`` with ``trainer.resume=auto``: a run stopped (Ctrl-C, the machine taken back) continues
where it stopped when the same command is given again, and a completed one is skipped. Each start of the command
is timed as a whole process and appended to ``RUN/command_times.jsonl`` (start, end, exit code, arguments), so the
whole-command wall time of a run continued over several sessions is the sum of its segments.

``collect`` copies each completed run's record (summary.json, metrics.jsonl, .hydra/, command_times.jsonl,
train.log; no checkpoints) to ``results/CPU-Ncore-DATE/RECIPE/`` (DATE: the run's first start).

``table`` writes the README's results table between its two marker comments from every record under results/
(the newest record of each recipe, seed 0); ``--check`` exits 1 when the README differs (tests/project/test_docs.py).

``picture`` runs ``cnnbench report RESULTS_FOLDER --against time params flops`` (the folder holding most of
the table's CPU records unless ``--folder`` names one) and keeps its report.png, palette-quantized like the
README's other pictures, as ``docs/images/book_results.png``: accuracy per epoch, and final accuracy against
whole-command wall time, parameters and FLOPs per image.
"""

from __future__ import annotations

import argparse
import collections
import datetime as dt
import json
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "results"
RUNS = REPO / "outputs" / "book"
README = REPO / "README.md"
# Cheapest first (whole-command time on a 2-core CPU), so a session that stops early has the most finished
RECIPES = ("d2l_lenet", "d2l_lenet_bn", "d2l_densenet", "d2l_resnet18", "d2l_googlenet", "d2l_nin", "d2l_alexnet",
           "d2l_vgg11")
NETWORKS = {"d2l_lenet": "LeNet, 28 px", "d2l_lenet_bn": "BatchNorm-LeNet, 28 px", "d2l_alexnet": "AlexNet, 224 px",
            "d2l_vgg11": "VGG-11, widths / 4, 224 px", "d2l_nin": "NiN, 224 px", "d2l_googlenet": "GoogLeNet, 96 px",
            "d2l_resnet18": "ResNet-18, 96 px", "d2l_densenet": "DenseNet, 96 px"}
RECORD_FILES = ("summary.json", "metrics.jsonl", "command_times.jsonl", "train.log")
TIMES = "command_times.jsonl"
START, END = "<!-- results table: start (scripts/reproduce_book.py table) -->", "<!-- results table: end -->"
PICTURE = REPO / "docs" / "images" / "book_results.png"
PICTURE_AGAINST = ("time", "params", "flops")  # cnnbench report --against: the comparison
SWING_EPOCHS = 5  # the test accuracy's range over the last epochs: how much one final figure can be trusted


# ------------------------------------------------------------------------------------------------ run


def summary_of(folder: Path) -> dict | None:
    try:
        return json.loads((folder / "summary.json").read_text())
    except (OSError, ValueError):
        return None


def run(recipes: list[str], data: str, extra: list[str], runs: Path = RUNS) -> int:
    """Train each recipe in turn (skipping completed ones); stop at the first that does not complete."""
    for recipe in recipes:
        folder = runs / recipe
        if (summary_of(folder) or {}).get("status") == "completed":
            print(f"{recipe}: completed already ({folder})", flush=True)
            continue
        folder.mkdir(parents=True, exist_ok=True)
        args = ["cnnbench", "train", f"experiment={recipe}", "device=fast", "trainer.resume=auto",
                f"hydra.run.dir={folder}", f"dataset.root={data}", "trainer.progress_bar=false", *extra]
        print(f"{recipe}: {shlex.join(args)}", flush=True)
        start = time.time()
        code = subprocess.run(args, cwd=REPO).returncode
        with (folder / TIMES).open("a") as f:
            f.write(json.dumps({"start": start, "end": time.time(), "exit_code": code, "args": args[1:]}) + "\n")
        if code != 0:
            print(f"{recipe}: exit code {code}; the same command continues it", flush=True)
            return code
    return 0


# ------------------------------------------------------------------------------------------------ collect


def slug(text: str) -> str:
    text = re.sub(r"\((R|TM)\)", "", text, flags=re.IGNORECASE)
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def first_start(folder: Path, summary: dict) -> dt.datetime:
    try:
        first = json.loads((folder / TIMES).read_text().splitlines()[0])["start"]
    except (OSError, ValueError, IndexError):
        first = (folder / ".hydra" / "config.yaml").stat().st_mtime
    return dt.datetime.fromtimestamp(first, dt.timezone.utc)


def with_book(folder: Path, summary: dict) -> dict:
    """A completed run whose summary has no ``book`` entry (its process composed the recipe from config files
    changed under it while it trained) gets it from this cnnbench, marked ``book_added_by``, written back."""
    from omegaconf import OmegaConf

    from cnnbench.book.results import book_comparison

    book = book_comparison(OmegaConf.load(folder / ".hydra" / "config.yaml"), summary)
    if book is None:
        return summary
    summary = {**summary, "book": book, "book_added_by": "scripts/reproduce_book.py collect"}
    (folder / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def collect(runs: Path = RUNS) -> int:
    """Copy every completed run's record into results/; returns the number copied."""
    copied = 0
    for folder in sorted(p for p in runs.iterdir() if p.is_dir()) if runs.is_dir() else []:
        summary = summary_of(folder)
        if not summary or summary.get("status") != "completed":
            continue
        if not summary.get("book"):
            summary = with_book(folder, summary)
            if not summary.get("book"):
                continue  # not one of the book's recipes
        machine = summary.get("machine") or {}
        name = f"{slug(machine.get('cpu', 'cpu'))}-{machine.get('cpu_count', '?')}core-" \
               f"{first_start(folder, summary):%Y-%m-%d}"
        dest = RESULTS / name / summary["book"]["recipe"]
        if dest.exists():
            shutil.rmtree(dest)
        dest.mkdir(parents=True)
        for file in RECORD_FILES:
            if (folder / file).is_file():
                shutil.copy2(folder / file, dest / file)
        shutil.copytree(folder / ".hydra", dest / ".hydra")
        print(f"{folder} -> {dest.relative_to(REPO)}")
        copied += 1
    return copied


# ------------------------------------------------------------------------------------------------ table


def records() -> dict[tuple[str, str], tuple[Path, dict]]:
    """(recipe, "cpu" or "gpu") -> (record folder, summary) of the newest completed seed-0 record under results/."""
    found: dict[tuple[str, str], tuple[Path, dict]] = {}
    for path in sorted(RESULTS.glob("*/*/summary.json")):
        summary = json.loads(path.read_text())
        book = summary.get("book")
        if summary.get("status") != "completed" or not book or summary.get("seed") != 0:
            continue
        key = (book["recipe"], "gpu" if str(summary.get("device", "")).startswith("cuda") else "cpu")
        if key not in found or first_start(path.parent, summary) > first_start(*found[key]):
            found[key] = (path.parent, summary)
    return found


def command_time_s(folder: Path, summary: dict) -> tuple[float, int]:
    """(whole-command wall seconds, starts): the timed segments summed as `cnnbench report` sums them
    (cnnbench.report.runs.command_time); the run's own clock when untimed."""
    from cnnbench.report.runs import command_time, read_metrics

    seconds = command_time(folder / TIMES)
    if seconds is None:
        return float(summary["wall_time_s"]), 1 + len(summary.get("resumes") or [])
    return seconds, sum(1 for r in read_metrics(folder / TIMES) if r.get("end") is not None)


def short_cpu(name: str) -> str:
    """'Intel(R) Xeon(R) Processor' -> 'Intel Xeon', 'AMD EPYC 7B13' as it is."""
    name = re.sub(r"\((R|TM)\)|\bProcessor\b|\bCPU\b|@.*$", "", name, flags=re.IGNORECASE)
    return " ".join(name.split())


def configured_threads(folder: Path) -> list[int | None]:
    """Each start's ``device.num_threads`` (None where a start left it to the thread follower), from the first
    start's .hydra/config.yaml and each resume's .hydra/resumes/*/config.yaml; summary.json's machine record
    reads torch's count only when the summary is written, after the last start."""
    import yaml

    counts: list[int | None] = []
    for path in [folder / ".hydra" / "config.yaml", *sorted((folder / ".hydra" / "resumes").glob("*/config.yaml"))]:
        try:
            cfg = yaml.safe_load(path.read_text())
        except (OSError, ValueError):
            continue
        value = ((cfg or {}).get("device") or {}).get("num_threads")
        counts.append(int(value) if isinstance(value, int) else None)
    return counts


def threads_words(folder: Path, summary: dict) -> str:
    """'1 thread', '1/2 threads' or 'auto/1 threads': the thread counts the record's starts ran with."""
    counts = set(configured_threads(folder)) or {(summary.get("machine") or {}).get("torch_threads")}
    labels = [str(n) for n in sorted(n for n in counts if n is not None)] + (["auto"] if None in counts else [])
    return f"{'/'.join(labels)} thread{'' if labels == ['1'] else 's'}"


def test_acc_swing(folder: Path) -> tuple[float, float] | None:
    """(min, max) test accuracy over the last SWING_EPOCHS epochs, from metrics.jsonl."""
    accs = [r["test/acc"] for r in map(json.loads, (folder / "metrics.jsonl").read_text().splitlines())
            if r.get("kind") == "epoch" and r.get("test/acc") is not None]
    tail = accs[-SWING_EPOCHS:]
    return (min(tail), max(tail)) if tail else None


def duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def machine_words(folder: Path, summary: dict) -> str:
    """'2-core Intel Xeon': the CPU a record ran on, as its summary records it (the thread counts of its starts
    are each row's, threads_words)."""
    machine = summary.get("machine") or {}
    return f"{machine.get('cpu_count', '?')}-core {short_cpu(machine.get('cpu', '?'))}"


def table() -> str:
    """The README's results table (Markdown), one row per recipe, from the records under results/; the CPU
    the records ran on said once above it when they share one, else in each row; the GPU column only once a
    GPU record exists (until then the line above the table says none was measured)."""
    from cnnbench.book.results import published

    found = records()
    cpu_records = [found[key] for key in found if key[1] == "cpu"]
    machines = {machine_words(*r) for r in cpu_records}
    folders = sorted({r[0].parent.relative_to(REPO).as_posix() for r in cpu_records})
    shared = machines.pop() if len(machines) == 1 else None
    # One folder of records: named once above the table (each row's record is its recipe's subfolder), so a
    # row does not repeat the path; records in several folders keep a link per row.
    one_folder = folders[0] if shared and len(folders) == 1 else None
    any_gpu = any(kind == "gpu" for _, kind in found)
    no_gpu = "" if any_gpu else " No GPU has run them yet."
    if one_folder:
        lines = [f"CPU: {shared}; records in `{one_folder}/RECIPE/`.{no_gpu}", ""]
    elif shared:
        lines = [f"CPU: {shared} (`{'`, `'.join(folders)}/`).{no_gpu}", ""]
    else:
        lines = [no_gpu.strip(), ""] if no_gpu else []
    columns = ["recipe", "network, input", "book", "cnnbench (seed 0)", "last 5 epochs", "precision",
               "CPU, whole command", *(["GPU, whole command"] if any_gpu else [])]
    lines += [f"| {' | '.join(columns)} |", f"|{' --- |' * len(columns)}"]
    for recipe in sorted(published(), key=lambda r: list(NETWORKS).index(r)):
        editions = published()[recipe]["editions"]
        book = " / ".join(f"{editions[e]['test_acc']:.3f}" for e in ("classic_v0.17", "zh_v2.0.0"))
        gpu = found.get((recipe, "gpu"))
        gpu_time = "not measured" if gpu is None else f"{duration(command_time_s(*gpu)[0])}, {gpu[1]['device']}"
        gpu_cell = f" {gpu_time} |" if any_gpu else ""
        record = found.get((recipe, "cpu")) or gpu
        if record is None:
            lines.append(f"| `{recipe}` | {NETWORKS[recipe]} | {book} | not measured | | | |{gpu_cell}")
            continue
        folder, summary = record
        verdict = summary["book"]["test_acc"]["position"]
        mark = "" if summary["book"]["reproduced"] else ", train figures off the book's"
        swing = test_acc_swing(folder)
        cpu_time = "not measured"
        if (recipe, "cpu") in found:
            seconds, starts = command_time_s(folder, summary)
            where = "" if shared else f", {machine_words(folder, summary)}"
            cpu_time = (f"{duration(seconds)}{where}, {threads_words(folder, summary)}"
                        f"{f', {starts} starts' if starts > 1 else ''}")
        acc = f"{summary['test/acc']:.3f}"
        if not (one_folder and folder.parent.relative_to(REPO).as_posix() == one_folder):
            acc = f"[{acc}]({folder.relative_to(REPO).as_posix()})"
        lines.append(
            f"| `{recipe}` | {NETWORKS[recipe]} | {book} | {acc} {verdict}{mark} | "
            f"{'' if swing is None else f'{swing[0]:.3f}-{swing[1]:.3f}'} | {summary.get('precision')} | "
            f"{cpu_time} |{gpu_cell}")
    return "\n".join(lines)


def write_table(check: bool) -> int:
    text = README.read_text()
    if START not in text or END not in text:
        print(f"README.md has no results-table markers ({START})", file=sys.stderr)
        return 1
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    new = f"{head}{START}\n{table()}\n{END}{tail}"
    if check:
        if new != text:
            print("README.md's results table differs from results/: run scripts/reproduce_book.py table",
                  file=sys.stderr)
            return 1
        return 0
    README.write_text(new)
    return 0


# ------------------------------------------------------------------------------------------------ picture


def results_folder() -> Path:
    """The results folder holding the most of the newest CPU records (the README table's)."""
    folders = [folder.parent for (_, kind), (folder, _) in records().items() if kind == "cpu"]
    if not folders:
        raise SystemExit("no completed CPU record under results/: run `collect` first")
    return collections.Counter(folders).most_common(1)[0][0]


def picture(folder: Path | None, target: Path = PICTURE) -> int:
    """docs/images/book_results.png (``target``) from ``cnnbench report FOLDER --against time params flops``."""
    folder = (folder or results_folder()).resolve()
    with tempfile.TemporaryDirectory() as tmp:
        # report.md and report.csv go to the temporary folder with it: only the picture is kept
        args = ["report", str(folder), "--out", tmp, "--against", *PICTURE_AGAINST]
        print(f"cnnbench {shlex.join(args)}", flush=True)
        code = subprocess.run([sys.executable, "-m", "cnnbench", *args], cwd=REPO).returncode
        if code != 0:
            return code
        if str(REPO / "scripts") not in sys.path:  # loaded by path (the tests), not run as a script
            sys.path.insert(0, str(REPO / "scripts"))
        from readme_pictures import small_png

        size = small_png(Path(tmp) / "report.png", target)
    print(f"{target}: {size:,} bytes", flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p_run = sub.add_parser("run", help="train recipes one at a time (resumes, skips completed)")
    p_run.add_argument("recipes", nargs="*", default=list(RECIPES))
    p_run.add_argument("--data", required=True, help="the folder holding FashionMNIST/raw")
    p_run.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                       help="another override for every run (e.g. device.num_threads=1), repeatable")
    p_collect = sub.add_parser("collect", help="copy completed runs' records into results/")
    for p in (p_run, p_collect):
        p.add_argument("--runs", type=Path, default=RUNS,
                       help="the runs' folder (default outputs/book; one outside the checkout outlives a fresh clone)")
    p_table = sub.add_parser("table", help="write (or --check) the README's results table")
    p_table.add_argument("--check", action="store_true")
    p_picture = sub.add_parser("picture", help=f"write {PICTURE.relative_to(REPO)} from a results folder")
    p_picture.add_argument("--folder", type=Path, default=None,
                           help="the results folder (default: the one holding most of the table's CPU records)")
    ns = parser.parse_args(argv)
    if ns.command == "run":
        return run(ns.recipes, ns.data, ns.set, ns.runs.resolve())
    if ns.command == "collect":
        collect(ns.runs.resolve())
        return 0
    if ns.command == "picture":
        return picture(ns.folder)
    return write_table(ns.check)


if __name__ == "__main__":
    sys.exit(main())
