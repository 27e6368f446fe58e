"""`qsys-gateway` entry point."""

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="qsys-gateway", description=__doc__)
    parser.add_argument("--config", required=True, help="path to gateway.yaml")
    parser.parse_args(argv)
    print("qsys-gateway: not implemented yet", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
