"""``python -m mcroute``."""

import sys

from mcroute.cli.app import main

if __name__ == "__main__":
    sys.exit(main())
