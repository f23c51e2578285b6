"""``python -m gpucnn`` is the ``gpucnn`` command."""

import sys

from .cli import main

sys.exit(main())
