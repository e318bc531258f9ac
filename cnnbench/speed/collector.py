"""Python's garbage collector in a ``cnnbench`` command: paused while the command starts, and pointed at
what training creates once it begins.

Importing torch, Hydra and their dependencies (before :mod:`cnnbench.speed.dynamo`, torch._dynamo too)
leaves some 575,000 objects the collector tracks, nearly all alive until the process ends. Every
collection of the oldest generation walks all of them: measured with ``gc.callbacks`` on a LeNet-BN
command, its start ran 6 such collections (0.31 s) and 860 younger ones (0.09 s).

So the console script (:func:`cnnbench.cli.run`) calls :func:`pause` first when its command is
``train``, and the first training epoch calls :func:`resume`: one full collection, then ``gc.freeze()``
moves everything still alive into the permanent generation, where later collections do not look, and the
collector runs again as usual. The one collection costs 0.16-0.17 s but is not skipped: the start's cyclic
garbage (33,000 objects) holds the first autotune trial's copy of the network and its gradients (the
first torch.optim constructor of a process leaves its frames in a cycle), which frozen would stay for the
whole run. Measured, a 1-epoch, 1-batch LeNet-BN command, 5 pairs alternating, medians: 2.78 s with the
collector running through the start, 2.60 s paused. A program that calls cnnbench's functions itself (the
tests, a notebook) never pauses it, and :func:`resume` then does nothing.
"""

from __future__ import annotations

import gc

_paused_by_cnnbench = False  # the collector is off because pause() turned it off (not the user)


def pause() -> None:
    """Turn the collector off for the command's start (nothing happens if it is already off)."""
    global _paused_by_cnnbench
    if gc.isenabled():
        gc.disable()
        _paused_by_cnnbench = True


def resume() -> bool:
    """After :func:`pause`: collect once, freeze what is alive, turn the collector back on. Returns
    whether it did (False when the collector was not paused by :func:`pause`)."""
    global _paused_by_cnnbench
    if not _paused_by_cnnbench:
        return False
    _paused_by_cnnbench = False
    gc.collect()
    gc.freeze()
    gc.enable()
    return True
