"""``python -m casckpt``: the casckpt command."""

import sys

from .cli import main

sys.exit(main())
