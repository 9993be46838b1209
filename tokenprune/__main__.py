"""``python -m tokenprune``: the ``tokenprune`` command line."""

import sys

from tokenprune.cli import main

if __name__ == "__main__":
    sys.exit(main())
