"""``python -m cnnbench ...`` is the same as the ``cnnbench`` command."""

import sys

from .cli import main

sys.exit(main())
