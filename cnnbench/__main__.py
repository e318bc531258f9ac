"""``python -m cnnbench ...`` is the same as the ``cnnbench`` command."""

from .cli import run

run()
