"""The documentation stays true: a short README, links that lead somewhere, the commands CI runs, and a
configuration reference that is exactly what its generator writes from the schema and conf/."""

from __future__ import annotations

import importlib.util
import json
import re
import sys
from pathlib import Path
from urllib.parse import unquote

import pytest
from markdown_it import MarkdownIt
from omegaconf import OmegaConf

from cnnbench.config import compose_config
from tests.helpers import REPO, own_tests

README = REPO / "README.md"
PAGES = [README, *sorted((REPO / "docs").glob("*.md"))]
README_LIMIT = 15_000  # characters: a first page read in minutes

# Pages written in parallel with the README (issue 27) that the README already points to; drop each entry
# when its page lands.


def _reference():
    """scripts/config_reference.py as a module (scripts/ is not a package)."""
    if "config_reference" not in sys.modules:
        spec = importlib.util.spec_from_file_location("config_reference", REPO / "scripts" / "config_reference.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules["config_reference"] = module  # dataclasses look their module up while it loads
        spec.loader.exec_module(module)
    return sys.modules["config_reference"]


def _tokens(path: Path) -> list:
    return MarkdownIt("commonmark").enable("table").parse(path.read_text())


def slug(heading: str) -> str:
    """GitHub's anchor for a heading's text: lower case, punctuation dropped, spaces as hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    found: set[str] = set()
    tokens = _tokens(path)
    for i, token in enumerate(tokens):
        if token.type == "heading_open":
            text = "".join(c.content for c in tokens[i + 1].children if c.type in ("text", "code_inline"))
            base, n = slug(text), 0
            while (name := base if n == 0 else f"{base}-{n}") in found:  # GitHub numbers repeated headings
                n += 1
            found.add(name)
    return found


def links(path: Path) -> list[str]:
    """Every link and image target of a page (code blocks and code spans are not links)."""
    out = []
    for token in _tokens(path):
        for child in token.children or []:
            if child.type == "link_open":
                out.append(child.attrs["href"])
            elif child.type == "image":
                out.append(child.attrs["src"])
    return out


def test_readme_is_short():
    assert len(README.read_text()) <= README_LIMIT


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_relative_links_lead_to_a_file_and_heading(page):
    broken = []
    for target in links(page):
        if re.match(r"[a-z]+:", target):  # https:, mailto: ...
            continue
        file_part, _, anchor = target.partition("#")
        dest = (page.parent / unquote(file_part)).resolve() if file_part else page
        if not dest.exists():
            broken.append(f"{target}: no file {dest}")
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            broken.append(f"{target}: no heading #{anchor} in {dest.name}")
    assert not broken, f"{page.name}: " + "; ".join(broken)


def test_the_link_check_sees_links_and_headings(tmp_path):
    page = tmp_path / "page.md"
    page.write_text("# A title\n\n## Quick start: `cnnbench train`\n\n## Quick start: `cnnbench train`\n\n"
                    "[x](other.md#part) ![y](img.png) `[not](a-link.md)`\n\n```\n[no](link.md)\n```\n")
    assert links(page) == ["other.md#part", "img.png"]
    assert anchors(page) == {"a-title", "quick-start-cnnbench-train", "quick-start-cnnbench-train-1"}


def test_readme_has_the_commands_ci_runs():
    """CI (.ci/run) runs the README's install and test commands: each must be in the README as written."""
    readme = README.read_text()
    commands = [line.strip() for line in (REPO / ".ci" / "run").read_text().splitlines()
                if line.strip().startswith("python -m ")]
    assert "python -m pip install -e '.[dev]'" in commands
    assert [c for c in commands if c not in readme] == []


def test_readme_command_table_lists_every_command():
    """The README's table under "Commands" has a row per subcommand of the CLI (cli.COMMANDS), and no other."""
    from cnnbench.cli import COMMANDS

    section = README.read_text().split("\n## Commands\n", 1)[1].split("\n## ", 1)[0]
    rows = re.findall(r"^\| `cnnbench (\w+)", section, flags=re.MULTILINE)
    assert sorted(rows) == sorted(COMMANDS)


def _reproduce_book():
    """scripts/reproduce_book.py as a module (scripts/ is not a package)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("reproduce_book", REPO / "scripts" / "reproduce_book.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_readme_results_table_is_the_records():
    """The README's results table is what scripts/reproduce_book.py makes from the records under results/."""
    assert _reproduce_book().write_table(check=True) == 0


def test_the_results_table_reads_a_record(tmp_path, monkeypatch):
    """A completed d2l_* record under results/ fills its row: accuracy, the book's verdict, the swing over the last
    epochs, precision, the summed whole-command time of its starts, the thread counts its starts ran with, and the
    machine; where records lie in one folder it is named once above the table, records in several folders are
    linked from their rows."""
    book = _reproduce_book()
    monkeypatch.setattr(book, "REPO", tmp_path)
    monkeypatch.setattr(book, "RESULTS", tmp_path / "results")
    record = tmp_path / "results" / "intel-xeon-processor-2core-2026-12-07" / "d2l_densenet"
    record.mkdir(parents=True)
    summary = {"status": "completed", "seed": 0, "test/acc": 0.8391, "precision": "bf16", "device": "cpu",
               "wall_time_s": 1000.0, "machine": {"cpu": "Intel(R) Xeon(R) Processor", "cpu_count": 2,
                                                                "torch_threads": 1},
               "book": {"recipe": "d2l_densenet", "reproduced": False, "test_acc": {"position": "below"}}}
    (record / "summary.json").write_text(json.dumps(summary))
    accs = [0.70, 0.80, 0.75, 0.85, 0.86, 0.749, 0.884, 0.80, 0.87, 0.8391]
    (record / "metrics.jsonl").write_text("".join(json.dumps({"kind": "epoch", "epoch": i + 1, "test/acc": a}) + "\n"
                                                  for i, a in enumerate(accs)))
    (record / "command_times.jsonl").write_text(json.dumps({"start": 0.0, "end": 1800.0}) + "\n"
                                                + json.dumps({"start": 5000.0, "end": 6500.0}) + "\n")
    # the first start set 1 thread, the resume 2 (each start's Hydra record); summary.json's count is the last's
    for config, threads in ((record / ".hydra" / "config.yaml", 1),
                            (record / ".hydra" / "resumes" / "2026-12-07_15-31-40" / "config.yaml", 2)):
        config.parent.mkdir(parents=True)
        config.write_text(f"device:\n  num_threads: {threads}\n")
    row = next(line for line in book.table().splitlines() if line.startswith("| `d2l_densenet`"))
    assert "| 0.839 below, train figures off" in row
    assert "| 0.749-0.884 |" in row and "| bf16 |" in row
    assert row.endswith("| 55 min, 1/2 threads, 2 starts |")  # no GPU column while no GPU record exists
    # the CPU and the folder all records share, once above the table
    assert ("CPU: 2-core Intel Xeon; records in `results/intel-xeon-processor-2core-2026-12-07/RECIPE/`. No GPU has "
            "run them yet." in book.table())
    # a start that left the count to the thread follower
    (record / ".hydra" / "config.yaml").write_text("device:\n  num_threads: null\n")
    assert "| 55 min, 2/auto threads, 2 starts |" in book.table()
    other = next(line for line in book.table().splitlines() if line.startswith("| `d2l_alexnet`"))
    assert other.endswith("| not measured | | | |")
    # a record in a second folder: each row links its record
    second = tmp_path / "results" / "intel-xeon-processor-2core-2026-12-09" / "d2l_alexnet"
    second.mkdir(parents=True)
    (second / "summary.json").write_text(json.dumps({**summary, "book": {**summary["book"], "recipe": "d2l_alexnet"}}))
    (second / "metrics.jsonl").write_text((record / "metrics.jsonl").read_text())
    lines = book.table().splitlines()
    row = next(line for line in lines if line.startswith("| `d2l_densenet`"))
    assert "[0.839](results/intel-xeon-processor-2core-2026-12-07/d2l_densenet) below" in row
    assert "[0.839](results/intel-xeon-processor-2core-2026-12-09/d2l_alexnet)" in book.table()
    # a GPU record: the GPU column appears, with its whole-command time and device
    gpu = tmp_path / "results" / "nvidia-h100-2026-12-10" / "d2l_lenet"
    gpu.mkdir(parents=True)
    (gpu / "summary.json").write_text(json.dumps({**summary, "device": "cuda:0", "wall_time_s": 30.0,
                                                  "book": {**summary["book"], "recipe": "d2l_lenet"}}))
    (gpu / "metrics.jsonl").write_text((record / "metrics.jsonl").read_text())
    lines = book.table().splitlines()
    assert "| CPU, whole command | GPU, whole command |" in lines[lines.index("") + 1]
    assert next(line for line in lines if line.startswith("| `d2l_lenet`")).endswith("| 30 s, cuda:0 |")
    assert next(line for line in lines if line.startswith("| `d2l_densenet`")).endswith("| not measured |")
    assert "No GPU" not in book.table()


def test_the_book_picture_compares_the_records(tmp_path):
    """`reproduce_book.py picture` draws the results folder's records: the curves and accuracy against time,
    parameters and FLOPs (four panels, two rows)."""
    from PIL import Image

    book = _reproduce_book()
    assert book.picture(None, tmp_path / "book.png") == 0
    with Image.open(tmp_path / "book.png") as im:
        # two rows of panels (a third would add 572 px), the legend's rows below them; quantized like the README's
        # other pictures
        assert im.size[0] == 1430 and 2 * 572 <= im.size[1] < 3 * 572 and im.mode == "P"
    assert book.results_folder().parent == REPO / "results"


def test_quickstart_points_to_a_readme_section():
    """conf/experiment/quickstart.yaml names the README section that shows its measured run."""
    named = re.search(r'README \("([^"]+)"\)', (REPO / "conf" / "experiment" / "quickstart.yaml").read_text())
    assert named and slug(named[1]) in anchors(README)


def test_configuration_reference_is_current():
    """docs/configuration.md is what scripts/config_reference.py writes now (run it after changing the schema
    or conf/)."""
    page = (REPO / "docs" / "configuration.md").read_text()
    assert page.startswith(_reference().render())


def test_configuration_reference_has_every_config_group():
    """A group added to conf/ (logger=...) gets its section: the generator's list is checked against conf/."""
    listed_apart = ("experiment", "exercise", "hydra")  # listings of their own, not typed groups
    groups = {p.name for p in (REPO / "conf").iterdir() if p.is_dir() and p.name not in listed_apart}
    assert groups - {"__pycache__"} <= set(_reference().GROUPS)


def test_configuration_reference_describes_every_key():
    page = (REPO / "docs" / "configuration.md").read_text()
    for key in ("trainer.eval_batch_size", "trainer.limit_eval_batches", "trainer.checkpoint", "trainer.progress_bar",
                "dataset.normalize", "dataset.download", "dataset.folder", "device.cudnn_benchmark",
                "scheduler.warmup_epochs", "scheduler.eta_min", "scheduler.step_epochs", "scheduler.gamma",
                "scheduler.pct_start", "scheduler.div_factor", "scheduler.final_div_factor", "scheduler.anneal"):
        row = re.search(rf"^\| `{re.escape(key)}` \|.*\| ([^|]+) \|$", page, re.M)
        assert row and row[1].strip() not in ("", "—"), key


def test_the_generator_keeps_the_hand_written_part(tmp_path, monkeypatch):
    ref = _reference()
    page = tmp_path / "configuration.md"
    page.write_text(f"old reference\n{ref.HAND_WRITTEN}\n## Your own configs\n\nby hand\n")
    monkeypatch.setattr(ref, "PAGE", page)
    monkeypatch.setattr(ref, "REPO", tmp_path)
    monkeypatch.setattr(ref, "render", lambda: f"new reference\n{ref.HAND_WRITTEN}\n")
    assert ref.main(["--check"]) == 1
    assert ref.main([]) == 0
    assert page.read_text() == f"new reference\n{ref.HAND_WRITTEN}\n## Your own configs\n\nby hand\n"
    assert ref.main(["--check"]) == 0


def test_a_key_without_a_comment_stops_the_generator(tmp_path):
    ref = _reference()
    (tmp_path / "opt.yaml").write_text("# header, not a key's\nlr: 0.1   # the rate\n          #   continued\n"
                                       "# above momentum\nmomentum: 0.9\nbetas: [0.9, 0.99]\nnested:\n"
                                       "  inner: 'a # b'  # kept\n")
    comments = ref.yaml_comments(tmp_path / "opt.yaml")
    assert comments == {"lr": "the rate continued", "momentum": "above momentum", "nested.inner": "kept"}
    with pytest.raises(ValueError, match="optimizer.betas has no description: add a comment beside it in conf/x"):
        ref.describe("optimizer", "betas", [(comments, "x")])


@pytest.mark.parametrize("group, option", [("device", "fast"), ("augment", "strong"),
                                           ("dataset", "fashion_mnist_mini"), ("optimizer", "sgd_nesterov")])
def test_generator_reads_options_as_hydra_composes_them(group, option):
    """The generator's reading of a YAML option (its defaults list: schema, other options, _self_) gives
    the values Hydra composes for it."""
    composed = compose_config([f"{group}={option}"])[group]
    assert _reference().load_option(group, option).values == OmegaConf.to_container(composed)


def module_map() -> dict[str, str]:
    """docs/development.md's table under "Where each thing lives": module (under cnnbench/) -> its tests cell."""
    text = (REPO / "docs" / "development.md").read_text()
    section = text[text.index("## Where each thing lives"):]
    section = section[: section.find("\n## ", 1) if "\n## " in section[1:] else len(section)]
    rows = [[cell.strip() for cell in line.strip().strip("|").split("|")] for line in section.splitlines()
            if line.startswith("| `")]
    listed = [row[0].strip("`") for row in rows]
    assert len(listed) == len(set(listed)), "a module listed twice"
    return {row[0].strip("`"): row[2] for row in rows}


def test_the_module_map_lists_every_module_and_its_tests():
    """Every module of cnnbench/ once, with its own test files (the mirrored paths), or where it is tested."""
    table = module_map()
    modules = {p.relative_to(REPO / "cnnbench").as_posix() for p in (REPO / "cnnbench").rglob("*.py")
               if p.name != "__init__.py"}
    assert set(table) == modules
    for module, cell in table.items():
        named = re.findall(r"`([^`]+)`", cell)
        assert named and all((REPO / path).is_file() for path in named), f"{module}: {cell}"
        own = own_tests(module)
        assert (named == own) if own else cell.startswith("via "), f"{module}: {cell} (its own tests: {own})"
