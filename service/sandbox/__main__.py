"""``python -m service.sandbox``: the ``bss-relay sandbox`` verb on its own."""

from __future__ import annotations

import argparse
import sys

from service.sandbox.server import register_cli


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m service.sandbox")
    register_cli(parser.add_subparsers(dest="verb", required=True, metavar="VERB"))
    args = parser.parse_args(["sandbox", *(sys.argv[1:] if argv is None else argv)])
    result: int = args.func(args)
    return result


if __name__ == "__main__":
    sys.exit(main())
