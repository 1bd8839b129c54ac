"""`td3 report FILE [--out page.html]`: a job report (`td3-report/1` JSON, from
`td3 distill --report` or `GET /v1/jobs/{id}/report`) as one self-contained HTML page
(`td3core.report_html`). Without --out the page goes to stdout."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

EXIT_USAGE = 2


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("report", help="render a report (JSON) as an HTML page")
    p.add_argument("file", metavar="FILE", help="a td3-report/1 JSON file")
    p.add_argument("--out", help="write the page here (default: stdout)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from td3core.report_html import render_report_html

    try:
        report = json.loads(Path(args.file).read_text(encoding="utf-8"))
    except OSError as exc:
        return _fail(f"{args.file}: {exc.strerror or exc}")
    except (UnicodeDecodeError, ValueError) as exc:
        return _fail(f"{args.file}: not a JSON file ({exc})")
    if not isinstance(report, dict) or not str(report.get("format", "")).startswith("td3-report/"):
        return _fail(f"{args.file}: not a td3 report (its format should be td3-report/1)")
    page = render_report_html(report)
    if args.out is None:
        sys.stdout.write(page)
        return 0
    try:
        Path(args.out).write_text(page, encoding="utf-8")
    except OSError as exc:
        return _fail(f"{args.out}: {exc.strerror or exc}")
    return 0


def _fail(message: str) -> int:
    print(f"td3: error: {message}", file=sys.stderr)
    return EXIT_USAGE
