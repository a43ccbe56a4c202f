"""``python -m bench``: the same as ``bss-relay bench`` from a source checkout."""

import argparse
import sys

from bench.cli import register_cli


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench")
    verbs = parser.add_subparsers(dest="verb", required=True)
    register_cli(verbs)
    args = parser.parse_args(["bench", *sys.argv[1:]])
    result: int = args.func(args)
    return result


if __name__ == "__main__":
    sys.exit(main())
