"""``python -m sbsync``: the same as the ``sbsync`` command."""

import sys

from .cli import main

sys.exit(main())
