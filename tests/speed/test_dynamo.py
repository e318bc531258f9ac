"""cnnbench.speed.dynamo: torch.optim without importing torch._dynamo into a run that compiles nothing."""

from __future__ import annotations

import importlib
import subprocess
import sys
import textwrap

import pytest
import torch
from torch import nn

from cnnbench.speed import dynamo
from cnnbench.speed.dynamo import lazy_step_class

from ..helpers import fast_overrides


def test_a_training_without_compile_never_imports_the_compiler(fake_data, tmp_path):
    """In a fresh process, a CPU training (momentum SGD, a schedule, checkpoints) and its resume to a second
    epoch (the optimizer's state loaded back) leave torch._dynamo, sympy and torch._inductor unimported, and
    torch.utils.flop_counter too (its module imports triton, 0.09 s, where torch's CUDA wheels installed it:
    cnnbench.models.stats counts with the counter's formulas and imports it only for layers it does not know)."""
    overrides = fast_overrides(fake_data, "model=lenet", "optimizer=sgd_momentum", "scheduler=cosine",
                               "trainer.batch_size=64")
    code = textwrap.dedent(f"""
        import sys
        from pathlib import Path
        from cnnbench.config import compose_config
        from cnnbench.run.train import train
        overrides = {overrides!r}
        run = Path({str(tmp_path / "run")!r})
        first = train(compose_config([*overrides, "trainer.epochs=1"]), run)
        second = train(compose_config([*overrides, "trainer.epochs=2", "trainer.resume=auto"]), run)
        assert first["status"] == second["status"] == "completed", (first["error"], second["error"])
        assert second["resumes"], "the second command did not resume"
        unwanted = ("torch._dynamo", "sympy", "torch._inductor", "torch.utils.flop_counter", "triton")
        print("imported:", sorted(m for m in unwanted if m in sys.modules))
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "imported: []" in out.stdout, out.stdout


OPTIMIZERS = [
    (torch.optim.SGD, {"lr": 0.1, "momentum": 0.9, "nesterov": True, "weight_decay": 1e-3}),
    (torch.optim.SGD, {"lr": 0.1}),
    (torch.optim.Adam, {"lr": 1e-2, "weight_decay": 1e-3}),
    (torch.optim.AdamW, {"lr": 1e-2}),
]


def _trajectory(cls: type[torch.optim.Optimizer], kwargs: dict, steps: int = 4) -> list[torch.Tensor]:
    """A small network's parameters after ``steps`` steps of ``cls``, its state_dict round-tripped half way."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 3))
    opt = cls(net.parameters(), **kwargs)
    x, y = torch.randn(8, 1, 8, 8), torch.randint(0, 3, (8,))
    for i in range(steps):
        opt.zero_grad()
        nn.functional.cross_entropy(net(x), y).backward()
        opt.step()
        if i == steps // 2:
            opt.load_state_dict(opt.state_dict())
    return [p.detach().clone() for p in net.parameters()]


@pytest.mark.parametrize("compiler_imported", [False, True], ids=["before-dynamo", "after-dynamo"])
@pytest.mark.parametrize("cls,kwargs", OPTIMIZERS, ids=lambda v: getattr(v, "__name__", ""))
def test_the_lazy_step_is_torchs_step(monkeypatch, cls, kwargs, compiler_imported):
    """The subclass trains to torch's parameters to the bit, whether torch._dynamo is imported or not (the
    unwrapped step under torch's grad mode, or torch's wrapped step), and is still the class users check."""
    lazy = lazy_step_class(cls)
    assert lazy is not cls and issubclass(lazy, cls) and lazy_step_class(cls) is lazy
    if compiler_imported:
        importlib.import_module("torch._dynamo")  # what a compiled run imports
    else:  # this test process may have imported it already: the step sees it as a fresh process would
        monkeypatch.setattr(dynamo, "dynamo_imported", lambda: False)
    for ours, theirs in zip(_trajectory(lazy, kwargs), _trajectory(cls, kwargs), strict=True):
        assert torch.equal(ours, theirs)


def test_the_marked_methods_become_torchs_once_the_compiler_is_imported():
    """Before torch._dynamo is imported a marked Optimizer method runs itself; from the first call after, torch's
    ``torch._dynamo.disable`` of it, kept where torch keeps it."""
    importlib.import_module("torch._dynamo")  # what a compiled run imports
    assert dynamo.defer_dynamo_import()
    raw = torch.optim.Optimizer.zero_grad.__wrapped__
    opt = lazy_step_class(torch.optim.SGD)([nn.Parameter(torch.ones(2))], lr=0.1)
    opt.zero_grad()
    assert raw.__dynamo_disable.__module__.startswith("torch._dynamo")


@pytest.mark.parametrize("compiler_imported", [False, True], ids=["before-dynamo", "after-dynamo"])
def test_step_hooks_run_once_after_torch_hooked_its_class(monkeypatch, compiler_imported):
    """Once an instance of torch's class exists, torch has wrapped that class's step in its hooks: the subclass
    still runs a step's hooks once per step."""
    monkeypatch.setattr(dynamo, "_lazy_classes", {})
    torch.optim.SGD([nn.Parameter(torch.ones(2))], lr=0.1)  # torch hooks torch.optim.SGD.step
    if compiler_imported:
        importlib.import_module("torch._dynamo")
    else:
        monkeypatch.setattr(dynamo, "dynamo_imported", lambda: False)
    weight = nn.Parameter(torch.ones(2))
    opt = lazy_step_class(torch.optim.SGD)([weight], lr=0.5)
    calls = []
    opt.register_step_pre_hook(lambda *_: calls.append("pre"))
    opt.register_step_post_hook(lambda *_: calls.append("post"))
    weight.grad = torch.ones(2)
    opt.step()
    assert calls == ["pre", "post"] and torch.equal(weight.detach(), torch.full((2,), 0.5))
