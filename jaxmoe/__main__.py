"""``python -m jaxmoe ...``: the same command line as the ``jaxmoe`` script."""

import sys

from jaxmoe.cli import main

if __name__ == "__main__":
    sys.exit(main())
