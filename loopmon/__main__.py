"""``python -m loopmon``: the ``loopmon`` command line (see ``loopmon.cli``)."""
import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
