"""The single list of networks: register a factory by name, build it by name.

A factory is a callable ``factory(in_channels=1, num_classes=10, image_size=..., **kwargs) -> nn.Module``.
Each registration also records the network's family and the resolution the book trains it at, so
commands (``cnnbench models``, the trainer's default resize) can read them from one place.

Three entries are *sources* rather than networks (``source=True``): ``custom``, ``torchvision`` and ``timm``
build whatever network their arguments name (:mod:`cnnbench.models.external`), so ``list_models()`` leaves
them out. Installed packages add networks through the entry-point group ``cnnbench.models``
(:data:`ENTRY_POINT_GROUP`), read the first time the registry is asked.
"""

from __future__ import annotations

import difflib
import fnmatch
import inspect
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from numbers import Number
from typing import Any

from torch import nn

from ..errors import CnnbenchError

logger = logging.getLogger(__name__)
__all__ = [
    "ModelSpec",
    "ModelKwarg",
    "ModelArgumentError",
    "InputTooSmallError",
    "UnknownModelError",
    "register_model",
    "build_model",
    "list_models",
    "list_sources",
    "load_entry_points",
    "ENTRY_POINT_GROUP",
    "get_model_spec",
    "check_min_size",
    "min_input",
    "check_model_kwargs",
    "models_taking",
    "input_side",
    "DROPOUT",
    "positive_int",
    "positive_ints",
    "one_of",
    "boolean",
    "int_table",
    "positive_ints_or_empty",
    "non_negative_int",
]


class UnknownModelError(CnnbenchError, KeyError):
    """Raised by :func:`build_model` for a name that is not registered."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


class InputTooSmallError(CnnbenchError, ValueError):
    """Raised when a network cannot be built for the requested input size."""


class ModelArgumentError(CnnbenchError, ValueError):
    """A ``model.*`` keyword argument the family does not take, or a value outside its range."""


@dataclass(frozen=True)
class ModelKwarg:
    """One keyword argument a model family takes from the ``model`` group, and its allowed values."""

    allowed: str  # the allowed values in words, for the message: "a number in [0, 1)"
    valid: Callable[[Any], bool]
    example: Any  # a valid value (the tests build every network with it)


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_list(v: Any) -> bool:
    """A list of values: a list, a tuple, or the config's ListConfig (any sequence but a string)."""
    return isinstance(v, Sequence) and not isinstance(v, (str, bytes))


def _is_number(v: Any) -> bool:
    return isinstance(v, Number) and not isinstance(v, bool)


# A dropout probability: 1 would zero every activation.
DROPOUT = ModelKwarg("a number in [0, 1)", lambda v: _is_number(v) and 0 <= v < 1, 0.25)


def positive_int(divides: int | None = None, example: int = 1) -> ModelKwarg:
    """A positive integer (that divides ``divides``, when given)."""
    words = "a positive integer" + (f" dividing {divides}" if divides else "")
    return ModelKwarg(words, lambda v: _is_int(v) and v > 0 and (divides is None or divides % v == 0), example)


def non_negative_int(example: int = 0) -> ModelKwarg:
    """An integer >= 0 (a padding)."""
    return ModelKwarg("an integer >= 0", lambda v: _is_int(v) and v >= 0, example)


def positive_number(example: float) -> ModelKwarg:
    """A number above 0 (not a bool)."""
    return ModelKwarg("a positive number", lambda v: _is_number(v) and v > 0, example)


def positive_ints(example: tuple[int, ...]) -> ModelKwarg:
    """A non-empty list of positive integers."""
    return ModelKwarg("a non-empty list of positive integers",
                      lambda v: _is_list(v) and len(v) > 0 and all(_is_int(x) and x > 0 for x in v),
                      list(example))


def positive_ints_or_empty(example: tuple[int, ...]) -> ModelKwarg:
    """A list of positive integers, possibly empty (e.g. no hidden layer)."""
    return ModelKwarg("a list of positive integers (may be empty)",
                      lambda v: _is_list(v) and all(_is_int(x) and x > 0 for x in v), list(example))


def one_of(choices: Sequence[str], example: str) -> ModelKwarg:
    """One name out of ``choices``."""
    return ModelKwarg("one of " + ", ".join(choices), lambda v: isinstance(v, str) and v in choices, example)


def boolean(example: bool) -> ModelKwarg:
    """true or false."""
    return ModelKwarg("true or false", lambda v: isinstance(v, bool), example)


def int_table(columns: int, example: Sequence[Sequence[int]], words: str) -> ModelKwarg:
    """A non-empty table of rows of ``columns`` positive integers, e.g. VGG's [[1, 64], [1, 128]]."""
    def valid(v: Any) -> bool:
        return (_is_list(v) and len(v) > 0
                and all(_is_list(r) and len(r) == columns and all(_is_int(x) and x > 0 for x in r)
                        for r in v))
    return ModelKwarg(f"a non-empty list of [{words}] rows of positive integers", valid,
                      [list(r) for r in example])


@dataclass(frozen=True)
class ModelSpec:
    """What the registry knows about one named network."""

    name: str
    factory: Callable[..., nn.Module]
    family: str
    book_resolution: int  # pixels; the side the book resizes Fashion-MNIST to for this network
    min_resolution: int  # pixels; the smallest input side for which the network builds
    description: str = ""
    kwargs: Mapping[str, ModelKwarg] = field(default_factory=dict)  # what ``model.*`` may set
    source: bool = False  # builds any network its arguments name (custom, torchvision, timm): not one network
    # The smallest input side (pixels) for given knobs, e.g. LeNet's kernel sizes; None: min_resolution always.
    min_side: Callable[..., int] | None = None
    geometry: tuple[str, ...] = ()  # the knobs min_side reads, named when they make an input too small


_REGISTRY: dict[str, ModelSpec] = {}


def register_model(
    name: str | None = None,
    *,
    family: str,
    book_resolution: int,
    min_resolution: int = 1,
    description: str = "",
    kwargs: Mapping[str, ModelKwarg] | None = None,
    source: bool = False,
    min_side: Callable[..., int] | None = None,
    geometry: tuple[str, ...] = (),
) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Decorator registering a model factory under ``name`` (default: the function's name).

    ``kwargs`` declares the keyword arguments the factory takes from the ``model`` group (beyond
    in_channels, num_classes and image_size) and their allowed values; validation refuses any other.
    ``source``: the factory builds the network its arguments name (``model=torchvision model.arch=...``).
    ``min_side(**knobs)`` gives the smallest input side when the knobs named in ``geometry`` change it.
    """

    def decorator(factory: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        key = name or factory.__name__
        if key in _REGISTRY:
            raise ValueError(f"a model named {key!r} is already registered")
        first_doc_line = ((factory.__doc__ or "").strip().splitlines() or [""])[0]
        _REGISTRY[key] = ModelSpec(
            name=key,
            factory=factory,
            family=family,
            book_resolution=book_resolution,
            min_resolution=min_resolution,
            description=description or first_doc_line,
            kwargs=dict(kwargs or {}),
            source=source,
            min_side=min_side,
            geometry=tuple(geometry),
        )
        return factory

    return decorator


def list_models(pattern: str | None = None) -> list[str]:
    """Registered networks in registration order (the book's, then FastNet, then those of installed
    packages' entry points), optionally filtered by a shell-style ``pattern``; sources are left out."""
    load_entry_points()
    names = [n for n, spec in _REGISTRY.items() if not spec.source]
    if pattern:
        names = [n for n in names if fnmatch.fnmatch(n, pattern)]
    return names


def list_sources() -> list[str]:
    """The entries that build any network their arguments name: custom, torchvision, timm."""
    return [n for n, spec in _REGISTRY.items() if spec.source]


def get_model_spec(name: str) -> ModelSpec:
    """The registry entry for ``name``; unknown names raise :class:`UnknownModelError`."""
    load_entry_points()
    try:
        return _REGISTRY[name]
    except KeyError:
        valid = ", ".join(sorted(_REGISTRY))
        close = difflib.get_close_matches(name, list(_REGISTRY), n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise UnknownModelError(f"unknown model {name!r}.{hint} Valid names: {valid}") from None


def input_side(name: str, resize: int | None = None) -> int:
    """The input side (pixels) a run of ``name`` uses: ``resize`` (``dataset.resize``) when given, else
    the resolution the book trains that network at. The one place this rule is written."""
    return int(resize) if resize else get_model_spec(name).book_resolution


def models_taking(key: str) -> list[str]:
    """The registered networks that declare the keyword argument ``key`` (``model.KEY``)."""
    return [name for name, spec in _REGISTRY.items() if key in spec.kwargs]


def check_model_kwargs(name: str, kwargs: Mapping[str, Any]) -> None:
    """Refuse a ``model.*`` argument the family of ``name`` does not declare, or a value it does not allow."""
    spec = get_model_spec(name)
    for key, value in kwargs.items():
        declared = spec.kwargs.get(key)
        if declared is None:
            takes = f"it takes {', '.join(spec.kwargs)}" if spec.kwargs else "it takes none"
            raise ModelArgumentError(f"model {name} takes no keyword argument {key!r} (model.{key}); {takes}")
        if not declared.valid(value):
            raise ModelArgumentError(f"model.{key} must be {declared.allowed} for {name}, got {value!r}")


def min_input(name: str, kwargs: Mapping[str, Any] | None = None) -> int:
    """The smallest input side (pixels) ``name`` builds for with these ``model.*`` knobs."""
    spec = get_model_spec(name)
    if spec.min_side is None:
        return spec.min_resolution
    return spec.min_side(**{k: v for k, v in (kwargs or {}).items() if k in spec.geometry})


def check_min_size(name: str, image_size: int, min_size: int, knobs: Mapping[str, Any] | None = None) -> None:
    """Fail early, with the smallest size that works, when ``image_size`` is too small; ``knobs``: the
    ``model.*`` settings that moved the smallest size away from the book's network's (named in the message)."""
    if image_size < min_size:
        spec = get_model_spec(name) if name in _REGISTRY else None
        because = ""
        if knobs and spec is not None and min_size != spec.min_resolution:
            because = " with " + ", ".join(f"model.{k}={v}" for k, v in knobs.items() if k in spec.geometry)
        raise InputTooSmallError(
            f"{name} cannot take {image_size}x{image_size} inputs{because}: its layers shrink the image "
            f"to nothing; the smallest size that works is {min_size} (try dataset.resize={min_size} "
            "or larger)"
        )


def build_model(
    name: str,
    in_channels: int = 1,
    num_classes: int = 10,
    image_size: int | None = None,
    **kwargs,
) -> nn.Module:
    """Build the registered network ``name``.

    ``image_size`` (pixels, square inputs) defaults to the book's resolution for that network; it sizes
    the fully connected layers whose width depends on the input (LeNet's 16*5*5, AlexNet's 6400).
    """
    spec = get_model_spec(name)
    size = input_side(name, image_size)
    check_min_size(name, size, min_input(name, kwargs), kwargs)
    return spec.factory(in_channels=in_channels, num_classes=num_classes, image_size=size, **kwargs)


# ------------------------------------------------------------------------------ installed packages' networks

ENTRY_POINT_GROUP = "cnnbench.models"
_ENTRY_POINTS_READ: list[str] = []  # the names registered from entry points, once read (empty list: none)
_entry_points_loaded = False


def load_entry_points(force: bool = False) -> list[str]:
    """Register the networks installed packages declare in the entry-point group ``cnnbench.models``;
    returns their names. Read once per process (``force``: again, for tests that install one).

    An entry point ``NAME = package.module:factory`` registers ``factory`` as network NAME (family: the
    distribution's name); one that names a module (``NAME = package.module``) is imported, and the module
    registers its networks itself with :func:`register_model`. A broken plugin is skipped with a warning
    naming it: one package must not stop every command.
    """
    global _entry_points_loaded
    if _entry_points_loaded and not force:
        return list(_ENTRY_POINTS_READ)
    _entry_points_loaded = True
    from importlib.metadata import entry_points

    for ep in entry_points(group=ENTRY_POINT_GROUP):
        before = set(_REGISTRY)
        dist = getattr(getattr(ep, "dist", None), "name", None) or ep.value.split(".")[0].split(":")[0]
        try:
            loaded = ep.load()
            if callable(loaded) and not inspect.ismodule(loaded) and ep.name not in _REGISTRY:
                register_model(ep.name, family=dist, book_resolution=getattr(loaded, "book_resolution", 28),
                               min_resolution=getattr(loaded, "min_resolution", 1))(loaded)
        except Exception as exc:  # noqa: BLE001 - any plugin error: skip it, say which
            logger.warning("skipped the networks of entry point %s = %s (package %s): %s: %s", ep.name, ep.value,
                           dist, type(exc).__name__, (str(exc).splitlines() or [""])[0])
            continue
        added = [n for n in _REGISTRY if n not in before]
        if ep.name in before and not added:
            logger.warning("entry point %s = %s (package %s) was not registered: a network named %r exists",
                           ep.name, ep.value, dist, ep.name)
        _ENTRY_POINTS_READ.extend(n for n in added if n not in _ENTRY_POINTS_READ)
    return list(_ENTRY_POINTS_READ)
