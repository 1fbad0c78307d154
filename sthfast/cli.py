"""The ``sthfast`` command line."""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="sthfast", description="STH-SepNet, fast.")
    commands = parser.add_subparsers(dest="command", required=True)
    info = commands.add_parser("info", help="versions, usable backends, default backbone, model size")
    info.add_argument("--model", action="store_true",
                      help="also build a default model and print its parameter counts")
    info.add_argument("--num-nodes", type=int, default=207, help="N for --model (default 207)")
    args = parser.parse_args(argv)
    if args.command == "info":
        from .info import report  # noqa: PLC0415

        if args.num_nodes < 1:
            parser.error(f"--num-nodes must be >= 1, got {args.num_nodes}")
        print(report(args.num_nodes if args.model else None))
    return 0


if __name__ == "__main__":
    sys.exit(main())
