"""``python -m convert_weights SRC --out DIR [--preset NAME | --config FILE.json] [--force]``."""

import sys

from convert_weights.cli import main

if __name__ == "__main__":
    sys.exit(main())
