"""``python -m refimpl check`` (every gradient witness, as a table), ``bench``, ``data``,
``train``."""

import sys

COMMANDS = {
    "check": "refimpl.tools.check",
    "bench": "refimpl.tools.bench",
    "data": "refimpl.data.cli",
    "train": "refimpl.train.cli",
}


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in COMMANDS:
        print(f"usage: python -m refimpl {{{','.join(COMMANDS)}}} [options]", file=sys.stderr)
        return 2
    import importlib

    return importlib.import_module(COMMANDS[argv[0]]).main(argv[1:])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
