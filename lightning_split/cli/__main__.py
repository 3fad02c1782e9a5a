"""``python -m lightning_split.cli``: the ``lightning-split`` command."""

import sys

from lightning_split.cli import main

if __name__ == "__main__":
    sys.exit(main())
