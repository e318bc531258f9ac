"""torch.optim without importing torch._dynamo: a run that compiles nothing does not pay for the compiler.

torch.optim's optimizers mark their methods "not to be traced by torch.compile". Those marks import
``torch._dynamo`` (and with it sympy and ``torch._inductor``'s configuration) the first time a marked method
runs: the constructor (``add_param_group``), ``step``, ``zero_grad``, ``state_dict`` and
``load_state_dict``. That import is 0.7 s of a command's start (measured: ``import torch._dynamo`` after
``import torch``, 0.72-0.76 s, 3 runs; an SGD constructor, 3 steps and a ``state_dict`` round trip
0.75 s with it, 0.00 s without), about a tenth of a 3-epoch LeNet-BN command, and the objects it creates
would make every later full collection of the garbage collector walk half as many objects again (measured:
213,000 tracked objects after importing torch and cnnbench's training modules, 335,000 with torch._dynamo;
:mod:`cnnbench.speed.collector`).

The marks only matter while torch.compile traces a function that calls them, and nothing can be traced
before ``torch._dynamo`` is imported. So:

- :func:`defer_dynamo_import` gives each marked Optimizer method an "unmarked until the compiler is
  here" version: it calls the method itself while ``torch._dynamo`` is not imported, and torch's own
  ``torch._dynamo.disable`` of it from the first call after the import on (kept, as torch keeps it).
  It uses the hook torch's marking (``torch._disable_dynamo``) looks up first, the function's
  ``__dynamo_disable`` attribute, so torch's code runs unchanged.
- ``step`` is marked differently: torch's wrapper imports ``torch._dynamo`` on every call to cut the
  traced graph. :func:`lazy_step_class` returns a subclass of the optimizer's class whose ``step`` runs
  the unwrapped step under the same grad mode (``defaults["differentiable"]``) while ``torch._dynamo``
  is not imported, and torch's wrapped step once it is.

Where a torch version lays its optimizers out otherwise (no ``__wrapped__``), nothing is changed and
torch imports ``torch._dynamo`` as it always did. ``tests/speed/test_dynamo.py`` checks in a fresh
process that a training on the CPU without torch.compile never imports it, and that the results are
torch's to the bit.
"""

from __future__ import annotations

import functools
import inspect
import sys
from collections.abc import Callable
from typing import Any

import torch
from torch.optim.optimizer import Optimizer, _use_grad_for_differentiable

DYNAMO = "torch._dynamo"
# Optimizer methods marked with torch._disable_dynamo (torch/optim/optimizer.py)
MARKED = ("add_param_group", "zero_grad", "state_dict", "load_state_dict")

_lazy_classes: dict[type[Optimizer], type[Optimizer]] = {}


def dynamo_imported() -> bool:
    """Whether torch._dynamo has been imported in this process (nothing can be traced before)."""
    return DYNAMO in sys.modules


def _until_dynamo(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``fn`` itself while torch._dynamo is not imported; torch's ``torch._dynamo.disable(fn)`` (what
    ``torch._disable_dynamo`` would have made) from the first call after it is, kept on ``fn`` as torch keeps
    it."""

    def call(*args: Any, **kwargs: Any) -> Any:
        if not dynamo_imported():
            return fn(*args, **kwargs)
        disabled = sys.modules[DYNAMO].disable(fn, True, wrapping=False)
        fn.__dynamo_disable = disabled  # type: ignore[attr-defined]  # torch's own cache slot
        return disabled(*args, **kwargs)

    return call


def defer_dynamo_import() -> bool:
    """Let torch.optim.Optimizer's marked methods run without importing torch._dynamo until something
    else imports it (process-wide, idempotent). False where this torch lays them out otherwise."""
    raws = [getattr(getattr(Optimizer, name, None), "__wrapped__", None) for name in MARKED]
    if any(raw is None for raw in raws):
        return False
    for raw in raws:
        if getattr(raw, "__dynamo_disable", None) is None:
            raw.__dynamo_disable = _until_dynamo(raw)  # type: ignore[attr-defined]
    return True


def lazy_step_class(cls: type[Optimizer]) -> type[Optimizer]:
    """A subclass of ``cls`` whose ``step`` imports torch._dynamo only if it is imported already (see the
    module docstring); ``cls`` itself where its ``step`` is not torch's wrapped one or the marked methods
    cannot be deferred. One subclass per class, so torch patches its step hooks once."""
    if getattr(cls.step, "__wrapped__", None) is None or not defer_dynamo_import():
        return cls
    if cls not in _lazy_classes:
        # The step as written, under torch's grad-mode wrapper and (once an instance of ``cls`` exists) its
        # hooks wrapper; torch's grad-mode wrapper made again around it, without the hooks (torch hooks this
        # class's step itself, so they run once).
        raw_step = inspect.unwrap(cls.step)
        wrapped_step = _use_grad_for_differentiable(raw_step)

        @functools.wraps(raw_step)
        def step(self: Optimizer, closure: Callable[[], Any] | None = None) -> Any:
            if dynamo_imported():
                return wrapped_step(self, closure)
            previous = torch.is_grad_enabled()
            try:
                torch.set_grad_enabled(self.defaults["differentiable"])
                return raw_step(self, closure)
            finally:
                torch.set_grad_enabled(previous)

        _lazy_classes[cls] = type(cls.__name__, (cls,), {"step": step, "__module__": __name__,
                                                           "__doc__": cls.__doc__})
    return _lazy_classes[cls]
