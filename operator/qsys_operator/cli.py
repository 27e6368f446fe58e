"""`qsys-operator` entry point."""

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="qsys-operator", description=__doc__)
    parser.add_argument("--namespace", action="append", default=[], help="namespace to watch")
    parser.parse_args(argv)
    print("qsys-operator: not implemented yet", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
