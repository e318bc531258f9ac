"""Write docs/configuration.md, the configuration reference, from the config itself.

    python scripts/config_reference.py           # rewrite docs/configuration.md
    python scripts/config_reference.py --check   # exit 1 when the committed page differs from what this writes

Every key, its type, its allowed values and its default come from where they are defined, so the page
cannot drift from the code (``tests/project/test_docs.py`` runs ``--check``):

- keys and types: the dataclasses of ``cnnbench/schema.py`` (the typed sections);
- ranges: each section's ``RANGES`` (:class:`cnnbench.schema.Range`); fixed choices: the code's own tables
  (``DEVICE_CHOICES``, ``INIT_SCHEMES``, ``MONITORS``, the optimizer and schedule name tables);
- defaults: the YAML options under ``conf/`` (one column per option of a group);
- descriptions: the comment beside each value in ``conf/`` (or the comment lines just above it);
- the ``model`` group (not typed by the schema): the model registry and ``conf/model/``.

A key without a description is an error naming the file to comment. The YAML options are read with their
defaults lists as the files write them (their schema, then other options of the same group, then
``_self_``); ``tests/project/test_docs.py`` checks a few against Hydra's own composition.
"""

from __future__ import annotations

import argparse
import dataclasses
import re
import sys
import typing
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml
from omegaconf import OmegaConf

REPO = Path(__file__).resolve().parent.parent
PAGE = REPO / "docs" / "configuration.md"
CONF = REPO / "conf"
if str(REPO) not in sys.path:  # run as a script from anywhere: import this checkout's cnnbench
    sys.path.insert(0, str(REPO))

from cnnbench import schema  # noqa: E402
from cnnbench.devices import DEVICE_TYPES  # noqa: E402
from cnnbench.models import registry  # noqa: E402
from cnnbench.models.configured import INIT_SCHEMES  # noqa: E402
from cnnbench.run.optim import OPTIMIZERS, SCHEDULES  # noqa: E402
from cnnbench.run.selection import MONITORS  # noqa: E402
from cnnbench.speed.settings import DEVICE_CHOICES  # noqa: E402
from cnnbench.tracking.registry import tracker_schemas  # noqa: E402

GROUPS = ("model", "dataset", "optimizer", "scheduler", "device", "augment", "logger")  # the typed ones after model
# The page's last generated line: sections written by hand (how to keep configs of your own, ...) go below it.
HAND_WRITTEN = "<!-- The reference ends here; what follows is written by hand and kept by the generator. -->"
LONG_VALUE = 28  # characters: a longer default (a list of class names) is shown shortened

# Fixed choices the type cannot say, from the tables the code checks them against: (section, key) -> values.
CHOICES: dict[tuple[str, str], tuple] = {
    **{("device", key): values for key, values in DEVICE_CHOICES.items()},
    ("device", "type"): DEVICE_TYPES,
    ("trainer", "init"): INIT_SCHEMES,
    ("trainer", "monitor"): ("auto", *MONITORS, None),
    ("optimizer", "name"): tuple(OPTIMIZERS),
    ("scheduler", "name"): tuple(SCHEDULES),
    ("scheduler", "anneal"): schema.ANNEALS,
}


# ------------------------------------------------------------------------------------------- reading conf/


KEY_LINE = re.compile(r"^(?P<indent> *)(?P<key>[A-Za-z_][\w]*):(?P<rest>.*)$")


def _inline_comment(rest: str) -> str | None:
    """The comment after a value (``lr: 0.1  # the peak``); a '#' inside quotes is part of the value."""
    quote = None
    for i, ch in enumerate(rest):
        if quote:
            quote = None if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch == "#" and (i == 0 or rest[i - 1] in " \t"):
            return rest[i + 1:].strip()
    return None


def yaml_comments(path: Path) -> dict[str, str]:
    """Dotted key -> the comment describing it in ``path``: the comment beside its value, continued by
    comment lines indented under it, else the comment lines just above it (not the file's header)."""
    comments: dict[str, str] = {}
    stack: list[tuple[int, str]] = []  # (indent, key) of the enclosing mappings
    above: list[str] = []  # comment lines just above the current line
    header = True  # comment lines before the first key describe the file, not a key
    last: tuple[str, int] | None = None  # the last key with an inline comment, and its comment's column
    for line in path.read_text().splitlines():
        stripped = line.strip()
        if stripped.startswith("#"):
            text = stripped.lstrip("#").strip()
            column = line.index("#")
            if last and column >= last[1] - 2 and not above:  # aligned under the value's comment
                comments[last[0]] += " " + text  # a continuation: indented under the value's comment
            elif not header:
                above.append(text)
            continue
        if not stripped:
            above, last = [], None
            continue
        match = KEY_LINE.match(line)
        if not match or line.lstrip().startswith("-"):
            above, last = [], None
            continue
        header = False
        indent, key = len(match["indent"]), match["key"]
        while stack and stack[-1][0] >= indent:
            stack.pop()
        dotted = ".".join([k for _, k in stack] + [key])
        stack.append((indent, key))
        inline = _inline_comment(match["rest"])
        if inline:
            comments[dotted] = inline
            last = (dotted, line.index("#", len(match["indent"]) + len(key)))
        else:
            if above:
                comments[dotted] = " ".join(above)
            last = None
        above = []
    return comments


def header_comment(path: Path) -> str:
    """The first sentence of a YAML file's opening comment ('' when it has none)."""
    lines = []
    for line in path.read_text().splitlines():
        if not line.startswith("#"):
            break
        text = line.lstrip("#").strip()
        if text.startswith("@package"):
            continue
        lines.append(text)
        if text.endswith((".", ":")):  # the first sentence ends there (an example may follow a colon)
            break
    text = " ".join(lines).removesuffix(":")
    end = re.search(r"\.(?=\s+[A-Z])", text)  # a sentence ends where the next one starts with a capital
    return text[: end.start() + 1] if end else text


@dataclasses.dataclass
class Option:
    """One YAML option of a group: its values (its defaults list applied) and its schema."""

    group: str
    name: str
    values: dict[str, Any]
    schema: type | None
    comments: dict[str, str]  # of this file and the options it builds on (this file's win)


def load_option(group: str, name: str) -> Option:
    """``conf/GROUP/NAME.yaml`` with its defaults list applied as the file writes it: ``/schema/...@_here_``
    (the schema), other options of the group by name, ``_self_``. Anything else is refused: this reader
    knows only the forms conf/ uses."""
    path = CONF / group / f"{name}.yaml"
    raw = yaml.safe_load(path.read_text()) or {}
    defaults = raw.pop("defaults", ["_self_"])
    merged = OmegaConf.create({})
    schema_cls: type | None = None
    comments: dict[str, str] = {}
    for entry in defaults if "_self_" in defaults else [*defaults, "_self_"]:
        if entry == "_self_":
            merged = OmegaConf.merge(merged, raw)
        elif isinstance(entry, str) and entry.startswith(f"/schema/{group}/") and entry.endswith("@_here_"):
            schema_cls = group_schemas(group)[entry[len(f"/schema/{group}/"):-len("@_here_")]]
            merged = OmegaConf.merge(OmegaConf.structured(schema_cls), merged)
        elif isinstance(entry, str) and (CONF / group / f"{entry}.yaml").is_file():
            parent = load_option(group, entry)
            schema_cls = parent.schema or schema_cls
            comments.update(parent.comments)
            merged = OmegaConf.merge(merged, parent.values)
        else:
            raise ValueError(f"{path}: defaults entry {entry!r} is not a form this reader knows")
    if schema_cls is not None:
        merged = OmegaConf.merge(OmegaConf.structured(schema_cls), merged)
    comments.update(yaml_comments(path))
    return Option(group, name, OmegaConf.to_container(merged), schema_cls, comments)


def group_schemas(group: str) -> dict[str, type]:
    """The schemas a group's options may name: the trackers' live beside them (cnnbench.tracking.registry)."""
    return tracker_schemas() if group == "logger" else schema.GROUP_SCHEMAS[group]


def package_of(group: str, name: str) -> str:
    """Where an option's keys go: its ``# @package`` header (``logger.mlflow``), else the group's name."""
    first = (CONF / group / f"{name}.yaml").read_text().splitlines()[:1]
    header = re.match(r"#\s*@package\s+(\S+)", first[0]) if first else None
    return header[1] if header else group


def group_options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


def primary() -> tuple[dict[str, Any], dict[str, str], dict[str, str]]:
    """train.yaml: its values, its comments, and the default option of each group."""
    path = CONF / "train.yaml"
    raw = yaml.safe_load(path.read_text())
    chosen = {}
    for entry in raw.pop("defaults"):
        if isinstance(entry, dict):
            chosen.update({k: v for k, v in entry.items() if v is not None})
    return raw, yaml_comments(path), chosen


# ------------------------------------------------------------------------------------------- formatting


def type_words(annotation: Any) -> str:
    """A field's type in words: ``int`` -> integer, ``Optional[float]`` -> number or null."""
    args = typing.get_args(annotation)
    if typing.get_origin(annotation) is typing.Union and type(None) in args:
        inner = [a for a in args if a is not type(None)]
        return f"{type_words(inner[0])} or null"
    if typing.get_origin(annotation) is list:
        return f"list of {type_words(args[0])}s"
    names = {int: "integer", float: "number", bool: "boolean", str: "string", Any: "any"}
    return names.get(annotation, getattr(annotation, "__name__", str(annotation)))


def show(value: Any) -> str:
    """A value as YAML writes it, in backticks; a long one shortened."""
    if isinstance(value, list) and len(str(value)) > LONG_VALUE:
        return f"`[{value[0]}, …]` ({len(value)} items)"
    text = yaml.safe_dump(value, default_flow_style=True, width=1000).strip()
    text = text.removesuffix("\n...").removesuffix("...").strip()
    return f"`{text}`"


def allowed_words(section: str, cls: type, key: str, annotation: Any) -> str:
    """What a field may hold: a range, a fixed set of choices, or true/false."""
    choices = CHOICES.get((section, key))
    if choices is not None:
        return ", ".join(show(c) for c in choices)
    limit = getattr(cls, "RANGES", {}).get(key)
    optional = typing.get_origin(annotation) is typing.Union
    if limit is not None:
        each = "each " if typing.get_origin(typing.get_args(annotation)[0] if optional else annotation) is list \
            else ""
        return each + limit.words() + (", or `null`" if optional else "")
    base = typing.get_args(annotation)[0] if optional else annotation
    if base is bool:
        return "`true`, `false`" + (", `null`" if optional else "")
    return ""


def _cell(text: str) -> str:
    """Table-safe text: '|' escaped; '<' outside backticks as an entity (``<root>`` is no HTML tag)."""
    parts = text.replace("|", "\\|").split("`")
    return "`".join(p if i % 2 else p.replace("<", "&lt;") for i, p in enumerate(parts))


def table(header: list[str], rows: list[list[str]]) -> list[str]:
    cells = [header, ["---"] * len(header), *[[_cell(c) or "—" for c in row] for row in rows]]
    return ["| " + " | ".join(row) + " |" for row in cells]


def fields(cls: type, prefix: str = "") -> Iterator[tuple[str, type, str, Any]]:
    """(dotted key, the dataclass declaring it, its name there, its type) of every leaf field of ``cls``."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        annotation = hints[f.name]
        if dataclasses.is_dataclass(annotation):
            yield from fields(annotation, f"{prefix}{f.name}.")
        else:
            yield f"{prefix}{f.name}", cls, f.name, annotation


def lookup(values: dict, dotted: str) -> Any:
    for part in dotted.split("."):
        values = values[part]
    return values


def describe(section: str, key: str, sources: list[tuple[dict[str, str], str]]) -> str:
    """The description of ``section.key`` (``key`` as its YAML files write it): the first comment found among
    ``sources`` ((comments, file name) pairs). A group option's ``name`` is the option's own."""
    if key == "name" and section in GROUPS and section != "dataset":
        return f"which {section} it is; set by choosing the option (`{section}=OPTION`), not alone"
    for comments, _ in sources:
        if comments.get(key):
            return comments[key]
    files = ", ".join(f"conf/{f}" for _, f in sources)
    shown = f"{section}.{key}" if section and not key.startswith(f"{section}.") else key
    raise ValueError(f"{shown} has no description: add a comment beside it in {files}")


# ------------------------------------------------------------------------------------------- the page


def trainer_section(values: dict, comments: dict[str, str]) -> list[str]:
    rows = []
    for key, cls, name, annotation in fields(schema.TrainerConfig):
        rows.append([f"`trainer.{key}`", type_words(annotation), allowed_words("trainer", cls, name, annotation),
                     show(lookup(values["trainer"], key)), describe("trainer", f"trainer.{key}",
                                                                    [(comments, "train.yaml")])])
    top = ["`resume_sweep`", "boolean", "`true`, `false`", show(values["resume_sweep"]),
           describe("", "resume_sweep", [(comments, "train.yaml")])]
    return ["## trainer", "", "Set in `conf/train.yaml`; an experiment may change them.", "",
            *table(["key", "type", "allowed", "default", "description"], [*rows, top]), ""]


def group_section(group: str, default: str) -> list[str]:
    options = [load_option(group, name) for name in group_options(group)]
    nested = any(package_of(group, o.name) != group for o in options)
    out = [f"## {group}", "", f"`{group}=OPTION` picks one of these files in `conf/{group}/`; "
           f"`{group}.KEY=VALUE` sets one value.", ""] if not nested else [
        f"## {group}", "", f"`{group}=OPTION` picks one of these files in `conf/{group}/`, "
        f"`{group}=[OPTION,OPTION]` several side by side; each option's keys live under its own name "
        f"(`{group}.OPTION.KEY=VALUE`).", ""]
    rows = [[f"`{o.name}`" + (" (default)" if o.name == default else ""),
             header_comment(CONF / group / f"{o.name}.yaml") or "—"] for o in options]
    out += [*table(["option", "what it is"], rows), ""]
    by_schema: dict[type, list[Option]] = {}
    for o in options:
        by_schema.setdefault(o.schema, []).append(o)
    for cls, members in by_schema.items():
        members.sort(key=lambda o: o.name != default)  # the default option first
        names = ", ".join(f"`{o.name}`" for o in members)
        if len(by_schema) > 1:
            out += [f"### {group}: {names}", ""]
        sources = [(o.comments, f"{group}/{o.name}.yaml") for o in members]
        rows = []
        package = package_of(group, members[0].name)
        for key, owner, name, annotation in fields(cls):
            rows.append([f"`{package}.{key}`", type_words(annotation), allowed_words(group, owner, name, annotation),
                         *(show(lookup(o.values, key)) for o in members), describe(group, key, sources)])
        if not rows:  # an option with nothing to set (logger=tensorboard)
            out = out[:-2] if len(by_schema) > 1 else out
            continue
        out += [*table(["key", "type", "allowed", *(f"`{o.name}`" for o in members), "description"], rows), ""]
    return out


def model_section(default: str) -> list[str]:
    options = [load_option("model", name) for name in group_options("model")]
    out = ["## model", "",
           "`model=OPTION` picks a network; `model.KEY=VALUE` sets one of the keyword arguments its family declares "
           "in the model registry (`cnnbench/models/`), which checks them (any other key is refused). "
           "`cnnbench models` lists the networks with their parameters and FLOPs; `model=custom`, `model=torchvision` "
           "and `model=timm` build any other network ([Your own networks](models.md)).", ""]
    rows = []
    for o in options:
        spec = registry.get_model_spec(o.values["name"])
        args = ", ".join(f"`{k}={lookup(o.values, k)}`" for k in spec.kwargs if k in o.values) or "—"
        rows.append([f"`{o.name}`" + (" (default)" if o.name == default else ""), spec.description,
                     f"{spec.book_resolution}", f"{spec.min_resolution}", args])
    out += [*table(["option", "network", "book side (px)", "smallest side (px)", "keyword arguments set"], rows), ""]
    keys: dict[str, list[str]] = {}
    for name in [*registry.list_models(), *registry.list_sources()]:  # sources: custom, torchvision, timm
        for key in registry.get_model_spec(name).kwargs:
            keys.setdefault(key, []).append(name)
    rows = [["`model.name`", "all", "a registered network (`cnnbench models`)",
             "which network to build; set by choosing the option (`model=OPTION`)"]]
    for key, users in keys.items():
        spec = registry.get_model_spec(users[0])
        sources = [(o.comments, f"model/{o.name}.yaml") for o in options if key in o.values]
        description = (describe("model", key, sources) if sources else
                       f"a keyword argument of `{users[0]}`; unset: the book's value")
        rows.append([f"`model.{key}`", ", ".join(f"`{u}`" for u in users), spec.kwargs[key].allowed, description])
    out += [*table(["key", "networks", "allowed", "description"], rows), ""]
    return out


def listing(group: str, title: str, intro: str) -> list[str]:
    rows = [[f"`{name}`", header_comment(CONF / group / f"{name}.yaml") or "—"] for name in group_options(group)]
    return [f"## {title}", "", intro, "", *table(["option", "what it is"], rows), ""]


def exercise_listing() -> list[str]:
    """The exercise sweeps: each file's first comment line is the book's question."""
    rows = []
    for name in group_options("exercise"):
        lines = [line for line in (CONF / "exercise" / f"{name}.yaml").read_text().splitlines()
                 if line.startswith("#") and "@package" not in line]
        rows.append([f"`+exercise={name}`", lines[0].lstrip("#").strip() if lines else "—"])
    return ["## exercise", "",
            "`cnnbench train -m +exercise=NAME` runs one of the book's exercises as a sweep (the knobs and rates it "
            "varies are in the file's `hydra.sweeper.params`); `cnnbench report DIR` answers it, the varied settings "
            "as columns. [The exercises](exercises.md) has the answers measured here.", "",
            *table(["option", "the book's question"], rows), ""]


def render() -> str:
    """The generated part of the page, ending with :data:`HAND_WRITTEN` (what follows that line is kept)."""
    values, comments, chosen = primary()
    sections = ["trainer", *GROUPS, "experiment", "exercise", "hydra launcher and sweeper"]
    out = [
        "# Configuration reference", "",
        "<!-- Generated by scripts/config_reference.py from cnnbench/schema.py, conf/ and the model registry. "
        "Do not edit: change those and run the script (tests/project/test_docs.py fails when this page is stale). -->", "",
        "[Back to the README](../README.md)", "",
        "`cnnbench train` composes `conf/train.yaml` with Hydra: one option per group, then the trainer settings, "
        "then an experiment (a recipe that overrides any of them), then your command-line overrides:", "",
        "```bash",
        "cnnbench train model=resnet18 optimizer=adamw optimizer.lr=3e-3 trainer.epochs=20  # pick, then set",
        "cnnbench train experiment=d2l_alexnet trainer.batch_size=64                         # a recipe, changed",
        "cnnbench train --cfg job model=vgg11                                        # print the config, run nothing",
        "```", "",
        "Types and keys are checked when the config is composed (a wrong type or an unknown key: one line naming "
        "it); the allowed values below are checked before any run folder is created (exit 2, nothing written). "
        "`null` means off or \"not set\", as each description says.", "",
        "Contents: " + ", ".join(f"[{s}](#{s.replace(' ', '-')})" for s in sections), "",
    ]
    out += trainer_section(values, comments)
    out += model_section(chosen["model"])
    for group in GROUPS[1:]:
        out += group_section(group, chosen[group])
    out += listing("experiment", "experiment",
                   "`experiment=NAME` applies a whole recipe from `conf/experiment/` after everything else; "
                   "each file's comment says what it reaches.")
    out += exercise_listing()
    launchers = [[f"`hydra/{kind}={p.stem}`", header_comment(p) or "—"]
                 for kind in ("launcher", "sweeper") for p in sorted((CONF / "hydra" / kind).glob("*.yaml"))]
    out += ["## hydra launcher and sweeper", "",
            "For sweeps (`cnnbench train -m ...`); their settings are in `conf/hydra/` and Hydra's plugin pages.", "",
            *table(["option", "what it is"], launchers)]
    return "\n".join(out).rstrip() + "\n\n" + HAND_WRITTEN + "\n"


def hand_written(page: str) -> str:
    """The part of an existing page after the :data:`HAND_WRITTEN` line ('' when there is none)."""
    _, marker, tail = page.partition(HAND_WRITTEN + "\n")
    return tail if marker else ""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 when docs/configuration.md is out of date")
    ns = parser.parse_args(argv)
    current = PAGE.read_text() if PAGE.is_file() else ""
    page = render() + hand_written(current)
    if ns.check:
        if current != page:
            print(f"{PAGE.relative_to(REPO)} is out of date: run python scripts/config_reference.py", file=sys.stderr)
            return 1
        return 0
    PAGE.write_text(page)
    print(f"wrote {PAGE.relative_to(REPO)} ({len(page)} characters)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
