"""``python -m convert_weights SRC --out DIR [--preset NAME | --config FILE.json] [--force]``."""

from convert_weights.cli import console

if __name__ == "__main__":
    console()
