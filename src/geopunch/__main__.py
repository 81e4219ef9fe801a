"""``python -m geopunch``: the command line."""

import sys

from geopunch.entrypoints.cli import main

if __name__ == "__main__":
    sys.exit(main())
