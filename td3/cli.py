"""The `td3` console script: library commands (distill, evaluate, baseline) and
service commands (serve, admin, demo). Each side registers its own subcommands and
imports its heavy dependencies only when one of them runs."""

from __future__ import annotations

import argparse
import sys


def build_parser() -> argparse.ArgumentParser:
    from td3.library_commands import register as register_library
    from td3.report_command import register as register_report
    from td3.service_commands import register as register_service

    parser = argparse.ArgumentParser(prog="td3", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    register_library(commands)
    register_report(commands)
    register_service(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
