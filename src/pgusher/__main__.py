"""``python -m pgusher``: the same as the ``pgusher`` command."""

import sys

from .cli import main

sys.exit(main())
