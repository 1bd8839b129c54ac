"""The evaluation table of a report as markdown (torch-free: the API's demo prints it)."""

from __future__ import annotations

METRICS = ("HR@10", "NDCG@10", "MRR@10")


def evaluation_markdown(table: dict[str, dict], metrics: tuple[str, ...] = METRICS) -> str:
    """One row per data source, `mean ± std` per protocol and metric (percent)."""
    protocols = [p for p in ("uni100", "full") if any(p in row for row in table.values())]
    header = ["data", "interactions", "runs"] + [f"{p} {m}" for p in protocols for m in metrics]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name, row in table.items():
        cells = [name, f"{row.get('interactions', 0):.0f}", str(row.get("runs", ""))]
        for protocol in protocols:
            for metric in metrics:
                value = row.get(protocol, {}).get(metric)
                cells.append("" if value is None else f"{value['mean']:.2f} ± {value['std']:.2f}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
