"""The `dpfast` command line. Subcommands: demo."""
from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    commands = {"demo": "dpfast.demo"}
    if not argv or argv[0] in ("-h", "--help"):
        print("usage: dpfast {demo} [options]\n\n  demo   the λ knob on an exactly solvable 1-D problem")
        return 0
    if argv[0] not in commands:
        print(f"dpfast: unknown command {argv[0]!r}; choose from {sorted(commands)}", file=sys.stderr)
        return 2
    import importlib

    return importlib.import_module(commands[argv[0]]).main(argv[1:])
