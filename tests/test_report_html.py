"""The HTML report: one self-contained page (tables, SVG plots, break-even), escaped,
rendered by `td3 report`, and looked at in headless Chromium."""

from __future__ import annotations

import json
import math
import shutil
import subprocess
from html.parser import HTMLParser

import pytest
from helpers_service import require_or_skip

from td3.cli import main
from td3core.report_html import break_even, render_report_html

CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--no-first-run",
    "--disable-component-update",
    "--disable-sync",
]


def row(interactions: int, hr: float, seconds: float) -> dict:
    cell = {"mean": hr, "std": hr / 10}
    return {
        "uni100": {"HR@10": cell, "NDCG@10": {"mean": hr / 2, "std": 0.0}},
        "full": {"HR@10": {"mean": hr / 5, "std": 0.01}},
        "interactions": interactions,
        "runs": 2,
        "valid_mrr10": hr / 3,
        "train_seconds": seconds,
        "steps": 100,
        "lr": [0.001, 0.003],
    }


def sample_report() -> dict:
    table = {
        "summary": row(120, 0.41, 2.0),
        "full": row(20_000, 0.55, 42.0),
        "random-users": row(120, 0.22, 2.1),
    }
    gru = {"summary": row(120, 0.30, 1.5), "full": row(20_000, 0.50, 31.5)}
    return {
        "format": "td3-report/1",
        "config": {"distill": {"users": 10, "length": 12, "rank": 8, "epochs": 4, "seed": 0}},
        "dataset": {
            "users": 300,
            "items": 120,
            "interactions": 20_000,
            "avg_length": 66.7,
            "sparsity": 44.4,
            "sha256": "ab" * 32,
            "preprocessing": {"source": "<script>alert(1)</script>.csv"},
        },
        "distillation": {
            "best_epoch": 3,
            "best_valid_mrr10": 0.2,
            "curves": [
                {"epoch": e, "valid_mrr10": 0.1 + 0.03 * e, "outer": 3 - 0.4 * e, "ce": 2.0 - e / 9}
                for e in range(1, 5)
            ],
        },
        "evaluation": table,
        "evaluation_by_learner": {"sasrec": table, "gru4rec<b>": gru},
        "timings": {"teacher_seconds": 40.0, "distill_seconds": 120.0, "evaluate_seconds": 90.0},
        "peak_memory_mb": 812.5,
        "device": "cpu",
    }


class _Page(HTMLParser):
    """Tables (as rows of cell texts) and SVG polylines of a page."""

    def __init__(self) -> None:
        super().__init__()
        self.tables: list[list[list[str]]] = []
        self.polylines: list[dict[str, str]] = []
        self.tags: set[str] = set()
        self._cell: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.add(tag)
        values = {k: v or "" for k, v in attrs}
        if tag == "table":
            self.tables.append([])
        elif tag == "tr":
            self.tables[-1].append([])
        elif tag in ("td", "th"):
            self._cell = []
        elif tag == "polyline":
            self.polylines.append(values)

    def handle_endtag(self, tag: str) -> None:
        if tag in ("td", "th") and self._cell is not None:
            self.tables[-1][-1].append("".join(self._cell).strip())
            self._cell = None

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)


def parse(page: str) -> _Page:
    parser = _Page()
    parser.feed(page)
    return parser


def test_page_is_self_contained_and_escaped():
    page = render_report_html(sample_report())
    assert page.startswith("<!DOCTYPE html>")
    parsed = parse(page)
    assert not parsed.tags & {"script", "link", "img", "iframe"}
    # the only URL is the SVG namespace, which is never fetched
    assert page.count("http") == page.count('xmlns="http://www.w3.org/2000/svg"')
    assert "gru4rec&lt;b&gt;" in page and "gru4rec<b>" not in page
    assert "<script>alert" not in page


def test_evaluation_tables_per_learner_and_protocol_with_break_even():
    parsed = parse(render_report_html(sample_report()))
    runs = [t for t in parsed.tables if t and t[0][:3] == ["data", "interactions", "runs"]]
    assert len(runs) == 2  # one per learner
    header, *rows = runs[0]
    assert [r[0] for r in rows] == ["summary", "full", "random-users"]
    assert rows[1][header.index("train s")] == "42" and rows[1][-1] == "0.001, 0.003"
    uni100, full = parsed.tables[parsed.tables.index(runs[0]) + 1 :][:2]
    assert uni100[0] == ["data", "HR@10", "NDCG@10"]
    assert uni100[1] == ["summary", "0.41 ± 0.041", "0.205"]
    assert full[0] == ["data", "HR@10"] and full[2] == ["full", "0.11 ± 0.01"]
    page = render_report_html(sample_report())
    assert "break-even: 3.0 trainings" in page  # 120 s / (42 s - 2 s)
    assert "break-even: 4.0 trainings" in page  # gru4rec: 120 s / (31.5 s - 1.5 s)


def test_metrics_are_ordered_by_numeric_cut_off():
    report = sample_report()
    cells = {"HR@20": {"mean": 0.3}, "HR@5": {"mean": 0.1}, "HR@10": {"mean": 0.2}}
    report["evaluation_by_learner"] = {"sasrec": {"summary": {"uni100": cells}}}
    tables = parse(render_report_html(report)).tables
    assert ["data", "HR@5", "HR@10", "HR@20"] in [t[0] for t in tables]


def test_curves_are_non_empty_line_plots():
    parsed = parse(render_report_html(sample_report()))
    names = {p["data-name"] for p in parsed.polylines}
    assert {"valid_mrr10", "outer", "ce"} <= names
    for line in parsed.polylines:
        points = line["points"].split()
        assert len(points) == 4 and all(
            math.isfinite(float(v)) for p in points for v in p.split(",")
        )


def test_break_even_cases():
    report = sample_report()
    assert break_even(report) == pytest.approx(120 / 40)
    report["evaluation"]["summary"]["train_seconds"] = 50.0  # slower than the full data
    assert break_even(report) == math.inf
    del report["timings"]["distill_seconds"]
    assert break_even(report) is None


def test_a_sparse_or_odd_report_still_renders():
    for report in ({}, {"format": "td3-report/1", "distillation": {"curves": [{"epoch": 1}]}}):
        page = render_report_html(report)
        assert "no evaluation" in page and page.endswith("</html>\n")
    odd = sample_report()
    odd["distillation"]["curves"][1]["outer"] = float("nan")
    odd["peak_memory_mb"] = None
    assert "NaN" not in render_report_html(odd)


def test_td3_report_command(tmp_path, capsys):
    source = tmp_path / "report.json"
    source.write_text(json.dumps(sample_report()))
    out = tmp_path / "page.html"
    assert main(["report", str(source), "--out", str(out)]) == 0
    assert out.read_text().startswith("<!DOCTYPE html>")
    assert main(["report", str(source)]) == 0
    assert "<table" in capsys.readouterr().out
    (tmp_path / "bad.json").write_text('{"format": "other"}')
    assert main(["report", str(tmp_path / "bad.json")]) == 2
    assert main(["report", str(tmp_path / "missing.json")]) == 2
    assert "td3: error:" in capsys.readouterr().err


def chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    require_or_skip(found is not None, "no chromium (apt-get install -y chromium)")
    assert found is not None
    return found


def test_chromium_renders_the_table_and_the_plots(tmp_path):
    browser = chromium()
    page = tmp_path / "report.html"
    page.write_text(render_report_html(sample_report()))
    dom = subprocess.run(
        [browser, *CHROMIUM_FLAGS, "--dump-dom", page.as_uri()],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout
    parsed = parse(dom)
    assert any(t and t[0][:1] == ["data"] and len(t) == 4 for t in parsed.tables)
    assert len(parsed.polylines) >= 3 and all(p["points"] for p in parsed.polylines)
    shot = tmp_path / "report.png"
    subprocess.run(
        [
            browser,
            *CHROMIUM_FLAGS,
            f"--screenshot={shot}",
            "--window-size=1280,2200",
            page.as_uri(),
        ],
        capture_output=True,
        timeout=120,
        check=True,
    )
    data = shot.read_bytes()
    assert data.startswith(b"\x89PNG") and len(data) > 20_000  # a blank page is ~5 KB
